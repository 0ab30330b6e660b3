"""Accuracy (or MSE) of a checkpoint on fixed, seeded episodes, with a 95% confidence interval.

Evaluation adapts through ``Learner.adapt_and_predict``, the very call the server makes for a
request, so an accuracy measured here is the accuracy served.

An inner loop only earns its cost if it beats the best answer that does not adapt, so every
classification evaluation also scores, on the same episodes, the nearest-prototype classifier
on the checkpoint's un-adapted features (:func:`prototype_scores`), and reports the *gain* of
the loop over it with a paired (per-episode) confidence interval. For a prototype head that
baseline is exactly the 0-step answer; for a head that starts at chance it is the honest bar
the loop must clear, not chance.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from innerloop.learner import Learner
from innerloop_training.tasks import TaskBatch


@dataclass
class EvaluationResult:
    """Per-episode scores and their summary; ``metric`` is ``accuracy`` or ``mse``.

    ``prototype`` holds the nearest-prototype baseline's per-episode accuracy on the same
    episodes (classification only; ``None`` when not measured).
    """

    metric: str
    mean: float
    ci95: float
    episodes: int
    per_episode: list[float] = field(repr=False)
    settings: dict[str, object] = field(default_factory=dict)
    prototype: list[float] | None = field(default=None, repr=False)
    # per-request choice (innerloop.loop_choice): episodes per loop that ran, "steps@lr", and
    # "default" where a label had one example; None when the choice was off
    chosen: dict[str, int] | None = None

    @property
    def prototype_accuracy(self) -> tuple[float, float] | None:
        """Mean and CI of the baseline, or ``None``."""
        return None if self.prototype is None else mean_ci95(self.prototype)

    @property
    def gain(self) -> tuple[float, float] | None:
        """Loop minus baseline: mean of the per-episode differences and its paired CI."""
        if self.prototype is None:
            return None
        diffs = [a - b for a, b in zip(self.per_episode, self.prototype, strict=True)]
        return mean_ci95(diffs)

    def to_dict(self, include_episodes: bool = False) -> dict[str, object]:
        data = asdict(self)
        data[self.metric] = self.mean
        del data["prototype"]
        if not include_episodes:
            del data["per_episode"]
        baseline, gain = self.prototype_accuracy, self.gain
        if baseline is not None and gain is not None:
            data["prototype_accuracy"], data["prototype_ci95"] = baseline
            data["gain"], data["gain_ci95"] = gain
            if include_episodes:
                data["prototype_per_episode"] = self.prototype
        data.update(self.settings)
        del data["settings"]
        return data

    def summary(self) -> str:
        if self.metric == "accuracy":
            text = f"accuracy {100 * self.mean:.2f}% ± {100 * self.ci95:.2f}%"
            baseline, gain = self.prototype_accuracy, self.gain
            if baseline is not None and gain is not None:
                text += (
                    f", prototype baseline {100 * baseline[0]:.2f}% ± {100 * baseline[1]:.2f}%, "
                    f"gain {100 * gain[0]:+.2f} ± {100 * gain[1]:.2f} points"
                )
            if self.chosen:
                loops = ", ".join(f"{k} x{v}" for k, v in self.chosen.items())
                text += f"; loop chosen per episode: {loops}"
            return f"{text} ({self.episodes} episodes)"
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
    learner: Learner,
    batch: TaskBatch,
    steps: int | None = None,
    lr: float | None = None,
    chosen: Counter[str] | None = None,
) -> list[float]:
    """Per-task accuracy (classification) or query MSE (regression) of one batch of tasks.

    ``chosen`` counts the loop each task ran when the per-request choice was made."""
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
    if chosen is not None and predictions.choice is not None:
        for index in predictions.choice.chosen.tolist():
            if index < 0:
                chosen["default"] += 1
            else:
                steps_c, lr_c = predictions.choice.candidates[index]
                chosen[f"{steps_c}@{lr_c:g}"] += 1
    if learner.task == "classification":
        scores = (outputs.argmax(-1) == batch.query_y).float().mean(-1)
    else:
        scores = ((outputs - batch.query_y) ** 2).mean(dim=(-1, -2))
    return [float(s) for s in scores]


def prototype_scores(learner: Learner, batch: TaskBatch) -> list[float]:
    """Per-task accuracy of nearest-prototype classification on the un-adapted features.

    Squared Euclidean distance to the (support-weighted) class means of the meta-learned body's
    features; padded ways never win. Group norm is per sample, so all tasks of the batch go
    through the body as one batch of images.
    """
    tasks, shots = batch.support_y.shape
    queries = batch.query_y.shape[1]
    ways = batch.class_mask.shape[-1]
    with torch.no_grad():
        support = learner.features(learner.params, batch.support_x.flatten(0, 1))
        query = learner.features(learner.params, batch.query_x.flatten(0, 1))
        support = support.reshape(tasks, shots, -1)
        query = query.reshape(tasks, queries, -1)
        onehot = F.one_hot(batch.support_y, ways).to(support.dtype)
        onehot = onehot * batch.support_weight[..., None]
        counts = onehot.sum(1).clamp_min(1e-6)  # [tasks, ways]
        protos = onehot.transpose(1, 2) @ support / counts[..., None]  # [tasks, ways, dim]
        distances = torch.cdist(query, protos) ** 2
        distances = distances.masked_fill(~batch.class_mask[:, None, :], math.inf)
        correct = (distances.argmin(-1) == batch.query_y).float().mean(-1)
    return [float(c) for c in correct]


def evaluate_learner(
    learner: Learner,
    batches: Iterable[TaskBatch],
    steps: int | None = None,
    lr: float | None = None,
    progress: bool = False,
    baseline: bool = False,
    device: torch.device | None = None,
) -> EvaluationResult:
    """Score ``learner`` on every task of ``batches`` (pass the same batches to compare models).

    ``baseline=True`` also scores the nearest-prototype baseline on the same tasks
    (classification only). ``device`` moves each batch there (the learner must already be).
    """
    per_episode: list[float] = []
    chosen: Counter[str] = Counter()
    classification = learner.task == "classification"
    prototype: list[float] | None = [] if baseline and classification else None
    iterator: Iterable[TaskBatch] = batches
    if progress:
        from tqdm import tqdm

        iterator = tqdm(batches, desc="evaluate", unit="batch", leave=False)
    with torch.no_grad():
        for batch in iterator:
            if device is not None:
                batch = batch.to(device)
            per_episode.extend(episode_scores(learner, batch, steps, lr, chosen))
            if prototype is not None:
                prototype.extend(prototype_scores(learner, batch))
    mean, ci = mean_ci95(per_episode)
    metric = "accuracy" if classification else "mse"
    return EvaluationResult(
        metric,
        mean,
        ci,
        len(per_episode),
        per_episode,
        prototype=prototype,
        chosen=dict(sorted(chosen.items())) if chosen else None,
    )
