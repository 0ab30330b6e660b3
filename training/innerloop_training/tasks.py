"""One shape for every task batch, whatever produced it (image episodes or regression tasks).

The inner loop takes per-task tensors with a leading task dimension; this module is the single
place that turns an episode batch into them, so training, evaluation and the benchmark cannot
disagree on masks, weights or dtypes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor


@dataclass
class TaskBatch:
    """Tensors for ``B`` tasks: support (x, y, weight), ways mask, queries and their targets."""

    support_x: Tensor
    support_y: Tensor
    support_weight: Tensor
    class_mask: Tensor
    query_x: Tensor
    query_y: Tensor
    # which pre-training task each row is ([B] ints), where the source has a fixed task list
    # and gives every task the same labels each time (multi-headed fine-tuning needs both)
    task_ids: Tensor | None = None

    @property
    def tasks(self) -> int:
        return int(self.support_x.shape[0])

    def to(self, device: torch.device | str) -> TaskBatch:
        ids = None if self.task_ids is None else self.task_ids.to(device)
        return replace(TaskBatch(*(t.to(device) for t in self.astuple())), task_ids=ids)

    def astuple(self) -> tuple[Tensor, ...]:
        return (
            self.support_x,
            self.support_y,
            self.support_weight,
            self.class_mask,
            self.query_x,
            self.query_y,
        )

    def chunks(self, size: int) -> list[TaskBatch]:
        """Split along the task dimension (to bound memory in evaluation)."""
        return [
            replace(
                TaskBatch(*(t[i : i + size] for t in self.astuple())),
                task_ids=None if self.task_ids is None else self.task_ids[i : i + size],
            )
            for i in range(0, self.tasks, size)
        ]


def task_batch(batch: Any) -> TaskBatch:
    """From an image ``EpisodeBatch`` or a regression batch (duck-typed on its fields)."""
    support_x, query_x = batch.support_x, batch.query_x
    tasks, shots = support_x.shape[0], support_x.shape[1]
    weight = getattr(batch, "support_weight", None)
    if weight is None:
        weight = torch.ones(tasks, shots)
    if support_x.dtype == torch.uint8:  # defensive: images must reach the model as [0, 1]
        support_x, query_x = support_x.float() / 255.0, query_x.float() / 255.0
    ways = getattr(batch, "ways", None)
    if ways is None:  # regression: one dummy "way" keeps the vmapped signature uniform
        class_mask = torch.ones(tasks, 1, dtype=torch.bool)
    else:
        class_mask = torch.ones(tasks, int(ways), dtype=torch.bool)
    return TaskBatch(support_x, batch.support_y, weight.float(), class_mask, query_x, batch.query_y)
