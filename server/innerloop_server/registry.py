"""The checkpoints a server serves: every ``*.safetensors`` in a folder, by file name.

A file that cannot be loaded is logged with its :class:`~innerloop.checkpoint.CheckpointError`
message and skipped; the others are still served. Any other exception a crafted file provokes
(a bug we have not met yet, ``MemoryError``) is caught per file too: one bad file never stops
start-up while good ones sit beside it. A model's name is its file name without
``.safetensors`` (``checkpoints/omniglot.safetensors`` is ``omniglot``). The default model is
``omniglot`` when present, otherwise the first name alphabetically.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from innerloop.checkpoint import CheckpointError, load_checkpoint, read_card
from innerloop.learner import Learner
from innerloop_server.errors import request_error
from innerloop_server.limits import Limits

log = logging.getLogger("innerloop.server")

PREFERRED_DEFAULT = "omniglot"


@dataclass
class Model:
    """One servable checkpoint."""

    name: str
    path: Path
    learner: Learner
    card: dict[str, Any]

    @property
    def task(self) -> str:
        return self.learner.task

    @property
    def input_kind(self) -> str:
        return str(self.card["input"]["kind"])

    @property
    def image_size(self) -> int:
        return int(self.card["input"]["size"])

    @property
    def features(self) -> int:
        return int(self.card["input"]["features"])

    @property
    def targets(self) -> int:
        return int(self.card["input"]["targets"])


@dataclass
class Registry:
    models: dict[str, Model] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # file name -> why

    @classmethod
    def from_folder(cls, folder: str | Path) -> Registry:
        folder = Path(folder)
        return cls.from_paths(sorted(folder.glob("*.safetensors")))

    @classmethod
    def from_paths(cls, paths: Iterable[Path], strict: bool = False) -> Registry:
        """Load ``paths``; with ``strict`` a file that fails raises instead of being skipped."""
        registry = cls()
        for path in paths:
            try:
                learner, card = load_checkpoint(path)
                _check_servable(path, learner, card)
            except Exception as error:  # per file: see the module docstring
                if strict:
                    raise
                reason = (
                    str(error)
                    if isinstance(error, CheckpointError)
                    else f"{path}: cannot be loaded ({type(error).__name__}: {error})"
                )
                registry.skipped[path.name] = reason
                log.error("skipping checkpoint %s: %s", path.name, reason)
                continue
            registry.models[path.stem] = Model(path.stem, path, learner, card)
        return registry

    @property
    def names(self) -> list[str]:
        return sorted(self.models)

    @property
    def default(self) -> str | None:
        if PREFERRED_DEFAULT in self.models:
            return PREFERRED_DEFAULT
        return self.names[0] if self.models else None

    def get(self, name: str | None) -> Model:
        """The named model (default when ``None``), or a 404 that lists the models served."""
        key = self.default if name is None else name
        if key is None or key not in self.models:
            raise request_error(
                404, "model", f"unknown model {name!r}; this server has: {', '.join(self.names)}"
            )
        return self.models[key]

    def to(self, device: str | torch.device) -> Registry:
        """Move every model's tensors to ``device`` (in place) and return the registry."""
        for model in self.models.values():
            learner = model.learner
            learner.params = {k: v.to(device) for k, v in learner.params.items()}
            learner.step_sizes = {k: v.to(device) for k, v in learner.step_sizes.items()}
        return self


def _check_servable(path: Path, learner: Learner, card: dict[str, Any]) -> None:
    spec = _section(card, "input")
    kind = spec.get("kind")
    if kind == "image":
        if int(spec.get("channels", 1)) != 1:
            raise CheckpointError(
                f"{path}: the server prepares 1-channel images; this card wants "
                f"{spec.get('channels')} channels"
            )
        if not isinstance(spec.get("size"), int):
            raise CheckpointError(f"{path}: card input.size is missing")
    elif kind == "vector":
        if not isinstance(spec.get("features"), int) or not isinstance(spec.get("targets"), int):
            raise CheckpointError(f"{path}: card input.features / input.targets are missing")
        if learner.task == "classification":
            raise CheckpointError(f"{path}: vector classification models are not servable yet")
    else:
        raise CheckpointError(f"{path}: card input.kind {kind!r} is not 'image' or 'vector'")


# ---- model cards as the server and ``innerloop models`` show them ------------------------------
def summarize_card(
    name: str, card: dict[str, Any], limits: Limits | None = None, default: bool = False
) -> dict[str, Any]:
    """What ``GET /v1/models`` returns per model: enough to build a valid request."""
    limits = limits or Limits()
    training = _section(card, "training")
    architecture = _section(card, "architecture")
    adaptation = _section(card, "adaptation")
    max_ways = card.get("max_ways")
    classification = card.get("task") == "classification"
    return {
        "name": name,
        "default": default,
        "task": card.get("task"),
        "input": card.get("input"),
        "architecture": architecture.get("kind"),
        "head": card.get("head"),
        "algorithm": training.get("algorithm"),
        "ways": (
            {"min": 2, "max": limits.ways_for(max_ways if isinstance(max_ways, int) else 2)}
            if classification
            else None
        ),
        "inner_loop": {
            **_section(card, "inner_loop"),
            "learned_step_sizes": adaptation.get("learned_step_sizes", False),
        },
        # WarpGrad: warp-layers are meta-learned but held fixed while a request adapts
        "adaptation": {
            "warp": architecture.get("warp", "none"),
            "frozen": list(adaptation.get("frozen", [])),
        },
        "trained_on": training.get("data"),
        "training": {
            k: training[k]
            for k in ("algorithm", "meta_steps_done", "seconds", "hardware", "command", "seed")
            if k in training
        },
        "evaluation": _section(card, "evaluation"),
    }


def _section(card: dict[str, Any], key: str) -> dict[str, Any]:
    """``card[key]`` when it is an object, else ``{}`` (cards come from files we do not trust)."""
    value = card.get(key)
    return value if isinstance(value, dict) else {}


def summarize_folder(
    folder: str | Path, limits: Limits | None = None
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Cards of a folder without loading tensors (for ``innerloop models --checkpoints``)."""
    cards: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            cards[path.stem] = read_card(path)
        except CheckpointError as error:
            errors[path.name] = str(error)
    default = PREFERRED_DEFAULT if PREFERRED_DEFAULT in cards else min(cards, default=None)
    summaries = []
    for name, card in cards.items():
        try:
            summaries.append(summarize_card(name, card, limits, name == default))
        except (TypeError, ValueError) as error:  # a card whose fields have the wrong types
            errors[f"{name}.safetensors"] = f"model card has fields of the wrong type ({error})"
    return summaries, errors
