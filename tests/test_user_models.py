"""What a user trains never touches the shipped checkpoints, and can be served beside them."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from innerloop_server.cli_serve import checkpoint_paths
from innerloop_training import results_table
from server_harness import REPO, ServerProcess

from innerloop.cli import main

SHIPPED = REPO / "checkpoints"


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*")}


def test_train_writes_to_models_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before = digests(SHIPPED)
    monkeypatch.chdir(tmp_path)
    status = main(
        [
            "train",
            "--algorithm",
            "maml",
            "--dataset",
            "sine",
            "--shots",
            "5",
            "--queries",
            "5",
            "--meta-batch",
            "2",
            "--meta-steps",
            "2",
            "--eval-every",
            "1",
            "--eval-episodes",
            "2",
            "--checkpoint-every",
            "1",
            "--threads",
            "1",
        ]
    )
    assert status == 0
    assert "wrote models/sine-maml.safetensors" in capsys.readouterr().out
    assert (tmp_path / "models" / "sine-maml.safetensors").is_file()
    assert (tmp_path / "runs" / "sine-maml" / "metrics.jsonl").is_file()
    assert not (tmp_path / "checkpoints").exists()
    assert digests(SHIPPED) == before


def test_train_help_example_targets_a_user_model(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--out models/" in text
    assert "checkpoints/omniglot" not in text and "--out checkpoints" not in text
    assert "(default: models/DATASET-" in text


def test_added_folders_join_the_shipped_models(tmp_path: Path) -> None:
    mine = tmp_path / "models"
    mine.mkdir()
    shutil.copy(SHIPPED / "sine.safetensors", mine / "my-sine.safetensors")
    names = [p.stem for p in checkpoint_paths(SHIPPED, [mine])]
    assert names == [*(p.stem for p in sorted(SHIPPED.glob("*.safetensors"))), "my-sine"]
    assert [p.stem for p in checkpoint_paths(SHIPPED, [mine / "my-sine.safetensors"])] == names
    # the same folder twice is the same models, not a clash
    assert [p.stem for p in checkpoint_paths(SHIPPED, [SHIPPED, mine])] == names


def test_a_name_clash_with_a_shipped_model_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "models"
    mine.mkdir()
    shutil.copy(SHIPPED / "sine.safetensors", mine / "sine.safetensors")
    status = main(["serve", "--checkpoints", str(SHIPPED), "--add", str(mine)])
    err = capsys.readouterr().err
    assert status == 1
    assert "would both be served as 'sine'" in err and "rename one" in err
    status = main(["serve", "--add", str(tmp_path / "absent")])
    assert status == 1 and "--add" in capsys.readouterr().err


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("user-models")
    mine = folder / "models"
    mine.mkdir()
    shutil.copy(SHIPPED / "sine.safetensors", mine / "my-sine.safetensors")
    process = ServerProcess(SHIPPED, folder / "server.log", "--add", str(mine))
    try:
        yield process.wait_healthy()
    finally:
        process.stop()


def test_serve_add_serves_user_models_beside_the_shipped_ones(served: ServerProcess) -> None:
    listing = httpx.get(served.url + "/v1/models", timeout=30).json()
    names = {m["name"] for m in listing["models"]}
    assert names == {p.stem for p in SHIPPED.glob("*.safetensors")} | {"my-sine"}
    assert listing["default"] == "omniglot"
    response = httpx.post(
        served.url + "/v1/predict",
        json={
            "model": "my-sine",
            "support": [{"x": [0.0], "y": [0.0]}, {"x": [1.0], "y": [1.0]}],
            "query": [[0.5]],
        },
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "my-sine"


def test_results_tables_take_only_tracked_checkpoints(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    shutil.copy(SHIPPED / "sine.safetensors", folder / "sine.safetensors")
    # outside a git checkout every file counts
    assert [p.name for p in results_table.shipped_checkpoints(folder)] == ["sine.safetensors"]
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True, timeout=60)
    subprocess.run([*git, "add", "checkpoints/sine.safetensors"], check=True, timeout=60)
    subprocess.run([*git, "commit", "-qm", "ship sine"], check=True, timeout=60)
    shutil.copy(SHIPPED / "logistic.safetensors", folder / "mine.safetensors")  # user's, untracked
    assert [p.name for p in results_table.shipped_checkpoints(folder)] == ["sine.safetensors"]
    assert "`mine`" not in results_table.results_markdown(folder)
    assert "`sine`" in results_table.results_markdown(folder)
