"""Synthetic 1-D regression task families: the classic sanity checks for an inner loop.

A *task* is one curve drawn from a family (parameters sampled uniformly from documented
ranges); its support and query points are independent uniform draws of ``x`` on ``x_range``.

- :class:`SineTasks` (Finn et al. 2017): ``y = amplitude * sin(x - phase)``,
  amplitude in [0.1, 5.0], phase in [0, pi], x in [-5, 5].
- :class:`LogisticTasks`: ``y = L / (1 + exp(-k (x - x0)))``, L in [0.5, 5.0] (height),
  k in [0.5, 3.0] (steepness), x0 in [-3, 3] (midpoint, kept inside x_range so the step is
  visible), x in [-5, 5]. A monotone family whose few-shot difficulty sits in where the step is.

``sample`` takes a ``torch.Generator`` or a ``numpy.random.Generator``, so a training loop and
an evaluation script can each own their stream; the draws are made in float64 and cast to
float32, and the order of draws is fixed (parameters, then support x, then query x).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

Range = tuple[float, float]
AnyGenerator = torch.Generator | np.random.Generator


@dataclass
class RegressionBatch:
    """A batch of B regression tasks; every tensor is float32."""

    support_x: torch.Tensor  # [B, K, 1]
    support_y: torch.Tensor  # [B, K, 1]
    query_x: torch.Tensor  # [B, Q, 1]
    query_y: torch.Tensor  # [B, Q, 1]
    params: list[dict[str, float]]

    @property
    def batch_size(self) -> int:
        return int(self.support_x.shape[0])

    def to(self, device: torch.device | str) -> RegressionBatch:
        return RegressionBatch(
            self.support_x.to(device),
            self.support_y.to(device),
            self.query_x.to(device),
            self.query_y.to(device),
            self.params,
        )


def _uniform(
    generator: AnyGenerator, shape: tuple[int, ...], low: float, high: float
) -> np.ndarray:
    if isinstance(generator, torch.Generator):
        u = torch.rand(shape, generator=generator, dtype=torch.float64).numpy()
    elif isinstance(generator, np.random.Generator):
        u = generator.random(shape)
    else:
        raise TypeError(f"generator must be torch.Generator or numpy Generator, got {generator!r}")
    return low + (high - low) * u


def _check_range(name: str, value: Range) -> Range:
    low, high = float(value[0]), float(value[1])
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"{name} range must be finite with low <= high, got {value}")
    return (low, high)


@dataclass
class RegressionTaskFamily:
    """Shared sampling; subclasses name their parameters and define the curve."""

    x_range: Range = (-5.0, 5.0)
    param_names: ClassVar[tuple[str, ...]] = ()

    def ranges(self) -> dict[str, Range]:
        return {n: _check_range(n, getattr(self, n)) for n in self.param_names}

    def curve(self, params: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def function(
        self, params: Mapping[str, float], x: np.ndarray | torch.Tensor | float
    ) -> np.ndarray | torch.Tensor | float:
        """The true curve of one task at ``x`` (for plots and error checks); keeps x's type."""
        p = {n: np.asarray(params[n], dtype=np.float64) for n in self.param_names}
        if isinstance(x, torch.Tensor):
            y = self.curve(p, x.detach().cpu().double().numpy())
            return torch.as_tensor(y, dtype=x.dtype, device=x.device)
        if isinstance(x, np.ndarray):
            return self.curve(p, x.astype(np.float64)).astype(x.dtype, copy=False)
        return float(self.curve(p, np.asarray(x, dtype=np.float64)))

    def sample(
        self, batch: int, shots: int, queries: int, generator: AnyGenerator
    ) -> RegressionBatch:
        """``batch`` tasks with ``shots`` support and ``queries`` query points each."""
        if batch < 1 or shots < 1 or queries < 0:
            raise ValueError(
                f"need batch >= 1, shots >= 1, queries >= 0; got {batch, shots, queries}"
            )
        ranges = self.ranges()
        values = {n: _uniform(generator, (batch, 1, 1), *ranges[n]) for n in self.param_names}
        x_low, x_high = _check_range("x", self.x_range)
        sx = _uniform(generator, (batch, shots, 1), x_low, x_high)
        qx = _uniform(generator, (batch, queries, 1), x_low, x_high)
        sy, qy = self.curve(values, sx), self.curve(values, qx)
        params = [{n: float(values[n][b, 0, 0]) for n in self.param_names} for b in range(batch)]

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

        return RegressionBatch(t(sx), t(sy), t(qx), t(qy), params)


@dataclass
class SineTasks(RegressionTaskFamily):
    """``y = amplitude * sin(x - phase)``; the MAML paper's regression benchmark."""

    amplitude: Range = (0.1, 5.0)
    phase: Range = (0.0, math.pi)
    x_range: Range = (-5.0, 5.0)
    param_names: ClassVar[tuple[str, ...]] = ("amplitude", "phase")

    def curve(self, params: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
        return params["amplitude"] * np.sin(x - params["phase"])


@dataclass
class LogisticTasks(RegressionTaskFamily):
    """``y = L / (1 + exp(-k (x - x0)))``: a sigmoid step of height L, steepness k, centre x0."""

    L: Range = (0.5, 5.0)
    k: Range = (0.5, 3.0)
    x0: Range = (-3.0, 3.0)
    x_range: Range = (-5.0, 5.0)
    param_names: ClassVar[tuple[str, ...]] = ("L", "k", "x0")

    def curve(self, params: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
        z = -params["k"] * (x - params["x0"])
        return params["L"] / (1.0 + np.exp(z))


TASK_FAMILIES: dict[str, type[RegressionTaskFamily]] = {
    "sine": SineTasks,
    "logistic": LogisticTasks,
}


def make_task_family(name: str, **ranges: Range) -> RegressionTaskFamily:
    """``make_task_family("sine", amplitude=(1, 2))``: a family by registry name."""
    try:
        cls = TASK_FAMILIES[name]
    except KeyError:
        raise ValueError(
            f"unknown regression family {name!r}; choose from {sorted(TASK_FAMILIES)}"
        ) from None
    return cls(**ranges)
