"""Meta-gradients against independent references: hand-unrolled autograd, finite differences."""

from __future__ import annotations

import pytest
import torch
from helpers import random_image_tasks, tiny_image_learner, tiny_regression_learner, to_double
from innerloop_training.algorithms import OuterConfig, build_algorithm, default_outer
from innerloop_training.tasks import TaskBatch
from torch.func import functional_call

from innerloop.adaptation import InnerLoop, adapt_and_predict
from innerloop.learner import Learner


def sine_like_tasks(tasks: int = 3, shots: int = 5, queries: int = 7) -> TaskBatch:
    generator = torch.Generator().manual_seed(1)
    amplitude = 0.5 + 2 * torch.rand(tasks, 1, 1, generator=generator, dtype=torch.float64)
    sx = 10 * torch.rand(tasks, shots, 1, generator=generator, dtype=torch.float64) - 5
    qx = 10 * torch.rand(tasks, queries, 1, generator=generator, dtype=torch.float64) - 5
    return TaskBatch(
        sx,
        amplitude * torch.sin(sx),
        torch.ones(tasks, shots, dtype=torch.float64),
        torch.ones(tasks, 1, dtype=torch.bool),
        qx,
        amplitude * torch.sin(qx),
    )


def body_call(learner: Learner, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    weights = {k.removeprefix("body."): v for k, v in params.items()}
    out: torch.Tensor = functional_call(learner.body, weights, (x,))
    return out


def reference_meta_gradient(
    learner: Learner, batch: TaskBatch, steps: int, lr: float, second_order: bool
) -> dict[str, torch.Tensor]:
    """MAML written out by hand, one task at a time, with ``torch.autograd.grad``."""
    params = {k: v.detach().clone().requires_grad_(True) for k, v in learner.params.items()}
    total = torch.zeros((), dtype=torch.float64)
    for t in range(batch.tasks):
        fast = dict(params)
        for _ in range(steps):
            loss = ((body_call(learner, fast, batch.support_x[t]) - batch.support_y[t]) ** 2).mean()
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=second_order)
            fast = {k: v - lr * g for (k, v), g in zip(fast.items(), grads, strict=True)}
        if not second_order:  # FOMAML: the adapted point, treated as a shift of the init
            shift = {k: (fast[k] - params[k]).detach() for k in params}
            fast = {k: params[k] + shift[k] for k in params}
        query = ((body_call(learner, fast, batch.query_x[t]) - batch.query_y[t]) ** 2).mean()
        total = total + query
    (total / batch.tasks).backward()
    return {k: v.grad for k, v in params.items() if v.grad is not None}


def our_meta_gradient(
    learner: Learner, batch: TaskBatch, loop: InnerLoop, batching: str = "auto"
) -> dict[str, torch.Tensor]:
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
        loop,
        batching=batching,
    )
    ((predictions.outputs - batch.query_y) ** 2).mean().backward()
    return {k: v.grad for k, v in params.items() if v.grad is not None}


def assert_same_gradients(
    ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]
) -> None:
    assert ours.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(ours[name], reference[name], rtol=1e-7, atol=1e-9, msg=name)


def test_second_order_maml_matches_hand_unrolled_autograd() -> None:
    learner = to_double(tiny_regression_learner(steps=3, lr=0.02))
    batch = sine_like_tasks()
    reference = reference_meta_gradient(learner, batch, steps=3, lr=0.02, second_order=True)
    for batching in ("vmap", "loop"):
        ours = our_meta_gradient(learner, batch, InnerLoop(3, first_order=False), batching)
        assert_same_gradients(ours, reference)


def test_first_order_maml_drops_exactly_the_second_order_terms() -> None:
    learner = to_double(tiny_regression_learner(steps=3, lr=0.02))
    batch = sine_like_tasks()
    first = our_meta_gradient(learner, batch, InnerLoop(3, first_order=True))
    assert_same_gradients(first, reference_meta_gradient(learner, batch, 3, 0.02, False))
    second = our_meta_gradient(learner, batch, InnerLoop(3, first_order=False))
    difference = sum(float((first[k] - second[k]).abs().sum()) for k in first)
    assert difference > 1e-6, "second-order terms should be non-zero for a curved loss"


