"""Self-describing checkpoints: safetensors tensors plus a JSON model card in the header.

Loading needs nothing but the file: the card rebuilds the architecture, says which parameters
adapt, how inputs are preprocessed, the inner-loop defaults, and what the model was trained and
evaluated on. No pickle is involved anywhere, and every way a file can be wrong (not
safetensors, truncated, card missing or from another format version, tensors that do not fit the
architecture, an architecture too large to build) raises :class:`CheckpointError` with a message
that says which. Sizes are bounded *before* anything is allocated (:data:`ARCH_BOUNDS`,
:data:`MAX_PARAMETERS`), so a crafted card asking for terabytes is refused, not attempted.
"""

from __future__ import annotations

import json
import os
import tempfile
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from innerloop.learner import InnerDefaults, Learner
from innerloop.models import ArchConfig
from innerloop.preprocessing import ImageSpec
from innerloop.scopes import HEAD_LOG_SCALE

FORMAT = "innerloop-checkpoint"
FORMAT_VERSION = 1
CARD_KEY = "innerloop_card"
PARAM_PREFIX = "param/"
STEP_PREFIX = "step_size/"


# Generous bounds on what a card may ask to build (the shipped models are far inside them).
ARCH_BOUNDS = {
    "in_channels": 4,
    "image_size": 512,
    "filters": 1024,
    "blocks": 8,
    "norm_groups": 1024,
    "in_features": 100_000,
    "out_features": 10_000,
    "hidden_width": 16_384,
    "hidden_layers": 16,
    "max_ways": 10_000,
}
MAX_PARAMETERS = 100_000_000  # 400 MB of float32
MAX_ACTIVATIONS = 64 * 1024 * 1024  # one image's widest feature map, in elements


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with the reason in the message."""


def build_card(learner: Learner, name: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model card for a learner; ``extra`` adds training/evaluation sections."""
    if learner.arch.is_image_model:
        spec = ImageSpec(size=learner.arch.image_size, channels=learner.arch.in_channels)
        input_spec: dict[str, Any] = {"kind": "image", **spec.to_dict()}
    else:
        input_spec = {
            "kind": "vector",
            "features": learner.arch.in_features,
            "targets": learner.arch.out_features,
        }
    card: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "task": learner.task,
        "architecture": learner.arch.to_dict(),
        "head": learner.head,
        # the proto head's meta-learned logit scale (None: unscaled distances)
        "head_scale": learner.head_scale,
        "input": input_spec,
        "max_ways": learner.max_ways,
        "adaptation": {
            "frozen": sorted(learner.frozen),
            "scope": learner.scope,
            "learned_step_sizes": learner.learned_step_sizes,
        },
        "inner_loop": {
            "steps": learner.inner.steps,
            "lr": learner.inner.lr,
            "optimizer": learner.inner.optimizer,
            "tolerance": learner.inner.tolerance,
            # the per-request choice (innerloop.loop_choice): empty when it is off
            "candidates": [list(c) for c in learner.inner.candidates],
            "choice_folds": learner.inner.choice_folds,
        },
        "training": {},
        "evaluation": {},
    }
    card.update(extra or {})
    return card


def save_checkpoint(learner: Learner, path: str | Path, card: dict[str, Any]) -> Path:
    """Write atomically, so an interrupted save never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        PARAM_PREFIX + k: v.detach().to("cpu", torch.float32).contiguous()
        for k, v in learner.params.items()
    }
    tensors.update(
        {
            STEP_PREFIX + k: v.detach().to("cpu", torch.float32).contiguous()
            for k, v in learner.step_sizes.items()
        }
    )
    blob = save_bytes(tensors, metadata={CARD_KEY: json.dumps(card, sort_keys=True)})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(blob)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; servers often run as another user
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_card(path: str | Path) -> dict[str, Any]:
    """The card alone, without materialising the tensors (used by ``innerloop models``)."""
    path = Path(path)
    try:
        return _parse_card(path, path.read_bytes())
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read checkpoint ({error.strerror})") from error


def load_checkpoint(path: str | Path) -> tuple[Learner, dict[str, Any]]:
    """Rebuild the learner and return it with its card, or raise :class:`CheckpointError`."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read checkpoint ({error.strerror})") from error
    card = _parse_card(path, blob)
    try:
        tensors = load_bytes(blob)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: tensor data is corrupt or truncated ({error})") from error
    return _learner_from(path, card, tensors), card


def _parse_card(path: Path, blob: bytes) -> dict[str, Any]:
    if len(blob) < 8:
        raise CheckpointError(f"{path}: not a safetensors file (only {len(blob)} bytes)")
    header_len = int.from_bytes(blob[:8], "little")
    if header_len <= 0 or 8 + header_len > len(blob):
        raise CheckpointError(
            f"{path}: not a safetensors file or truncated (header claims {header_len} bytes, "
            f"file has {len(blob)})"
        )
    try:
        header = json.loads(blob[8 : 8 + header_len])
        metadata = header.get("__metadata__") or {}
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
        raise CheckpointError(f"{path}: safetensors header is not valid JSON") from error
    if CARD_KEY not in metadata:
        raise CheckpointError(f"{path}: safetensors file has no innerloop model card")
    try:
        card = json.loads(metadata[CARD_KEY])
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: model card is not valid JSON ({error})") from error
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise CheckpointError(f"{path}: model card is not an {FORMAT} card")
    if card.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: card format_version {card.get('format_version')!r} is not supported "
            f"(this innerloop reads version {FORMAT_VERSION})"
        )
    return card


