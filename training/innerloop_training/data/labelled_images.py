"""The one in-memory shape every image source is turned into.

Omniglot (npz, zip, folders), Quick Draw and arbitrary class folders all load into a
:class:`LabelledImages`, so the episode sampler and the split logic never care where the
pixels came from. Images are already canonical (``innerloop.preprocessing.prepare_image``
output: uint8, ink high), so nothing downstream re-preprocesses them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

ROTATION_ANGLES: tuple[int, ...] = (90, 180, 270)
SPLITS: tuple[str, str, str] = ("train", "val", "test")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.1, 0.2)


def split_names(
    names: Iterable[str],
    seed: int,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    force_train: Iterable[str] = (),
) -> dict[str, list[str]]:
    """Deterministic train/val/test split of class names.

    Names are de-duplicated and sorted first, so the split depends only on the set of names and
    the seed, never on file or directory order. Val and test sizes are
    ``round(fraction * total)``; ``force_train`` names go to train and val/test are drawn from
    the rest, so forcing does not shrink val/test. Each returned list is sorted.
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    ordered = sorted(set(names))
    forced = set(force_train)
    unknown = sorted(forced - set(ordered))
    if unknown:
        raise ValueError(f"force_train names not in the name list: {unknown[:5]}")
    n_val = round(fractions[1] * len(ordered))
    n_test = round(fractions[2] * len(ordered))
    free = [n for n in ordered if n not in forced]
    if n_val + n_test > len(free):
        raise ValueError(
            f"{len(forced)} forced train names leave {len(free)} for val+test "
            f"({n_val}+{n_test} needed)"
        )
    order = [free[i] for i in np.random.default_rng(seed).permutation(len(free))]
    val, test = order[:n_val], order[n_val : n_val + n_test]
    train = order[n_val + n_test :] + sorted(forced)
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


@dataclass
class LabelledImages:
    """Images grouped by class.

    ``images[i]`` is a ``uint8 [n_i, H, W]`` array (ink-high) for ``class_names[i]``; classes may
    have different image counts. ``source`` records provenance (dataset, split, path, seed...) so
    checkpoint cards and logs can say exactly what a model was trained on.
    """

    class_names: list[str]
    images: list[np.ndarray]
    source: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.class_names) != len(self.images):
            raise ValueError(
                f"{len(self.class_names)} class names but {len(self.images)} image arrays"
            )
        if len(set(self.class_names)) != len(self.class_names):
            dupes = sorted(n for n, c in Counter(self.class_names).items() if c > 1)
            raise ValueError(f"duplicate class names: {dupes[:5]}")
        shape: tuple[int, ...] | None = None
        for name, arr in zip(self.class_names, self.images, strict=True):
            if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 3:
                raise ValueError(f"class {name!r}: expected a uint8 [n, H, W] array")
            if shape is None:
                shape = arr.shape[1:]
            elif arr.shape[1:] != shape:
                raise ValueError(f"class {name!r}: image shape {arr.shape[1:]} != {shape}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_images(self) -> int:
        return int(sum(len(a) for a in self.images))

    @property
    def image_size(self) -> int:
        """Side length in pixels (images are square after ``prepare_image``)."""
        if not self.images:
            raise ValueError("empty dataset has no image size")
        height, width = self.images[0].shape[1:]
        if height != width:
            raise ValueError(f"images are not square: {height}x{width}")
        return int(height)

    def counts(self) -> list[int]:
        """Images per class, in class order."""
        return [len(a) for a in self.images]

    def subset(self, indices: Iterable[int]) -> LabelledImages:
        """Classes at ``indices`` (in that order); arrays are shared, not copied."""
        idx = [int(i) for i in indices]
        return LabelledImages(
            class_names=[self.class_names[i] for i in idx],
            images=[self.images[i] for i in idx],
            source={**self.source, "subset_of": self.num_classes},
        )

    def select(self, names: Iterable[str]) -> LabelledImages:
        """Classes by name (in the given order); a missing name is an error, not a skip."""
        position = {n: i for i, n in enumerate(self.class_names)}
        wanted = list(names)
        missing = [n for n in wanted if n not in position]
        if missing:
            raise KeyError(f"classes not in dataset: {missing[:5]}")
        return self.subset(position[n] for n in wanted)

    def with_rotations(self, angles: Sequence[int] = ROTATION_ANGLES) -> LabelledImages:
        """Add each class rotated by ``angles`` (degrees, counter-clockwise) as a new class.

        Rotated characters are treated as new classes (Santoro et al. 2016; Vinyals et al. 2016),
        which quadruples the number of training classes. Names are ``"<name>@rot<angle>"``; the
        originals come first, in order, then each angle's copies.
        """
        for angle in angles:
            if angle % 90 or not 0 < angle < 360:
                raise ValueError(f"rotation angles must be 90, 180 or 270, got {angle}")
        self.image_size  # noqa: B018 - rotations need square images; raises otherwise
        names = list(self.class_names)
        images = list(self.images)
        for angle in angles:
            k = angle // 90
            names += [f"{n}@rot{angle}" for n in self.class_names]
            images += [np.ascontiguousarray(np.rot90(a, k=k, axes=(1, 2))) for a in self.images]
        return LabelledImages(names, images, {**self.source, "rotations": list(angles)})

    @staticmethod
    def concatenate(
        parts: Sequence[LabelledImages], source: dict[str, object] | None = None
    ) -> LabelledImages:
        """Join datasets class-wise (class names must stay unique)."""
        names = [n for p in parts for n in p.class_names]
        images = [a for p in parts for a in p.images]
        src: dict[str, object] = (
            source if source is not None else {"parts": [p.source for p in parts]}
        )
        return LabelledImages(names, images, src)

    def base_classes(self, names: Iterable[str] | None = None) -> int:
        """How many of ``names`` (default: all classes) are not rotated copies (``name@rotN``)."""
        return sum("@rot" not in n for n in (self.class_names if names is None else names))

    def describe(self) -> str:
        """Where these classes come from, in the command line's words, for messages, e.g.
        ``the train split of --path DIR (17 classes, 68 with rotations)``."""
        source = self.source
        if source.get("dataset") == "folder" and source.get("path"):
            where = f"--path {source['path']}"
        else:
            where = f"--dataset {source.get('dataset', '?')}"
        split = f"the {source['split']} split of " if source.get("split") else ""
        base = self.base_classes()
        rotated = f", {self.num_classes} with rotations" if base != self.num_classes else ""
        return f"{split}{where} ({base} classes{rotated})"

    def __repr__(self) -> str:
        size = self.image_size if self.images else "?"
        return (
            f"LabelledImages({self.num_classes} classes, {self.num_images} images, "
            f"{size}x{size}, source={self.source.get('dataset', '?')!r})"
        )
