"""WarpGrad (Flennerhag et al., ICLR 2020): meta-learned warp-layers precondition adaptation.

The body interleaves task-adaptable layers with warp-layers (``ArchConfig.warp``; parameters
``body.<i>.warp.*``, listed in ``Learner.frozen`` so :func:`innerloop.adaptation.adapt` never
moves them). Backpropagating through a warp-layer multiplies the adaptable layers' gradients by
its Jacobian, so learning the warp-layers learns a preconditioner for the inner loop; at serving
time they are ordinary fixed layers and a WarpGrad checkpoint adapts exactly like any other.

The warp-layers are meta-learned with the paper's Algorithm 2 (online WarpGrad), which never
backpropagates through a trajectory:

1. every task of the meta-batch adapts on its support set through the one inner loop; the
   ``trajectory`` hook copies a few of the visited task parameterisations ``θ_k`` (every
   ``store_every``-th step, plus the adapted end point) into a bounded FIFO
   :class:`ReplayBuffer`, each with a reference to its task's data;
2. the warp-parameters ``φ`` take ``warp_updates`` outer steps, each on the mean meta-objective
   over ``warp_batch`` buffer samples. The meta-objective of a sample ``(θ, task)`` is the
   paper's one-step look-ahead ``L_query(θ - α ∇_θ L_support(θ; φ); φ)`` (``objective="step"``,
   the reference code's ``warp_on_same_loss``) or simply ``L_query(θ; φ)``
   (``objective="loss"``, its ``approx`` mode); ``θ`` is a stored constant and only ``φ``
   receives gradients. ``α`` is the learner's step size (the look-ahead is a plain gradient
   step even for an Adam inner loop, where ``"loss"`` is the cheaper, equally valid choice).

Because the buffer keeps samples from earlier meta-steps, the warp is fitted to the whole
distribution of points that adaptation visits, not only the current batch's; because it is
bounded (``buffer_size``), memory does not grow with training.

``warp`` keeps the adaptable layers' init at its random start (only ``φ`` is meta-learned);
``warp-leap`` also meta-learns that init with Leap's trajectory-length gradient, accumulated from
the same trajectories (:class:`innerloop_training.leap.LeapAccumulator`).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.func import grad

from innerloop.adaptation import InnerLoop, Params, adapt
from innerloop.learner import Learner
from innerloop.models import is_warp_parameter
from innerloop_training.algorithms import MetaAlgorithm, OuterConfig
from innerloop_training.leap import (
    LeapAccumulator,
    LeapConfig,
    apply_if_finite,
    map_tasks,
    set_gradients,
    to_meta_shapes,
)
from innerloop_training.tasks import TaskBatch

OBJECTIVES = ("step", "loss")


@dataclass(frozen=True)
class WarpGradConfig:
    """Algorithm 2's knobs; the defaults suit both sine and the alphabet protocol."""

    buffer_size: int = 200  # parameterisations kept (FIFO): bounds memory
    store_every: int = 1  # store θ_k every this many inner steps (and always the end point)
    warp_batch: int = 16  # buffer samples per warp update
    warp_updates: int = 1  # warp updates per meta-step
    objective: str = "step"  # "step": one-step look-ahead (paper); "loss": loss at θ
    learn_init: bool = False  # warp-leap: also meta-learn the init with Leap
    leap: LeapConfig = field(default_factory=LeapConfig)
    seed: int = 0  # of the buffer's sampling

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"WarpGrad objective {self.objective!r} is not one of {OBJECTIVES}")
        for name in ("buffer_size", "store_every", "warp_batch", "warp_updates"):
            if getattr(self, name) < 1:
                raise ValueError(f"WarpGrad {name} must be >= 1, got {getattr(self, name)}")


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
    """A bounded FIFO of :class:`BufferEntry`; the oldest entries fall out when it is full."""

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 1:
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

    def sample(self, count: int) -> list[BufferEntry]:
        """Up to ``count`` distinct entries, uniformly at random (seeded)."""
        return self._rng.sample(list(self._entries), min(count, len(self._entries)))


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
        self.buffer = ReplayBuffer(config.buffer_size, config.seed)
        super().__init__(learner, loop, outer)

    def meta_tensors(self) -> dict[str, Tensor]:
        """Warp parameters; with ``learn_init`` also the init of the adapted ones."""
        learner = self.learner
        return {
            f"param/{k}": v
            for k, v in learner.params.items()
            if is_warp_parameter(k) or (self.config.learn_init and k not in learner.frozen)
        }

    # ---- one meta-step ------------------------------------------------------------------------
    def step(self, batch: TaskBatch) -> dict[str, float]:
        metrics, init_grads = self.collect(batch)
        warp_losses = []
        for update in range(self.config.warp_updates):
            loss, warp_grads = self.warp_gradient(self.buffer.sample(self.config.warp_batch))
            warp_losses.append(loss)
            grads = {**warp_grads, **(init_grads if update == 0 else {})}
            set_gradients(self._meta_params(), grads)
            metrics["grad_norm"] = apply_if_finite(self)
        metrics["warp_objective"] = sum(warp_losses) / len(warp_losses)
        metrics["buffer"] = float(len(self.buffer))
        return metrics

    def collect(self, batch: TaskBatch) -> tuple[dict[str, float], Params]:
        """Adapt every task on its support set, filling the buffer (and Leap's gradient)."""
        learner, config = self.learner, self.config
        params, step_sizes, loop = learner.params, learner.step_sizes, self.loop

        def one_task(sx: Tensor, sy: Tensor, sw: Tensor, cm: Tensor) -> tuple[Any, ...]:
            stored: list[Params] = []
            leap = LeapAccumulator(config.leap) if config.learn_init else None

            def observe(step: int, fast: Params, grads: Params, loss: Tensor) -> None:
                if step % config.store_every == 0:
                    stored.append({k: v.detach() for k, v in fast.items()})
                if leap is not None:
                    leap(step, fast, grads, loss)

            result = adapt(learner, params, step_sizes, sx, sy, sw, cm, loop, trajectory=observe)
            # the end point too: the hook only sees θ_0 .. θ_{K-1}
            stored.append({k: result.params[k] for k in learner.adapted_names(result.params)})
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
            data = tuple(t[b] for t in batch.astuple())
            for point in stored:  # clones, so an entry never keeps the whole batch alive
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
