"""Crafted checkpoints: every lie a card can tell is a ``CheckpointError``, raised before any
large allocation, and a server's registry serves the good file beside the bad one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from crafted_checkpoints import CRAFTED, crafted_card, honest_card, tiny_learner, write
from innerloop_server.registry import Registry

from innerloop.checkpoint import CheckpointError, build_card, save_checkpoint


def test_the_unedited_crafted_file_loads(tmp_path: Path) -> None:
    """Control: each crafted file fails because of its one edit, not because of the writer."""
    honest = write(tmp_path / "honest.safetensors", honest_card())
    assert Registry.from_paths([honest], strict=True).names == ["honest"]


@pytest.mark.parametrize(
    ("edit", "expected"), [c[1:] for c in CRAFTED], ids=[c[0] for c in CRAFTED]
)
def test_crafted_card_is_a_checkpoint_error(
    tmp_path: Path, edit: Callable[[dict[str, Any]], Any], expected: str
) -> None:
    bad = write(tmp_path / "bad.safetensors", crafted_card(edit))
    with pytest.raises(CheckpointError) as caught:
        Registry.from_paths([bad], strict=True)  # strict: whatever load raises comes out
    assert expected in str(caught.value)
    assert str(bad) in str(caught.value)


@pytest.mark.parametrize("edit", [c[1] for c in CRAFTED], ids=[c[0] for c in CRAFTED])
def test_the_good_file_beside_a_crafted_one_is_served(
    tmp_path: Path, edit: Callable[[dict[str, Any]], Any]
) -> None:
    learner = tiny_learner()
    save_checkpoint(learner, tmp_path / "good.safetensors", build_card(learner, "good"))
    write(tmp_path / "bad.safetensors", crafted_card(edit))
    registry = Registry.from_folder(tmp_path)
    assert registry.names == ["good"]
    assert set(registry.skipped) == {"bad.safetensors"}
