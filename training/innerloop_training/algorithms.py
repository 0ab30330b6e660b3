"""Meta-learners: how one meta-batch of tasks updates the learner's starting point.

All of them adapt through :func:`innerloop.adaptation.adapt_and_predict` / :func:`adapt`, the same
functions the server calls; they differ only in what flows back to the meta-parameters:

- ``maml``: second order, the query loss is differentiated through every inner step;
- ``fomaml``: inner gradients are detached, so only first-order terms reach the init;
- ``metasgd``: MAML whose per-parameter step sizes are meta-parameters too;
- ``reptile``: no query loss at all; the init moves towards the mean adapted parameters;
- ``leap``, ``warp``, ``warp-leap`` (trajectory-based: ``leap.py``, ``warpgrad.py``) and the
  ``ft`` / ``no`` baselines (``baselines.py``), registered in :func:`build_algorithm`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from innerloop.adaptation import InnerLoop, Params, adapt, adapt_and_predict
from innerloop.learner import Learner
from innerloop_training.tasks import TaskBatch

if TYPE_CHECKING:
    from innerloop_training.warpgrad import WarpGradConfig

ALGORITHMS = ("maml", "fomaml", "metasgd", "reptile", "leap", "warp", "warp-leap", "ft", "no")


OUTER_OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class OuterConfig:
    """The outer (meta) optimiser; ``grad_clip`` 0 or None means no clipping."""

    optimizer: str = "adam"
    lr: float = 1e-3
    grad_clip: float | None = 10.0

    def build(self, groups: list[Tensor] | list[dict[str, Any]]) -> torch.optim.Optimizer:
        """``groups``: tensors, or torch parameter groups (a group may carry its own ``lr``)."""
        if self.optimizer == "adam":
            return torch.optim.Adam(groups, lr=self.lr)
        if self.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=self.lr)
        raise ValueError(f"outer optimizer {self.optimizer!r} is not one of {OUTER_OPTIMIZERS}")


def default_outer(name: str) -> OuterConfig:
    """Each method's outer optimiser when none is given, as in its paper / reference code.

    - ``reptile``: plain SGD on ``init - mean(adapted)`` with no clipping, i.e. Reptile's own
      update ``init += lr * (mean(adapted) - init)``; lr 0.1 as in the Leap/WarpGrad reference
      runs of Reptile (``src/omniglot/run_multi.py``, ``get_model_config``).
    - ``leap``, ``warp``, ``warp-leap``: SGD, lr 0.1, no clipping (the reference Omniglot script
      ``src/omniglot/main.py``: ``--outer_opt sgd --outer_kwargs lr 0.1``).
    - ``ft``: SGD, lr 0.1, no clipping: the reference trains the multi-headed baseline with its
      task optimiser (``--inner_opt sgd --inner_kwargs lr 0.1``, ``FtWrapper``).
    - everything else (MAML family, ``no``): Adam 1e-3 with the global norm clipped at 10,
      this project's long-standing setting (recorded in every card).
    """
    if name in ("reptile", "leap", "warp", "warp-leap", "ft"):
        return OuterConfig("sgd", 0.1, None)
    return OuterConfig("adam", 1e-3, 10.0)


def resolve_outer(
    name: str, optimizer: str | None, lr: float | None, grad_clip: float | None
) -> OuterConfig:
    """The method's :func:`default_outer`, with every knob the user gave replacing its default
    (``grad_clip`` 0 turns clipping off)."""
    default = default_outer(name)
    return OuterConfig(
        optimizer if optimizer is not None else default.optimizer,
        lr if lr is not None else default.lr,
        (grad_clip or None) if grad_clip is not None else default.grad_clip,
    )


def query_metrics(learner: Learner, outputs: Tensor, query_y: Tensor) -> tuple[Tensor, Tensor]:
    """Mean query loss over all tasks, and accuracy (classification) or MSE (regression)."""
    flat_out, flat_y = outputs.flatten(0, 1), query_y.flatten(0, 1)
    loss = learner.loss(flat_out, flat_y, torch.ones(flat_y.shape[0], device=flat_y.device))
    if learner.task == "classification":
        score = (flat_out.argmax(-1) == flat_y).float().mean()
    else:
        score = loss.detach()
    return loss, score


class MetaAlgorithm(ABC):
    """Owns the outer optimiser over the learner's meta-parameters (and learned step sizes)."""

    name: str = ""

    def __init__(self, learner: Learner, loop: InnerLoop, outer: OuterConfig) -> None:
        self.learner = learner
        self.loop = loop
        self.outer = outer
        for tensor in self.meta_tensors().values():
            tensor.requires_grad_(True)
        self.optimizer = outer.build(self.param_groups())

    def meta_tensors(self) -> dict[str, Tensor]:
        """Everything the outer optimiser updates, keyed for resumable optimiser state."""
        return {f"param/{k}": v for k, v in self.learner.params.items()}

    def param_groups(self) -> list[dict[str, Any]]:
        """The outer optimiser's groups, in :meth:`meta_tensors` order (one group by default;
        WarpGrad gives its warp-layers their own step size)."""
        return [{"params": list(self.meta_tensors().values())}]

    @abstractmethod
    def step(self, batch: TaskBatch) -> dict[str, float]:
        """One outer update from a meta-batch; returns metrics for the log."""

    def _apply(self) -> float:
        tensors = list(self.meta_tensors().values())
        if self.outer.grad_clip:
            norm = float(torch.nn.utils.clip_grad_norm_(tensors, self.outer.grad_clip))
        else:  # logged all the same: the norm is how a too-large outer step shows up
            grads = [t.grad.detach().norm() for t in tensors if t.grad is not None]
            norm = float(torch.stack(grads).norm()) if grads else 0.0
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm


