"""Task sources: where meta-training and evaluation draw their task batches from.

An image source wraps the episode sampler over one class split; a regression source wraps a task
family. Both hand out :class:`TaskBatch` es, random for training and *fixed* (seeded, identical
for every method and every run) for evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from innerloop_training.data.labelled_images import LabelledImages
from innerloop_training.data.omniglot import omniglot_alphabet_of
from innerloop_training.data.registry import (
    IMAGE_DATASETS,
    REGRESSION_DATASETS,
    load_image_dataset,
    load_task_family,
    sketch_domain_of,
)
from innerloop_training.data.regression import RegressionTaskFamily
from innerloop_training.episodes import EpisodeSampler, fixed_episodes
from innerloop_training.tasks import TaskBatch, task_batch


class TaskSource(Protocol):
    def sample(self, tasks: int) -> TaskBatch: ...

    def fixed(self, tasks: int, seed: int, chunk: int = 50) -> list[TaskBatch]: ...

    def describe(self) -> dict[str, object]: ...


@dataclass
class ImageTaskSource:
    """N-way K-shot episodes over the classes of one split."""

    data: LabelledImages
    ways: int
    shots: int
    queries: int
    seed: int
    unbalanced: bool = False
    groups: list[str] | None = None  # one group id per class: within-group episodes

    def __post_init__(self) -> None:
        self._sampler = EpisodeSampler(
            self.data,
            self.ways,
            self.shots,
            self.queries,
            self.seed,
            unbalanced=self.unbalanced,
            groups=self.groups,
        )

    def sample(self, tasks: int) -> TaskBatch:
        return task_batch(self._sampler.sample(tasks))

    def fixed(self, tasks: int, seed: int, chunk: int = 50) -> list[TaskBatch]:
        episodes = fixed_episodes(
            self.data,
            self.ways,
            self.shots,
            self.queries,
            tasks,
            seed,
            unbalanced=self.unbalanced,
            groups=self.groups,
        )
        return [part for batch in episodes for part in task_batch(batch).chunks(chunk)]

    def describe(self) -> dict[str, object]:
        return {
            **self.data.source,
            "classes": self.data.num_classes,
            "ways": self.ways,
            "shots": self.shots,
            "queries": self.queries,
            "unbalanced": self.unbalanced,
            **({"within": "alphabet"} if self.groups is not None else {}),
        }


@dataclass
class RegressionTaskSource:
    """K-shot regression tasks from a task family (sine, logistic)."""

    family: RegressionTaskFamily
    name: str
    shots: int
    queries: int
    seed: int

    def __post_init__(self) -> None:
        self._generator = torch.Generator().manual_seed(self.seed)

    def sample(self, tasks: int) -> TaskBatch:
        return task_batch(self.family.sample(tasks, self.shots, self.queries, self._generator))

    def fixed(self, tasks: int, seed: int, chunk: int = 50) -> list[TaskBatch]:
        generator = torch.Generator().manual_seed(seed)
        batch = task_batch(self.family.sample(tasks, self.shots, self.queries, generator))
        return batch.chunks(chunk)

    def describe(self) -> dict[str, object]:
        return {
            "dataset": self.name,
            "shots": self.shots,
            "queries": self.queries,
            **{k: list(v) for k, v in self.family.ranges().items()},
            "x_range": list(self.family.x_range),
        }


def build_source(
    dataset: str,
    split: str,
    *,
    ways: int,
    shots: int,
    queries: int,
    seed: int,
    data_root: Path | str | None = None,
    path: Path | str | None = None,
    image_size: int = 28,
    rotations: bool = False,
    unbalanced: bool = False,
    split_scheme: str = "alphabets",
    split_seed: int = 0,
    within_alphabet: bool = False,
) -> TaskSource:
    """The task source for ``dataset``'s ``split``, with class splits from the data registry.

    ``within_alphabet`` (Omniglot only) draws every class of an episode from one alphabet.
    """
    if dataset in REGRESSION_DATASETS:
        return RegressionTaskSource(load_task_family(dataset), dataset, shots, queries, seed)
    if dataset not in IMAGE_DATASETS:
        raise ValueError(
            f"unknown dataset {dataset!r}; choose from {IMAGE_DATASETS + REGRESSION_DATASETS}"
        )
    data = load_image_dataset(
        dataset,
        split,
        data_root,
        image_size,
        seed=split_seed,
        path=path,
        rotations=rotations,
        split_scheme=split_scheme,
    )
    groups = None
    if within_alphabet:
        if dataset != "omniglot":
            raise ValueError(f"within-alphabet episodes are for omniglot, not {dataset}")
        groups = [omniglot_alphabet_of(name) for name in data.class_names]
    elif dataset == "sketches":  # letters or doodles, never both in one episode: half each
        groups = [sketch_domain_of(name) for name in data.class_names]
    return ImageTaskSource(data, ways, shots, queries, seed, unbalanced, groups)
