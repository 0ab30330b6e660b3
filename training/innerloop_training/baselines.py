"""Alias of :mod:`innerloop_training.algorithms.baselines`, kept for one release."""

from innerloop_training.algorithms.baselines import MultiHeadFineTuning, NoMetaTraining

__all__ = ["MultiHeadFineTuning", "NoMetaTraining"]
