"""Google's Quick, Draw! bitmaps (28x28, one file per category) as few-shot classes.

Two local sources (see shared/data/MANIFEST.md):

- ``quickdraw/<category>.npy``: 61 categories with 500-1,000 drawings each (Google's
  ``numpy_bitmap`` layout: uint8 ``[n, 784]``, 0 = background, 255 = ink);
- ``quickdraw345/quickdraw345_sketches.npz``: all 345 categories, 25 drawings each.

All 61 rich categories are also in the 345 set, and for 48 of them the 25 drawings *are* rows
0-24 of the rich file. So the sources are not disjoint: splits must be made by category across
both (:func:`build_quickdraw_splits`), and a category is loaded from one source only.
"""

from __future__ import annotations

import datetime as _dt
import json
import urllib.parse
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from innerloop.preprocessing import prepare_image
from innerloop_training.data.download import ChecksumError, download_file, file_digest
from innerloop_training.data.labelled_images import (
    DEFAULT_FRACTIONS,
    SPLITS,
    LabelledImages,
    split_names,
)

BITMAP_SIDE = 28
BITMAP_PIXELS = BITMAP_SIDE * BITMAP_SIDE
QUICKDRAW_URL = "https://storage.googleapis.com/quickdraw_dataset/full/numpy_bitmap/{category}.npy"
QUICKDRAW345_FILE = "quickdraw345_sketches.npz"


def read_bitmap_file(path: Path | str) -> np.ndarray:
    """Rows of one category file as uint8 ``[n, 784]``.

    Accepts Google's ``.npy`` (any shape with 784 pixels per row, e.g. ``(n, 1, 784)`` or
    ``(n, 28, 28)``) and the headerless ``.bin`` dumps of raw 784-byte records that many
    doodle-classifier repos commit (tried when ``np.load`` refuses the file).
    """
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        size = path.stat().st_size
        if size == 0 or size % BITMAP_PIXELS:
            raise ValueError(
                f"{path}: neither a .npy file nor raw 784-byte records ({size} bytes)"
            ) from None
        array = np.fromfile(path, dtype=np.uint8)
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
        raise ValueError(f"{path}: expected uint8 bitmaps, got {getattr(array, 'dtype', array)}")
    if array.size == 0 or array.size % BITMAP_PIXELS:
        raise ValueError(f"{path}: shape {array.shape} is not a whole number of 28x28 bitmaps")
    return array.reshape(-1, BITMAP_PIXELS)


def _bitmaps_to_images(rows: np.ndarray, size: int) -> np.ndarray:
    # prepare_image is a no-op at size 28 for Google bitmaps (ink-high, zero border), but going
    # through it keeps one preprocessing path for training data and served requests.
    return np.stack([prepare_image(r.reshape(BITMAP_SIDE, BITMAP_SIDE), size) for r in rows])


