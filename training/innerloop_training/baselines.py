"""Baselines that meta-learn nothing about adaptation, as in the Leap and WarpGrad papers.

- ``no``: no meta-training at all. :meth:`NoMetaTraining.step` changes nothing, so the trainer
  writes the random init, which is then adapted exactly like every meta-learned checkpoint. It
  measures how much of a method's accuracy is the inner loop's own doing.
- ``ft`` (multi-headed fine-tuning): ordinary supervised pre-training of the body, then, at test
  time, the body and a fresh head adapt like every other method. Each meta-step pools the tasks
  of the batch into one classification problem over the *union* of their classes (task ``b``'s
  class ``c`` becomes class ``b * ways + c``, so classes of different tasks stay apart) and takes
  one gradient step on the cross-entropy of the pooled query set. The head is rebuilt for every
  batch from the pooled support set's class means (the ``proto`` head's rule: row ``2 μ_c``, bias
  ``-|μ_c|²``), i.e. a fresh head per pre-training task, the multi-headed set-up, without having
  to store one head per class: our task batches do not name their classes. Regression tasks pool
  support and query and regress with the body directly. Nothing in the objective involves an
  inner loop, which is what makes it the "transfer learning" baseline the meta-learners are
  compared against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from innerloop.learner import MASKED_LOGIT
from innerloop_training.algorithms import MetaAlgorithm
from innerloop_training.tasks import TaskBatch


class NoMetaTraining(MetaAlgorithm):
    """``no``: leaves the random init untouched (nothing is computed, nothing is logged)."""

    name = "no"

    def step(self, batch: TaskBatch) -> dict[str, float]:
        del batch
        return {}


class MultiHeadFineTuning(MetaAlgorithm):
    """``ft``: supervised pre-training over the union of the batch's classes (see module doc)."""

    name = "ft"

    def meta_tensors(self) -> dict[str, Tensor]:
        """The body only: a ``zero`` head's shared vector gets no signal from this objective."""
        return {f"param/{k}": v for k, v in self.learner.params.items() if k.startswith("body.")}

    def step(self, batch: TaskBatch) -> dict[str, float]:
        if self.learner.task == "classification":
            loss, accuracy = self._classification_loss(batch)
            metrics = {"query_accuracy": float(accuracy)}
        else:
            loss = self._regression_loss(batch)
            metrics = {}
        loss.backward()
        metrics["query_loss"] = float(loss.detach())
        metrics["grad_norm"] = self._apply()
        return metrics

    def _classification_loss(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        learner = self.learner
        tasks, ways = batch.class_mask.shape
        offset = (torch.arange(tasks, device=batch.support_y.device) * ways)[:, None]
        support_y = (batch.support_y + offset).flatten()
        query_y = (batch.query_y + offset).flatten()
        weight = batch.support_weight.flatten()
        support_x, query_x = batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)
        features = learner.features(learner.params, torch.cat([support_x, query_x]))
        support_f, query_f = features[: support_x.shape[0]], features[support_x.shape[0] :]
        onehot = F.one_hot(support_y, tasks * ways).to(features.dtype) * weight[:, None]
        protos = (onehot.T @ support_f) / onehot.sum(0).clamp_min(1e-6)[:, None]
        logits = query_f @ (2.0 * protos).T - (protos * protos).sum(-1)
        logits = logits.masked_fill(~batch.class_mask.flatten(), MASKED_LOGIT)
        loss = F.cross_entropy(logits, query_y)
        accuracy = (logits.argmax(-1) == query_y).float().mean()
        return loss, accuracy

    def _regression_loss(self, batch: TaskBatch) -> Tensor:
        learner = self.learner
        x = torch.cat([batch.support_x, batch.query_x], dim=1).flatten(0, 1)
        y = torch.cat([batch.support_y, batch.query_y], dim=1).flatten(0, 1)
        query_weight = torch.ones(batch.query_x.shape[:2], dtype=batch.support_weight.dtype)
        weight = torch.cat([batch.support_weight, query_weight], dim=1).flatten()
        outputs = learner.features(learner.params, x)
        return learner.loss(outputs, y, weight)
