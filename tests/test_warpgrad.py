"""WarpGrad: warp-layers stay fixed while adapting, are meta-learned with Algorithm 2 (this
meta-batch's points, or a fifo buffer), exactly as written out by hand, beat no meta-training,
and survive a checkpoint round trip and `innerloop train`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_image_tasks, to_double
from innerloop_training.algorithms import OuterConfig, build_algorithm
from innerloop_training.data.regression import SineTasks
from innerloop_training.evaluation import evaluate_learner
from innerloop_training.sources import RegressionTaskSource
from innerloop_training.tasks import TaskBatch
from innerloop_training.warpgrad import BufferEntry, ReplayBuffer, WarpGrad, WarpGradConfig
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from innerloop.adaptation import InnerLoop, Predictions, adapt
from innerloop.checkpoint import CheckpointError, build_card, load_checkpoint, save_checkpoint
from innerloop.cli import main as innerloop_main
from innerloop.learner import InnerDefaults, Learner
from innerloop.models import ArchConfig, is_warp_parameter

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def image_learner(warp: str, head: str = "proto", steps: int = 3, seed: int = 0) -> Learner:
    arch = ArchConfig(kind="conv4", image_size=8, filters=4, blocks=3, norm_groups=2, warp=warp)
    return Learner.create(arch, head, InnerDefaults(steps, 0.1), seed=seed)


def sine_learner(warp: str, seed: int = 0) -> Learner:
    return Learner.create(
        ArchConfig(kind="mlp", warp=warp), "none", InnerDefaults(5, 0.02), seed=seed
    )


def predict(learner: Learner, batch: TaskBatch, lr: float | None = None) -> Predictions:
    return learner.adapt_and_predict(
        batch.support_x,
        batch.support_y,
        batch.support_weight,
        batch.class_mask,
        batch.query_x,
        lr=lr,
    )


def perturb_warp(learner: Learner, seed: int = 1) -> None:
    """Move warp-layers off the identity, so a test cannot pass by warp being a no-op."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, value in learner.params.items():
            if is_warp_parameter(name):
                value.add_(0.1 * torch.randn(value.shape, generator=generator))


# ---- architecture --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "warp"),
    [
        ("conv4", "linear"),
        ("conv4", "conv"),
        ("conv4", "residual"),
        ("mlp", "linear"),
        ("mlp", "residual"),
    ],
)
def test_warp_layers_start_as_identity_and_are_frozen(kind: str, warp: str) -> None:
    if kind == "conv4":
        plain, warped = image_learner("none"), image_learner(warp)
        x = torch.rand(5, 1, 8, 8)
    else:
        plain, warped = sine_learner("none"), sine_learner(warp)
        x = torch.linspace(-5, 5, 7)[:, None]
    names = [k for k in warped.params if is_warp_parameter(k)]
    assert names and all(".warp." in k and k.startswith("body.") for k in names)
    assert warped.frozen == frozenset(names)
    assert not set(names) & set(warped.step_sizes)  # never adapted, so no step sizes
    # same seed, same adaptable init (warp-layers draw nothing from the RNG) ...
    adaptable = {k: v for k, v in warped.params.items() if k not in warped.frozen}
    assert [v.shape for v in adaptable.values()] == [v.shape for v in plain.params.values()]
    for mine, theirs in zip(adaptable.values(), plain.params.values(), strict=True):
        assert torch.equal(mine, theirs)
    # ... and identity warp-layers: the same function
    torch.testing.assert_close(warped.features(warped.params, x), plain.features(plain.params, x))


def test_conv_warp_needs_a_conv_body() -> None:
    with pytest.raises(ValueError, match="conv4 body"):
        ArchConfig(kind="mlp", warp="conv")
    with pytest.raises(ValueError, match="warp"):
        ArchConfig(warp="spiral")
    with pytest.raises(ValueError, match="warp-layers"):
        build_algorithm("warp", image_learner("none"), InnerLoop(1), OuterConfig())


