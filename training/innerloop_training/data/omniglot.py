"""Omniglot (Lake et al. 2015) from any of the forms it is found in.

Three on-disk forms load to the *same* :class:`LabelledImages` (same class names, same order,
same bytes), so a model trained from the npz dump and one trained from the original zips are
comparable:

- the numpy dump ``images_background.npz`` / ``images_evaluation.npz`` (bitsandscraps/omniglot;
  ``images`` bool ``[chars, 20, 105, 105]``, ``True`` = white background). It stores no
  alphabet names, so they are rebuilt from Lake's global character ids (:data:`ALPHABETS`);
- Lake's zips ``images_background.zip`` / ``images_evaluation.zip`` (and the small1/small2 zips);
- the unzipped folders ``images_background/<Alphabet>/characterNN/XXXX_YY.png``.

Class names are ``"<Alphabet>/characterNN"`` and classes are ordered by Lake's global character
id (``XXXX`` in the PNG names), images within a class by drawer (``YY``).
"""

from __future__ import annotations

import re
import zipfile
from io import BytesIO
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from innerloop.preprocessing import prepare_image
from innerloop_training.data.download import ChecksumError, download_file, verify_checksum
from innerloop_training.data.labelled_images import LabelledImages

# Lake's global character ids per alphabet: (first id, last id, set, alphabet folder name).
# Copied from shared/data/MANIFEST.md ("Omniglot character id ranges"), which checked it against
# torchmeta's split files (counts, all 50 alphabets) and the small zips (names, 8 alphabets).
ALPHABETS: tuple[tuple[int, int, str, str], ...] = (
    (1, 26, "background", "Arcadian"),
    (27, 67, "background", "Armenian"),
    (68, 107, "background", "Asomtavruli_(Georgian)"),
    (108, 131, "background", "Balinese"),
    (132, 177, "background", "Bengali"),
    (178, 191, "background", "Blackfoot_(Canadian_Aboriginal_Syllabics)"),
    (192, 217, "background", "Braille"),
    (218, 250, "background", "Cyrillic"),
    (251, 272, "background", "Early_Aramaic"),
    (273, 295, "background", "Syriac_(Estrangelo)"),
    (296, 324, "background", "Anglo-Saxon_Futhorc"),
    (325, 350, "background", "Futurama"),
    (351, 393, "background", "Grantha"),
    (394, 417, "background", "Greek"),
    (418, 465, "background", "Gujarati"),
    (466, 487, "background", "Hebrew"),
    (488, 539, "background", "Japanese_(hiragana)"),
    (540, 555, "background", "Inuktitut_(Canadian_Aboriginal_Syllabics)"),
    (556, 595, "background", "Malay_(Jawi_-_Arabic)"),
    (596, 642, "background", "Japanese_(katakana)"),
    (643, 682, "background", "Korean"),
    (683, 708, "background", "Latin"),
    (709, 728, "background", "Alphabet_of_the_Magi"),
    (729, 769, "background", "Mkhedruli_(Georgian)"),
    (770, 803, "background", "Burmese_(Myanmar)"),
    (804, 836, "background", "N_Ko"),
    (837, 850, "background", "Ojibwe_(Canadian_Aboriginal_Syllabics)"),
    (851, 892, "background", "Sanskrit"),
    (893, 909, "background", "Tagalog"),
    (910, 964, "background", "Tifinagh"),
    (965, 984, "evaluation", "Angelic"),
    (985, 1010, "evaluation", "Atemayar_Qelisayer"),
    (1011, 1036, "evaluation", "Atlantean"),
    (1037, 1062, "evaluation", "Aurek-Besh"),
    (1063, 1088, "evaluation", "Avesta"),
    (1089, 1114, "evaluation", "Ge_ez"),
    (1115, 1159, "evaluation", "Glagolitic"),
    (1160, 1204, "evaluation", "Gurmukhi"),
    (1205, 1245, "evaluation", "Kannada"),
    (1246, 1271, "evaluation", "Keble"),
    (1272, 1318, "evaluation", "Malayalam"),
    (1319, 1358, "evaluation", "Manipuri"),
    (1359, 1388, "evaluation", "Mongolian"),
    (1389, 1433, "evaluation", "Old_Church_Slavonic_(Cyrillic)"),
    (1434, 1479, "evaluation", "Oriya"),
    (1480, 1502, "evaluation", "Syriac_(Serto)"),
    (1503, 1530, "evaluation", "Sylheti"),
    (1531, 1555, "evaluation", "Tengwar"),
    (1556, 1597, "evaluation", "Tibetan"),
    (1598, 1623, "evaluation", "ULOG"),
)
NUM_CHARACTERS = 1623
NUM_BACKGROUND_CHARACTERS = 964  # ids 1..964; evaluation is 965..1623
DRAWERS = 20

# Public checksums of Lake's zips (the values torchvision uses; also in datasets-mila's md5sums).
OMNIGLOT_URL = "https://github.com/brendenlake/omniglot/raw/master/python/{name}"
OMNIGLOT_MD5 = {
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
}

