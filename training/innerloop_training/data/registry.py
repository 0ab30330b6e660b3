"""Datasets by name, with their train/val/test class splits in one place.

``innerloop train --dataset omniglot`` and ``innerloop evaluate`` must agree on which classes are
held out; this module is the single definition of that. Splits are always by *class* (few-shot
evaluation is on classes never seen in meta-training).

Splits:

- ``omniglot``, ``split_scheme="alphabets"`` (default): test = ``images_evaluation`` (20
  alphabets, 659 characters; Lake et al.'s split); val = :data:`OMNIGLOT_VAL_ALPHABETS` whole
  background alphabets chosen by ``seed``; train = the other background alphabets.
- ``omniglot``, ``split_scheme="vinyals"``: characters from all 50 alphabets (Vinyals et al.
  2016): 1,200 train (of which the last :data:`VINYALS_VAL_CHARACTERS` of the permutation are
  val) and 423 test, from the fixed :data:`~innerloop_training.data.omniglot.VINYALS_SPLIT_SEED`
  (``seed`` is ignored so this split is the same for everyone).
- ``quickdraw``: by category over both sources, fractions 0.7/0.1/0.2, ``seed``
  (:func:`~innerloop_training.data.quickdraw.build_quickdraw_splits`).
- ``folder``: by class folder, fractions 0.7/0.1/0.2, ``seed``.
- ``sketches``: Omniglot's split and Quick Draw's split together (the same ``seed`` for both), so
  its train classes are exactly the union of theirs and neither test set leaks in; class names
  are prefixed ``omniglot/`` and ``quickdraw/`` (:data:`SKETCH_DOMAINS`), and episodes draw all
  their classes from one domain (:func:`sketch_domain_of`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from innerloop_training.data import locate
from innerloop_training.data.folder import load_image_folder
from innerloop_training.data.labelled_images import (
    DEFAULT_FRACTIONS,
    SPLITS,
    LabelledImages,
    split_names,
)
from innerloop_training.data.omniglot import (
    VINYALS_SPLIT_SEED,
    load_omniglot,
    omniglot_alphabet_of,
    omniglot_alphabets,
    vinyals_split,
)
from innerloop_training.data.quickdraw import QUICKDRAW345_FILE, build_quickdraw_splits
from innerloop_training.data.regression import RegressionTaskFamily, make_task_family

IMAGE_DATASETS: tuple[str, ...] = ("omniglot", "quickdraw", "sketches", "folder")
SKETCH_DOMAINS: tuple[str, ...] = ("omniglot", "quickdraw")
REGRESSION_DATASETS: tuple[str, ...] = ("sine", "logistic")
DATASETS: tuple[str, ...] = IMAGE_DATASETS + REGRESSION_DATASETS
OMNIGLOT_SPLIT_SCHEMES: tuple[str, ...] = ("alphabets", "vinyals")
OMNIGLOT_VAL_ALPHABETS = 5
VINYALS_VAL_CHARACTERS = 100
DATA_ENV = locate.DATA_ENV


def default_data_root() -> Path | None:
    """Where data lives: ``$INNERLOOP_DATA``, else ``<repo>/../shared/data``, else ``<repo>/data``.

    Returns ``None`` when none exists, so callers (and tests) can say so or skip.
    ``innerloop data where`` prints this search.
    """
    return locate.first_root()


def _require_root(data_root: Path | str | None) -> Path:
    root = Path(data_root) if data_root is not None else default_data_root()
    if root is None:
        raise FileNotFoundError(locate.no_data_message())
    if not root.exists():
        given = "--data-root" if data_root is not None else f"${DATA_ENV}"
        raise FileNotFoundError(
            f"data folder {root} (from {given}) does not exist; {locate.WHAT_TO_DO}"
        )
    return root


def omniglot_alphabet_split(
    seed: int, val_alphabets: int = OMNIGLOT_VAL_ALPHABETS
) -> dict[str, list[str]]:
    """Alphabet names per split for the ``"alphabets"`` scheme (val drawn from background)."""
    background = omniglot_alphabets(background=True)
    if not 0 <= val_alphabets < len(background):
        raise ValueError(f"val_alphabets must be 0..{len(background) - 1}, got {val_alphabets}")
    perm = np.random.default_rng(seed).permutation(len(background))
    val = {background[i] for i in perm[:val_alphabets]}
    return {
        "train": [a for a in background if a not in val],
        "val": [a for a in background if a in val],
        "test": omniglot_alphabets(background=False),
    }


def _omniglot_root(root: Path) -> Path:
    return root / "omniglot" if (root / "omniglot").is_dir() else root


def _load_omniglot_split(
    root: Path, split: str, size: int, seed: int, scheme: str, val_alphabets: int
) -> LabelledImages:
    root = _omniglot_root(root)
    if scheme == "alphabets":
        alphabets = omniglot_alphabet_split(seed, val_alphabets)[split]
        data = load_omniglot(root, background=split != "test", size=size)
        wanted = set(alphabets)
        picked = data.subset(
            i for i, n in enumerate(data.class_names) if omniglot_alphabet_of(n) in wanted
        )
        picked.source = {**data.source, "alphabets": alphabets}
    elif scheme == "vinyals":
        names = vinyals_split(n_val=VINYALS_VAL_CHARACTERS)[split]
        both = LabelledImages.concatenate(
            [
                load_omniglot(root, background=True, size=size),
                load_omniglot(root, background=False, size=size),
            ]
        )
        picked = both.select(names)
        picked.source = {
            "dataset": "omniglot",
            "path": str(root),
            "vinyals_seed": VINYALS_SPLIT_SEED,
            "val_characters": VINYALS_VAL_CHARACTERS,
        }
    else:
        raise ValueError(
            f"unknown Omniglot split_scheme {scheme!r}; choose from {OMNIGLOT_SPLIT_SCHEMES}"
        )
    return picked


def load_image_dataset(
    name: str,
    split: str,
    data_root: Path | str | None = None,
    size: int = 28,
    seed: int = 0,
    *,
    split_scheme: str = "alphabets",
    path: Path | str | None = None,
    rotations: bool = False,
    val_alphabets: int = OMNIGLOT_VAL_ALPHABETS,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    rich_in_train: bool = False,
    max_per_class: int | None = None,
) -> LabelledImages:
    """The classes of ``split`` (``"train"``, ``"val"`` or ``"test"``) of image dataset ``name``.

    ``data_root`` defaults to :func:`default_data_root`; for ``folder`` give ``path`` (or
    ``data_root``) as the folder of class folders. ``rotations=True`` adds the 90/180/270-degree
    rotations as extra classes *after* splitting, so a rotated class stays in its original's
    split. ``split_scheme`` applies to Omniglot only; ``rich_in_train``/``max_per_class`` to Quick
    Draw only. The returned ``source`` records all of this for checkpoint cards.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if name == "omniglot":
        data = _load_omniglot_split(
            _require_root(data_root), split, size, seed, split_scheme, val_alphabets
        )
    elif name == "quickdraw":
        root = _require_root(data_root)
        rich = root / "quickdraw"
        sketches = root / "quickdraw345" / QUICKDRAW345_FILE
        data = build_quickdraw_splits(
            rich if rich.is_dir() else None,
            sketches if sketches.is_file() else None,
            seed,
            fractions=fractions,
            rich_in_train=rich_in_train,
            max_per_class=max_per_class,
            size=size,
            splits=[split],
        )[split]
    elif name == "sketches":
        parts = []
        for domain in SKETCH_DOMAINS:
            part = load_image_dataset(
                domain,
                split,
                data_root,
                size,
                seed,
                split_scheme=split_scheme,
                rich_in_train=rich_in_train,
                max_per_class=max_per_class,
            )
            part.class_names = [f"{domain}/{n}" for n in part.class_names]
            parts.append(part)
        data = LabelledImages.concatenate(parts)
    elif name == "folder":
        folder = path if path is not None else data_root
        if folder is None:
            raise ValueError(
                "--dataset folder needs --path DIR: a folder with one sub-folder of images per "
                "class (DIR/cat/1.png, DIR/dog/1.png, ...)"
            )
        everything = load_image_folder(folder, size)
        names = split_names(everything.class_names, seed, fractions)[split]
        if not names:
            raise ValueError(
                f"--path {folder}: its {split} split is empty ({everything.num_classes} classes, "
                f"split {fractions[0]:g}/{fractions[1]:g}/{fractions[2]:g} into train/val/test by "
                "class); add class folders"
            )
        data = everything.select(names)
        data.source = {**everything.source, "fractions": list(fractions)}
    elif name in REGRESSION_DATASETS:
        raise ValueError(f"{name!r} is a regression task family; use make_task_family({name!r})")
    else:
        raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")
    data.source = {**data.source, "dataset": name, "split": split, "seed": seed, "size": size}
    if name in ("omniglot", "sketches"):
        data.source["split_scheme"] = split_scheme
    return data.with_rotations() if rotations else data


def sketch_domain_of(class_name: str) -> str:
    """``omniglot/Latin/character01@rot90`` -> ``omniglot``: the domain of a ``sketches`` class."""
    return class_name.split("/", 1)[0]


def load_task_family(name: str, **ranges: tuple[float, float]) -> RegressionTaskFamily:
    """Regression counterpart of :func:`load_image_dataset` (``"sine"`` or ``"logistic"``)."""
    if name not in REGRESSION_DATASETS:
        raise ValueError(f"{name!r} is not a regression dataset; choose from {REGRESSION_DATASETS}")
    return make_task_family(name, **ranges)
