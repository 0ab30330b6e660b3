"""The one inner loop: meta-training, evaluation and the server all adapt through here.

Parameters are plain dicts of tensors and the loss is a pure function of them, so the same
code is:
- second-order MAML when the outer loss is back-propagated through it (``torch.func.grad`` is
  differentiable with ordinary autograd);
- first-order MAML / Reptile when ``first_order=True`` detaches each inner gradient;
- Meta-SGD when the step sizes are learned per-parameter tensors;
- the server's per-request adaptation under ``torch.no_grad()`` (``torch.func.grad`` ignores an
  outer ``no_grad``, so adaptation still works while nothing else records a graph).

A task is described by per-task tensors only, so :func:`adapt_and_predict` batches many tasks
(or many HTTP requests) with ``torch.func.vmap``. Tasks of different sizes share a batch through
padding: ``support_weight`` zeroes padded support rows and ``class_mask`` removes padded ways.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

Params = dict[str, Tensor]

OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class InnerLoop:
    """How a task is adapted: number of steps, optimiser, and whether gradients are detached."""

    steps: int
    optimizer: str = "sgd"
    first_order: bool = False
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"inner steps must be >= 0, got {self.steps}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"inner optimizer {self.optimizer!r} is not one of {OPTIMIZERS}")


class AdaptableModel(Protocol):
    """What the inner loop needs from a model (:class:`innerloop.learner.Learner` has it)."""

    def task_parameters(
        self,
        meta_params: Params,
        support_x: Tensor,
        support_y: Tensor,
        support_weight: Tensor,
        class_mask: Tensor,
    ) -> Params:
        """Per-task starting parameters (e.g. the meta-learned init plus a prototype head)."""
        ...

    def adapted_names(self, params: Mapping[str, Tensor]) -> list[str]:
        """Names of the parameters the inner loop moves; the rest stay fixed (warp, frozen)."""
        ...

    def forward(self, params: Params, x: Tensor, class_mask: Tensor) -> Tensor: ...

    def loss(self, outputs: Tensor, y: Tensor, weight: Tensor) -> Tensor: ...


@dataclass
class Adapted:
    """Result of adapting one task (or, under vmap, a batch of tasks)."""

    params: Params
    loss_before: Tensor
    loss_after: Tensor


def adapt(
    model: AdaptableModel,
    meta_params: Params,
    step_sizes: Mapping[str, Tensor],
    support_x: Tensor,
    support_y: Tensor,
    support_weight: Tensor,
    class_mask: Tensor,
    loop: InnerLoop,
    trajectory: Callable[[int, Params, Params, Tensor], None] | None = None,
) -> Adapted:
    """Adapt one task's parameters on its support set.

    ``trajectory(step, params, grads, loss)`` is called at every inner step before the update;
    trajectory-based meta-learners (Reptile, Leap, WarpGrad's replay buffer) observe the path
    through it instead of re-implementing the loop.
    """
    params = model.task_parameters(meta_params, support_x, support_y, support_weight, class_mask)
    names = model.adapted_names(params)
    fixed = {k: v for k, v in params.items() if k not in names}
    fast = {k: params[k] for k in names}

    def support_loss(fast_params: Params) -> Tensor:
        outputs = model.forward({**fixed, **fast_params}, support_x, class_mask)
        return model.loss(outputs, support_y, support_weight)

    moments: tuple[Params, Params] | None = None
    if loop.optimizer == "adam":
        moments = (
            {k: torch.zeros_like(v) for k, v in fast.items()},
            {k: torch.zeros_like(v) for k, v in fast.items()},
        )
    loss_before: Tensor | None = None
    for step in range(loop.steps):
        grads, loss = grad_and_value(support_loss)(fast)
        if loss_before is None:
            loss_before = loss
        if loop.first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        if trajectory is not None:
            trajectory(step, fast, grads, loss)
        fast = _update(fast, grads, step_sizes, loop, moments, step + 1)
    loss_after = support_loss(fast)
    return Adapted(
        {**fixed, **fast}, loss_after if loss_before is None else loss_before, loss_after
    )


def _update(
    fast: Params,
    grads: Params,
    step_sizes: Mapping[str, Tensor],
    loop: InnerLoop,
    moments: tuple[Params, Params] | None,
    t: int,
) -> Params:
    if moments is None:
        return {k: p - step_sizes[k] * grads[k] for k, p in fast.items()}
    first, second = moments
    beta1, beta2 = loop.adam_betas
    updated = {}
    for k, p in fast.items():
        first[k] = beta1 * first[k] + (1 - beta1) * grads[k]
        second[k] = beta2 * second[k] + (1 - beta2) * grads[k] * grads[k]
        m_hat = first[k] / (1 - beta1**t)
        v_hat = second[k] / (1 - beta2**t)
        # eps² inside the root: a parameter whose gradient is exactly 0 (a conv bias before
        # group norm) has v_hat = 0, where sqrt's derivative is infinite and second-order
        # MAML through Adam got NaN; the forward value changes by less than eps
        denominator = (v_hat + loop.adam_eps**2).sqrt() + loop.adam_eps
        updated[k] = p - step_sizes[k] * m_hat / denominator
    return updated


@dataclass
class Predictions:
    """Outputs for a batch of tasks: logits (or regression outputs) and support losses."""

    outputs: Tensor  # [tasks, queries, ways] or [tasks, queries, out_features]
    loss_before: Tensor  # [tasks]
    loss_after: Tensor  # [tasks]


def adapt_and_predict(
    model: AdaptableModel,
    meta_params: Params,
    step_sizes: Mapping[str, Tensor],
    support_x: Tensor,
    support_y: Tensor,
    support_weight: Tensor,
    class_mask: Tensor,
    query_x: Tensor,
    loop: InnerLoop,
    batching: str = "auto",
) -> Predictions:
    """Adapt every task of a batch on its support set and predict its queries.

    All tensors carry a leading task dimension. This is the function both ``innerloop
    evaluate`` and the server call; meta-training calls it too and back-propagates the query
    loss through it.

    ``batching`` is ``vmap`` (one vectorised call over tasks), ``loop`` (the same per-task
    function in a Python loop) or ``auto``: the loop for convolutional models on CPUs, where
    ``benchmarks/bench_meta_training.py`` measures vmapped convolutions (grouped per task) as
    ~3x slower than per-task MKL-DNN ones, and vmap everywhere else (GPUs; MLPs, where vmap is
    ~30x faster than the loop on CPU). Both give the same numbers.
    """

    def one_task(sx: Tensor, sy: Tensor, sw: Tensor, cm: Tensor, qx: Tensor) -> tuple[Tensor, ...]:
        adapted = adapt(model, meta_params, step_sizes, sx, sy, sw, cm, loop)
        outputs = model.forward(adapted.params, qx, cm)
        return outputs, adapted.loss_before, adapted.loss_after

    tensors = (support_x, support_y, support_weight, class_mask, query_x)
    if batching == "auto":
        convolutional = support_x.dim() == 5  # [tasks, shots, channels, height, width]
        batching = "loop" if convolutional and not support_x.is_cuda else "vmap"
    if batching == "vmap":
        outputs, before, after = vmap(one_task)(*tensors)
    elif batching == "loop":
        per_task = [one_task(*(t[i] for t in tensors)) for i in range(support_x.shape[0])]
        outputs, before, after = (torch.stack(parts) for parts in zip(*per_task, strict=True))
    else:
        raise ValueError(f"batching {batching!r} is not one of ('auto', 'vmap', 'loop')")
    return Predictions(outputs, before, after)