class GradientMetaLearner(MetaAlgorithm):
    """MAML, first-order MAML and Meta-SGD: back-propagate the query loss into the init."""

    def __init__(
        self,
        name: str,
        learner: Learner,
        loop: InnerLoop,
        outer: OuterConfig,
        learn_step_sizes: bool = False,
    ) -> None:
        self.name = name
        self.learn_step_sizes = learn_step_sizes or name == "metasgd"
        # learned step sizes of MAML / first-order MAML (MAML++'s LSLR) stay >= 0: left free,
        # the outer loop turned the head's steps negative within 250 meta-steps, a loop that
        # *un-fits* the support set to soften the query answer (a calibration trick the head's
        # learned scale is there for). Meta-SGD keeps its paper's unconstrained step sizes.
        self.nonnegative_step_sizes = self.learn_step_sizes and name != "metasgd"
        super().__init__(learner, loop, outer)

    def meta_tensors(self) -> dict[str, Tensor]:
        tensors = super().meta_tensors()
        if self.learn_step_sizes:
            tensors.update({f"step_size/{k}": v for k, v in self.learner.step_sizes.items()})
        return tensors

    def step(self, batch: TaskBatch) -> dict[str, float]:
        predictions = adapt_and_predict(
            self.learner,
            self.learner.params,
            self.learner.step_sizes,
            batch.support_x,
            batch.support_y,
            batch.support_weight,
            batch.class_mask,
            batch.query_x,
            self.loop,
        )
        loss, score = query_metrics(self.learner, predictions.outputs, batch.query_y)
        loss.backward()
        grad_norm = self._apply()
        if self.nonnegative_step_sizes:
            with torch.no_grad():
                for step_size in self.learner.step_sizes.values():
                    step_size.clamp_(min=0.0)
        metrics = {
            "query_loss": float(loss.detach()),
            "support_loss_before": float(predictions.loss_before.detach().mean()),
            "support_loss_after": float(predictions.loss_after.detach().mean()),
            "grad_norm": grad_norm,
        }
        metrics["query_accuracy" if self.learner.task == "classification" else "query_mse"] = float(
            score
        )
        return metrics


