"""WarpGrad (Flennerhag et al., ICLR 2020): meta-learned warp-layers precondition adaptation.

The body interleaves task-adaptable layers with warp-layers (``ArchConfig.warp``; parameters
``body.<i>.warp.*``, listed in ``Learner.frozen`` so :func:`innerloop.adaptation.adapt` never
moves them). Backpropagating through a warp-layer multiplies the adaptable layers' gradients by
its Jacobian, so learning the warp-layers learns a preconditioner for the inner loop; at serving
time they are ordinary fixed layers and a WarpGrad checkpoint adapts exactly like any other.

The warp-layers are meta-learned with the paper's Algorithm 2 (*offline* WarpGrad: the task
trajectories are collected first, the warp-layers are updated afterwards; the paper's online
variant, Algorithm 1, interleaves the two), which never backpropagates through a trajectory:

1. every task of the meta-batch adapts on its support set through the one inner loop; the
   ``trajectory`` hook keeps the visited task parameterisations ``θ_k`` (``k = 0, s, 2s, ..``
   below the number of inner steps, ``s = store_every``), each with its task's data;
2. the warp-parameters ``φ`` take outer steps on minibatches of ``warp_batch`` of those points
   (``0``: all in one step), one pass over them in random order (or ``warp_updates`` steps).
   The meta-objective of a point ``(θ, task)`` is the one-step look-ahead
   ``L_query(θ - α ∇_θ L_support(θ; φ); φ)`` (``objective="step"``, the reference code's
   ``warp_on_same_loss``) or simply ``L_query(θ; φ)`` (``objective="loss"``, its ``approx``
   mode); ``θ`` is a constant and only ``φ`` receives gradients. ``α`` is the learner's step
   size (the look-ahead is a plain gradient step even for an Adam inner loop);
3. the points are dropped (``buffer="batch"``, Algorithm 2 and the reference code, which clears
   its buffer after every meta-update). ``buffer="fifo"`` instead keeps up to ``buffer_size``
   points across meta-steps, so the warp also sees points visited under older parameters: a
   variant of ours, not the paper's.

The defaults are the reference code's (``src/warpgrad/warpgrad/updaters.py``: ``DualUpdater``
with ``bsz=1``, ``epochs=1``; ``warpgrad.py``: ``Warp.backward`` clears the buffer, and every
forward pass of the task loop is stored): every inner step is stored and each gives one warp
update. That is the most expensive setting; ``store_every`` and ``warp_batch`` trade it down.

``warp`` keeps the adaptable layers' init at its random start (only ``φ`` is meta-learned);
``warp-leap`` also meta-learns that init with Leap's trajectory-length gradient, accumulated from
the same support-set trajectories (:class:`~.leap.LeapAccumulator`) and applied
after the warp updates. By default that is the reference's *simplified* Leap (``updaters.py``,
``simplified_leap``: the sum of unit-length steps ``(θ_i - θ_{i+1}) / |θ_i - θ_{i+1}|``, no
loss dimension); ``leap_loss=True`` uses full Leap (loss dimension, stabiliser) as ``leap``
does. Warp-layers and init have separate step sizes (``warp_lr``; None = the init's, as the
reference's ``lr_adapt`` defaults to its meta ``lr``), as two groups of one outer optimiser.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.func import grad

from innerloop.adaptation import InnerLoop, Params, adapt
from innerloop.learner import Learner
from innerloop.models import is_warp_parameter
from innerloop_training.algorithms.base import (
    MetaAlgorithm,
    OuterConfig,
    apply_if_finite,
    map_tasks,
    set_gradients,
)
from innerloop_training.algorithms.leap import LeapAccumulator, LeapConfig, to_meta_shapes
from innerloop_training.tasks import TaskBatch

OBJECTIVES = ("step", "loss")
BUFFERS = ("batch", "fifo")


@dataclass(frozen=True)
class WarpGradConfig:
    """Algorithm 2's knobs; the defaults are the reference code's (see the module doc)."""

    buffer: str = "batch"  # "batch": this meta-batch's points, then cleared; "fifo": kept
    buffer_size: int = 200  # fifo only: points kept across meta-steps
    store_every: int = 1  # store θ_k every this many inner steps (reference: every step)
    warp_batch: int = 1  # points per warp update; 0 = all (reference bsz=1)
    warp_updates: int = 0  # warp updates per meta-step; 0 = one pass over the points
    objective: str = "step"  # "step": one-step look-ahead (paper); "loss": loss at θ
    learn_init: bool = False  # warp-leap: also meta-learn the init with Leap
    leap_loss: bool = False  # warp-leap: full Leap (True) or the reference's simplified Leap
    warp_lr: float | None = None  # outer step size of the warp-layers (None: the init's)
    seed: int = 0  # of the points' shuffling

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"WarpGrad objective {self.objective!r} is not one of {OBJECTIVES}")
        if self.buffer not in BUFFERS:
            raise ValueError(f"WarpGrad buffer {self.buffer!r} is not one of {BUFFERS}")
        for name in ("buffer_size", "store_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"WarpGrad {name} must be >= 1, got {getattr(self, name)}")
        for name in ("warp_batch", "warp_updates"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"WarpGrad {name} must be >= 0 (0: all), got {getattr(self, name)}"
                )
        if self.warp_lr is not None and self.warp_lr <= 0:
            raise ValueError(f"WarpGrad warp_lr must be > 0, got {self.warp_lr}")

    @property
    def leap(self) -> LeapConfig:
        """The init's Leap gradient: simplified (no loss dimension) unless ``leap_loss``."""
        return LeapConfig(loss=True) if self.leap_loss else LeapConfig(loss=False)


