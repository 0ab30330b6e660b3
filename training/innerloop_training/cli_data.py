"""Find, check and download the training data.

  innerloop data where                  where data is looked for, and what each place holds
  innerloop data verify                 checksums of every file with a known digest
  innerloop data fetch omniglot         Lake's original zips (md5-checked) into DATA_ROOT/omniglot
  innerloop data fetch quickdraw cat    Google's numpy_bitmap files into DATA_ROOT/quickdraw

The data root is --data-root, else $INNERLOOP_DATA, else shared/data next to the repository,
else data/ inside it: the same search `innerloop train` and `evaluate` use.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
from pathlib import Path

from innerloop_training.data import locate
from innerloop_training.data.download import ChecksumError
from innerloop_training.data.omniglot import OMNIGLOT_URL, download_omniglot
from innerloop_training.data.quickdraw import QUICKDRAW_URL, download_quickdraw


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    where = actions.add_parser("where", help="where data is looked for and what was found")
    verify = actions.add_parser("verify", help="check files against their published checksums")
    fetch = actions.add_parser("fetch", help="download the original public files (needs a network)")
    fetch.add_argument(
        "dataset",
        choices=("omniglot", "quickdraw"),
        help="omniglot: images_background.zip + images_evaluation.zip (about 15 MB); "
        "quickdraw: the named categories' numpy_bitmap files (50-300 MB each)",
    )
    fetch.add_argument(
        "categories", nargs="*", metavar="CATEGORY", help="quickdraw categories, e.g. cat 'hot dog'"
    )
    fetch.add_argument(
        "--mirror",
        default=None,
        metavar="URL",
        help="download from a mirror laid out like the original site "
        "(omniglot: URL/images_background.zip; quickdraw: URL/cat.npy)",
    )
    for sub in (where, verify, fetch):
        sub.add_argument(
            "--data-root",
            type=Path,
            default=None,
            metavar="DIR",
            help="data folder (default: $INNERLOOP_DATA, else shared/data next to the "
            "repository, else data/ inside it)",
        )


def run(args: argparse.Namespace) -> int:
    command = {"where": _where, "verify": _verify, "fetch": _fetch}[args.data_command]
    return command(args)


def _where(args: argparse.Namespace) -> int:
    if args.data_root is not None:
        print(f"--data-root {args.data_root}")
        root: Path | None = args.data_root
    else:
        print("looked for a data folder in this order:")
        for candidate in locate.candidates():
            if candidate.path is None:
                state = "unset"
            else:
                state = f"{candidate.path} ({'found' if candidate.exists else 'missing'})"
            print(f"  {candidate.label}: {state}")
        root = locate.first_root()
    if root is None or not root.is_dir():
        print(
            "no data folder: pass --data-root DIR or set $INNERLOOP_DATA to one holding "
            "omniglot/ or quickdraw/, or download Omniglot into one with "
            "`innerloop data fetch omniglot --data-root DIR`",
            file=sys.stderr,
        )
        return 1
    print(f"using {root.resolve()}")
    for dataset, found in locate.describe(root):
        print(f"  {dataset}: {found or 'not found'}")
    print("sine and logistic need no data (tasks are generated).")
    return 0


def _root_or_error(args: argparse.Namespace, command: str) -> Path | None:
    root = args.data_root if args.data_root is not None else locate.first_root()
    if root is None:
        print(f"innerloop data {command}: {locate.no_data_message()}", file=sys.stderr)
        return None
    if not root.is_dir():
        print(
            f"innerloop data {command}: data folder {root} does not exist; {locate.WHAT_TO_DO}",
            file=sys.stderr,
        )
        return None
    return root


def _verify(args: argparse.Namespace) -> int:
    root = _root_or_error(args, "verify")
    if root is None:
        return 1
    checks = locate.verify(root)
    print(f"verifying {root.resolve()}")
    for check in checks:
        if check.status != "absent":
            print(f"  {check.status:9s} {check.path}  {check.detail}")
    absent = sum(c.status == "absent" for c in checks)
    bad = [c for c in checks if c.status == "MISMATCH"]
    good = sum(c.status == "ok" for c in checks)
    print(f"{good} ok, {len(bad)} mismatched, {absent} known files absent (not an error)")
    if bad:
        print(
            "innerloop data verify: some files do not match their checksums; delete them and "
            "copy or fetch them again",
            file=sys.stderr,
        )
        return 1
    return 0


def _fetch(args: argparse.Namespace) -> int:
    if args.data_root is not None:
        root: Path = args.data_root
    else:
        root = locate.first_root() or locate.REPO_ROOT / "data"
    mirror = args.mirror.rstrip("/") if args.mirror else None
    try:
        if args.dataset == "omniglot":
            if args.categories:
                print("innerloop data fetch omniglot takes no categories", file=sys.stderr)
                return 2
            base = f"{mirror}/{{name}}" if mirror else OMNIGLOT_URL
            files = download_omniglot(root / "omniglot", base_url=base)
        else:
            if not args.categories:
                print(
                    "innerloop data fetch quickdraw needs category names, e.g. "
                    "`innerloop data fetch quickdraw cat 'hot dog'`",
                    file=sys.stderr,
                )
                return 2
            template = f"{mirror}/{{category}}.npy" if mirror else QUICKDRAW_URL
            files = download_quickdraw(args.categories, root / "quickdraw", template)
    except ChecksumError as error:
        print(f"innerloop data fetch: {error}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        print(
            f"innerloop data fetch: could not download ({reason}). Without a network, copy the "
            f"files by hand into {root} (see `innerloop data where` for the layout) or pass "
            "--mirror URL",
            file=sys.stderr,
        )
        return 1
    for name, path in files.items():
        print(f"ok {name}: {path}")
    print(f"data root: {root} (use --data-root {root} with train and evaluate)")
    return 0
