"""Accuracy (or MSE) of a checkpoint on fixed, seeded episodes, with a 95% confidence interval.

Evaluation adapts through ``Learner.adapt_and_predict``, the very call the server makes for a
request, so an accuracy measured here is the accuracy served.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch

from innerloop.learner import Learner
from innerloop_training.tasks import TaskBatch


@dataclass
class EvaluationResult:
    """Per-episode scores and their summary; ``metric`` is ``accuracy`` or ``mse``."""

    metric: str
    mean: float
    ci95: float
    episodes: int
    per_episode: list[float] = field(repr=False)
    settings: dict[str, object] = field(default_factory=dict)

    def to_dict(self, include_episodes: bool = False) -> dict[str, object]:
        data = asdict(self)
        data[self.metric] = self.mean
        if not include_episodes:
            del data["per_episode"]
        data.update(self.settings)
        del data["settings"]
        return data

    def summary(self) -> str:
        if self.metric == "accuracy":
            return (
                f"accuracy {100 * self.mean:.2f}% ± {100 * self.ci95:.2f}% "
                f"({self.episodes} episodes)"
            )
        return f"mse {self.mean:.4f} ± {self.ci95:.4f} ({self.episodes} tasks)"


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation 95% confidence interval."""
    n = len(values)
    if n == 0:
        raise ValueError("no episodes to evaluate")
    mean = sum(values) / n
    if n == 1:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, 1.96 * math.sqrt(var / n)


def episode_scores(
    learner: Learner, batch: TaskBatch, steps: int | None = None, lr: float | None = None
) -> list[float]:
    """Per-task accuracy (classification) or query MSE (regression) of one batch of tasks."""
    predictions = learner.adapt_and_predict(
        batch.support_x,
        batch.support_y,
        batch.support_weight,
        batch.class_mask,
        batch.query_x,
        steps=steps,
        lr=lr,
    )
    outputs = predictions.outputs
    if learner.task == "classification":
        scores = (outputs.argmax(-1) == batch.query_y).float().mean(-1)
    else:
        scores = ((outputs - batch.query_y) ** 2).mean(dim=(-1, -2))
    return [float(s) for s in scores]


def evaluate_learner(
    learner: Learner,
    batches: Iterable[TaskBatch],
    steps: int | None = None,
    lr: float | None = None,
    progress: bool = False,
) -> EvaluationResult:
    """Score ``learner`` on every task of ``batches`` (pass the same batches to compare models)."""
    per_episode: list[float] = []
    iterator: Iterable[TaskBatch] = batches
    if progress:
        from tqdm import tqdm

        iterator = tqdm(batches, desc="evaluate", unit="batch", leave=False)
    with torch.no_grad():
        for batch in iterator:
            per_episode.extend(episode_scores(learner, batch, steps, lr))
    mean, ci = mean_ci95(per_episode)
    metric = "accuracy" if learner.task == "classification" else "mse"
    return EvaluationResult(metric, mean, ci, len(per_episode), per_episode)