# Vinyals et al. (2016) used 1,200 characters for training and the remaining 423 for testing, but
# never published which. This seed fixes *our* version of that split, so every run and every
# README number uses the same one. 20160613 is the Matching Networks arXiv date (2016-06-13).
VINYALS_SPLIT_SEED = 20160613
VINYALS_TRAIN_CHARACTERS = 1200

_PNG_NAME = re.compile(r"^(\d{4})_(\d{2})\.png$")
_CHARACTER_DIR = re.compile(r"^character(\d+)$")


def _set_name(background: bool) -> str:
    return "images_background" if background else "images_evaluation"


def omniglot_class_name(character_id: int) -> str:
    """``"<Alphabet>/characterNN"`` for Lake's 1-based global character id."""
    for first, last, _, alphabet in ALPHABETS:
        if first <= character_id <= last:
            return f"{alphabet}/character{character_id - first + 1:02d}"
    raise ValueError(f"Omniglot character id must be 1..{NUM_CHARACTERS}, got {character_id}")


def omniglot_character_id(class_name: str) -> int:
    """Inverse of :func:`omniglot_class_name` (a rotation suffix ``@rot90`` is ignored)."""
    alphabet = omniglot_alphabet_of(class_name)
    character = class_name.split("@", 1)[0].split("/", 1)[1]
    match = _CHARACTER_DIR.match(character)
    for first, last, _, name in ALPHABETS:
        if name == alphabet and match:
            char_id = first + int(match.group(1)) - 1
            if char_id <= last:
                return char_id
    raise ValueError(f"not an Omniglot class name: {class_name!r}")


def omniglot_alphabet_of(class_name: str) -> str:
    """Alphabet part of ``"Alphabet/characterNN[@rotK]"`` (used for alphabet-level splits)."""
    if "/" not in class_name:
        raise ValueError(f"not an Omniglot class name (no '/'): {class_name!r}")
    return class_name.split("/", 1)[0]


def omniglot_alphabets(background: bool | None = None) -> list[str]:
    """Alphabet names in id order; ``background=None`` gives all 50."""
    if background is None:
        return [name for *_, name in ALPHABETS]
    want = "background" if background else "evaluation"
    return [name for _, _, group, name in ALPHABETS if group == want]


def all_omniglot_class_names() -> list[str]:
    """All 1,623 class names in global id order."""
    return [omniglot_class_name(i) for i in range(1, NUM_CHARACTERS + 1)]


def vinyals_split(
    seed: int = VINYALS_SPLIT_SEED,
    n_train: int = VINYALS_TRAIN_CHARACTERS,
    n_val: int = 0,
) -> dict[str, list[str]]:
    """Character-level split over all 1,623 characters, as in Vinyals et al. (2016).

    ``train`` = the first ``n_train - n_val`` characters of a seeded permutation, ``val`` = the
    next ``n_val`` (carved out of the 1,200 so the test set is unchanged), ``test`` = the rest
    (423 by default). Unlike the background/evaluation split this mixes alphabets, so it is
    easier; and the test characters include evaluation-set characters used by Lake's one-shot
    runs. Each list is in global id order.
    """
    if not 0 <= n_val < n_train < NUM_CHARACTERS:
        raise ValueError(f"need 0 <= n_val < n_train < {NUM_CHARACTERS}")
    perm = np.random.default_rng(seed).permutation(NUM_CHARACTERS) + 1
    parts = {
        "train": perm[: n_train - n_val],
        "val": perm[n_train - n_val : n_train],
        "test": perm[n_train:],
    }
    return {k: [omniglot_class_name(int(i)) for i in np.sort(v)] for k, v in parts.items()}


# ---------------------------------------------------------------------------------------------
# Loaders


def load_omniglot(root: Path | str, background: bool, size: int = 28) -> LabelledImages:
    """Load the background (``True``) or evaluation set from whatever form ``root`` holds.

    ``root`` may be a directory containing ``images_{background,evaluation}.npz``, ``.zip`` or an
    unzipped folder of that name (tried in that order), or the npz/zip/folder itself.
    """
    root = Path(root)
    stem = _set_name(background)
    if root.is_file() or (root.name == stem and root.is_dir()):
        candidates = [root]
    else:
        candidates = [root / f"{stem}.npz", root / f"{stem}.zip", root / stem]
    for path in candidates:
        if path.is_file() and path.suffix == ".npz":
            return load_omniglot_npz(path, size=size, background=background)
        if path.is_file() and path.suffix == ".zip":
            return load_omniglot_zip(path, size=size)
        if path.is_dir():
            return load_omniglot_folder(path, size=size)
    tried = ", ".join(str(c) for c in candidates)
    data_root = root.parent if root.name == "omniglot" else root
    raise FileNotFoundError(
        f"no Omniglot {stem} data found (tried {tried}); pass --data-root DIR with an "
        "omniglot/ folder, or download Lake's zips with "
        f"`innerloop data fetch omniglot --data-root {data_root}`"
    )


