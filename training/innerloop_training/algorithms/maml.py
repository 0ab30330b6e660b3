"""The MAML family: the query loss is back-propagated into the init.

- ``maml``: second order, the query loss is differentiated through every inner step;
- ``fomaml``: inner gradients are detached, so only first-order terms reach the init;
- ``metasgd``: MAML whose per-parameter step sizes are meta-parameters too.

All three are one class, :class:`GradientMetaLearner`; MAML++'s multi-step loss
(:func:`multi_step_weights`) and learned step sizes (LSLR) are options of it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from innerloop.adaptation import InnerLoop, adapt_and_predict
from innerloop.learner import Learner
from innerloop_training.algorithms.base import MetaAlgorithm, OuterConfig, query_metrics
from innerloop_training.tasks import TaskBatch


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
        # the outer loop turns the head's steps negative (docs/papers-vs-innerloop.md), a loop that
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
