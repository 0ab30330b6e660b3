"""A served prediction depends only on (checkpoint, support set, query): the design's promises."""

from __future__ import annotations

import pytest
import torch
from helpers import random_image_tasks, tiny_image_learner
from innerloop_training.tasks import TaskBatch

from innerloop.learner import Learner

HEADS = ("proto", "zero")


def probabilities(learner: Learner, batch: TaskBatch, batching: str = "auto") -> torch.Tensor:
    from innerloop.adaptation import adapt_and_predict

    with torch.no_grad():
        outputs = adapt_and_predict(
            learner,
            learner.params,
            learner.step_sizes,
            batch.support_x,
            batch.support_y,
            batch.support_weight,
            batch.class_mask,
            batch.query_x,
            learner.inner.loop(),
            batching=batching,
        ).outputs
    return outputs.softmax(-1)


def trained_zero_head(learner: Learner) -> Learner:
    """A zero head is all-zero at init; give it a non-trivial value so the test means something."""
    if learner.head == "zero":
        generator = torch.Generator().manual_seed(5)
        learner.params["head.weight"] = torch.randn(
            learner.params["head.weight"].shape, generator=generator
        )
        learner.params["head.bias"] = torch.randn(1, generator=generator)
    return learner


@pytest.mark.parametrize("head", HEADS)
def test_label_permutation_permutes_predictions(head: str) -> None:
    learner = trained_zero_head(tiny_image_learner(head, steps=3))
    batch = random_image_tasks(2, ways=4, shots=2, queries=3)
    base = probabilities(learner, batch)
    permutation = torch.tensor([2, 0, 3, 1])  # old label -> new label
    relabelled = TaskBatch(
        batch.support_x,
        permutation[batch.support_y],
        batch.support_weight,
        batch.class_mask,
        batch.query_x,
        permutation[batch.query_y],
    )
    moved = probabilities(learner, relabelled)
    torch.testing.assert_close(moved[..., permutation], base, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("head", HEADS)
def test_support_order_does_not_matter(head: str) -> None:
    learner = trained_zero_head(tiny_image_learner(head, steps=3))
    batch = random_image_tasks(1, ways=3, shots=3, queries=2)
    order = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    shuffled = TaskBatch(
        batch.support_x[:, order],
        batch.support_y[:, order],
        batch.support_weight[:, order],
        batch.class_mask,
        batch.query_x,
        batch.query_y,
    )
    torch.testing.assert_close(
        probabilities(learner, shuffled), probabilities(learner, batch), rtol=1e-5, atol=1e-6
    )


def test_a_query_does_not_depend_on_the_other_queries() -> None:
    learner = tiny_image_learner(steps=3)
    batch = random_image_tasks(1, ways=3, shots=1, queries=4)
    full = probabilities(learner, batch)
    for keep in ([0], [3, 1], [5, 6, 7, 8, 9, 10, 11]):
        index = torch.tensor(keep)
        part = TaskBatch(
            batch.support_x,
            batch.support_y,
            batch.support_weight,
            batch.class_mask,
            batch.query_x[:, index],
            batch.query_y[:, index],
        )
        torch.testing.assert_close(
            probabilities(learner, part), full[:, index], rtol=1e-5, atol=1e-6
        )


def test_same_request_gives_identical_answers() -> None:
    learner = tiny_image_learner(steps=3)
    batch = random_image_tasks(2, ways=3, shots=2, queries=2)
    assert torch.equal(probabilities(learner, batch), probabilities(learner, batch))


@pytest.mark.parametrize("ways", [2, 3, 7, 20, 50])
def test_any_number_of_ways_up_to_fifty(ways: int) -> None:
    learner = tiny_image_learner(steps=2)
    batch = random_image_tasks(1, ways=ways, shots=1, queries=1, seed=ways)
    probs = probabilities(learner, batch)
    assert probs.shape == (1, ways, ways)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, ways))


def test_padding_rows_and_padded_ways_change_nothing() -> None:
    """What lets differently sized requests share one batched call (and unbalanced support)."""
    learner = tiny_image_learner(steps=3)
    batch = random_image_tasks(1, ways=3, shots=2, queries=2)
    base = probabilities(learner, batch)
    # two padded support rows (weight 0, arbitrary content) and two padded ways (mask False)
    pad_x = torch.rand(1, 2, *batch.support_x.shape[2:])
    padded = TaskBatch(
        torch.cat([batch.support_x, pad_x], 1),
        torch.cat([batch.support_y, torch.tensor([[4, 1]])], 1),
        torch.cat([batch.support_weight, torch.zeros(1, 2)], 1),
        torch.tensor([[True, True, True, False, False]]),
        batch.query_x,
        batch.query_y,
    )
    probs = probabilities(learner, padded)
    assert float(probs[..., 3:].max()) < 1e-12
    torch.testing.assert_close(probs[..., :3], base, rtol=1e-5, atol=1e-6)


def test_unbalanced_support_is_weighted_per_class() -> None:
    learner = tiny_image_learner(steps=2)
    batch = random_image_tasks(1, ways=3, shots=3, queries=2)
    keep = torch.tensor([0, 1, 2, 3, 5])  # class 0 keeps 2 shots, class 1 one, class 2 two
    unbalanced = TaskBatch(
        batch.support_x[:, keep],
        batch.support_y[:, keep],
        batch.support_weight[:, keep],
        batch.class_mask,
        batch.query_x,
        batch.query_y,
    )
    weights = torch.zeros(1, 9)
    weights[0, keep] = 1
    masked = TaskBatch(
        batch.support_x, batch.support_y, weights, batch.class_mask, batch.query_x, batch.query_y
    )
    torch.testing.assert_close(
        probabilities(learner, masked), probabilities(learner, unbalanced), rtol=1e-5, atol=1e-6
    )


def test_vmap_and_loop_batching_agree() -> None:
    learner = tiny_image_learner(steps=3)
    batch = random_image_tasks(3, ways=4, shots=2, queries=2)
    torch.testing.assert_close(
        probabilities(learner, batch, "vmap"),
        probabilities(learner, batch, "loop"),
        rtol=1e-5,
        atol=1e-6,
    )
