"""N-way K-shot episodes: the unit of meta-training and of few-shot evaluation.

An episode draws ``ways`` classes, relabels them ``0..ways-1`` in a random order (so no model can
memorise a class -> label mapping), and draws disjoint support and query images from each.
Tensors are batched over tasks (``[B, ...]``) because the inner loop is vmapped over tasks.

Unbalanced episodes (``unbalanced=True``) give each class a random shot count in ``[1, shots]``,
as real users' support sets are. To keep a fixed tensor shape (needed for ``vmap``) the support
is padded to ``ways * shots`` rows with copies of real rows carrying ``support_weight = 0``; a
loss must weight per-example terms by ``support_weight`` (and normalise by its sum).

Within-group episodes (``groups``: one group id per class) draw all ``ways`` classes of a task
from one group, picked uniformly among the groups with enough classes. For Omniglot the groups
are alphabets: Lake et al.'s *within-alphabet* protocol of the one-shot challenge, harder than
drawing characters across alphabets because characters of one alphabet look alike.

Everything is drawn from one ``numpy`` generator seeded at construction, in a fixed order, so the
tasks depend only on (dataset, settings, seed, sequence of ``sample`` calls), and task ``i`` is
the same whatever batch sizes were used to reach it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from innerloop.preprocessing import images_to_tensor_array
from innerloop_training.data.labelled_images import LabelledImages


@dataclass
class Episode:
    """One task (no batch dimension)."""

    support_x: torch.Tensor  # float32 [S, 1, H, W], uint8 / 255
    support_y: torch.Tensor  # int64 [S], 0..ways-1
    support_weight: torch.Tensor  # float32 [S], 1 = real, 0 = padding
    query_x: torch.Tensor  # float32 [Q, 1, H, W]
    query_y: torch.Tensor  # int64 [Q]
    ways: int
    class_names: list[str]  # class_names[label]


@dataclass
class EpisodeBatch:
    """``B`` tasks with equal shapes; ``class_names[b][label]`` names task b's classes.

    ``support_ref`` / ``query_ref`` (int64 ``[B, S|Q, 2]``: dataset class index, image index
    within that class) say exactly which images were used, for debugging and overlap checks.
    """

    support_x: torch.Tensor  # float32 [B, S, 1, H, W]
    support_y: torch.Tensor  # int64 [B, S]
    support_weight: torch.Tensor  # float32 [B, S]
    query_x: torch.Tensor  # float32 [B, Q, 1, H, W]
    query_y: torch.Tensor  # int64 [B, Q]
    ways: int
    class_names: list[list[str]]
    support_ref: torch.Tensor | None = field(default=None, repr=False)
    query_ref: torch.Tensor | None = field(default=None, repr=False)

    @property
    def batch_size(self) -> int:
        return int(self.support_x.shape[0])

    def __len__(self) -> int:
        return self.batch_size

    def __getitem__(self, index: int) -> Episode:
        return Episode(
            self.support_x[index],
            self.support_y[index],
            self.support_weight[index],
            self.query_x[index],
            self.query_y[index],
            self.ways,
            self.class_names[index],
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> EpisodeBatch:
        """Move the model inputs (not the bookkeeping refs) to ``device``."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking)

        return EpisodeBatch(
            move(self.support_x),
            move(self.support_y),
            move(self.support_weight),
            move(self.query_x),
            move(self.query_y),
            self.ways,
            self.class_names,
            self.support_ref,
            self.query_ref,
        )


