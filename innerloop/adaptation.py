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
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

from innerloop.predictions import Predictions

Params = dict[str, Tensor]

OPTIMIZERS = ("sgd", "adam")
HEAD_WEIGHT, HEAD_BIAS = "head.weight", "head.bias"  # per-task heads: always kept


@dataclass(frozen=True)
class InnerLoop:
    """How a task is adapted: number of steps, optimiser, and whether gradients are detached."""

    steps: int
    optimizer: str = "sgd"
    first_order: bool = False
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    # stop a task once one more step improves its support loss by less than this (0: never);
    # serving and evaluation only (no graph), SGD only
    tolerance: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"inner steps must be >= 0, got {self.steps}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"inner optimizer {self.optimizer!r} is not one of {OPTIMIZERS}")
        if self.tolerance < 0:
            raise ValueError(f"inner tolerance must be >= 0, got {self.tolerance}")
        if self.tolerance > 0 and self.optimizer != "sgd":
            raise ValueError("an inner-loop tolerance (early stop) needs the sgd optimizer")


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
class SharedPrefix:
    """A model split where adaptation starts: a prefix no task changes, and the adapted rest.

    ``prefix`` maps a flat batch of inputs to the rest's inputs; ``model``, ``params`` and
    ``step_sizes`` describe the rest. ``batching`` is what ``auto`` means for the rest: ``vmap``
    when no adapted tensor is a convolution weight (every convolution is then shared by all
    tasks and vmap runs it as one large batch), else ``auto`` (the per-task loop on CPUs).
    """

    prefix: Callable[[Tensor], Tensor]
    model: AdaptableModel
    params: Params
    step_sizes: Mapping[str, Tensor]
    batching: str


def _apply_flat(prefix: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Run ``prefix`` on all tasks' rows at once: [tasks, rows, ...] -> [tasks, rows, ...]."""
    tasks, rows = x.shape[:2]
    out = prefix(x.reshape(tasks * rows, *x.shape[2:]))
    return out.reshape(tasks, rows, *out.shape[1:])


def _apply_flat_both(
    prefix: Callable[[Tensor], Tensor], support_x: Tensor, query_x: Tensor
) -> tuple[Tensor, Tensor]:
    """Support and query rows through ``prefix`` in one call: one request's 5 + 15 images ran
    1.15x faster as one batch of 20 than as two (fewer, fuller kernel calls)."""
    support_rows = support_x.shape[1]
    both = torch.cat([support_x, query_x], dim=1)
    out = _apply_flat(prefix, both)
    return out[:, :support_rows], out[:, support_rows:]


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
    keep_params: bool = False,
    step_outputs: bool = False,
) -> Predictions:
    """Adapt every task of a batch on its support set and predict its queries.

    All tensors carry a leading task dimension. This is the function both ``innerloop
    evaluate`` and the server call; meta-training calls it too and back-propagates the query
    loss through it.

    ``batching`` is ``vmap`` (one vectorised call over tasks), ``loop`` (the same per-task
    function in a Python loop) or ``auto``: the loop for convolutional models on CPUs whose
    convolution weights adapt, where ``benchmarks/bench_meta_training.py`` measures vmapped
    convolutions (grouped per task) as ~3x slower than per-task MKL-DNN ones, and vmap
    everywhere else (GPUs; MLPs, where vmap is ~30x faster than the loop on CPU; models whose
    convolutions are frozen, which vmap runs as one shared convolution). Both give the same
    numbers.

    A model with a ``split_shared(meta_params, step_sizes)`` method may return a
    :class:`SharedPrefix`: the layers before the first adapted one then run once for the whole
    batch (the server's "share what a batch has in common").

    ``keep_params`` also returns each task's adapted tensors (:attr:`Predictions.params`), so
    :func:`predict_adapted` can answer later queries without adapting again; ``step_outputs``
    the query outputs after every inner step (:attr:`Predictions.step_outputs`).
    """
    prepared = prepare(model, meta_params, step_sizes, support_x, query_x, batching)
    return adapt_prepared(
        prepared,
        support_y,
        support_weight,
        class_mask,
        loop,
        keep_params,
        step_outputs=step_outputs,
    )


@dataclass(frozen=True)
class Prepared:
    """A batch with its shared prefix already run: what is left to adapt, and its inputs.

    Several loops over the same batch (the per-request choice, :mod:`innerloop.loop_choice`)
    run the prefix once this way instead of once per loop.
    """

    model: AdaptableModel
    meta_params: Params
    step_sizes: Mapping[str, Tensor]
    batching: str  # resolved: "vmap" or "loop"
    support_x: Tensor
    query_x: Tensor

    def subset(self, tasks: Tensor) -> Prepared:
        """The same preparation for some of the tasks (a ``long`` index over the leading dim)."""
        return replace(self, support_x=self.support_x[tasks], query_x=self.query_x[tasks])


