"""Leap: the meta-gradient equals a hand computation; memory stays flat; it beats no meta-training.

The reference below writes out a 1-hidden-layer ReLU network, its gradient (plain
backpropagation, no autograd) and the inner SGD/Adam steps explicitly, then applies the
trajectory-length formula of Flennerhag et al. (2019) / the ``leap`` package segment by segment.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import random_image_tasks, tiny_image_learner, to_double
from innerloop_training.algorithms import OuterConfig, build_algorithm
from innerloop_training.data.regression import SineTasks
from innerloop_training.evaluation import evaluate_learner
from innerloop_training.leap import Leap, LeapAccumulator, LeapConfig, leap_gradient
from innerloop_training.sources import RegressionTaskSource

from innerloop.adaptation import InnerLoop, adapt
from innerloop.learner import InnerDefaults, Learner
from innerloop.models import ArchConfig

Params = dict[str, torch.Tensor]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _forward_backward(p: Params, x: torch.Tensor, y: torch.Tensor) -> tuple[float, Params]:
    """Loss mean((W2 relu(W1 x + b1) + b2 - y)^2) and its gradient, by hand."""
    w1, b1, w2, b2 = p["body.0.weight"], p["body.0.bias"], p["body.2.weight"], p["body.2.bias"]
    z = x @ w1.T + b1  # [n, h]
    h = z.clamp_min(0)
    f = h @ w2.T + b2  # [n, 1]
    n = x.shape[0]
    loss = float(((f - y) ** 2).sum() / n)
    d_f = 2 * (f - y) / n
    d_h = d_f @ w2
    d_z = d_h * (z > 0).to(z.dtype)
    grads = {
        "body.2.weight": d_f.T @ h,
        "body.2.bias": d_f.sum(0),
        "body.0.weight": d_z.T @ x,
        "body.0.bias": d_z.sum(0),
    }
    return loss, grads


def _reference(
    init: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    steps: int,
    optimizer: str,
    config: LeapConfig,
) -> tuple[Params, bool]:
    """Leap gradient of one task, and whether some step increased the loss."""
    theta, losses, grads = [dict(init)], [], []
    first = {k: torch.zeros_like(v) for k, v in init.items()}
    second = {k: torch.zeros_like(v) for k, v in init.items()}
    for t in range(1, steps + 1):
        loss, g = _forward_backward(theta[-1], x, y)
        losses.append(loss)
        grads.append(g)
        new = {}
        for k, p in theta[-1].items():
            if optimizer == "sgd":
                new[k] = p - lr * g[k]
            else:  # Adam, bias-corrected, betas (0.9, 0.999), eps 1e-8
                first[k] = 0.9 * first[k] + 0.1 * g[k]
                second[k] = 0.999 * second[k] + 0.001 * g[k] ** 2
                m_hat, v_hat = first[k] / (1 - 0.9**t), second[k] / (1 - 0.999**t)
                new[k] = p - lr * m_hat / (v_hat.sqrt() + 1e-8)
        theta.append(new)
    losses.append(_forward_backward(theta[-1], x, y)[0])
    total = {k: torch.zeros_like(v) for k, v in init.items()}
    went_up = False
    for i in range(steps):
        d_loss = losses[i + 1] - losses[i]
        went_up |= d_loss > 0
        if config.stabilizer and d_loss > 0:
            d_loss = -d_loss
        squared = sum(float(((theta[i + 1][k] - theta[i][k]) ** 2).sum()) for k in init)
        length = math.sqrt(squared + (d_loss**2 if config.loss else 0.0))
        for k in init:
            # -(Δθ + Δloss ∇L(θ_i)), divided by the segment length for the path length d1
            increment = -(theta[i + 1][k] - theta[i][k])
            if config.loss:
                increment = increment - d_loss * grads[i][k]
            total[k] += increment / length if config.norm else increment
    return total, went_up


def _tiny_mlp(lr: float, steps: int, optimizer: str) -> Learner:
    learner = Learner.create(
        ArchConfig(kind="mlp", hidden=(3,)), "none", InnerDefaults(steps, lr, optimizer), seed=3
    )
    return to_double(learner)


def _regression_tasks(tasks: int, points: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    x = torch.linspace(-2, 2, points, dtype=torch.float64).repeat(tasks, 1)[..., None]
    y = torch.randn(tasks, points, 1, generator=generator, dtype=torch.float64)
    return x, y


@pytest.mark.parametrize(
    ("optimizer", "lr", "config"),
    [
        # step sizes exact in float32, which is what Learner.create stores them in
        ("sgd", 0.125, LeapConfig()),
        ("sgd", 1.5, LeapConfig()),  # large steps: the loss goes up, the stabiliser acts
        ("sgd", 1.5, LeapConfig(stabilizer=False)),
        ("sgd", 0.125, LeapConfig(norm=False)),
        ("sgd", 0.125, LeapConfig(loss=False)),
        ("adam", 0.0625, LeapConfig()),
    ],
)
def test_leap_gradient_matches_hand_computation(
    optimizer: str, lr: float, config: LeapConfig
) -> None:
    steps, tasks = 2, 2
    learner = _tiny_mlp(lr, steps, optimizer)
    x, y = _regression_tasks(tasks)
    weight = torch.ones(tasks, x.shape[1], dtype=torch.float64)
    mask = torch.ones(tasks, 1, dtype=torch.bool)
    loop = InnerLoop(steps, optimizer, first_order=True)
    for batching in ("loop", "vmap"):
        grads, metrics = leap_gradient(
            learner,
            learner.params,
            learner.step_sizes,
            x,
            y,
            weight,
            mask,
            loop,
            config,
            batching=batching,
        )
        assert set(grads) == set(learner.params)
        references = [
            _reference(learner.params, x[b], y[b], lr, steps, optimizer, config)
            for b in range(tasks)
        ]
        for name, grad in grads.items():
            expected = sum(ref[name] for ref, _ in references) / tasks  # mean over the batch
            torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-12)
        assert metrics["diverged_tasks"] == 0
    if lr > 1:
        assert any(went_up for _, went_up in references), "case meant to exercise the stabiliser"


def test_outer_step_hands_the_leap_gradient_to_the_optimiser() -> None:
    learner = _tiny_mlp(0.125, 2, "sgd")
    x, y = _regression_tasks(3)
    before = {k: v.detach().clone() for k, v in learner.params.items()}
    references = [
        _reference(before, x[b], y[b], 0.125, 2, "sgd", LeapConfig())[0] for b in range(3)
    ]
    algorithm = Leap(learner, InnerLoop(2, first_order=True), OuterConfig("sgd", 0.5, None))
    from innerloop_training.tasks import TaskBatch

    # Leap adapts on support and query together: split the points between them
    batch = TaskBatch(
        x[:, :4],
        y[:, :4],
        torch.ones(3, 4, dtype=torch.float64),
        torch.ones(3, 1, dtype=torch.bool),
        x[:, 4:],
        y[:, 4:],
    )
    algorithm.step(batch)
    for name, value in learner.params.items():
        expected = before[name] - 0.5 * sum(ref[name] for ref in references) / 3
        torch.testing.assert_close(value.detach(), expected, rtol=1e-9, atol=1e-12)


def test_accumulator_memory_does_not_grow_with_steps() -> None:
    """Only the previous point is held: the same tensors count after 3 or 300 steps."""
    learner = _tiny_mlp(0.01, 0, "sgd")
    x, y = _regression_tasks(1)

    def held(steps: int) -> int:
        accumulator = LeapAccumulator()
        counts = []

        def spy(step: int, params: Params, grads: Params, loss: torch.Tensor) -> None:
            accumulator(step, params, grads, loss)
            state = accumulator._prev
            assert state is not None
            counts.append(len(state[0]) + len(state[1]) + 1 + len(accumulator.grad))

        adapt(
            learner,
            learner.params,
            learner.step_sizes,
            x[0],
            y[0],
            torch.ones(x.shape[1], dtype=torch.float64),
            torch.ones(1, dtype=torch.bool),
            InnerLoop(steps, first_order=True),
            trajectory=spy,
        )
        return max(counts)

    assert held(3) == held(300)


def test_leap_works_with_a_conv_learner_and_a_zero_head() -> None:
    learner = tiny_image_learner(head="zero", steps=3, lr=0.1)
    batch = random_image_tasks(tasks=2, ways=3, shots=2, queries=2)
    algorithm = build_algorithm("leap", learner, InnerLoop(3, "adam"), OuterConfig("adam", 1e-2))
    before = {k: v.detach().clone() for k, v in learner.params.items()}
    metrics = algorithm.step(batch)
    assert metrics["trajectory_length"] > 0 and math.isfinite(metrics["grad_norm"])
    for name, value in learner.params.items():  # the shared head vector moves too
        assert not torch.equal(value.detach(), before[name]), name


def test_leap_beats_no_meta_training_on_sine() -> None:
    torch.manual_seed(0)
    source = RegressionTaskSource(SineTasks(), "sine", shots=10, queries=10, seed=0)
    test_tasks = source.fixed(100, seed=123)
    untrained = Learner.create(ArchConfig(kind="mlp"), "none", InnerDefaults(5, 0.02))
    learner = Learner.create(ArchConfig(kind="mlp"), "none", InnerDefaults(5, 0.02))  # same init
    algorithm = build_algorithm("leap", learner, InnerLoop(5), OuterConfig("adam", 1e-2))
    for _ in range(150):
        algorithm.step(source.sample(10))
    before = evaluate_learner(untrained, test_tasks).mean
    after = evaluate_learner(learner, test_tasks).mean
    print(f"sine MSE after 5 steps: {before:.3f} no meta-training, {after:.3f} Leap")
    assert after < 0.5 * before, f"Leap MSE {after:.3f} vs no meta-training {before:.3f}"
