"""Alias of :mod:`innerloop_training.algorithms.leap`, kept for one release."""

from innerloop_training.algorithms.base import (
    apply_if_finite,
    map_tasks,
    set_gradients,
    support_and_query,
)
from innerloop_training.algorithms.leap import (
    Leap,
    LeapAccumulator,
    LeapConfig,
    leap_gradient,
    to_meta_shapes,
)

__all__ = [
    "Leap",
    "LeapAccumulator",
    "LeapConfig",
    "apply_if_finite",
    "leap_gradient",
    "map_tasks",
    "set_gradients",
    "support_and_query",
    "to_meta_shapes",
]
