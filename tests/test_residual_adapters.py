"""Residual adapters (the ``adapters`` scope): zero at the start, only they and the head move,
every existing tensor keeps its name, and a checkpoint with them loads and serves as saved."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import random_image_tasks

from innerloop.checkpoint import build_card, load_checkpoint, save_checkpoint
from innerloop.learner import InnerDefaults, Learner
from innerloop.models import ArchConfig

ARCH = ArchConfig(kind="conv4", image_size=8, filters=4, blocks=3, norm_groups=2)


def plain(steps: int = 3) -> Learner:
    return Learner.create(ARCH, "proto", InnerDefaults(steps, 0.5), head_scale=0.2, seed=2)


def outputs(learner: Learner, steps: int | None = None) -> torch.Tensor:
    batch = random_image_tasks(tasks=2, ways=3, shots=2, queries=3, seed=8)
    return learner.adapt_and_predict(
        batch.support_x,
        batch.support_y,
        batch.support_weight,
        batch.class_mask,
        batch.query_x,
        steps=steps,
    ).outputs


def test_adding_adapters_changes_no_answer_and_no_name() -> None:
    base = plain()
    with_adapters = base.with_adapters()
    assert set(base.params) < set(with_adapters.params)
    added = set(with_adapters.params) - set(base.params)
    assert added == {"body.0.adapter", "body.4.adapter", "body.8.adapter", "body.13.weight"}
    for name in base.params:
        assert torch.equal(base.params[name], with_adapters.params[name])
    torch.testing.assert_close(outputs(with_adapters), outputs(base))  # frozen adapters: same
    # and the same seed builds the same convolutions with or without adapters
    built = Learner.create(
        ArchConfig(**{**ARCH.to_dict(), "adapters": True}), "proto", InnerDefaults(3, 0.5), seed=2
    )
    for name in base.params:
        if name != "head.log_scale":
            assert torch.equal(built.params[name], base.params[name]), name


def test_the_adapters_scope_moves_only_adapters_and_the_head() -> None:
    adapters = plain().with_scope("adapters")
    assert adapters.scope == "adapters" and adapters.arch.adapters
    assert set(adapters.step_sizes) == {
        "body.0.adapter",
        "body.4.adapter",
        "body.8.adapter",
        "body.13.weight",
        "head.weight",
        "head.bias",
    }
    zero = outputs(adapters, steps=0)
    torch.testing.assert_close(zero, outputs(plain(), steps=0))  # 0 steps: the prototype answer
    assert not torch.allclose(outputs(adapters), zero)  # the loop moves the answer


def test_a_checkpoint_with_adapters_round_trips(tmp_path: Path) -> None:
    adapters = plain().with_scope("adapters")
    adapted = {k: v + 0.01 if k.endswith(".adapter") else v for k, v in adapters.params.items()}
    moved = adapters.with_params(adapted)
    path = save_checkpoint(moved, tmp_path / "a.safetensors", build_card(moved, "a"))
    loaded, card = load_checkpoint(path)
    assert card["architecture"]["adapters"] is True and loaded.scope == "adapters"
    torch.testing.assert_close(outputs(loaded), outputs(moved))


def test_adapters_need_a_conv_body() -> None:
    with pytest.raises(ValueError, match="conv4"):
        ArchConfig(kind="mlp", adapters=True)
    with pytest.raises(ValueError, match="adapters scope needs"):
        Learner.create(ArchConfig(kind="mlp"), "none", InnerDefaults(1, 0.1)).with_scope("adapters")