# ---- adaptation -----------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_adaptation_moves_adaptable_parameters_and_never_warp(optimizer: str) -> None:
    learner = image_learner("residual", head="zero")
    perturb_warp(learner)
    batch = random_image_tasks(tasks=1, ways=3, shots=2, queries=2)
    seen: list[set[str]] = []
    step_sizes = learner.scaled_step_sizes(0.1 if optimizer == "sgd" else 0.01)
    result = adapt(
        learner,
        learner.params,
        step_sizes,
        batch.support_x[0],
        batch.support_y[0],
        batch.support_weight[0],
        batch.class_mask[0],
        InnerLoop(3, optimizer, first_order=True),
        trajectory=lambda step, params, grads, loss: seen.append(set(params)),
    )
    assert all(not any(is_warp_parameter(k) for k in names) for names in seen)
    for name, value in result.params.items():
        if is_warp_parameter(name):
            assert value is learner.params[name] or torch.equal(value, learner.params[name])
        elif not name.startswith("head."):
            assert not torch.equal(value, learner.params[name]), f"{name} did not adapt"
    assert float(result.loss_after) < float(result.loss_before)


# ---- meta-training --------------------------------------------------------------------------
def test_replay_buffer_is_bounded_fifo() -> None:
    buffer = ReplayBuffer(capacity=5, seed=0)
    empty = torch.zeros(0)
    for i in range(12):
        buffer.add(BufferEntry({"i": torch.tensor(i)}, *(empty,) * 6))
    assert len(buffer) == 5 and buffer.added == 12
    kept = sorted(int(e.params["i"]) for e in buffer.sample(10))
    assert kept == [7, 8, 9, 10, 11]  # the newest five
    assert len(buffer.sample(3)) == 3


@pytest.mark.parametrize("name", ["warp", "warp-leap"])
def test_meta_training_moves_warp_parameters(name: str) -> None:
    learner = image_learner("conv")
    before = {k: v.detach().clone() for k, v in learner.params.items()}
    config = WarpGradConfig(learn_init=name == "warp-leap")
    algorithm = WarpGrad(learner, InnerLoop(3, first_order=True), OuterConfig("adam", 1e-2), config)
    for seed in range(2):
        metrics = algorithm.step(random_image_tasks(tasks=2, ways=3, shots=2, queries=2, seed=seed))
    assert np.isfinite(metrics["warp_objective"])
    for key, value in learner.params.items():
        moved = not torch.equal(value.detach(), before[key])
        if is_warp_parameter(key):
            assert moved, f"warp parameter {key} was not meta-learned"
        else:  # the init is WarpGrad's only with Leap
            assert moved == (name == "warp-leap"), key
    assert algorithm.name == name


def test_default_batch_buffer_holds_only_this_meta_batch_and_is_cleared() -> None:
    """Algorithm 2 as in the reference: every inner step's point, one update per point, then
    the points are dropped, so nothing from an earlier meta-step is ever replayed."""
    learner = image_learner("conv")
    algorithm = build_algorithm("warp", learner, InnerLoop(3), OuterConfig("sgd", 1e-2))
    assert isinstance(algorithm, WarpGrad) and algorithm.config.buffer == "batch"
    for seed in range(3):
        metrics = algorithm.step(random_image_tasks(tasks=2, ways=3, shots=2, queries=2, seed=seed))
        assert metrics["buffer"] == 2 * 3  # tasks x (θ_0, θ_1, θ_2) of this meta-batch only
        assert metrics["warp_updates"] == 2 * 3  # warp_batch 1, one pass
        assert len(algorithm.buffer) == 0
    assert algorithm.buffer.added == 3 * 2 * 3
    strided = WarpGradConfig(store_every=2, warp_batch=0)
    algorithm = WarpGrad(
        image_learner("conv"), InnerLoop(3, first_order=True), OuterConfig(), strided
    )
    metrics = algorithm.step(random_image_tasks(tasks=2, ways=3, shots=2, queries=2))
    assert metrics["buffer"] == 2 * 2 and metrics["warp_updates"] == 1  # θ_0, θ_2; all at once


def test_fifo_buffer_keeps_points_across_meta_steps() -> None:
    learner = image_learner("conv")
    config = WarpGradConfig(buffer="fifo", buffer_size=7, warp_batch=4, warp_updates=1)
    algorithm = WarpGrad(learner, InnerLoop(3, first_order=True), OuterConfig("adam", 1e-2), config)
    for seed in range(4):
        metrics = algorithm.step(random_image_tasks(tasks=2, ways=3, shots=2, queries=2, seed=seed))
        assert len(algorithm.buffer) == min(7, 2 * 3 * (seed + 1))
    assert algorithm.buffer.added == 4 * 2 * 3 and metrics["warp_updates"] == 1
    assert metrics["buffer"] == 7


