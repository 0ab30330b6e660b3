"""Download and checksum helpers shared by the Omniglot and Quick Draw downloaders.

Downloads go through a temp file in the destination folder and are renamed into place only
when complete, so an interrupted download never looks like a finished file.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import urllib.request
from pathlib import Path


class ChecksumError(ValueError):
    """A file's digest does not match the published one (corrupt or different download)."""


def file_digest(path: Path | str, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks (the zips are ~10 MB; Quick Draw files ~100 MB)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path: Path | str, *, md5: str | None = None, sha256: str | None = None) -> None:
    """Raise :class:`ChecksumError` naming the file and both digests if any given digest differs."""
    if md5 is None and sha256 is None:
        raise ValueError("verify_checksum needs md5 and/or sha256")
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if expected is None:
            continue
        actual = file_digest(path, algorithm)
        if actual.lower() != expected.lower():
            raise ChecksumError(
                f"{path}: {algorithm} is {actual}, expected {expected}. The file is corrupt or "
                "not the published one; delete it and download again."
            )


def download_file(url: str, dest: Path, timeout: float = 60.0) -> Path:
    """Stream ``url`` to ``dest`` via a temp file, so a failed download never leaves a partial."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest.parent, prefix=f".{dest.name}.", delete=False) as tmp:
        tmp_path = Path(tmp.name)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                shutil.copyfileobj(response, tmp)
        except BaseException:
            tmp.close()
            tmp_path.unlink(missing_ok=True)
            raise
    tmp_path.replace(dest)
    return dest
