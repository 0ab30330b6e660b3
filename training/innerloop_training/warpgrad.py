"""Alias of :mod:`innerloop_training.algorithms.warpgrad`, kept for one release."""

from innerloop_training.algorithms.warpgrad import (
    BUFFERS,
    OBJECTIVES,
    BufferEntry,
    ReplayBuffer,
    WarpGrad,
    WarpGradConfig,
    warp_names,
)

__all__ = [
    "BUFFERS",
    "OBJECTIVES",
    "BufferEntry",
    "ReplayBuffer",
    "WarpGrad",
    "WarpGradConfig",
    "warp_names",
]
