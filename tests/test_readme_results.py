"""The README's results tables are the shipped checkpoints' recorded evaluations, verbatim."""

from __future__ import annotations

import pytest
from innerloop_training import results_table
from server_harness import REPO


def test_readme_tables_match_the_cards(capsys: pytest.CaptureFixture[str]) -> None:
    status = results_table.main(
        ["--checkpoints", str(REPO / "checkpoints"), "--check", str(REPO / "README.md")]
    )
    assert status == 0, capsys.readouterr().err


def test_every_shipped_model_is_in_the_tables() -> None:
    block = results_table.results_markdown(REPO / "checkpoints")
    shipped = results_table.shipped_checkpoints(REPO / "checkpoints")
    assert shipped, "no shipped checkpoint found"
    for path in shipped:
        assert f"`{path.stem}`" in block


def test_a_readme_without_the_block_is_refused() -> None:
    with pytest.raises(ValueError, match="no results block"):
        results_table.replace_block("# a README\\n", "| table |\\n")
