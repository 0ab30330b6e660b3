"""`train --adapt SCOPE --device cpu` meta-trains the loop the server will run and says so in
the card; `evaluate` of a folder model finds its folder in the card."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from server_harness import REPO

from innerloop.checkpoint import load_checkpoint, read_card


def innerloop(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "innerloop.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _image_folder(root: Path, classes: int = 20, per_class: int = 6) -> Path:
    """Class folders of 28x28 PNGs: a bright square at a class-specific place, plus noise."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class{c:02d}"
        folder.mkdir(parents=True)
        row, col = divmod(c, 5)
        for i in range(per_class):
            pixels = rng.integers(0, 60, size=(28, 28)).astype(np.uint8)
            pixels[4 + 4 * row : 10 + 4 * row, 2 + 5 * col : 8 + 5 * col] = 255
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_train_with_a_scope_and_evaluate_on_the_cards_folder(tmp_path: Path) -> None:
    data = _image_folder(tmp_path / "shapes")
    out = tmp_path / "shapes.safetensors"
    trained = innerloop(
        "train", "--algorithm", "fomaml", "--dataset", "folder", "--path", str(data),
        "--ways", "2", "--shots", "1", "--queries", "2", "--filters", "8", "--meta-batch", "2",
        "--meta-steps", "2", "--eval-every", "2", "--eval-episodes", "2", "--inner-steps", "1",
        "--adapt", "film", "--device", "cpu", "--out", str(out), "--run-dir",
        str(tmp_path / "run"), "--threads", "1", cwd=tmp_path,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stdout + trained.stderr
    card = read_card(out)
    assert card["adaptation"]["scope"] == "film"
    assert card["training"]["config"]["adapt"] == "film"
    assert card["training"]["config"]["device"] == "cpu"
    learner, _ = load_checkpoint(out)
    assert "body.0.weight" in learner.frozen  # the first convolution does not adapt
    assert set(learner.step_sizes) == set(learner.parameter_names()) - learner.frozen
    # no --dataset, no --path: both come from the card
    evaluated = innerloop(
        "evaluate", str(out), "--ways", "2", "--shots", "1", "--queries", "2", "--episodes", "3",
        "--json", "--device", "cpu", "--threads", "1", cwd=tmp_path,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    result = json.loads(evaluated.stdout.splitlines()[-1])
    assert result["dataset"] == "folder" and result["scope"] == "film"
    assert result["device"] == "cpu" and "prototype_accuracy" in result


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_a_cuda_request_without_cuda_is_refused_clearly(tmp_path: Path) -> None:
    sine = str(REPO / "checkpoints" / "sine.safetensors")
    out = innerloop("evaluate", sine, "--device", "cuda", "--episodes", "2", cwd=tmp_path)
    assert out.returncode == 2 and "no CUDA device" in out.stdout
    assert "Traceback" not in out.stderr
