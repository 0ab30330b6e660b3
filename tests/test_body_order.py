"""The Conv4 body pools before its ReLU: the same function as the textbook order, faster."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from innerloop.checkpoint import load_checkpoint
from innerloop.learner import Learner
from innerloop.models import ArchConfig

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "omniglot.safetensors"


def textbook_conv4(params: dict[str, torch.Tensor], x: torch.Tensor, groups: int) -> torch.Tensor:
    """conv -> group norm -> ReLU -> max-pool, four times: the order of the papers."""
    for block in range(4):
        i = 4 * block
        x = F.conv2d(x, params[f"body.{i}.weight"], params[f"body.{i}.bias"], padding=1)
        x = F.group_norm(x, groups, params[f"body.{i + 1}.weight"], params[f"body.{i + 1}.bias"])
        x = F.max_pool2d(F.relu(x), 2)
    return x.flatten(1)


def _learners() -> list[Learner]:
    learners = [Learner.create(ArchConfig(kind="conv4", filters=16), head="proto", seed=3)]
    if SHIPPED.exists():
        learners.append(load_checkpoint(SHIPPED)[0])
    return learners


@pytest.mark.parametrize("learner", _learners(), ids=lambda lr: f"{lr.arch.filters}-filters")
def test_body_equals_textbook_order_exactly(learner: Learner) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(7, 1, 28, 28, generator=generator) * 2 - 0.5  # negative inputs too
    with torch.no_grad():
        ours = learner.features(learner.params, x)
        reference = textbook_conv4(learner.params, x, learner.arch.norm_groups)
    assert torch.equal(ours, reference)


def test_gradients_match_textbook_order() -> None:
    learner = _learners()[0]
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    params = {k: v.detach().clone().requires_grad_(True) for k, v in learner.params.items()}
    ours = torch.autograd.grad(learner.features(params, x).square().sum(), list(params.values()))
    body = {k: v for k, v in params.items() if k.startswith("body.")}
    reference = torch.autograd.grad(
        textbook_conv4(body, x, learner.arch.norm_groups).square().sum(),
        list(body.values()),
    )
    by_name = dict(zip(params, ours, strict=True))
    for (name, _), expected in zip(body.items(), reference, strict=True):
        torch.testing.assert_close(by_name[name], expected, rtol=1e-5, atol=1e-6)


def test_shared_prefix_in_pieces_equals_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch larger than ``PREFIX_CHUNK`` runs in pieces; each image's features are unchanged."""
    import innerloop.learner as learner_module

    learner = _learners()[-1]
    shared = learner.split_shared(learner.params, learner.step_sizes)
    assert shared is not None
    x = torch.rand(2 * learner_module.PREFIX_CHUNK + 5, 1, 28, 28)
    with torch.no_grad():
        in_pieces = shared.prefix(x)
        monkeypatch.setattr(learner_module, "PREFIX_CHUNK", 10**6)
        whole = shared.prefix(x)
        single = torch.cat([shared.prefix(x[i : i + 1]) for i in range(3)])
    assert in_pieces.shape == whole.shape == (x.shape[0], whole.shape[1])
    torch.testing.assert_close(in_pieces, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(in_pieces[:3], single, rtol=1e-5, atol=1e-5)
