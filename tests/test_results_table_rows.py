"""The README tables carry the baseline, the gain, and the within-alphabet and domain-shift rows
that a card records, each with the `innerloop evaluate` command that remakes it."""

from __future__ import annotations

import shutil
from pathlib import Path

from innerloop_training import results_table
from server_harness import REPO

from innerloop.checkpoint import load_checkpoint, save_checkpoint


def _result(ways: int, shots: int, dataset: str, episodes: int, **extra: object) -> dict:
    return {
        "metric": "accuracy", "mean": 0.9, "ci95": 0.01, "episodes": episodes,
        "prototype_accuracy": 0.88, "prototype_ci95": 0.012, "gain": 0.02, "gain_ci95": 0.005,
        "dataset": dataset, "ways": ways, "shots": shots, "steps": 0, "lr": 0.01, **extra,
    }  # fmt: skip


def test_rows_and_commands_come_from_the_card(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    path = folder / "omniglot.safetensors"
    shutil.copy(REPO / "checkpoints" / "omniglot.safetensors", path)
    learner, card = load_checkpoint(path)
    card["evaluation"] = {
        "omniglot/test/5way1shot": _result(5, 1, "omniglot", 600),
        "omniglot/test/20way1shot": _result(20, 1, "omniglot", 200),
        "omniglot/test/20way1shot/within-alphabet": _result(20, 1, "omniglot", 200),
        "quickdraw/test/5way5shot": _result(5, 5, "quickdraw", 600),
        "omniglot/test/5way1shot/scope-film": _result(5, 1, "omniglot", 50, scope="film"),
    }
    save_checkpoint(learner, path, card)
    block = results_table.results_markdown(folder)
    assert "| `omniglot`, 5-way 1-shot | 90.0 ± 1.0 | 88.0 ± 1.2 | +2.0 ± 0.5 | 99.0 |" in block
    assert "| `omniglot`, 20-way 1-shot, within one alphabet | 90.0 ± 1.0 | 88.0 ± 1.2 |" in block
    assert "| `omniglot` on Quick Draw (domain shift), 5-way 5-shot | 90.0 ± 1.0 |" in block
    assert "| ≥ +3 |" in block  # the domain-shift gain target
    assert "| `omniglot`, 5-way 5-shot | – | – | – |" in block  # not recorded: shown as such
    commands = [line for line in block.splitlines() if line.startswith("innerloop evaluate")]
    assert commands == [
        "innerloop evaluate checkpoints/omniglot.safetensors --dataset omniglot --ways 5 "
        "--shots 1 --episodes 600",
        "innerloop evaluate checkpoints/omniglot.safetensors --dataset omniglot --ways 20 "
        "--shots 1 --episodes 200",
        "innerloop evaluate checkpoints/omniglot.safetensors --dataset omniglot --ways 20 "
        "--shots 1 --within-alphabet --episodes 200",
        "innerloop evaluate checkpoints/omniglot.safetensors --dataset quickdraw --ways 5 "
        "--shots 5 --episodes 600",
    ]


def test_a_card_with_the_choice_on_says_what_it_serves(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    path = folder / "quickdraw.safetensors"
    shutil.copy(REPO / "checkpoints" / "quickdraw.safetensors", path)
    learner, card = load_checkpoint(path)
    card["inner_loop"].update(steps=0, lr=0.01, candidates=[[0, 0.01], [5, 0.05]])
    card["adaptation"]["scope"] = "head"
    save_checkpoint(learner, path, card)
    block = results_table.results_markdown(folder)
    assert (
        "serves per request, the loop its held-out support examples choose among 0 steps of lr "
        "0.01, 5 steps of lr 0.05 (scope head); 0 steps (the prototype answer) where a label "
        "has one example"
    ) in block
