"""Baselines that meta-learn nothing about adaptation, as in the Leap and WarpGrad papers.

- ``no``: no meta-training at all. :meth:`NoMetaTraining.step` changes nothing, so the trainer
  writes the random init, which is then adapted exactly like every meta-learned checkpoint. It
  measures how much of a method's accuracy is the inner loop's own doing.
- ``ft`` (multi-headed fine-tuning, the papers' "transfer learning" baseline): ordinary
  supervised multi-task training of the body, with one linear head per pre-training task, on
  each task's own, fixed labels (no episode-wise label permutation); at test time the body is
  adapted with a fresh head like every other method (the per-task heads are not saved). This
  needs the task identity and consistent labels, which a :class:`TaskBatch` carries in
  ``task_ids`` when its source has a fixed task list (the alphabet-as-task protocol: one task per
  alphabet); without them :meth:`MultiHeadFineTuning.step` refuses rather than silently
  training something else under the name.

  One ft meta-step takes ``loop.steps`` SGD steps (the inner-loop length of the other methods,
  so every method spends about the same computation per meta-step), each on the mean over the
  batch's tasks of the cross-entropy of that task's head on its support set. The reference
  (``src/omniglot/wrapper.py``, ``FtWrapper``) likewise trains body and heads with the task
  optimiser over all batches of the meta-batch's tasks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from innerloop.adaptation import InnerLoop
from innerloop.learner import MASKED_LOGIT, Learner
from innerloop_training.algorithms.base import MetaAlgorithm, OuterConfig
from innerloop_training.tasks import TaskBatch


class NoMetaTraining(MetaAlgorithm):
    """``no``: leaves the random init untouched (nothing is computed, nothing is logged)."""

    name = "no"

    def step(self, batch: TaskBatch) -> dict[str, float]:
        del batch
        return {}


class MultiHeadFineTuning(MetaAlgorithm):
    """``ft``: the body and one linear head per task id, trained on the tasks' own labels."""

    name = "ft"

    def __init__(self, learner: Learner, loop: InnerLoop, outer: OuterConfig, seed: int = 0):
        if learner.task != "classification":
            raise ValueError("ft (multi-headed fine-tuning) is defined for classification only")
        super().__init__(learner, loop, outer)
        self.heads: dict[int, tuple[Tensor, Tensor]] = {}  # task id -> (weight, bias)
        self._generator = torch.Generator().manual_seed(seed)

    def meta_tensors(self) -> dict[str, Tensor]:
        """The body only: heads are per pre-training task and never leave this object."""
        return {f"param/{k}": v for k, v in self.learner.params.items() if k.startswith("body.")}

    def head(self, task: int, ways: int, features: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """Task ``task``'s head, created on first sight (``nn.Linear``'s uniform init) and
        handed to the optimiser, so it is trained from then on."""
        if task not in self.heads:
            bound = 1.0 / math.sqrt(features)
            weight = (torch.rand(ways, features, generator=self._generator) * 2 - 1) * bound
            bias = (torch.rand(ways, generator=self._generator) * 2 - 1) * bound
            pair = tuple(t.to(like).requires_grad_(True) for t in (weight, bias))
            self.heads[task] = (pair[0], pair[1])
            self.optimizer.add_param_group({"params": list(pair)})
        return self.heads[task]

    def step(self, batch: TaskBatch) -> dict[str, float]:
        if batch.task_ids is None:
            raise ValueError(
                "ft needs task ids and per-task consistent labels (TaskBatch.task_ids); this "
                "task source has neither, so there is no task to give a head to"
            )
        first = last = float("nan")
        accuracy = torch.zeros(())
        for _ in range(max(self.loop.steps, 1)):
            loss, accuracy = self.loss(batch)
            loss.backward()
            first = float(loss.detach()) if math.isnan(first) else first
            last = float(loss.detach())
            grad_norm = self._apply()
        return {
            "pretrain_loss_first": first,
            "pretrain_loss": last,
            "pretrain_accuracy": float(accuracy),
            "heads": float(len(self.heads)),
            "grad_norm": grad_norm,
        }

    def loss(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """Mean over tasks of the weighted support-set cross-entropy under each task's head."""
        assert batch.task_ids is not None
        learner = self.learner
        tasks, ways = batch.class_mask.shape
        features = learner.features(learner.params, batch.support_x.flatten(0, 1))
        features = features.reshape(tasks, -1, features.shape[-1])
        losses, correct, counted = [], torch.zeros(()), torch.zeros(())
        for b in range(tasks):
            weight, bias = self.head(int(batch.task_ids[b]), ways, features.shape[-1], features)
            logits = features[b] @ weight.T + bias
            logits = logits.masked_fill(~batch.class_mask[b], MASKED_LOGIT)
            rows = batch.support_weight[b]
            per_row = F.cross_entropy(logits, batch.support_y[b], reduction="none")
            losses.append((per_row * rows).sum() / rows.sum().clamp_min(1e-6))
            hits = (logits.argmax(-1) == batch.support_y[b]).to(rows.dtype)
            correct, counted = correct + (hits * rows).sum().detach(), counted + rows.sum()
        return torch.stack(losses).mean(), correct / counted.clamp_min(1e-6)