def test_minibatches_cover_every_point_once_per_pass() -> None:
    buffer = ReplayBuffer(None, seed=0)
    empty = torch.zeros(0)
    for i in range(7):
        buffer.add(BufferEntry({"i": torch.tensor(i)}, *(empty,) * 6))
    one_pass = buffer.minibatches(3, 0)
    assert [len(b) for b in one_pass] == [3, 3, 1]
    assert sorted(int(e.params["i"]) for b in one_pass for e in b) == list(range(7))
    assert [len(b) for b in buffer.minibatches(0, 0)] == [7]
    assert len(buffer.minibatches(2, 5)) == 5


def _double_sine_batch(tasks: int = 2, shots: int = 5, queries: int = 4) -> TaskBatch:
    generator = torch.Generator().manual_seed(3)
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


@pytest.mark.parametrize("store_every", [1, 2])
def test_algorithm_2_step_matches_hand_unrolled_computation(store_every: int) -> None:
    """One warp-leap meta-step equals Algorithm 2 written out by hand on a tiny float64 MLP:
    SGD trajectories under the current warp, the look-ahead objective averaged over the stored
    points, one SGD step of the warp-layers at their own step size, then the init's step with
    the reference's simplified Leap gradient at the init's step size."""
    steps, alpha, init_lr, warp_lr = 3, 0.125, 0.25, 0.0625
    learner = to_double(
        Learner.create(
            ArchConfig(kind="mlp", hidden=(4,), warp="linear"),
            "none",
            InnerDefaults(steps, alpha),
            seed=2,
        )
    )
    perturb_warp(learner)
    batch = _double_sine_batch()
    warp_keys = [k for k in learner.params if is_warp_parameter(k)]
    init = {k: v.detach().clone() for k, v in learner.params.items() if k not in warp_keys}
    warp = {k: learner.params[k].detach().clone().requires_grad_(True) for k in warp_keys}

    def loss(theta: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = learner.forward({**theta, **warp}, x, batch.class_mask[0])
        return learner.loss(out, y, torch.ones(y.shape[0], dtype=y.dtype))

    points, leap = [], {k: torch.zeros_like(v) for k, v in init.items()}
    for b in range(batch.tasks):
        theta = init
        for k in range(steps):
            if k % store_every == 0:
                points.append((theta, b))
            live = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
            g = torch.autograd.grad(
                loss(live, batch.support_x[b], batch.support_y[b]), list(live.values())
            )
            new = {
                name: (v - alpha * gk).detach()
                for (name, v), gk in zip(theta.items(), g, strict=True)
            }
            step_norm = torch.sqrt(sum(((theta[n] - new[n]) ** 2).sum() for n in theta))
            for n in theta:  # simplified Leap: unit-length steps, no loss dimension
                leap[n] += (theta[n] - new[n]) / step_norm / batch.tasks
            theta = new
    objective = torch.zeros((), dtype=torch.float64)
    for theta, b in points:
        theta = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
        g = torch.autograd.grad(
            loss(theta, batch.support_x[b], batch.support_y[b]),
            list(theta.values()),
            create_graph=True,
        )
        ahead = {k: v - alpha * gk for (k, v), gk in zip(theta.items(), g, strict=True)}
        objective = objective + loss(ahead, batch.query_x[b], batch.query_y[b]) / len(points)
    warp_grads = torch.autograd.grad(objective, list(warp.values()))

    config = WarpGradConfig(store_every=store_every, warp_batch=0, learn_init=True, warp_lr=warp_lr)
    algorithm = WarpGrad(
        learner, InnerLoop(steps, first_order=True), OuterConfig("sgd", init_lr, None), config
    )
    metrics = algorithm.step(batch)
    assert metrics["warp_updates"] == 1 and metrics["buffer"] == len(points)
    assert metrics["warp_objective"] == pytest.approx(float(objective.detach()), rel=1e-10)
    for key, grad in zip(warp_keys, warp_grads, strict=True):
        expected = warp[key].detach() - warp_lr * grad
        torch.testing.assert_close(learner.params[key].detach(), expected, rtol=1e-9, atol=1e-12)
    for key, value in init.items():
        expected = value - init_lr * leap[key]
        torch.testing.assert_close(learner.params[key].detach(), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("objective", ["step", "loss"])
def test_warp_gradient_is_the_meta_objective_gradient(objective: str) -> None:
    """Batched buffer evaluation equals a plain autograd computation, sample by sample."""
    learner = sine_learner("linear")
    perturb_warp(learner)
    algorithm = WarpGrad(
        learner,
        InnerLoop(2, first_order=True),
        OuterConfig(),
        WarpGradConfig(objective=objective, warp_batch=3),
    )
    source = RegressionTaskSource(SineTasks(), "sine", shots=5, queries=5, seed=0)
    algorithm.collect(source.sample(2))
    entries = algorithm.buffer.sample(3)
    stored = [{k: v.clone() for k, v in e.params.items()} for e in entries]
    loss, grads = algorithm.warp_gradient(entries)
    warp_names = [k for k in learner.params if is_warp_parameter(k)]
    assert sorted(grads) == sorted(warp_names)

    total = torch.zeros(())
    for entry in entries:
        theta = {k: v.clone().requires_grad_(True) for k, v in entry.params.items()}
        if objective == "step":
            out = learner.forward({**learner.params, **theta}, entry.support_x, entry.class_mask)
            inner = learner.loss(out, entry.support_y, entry.support_weight)
            g = torch.autograd.grad(inner, list(theta.values()), create_graph=True)
            theta = {
                k: v - learner.step_sizes[k] * gk
                for (k, v), gk in zip(theta.items(), g, strict=True)
            }
        out = learner.forward({**learner.params, **theta}, entry.query_x, entry.class_mask)
        total = total + learner.loss(out, entry.query_y, torch.ones(entry.query_y.shape[0]))
    total = total / len(entries)
    expected = torch.autograd.grad(total, [learner.params[k] for k in warp_names])
    assert loss == pytest.approx(float(total.detach()), rel=1e-5)
    for key, value in zip(warp_names, expected, strict=True):
        torch.testing.assert_close(grads[key], value, rtol=1e-4, atol=1e-6)
    for entry, before in zip(entries, stored, strict=True):  # stored points are constants
        for key, value in entry.params.items():
            assert torch.equal(value, before[key]) and value.grad is None


@pytest.mark.parametrize("name", ["warp", "warp-leap"])
def test_warpgrad_beats_no_meta_training_on_sine(name: str) -> None:
    source = RegressionTaskSource(SineTasks(), "sine", shots=10, queries=10, seed=0)
    test_tasks = source.fixed(100, seed=123)
    untrained = sine_learner("none")
    learner = sine_learner("linear")  # identity warp: starts as exactly the untrained model
    # one Adam step on all of a meta-step's points (the reference's one step per point, 50 of
    # them per meta-step, is for SGD; with Adam at this step size it overshoots)
    warp = WarpGradConfig(warp_batch=0)
    algorithm = build_algorithm(name, learner, InnerLoop(5), OuterConfig("adam", 1e-2), warp)
    for _ in range(150):
        algorithm.step(source.sample(10))
    before = evaluate_learner(untrained, test_tasks).mean
    after = evaluate_learner(learner, test_tasks).mean
    print(f"sine MSE after 5 steps: {before:.3f} no meta-training, {after:.3f} {name}")
    assert after < 0.5 * before, f"{name} MSE {after:.3f} vs no meta-training {before:.3f}"


# ---- checkpoints and the CLI ----------------------------------------------------------------
def test_warpgrad_checkpoint_round_trips_and_adapts(tmp_path: Path) -> None:
    learner = image_learner("conv")
    algorithm = build_algorithm("warp", learner, InnerLoop(3), OuterConfig("adam", 1e-2))
    algorithm.step(random_image_tasks(tasks=2, ways=3, shots=2, queries=2))
    card = build_card(learner, "warped")
    assert card["architecture"]["warp"] == "conv"
    assert sorted(card["adaptation"]["frozen"]) == sorted(learner.frozen)
    path = save_checkpoint(learner, tmp_path / "warped.safetensors", card)
    loaded, _ = load_checkpoint(path)
    assert loaded.frozen == learner.frozen and loaded.arch == learner.arch
    assert set(loaded.step_sizes) == set(learner.step_sizes)
    for key, value in learner.params.items():
        assert torch.equal(loaded.params[key], value.detach())
    batch = random_image_tasks(tasks=2, ways=3, shots=2, queries=3, seed=5)
    before = predict(learner, batch).outputs
    after = predict(loaded, batch)
    assert torch.equal(before, after.outputs) and torch.isfinite(after.outputs).all()
    small_steps = predict(loaded, batch, lr=0.001)
    assert bool((small_steps.loss_after < small_steps.loss_before).all())


def test_checkpoint_with_unfrozen_warp_parameters_is_refused(tmp_path: Path) -> None:
    learner = image_learner("linear")
    good = save_checkpoint(learner, tmp_path / "good.safetensors", build_card(learner, "good"))
    with safe_open(str(good), "pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        card = json.loads(handle.metadata()["innerloop_card"])
    card["adaptation"]["frozen"] = []
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"innerloop_card": json.dumps(card)})
    with pytest.raises(CheckpointError, match="warp parameters must be listed"):
        load_checkpoint(bad)


def _image_folder(root: Path, classes: int = 20, per_class: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class{c:02d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((12, 12), 255, dtype=np.uint8)
            pixels[rng.integers(0, 12, 8), rng.integers(0, 12, 8)] = 0
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_innerloop_train_warp_writes_a_loadable_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _image_folder(tmp_path / "images")
    out = tmp_path / "warp.safetensors"
    args = [
        "train",
        "--dataset",
        "folder",
        "--path",
        str(folder),
        "--image-size",
        "16",
        "--filters",
        "8",
        "--ways",
        "2",
        "--shots",
        "1",
        "--queries",
        "1",
        "--inner-steps",
        "2",
        "--meta-batch",
        "2",
        "--meta-steps",
        "2",
        "--eval-episodes",
        "2",
        "--run-dir",
        str(tmp_path / "run"),
        "--out",
        str(out),
        "--threads",
        "1",
    ]
    assert innerloop_main([*args, "--algorithm", "warp", "--warp", "none"]) == 2  # refused
    assert "--warp" in capsys.readouterr().out
    knobs = ["--warp-batch", "all", "--warp-lr", "0.05", "--grad-clip", "5", "--warp-leap-loss"]
    assert innerloop_main([*args, "--algorithm", "warp-leap", *knobs]) == 0
    config = load_checkpoint(out)[1]["training"]["config"]
    assert (config["warp"], config["warp_batch"], config["warp_lr"]) == ("conv", 0, 0.05)
    assert config["grad_clip"] == 5.0 and config["warp_leap_loss"] is True
    # no --warp: the papers' conv warp-layers; the reference's Algorithm 2 settings, recorded
    assert innerloop_main([*args, "--algorithm", "warp"]) == 0
    learner, card = load_checkpoint(out)
    assert card["training"]["algorithm"] == "warp"
    config = card["training"]["config"]
    recorded = {k: config[k] for k in ("outer_optimizer", "outer_lr", "grad_clip", "warp_lr")}
    assert recorded == {
        "outer_optimizer": "sgd",
        "outer_lr": 0.1,
        "grad_clip": 0.0,
        "warp_lr": 0.1,
    }
    assert (config["warp_buffer"], config["warp_store_every"], config["warp_batch"]) == (
        "batch",
        1,
        1,
    )
    assert config["warp_updates"] == 0 and config["warp_objective"] == "step"
    assert card["architecture"]["warp"] == "conv" and learner.frozen
    assert all(is_warp_parameter(k) for k in card["adaptation"]["frozen"])
    batch = random_image_tasks(tasks=1, ways=2, shots=1, queries=2, size=16)
    prediction = predict(learner, batch)
    assert prediction.outputs.shape == (1, 4, 2) and torch.isfinite(prediction.outputs).all()
    # warp parameters are the trained ones, and serving never moves them
    fresh = Learner.create(replace(learner.arch), "proto")
    assert any(not torch.equal(learner.params[k], fresh.params[k]) for k in learner.frozen)
