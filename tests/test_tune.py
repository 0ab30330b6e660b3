"""`innerloop tune`: the served inner loop is chosen on validation episodes and written to the
card, and results measured with the replaced defaults are dropped rather than left to mislead."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from server_harness import REPO

from innerloop.checkpoint import load_checkpoint, read_card


def tune(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "innerloop.cli", "tune", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_tune_picks_the_better_loop_on_validation_and_writes_it(tmp_path: Path) -> None:
    path = tmp_path / "sine.safetensors"
    shutil.copy(REPO / "checkpoints" / "sine.safetensors", path)
    # start from the loop it was meta-trained with, whatever the shipped default is now
    reset = tune(
        str(path), "--steps", "1", "--lr", "0.01", "--episodes", "2", "--write", cwd=tmp_path
    )
    assert reset.returncode == 0, reset.stdout + reset.stderr
    assert read_card(path)["inner_loop"]["steps"] == 1
    before = read_card(path)
    card_before = dict(before["evaluation"])
    # one step (how it was meta-trained) against ten: ten fit a sine from 10 points far better
    result = tune(
        str(path), "--steps", "1", "10", "--lr", "0.01", "--episodes", "10", "--write", cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "best on 10-shot regression (validation): steps 10" in result.stdout
    card = read_card(path)
    assert card["inner_loop"]["steps"] == 10 and card["inner_loop"]["lr"] == 0.01
    tuning = card["inner_loop_tuning"]
    assert tuning["split"] == "val" and len(tuning["grid"]) == 2
    assert tuning["command"].startswith("innerloop tune ") and "--write" in tuning["command"]
    assert tuning["trained_with"] == {"steps": 1, "lr": 0.01}
    scores = {cell["steps"]: cell["score"] for cell in tuning["grid"]}
    assert scores[10] < scores[1]
    learner, _ = load_checkpoint(path)
    assert learner.inner.steps == 10
    assert all(abs(float(v) - 0.01) < 1e-7 for v in learner.step_sizes.values())
    # the test result was measured with an explicit --steps 10, so it still describes a loop
    # someone can request; nothing measured with the old defaults survives
    kept = card["evaluation"]
    assert all(
        (r.get("steps"), r.get("lr")) != (1, 0.01) for k, r in kept.items() if k != "validation"
    )
    assert kept.keys() <= card_before.keys()


def test_tune_without_a_dataset_or_file_says_why(tmp_path: Path) -> None:
    missing = tune(str(tmp_path / "absent.safetensors"), cwd=tmp_path)
    assert missing.returncode == 2
    assert "innerloop tune:" in missing.stdout and "Traceback" not in missing.stderr
