"""Stop when done: the inner loop ends a task once its support loss stops improving."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from innerloop.adaptation import InnerLoop
from innerloop.learner import InnerDefaults, Learner
from innerloop.models import ArchConfig


def learner(scope: str, tolerance: float) -> Learner:
    base = Learner.create(
        ArchConfig(filters=8, norm_groups=2, blocks=3), inner=InnerDefaults(steps=8, lr=0.05)
    ).with_scope(scope)
    base.inner = dataclasses.replace(base.inner, tolerance=tolerance)
    return base


def tasks(count: int = 3, ways: int = 4, shots: int = 2) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    sx = torch.rand(count, ways * shots, 1, 28, 28, generator=generator)
    sy = torch.arange(ways).repeat_interleave(shots).repeat(count, 1)
    sw = torch.ones(count, ways * shots)
    sw[1, -1] = 0.0  # an unbalanced, padded task
    cm = torch.ones(count, ways, dtype=torch.bool)
    qx = torch.rand(count, 5, 1, 28, 28, generator=generator)
    return sx, sy, sw, cm, qx


@pytest.mark.parametrize("scope", ["head", "film", "all"])
def test_a_tiny_tolerance_changes_nothing_while_the_loss_falls(scope: str) -> None:
    plain = learner(scope, 0.0).adapt_and_predict(*tasks(), steps=4, lr=0.01)
    early = learner(scope, 1e-12).adapt_and_predict(*tasks(), steps=4, lr=0.01)
    assert plain.steps is None
    assert early.steps is not None
    assert bool((plain.loss_after < plain.loss_before).all())  # the premise: losses fall
    assert early.steps.tolist() == [4, 4, 4]
    torch.testing.assert_close(early.outputs, plain.outputs, rtol=0, atol=1e-6)
    torch.testing.assert_close(early.loss_after, plain.loss_after, rtol=0, atol=1e-6)


@pytest.mark.parametrize("scope", ["head", "all"])
def test_each_task_stops_on_its_own_and_alone_equals_batched(scope: str) -> None:
    model = learner(scope, 0.05)
    batched = model.adapt_and_predict(*tasks(), steps=30, lr=0.05)
    assert batched.steps is not None
    assert int(batched.steps.max()) < 30  # it did stop early
    for i in range(3):
        alone = model.adapt_and_predict(*(t[i : i + 1] for t in tasks()), steps=30, lr=0.05)
        assert alone.steps is not None
        assert int(alone.steps[0]) == int(batched.steps[i])
        torch.testing.assert_close(alone.outputs[0], batched.outputs[i], rtol=0, atol=1e-5)


def test_a_diverging_loop_stops_at_the_first_step_that_does_not_improve() -> None:
    model = learner("all", 1e-9)
    result = model.adapt_and_predict(*tasks(), steps=20, lr=5.0)
    assert result.steps is not None and int(result.steps.max()) < 20


def test_tolerance_needs_sgd() -> None:
    with pytest.raises(ValueError, match="sgd"):
        InnerLoop(5, optimizer="adam", tolerance=0.1)
    with pytest.raises(ValueError, match=">= 0"):
        InnerLoop(5, tolerance=-1.0)