def list_quickdraw_folder(folder: Path | str) -> dict[str, Path]:
    """Category name -> file for ``*.npy`` / ``*.bin`` files (name = file stem, spaces kept)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Quick Draw folder does not exist: {folder}")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in (".npy", ".bin") and not path.name.startswith("."):
            if path.stem in found:
                raise ValueError(
                    f"category {path.stem!r} has two files: {found[path.stem]}, {path}"
                )
            found[path.stem] = path
    return found


def load_quickdraw_folder(
    folder: Path | str,
    categories: Sequence[str] | None = None,
    max_per_class: int | None = None,
    size: int = 28,
) -> LabelledImages:
    """Load ``<folder>/<category>.npy`` files (Google ``numpy_bitmap`` layout).

    ``categories=None`` loads every file, sorted by name; a requested category without a file is
    an error. ``max_per_class`` keeps the *first* rows, so it is deterministic.
    """
    files = list_quickdraw_folder(folder)
    names = sorted(files) if categories is None else list(categories)
    missing = [c for c in names if c not in files]
    if missing:
        raise FileNotFoundError(f"{folder}: no file for categories {missing[:5]}")
    if not names:
        raise ValueError(f"{folder}: no .npy/.bin category files")
    arrays = [_bitmaps_to_images(read_bitmap_file(files[c])[:max_per_class], size) for c in names]
    return LabelledImages(
        names,
        arrays,
        {
            "dataset": "quickdraw",
            "format": "numpy_bitmap",
            "path": str(folder),
            "max_per_class": max_per_class,
        },
    )


def quickdraw345_categories(npz_path: Path | str) -> list[str]:
    """Sorted category names in the 345-category npz (reads only the index)."""
    with np.load(npz_path, allow_pickle=False) as data:
        return sorted(data.files)


def load_quickdraw345(
    npz_path: Path | str,
    categories: Sequence[str] | None = None,
    size: int = 28,
) -> LabelledImages:
    """Load the one-key-per-category npz (``uint8 [25, 784]`` per category)."""
    npz_path = Path(npz_path)
    with np.load(npz_path, allow_pickle=False) as data:
        names = sorted(data.files) if categories is None else list(categories)
        missing = [c for c in names if c not in data.files]
        if missing:
            raise KeyError(f"{npz_path}: categories not present: {missing[:5]}")
        arrays = []
        for name in names:
            rows = data[name]
            if rows.dtype != np.uint8 or rows.size % BITMAP_PIXELS:
                raise ValueError(f"{npz_path}[{name!r}]: not uint8 28x28 bitmaps: {rows.shape}")
            arrays.append(_bitmaps_to_images(rows.reshape(-1, BITMAP_PIXELS), size))
    return LabelledImages(
        names, arrays, {"dataset": "quickdraw345", "format": "npz", "path": str(npz_path)}
    )


def quickdraw_category_split(
    all_categories: Iterable[str],
    seed: int,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    force_train: Iterable[str] = (),
) -> dict[str, list[str]]:
    """Deterministic train/val/test split *by category name* (see :func:`split_names`).

    Used over the union of both Quick Draw sources so a category is in one split everywhere.
    """
    return split_names(all_categories, seed, fractions, force_train)


def build_quickdraw_splits(
    rich_folder: Path | str | None,
    sketches_npz: Path | str | None,
    seed: int,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    rich_in_train: bool = False,
    max_per_class: int | None = None,
    size: int = 28,
    splits: Sequence[str] = SPLITS,
) -> dict[str, LabelledImages]:
    """Train/val/test :class:`LabelledImages` over both Quick Draw sources, split by category.

    The category universe is the union of both sources. A category is in exactly one split, and
    is loaded from the rich folder when it has a file there (up to ``max_per_class`` rows), else
    from the 25-drawing npz; never from both, because the two overlap drawing-for-drawing.
    ``rich_in_train=True`` forces the rich categories into train (more data to meta-train on,
    evaluation on the 25-drawing categories). Pass ``None`` for a source you do not have.
    ``splits`` selects which splits to load (the split itself is always computed over all).
    """
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown splits {unknown}; choose from {SPLITS}")
    rich_files = list_quickdraw_folder(rich_folder) if rich_folder is not None else {}
    sketch_names = quickdraw345_categories(sketches_npz) if sketches_npz is not None else []
    if not rich_files and not sketch_names:
        raise FileNotFoundError(
            "no Quick Draw data under --data-root: expected quickdraw/<category>.npy files or "
            f"quickdraw345/{QUICKDRAW345_FILE}; `innerloop data where` shows what was found, "
            "`innerloop data fetch quickdraw CATEGORY... --data-root DIR` downloads categories"
        )
    universe = sorted(set(rich_files) | set(sketch_names))
    by_split = quickdraw_category_split(
        universe, seed, fractions, force_train=rich_files if rich_in_train else ()
    )
    out: dict[str, LabelledImages] = {}
    for split in splits:
        names = by_split[split]
        rich = [n for n in names if n in rich_files]
        sparse = [n for n in names if n not in rich_files]
        parts = []
        if rich:
            parts.append(load_quickdraw_folder(rich_folder, rich, max_per_class, size))  # type: ignore[arg-type]
        if sparse:
            parts.append(load_quickdraw345(sketches_npz, sparse, size))  # type: ignore[arg-type]
        if not parts:
            raise ValueError(
                f"Quick Draw {split} split is empty ({len(universe)} categories under "
                "--data-root); add categories"
            )
        joined = LabelledImages.concatenate(parts)
        keep = {n: i for i, n in enumerate(joined.class_names)}
        dataset = joined.subset(keep[n] for n in names)  # back to sorted category order
        dataset.source = {
            "dataset": "quickdraw",
            "split": split,
            "seed": seed,
            "fractions": list(fractions),
            "rich_in_train": rich_in_train,
            "max_per_class": max_per_class,
            "rich_folder": None if rich_folder is None else str(rich_folder),
            "sketches_npz": None if sketches_npz is None else str(sketches_npz),
            "rich_categories": len(rich),
            "sketch_categories": len(sparse),
        }
        out[split] = dataset
    return out


# ---------------------------------------------------------------------------------------------
# Download


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def download_quickdraw(
    categories: Iterable[str],
    dest: Path | str,
    url_template: str = QUICKDRAW_URL,
) -> dict[str, Path]:
    """Download Google's full ``numpy_bitmap/<category>.npy`` files into ``dest``.

    Google publishes no checksums, so after a download the sha256 is recorded in
    ``<category>.npy.sha256.json`` and every later call verifies the file against it (a
    changed file raises :class:`~innerloop_training.data.download.ChecksumError`). A file that is
    present without a record is trusted once and recorded. Files are 50-300 MB each.
    """
    dest = Path(dest)
    out: dict[str, Path] = {}
    for category in categories:
        target = dest / f"{category}.npy"
        record = _record_path(target)
        url = url_template.format(category=urllib.parse.quote(category))
        if target.exists() and record.exists():
            expected = json.loads(record.read_text())["sha256"]
            actual = file_digest(target, "sha256")
            if actual != expected:
                raise ChecksumError(
                    f"{target}: sha256 is {actual}, but {record.name} recorded {expected} at "
                    "download; delete both files and download again"
                )
        else:
            if not target.exists():
                download_file(url, target)
            read_bitmap_file(target)  # refuse to record something that is not bitmap data
            record.write_text(
                json.dumps(
                    {
                        "url": url,
                        "sha256": file_digest(target, "sha256"),
                        "bytes": target.stat().st_size,
                        "recorded_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                    },
                    indent=2,
                )
                + "\n"
            )
        out[category] = target
    return out
