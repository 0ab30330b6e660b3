"""Where the data is looked for, what is there, and whether it is intact.

``innerloop data where|verify`` print these; the loaders' errors point at them. The search
order is the one :func:`~innerloop_training.data.registry.default_data_root` uses, so what
``where`` shows is what ``train`` and ``evaluate`` will read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from innerloop_training.data.download import file_digest
from innerloop_training.data.manifest_checksums import SHARED_DATA_SHA256
from innerloop_training.data.omniglot import OMNIGLOT_MD5
from innerloop_training.data.quickdraw import QUICKDRAW345_FILE

DATA_ENV = "INNERLOOP_DATA"
REPO_ROOT = Path(__file__).resolve().parents[3]

# what to tell a user who has no data yet (every data error ends with this)
WHAT_TO_DO = (
    "pass --data-root DIR (or set $INNERLOOP_DATA); `innerloop data where` shows where data is "
    "looked for and what was found, `innerloop data fetch omniglot --data-root DIR` downloads "
    "Omniglot"
)


@dataclass(frozen=True)
class Candidate:
    """One place data is looked for, in search order."""

    label: str  # how the place is named to the user
    path: Path | None  # None: the environment variable is unset

    @property
    def exists(self) -> bool:
        return self.path is not None and self.path.is_dir()


def candidates() -> list[Candidate]:
    """``$INNERLOOP_DATA``, then ``<repo>/../shared/data``, then ``<repo>/data``."""
    env = os.environ.get(DATA_ENV)
    return [
        Candidate(f"${DATA_ENV}", Path(env).expanduser() if env else None),
        Candidate("shared/data next to the repository", REPO_ROOT.parent / "shared" / "data"),
        Candidate("data/ inside the repository", REPO_ROOT / "data"),
    ]


def first_root() -> Path | None:
    """The data root train/evaluate use by default: ``$INNERLOOP_DATA`` when set (even if it
    does not exist, so a typo is reported rather than silently replaced), else the first
    existing candidate."""
    found = candidates()
    if found[0].path is not None:
        return found[0].path
    return next((c.path for c in found[1:] if c.exists), None)


def searched() -> str:
    """The search order in one line, for error messages."""
    parts = []
    for c in candidates():
        if c.path is None:
            parts.append(f"{c.label} (unset)")
        else:
            parts.append(f"{c.path} ({'found' if c.exists else 'missing'})")
    return "; ".join(parts)


def no_data_message() -> str:
    return f"no data folder found (looked in: {searched()}); {WHAT_TO_DO}"


def _omniglot_form(folder: Path, stem: str) -> str | None:
    for path, form in (
        (folder / f"{stem}.npz", "npz"),
        (folder / f"{stem}.zip", "zip"),
        (folder / stem, "folder"),
    ):
        if (form == "folder" and path.is_dir()) or (form != "folder" and path.is_file()):
            return f"{form} {path}"
    return None


def describe(root: Path) -> list[tuple[str, str | None]]:
    """(dataset, what was found or None) for every source train/evaluate can read from ``root``."""
    omniglot = root / "omniglot" if (root / "omniglot").is_dir() else root
    rich = root / "quickdraw"
    rich_files = sorted(rich.glob("*.npy")) if rich.is_dir() else []
    sketches = root / "quickdraw345" / QUICKDRAW345_FILE
    return [
        ("omniglot background (train/val)", _omniglot_form(omniglot, "images_background")),
        ("omniglot evaluation (test)", _omniglot_form(omniglot, "images_evaluation")),
        (
            "quickdraw/ (category .npy files)",
            f"{len(rich_files)} categories in {rich}" if rich_files else None,
        ),
        ("quickdraw345/ (345 categories x 25)", str(sketches) if sketches.is_file() else None),
    ]


@dataclass(frozen=True)
class Check:
    path: str  # relative to the data root
    status: str  # ok | MISMATCH | absent | unchecked
    detail: str = ""


def verify(root: Path) -> list[Check]:
    """Check every file whose digest we know: the shared manifest's sha256s, the published md5s
    of Lake's zips, and the sha256 recorded when ``innerloop data fetch`` downloaded a Quick Draw
    file. Other data files are listed as ``unchecked``; known files that are missing as
    ``absent`` (not an error: a partial copy is fine if it has what you train on)."""
    checks: list[Check] = []
    known: set[str] = set()
    for relative, expected in SHARED_DATA_SHA256.items():
        known.add(relative)
        checks.append(_check(root, relative, "sha256", expected))
    for name, md5 in OMNIGLOT_MD5.items():
        relative = f"omniglot/{name}"
        known.add(relative)
        checks.append(_check(root, relative, "md5", md5))
    for record in sorted(root.glob("quickdraw/*.npy.sha256.json")):
        relative = record.relative_to(root).as_posix().removesuffix(".sha256.json")
        if relative in known:
            continue
        known.add(relative)
        try:
            expected = str(json.loads(record.read_text())["sha256"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            checks.append(Check(relative, "MISMATCH", f"unreadable record {record.name}: {error}"))
            continue
        checks.append(_check(root, relative, "sha256", expected, "recorded at download"))
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if (
            path.is_file()
            and relative not in known
            and path.suffix in (".npy", ".npz", ".zip")
            and not path.name.startswith(".")
        ):
            checks.append(Check(relative, "unchecked", "no published digest"))
    return checks


def _check(root: Path, relative: str, algorithm: str, expected: str, source: str = "") -> Check:
    path = root / relative
    if not path.is_file():
        return Check(relative, "absent")
    actual = file_digest(path, algorithm)
    where = f" ({source})" if source else ""
    if actual == expected:
        return Check(relative, "ok", f"{algorithm} {actual[:16]}...{where}")
    return Check(
        relative,
        "MISMATCH",
        f"{algorithm} is {actual}, expected {expected}{where}; the file is corrupt or not the "
        "published one: delete it and copy or fetch it again",
    )