def _learner_from(path: Path, card: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Learner:
    try:
        _check_size(path, card["architecture"], card["max_ways"])
        arch = ArchConfig.from_dict(card["architecture"])
        inner = InnerDefaults(**card["inner_loop"])
        frozen = frozenset(card["adaptation"]["frozen"])
        learner = Learner(
            arch, card["task"], card["head"], {}, {}, inner, frozen, int(card["max_ways"])
        )
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(f"{path}: model card is incomplete or invalid ({error})") from error
    params = {k[len(PARAM_PREFIX) :]: v for k, v in tensors.items() if k.startswith(PARAM_PREFIX)}
    steps = {k[len(STEP_PREFIX) :]: v for k, v in tensors.items() if k.startswith(STEP_PREFIX)}
    expected = Learner.create(
        arch,
        learner.head,
        inner,
        _has_learned_step_sizes(steps),
        learner.max_ways,
        head_scale=1.0 if HEAD_LOG_SCALE in params and learner.head == "proto" else None,
    )
    unfrozen_warp = sorted(expected.frozen - frozen)
    if unfrozen_warp:  # the inner loop would move them, with no step size to do it
        raise CheckpointError(
            f"{path}: warp parameters must be listed in the card's adaptation.frozen "
            f"(missing {unfrozen_warp[:5]})"
        )
    expected_frozen = {k: v for k, v in expected.step_sizes.items() if k not in frozen}
    _check_shapes(path, "parameter", params, expected.params)
    _check_shapes(path, "step size", steps, expected_frozen)
    for prefix, group in ((PARAM_PREFIX, params), (STEP_PREFIX, steps)):
        for name, value in group.items():
            if not torch.isfinite(value).all():
                raise CheckpointError(f"{path}: tensor {prefix}{name} contains NaN or infinity")
    # the architecture's order, not the file's: optimiser state and logs rely on a stable order
    learner.params = {k: params[k] for k in expected.params}
    learner.step_sizes = {k: steps[k] for k in expected_frozen}
    return learner


def _check_size(path: Path, architecture: Any, max_ways: Any) -> None:
    """Refuse architectures beyond :data:`ARCH_BOUNDS` before building them.

    The estimate counts the weights of the body, its warp-layers and a linear head over
    ``max_ways`` classes; it is an upper bound of the real count within a few percent.
    """
    if not isinstance(architecture, dict):
        raise CheckpointError(f"{path}: card architecture must be an object")
    sizes: dict[str, int] = {"max_ways": max_ways}
    for name in ("in_channels", "image_size", "filters", "blocks", "norm_groups"):
        sizes[name] = architecture.get(name, 1)
    for name in ("in_features", "out_features"):
        sizes[name] = architecture.get(name, 1)
    hidden = architecture.get("hidden", [40, 40])
    if not isinstance(hidden, list | tuple):
        raise CheckpointError(f"{path}: card architecture.hidden must be a list of integers")
    if not all(_is_int(width) for width in hidden):
        raise CheckpointError(f"{path}: card architecture.hidden must be a list of integers")
    sizes["hidden_layers"] = len(hidden)
    sizes["hidden_width"] = max(hidden, default=0)
    for name, value in sizes.items():
        if not _is_int(value) or value < 0:
            raise CheckpointError(f"{path}: card {name} must be a non-negative integer")
        if value > ARCH_BOUNDS[name]:
            raise CheckpointError(
                f"{path}: card asks for {name} = {value}; at most {ARCH_BOUNDS[name]} supported"
            )
    warp = 3 if architecture.get("warp", "none") != "none" else 1
    if architecture.get("kind", "conv4") == "conv4":
        filters, side = sizes["filters"], sizes["image_size"]
        weights = 9 * filters * (sizes["in_channels"] + warp * filters * sizes["blocks"])
        pooled = max(side >> min(sizes["blocks"], 30), 1)
        weights += filters * pooled * pooled * max_ways  # a head over the flattened features
        activations = max(filters, sizes["in_channels"]) * side * side
    else:
        widths = [sizes["in_features"], *hidden, sizes["out_features"]]
        weights = sum(a * b for a, b in pairwise(widths))
        weights += 2 * sum(w * w for w in hidden) if warp > 1 else 0
        activations = max(widths)
    if weights > MAX_PARAMETERS or activations > MAX_ACTIVATIONS:
        raise CheckpointError(
            f"{path}: the card's architecture would need about {weights:,} parameters "
            f"({activations:,} activations per input); at most {MAX_PARAMETERS:,} "
            f"({MAX_ACTIVATIONS:,}) supported"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _has_learned_step_sizes(steps: dict[str, torch.Tensor]) -> bool:
    return any(v.dim() > 0 for v in steps.values())


def _check_shapes(
    path: Path, what: str, found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> None:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{path}: {what} tensors do not match the architecture in the card "
            f"(missing {missing[:5]}, unexpected {extra[:5]})"
        )
    for name, tensor in found.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"{path}: {what} {name!r} has shape {tuple(tensor.shape)}, the architecture "
                f"needs {tuple(expected[name].shape)}"
            )
