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


def multi_step_weights(steps: int, progress: float) -> list[float]:
    """MAML++'s multi-step loss weights over inner steps 1..K at ``progress`` in [0, 1].

    Uniform (1/K each) at the start; every step but the last decays linearly to 0.03/K, and the
    last takes what the others give up, so by ``progress`` 1 the loss is (almost) the last
    step's alone, as in Antoniou et al.'s importance vector."""
    if steps < 1:
        raise ValueError(f"the multi-step loss needs inner steps, got {steps}")
    uniform, floor = 1.0 / steps, 0.03 / steps
    progress = min(max(progress, 0.0), 1.0)
    early = [uniform - progress * (uniform - floor)] * (steps - 1)
    return [*early, 1.0 - sum(early)]


class GradientMetaLearner(MetaAlgorithm):
    """MAML, first-order MAML and Meta-SGD: back-propagate the query loss into the init.

    With ``multi_step_loss`` N > 0 the outer loss is MAML++'s weighted sum of the query losses
    after every inner step (:func:`multi_step_weights`), annealed to the last step's over the
    first N meta-steps; the trainer sets :attr:`meta_step`."""

    def __init__(
        self,
        name: str,
        learner: Learner,
        loop: InnerLoop,
        outer: OuterConfig,
        learn_step_sizes: bool = False,
        multi_step_loss: int = 0,
    ) -> None:
        self.name = name
        self.multi_step_loss = multi_step_loss
        self.meta_step = 0
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
        multi_step = self.multi_step_loss > 0 and self.loop.steps > 1
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
            step_outputs=multi_step,
        )
        loss, score = query_metrics(self.learner, predictions.outputs, batch.query_y)
        objective = loss
        if multi_step and predictions.step_outputs is not None:
            weights = multi_step_weights(self.loop.steps, self.meta_step / self.multi_step_loss)
            objective = sum(
                (
                    w
                    * query_metrics(self.learner, predictions.step_outputs[:, i], batch.query_y)[0]
                    for i, w in enumerate(weights)
                ),
                torch.zeros((), device=loss.device),
            )
        objective.backward()
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
    multi_step_loss: int = 0,
) -> MetaAlgorithm:
    """The meta-learner for ``name``; ``inner.first_order`` is set to what the method needs.

    ``warp`` configures ``warp`` / ``warp-leap`` (default :class:`WarpGradConfig`; its
    ``learn_init`` is set from the name). ``learn_step_sizes``: the MAML family also learns
    the learner's step sizes, whatever their shape (Meta-SGD always does). ``multi_step_loss``:
    MAML++'s annealed multi-step loss over that many meta-steps (MAML family only)."""
    learn, msl = learn_step_sizes, multi_step_loss
    gradient = {"maml": False, "fomaml": True, "metasgd": inner.first_order}
    if msl and name not in gradient:
        raise ValueError(f"the multi-step loss is for maml, fomaml and metasgd, not {name}")
    if name in gradient:  # metasgd: second order unless the caller asked for first order
        loop = replace(inner, first_order=gradient[name])
        return GradientMetaLearner(name, learner, loop, outer, learn, msl)
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
