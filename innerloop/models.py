"""Network bodies, rebuilt from the architecture config stored in a checkpoint card.

A body is a plain ``nn.Sequential`` used only as a template: its weights live in a parameter
dict and are applied with ``torch.func.functional_call``, so one module serves any number of
per-task parameter sets at once under ``vmap``.

Normalisation is per-sample group normalisation: each sample is normalised on its own, so a
query's prediction never depends on the other queries in a request (BatchNorm's batch statistics
would).

WarpGrad (Flennerhag et al., ICLR 2020) bodies interleave the task-adaptable layers with
*warp-layers* (``ArchConfig.warp``): meta-learned layers the inner loop never moves, which
precondition the adaptable layers' gradients. A warp-layer follows every adaptable block and its
parameters are named ``body.<i>.warp.*`` (:func:`is_warp_parameter`), so a checkpoint says which
tensors are warp parameters by their names alone; :class:`~innerloop.learner.Learner` puts them in
``frozen``. Warp-layers start as the identity and do not draw from the RNG, so a warped body
computes exactly what the unwarped body with the same seed computes until meta-training moves
them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURES = ("conv4", "mlp")
# none | linear (1x1 conv; a square linear map for mlp) | conv (one 3x3 conv) | residual
# (x + conv(relu(norm(conv(x)))), per-sample norm; for mlp x + linear(relu(linear(x))))
WARP_KINDS = ("none", "linear", "conv", "residual")


@dataclass(frozen=True)
class ArchConfig:
    """Everything needed to rebuild a body; serialised into the checkpoint card."""

    kind: str = "conv4"
    # conv4
    in_channels: int = 1
    image_size: int = 28
    filters: int = 64
    blocks: int = 4
    norm_groups: int = 8
    # mlp
    in_features: int = 1
    hidden: tuple[int, ...] = (40, 40)
    out_features: int = 1
    # WarpGrad warp-layers after every adaptable block (see the module docstring)
    warp: str = "none"
    # residual adapters (conv4): a 1x1 convolution beside every 3x3 one and a linear map on the
    # features, both starting as "no change" (see ResidualAdapterConv2d, FeatureMap)
    adapters: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ARCHITECTURES:
            raise ValueError(f"architecture kind {self.kind!r} is not one of {ARCHITECTURES}")
        if self.warp not in WARP_KINDS:
            raise ValueError(f"warp {self.warp!r} is not one of {WARP_KINDS}")
        if self.kind == "mlp" and self.warp == "conv":
            raise ValueError("warp='conv' needs a conv4 body; use 'linear' or 'residual' for mlp")
        if self.adapters and self.kind != "conv4":
            raise ValueError("residual adapters are for conv4 bodies")
        if self.kind == "conv4" and self.norm_groups and self.filters % self.norm_groups:
            raise ValueError(f"filters={self.filters} is not divisible by {self.norm_groups=}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hidden"] = list(self.hidden)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown architecture fields {sorted(unknown)}")
        values = dict(data)
        if "hidden" in values:
            values["hidden"] = tuple(int(h) for h in values["hidden"])
        return cls(**values)

    @property
    def is_image_model(self) -> bool:
        return self.kind == "conv4"


class SampleGroupNorm(nn.Module):
    """Group normalisation of each sample on its own (no batch statistics), as ``nn.GroupNorm``.

    A module of our own only so that checkpoints keep their parameter names; the maths is
    ``F.group_norm``'s fused kernel, measured 5.5x faster than the same normalisation written
    with plain reductions on Conv4's largest activation (``benchmarks/bench_arithmetic.py``),
    twice differentiable (second-order MAML) and batched by ``vmap`` with per-task affine
    parameters (the ``film`` scope).
    """

    def __init__(self, groups: int, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.groups = groups
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.groups, self.weight, self.bias, self.eps)


class ResidualAdapterConv2d(nn.Conv2d):
    """A 3x3 convolution with a parallel 1x1 one beside it (TSA's residual adapter, Li et al.
    2022): ``conv(x) + adapter(x)``. The adapter starts at zero, so a body with adapters
    computes exactly what the same body without them does until the inner loop moves them;
    its tensor is ``body.<i>.adapter``, next to the convolution's own (layer indices and
    checkpoint names of the convolution are unchanged). The zeros draw nothing from the RNG."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=3, padding=1)
        self.adapter = nn.Parameter(torch.zeros(out_channels, in_channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + F.conv2d(x, self.adapter)


class FeatureMap(nn.Module):
    """A square linear map on the body's features, started at the identity (TSA's
    pre-classifier alignment): the prototype head then sees ``features @ weight``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


ADAPTER_SUFFIX = ".adapter"


def is_adapter_parameter(name: str, body: nn.Sequential) -> bool:
    """Whether ``body.<i>.*`` is a residual adapter or the feature map (the ``adapters``
    scope's tensors)."""
    if name.endswith(ADAPTER_SUFFIX):
        return True
    parts = name.split(".")
    if len(parts) < 3 or parts[0] != "body" or not parts[1].isdigit():
        return False
    index = int(parts[1])
    return index < len(body) and isinstance(body[index], FeatureMap)


def _conv_block(
    in_channels: int, filters: int, norm_groups: int, adapters: bool = False
) -> list[nn.Module]:
    """conv -> norm -> max-pool -> ReLU: the same function as the usual conv -> norm -> ReLU ->
    max-pool (a monotone ReLU commutes with a max), with the ReLU on a quarter of the values.

    Measured 1.3-1.5x faster for the whole Conv4 forward on 5-20 images, one thread
    (``benchmarks/bench_arithmetic.py``); the parametrised layers keep their indices, so
    checkpoints are unaffected and every checkpoint computes exactly what it did before.
    """
    conv = (
        ResidualAdapterConv2d(in_channels, filters)
        if adapters
        else nn.Conv2d(in_channels, filters, kernel_size=3, padding=1)
    )
    layers: list[nn.Module] = [conv]
    if norm_groups:
        layers.append(SampleGroupNorm(norm_groups, filters))
    layers += [nn.MaxPool2d(2), nn.ReLU()]
    return layers


class WarpLayer(nn.Module):
    """A WarpGrad warp-layer: meta-learned, held fixed by the inner loop, identity at init.

    Its tensors live under ``.warp`` so their parameter names contain ``.warp.``. Construction
    runs inside ``fork_rng`` so adding warp-layers leaves the adaptable layers' random init
    unchanged (a warped and an unwarped body with the same seed start out computing the same
    function, which makes method comparisons start from the same point).
    """

    def __init__(self, kind: str, width: int, spatial: bool, norm_groups: int = 0) -> None:
        super().__init__()
        if kind not in WARP_KINDS[1:]:
            raise ValueError(f"warp-layer kind {kind!r} is not one of {WARP_KINDS[1:]}")
        self.residual = kind == "residual"
        with torch.random.fork_rng(devices=[]):
            self.warp = self._build(kind, width, spatial, norm_groups)

    @staticmethod
    def _build(kind: str, width: int, spatial: bool, norm_groups: int) -> nn.Module:
        def square(kernel: int) -> nn.Conv2d | nn.Linear:
            if spatial:
                return nn.Conv2d(width, width, kernel, padding=kernel // 2)
            return nn.Linear(width, width)

        if kind != "residual":
            layer = square(1 if kind == "linear" else 3)
            _identity_(layer)
            return layer
        inner: list[nn.Module] = [square(3)]
        if spatial and norm_groups:
            inner.append(SampleGroupNorm(norm_groups, width))  # per sample: no query-batch stats
        last = square(3)
        with torch.no_grad():  # zero last layer: the residual branch starts at 0 (identity)
            for tensor in last.parameters():
                tensor.zero_()
        inner += [nn.ReLU(), last]
        return nn.Sequential(*inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.warp(x)
        return x + out if self.residual else out


def _identity_(layer: nn.Conv2d | nn.Linear) -> None:
    """Set a square linear layer or a same-channels conv to the identity map."""
    with torch.no_grad():
        for tensor in layer.parameters():
            tensor.zero_()
        if isinstance(layer, nn.Linear):
            layer.weight.copy_(torch.eye(layer.out_features))
        else:
            centre = layer.kernel_size[0] // 2
            layer.weight[:, :, centre, centre] = torch.eye(layer.out_channels)


def build_body(config: ArchConfig) -> nn.Sequential:
    """The feature extractor (conv4) or the whole regressor (mlp), with warp-layers if asked."""
    warp = config.warp
    if config.kind == "conv4":
        layers: list[nn.Module] = []
        channels = config.in_channels
        size = config.image_size
        for _ in range(config.blocks):
            layers += _conv_block(channels, config.filters, config.norm_groups, config.adapters)
            channels = config.filters
            size //= 2
            if warp != "none":
                layers.append(
                    WarpLayer(warp, channels, spatial=True, norm_groups=config.norm_groups)
                )
        layers.append(nn.Flatten())
        if config.adapters:  # last, so no earlier layer's index (or checkpoint name) moves
            layers.append(FeatureMap(channels * size * size))
        return nn.Sequential(*layers)
    widths = [config.in_features, *config.hidden]
    mlp: list[nn.Module] = []
    for width_in, width_out in pairwise(widths):
        mlp += [nn.Linear(width_in, width_out), nn.ReLU()]
        if warp != "none":
            mlp.append(WarpLayer(warp, width_out, spatial=False))
    mlp.append(nn.Linear(widths[-1], config.out_features))
    return nn.Sequential(*mlp)


def apply_layer(layer: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``functional_call(layer, params, (x,))`` for one body layer, without its overhead.

    ``functional_call`` swaps the module's parameters in and out on every call, ~45 us a layer
    on this project's CPUs: 0.7-0.9 ms of a 5-drawing Conv4 forward that takes 4-5 ms, paid by
    every served request on the shared prefix. The layers a Conv4 body is made of are called as
    the ``torch.nn.functional`` ops they run (the same ops with the same arguments, so the same
    result bit for bit); any other layer (warp-layers, MLP layers) goes through
    ``functional_call``.
    """
    if type(layer) is nn.Conv2d and layer.padding_mode == "zeros":
        return F.conv2d(
            x,
            params["weight"],
            params.get("bias"),
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
        )
    if type(layer) is ResidualAdapterConv2d:
        plain = F.conv2d(x, params["weight"], params.get("bias"), layer.stride, layer.padding)
        return plain + F.conv2d(x, params["adapter"])
    if type(layer) is FeatureMap:
        return x @ params["weight"]
    if type(layer) is SampleGroupNorm:
        return F.group_norm(x, layer.groups, params["weight"], params["bias"], layer.eps)
    if type(layer) is nn.MaxPool2d:
        return F.max_pool2d(
            x, layer.kernel_size, layer.stride, layer.padding, layer.dilation, layer.ceil_mode
        )
    if type(layer) is nn.ReLU:
        return F.relu(x)
    if type(layer) is nn.Flatten:
        return x.flatten(layer.start_dim, layer.end_dim)
    out: torch.Tensor = torch.func.functional_call(layer, params, (x,))
    return out


def is_warp_parameter(name: str) -> bool:
    """Whether a parameter name (``body.<i>.warp.*``) belongs to a warp-layer."""
    return ".warp." in name


def warp_parameter_names(names: Iterable[str]) -> frozenset[str]:
    """The warp-layer parameters among ``names``: the ones the inner loop must hold fixed."""
    return frozenset(n for n in names if is_warp_parameter(n))


def feature_dim(config: ArchConfig, body: nn.Module) -> int:
    """Width of the body's output, found by a dry run so any image size works."""
    if config.kind == "mlp":
        return config.out_features
    with torch.no_grad():
        probe = torch.zeros(1, config.in_channels, config.image_size, config.image_size)
        return int(body(probe).shape[-1])


def body_parameters(body: nn.Module, prefix: str = "body.") -> dict[str, torch.Tensor]:
    """Freshly initialised parameters of a body, keyed as they are stored in checkpoints."""
    return {prefix + name: p.detach().clone() for name, p in body.named_parameters()}