class Reptile(MetaAlgorithm):
    """Nichol et al. 2018, batched: init += outer_lr * mean over tasks of (adapted - init).

    Reptile has no support/query distinction, so each task adapts on both together. The
    difference ``init - mean(adapted)`` is handed to the outer optimiser as the gradient; with
    :func:`default_outer` (plain SGD, no clipping) this is exactly the Reptile update. Adam or
    clipping can still be asked for, but then the method is no longer Reptile's update.
    """

    name = "reptile"

    def step(self, batch: TaskBatch) -> dict[str, float]:
        learner = self.learner
        x = torch.cat([batch.support_x, batch.query_x], dim=1)
        y = torch.cat([batch.support_y, batch.query_y], dim=1)
        query_weight = torch.ones(
            batch.query_x.shape[:2],
            dtype=batch.support_weight.dtype,
            device=batch.support_weight.device,
        )
        weight = torch.cat([batch.support_weight, query_weight], dim=1)
        with torch.no_grad():
            adapted, before, after = reptile_adapted_params(
                learner,
                learner.params,
                learner.step_sizes,
                x,
                y,
                weight,
                batch.class_mask,
                self.loop,
            )
            for name, tensor in learner.params.items():
                if name not in adapted:  # meta-only (the head's scale): no Reptile target
                    continue
                target = adapted[name]
                # a "zero" head is copied per way: its target is the mean over tasks and ways
                target = target.reshape(-1, *tensor.shape).mean(0)
                tensor.grad = tensor.detach() - target
        grad_norm = self._apply()
        return {
            "support_loss_before": float(before.mean()),
            "support_loss_after": float(after.mean()),
            "grad_norm": grad_norm,
        }


def reptile_adapted_params(
    learner: Learner,
    params: Params,
    step_sizes: Params,
    x: Tensor,
    y: Tensor,
    weight: Tensor,
    class_mask: Tensor,
    loop: InnerLoop,
) -> tuple[Params, Tensor, Tensor]:
    """Adapted parameters of every task (leading task dim), with support losses."""

    def one_task(sx: Tensor, sy: Tensor, sw: Tensor, cm: Tensor) -> tuple[Params, Tensor, Tensor]:
        result = adapt(learner, params, step_sizes, sx, sy, sw, cm, loop)
        return result.params, result.loss_before, result.loss_after

    # a Python loop for convolutional models on CPU, where vmapped convolutions are slower
    # (measured, 32 filters, 5 tasks of 20 steps, one thread: 37 s vmapped, 20 s looped),
    # vmap otherwise
    from innerloop_training.leap import map_tasks  # leap builds on this module

    adapted, before, after = map_tasks(one_task, (x, y, weight, class_mask))
    return adapted, before, after


def build_algorithm(
    name: str,
    learner: Learner,
    inner: InnerLoop,
    outer: OuterConfig,
    warp: WarpGradConfig | None = None,
    learn_step_sizes: bool = False,
) -> MetaAlgorithm:
    """The meta-learner for ``name``; ``inner.first_order`` is set to what the method needs.

    ``warp`` configures ``warp`` / ``warp-leap`` (default :class:`WarpGradConfig`; its
    ``learn_init`` is set from the name). ``learn_step_sizes``: the MAML family also learns
    the learner's step sizes, whatever their shape (Meta-SGD always does)."""
    learn = learn_step_sizes
    if name == "maml":
        return GradientMetaLearner(name, learner, replace(inner, first_order=False), outer, learn)
    if name == "metasgd":  # second order unless the caller asked for first-order Meta-SGD
        return GradientMetaLearner(name, learner, inner, outer, learn)
    if name == "fomaml":
        return GradientMetaLearner(name, learner, replace(inner, first_order=True), outer, learn)
    if name == "reptile":
        return Reptile(learner, replace(inner, first_order=True), outer)
    # imported here: these modules build on MetaAlgorithm from this one
    if name == "leap":
        from innerloop_training.leap import Leap

        return Leap(learner, replace(inner, first_order=True), outer)
    if name in ("warp", "warp-leap"):
        from innerloop_training.warpgrad import WarpGrad, WarpGradConfig

        config = replace(warp or WarpGradConfig(), learn_init=name == "warp-leap")
        return WarpGrad(learner, replace(inner, first_order=True), outer, config, name=name)
    if name in ("ft", "no"):
        from innerloop_training.baselines import MultiHeadFineTuning, NoMetaTraining

        baseline = MultiHeadFineTuning if name == "ft" else NoMetaTraining
        return baseline(learner, replace(inner, first_order=True), outer)
    raise ValueError(f"algorithm {name!r} is not one of {ALGORITHMS}")
