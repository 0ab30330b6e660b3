"""Any folder of class folders of images, so users can meta-train or evaluate on their own data.

Layout: ``root/<class>/<image>``; nesting is allowed (``root/<group>/<class>/<image>``, e.g. an
unzipped Omniglot tree), in which case the class name is the relative path
(``"Greek/character01"``). Every image goes through ``prepare_image``, exactly as the server
treats an uploaded drawing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from innerloop.preprocessing import prepare_image
from innerloop_training.data.labelled_images import LabelledImages

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"})


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def read_image_file(path: Path, size: int) -> np.ndarray:
    """Decode one file to the canonical array; the error names the file (first GIF frame only)."""
    try:
        with Image.open(path) as img:
            img.load()
            return prepare_image(img, size)
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise ValueError(f"cannot read image {path}: {exc}") from exc


def load_image_folder(
    root: Path | str,
    size: int = 28,
    extensions: frozenset[str] = IMAGE_EXTENSIONS,
) -> LabelledImages:
    """Load ``root/<class...>/<image>`` into a :class:`LabelledImages` (classes sorted by name).

    A class is any directory that directly holds image files. Raises ``FileNotFoundError`` for a
    missing root and ``ValueError`` for a root with no images, images lying directly in the root
    (they would have no class), a class folder whose name is used twice, an empty leaf folder,
    or a file that cannot be decoded. Hidden files and folders (``.DS_Store``, ``.git``) are
    ignored; so are files with other extensions.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"--path {root}: no such folder (give a folder of class folders)")
    if not root.is_dir():
        raise NotADirectoryError(f"--path {root}: not a folder (give a folder of class folders)")

    groups: dict[str, list[Path]] = {}
    empty_leaves: list[Path] = []
    for directory in sorted([root, *(p for p in root.rglob("*") if p.is_dir())]):
        if _is_hidden(directory, root):
            continue
        entries = [p for p in directory.iterdir() if not p.name.startswith(".")]
        files = sorted(p for p in entries if p.is_file() and p.suffix.lower() in extensions)
        if directory == root:
            if files:
                raise ValueError(
                    f"--path {root}: images found directly in the folder (e.g. {files[0].name}); "
                    "put each class's images in its own sub-folder"
                )
            continue
        if files:
            groups[directory.relative_to(root).as_posix()] = files
        elif not any(p.is_dir() for p in entries):
            empty_leaves.append(directory)
    if not groups:
        raise ValueError(
            f"--path {root}: no images found (expected <class>/<image> with one of "
            f"{', '.join(sorted(extensions))})"
        )
    if empty_leaves:
        raise ValueError(f"class folder has no images: {empty_leaves[0]}")

    names = sorted(groups)
    arrays = [np.stack([read_image_file(p, size) for p in groups[name]]) for name in names]
    return LabelledImages(names, arrays, {"dataset": "folder", "path": str(root)})
