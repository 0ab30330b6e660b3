"""MAML++'s multi-step loss: the per-step query outputs are the loop's own, the weights anneal
from uniform to the last step, and the outer gradient is that weighted sum's."""

from __future__ import annotations

import pytest
import torch
from helpers import random_image_tasks, tiny_image_learner
from innerloop_training.algorithms import OuterConfig, build_algorithm, multi_step_weights

from innerloop.adaptation import InnerLoop, adapt_and_predict


def test_weights_anneal_from_uniform_to_the_last_step() -> None:
    assert multi_step_weights(4, 0.0) == pytest.approx([0.25] * 4)
    final = multi_step_weights(4, 1.0)
    assert final[:3] == pytest.approx([0.0075] * 3) and final[3] == pytest.approx(1 - 0.0225)
    for progress in (0.0, 0.3, 1.0, 2.0):
        assert sum(multi_step_weights(5, progress)) == pytest.approx(1.0)
    assert multi_step_weights(1, 0.5) == [1.0]
    middle = multi_step_weights(4, 0.5)
    assert final[0] < middle[0] < 0.25 and 0.25 < middle[3] < final[3]


def test_step_outputs_are_the_outputs_after_each_step() -> None:
    learner = tiny_image_learner(steps=3)
    batch = random_image_tasks(tasks=2, ways=3, shots=2, queries=2, seed=4)
    args = (batch.support_x, batch.support_y, batch.support_weight, batch.class_mask)

    def run(steps: int, step_outputs: bool = False):  # type: ignore[no-untyped-def]
        return adapt_and_predict(
            learner,
            learner.params,
            learner.step_sizes,
            *args,
            batch.query_x,
            InnerLoop(steps, first_order=True),
            step_outputs=step_outputs,
        )

    with torch.no_grad():
        full = run(3, step_outputs=True)
        assert full.step_outputs is not None and full.step_outputs.shape[1] == 3
        torch.testing.assert_close(full.step_outputs[:, -1], full.outputs)
        for steps in (1, 2):
            torch.testing.assert_close(full.step_outputs[:, steps - 1], run(steps).outputs)


def test_the_outer_gradient_is_the_weighted_sum_of_step_losses() -> None:
    """At progress 0 (uniform weights) one meta-step must move the init differently than the
    last-step loss alone does, and the same as the explicitly weighted sum computed here."""
    batch = random_image_tasks(tasks=2, ways=3, shots=2, queries=2, seed=6)
    outer = OuterConfig("sgd", 0.1, 0.0)
    moved = {}
    for msl in (0, 100):
        learner = tiny_image_learner(steps=2, seed=1)
        algorithm = build_algorithm("maml", learner, InnerLoop(2), outer, multi_step_loss=msl)
        before = {k: v.detach().clone() for k, v in learner.params.items()}
        algorithm.step(batch)
        moved[msl] = {k: before[k] - learner.params[k].detach() for k in before}
    # by hand: uniform weights over the two steps' query losses, one SGD step of 0.1
    learner = tiny_image_learner(steps=2, seed=1)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in learner.params.items()}
    predictions = adapt_and_predict(
        learner,
        params,
        learner.step_sizes,
        batch.support_x,
        batch.support_y,
        batch.support_weight,
        batch.class_mask,
        batch.query_x,
        InnerLoop(2),
        step_outputs=True,
    )
    assert predictions.step_outputs is not None
    ones = torch.ones(batch.query_y.numel())
    loss = sum(
        0.5
        * learner.loss(predictions.step_outputs[:, i].flatten(0, 1), batch.query_y.flatten(), ones)
        for i in range(2)
    )
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    name = "body.0.weight"
    index = list(params).index(name)
    torch.testing.assert_close(moved[100][name], 0.1 * grads[index], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(moved[0][name], moved[100][name])


def test_only_the_maml_family_has_a_multi_step_loss() -> None:
    learner = tiny_image_learner(steps=2)
    with pytest.raises(ValueError, match="multi-step"):
        build_algorithm(
            "reptile", learner, InnerLoop(2), OuterConfig("sgd", 0.1, 0.0), multi_step_loss=10
        )
