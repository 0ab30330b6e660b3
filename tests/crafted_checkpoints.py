"""Checkpoint files crafted the way a hostile (or careless) publisher could: valid safetensors,
a model card that lies. Shared by the checkpoint unit tests and the server start-up tests."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_bytes

from innerloop.checkpoint import CARD_KEY, PARAM_PREFIX, STEP_PREFIX, build_card
from innerloop.learner import InnerDefaults, Learner
from innerloop.models import ArchConfig


def tiny_learner() -> Learner:
    return Learner.create(
        ArchConfig(kind="conv4", filters=8, norm_groups=4, blocks=3),
        head="proto",
        inner=InnerDefaults(steps=2, lr=0.01),
        max_ways=20,
    )


def write(path: Path, card_text: str, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """A safetensors file whose card metadata is ``card_text`` verbatim."""
    if tensors is None:
        learner = tiny_learner()
        tensors = {PARAM_PREFIX + k: v.detach().contiguous() for k, v in learner.params.items()}
        tensors.update(
            {STEP_PREFIX + k: v.detach().contiguous() for k, v in learner.step_sizes.items()}
        )
    path.write_bytes(save_bytes(tensors, metadata={CARD_KEY: card_text}))
    return path


def _card() -> dict[str, Any]:
    return build_card(tiny_learner(), "crafted")


def _set(*keys: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    def edit(card: dict[str, Any]) -> Any:
        target = card
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
        return card

    return edit


# (id, card edit -> the card object to store as JSON, text the CheckpointError must contain)
CRAFTED: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("card is a number", lambda card: 5, "model card is not an innerloop-checkpoint card"),
    ("card is a list", lambda card: [card], "model card is not an innerloop-checkpoint card"),
    ("card is null", lambda card: None, "model card is not an innerloop-checkpoint card"),
    ("architecture is a number", _set("architecture", value=7), "architecture must be an object"),
    ("input is a number", _set("input", value=7), "card input"),
    ("inner_loop is a list", _set("inner_loop", value=[1]), "incomplete or invalid"),
    ("adaptation is a number", _set("adaptation", value=3), "incomplete or invalid"),
    ("max_ways is a string", _set("max_ways", value="many"), "max_ways must be"),
    ("max_ways is huge", _set("max_ways", value=10**12), "max_ways = 1000000000000"),
    ("filters ask for 4 TB", _set("architecture", "filters", value=1_000_000), "filters"),
    ("image_size is huge", _set("architecture", "image_size", value=10**9), "image_size"),
    ("blocks is huge", _set("architecture", "blocks", value=10**6), "blocks"),
    ("filters is a string", _set("architecture", "filters", value="64"), "filters must be"),
    ("filters is a boolean", _set("architecture", "filters", value=True), "filters must be"),
    ("filters is negative", _set("architecture", "filters", value=-8), "filters must be"),
    (
        "mlp hidden asks for 4 TB",
        _set("architecture", value={"kind": "mlp", "in_features": 1, "hidden": [10**6, 10**6]}),
        "hidden_width",
    ),
    (
        "mlp hidden is a number",
        _set("architecture", value={"kind": "mlp", "hidden": 40}),
        "hidden must be a list",
    ),
    (
        "within each bound, too large together",
        _set(
            "architecture",
            value={"kind": "mlp", "in_features": 16_384, "hidden": [16_384] * 16},
        ),
        "parameters",
    ),
    ("unknown architecture field", _set("architecture", "depth", value=3), "unknown"),
    ("task unknown", _set("task", value="poetry"), "incomplete or invalid"),
    ("head unknown", _set("head", value=5), "incomplete or invalid"),
    ("frozen is a number", _set("adaptation", "frozen", value=5), "incomplete or invalid"),
    ("format_version missing", _set("format_version", value=None), "format_version"),
]


def honest_card() -> str:
    return json.dumps(_card())


def crafted_card(edit: Callable[[dict[str, Any]], Any]) -> str:
    return json.dumps(edit(copy.deepcopy(_card())))