@dataclass
class BufferEntry:
    """One visited task parameterisation and the data of its task (one task, no batch dim)."""

    params: Params  # the adapted tensors (detached), per-task head included
    support_x: Tensor
    support_y: Tensor
    support_weight: Tensor
    class_mask: Tensor
    query_x: Tensor
    query_y: Tensor


class ReplayBuffer:
    """Trajectory points: a bounded FIFO (oldest fall out when full), or unbounded and cleared
    after every meta-step (``capacity=None``, Algorithm 2's batch buffer)."""

    def __init__(self, capacity: int | None, seed: int = 0) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError(f"replay buffer capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._entries: deque[BufferEntry] = deque(maxlen=capacity)
        self._rng = random.Random(seed)
        self.added = 0  # entries ever added (for logs)

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, entry: BufferEntry) -> None:
        self._entries.append(entry)
        self.added += 1

    def clear(self) -> None:
        self._entries.clear()

    def entries(self) -> list[BufferEntry]:
        return list(self._entries)

    def sample(self, count: int) -> list[BufferEntry]:
        """Up to ``count`` distinct entries, uniformly at random (seeded)."""
        return self._rng.sample(list(self._entries), min(count, len(self._entries)))

    def minibatches(self, size: int, updates: int) -> list[list[BufferEntry]]:
        """``updates`` minibatches of ``size`` entries (``size`` 0: all), drawn as consecutive
        slices of seeded shuffles, so every entry is used once before any twice; ``updates`` 0
        means one pass (the reference's ``epochs=1``)."""
        entries = list(self._entries)
        if not entries:
            return []
        size = size or len(entries)
        per_pass = -(-len(entries) // size)
        wanted = updates or per_pass
        batches: list[list[BufferEntry]] = []
        while len(batches) < wanted:
            order = entries[:]
            self._rng.shuffle(order)
            batches += [order[i : i + size] for i in range(0, len(order), size)]
        return batches[:wanted]


_DATA_FIELDS = ("support_x", "support_y", "support_weight", "class_mask", "query_x", "query_y")


def _signature(entry: BufferEntry) -> tuple[Any, ...]:
    """Entries with equal signatures can be stacked and evaluated in one batched call."""
    shapes = [(k, tuple(v.shape)) for k, v in entry.params.items()]
    return (*shapes, *(tuple(getattr(entry, f).shape) for f in _DATA_FIELDS))


def warp_names(learner: Learner) -> list[str]:
    return [k for k in learner.params if is_warp_parameter(k)]


class WarpGrad(MetaAlgorithm):
    """``warp`` (warp-layers only) and ``warp-leap`` (warp-layers + Leap init)."""

    def __init__(
        self,
        learner: Learner,
        loop: InnerLoop,
        outer: OuterConfig,
        config: WarpGradConfig = WarpGradConfig(),
        name: str | None = None,
    ) -> None:
        names = warp_names(learner)
        if not names:
            raise ValueError(
                "WarpGrad needs a body with warp-layers: set ArchConfig.warp "
                "(innerloop train --warp linear|conv|residual)"
            )
        unfrozen = sorted(set(names) - learner.frozen)
        if unfrozen:
            raise ValueError(f"warp parameters must be frozen in the learner: {unfrozen[:5]}")
        self.config = config
        self.name = name or ("warp-leap" if config.learn_init else "warp")
        capacity = config.buffer_size if config.buffer == "fifo" else None
        self.buffer = ReplayBuffer(capacity, config.seed)
        super().__init__(learner, loop, outer)

    def meta_tensors(self) -> dict[str, Tensor]:
        """Init of the adapted parameters (with ``learn_init``), then the warp parameters."""
        learner = self.learner
        init = {
            f"param/{k}": v
            for k, v in learner.params.items()
            if self.config.learn_init and k not in learner.frozen and not is_warp_parameter(k)
        }
        warp = {f"param/{k}": v for k, v in learner.params.items() if is_warp_parameter(k)}
        return {**init, **warp}

    def param_groups(self) -> list[dict[str, Any]]:
        """The init at the outer step size, the warp-layers at ``warp_lr`` (if given)."""
        tensors = self.meta_tensors()
        init = [v for k, v in tensors.items() if not is_warp_parameter(k)]
        warp = [v for k, v in tensors.items() if is_warp_parameter(k)]
        groups: list[dict[str, Any]] = [{"params": init}] if init else []
        lr = self.config.warp_lr if self.config.warp_lr is not None else self.outer.lr
        return [*groups, {"params": warp, "lr": lr}]

    # ---- one meta-step ------------------------------------------------------------------------
    def step(self, batch: TaskBatch) -> dict[str, float]:
        """Collect trajectories, update the warp-layers on them, then (warp-leap) the init."""
        config = self.config
        metrics, init_grads = self.collect(batch)
        warp_losses = []
        meta = self._meta_params()
        for entries in self.buffer.minibatches(config.warp_batch, config.warp_updates):
            loss, warp_grads = self.warp_gradient(entries)
            warp_losses.append(loss)
            set_gradients(meta, warp_grads)
            metrics["grad_norm"] = apply_if_finite(self)
        if init_grads:  # the reference's order: warp updates first, then the init's step
            set_gradients(meta, init_grads)
            metrics["init_grad_norm"] = apply_if_finite(self)
        metrics["warp_objective"] = sum(warp_losses) / max(len(warp_losses), 1)
        metrics["warp_updates"] = float(len(warp_losses))
        metrics["buffer"] = float(len(self.buffer))
        if config.buffer == "batch":
            self.buffer.clear()
        return metrics

    def collect(self, batch: TaskBatch) -> tuple[dict[str, float], Params]:
        """Adapt every task on its support set, filling the buffer (and Leap's gradient)."""
        learner, config = self.learner, self.config
        params, step_sizes, loop = learner.params, learner.step_sizes, self.loop

        def one_task(sx: Tensor, sy: Tensor, sw: Tensor, cm: Tensor) -> tuple[Any, ...]:
            stored: list[Params] = []
            leap = LeapAccumulator(config.leap) if config.learn_init else None

            def observe(step: int, fast: Params, grads: Params, loss: Tensor) -> None:
                # θ_0 .. θ_{K-1}, the points a gradient is taken at (as the reference stores)
                if step % config.store_every == 0:
                    stored.append({k: v.detach() for k, v in fast.items()})
                if leap is not None:
                    leap(step, fast, grads, loss)

            result = adapt(learner, params, step_sizes, sx, sy, sw, cm, loop, trajectory=observe)
            init_grad: Params = {}
            if leap is not None:
                init_grad = to_meta_shapes(leap.finish(result.params, result.loss_after), params)
            return stored, init_grad, result.loss_before, result.loss_after

        tensors = (batch.support_x, batch.support_y, batch.support_weight, batch.class_mask)
        with torch.no_grad():
            stored, init_grad, before, after = map_tasks(one_task, tensors)
        ok = torch.isfinite(after)  # a diverged trajectory is neither replayed nor Leap's signal
        for b in range(batch.tasks):
            if not bool(ok[b]):
                continue
            # one copy of the task's data shared by its points (a view would keep the whole
            # batch alive in a fifo buffer); each point's parameters are its own copy
            data = tuple(t[b].clone() for t in batch.astuple())
            for point in stored:
                self.buffer.add(BufferEntry({k: v[b].clone() for k, v in point.items()}, *data))
        metrics = {
            "support_loss_before": float(before[ok].mean()),
            "support_loss_after": float(after[ok].mean()),
            "diverged_tasks": float((~ok).sum()),
        }
        if not bool(ok.any()):
            return metrics, {}
        return metrics, {k: g[ok].mean(0) for k, g in init_grad.items()}

    # ---- the warp meta-objective --------------------------------------------------------------
    def warp_gradient(self, entries: list[BufferEntry]) -> tuple[float, Params]:
        """Mean meta-objective over buffer samples and its gradient w.r.t. the warp params only.

        Samples of equal shapes are evaluated together (``vmap``, or a loop for convolutions on
        CPU, as everywhere else); the stored points are constants, so no gradient reaches them.
        """
        if not entries:
            return float("nan"), {}
        learner = self.learner
        names = warp_names(learner)
        warp = {k: learner.params[k] for k in names}
        groups: dict[tuple[Any, ...], list[BufferEntry]] = {}
        for entry in entries:
            groups.setdefault(_signature(entry), []).append(entry)
        total = torch.zeros(())
        for group in groups.values():
            data = tuple(torch.stack([getattr(e, f) for e in group]) for f in _DATA_FIELDS)
            thetas = {k: torch.stack([e.params[k] for e in group]) for k in group[0].params}

            def one(*task: Any) -> Tensor:
                *tensors, theta = task
                return self.objective(theta, warp, *tensors)

            losses = map_tasks(one, (*data, thetas))
            total = total + losses.sum()
        total = total / len(entries)
        grads = torch.autograd.grad(total, [warp[k] for k in names], allow_unused=True)
        return float(total.detach()), {
            k: g for k, g in zip(names, grads, strict=True) if g is not None
        }

    def objective(
        self,
        theta: Params,
        warp: Params,
        support_x: Tensor,
        support_y: Tensor,
        support_weight: Tensor,
        class_mask: Tensor,
        query_x: Tensor,
        query_y: Tensor,
    ) -> Tensor:
        """``L_query`` at the stored point ``θ`` (``loss``) or one inner step past it (``step``).

        A pure function of its arguments (``torch.func.grad`` for the look-ahead step), so it can
        be vmapped over buffer samples; outer autograd differentiates it w.r.t. ``warp``.
        """
        learner = self.learner
        base = {**learner.params, **warp}

        def loss_on(fast: Params, x: Tensor, y: Tensor, weight: Tensor) -> Tensor:
            return learner.loss(learner.forward({**base, **fast}, x, class_mask), y, weight)

        if self.config.objective == "step":
            grads = grad(loss_on)(theta, support_x, support_y, support_weight)
            theta = {k: v - learner.step_sizes[k] * grads[k] for k, v in theta.items()}
        weight = torch.ones(query_y.shape[0], dtype=query_x.dtype, device=query_x.device)
        return loss_on(theta, query_x, query_y, weight)

    def _meta_params(self) -> dict[str, Tensor]:
        return {k[len("param/") :]: v for k, v in self.meta_tensors().items()}