class EpisodeSampler:
    """Seeded sampler of N-way K-shot Q-query episodes from a :class:`LabelledImages`.

    ``queries`` is per class (``Q = ways * queries``); the support has ``S = ways * shots`` rows
    (padded when ``unbalanced``). Classes with fewer than ``shots + queries`` images cannot give
    disjoint support and query sets and are skipped with a warning; fewer than ``ways`` usable
    classes is an error.
    """

    def __init__(
        self,
        dataset: LabelledImages,
        ways: int,
        shots: int,
        queries: int,
        seed: int,
        unbalanced: bool = False,
        groups: list[str] | None = None,
    ) -> None:
        if ways < 1 or shots < 1 or queries < 0:
            raise ValueError(
                f"need ways >= 1, shots >= 1, queries >= 0; got {ways, shots, queries}"
            )
        self.dataset = dataset
        self.ways, self.shots, self.queries = ways, shots, queries
        self.seed = seed
        self.unbalanced = unbalanced
        need = shots + queries
        counts = dataset.counts()
        self.usable = np.array([i for i, n in enumerate(counts) if n >= need], dtype=np.int64)
        skipped = [dataset.class_names[i] for i, n in enumerate(counts) if n < need]
        if skipped:
            warnings.warn(
                f"{dataset.describe()}: {dataset.base_classes(skipped)} of "
                f"{dataset.base_classes()} classes have fewer than {need} images (--shots "
                f"{shots} + --queries {queries}) and are skipped, e.g. {skipped[:3]}",
                stacklevel=2,
            )
        if len(self.usable) < ways:
            rotations = " (rotated copies included)" if dataset.base_classes() < len(counts) else ""
            raise ValueError(
                f"{dataset.describe()}: only {len(self.usable)} classes{rotations} have at "
                f"least {need} images (--shots {shots} + --queries {queries}; the largest has "
                f"{max(counts, default=0)}), and --ways {ways} needs {ways}: lower --queries "
                "or --ways, or add images and classes"
            )
        self._groups: list[np.ndarray] | None = None
        if groups is not None:
            self._groups = self._group_classes(groups, ways)
        self._rng = np.random.default_rng(seed)

    def _group_classes(self, groups: list[str], ways: int) -> list[np.ndarray]:
        """Usable classes of each group that has at least ``ways`` of them."""
        if len(groups) != self.dataset.num_classes:
            raise ValueError(f"{len(groups)} group ids for {self.dataset.num_classes} classes")
        members: dict[str, list[int]] = {}
        for cls in self.usable:
            members.setdefault(groups[cls], []).append(int(cls))
        eligible = [np.array(c, dtype=np.int64) for c in members.values() if len(c) >= ways]
        if not eligible:
            largest = max((len(c) for c in members.values()), default=0)
            raise ValueError(
                f"no group has {ways} usable classes (the largest has {largest}); "
                f"within-group {ways}-way episodes are impossible"
            )
        return eligible

    def _task(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """One task as refs ``[S,2]``, labels ``[S]``, weights ``[S]``, query refs and labels."""
        rng, ways, shots, queries = self._rng, self.ways, self.shots, self.queries
        pool = self.usable
        if self._groups is not None:
            pool = self._groups[int(rng.integers(len(self._groups)))]
        classes = rng.choice(pool, size=ways, replace=False)
        # Unbalanced: each class gets 1..shots real support images (a per-class random count).
        k = rng.integers(1, shots + 1, size=ways) if self.unbalanced else np.full(ways, shots)
        s_refs, s_labels, q_refs, q_labels = [], [], [], []
        for label, cls in enumerate(classes):
            n = len(self.dataset.images[cls])
            picked = rng.choice(n, size=shots + queries, replace=False)
            s_refs += [(cls, i) for i in picked[: k[label]]]
            s_labels += [label] * int(k[label])
            q_refs += [(cls, i) for i in picked[shots:]]
            q_labels += [label] * queries
        real = len(s_refs)
        weights = [1.0] * real
        pad = ways * shots - real
        if pad:
            copies = rng.integers(0, real, size=pad)
            s_refs += [s_refs[i] for i in copies]
            s_labels += [s_labels[i] for i in copies]
            weights += [0.0] * pad
        s_order = rng.permutation(ways * shots)
        q_order = rng.permutation(ways * queries)
        names = [self.dataset.class_names[c] for c in classes]
        return (
            np.asarray(s_refs, dtype=np.int64).reshape(-1, 2)[s_order],
            np.asarray(s_labels, dtype=np.int64)[s_order],
            np.asarray(weights, dtype=np.float32)[s_order],
            np.asarray(q_refs, dtype=np.int64).reshape(-1, 2)[q_order],
            np.asarray(q_labels, dtype=np.int64)[q_order],
            names,
        )

    def _gather(self, refs: np.ndarray) -> np.ndarray:
        """uint8 ``[B, N, H, W]`` for refs ``[B, N, 2]``."""
        size = self.dataset.image_size
        out = np.empty((*refs.shape[:2], size, size), dtype=np.uint8)
        for b in range(refs.shape[0]):
            for j, (c, i) in enumerate(refs[b]):
                out[b, j] = self.dataset.images[c][i]
        return out

    def sample(self, batch_size: int) -> EpisodeBatch:
        """The next ``batch_size`` tasks from this sampler's stream."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        tasks = [self._task() for _ in range(batch_size)]
        s_refs = np.stack([t[0] for t in tasks])
        q_refs = np.stack([t[3] for t in tasks])
        return EpisodeBatch(
            support_x=torch.from_numpy(images_to_tensor_array(self._gather(s_refs))),
            support_y=torch.from_numpy(np.stack([t[1] for t in tasks])),
            support_weight=torch.from_numpy(np.stack([t[2] for t in tasks])),
            query_x=torch.from_numpy(images_to_tensor_array(self._gather(q_refs))),
            query_y=torch.from_numpy(np.stack([t[4] for t in tasks])),
            ways=self.ways,
            class_names=[t[5] for t in tasks],
            support_ref=torch.from_numpy(s_refs),
            query_ref=torch.from_numpy(q_refs),
        )

    def __iter__(self) -> Iterator[EpisodeBatch]:
        """Endless single-task batches (use ``sample`` for larger batches)."""
        while True:
            yield self.sample(1)


def iter_fixed_episodes(
    dataset: LabelledImages,
    ways: int,
    shots: int,
    queries: int,
    episodes: int,
    seed: int,
    batch_size: int = 32,
    unbalanced: bool = False,
    groups: list[str] | None = None,
) -> Iterator[EpisodeBatch]:
    """The same ``episodes`` tasks every time, in chunks of ``batch_size`` (last may be smaller).

    Evaluation uses this so every method and checkpoint is scored on identical tasks; the tasks
    do not depend on ``batch_size``. Memory stays at one chunk.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    sampler = EpisodeSampler(dataset, ways, shots, queries, seed, unbalanced, groups)
    done = 0
    while done < episodes:
        n = min(batch_size, episodes - done)
        yield sampler.sample(n)
        done += n


def fixed_episodes(
    dataset: LabelledImages,
    ways: int,
    shots: int,
    queries: int,
    episodes: int,
    seed: int,
    batch_size: int = 32,
    unbalanced: bool = False,
    groups: list[str] | None = None,
) -> list[EpisodeBatch]:
    """:func:`iter_fixed_episodes` as a list (holds every task in memory)."""
    return list(
        iter_fixed_episodes(
            dataset, ways, shots, queries, episodes, seed, batch_size, unbalanced, groups
        )
    )
