"""The shipped comparison: merged runs, and a README table that matches the results file."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from innerloop_training.compare_report import (
    RESULTS,
    main,
    merge_reports,
    readme_block,
    replace_block,
)

README = Path(__file__).resolve().parents[1] / "README.md"


def run_of(methods: dict[str, float], seconds: float) -> dict[str, Any]:
    """A results.json as ``innerloop compare`` writes it, for the given final accuracies."""
    return {
        "protocol": "omniglot alphabet-as-task",
        "settings": {
            "methods": list(methods),
            "meta_steps": 40,
            "meta_batch": 5,
            "shots": 5,
            "queries": 5,
            "inner_steps": 20,
            "filters": 32,
            "characters": 20,
            "test_shots": 5,
            "test_steps": 100,
            "inner_optimizer": "adam",
            "inner_lr": 0.001,
        },
        "pretrain_order": ["Latin", "Greek"],
        "test_alphabets": ["Angelic", "Keble"],
        "results": {
            m: {
                "25": {
                    "final_accuracy": a,
                    "auc": a - 0.1,
                    "ci95_queries": [a - 0.02, a + 0.02],
                    "ci95_alphabets": [a - 0.05, a + 0.05],
                }
            }
            for m, a in methods.items()
        },
        "methods": {m: {"outer": {"optimizer": "sgd"}} for m in methods},
        "seconds": {m: {"25": seconds} for m in methods},
        "total_seconds": seconds * len(methods),
    }


def test_merge_joins_methods_and_keeps_both_clocks() -> None:
    merged = merge_reports([run_of({"leap": 0.6, "warp-leap": 0.7}, 600), run_of({"no": 0.3}, 60)])
    assert merged["settings"]["methods"] == ["warp-leap", "leap", "no"]
    assert merged["results"]["no"]["25"]["final_accuracy"] == 0.3
    assert merged["total_seconds"] == 1200  # side by side: the longer run
    assert merged["cpu_seconds"] == 1260


def test_merge_refuses_runs_that_are_not_comparable() -> None:
    other = run_of({"no": 0.3}, 60)
    other["settings"]["filters"] = 64
    with pytest.raises(ValueError, match="filters"):
        merge_reports([run_of({"leap": 0.6}, 600), other])
    with pytest.raises(ValueError, match="two runs"):
        merge_reports([run_of({"leap": 0.6}, 600), run_of({"leap": 0.5}, 600)])
    moved = copy.deepcopy(other)
    moved["settings"]["filters"] = 32
    moved["test_alphabets"] = ["Angelic"]
    with pytest.raises(ValueError, match="test_alphabets"):
        merge_reports([run_of({"leap": 0.6}, 600), moved])


def test_readme_block_puts_the_paper_beside_ours() -> None:
    block = readme_block(merge_reports([run_of({"warp-leap": 0.7, "no": 0.3}, 600)]))
    row = next(line for line in block.splitlines() if line.startswith("| warp-leap"))
    assert "70.0 [68.0, 72.0]" in row and "[65.0, 75.0]" in row and "| 83.6 |" in row
    untrained = next(line for line in block.splitlines() if line.startswith("| no "))
    assert "83.6" not in untrained
    assert replace_block(f"a\n{block}\nb", "X") == "a\nX\nb"


@pytest.mark.skipif(not RESULTS.exists(), reason="no shipped comparison results")
def test_readme_table_matches_the_shipped_results() -> None:
    assert main(["readme", "--results", str(RESULTS), "--check", str(README)]) == 0


def test_readme_block_shows_a_variant_run_beside_the_main_one() -> None:
    main_run = merge_reports([run_of({"leap": 0.7, "no": 0.3}, 600)])
    variant = merge_reports([run_of({"leap": 0.6}, 600)])
    variant["settings"].update(head="proto", inner_optimizer="adam", inner_lr=0.001)
    block = readme_block(main_run, variant=variant)
    leap = next(line for line in block.splitlines() if line.startswith("| leap"))
    assert leap.endswith("| 60.0 [58.0, 62.0] |")
    untrained = next(line for line in block.splitlines() if line.startswith("| no "))
    assert untrained.endswith("|  |")  # the variant did not run it
    assert "proto head and adam (lr 0.001)" in block
