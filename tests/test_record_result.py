"""`innerloop evaluate --record` adds its result to the card as it is on disk when it finishes,
so concurrent evaluations (or a tune) of one checkpoint keep each other's results, and a result
is never attached to a file whose tensors changed meanwhile."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from innerloop_training.cli_evaluate import record_result
from innerloop_training.evaluation import EvaluationResult
from server_harness import REPO

from innerloop.checkpoint import CheckpointError, load_checkpoint, read_card, save_checkpoint


def _result(mean: float) -> EvaluationResult:
    return EvaluationResult("mse", mean, 0.01, 3, [mean] * 3, {"steps": 10, "lr": 0.01})


def test_a_result_joins_what_others_wrote_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "sine.safetensors"
    shutil.copy(REPO / "checkpoints" / "sine.safetensors", path)
    evaluated, _ = load_checkpoint(path)  # a long evaluation starts ...
    other, card = load_checkpoint(path)  # ... and another process records its own result
    card["evaluation"]["sine/val/regression"] = _result(0.5).to_dict()
    save_checkpoint(other, path, card)
    record_result(evaluated, str(path), "sine/test/regression", _result(0.25))
    evaluation = read_card(path)["evaluation"]
    assert evaluation["sine/val/regression"]["mse"] == 0.5
    assert evaluation["sine/test/regression"]["mse"] == 0.25


def test_a_result_for_other_tensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sine.safetensors"
    shutil.copy(REPO / "checkpoints" / "sine.safetensors", path)
    evaluated, _ = load_checkpoint(path)
    retrained, card = load_checkpoint(path)
    name = next(iter(retrained.params))
    retrained.params[name] = retrained.params[name] + torch.ones_like(retrained.params[name])
    save_checkpoint(retrained, path, card)
    with pytest.raises(CheckpointError, match="changed while it was being evaluated"):
        record_result(evaluated, str(path), "sine/test/regression", _result(0.25))
    assert read_card(path)["evaluation"] == card["evaluation"]
