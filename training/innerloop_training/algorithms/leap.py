"""Leap (Flennerhag et al., ICLR 2019): an init that makes adaptation paths short.

Leap meta-learns the starting point by minimising the *length of the adaptation trajectory* on
the task's loss surface, i.e. in the space of ``(θ, L(θ))``. For one inner step
``θ_i -> θ_{i+1}`` with ``Δloss = L(θ_{i+1}) - L(θ_i)`` the segment has length
``sqrt(|θ_{i+1} - θ_i|² + Δloss²)``; treating ``θ_{i+1}`` as fixed and the Jacobian of the
trajectory as the identity (Leap's first-order approximation), its gradient with respect to the
segment's start is::

    -((θ_{i+1} - θ_i) + Δloss · ∇L(θ_i)) / length          (norm=True: the path length d1)
    -((θ_{i+1} - θ_i) + Δloss · ∇L(θ_i))                   (norm=False: the energy d2)

The meta-gradient is the sum of these over the trajectory, averaged over the meta-batch, handed
to the outer optimiser (so with plain SGD this is exactly the paper's update). As in the ``leap``
package's ``Leap.update``, the *stabiliser* replaces ``Δloss`` by ``-|Δloss|`` so a step on which
the loss went up never pulls the init uphill, and ``loss=False`` drops the loss dimension (the
segment then lives in parameter space only, which makes Leap a normalised Reptile).

Why a trajectory hook: :func:`innerloop.adaptation.adapt` calls ``trajectory(step, params, grads,
loss)`` before every update, so :class:`LeapAccumulator` sees ``θ_i``, ``∇L(θ_i)`` and
``L(θ_i)`` as they are produced and closes segment ``i-1`` on the spot; the final segment is
closed from the adapted parameters and ``loss_after`` that ``adapt`` returns. Only the previous
point is kept, so memory does not grow with the number of inner steps, and nothing here
re-implements the inner loop: SGD and Adam inner loops, learned step sizes, warp-layers (which are
frozen and never appear in the trajectory) and any head all work unchanged.

Like Reptile here, Leap has no support/query distinction: each task adapts on both together.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from innerloop.adaptation import InnerLoop, Params, adapt
from innerloop.learner import Learner
from innerloop_training.algorithms.base import (
    MetaAlgorithm,
    OuterConfig,
    apply_if_finite,
    map_tasks,
    set_gradients,
    support_and_query,
)
from innerloop_training.tasks import TaskBatch


@dataclass(frozen=True)
class LeapConfig:
    """The ``leap`` package's switches: which trajectory length is minimised."""

    norm: bool = True  # d1, the path length (True), or d2, the energy (False)
    loss: bool = True  # include the loss dimension of the task manifold
    stabilizer: bool = True  # use -|Δloss|, never pull the init uphill


class LeapAccumulator:
    """One task's Leap gradient, accumulated on the fly; pass it as ``adapt(trajectory=...)``.

    It holds only the previous trajectory point and the running sum, whatever the number of
    steps. Call :meth:`finish` with the adapted parameters and final loss to add the last
    segment. Gradients are in the per-task shapes of the adapted parameters (a ``zero`` head is
    per way here); :func:`to_meta_shapes` maps them onto the meta-parameters.
    """

    def __init__(self, config: LeapConfig = LeapConfig()) -> None:
        self.config = config
        self.grad: Params = {}
        # the trajectory length d1 (for logging), whatever ``norm`` says; a tensor, so the
        # accumulator also works inside ``vmap``
        self.length: Tensor = torch.zeros(())
        self._prev: tuple[Params, Params, Tensor] | None = None

    def __call__(self, step: int, params: Params, grads: Params, loss: Tensor) -> None:
        del step  # segments are closed in order; the index is not needed
        if self._prev is not None:
            self._segment(params, loss)
        self._prev = (
            {k: v.detach() for k, v in params.items()},
            {k: g.detach() for k, g in grads.items()},
            loss.detach(),
        )

    def finish(self, params: Mapping[str, Tensor], loss: Tensor) -> Params:
        """Close the last segment (to the adapted parameters) and return the task's gradient."""
        if self._prev is not None:
            self._segment({k: params[k].detach() for k in self._prev[0]}, loss.detach())
        self._prev = None
        return self.grad

    def _segment(self, curr: Mapping[str, Tensor], curr_loss: Tensor) -> None:
        assert self._prev is not None
        prev, prev_grads, prev_loss = self._prev
        config = self.config
        deltas = {k: prev[k] - curr[k].detach() for k in prev}  # θ_i - θ_{i+1}
        squared = torch.stack([(d * d).sum() for d in deltas.values()]).sum()
        d_loss = curr_loss.detach() - prev_loss
        if config.stabilizer:
            d_loss = -d_loss.abs()
        self.length = self.length + (squared + d_loss * d_loss).sqrt()
        norm: Tensor | None = None
        if config.norm:
            norm = (squared + d_loss * d_loss if config.loss else squared).sqrt().clamp_min(1e-12)
        for name, delta in deltas.items():
            add = delta - d_loss * prev_grads[name] if config.loss else delta
            if norm is not None:
                add = add / norm
            self.grad[name] = self.grad[name] + add if name in self.grad else add


