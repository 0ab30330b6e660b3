"""The proto head's meta-learned logit scale and MAML++-style learned step sizes per tensor.

The scale must leave the prototype answer (0 steps) exactly as it was, change what the inner
loop sees, reach the outer loop, survive a checkpoint, and never be adapted per task; learned
per-tensor step sizes must be meta-learned and stay >= 0.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import random_image_tasks, tiny_image_learner
from innerloop_training.algorithms import OuterConfig, build_algorithm
from innerloop_training.trainer import TrainConfig

from innerloop.adaptation import InnerLoop
from innerloop.checkpoint import build_card, load_checkpoint, save_checkpoint
from innerloop.learner import InnerDefaults, Learner
from innerloop.models import ArchConfig
from innerloop.scopes import HEAD_LOG_SCALE

ARCH = ArchConfig(kind="conv4", image_size=8, filters=4, blocks=3, norm_groups=2)


def scaled_learner(scale: float, scope: str = "head", steps: int = 3) -> Learner:
    learner = Learner.create(ARCH, "proto", InnerDefaults(steps, 0.1), head_scale=scale)
    return learner.with_scope(scope)


def predict(learner: Learner, steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    batch = random_image_tasks(tasks=3, ways=4, shots=2, queries=3, seed=1)
    result = learner.adapt_and_predict(
        batch.support_x,
        batch.support_y,
        batch.support_weight,
        batch.class_mask,
        batch.query_x,
        steps=steps,
    )
    return result.outputs, result.loss_before


def test_the_scale_keeps_the_prototype_answer_and_changes_the_support_loss() -> None:
    plain = Learner.create(ARCH, "proto", InnerDefaults(0, 0.1)).with_scope("head")
    scaled = scaled_learner(0.05, steps=0)
    plain_out, plain_loss = predict(plain, steps=0)
    scaled_out, scaled_loss = predict(scaled, steps=0)
    assert torch.equal(plain_out.argmax(-1), scaled_out.argmax(-1))
    torch.testing.assert_close(scaled_out, 0.05 * plain_out, rtol=1e-4, atol=1e-5)
    # a softer head leaves the support set less fit: something for the loop to do
    assert float(scaled_loss.mean()) > float(plain_loss.mean()) + 0.05


@pytest.mark.parametrize("scope", ["head", "last", "all"])
def test_the_scale_is_meta_learned_never_adapted(scope: str) -> None:
    learner = scaled_learner(0.2, scope)
    assert HEAD_LOG_SCALE in learner.frozen and HEAD_LOG_SCALE not in learner.step_sizes
    assert learner.scope == scope
    algorithm = build_algorithm("maml", learner, InnerLoop(3), OuterConfig("sgd", 0.5, None))
    before = learner.params[HEAD_LOG_SCALE].item()
    algorithm.step(random_image_tasks(tasks=2, ways=3, shots=1, queries=2, seed=2))
    assert learner.params[HEAD_LOG_SCALE].item() != before  # the meta-gradient reached it


def test_a_checkpoint_keeps_the_scale_and_refuses_it_on_another_head(tmp_path: Path) -> None:
    learner = scaled_learner(0.3, "last")
    path = save_checkpoint(learner, tmp_path / "m.safetensors", build_card(learner, "m"))
    loaded, card = load_checkpoint(path)
    assert card["head_scale"] == pytest.approx(0.3) and loaded.head_scale == pytest.approx(0.3)
    assert loaded.scope == "last" and loaded.frozen == learner.frozen
    torch.testing.assert_close(predict(loaded)[0], predict(learner)[0])
    with pytest.raises(ValueError, match="needs the proto head"):
        Learner.create(ARCH, "zero", head_scale=0.3)
    assert tiny_image_learner().head_scale is None


def test_learned_step_sizes_per_tensor_move_and_stay_nonnegative() -> None:
    def train(nonnegative: bool) -> dict[str, float]:
        learner = scaled_learner(1.0, "last")
        for step_size in learner.step_sizes.values():
            step_size.fill_(1e-6)  # one push of the wrong sign crosses 0
        algorithm = build_algorithm(
            "maml", learner, InnerLoop(3), OuterConfig("sgd", 5.0, None), learn_step_sizes=True
        )
        algorithm.nonnegative_step_sizes = nonnegative  # type: ignore[attr-defined]
        for seed in range(3):
            batch = random_image_tasks(tasks=2, ways=3, shots=1, queries=2, seed=seed)
            # queries labelled as the next class: fitting the support set hurts them, so the
            # outer loop pushes the step sizes down
            batch.query_y = (batch.query_y + 1) % 3
            algorithm.step(batch)
        assert all(v.dim() == 0 for v in learner.step_sizes.values())
        return {k: v.item() for k, v in learner.step_sizes.items()}

    free, kept = train(nonnegative=False), train(nonnegative=True)
    assert min(free.values()) < 0.0  # the outer loop does push some step size below 0 here
    assert min(kept.values()) >= 0.0
    assert any(v != torch.tensor(1e-6).item() for v in kept.values())  # learned, not stuck


def test_meta_sgd_keeps_its_papers_unconstrained_step_sizes() -> None:
    learner = tiny_image_learner(learned=True)
    algorithm = build_algorithm("metasgd", learner, InnerLoop(2), OuterConfig())
    assert algorithm.learn_step_sizes and not algorithm.nonnegative_step_sizes  # type: ignore[attr-defined]


def test_the_config_resolves_and_checks_step_size_learning() -> None:
    assert TrainConfig(algorithm="metasgd").learn_step_sizes == "parameter"
    assert TrainConfig(algorithm="maml").learn_step_sizes == "none"
    assert TrainConfig(algorithm="maml", learn_step_sizes="tensor").learn_step_sizes == "tensor"
    with pytest.raises(ValueError, match="need maml, fomaml or metasgd"):
        TrainConfig(algorithm="reptile", learn_step_sizes="tensor")
    with pytest.raises(ValueError, match="is not one of"):
        TrainConfig(algorithm="maml", learn_step_sizes="layer")
    assert float(scaled_learner(0.1).params[HEAD_LOG_SCALE]) == pytest.approx(math.log(0.1))