def prepare(
    model: AdaptableModel,
    meta_params: Params,
    step_sizes: Mapping[str, Tensor],
    support_x: Tensor,
    query_x: Tensor,
    batching: str = "auto",
) -> Prepared:
    """Split off and run the shared prefix (see :func:`adapt_and_predict`)."""
    model, meta_params, step_sizes, batching, prefix = _split(
        model, meta_params, step_sizes, batching
    )
    if prefix is not None:
        # Everything before the first adapted layer is the same function for every task: run
        # it once, as one large batch over all tasks' support and query rows, then adapt only
        # the rest. Exactly the same maths as running the whole body per task.
        support_x, query_x = _apply_flat_both(prefix, support_x, query_x)
    return Prepared(
        model, meta_params, step_sizes, _resolve(batching, support_x), support_x, query_x
    )


def adapt_prepared(
    prepared: Prepared,
    support_y: Tensor,
    support_weight: Tensor,
    class_mask: Tensor,
    loop: InnerLoop,
    keep_params: bool = False,
    step_scale: float = 1.0,
    query_x: Tensor | None = None,
    step_outputs: bool = False,
    output_steps: frozenset[int] | None = None,
) -> Predictions:
    """:func:`adapt_and_predict` after :func:`prepare`; ``step_scale`` multiplies every step
    size (a requested lr), ``query_x`` replaces the prepared queries (already prefixed).
    ``output_steps`` limits ``step_outputs`` to the outputs after those steps (and the last),
    in increasing order."""
    model, meta_params, batching = prepared.model, prepared.meta_params, prepared.batching
    step_sizes: Mapping[str, Tensor] = prepared.step_sizes
    if step_scale != 1.0:
        step_sizes = {k: v * step_scale for k, v in step_sizes.items()}
    support_x = prepared.support_x
    query_x = prepared.query_x if query_x is None else query_x
    names = [*model.adapted_names(meta_params), HEAD_WEIGHT, HEAD_BIAS]
    if loop.tolerance > 0 and loop.steps > 0:
        if step_outputs:
            raise ValueError("step outputs are for meta-training, which stops no task early")
        return _adapt_until_converged(
            model,
            meta_params,
            step_sizes,
            (support_x, support_y, support_weight, class_mask),
            query_x,
            loop,
            batching,
            frozenset(names),
            keep_params,
        )

    def one_task(sx: Tensor, sy: Tensor, sw: Tensor, cm: Tensor, qx: Tensor) -> tuple[Any, ...]:
        seen: list[Tensor] = []

        def observe(step: int, fast: Params, _grads: Params, _loss: Tensor) -> None:
            # ``fast`` holds the parameters after step ``step`` (before its successor's update)
            if step > 0 and (output_steps is None or step in output_steps):
                fixed = {k: v for k, v in meta_params.items() if k not in fast}
                seen.append(model.forward({**fixed, **fast}, qx, cm))

        trajectory = observe if step_outputs else None
        adapted = adapt(model, meta_params, step_sizes, sx, sy, sw, cm, loop, trajectory)
        outputs = model.forward(adapted.params, qx, cm)
        kept = {k: v for k, v in adapted.params.items() if k in names} if keep_params else {}
        steps = torch.stack([*seen, outputs]) if step_outputs else outputs[None]
        return outputs, adapted.loss_before, adapted.loss_after, kept, steps

    each = vmap if batching == "vmap" else _per_task
    outputs, before, after, kept, steps = each(one_task)(
        support_x, support_y, support_weight, class_mask, query_x
    )
    return Predictions(
        outputs,
        before,
        after,
        kept if keep_params else None,
        step_outputs=steps if step_outputs else None,
    )


