"""Checkpoints round-trip exactly and every kind of broken file is refused with a reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import random_image_tasks, tiny_image_learner, tiny_regression_learner
from safetensors.torch import save_file

from innerloop.checkpoint import (
    CARD_KEY,
    CheckpointError,
    build_card,
    load_checkpoint,
    read_card,
    save_checkpoint,
)


@pytest.mark.parametrize("learned", [False, True])
def test_round_trip_keeps_tensors_card_and_predictions(tmp_path: Path, learned: bool) -> None:
    learner = tiny_image_learner(steps=2, learned=learned)
    card = build_card(learner, "tiny", {"training": {"seed": 7}})
    path = save_checkpoint(learner, tmp_path / "tiny.safetensors", card)
    loaded, loaded_card = load_checkpoint(path)
    assert loaded_card == json.loads(json.dumps(card))
    assert read_card(path) == loaded_card
    assert loaded.learned_step_sizes is learned
    for name, value in learner.params.items():
        assert torch.equal(loaded.params[name], value)
    batch = random_image_tasks(2, ways=3, shots=1, queries=2)
    before = learner.adapt_and_predict(*batch.astuple()[:5]).outputs
    after = loaded.adapt_and_predict(*batch.astuple()[:5]).outputs
    assert torch.equal(before, after)


def test_card_describes_the_model(tmp_path: Path) -> None:
    card = build_card(tiny_regression_learner(), "sine")
    assert card["task"] == "regression"
    assert card["input"] == {"kind": "vector", "features": 1, "targets": 1}
    image_card = build_card(tiny_image_learner(), "glyphs")
    assert image_card["input"]["kind"] == "image" and image_card["input"]["size"] == 8
    assert image_card["inner_loop"] == {
        "steps": 2,
        "lr": 0.05,
        "optimizer": "sgd",
        "tolerance": 0.0,
        "candidates": [],
        "choice_folds": 2,
    }


@pytest.fixture
def good_file(tmp_path: Path) -> Path:
    learner = tiny_image_learner()
    return save_checkpoint(learner, tmp_path / "good.safetensors", build_card(learner, "good"))


def corrupt(path: Path, data: bytes) -> Path:
    bad = path.with_name("bad.safetensors")
    bad.write_bytes(data)
    return bad


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("empty", "not a safetensors file"),
        ("truncated", "truncated"),
        ("garbage", "not a safetensors file"),
        ("tail-cut", "corrupt or truncated"),
    ],
)
def test_damaged_files_are_refused(good_file: Path, how: str, message: str) -> None:
    data = good_file.read_bytes()
    damaged = {
        "empty": b"",
        "truncated": data[:100],
        "garbage": b"\xff" * 64,
        "tail-cut": data[:-1000],
    }[how]
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(corrupt(good_file, damaged))


def rewrite(good_file: Path, edit_card: object = None, edit_tensors: object = None) -> Path:
    learner, card = load_checkpoint(good_file)
    tensors = {f"param/{k}": v for k, v in learner.params.items()}
    tensors.update({f"step_size/{k}": v for k, v in learner.step_sizes.items()})
    if callable(edit_card):
        edit_card(card)
    if callable(edit_tensors):
        edit_tensors(tensors)
    bad = good_file.with_name("edited.safetensors")
    save_file(tensors, str(bad), metadata={CARD_KEY: json.dumps(card)})
    return bad


def test_wrong_format_version_is_refused(good_file: Path) -> None:
    bad = rewrite(good_file, edit_card=lambda card: card.update(format_version=99))
    with pytest.raises(CheckpointError, match="format_version 99 is not supported"):
        load_checkpoint(bad)


def test_architecture_mismatch_is_refused(good_file: Path) -> None:
    bad = rewrite(
        good_file, edit_card=lambda card: card["architecture"].update(filters=8, norm_groups=2)
    )
    with pytest.raises(CheckpointError, match="has shape"):
        load_checkpoint(bad)


def test_missing_tensor_is_refused(good_file: Path) -> None:
    bad = rewrite(good_file, edit_tensors=lambda tensors: tensors.pop("param/body.0.weight"))
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(bad)


def test_nan_weights_are_refused(good_file: Path) -> None:
    def poison(tensors: dict[str, torch.Tensor]) -> None:
        tensors["param/body.0.bias"] = torch.full_like(tensors["param/body.0.bias"], float("nan"))

    with pytest.raises(CheckpointError, match="NaN"):
        load_checkpoint(rewrite(good_file, edit_tensors=poison))


def test_plain_safetensors_without_card_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="no innerloop model card"):
        load_checkpoint(path)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "absent.safetensors")
