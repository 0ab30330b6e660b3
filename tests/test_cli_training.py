"""`innerloop train` and `innerloop evaluate` as a user runs them, on tiny settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from innerloop_training.data.registry import default_data_root

from innerloop.checkpoint import read_card


def innerloop(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "innerloop.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _tensors_equal(before: bytes, after: bytes) -> bool:
    from safetensors.torch import load

    a, b = load(before), load(after)
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def test_help_explains_every_subcommand(tmp_path: Path) -> None:
    top = innerloop("--help", cwd=tmp_path)
    assert top.returncode == 0
    for command in ("train", "evaluate", "serve", "models"):
        assert command in top.stdout
    train = innerloop("train", "--help", cwd=tmp_path)
    assert "--algorithm" in train.stdout and "--meta-batch" in train.stdout
    assert "{maml,fomaml,metasgd,reptile" in train.stdout


def test_sine_train_resume_evaluate_and_record(tmp_path: Path) -> None:
    out = tmp_path / "sine.safetensors"
    common = [
        "train",
        "--algorithm",
        "maml",
        "--dataset",
        "sine",
        "--shots",
        "5",
        "--queries",
        "5",
        "--inner-steps",
        "1",
        "--inner-lr",
        "0.01",
        "--meta-batch",
        "4",
        "--eval-every",
        "2",
        "--eval-episodes",
        "4",
        "--checkpoint-every",
        "2",
        "--out",
        str(out),
    ]
    first = innerloop(*common, "--meta-steps", "4", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    resumed = innerloop(*common, "--meta-steps", "6", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "runs/sine/metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3, 4, 5, 6]
    card = read_card(out)
    assert card["training"]["meta_steps_done"] == 6
    assert card["training"]["algorithm"] == "maml"
    assert "--resume" in card["training"]["command"]
    assert (tmp_path / "runs/sine/training_curve.png").stat().st_size > 1000
    assert (tmp_path / "runs/sine/adaptation.png").stat().st_size > 1000
    assert card["training"]["command"].startswith("innerloop train")
    # the best validated checkpoint of the segment is kept beside the last one
    best = read_card(tmp_path / "runs/sine/best.safetensors")
    assert best["training"]["best_of_validations"] is True
    validated = [
        json.loads(line)
        for line in (tmp_path / "runs/sine/metrics.jsonl").read_text().splitlines()
        if "val_mse" in line
    ]
    resumed_segment = [r for r in validated if r["step"] > 4]
    assert best["evaluation"]["validation"]["mse"] == pytest.approx(
        min(r["val_mse"] for r in resumed_segment)
    )

    # a fresh run in the same run folder starts a fresh log, not a curve of two runs
    again = innerloop(*common, "--meta-steps", "2", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    log = (tmp_path / "runs/sine/metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2]
    innerloop(*common, "--meta-steps", "6", cwd=tmp_path)  # ... to be evaluated below

    evaluated = innerloop(
        "evaluate", str(out), "--shots", "5", "--episodes", "8", "--json", "--record", cwd=tmp_path
    )
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert {"mse", "ci95", "episodes", "shots"} <= result.keys()
    assert result["episodes"] == 8 and result["mse"] > 0
    assert read_card(out)["evaluation"]["sine/test/regression"]["mse"] == result["mse"]

    # the no-meta-training baseline is recorded beside, without touching the meta-parameters
    before = out.read_bytes()
    baseline = innerloop(
        "evaluate",
        str(out),
        "--shots",
        "5",
        "--episodes",
        "8",
        "--json",
        "--record",
        "--untrained",
        cwd=tmp_path,
    )
    assert baseline.returncode == 0, baseline.stderr
    untrained = json.loads(baseline.stdout)
    evaluation = read_card(out)["evaluation"]
    assert evaluation["sine/test/regression/untrained"]["mse"] == untrained["mse"]
    assert evaluation["sine/test/regression"]["mse"] == result["mse"]
    assert untrained["mse"] != result["mse"]
    assert _tensors_equal(before, out.read_bytes())


@pytest.mark.skipif(default_data_root() is None, reason="shared data folder is absent")
def test_omniglot_train_and_evaluate_on_held_out_alphabets(tmp_path: Path) -> None:
    out = tmp_path / "glyphs.safetensors"
    trained = innerloop(
        "train",
        "--algorithm",
        "fomaml",
        "--dataset",
        "omniglot",
        "--ways",
        "3",
        "--shots",
        "1",
        "--queries",
        "2",
        "--filters",
        "8",
        "--inner-steps",
        "1",
        "--meta-batch",
        "2",
        "--meta-steps",
        "2",
        "--eval-episodes",
        "3",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr
    card = read_card(out)
    assert card["training"]["data"]["dataset"] == "omniglot"
    assert card["training"]["data"]["split"] == "train"
    evaluated = innerloop(
        "evaluate",
        str(out),
        "--ways",
        "4",
        "--shots",
        "1",
        "--episodes",
        "5",
        "--json",
        cwd=tmp_path,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert result["ways"] == 4 and result["shots"] == 1 and result["episodes"] == 5
    assert 0.0 <= result["accuracy"] <= 1.0 and result["split"] == "test"
    grid = innerloop(
        "evaluate",
        str(out),
        "--ways",
        "2",
        "4",
        "--shots",
        "1",
        "2",
        "--episodes",
        "3",
        "--json",
        "--record",
        "--plot",
        str(tmp_path / "grid.png"),
        cwd=tmp_path,
    )
    assert grid.returncode == 0, grid.stderr
    rows = [json.loads(line) for line in grid.stdout.splitlines() if line.startswith("{")]
    assert [(r["ways"], r["shots"]) for r in rows] == [(2, 1), (2, 2), (4, 1), (4, 2)]
    assert (tmp_path / "grid.png").stat().st_size > 5_000
    recorded = read_card(out)["evaluation"]
    assert {"omniglot/test/2way1shot", "omniglot/test/4way2shot"} <= set(recorded)


def test_evaluate_refuses_a_corrupt_checkpoint_with_a_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    result = innerloop("evaluate", str(bad), "--dataset", "sine", cwd=tmp_path)
    assert result.returncode == 2
    assert "bad.safetensors" in result.stdout and "Traceback" not in result.stderr


def test_init_warm_starts_from_a_checkpoint_and_keeps_its_history(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    sine = ["--dataset", "sine", "--shots", "5", "--queries", "5", "--inner-steps", "1"]
    small = ["--meta-batch", "2", "--eval-episodes", "2", "--inner-lr", "0.01"]
    first = tmp_path / "first.safetensors"
    made = innerloop(
        "train",
        "--algorithm",
        "maml",
        *sine,
        *small,
        "--meta-steps",
        "3",
        "--out",
        str(first),
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stderr
    # an outer step size of zero leaves the warm start untouched: the init must be copied exactly
    second = tmp_path / "second.safetensors"
    warm = innerloop(
        "train",
        "--algorithm",
        "maml",
        *sine,
        *small,
        "--meta-steps",
        "1",
        "--outer-lr",
        "0",
        "--init",
        str(first),
        "--out",
        str(second),
        "--seed",
        "5",
        cwd=tmp_path,
    )
    assert warm.returncode == 0, warm.stderr
    before, after = load_file(str(first)), load_file(str(second))
    assert before.keys() == after.keys()
    assert all(bool((before[k] == after[k]).all()) for k in before)
    history = read_card(second)["training"]["init"]
    assert history["name"] == "first" and history["meta_steps_done"] == 3
    assert history["command"].startswith("innerloop train --algorithm maml")

    # a checkpoint of another model is refused with a message, not a stack trace
    other = innerloop(
        "train",
        "--algorithm",
        "warp",
        "--warp",
        "linear",
        *sine,
        *small,
        "--meta-steps",
        "1",
        "--init",
        str(first),
        "--out",
        str(tmp_path / "third.safetensors"),
        cwd=tmp_path,
    )
    assert other.returncode == 2
    assert "--init" in other.stdout and "does not match" in other.stdout
    assert "Traceback" not in other.stderr
