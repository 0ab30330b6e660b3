"""Write the sample drawings the README's examples use, from the shared data folder.

    python samples/make_samples.py [--data-root DIR] [--out DIR]

Omniglot: the first five characters of one ``images_evaluation`` alphabet (held out from every
shipped model's training), three drawers each, as Lake's 105x105 black-on-white PNGs. Quick
Draw: three drawings of five categories that are in the shipped ``quickdraw`` model's *test*
split (never seen in training), Google's 28x28 bitmaps turned black-on-white for people to look
at (the server accepts either polarity). Re-running it rewrites the same bytes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
OMNIGLOT_ALPHABET = "Atlantean"  # images_evaluation, character ids 1011-1036
OMNIGLOT_CHARACTERS = 5
QUICKDRAW_CATEGORIES = ("fish", "star", "sun", "envelope", "helicopter")
DRAWINGS = 3


def write_png(array: np.ndarray, path: Path, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).convert(mode).save(path, optimize=True)


def omniglot(root: Path, out: Path) -> list[Path]:
    from innerloop_training.data.omniglot import ALPHABETS, NUM_BACKGROUND_CHARACTERS

    first = next(lo for lo, _, part, name in ALPHABETS if name == OMNIGLOT_ALPHABET)
    with np.load(root / "omniglot" / "images_evaluation.npz", allow_pickle=False) as data:
        images = data["images"]  # bool [character, drawer, 105, 105], True = paper
    written = []
    for c in range(OMNIGLOT_CHARACTERS):
        row = first - NUM_BACKGROUND_CHARACTERS - 1 + c
        for d in range(DRAWINGS):
            name = f"char{c + 1}_drawer{d + 1}.png"
            path = out / "omniglot" / OMNIGLOT_ALPHABET.lower() / name
            write_png((images[row, d] * 255).astype(np.uint8), path, "1")
            written.append(path)
    return written


def quickdraw(root: Path, out: Path) -> list[Path]:
    written = []
    with np.load(root / "quickdraw345" / "quickdraw345_sketches.npz", allow_pickle=False) as data:
        for category in QUICKDRAW_CATEGORIES:
            rows = data[category]  # uint8 [25, 784], 255 = ink
            for d in range(DRAWINGS):
                path = out / "quickdraw" / f"{category.replace(' ', '-')}_{d + 1}.png"
                write_png(255 - rows[d].reshape(28, 28), path, "L")
                written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=None, metavar="DIR")
    parser.add_argument("--out", type=Path, default=HERE, metavar="DIR", help="(default: samples/)")
    args = parser.parse_args(argv)
    from innerloop_training.data.registry import default_data_root

    root = args.data_root or default_data_root()
    if root is None:
        print("no data folder: pass --data-root DIR (see `innerloop data where`)", file=sys.stderr)
        return 1
    for path in [*omniglot(root, args.out), *quickdraw(root, args.out)]:
        print(f"{path}  {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
