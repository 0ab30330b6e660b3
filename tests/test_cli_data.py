"""``innerloop data where|verify|fetch``, and data errors that speak the command line's language.

Downloads are tested against a local HTTP server on 127.0.0.1 standing in for the original
sites (``--mirror``); the checksum checks are the real ones.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from innerloop_training.data import locate
from innerloop_training.data.manifest_checksums import SHARED_DATA_SHA256
from innerloop_training.data.registry import default_data_root, load_image_dataset
from innerloop_training.episodes import EpisodeSampler
from PIL import Image

from innerloop.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A static file server on 127.0.0.1 serving ``tmp_path/site``."""
    site = tmp_path / "site"
    site.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", site
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


# ---- where ------------------------------------------------------------------------------------
def test_where_lists_the_search_and_what_a_root_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "quickdraw").mkdir()
    np.save(tmp_path / "quickdraw" / "cat.npy", np.zeros((3, 784), np.uint8))
    status, out, _ = run(capsys, "data", "where", "--data-root", str(tmp_path))
    assert status == 0
    assert "quickdraw/ (category .npy files): 1 categories" in out
    assert "omniglot evaluation (test): not found" in out


def test_where_without_any_root_says_where_it_looked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere"
    monkeypatch.setenv(locate.DATA_ENV, str(missing))
    status, out, err = run(capsys, "data", "where")
    assert status == 1
    assert f"$INNERLOOP_DATA: {missing} (missing)" in out
    assert "shared/data next to the repository" in out
    assert "--data-root" in err


def test_where_finds_the_shared_data(capsys: pytest.CaptureFixture[str]) -> None:
    root = default_data_root()
    if root is None or not (root / "omniglot").is_dir():
        pytest.skip("no shared data folder")
    status, out, _ = run(capsys, "data", "where")
    assert status == 0
    assert f"using {root.resolve()}" in out
    assert "omniglot background (train/val): npz" in out


# ---- verify -----------------------------------------------------------------------------------
def test_verify_reports_ok_and_mismatched_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shared = default_data_root()
    source = shared / "quickdraw345" / "categories.txt" if shared else None
    if source is None or not source.is_file():
        pytest.skip("no shared quickdraw345/categories.txt to copy")
    (tmp_path / "quickdraw345").mkdir()
    shutil.copy(source, tmp_path / "quickdraw345" / "categories.txt")
    status, out, _ = run(capsys, "data", "verify", "--data-root", str(tmp_path))
    assert status == 0, out
    assert "ok        quickdraw345/categories.txt" in out

    (tmp_path / "omniglot").mkdir()
    (tmp_path / "omniglot" / "images_evaluation.npz").write_bytes(b"truncated")
    status, out, err = run(capsys, "data", "verify", "--data-root", str(tmp_path))
    assert status == 1
    expected = SHARED_DATA_SHA256["omniglot/images_evaluation.npz"]
    assert "MISMATCH  omniglot/images_evaluation.npz" in out and expected in out
    assert "delete them and copy or fetch them again" in err


def test_verify_on_a_missing_root_names_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run(capsys, "data", "verify", "--data-root", str(tmp_path / "absent"))
    assert status == 1
    assert "does not exist" in err and "--data-root DIR" in err


# ---- fetch ------------------------------------------------------------------------------------
def test_fetch_quickdraw_records_and_then_verifies_a_checksum(
    tmp_path: Path, mirror: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, site = mirror
    np.save(site / "hot dog.npy", np.full((4, 784), 7, np.uint8))
    root = tmp_path / "data"
    status, out, err = run(
        capsys, "data", "fetch", "quickdraw", "hot dog", "--data-root", str(root), "--mirror", url
    )
    assert status == 0, err
    target = root / "quickdraw" / "hot dog.npy"
    assert target.read_bytes() == (site / "hot dog.npy").read_bytes()
    record = json.loads((root / "quickdraw" / "hot dog.npy.sha256.json").read_text())
    assert record["sha256"] == hashlib.sha256(target.read_bytes()).hexdigest()

    status, out, _ = run(capsys, "data", "verify", "--data-root", str(root))
    assert status == 0 and "ok        quickdraw/hot dog.npy" in out
    target.write_bytes(target.read_bytes()[:-10])  # a truncated copy
    status, out, _ = run(capsys, "data", "verify", "--data-root", str(root))
    assert status == 1 and "MISMATCH  quickdraw/hot dog.npy" in out


def test_fetch_omniglot_refuses_a_file_with_the_wrong_md5(
    tmp_path: Path, mirror: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, site = mirror
    for name in ("images_background.zip", "images_evaluation.zip"):
        (site / name).write_bytes(b"not Lake's zip")
    root = tmp_path / "data"
    status, _, err = run(
        capsys, "data", "fetch", "omniglot", "--data-root", str(root), "--mirror", url
    )
    assert status == 1
    assert "md5 is" in err and "expected 68d2efa1b9178cc56df9314c21c6e718" in err
    assert not (root / "omniglot" / "images_background.zip").exists()  # never kept


def test_fetch_without_a_network_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    closed = "http://127.0.0.1:9"  # discard port: nothing listens
    status, _, err = run(
        capsys, "data", "fetch", "omniglot", "--data-root", str(tmp_path), "--mirror", closed
    )
    assert status == 1
    assert "could not download" in err and "copy the files by hand" in err


def test_fetch_quickdraw_needs_categories(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run(capsys, "data", "fetch", "quickdraw", "--data-root", str(tmp_path))
    assert status == 2 and "needs category names" in err


# ---- the loaders' errors name the flags -------------------------------------------------------
def test_folder_dataset_without_path_names_the_flag() -> None:
    with pytest.raises(ValueError, match="--dataset folder needs --path DIR"):
        load_image_dataset("folder", "train")


def test_a_missing_data_root_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"\(from --data-root\) does not exist"):
        load_image_dataset("omniglot", "train", data_root=tmp_path / "absent")


def test_a_small_folder_is_described_by_split_and_classes(tmp_path: Path) -> None:
    """24 class folders of 5 images: the train split has 17 classes, 68 with rotations."""
    for c in range(24):
        folder = tmp_path / f"class{c:02d}"
        folder.mkdir()
        for i in range(5):
            image = np.full((28, 28), 255, np.uint8)
            image[4 + c % 20, 2:26] = 0
            image[2:26, 3 + i] = 0
            Image.fromarray(image).save(folder / f"{i}.png")
    data = load_image_dataset("folder", "train", path=tmp_path, rotations=True)
    assert (
        data.describe() == f"the train split of --path {tmp_path} (17 classes, 68 with rotations)"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError) as error:
            EpisodeSampler(data, ways=5, shots=1, queries=15, seed=0)
    message = str(error.value)
    assert message.startswith("the train split of --path")
    assert "(--shots 1 + --queries 15; the largest has 5)" in message
    assert "--ways 5" in message
    assert "17 of 17 classes have fewer than 16 images" in str(caught[0].message)