def test_second_order_gradient_of_image_learner_matches_finite_differences() -> None:
    """Covers the prototype head, group norm and pooling along the whole differentiated path."""
    learner = to_double(tiny_image_learner(steps=2, lr=0.1))
    batch = random_image_tasks(2, ways=3, shots=2, queries=2)
    batch = TaskBatch(
        batch.support_x.double(),
        batch.support_y,
        batch.support_weight.double(),
        batch.class_mask,
        batch.query_x.double(),
        batch.query_y,
    )
    loop = InnerLoop(2, first_order=False)

    def outer_loss(params: dict[str, torch.Tensor]) -> torch.Tensor:
        outputs = adapt_and_predict(
            learner,
            params,
            learner.step_sizes,
            batch.support_x,
            batch.support_y,
            batch.support_weight,
            batch.class_mask,
            batch.query_x,
            loop,
        ).outputs
        return torch.nn.functional.cross_entropy(outputs.flatten(0, 1), batch.query_y.flatten())

    params = {k: v.detach().clone().requires_grad_(True) for k, v in learner.params.items()}
    outer_loss(params).backward()
    generator = torch.Generator().manual_seed(3)
    direction = {
        k: torch.randn(v.shape, generator=generator, dtype=torch.float64) for k, v in params.items()
    }
    analytic = sum(float((params[k].grad * direction[k]).sum()) for k in params)
    eps = 1e-6  # the adapted loss is strongly curved; larger steps cross ReLU kinks
    with torch.no_grad():
        plus = outer_loss({k: v + eps * direction[k] for k, v in params.items()})
        minus = outer_loss({k: v - eps * direction[k] for k, v in params.items()})
    numeric = float(plus - minus) / (2 * eps)
    assert abs(analytic - numeric) < 1e-4 * max(1.0, abs(numeric))


@pytest.mark.parametrize("outer", [None, OuterConfig("sgd", 0.3, grad_clip=None)])
def test_reptile_update_equals_its_formula(outer: OuterConfig | None) -> None:
    """Reptile's default outer step *is* Reptile's update: plain SGD, no clipping."""
    learner = to_double(tiny_regression_learner(steps=4, lr=0.02))
    batch = sine_like_tasks()
    before = {k: v.detach().clone() for k, v in learner.params.items()}
    if outer is None:
        outer = default_outer("reptile")
        assert (outer.optimizer, outer.lr, outer.grad_clip) == ("sgd", 0.1, None)
    epsilon = outer.lr
    algorithm = build_algorithm("reptile", learner, InnerLoop(4), outer)
    algorithm.step(batch)
    # reference: plain SGD on support + query of each task, then init += eps * mean(shift)
    x = torch.cat([batch.support_x, batch.query_x], 1)
    y = torch.cat([batch.support_y, batch.query_y], 1)
    shifts = {k: torch.zeros_like(v) for k, v in before.items()}
    for t in range(batch.tasks):
        fast = {k: v.clone().requires_grad_(True) for k, v in before.items()}
        for _ in range(4):
            loss = ((body_call(learner, fast, x[t]) - y[t]) ** 2).mean()
            grads = torch.autograd.grad(loss, list(fast.values()))
            fast = {
                k: (v - 0.02 * g).detach().requires_grad_(True)
                for (k, v), g in zip(fast.items(), grads, strict=True)
            }
        for k in shifts:
            shifts[k] += (fast[k].detach() - before[k]) / batch.tasks
    for name, value in learner.params.items():
        torch.testing.assert_close(
            value.detach(), before[name] + epsilon * shifts[name], rtol=1e-7, atol=1e-9
        )


def test_meta_sgd_learns_per_parameter_step_sizes() -> None:
    learner = tiny_regression_learner(steps=1, lr=0.01, learned=True)
    initial = {k: v.detach().clone() for k, v in learner.step_sizes.items()}
    assert all(v.shape == learner.params[k].shape for k, v in initial.items())
    algorithm = build_algorithm("metasgd", learner, InnerLoop(1), OuterConfig("adam", 1e-3))
    for seed in range(5):
        batch = sine_like_tasks()
        algorithm.step(
            TaskBatch(*(t.float() if t.is_floating_point() else t for t in batch.astuple()))
        )
        del seed
    changed = [k for k in initial if not torch.equal(initial[k], learner.step_sizes[k].detach())]
    assert changed == list(initial), "every step-size tensor should move"
    weight = learner.step_sizes["body.0.weight"].detach()
    assert weight.std() > 0, "step sizes should differ per parameter, not stay one scalar"