def load_omniglot_npz(
    path: Path | str, size: int = 28, background: bool | None = None
) -> LabelledImages:
    """Load a bitsandscraps-style npz; ``background=None`` infers the set from the file."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as data:
        images = data["images"]
    if images.dtype != np.bool_ or images.ndim != 4 or images.shape[2:] != (105, 105):
        raise ValueError(f"{path}: expected bool [chars, drawers, 105, 105], got {images.shape}")
    if background is None:
        background = images.shape[0] == NUM_BACKGROUND_CHARACTERS
    first_id = 1 if background else NUM_BACKGROUND_CHARACTERS + 1
    expected = (
        NUM_BACKGROUND_CHARACTERS if background else NUM_CHARACTERS - NUM_BACKGROUND_CHARACTERS
    )
    if images.shape[0] != expected:
        raise ValueError(
            f"{path}: {images.shape[0]} characters, expected {expected} for {_set_name(background)}"
        )
    names = [omniglot_class_name(first_id + c) for c in range(images.shape[0])]
    arrays = [np.stack([prepare_image(img, size) for img in per_char]) for per_char in images]
    return LabelledImages(
        names,
        arrays,
        {"dataset": "omniglot", "set": _set_name(background), "format": "npz", "path": str(path)},
    )


def _sort_key(class_name: str, files: list[str]) -> tuple[int, str]:
    """Order classes by Lake's global id (from ``XXXX_YY.png``) so all formats agree."""
    match = _PNG_NAME.match(PurePosixPath(files[0]).name) if files else None
    return (int(match.group(1)) if match else NUM_CHARACTERS + 1, class_name)


def _decode_png(data: bytes, where: str, size: int) -> np.ndarray:
    try:
        with Image.open(BytesIO(data)) as img:
            img.load()
            return prepare_image(img, size)
    except Exception as exc:  # PIL raises several types for broken files
        raise ValueError(f"cannot read image {where}: {exc}") from exc


def load_omniglot_zip(path: Path | str, size: int = 28) -> LabelledImages:
    """Load one of Lake's zips (``images_background.zip``, ``..._small1.zip``, ...)."""
    path = Path(path)
    groups: dict[str, list[str]] = {}
    with zipfile.ZipFile(path) as zf:
        for member in zf.namelist():
            parts = PurePosixPath(member).parts
            if member.endswith("/") or not member.lower().endswith(".png") or len(parts) < 3:
                continue
            groups.setdefault(f"{parts[-3]}/{parts[-2]}", []).append(member)
        if not groups:
            raise ValueError(f"{path}: no <Alphabet>/<character>/*.png entries")
        order = sorted(groups, key=lambda n: _sort_key(n, sorted(groups[n])))
        arrays = [
            np.stack([_decode_png(zf.read(m), f"{path}:{m}", size) for m in sorted(groups[name])])
            for name in order
        ]
    return LabelledImages(
        order, arrays, {"dataset": "omniglot", "set": path.stem, "format": "zip", "path": str(path)}
    )


def load_omniglot_folder(path: Path | str, size: int = 28) -> LabelledImages:
    """Load an unzipped ``<set>/<Alphabet>/characterNN/*.png`` tree."""
    path = Path(path)
    groups: dict[str, list[Path]] = {}
    for png in path.glob("*/*/*.png"):
        groups.setdefault(f"{png.parent.parent.name}/{png.parent.name}", []).append(png)
    if not groups:
        raise ValueError(f"{path}: no <Alphabet>/<character>/*.png files")
    order = sorted(groups, key=lambda n: _sort_key(n, sorted(p.name for p in groups[n])))
    arrays = [
        np.stack([_decode_png(p.read_bytes(), str(p), size) for p in sorted(groups[name])])
        for name in order
    ]
    return LabelledImages(
        order,
        arrays,
        {"dataset": "omniglot", "set": path.name, "format": "folder", "path": str(path)},
    )


# ---------------------------------------------------------------------------------------------
# Download


def download_omniglot(
    dest: Path | str,
    base_url: str = OMNIGLOT_URL,
    checksums: dict[str, str] | None = None,
) -> dict[str, Path]:
    """Download Lake's background and evaluation zips into ``dest`` and verify their md5.

    An existing file with the right md5 is reused; one with a wrong md5 is an error (we never
    silently overwrite). A fresh download that fails the check is deleted and reported.
    ``base_url``/``checksums`` exist for tests and mirrors.
    """
    dest = Path(dest)
    checksums = checksums or OMNIGLOT_MD5
    out: dict[str, Path] = {}
    for name, md5 in checksums.items():
        target = dest / name
        if not target.exists():
            download_file(base_url.format(name=name), target)
            try:
                verify_checksum(target, md5=md5)
            except ChecksumError:
                target.unlink()
                raise
        else:
            verify_checksum(target, md5=md5)
        out[name] = target
    return out