def _adapt_until_converged(
    model: AdaptableModel,
    meta_params: Params,
    step_sizes: Mapping[str, Tensor],
    support: tuple[Tensor, Tensor, Tensor, Tensor],
    query_x: Tensor,
    loop: InnerLoop,
    batching: str,
    names: frozenset[str],
    keep_params: bool,
) -> Predictions:
    """The SGD inner loop, stepped for all tasks at once, each task stopping on its own.

    Each step is one vectorised call over the tasks; a task whose last step improved its support
    loss by less than ``loop.tolerance`` keeps its parameters from then on (its later updates are
    masked out), and the loop ends when every task has stopped. A task therefore gets the same
    answer alone or in any batch. Same loss, gradient and update as :func:`adapt`.
    """
    fixed = {k: v for k, v in meta_params.items() if k not in names}
    each = vmap if batching == "vmap" else _per_task

    def start(sx: Tensor, sy: Tensor, sw: Tensor, cm: Tensor) -> Params:
        params = model.task_parameters(meta_params, sx, sy, sw, cm)
        return {k: v for k, v in params.items() if k in names}

    def support_loss(fast: Params, sx: Tensor, sy: Tensor, sw: Tensor, cm: Tensor) -> Tensor:
        return model.loss(model.forward({**fixed, **fast}, sx, cm), sy, sw)

    def step(fast: Params, sx: Tensor, sy: Tensor, sw: Tensor, cm: Tensor) -> tuple[Params, Tensor]:
        grads, loss = grad_and_value(support_loss)(fast, sx, sy, sw, cm)
        detached = {k: g.detach() for k, g in grads.items()}
        return _update(fast, detached, step_sizes, loop, None, 0), loss

    fast = each(start)(*support)
    tasks = support[0].shape[0]
    done = torch.zeros(tasks, dtype=torch.bool, device=support[0].device)
    ran = torch.zeros(tasks, dtype=torch.long, device=support[0].device)
    before: Tensor | None = None
    previous: Tensor | None = None
    for _ in range(loop.steps):
        updated, loss = each(step)(fast, *support)
        if before is None:
            before = loss
        if previous is not None:
            done = done | (previous - loss < loop.tolerance)
            if bool(done.all()):
                break
        fast = {
            k: torch.where(done.view(-1, *([1] * (v.dim() - 1))), v, updated[k])
            for k, v in fast.items()
        }
        ran = ran + (~done).long()
        previous = loss
    after = each(support_loss)(fast, *support)

    def predict(params: Params, qx: Tensor, cm: Tensor) -> Tensor:
        return model.forward({**fixed, **params}, qx, cm)

    outputs = each(predict)(fast, query_x, support[3])
    return Predictions(
        outputs, after if before is None else before, after, fast if keep_params else None, ran
    )


def _per_task(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``vmap``'s contract as a Python loop over the leading dimension (for CPU convolutions)."""

    def mapped(*args: Any) -> Any:
        tasks = _leading(args[0])
        results = [fn(*(_index(a, i) for a in args)) for i in range(tasks)]
        return _stack(results)

    return mapped


def _leading(tree: Any) -> int:
    return int(next(iter(tree.values())).shape[0]) if isinstance(tree, dict) else tree.shape[0]


def _index(tree: Any, i: int) -> Any:
    return {k: v[i] for k, v in tree.items()} if isinstance(tree, dict) else tree[i]


def _stack(results: list[Any]) -> Any:
    first = results[0]
    if isinstance(first, tuple):
        return tuple(_stack([r[j] for r in results]) for j in range(len(first)))
    if isinstance(first, dict):
        return {k: torch.stack([r[k] for r in results]) for k in first}
    return torch.stack(results)


def predict_adapted(
    model: AdaptableModel,
    meta_params: Params,
    step_sizes: Mapping[str, Tensor],
    adapted: Params,
    query_x: Tensor,
    class_mask: Tensor,
    batching: str = "auto",
) -> Tensor:
    """Outputs for new queries of tasks adapted earlier (``Predictions.params``), no loop run.

    The split, the frozen tensors and the forward pass are those of :func:`adapt_and_predict`,
    so a cached adapter answers exactly what adapting again would.
    """
    model, meta_params, step_sizes, batching, prefix = _split(
        model, meta_params, step_sizes, batching
    )
    if prefix is not None:
        query_x = _apply_flat(prefix, query_x)
    fixed = {k: v for k, v in meta_params.items() if k not in adapted}

    def one_task(params: Params, qx: Tensor, cm: Tensor) -> Tensor:
        return model.forward({**fixed, **params}, qx, cm)

    each = vmap if _resolve(batching, query_x) == "vmap" else _per_task
    outputs: Tensor = each(one_task)(adapted, query_x, class_mask)
    return outputs


def _split(
    model: AdaptableModel, meta_params: Params, step_sizes: Mapping[str, Tensor], batching: str
) -> tuple[AdaptableModel, Params, Mapping[str, Tensor], str, Callable[[Tensor], Tensor] | None]:
    split = getattr(model, "split_shared", None)
    shared = split(meta_params, step_sizes) if split is not None else None
    if shared is None:
        return model, meta_params, step_sizes, batching, None
    if batching == "auto":
        batching = shared.batching
    return shared.model, shared.params, shared.step_sizes, batching, shared.prefix


def _resolve(batching: str, inputs: Tensor) -> str:
    if batching not in ("auto", "vmap", "loop"):
        raise ValueError(f"batching {batching!r} is not one of ('auto', 'vmap', 'loop')")
    if batching == "auto":
        convolutional = inputs.dim() == 5  # [tasks, rows, channels, height, width]
        return "loop" if convolutional and not inputs.is_cuda else "vmap"
    return batching
