"""Which parameters the inner loop adapts: named presets over a learner's parameters.

What adapts decides both accuracy and cost. Adapting everything (MAML) makes every inner step a
full forward and backward pass per task with per-task convolution weights, which no batch can
share. Adapting only the per-channel affine of the normalisation layers plus the head (FiLM-style,
as task-specific-adapter methods do for out-of-domain tasks) keeps every convolution shared by all
tasks of a batch: the convolutions run as one large batch and only elementwise modulation is per
task. Adapting only the head makes the whole body a shared, once-per-request feature extractor.

A scope is stored in a checkpoint as the set of *frozen* parameter names (the card's
``adaptation.frozen``), so a file says exactly what its served loop moves; :func:`scope_of`
recovers the preset's name for display.

- ``all``: every parameter except WarpGrad warp-layers (which are meta-learned, never adapted);
- ``film``: normalisation affine (weight and bias of every group norm) plus the head;
- ``last``: the last convolutional block (conv + norm) plus the head;
- ``head``: the head only (for MLP regressors, which have no head, their last linear layer);
- ``adapters``: the residual adapters and the feature map of a body built with them
  (``ArchConfig.adapters``, TSA-style) plus the head: every convolution stays shared and
  unchanged, and the adapters start at "no change".
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from innerloop.models import SampleGroupNorm, WarpLayer, is_adapter_parameter, is_warp_parameter

ADAPT_SCOPES = ("all", "film", "last", "head", "adapters")
HEAD_PARAMS = ("head.weight", "head.bias")
# meta-learned, never adapted by any scope: the proto head's logit scale (innerloop.learner)
HEAD_LOG_SCALE = "head.log_scale"


def adapted_for_scope(body: nn.Sequential, names: Iterable[str], scope: str) -> frozenset[str]:
    """Names among ``names`` (body.* plus head.*) that the inner loop moves under ``scope``."""
    if scope not in ADAPT_SCOPES:
        raise ValueError(f"adaptation scope {scope!r} is not one of {ADAPT_SCOPES}")
    names = [n for n in names if not is_warp_parameter(n) and n != HEAD_LOG_SCALE]
    head = {n for n in names if n in HEAD_PARAMS}
    if scope == "all":
        return frozenset(names)
    layers = list(body)
    if scope == "adapters":
        adapters = {n for n in names if is_adapter_parameter(n, body)}
        if not adapters:
            raise ValueError(
                "the adapters scope needs a body built with residual adapters (innerloop train "
                "--adapters, or a checkpoint whose architecture has adapters: true)"
            )
        return frozenset(head | adapters)
    if scope == "film":
        norms = {
            i for i, layer in enumerate(layers) if isinstance(layer, SampleGroupNorm | nn.GroupNorm)
        }
        return frozenset(head | {n for n in names if _layer_index(n) in norms})
    learnable = [
        i
        for i, layer in enumerate(layers)
        if any(True for _ in layer.parameters()) and not isinstance(layer, WarpLayer)
    ]
    if scope == "head":
        if head:
            return frozenset(head)
        return frozenset(n for n in names if _layer_index(n) == learnable[-1])
    # last: the last block = from the last conv (or linear) layer to the end of the body
    starts = [i for i in learnable if isinstance(layers[i], nn.Conv2d | nn.Linear)]
    first = starts[-1] if starts else len(layers)
    return frozenset(head | {n for n in names if (_layer_index(n) or -1) >= first})


def frozen_for_scope(body: nn.Sequential, names: Iterable[str], scope: str) -> frozenset[str]:
    """The complement of :func:`adapted_for_scope`: what a checkpoint card lists as frozen.

    Raises ``ValueError`` for a scope that adapts nothing here (``film`` on an MLP, which has
    no normalisation layers): a loop that moves nothing is a configuration error, not a model.
    """
    names = list(names)
    adapted = adapted_for_scope(body, names, scope)
    if not adapted:
        raise ValueError(f"adaptation scope {scope!r} adapts no parameter of this architecture")
    return frozenset(names) - adapted


def scope_of(body: nn.Sequential, names: Iterable[str], frozen: Iterable[str]) -> str:
    """The preset whose frozen set equals ``frozen``, or ``custom``."""
    names, frozen = list(names), frozenset(frozen)
    for scope in ADAPT_SCOPES:
        adapted = adapted_for_scope(body, names, scope)
        if adapted and frozenset(names) - adapted - _warp(names) == frozen - _warp(frozen):
            return scope
    return "custom"


def _warp(names: Iterable[str]) -> frozenset[str]:
    return frozenset(n for n in names if is_warp_parameter(n))


def _layer_index(name: str) -> int | None:
    """``body.<i>.*`` -> i; anything else (head.*) -> None."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[0] == "body" and parts[1].isdigit():
        return int(parts[1])
    return None
