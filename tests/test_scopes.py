"""Adaptation scopes: which parameters each preset moves, and that a checkpoint keeps it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from innerloop.checkpoint import build_card, load_checkpoint, save_checkpoint
from innerloop.learner import Learner
from innerloop.models import ArchConfig


def conv_learner(warp: str = "none") -> Learner:
    return Learner.create(ArchConfig(filters=8, norm_groups=2, warp=warp), seed=0)


def test_film_adapts_norm_affine_and_head_only() -> None:
    learner = conv_learner().with_scope("film")
    adapted = set(learner.step_sizes)
    # conv4 layers: conv(0) norm(1) relu pool, conv(4) norm(5) ...: norms at 1, 5, 9, 13
    expected = {f"body.{i}.{p}" for i in (1, 5, 9, 13) for p in ("weight", "bias")}
    assert adapted == expected | {"head.weight", "head.bias"}
    assert learner.scope == "film"


def test_head_scope_freezes_the_whole_body() -> None:
    learner = conv_learner().with_scope("head")
    assert set(learner.step_sizes) == {"head.weight", "head.bias"}
    assert learner.frozen == frozenset(learner.params)


def test_last_scope_on_an_mlp_is_its_last_linear_layer() -> None:
    learner = Learner.create(ArchConfig(kind="mlp", hidden=(8, 8)), seed=0).with_scope("last")
    assert set(learner.step_sizes) == {"body.4.weight", "body.4.bias"}


def test_film_on_an_mlp_is_refused() -> None:
    learner = Learner.create(ArchConfig(kind="mlp", hidden=(8, 8)), seed=0)
    with pytest.raises(ValueError, match="adapts no parameter"):
        learner.with_scope("film")


def test_warp_layers_stay_frozen_in_every_scope() -> None:
    learner = conv_learner(warp="linear")
    warp = {n for n in learner.params if ".warp." in n}
    assert warp
    for scope in ("all", "film", "last", "head"):
        scoped = learner.with_scope(scope)
        assert warp <= scoped.frozen
        assert scoped.scope == scope


def test_scope_survives_a_checkpoint_round_trip(tmp_path: Path) -> None:
    learner = conv_learner().with_scope("film")
    path = save_checkpoint(learner, tmp_path / "m.safetensors", build_card(learner, "m"))
    loaded, card = load_checkpoint(path)
    assert card["adaptation"]["scope"] == "film"
    assert loaded.scope == "film"
    assert loaded.frozen == learner.frozen


def test_unfreezing_restores_default_step_sizes() -> None:
    learner = conv_learner().with_scope("head").with_scope("all")
    assert learner.scope == "all"
    assert all(float(v) == pytest.approx(learner.inner.lr) for v in learner.step_sizes.values())
    assert set(learner.step_sizes) == set(conv_learner().step_sizes)
    assert all(v.dtype == torch.float32 for v in learner.step_sizes.values())