def to_meta_shapes(grad: Mapping[str, Tensor], meta_params: Mapping[str, Tensor]) -> Params:
    """Per-task gradients onto the meta-parameters they started from.

    Parameters built per task and not meta-learned (a ``proto`` head) are dropped; a ``zero``
    head, copied to every way, gets the mean over ways (as Reptile's target does).
    """
    out: Params = {}
    for name, meta in meta_params.items():
        if name in grad:
            out[name] = grad[name].reshape(-1, *meta.shape).mean(0)
    return out


def leap_gradient(
    learner: Learner,
    params: Params,
    step_sizes: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    weight: Tensor,
    class_mask: Tensor,
    loop: InnerLoop,
    config: LeapConfig = LeapConfig(),
    batching: str = "auto",
) -> tuple[Params, dict[str, float]]:
    """The Leap meta-gradient of a batch of tasks (leading task dim), averaged over tasks.

    Returns gradients keyed like ``params`` (only those the inner loop moves) and logging
    metrics. The accumulator lives and dies inside each task's function, so tasks can be
    batched with ``vmap`` (``batching`` as in :func:`~innerloop.adaptation.adapt_and_predict`).
    """

    def one_task(sx: Tensor, sy: Tensor, sw: Tensor, cm: Tensor) -> tuple[Any, ...]:
        accumulator = LeapAccumulator(config)
        result = adapt(learner, params, step_sizes, sx, sy, sw, cm, loop, trajectory=accumulator)
        grad = to_meta_shapes(accumulator.finish(result.params, result.loss_after), params)
        return grad, result.loss_before, result.loss_after, accumulator.length

    with torch.no_grad():
        grads, before, after, length = map_tasks(one_task, (x, y, weight, class_mask), batching)
    # a task whose inner loop diverged has no meaningful path: leave it out rather than let one
    # NaN poison the init (the count is logged so a too-large inner step size is visible)
    ok = torch.isfinite(after) & torch.isfinite(length)
    metrics = {
        "support_loss_before": float(before[ok].mean()),
        "support_loss_after": float(after[ok].mean()),
        "trajectory_length": float(length[ok].mean()),
        "diverged_tasks": float((~ok).sum()),
    }
    if not bool(ok.any()):
        return {}, metrics
    return {name: g[ok].mean(0) for name, g in grads.items()}, metrics


class Leap(MetaAlgorithm):
    """Leap as a :class:`MetaAlgorithm`: trajectory-length meta-gradient, then one outer step."""

    name = "leap"

    def __init__(
        self,
        learner: Learner,
        loop: InnerLoop,
        outer: OuterConfig,
        config: LeapConfig = LeapConfig(),
    ) -> None:
        self.config = config
        super().__init__(learner, loop, outer)

    def meta_tensors(self) -> dict[str, Tensor]:
        """The init of the adapted parameters; frozen ones (warp-layers) are not Leap's."""
        learner = self.learner
        return {f"param/{k}": v for k, v in learner.params.items() if k not in learner.frozen}

    def step(self, batch: TaskBatch) -> dict[str, float]:
        learner = self.learner
        x, y, weight = support_and_query(batch)
        grads, metrics = leap_gradient(
            learner,
            learner.params,
            learner.step_sizes,
            x,
            y,
            weight,
            batch.class_mask,
            self.loop,
            self.config,
        )
        set_gradients(_unfrozen(learner), grads)
        metrics["grad_norm"] = apply_if_finite(self)
        return metrics


def _unfrozen(learner: Learner) -> dict[str, Tensor]:
    return {k: v for k, v in learner.params.items() if k not in learner.frozen}
