"""Meta-learners: how one meta-batch of tasks updates the learner's starting point.

One module per family, the registry of method names here:

- ``base.py``: :class:`MetaAlgorithm`, :class:`OuterConfig` and each method's default outer
  optimiser, :func:`query_metrics` and the helpers the trajectory-based methods share;
- ``maml.py``: ``maml``, ``fomaml``, ``metasgd`` (:class:`GradientMetaLearner`);
- ``reptile.py``: ``reptile``; ``leap.py``: ``leap``; ``warpgrad.py``: ``warp``, ``warp-leap``;
- ``baselines.py``: the ``ft`` / ``no`` baselines.

:data:`REGISTRY` maps each name to its class, or to a factory where the class needs more than
the learner, a first-order inner loop and the outer optimiser; :func:`build_algorithm` builds
from it, and :data:`ALGORITHMS` (every name, the CLI's choices) is its keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from innerloop.adaptation import InnerLoop
from innerloop.learner import Learner
from innerloop_training.algorithms.base import (
    OUTER_OPTIMIZERS,
    MetaAlgorithm,
    OuterConfig,
    default_outer,
    query_metrics,
    resolve_outer,
)
from innerloop_training.algorithms.baselines import MultiHeadFineTuning, NoMetaTraining
from innerloop_training.algorithms.leap import Leap
from innerloop_training.algorithms.maml import GradientMetaLearner, multi_step_weights
from innerloop_training.algorithms.reptile import Reptile, reptile_adapted_params
from innerloop_training.algorithms.warpgrad import WarpGrad, WarpGradConfig

__all__ = [
    "ALGORITHMS",
    "MULTI_STEP_LOSS",
    "OUTER_OPTIMIZERS",
    "REGISTRY",
    "BuildOptions",
    "Factory",
    "GradientMetaLearner",
    "MetaAlgorithm",
    "OuterConfig",
    "Reptile",
    "build_algorithm",
    "default_outer",
    "multi_step_weights",
    "query_metrics",
    "reptile_adapted_params",
    "resolve_outer",
]


@dataclass(frozen=True)
class BuildOptions:
    """What :func:`build_algorithm` was given beyond learner and loops; each factory reads the
    options of its method and ignores the rest."""

    warp: WarpGradConfig | None = None  # warp, warp-leap (None: WarpGradConfig's defaults)
    learn_step_sizes: bool = False  # the MAML family (Meta-SGD always learns them)
    multi_step_loss: int = 0  # the MAML family
    seed: int = 0  # ft: its per-task heads' init


# name, learner, inner loop (as the caller set it), outer optimiser, options
Factory = Callable[[str, Learner, InnerLoop, OuterConfig, BuildOptions], MetaAlgorithm]


def _gradient_based(
    name: str, learner: Learner, inner: InnerLoop, outer: OuterConfig, options: BuildOptions
) -> MetaAlgorithm:
    """maml: second order; fomaml: first order; metasgd: as the caller's loop asks."""
    first_order = {"maml": False, "fomaml": True}.get(name, inner.first_order)
    loop = replace(inner, first_order=first_order)
    return GradientMetaLearner(
        name, learner, loop, outer, options.learn_step_sizes, options.multi_step_loss
    )


def _warpgrad(
    name: str, learner: Learner, inner: InnerLoop, outer: OuterConfig, options: BuildOptions
) -> MetaAlgorithm:
    """warp, warp-leap: ``learn_init`` is set from the name."""
    config = replace(options.warp or WarpGradConfig(), learn_init=name == "warp-leap")
    return WarpGrad(learner, replace(inner, first_order=True), outer, config, name=name)


def _fine_tuning(
    name: str, learner: Learner, inner: InnerLoop, outer: OuterConfig, options: BuildOptions
) -> MetaAlgorithm:
    del name
    return MultiHeadFineTuning(learner, replace(inner, first_order=True), outer, options.seed)


# every method: its class (built as ``cls(learner, first-order inner loop, outer)``), or a
# factory where it needs more
REGISTRY: dict[str, type[MetaAlgorithm] | Factory] = {
    "maml": _gradient_based,
    "fomaml": _gradient_based,
    "metasgd": _gradient_based,
    "reptile": Reptile,
    "leap": Leap,
    "warp": _warpgrad,
    "warp-leap": _warpgrad,
    "ft": _fine_tuning,
    "no": NoMetaTraining,
}

ALGORITHMS = tuple(REGISTRY)
MULTI_STEP_LOSS = tuple(name for name, entry in REGISTRY.items() if entry is _gradient_based)


def build_algorithm(
    name: str,
    learner: Learner,
    inner: InnerLoop,
    outer: OuterConfig,
    warp: WarpGradConfig | None = None,
    learn_step_sizes: bool = False,
    multi_step_loss: int = 0,
    seed: int = 0,
) -> MetaAlgorithm:
    """The meta-learner for ``name``; ``inner.first_order`` is set to what the method needs.

    ``warp`` configures ``warp`` / ``warp-leap`` (default :class:`WarpGradConfig`; its
    ``learn_init`` is set from the name). ``learn_step_sizes``: the MAML family also learns
    the learner's step sizes, whatever their shape (Meta-SGD always does). ``multi_step_loss``:
    MAML++'s annealed multi-step loss over that many meta-steps (MAML family only). ``seed``:
    of ``ft``'s per-task heads."""
    if multi_step_loss and name not in MULTI_STEP_LOSS:
        raise ValueError(
            f"the multi-step loss is for {', '.join(MULTI_STEP_LOSS[:-1])} and "
            f"{MULTI_STEP_LOSS[-1]}, not {name}"
        )
    entry = REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"algorithm {name!r} is not one of {ALGORITHMS}")
    if isinstance(entry, type):
        return entry(learner, replace(inner, first_order=True), outer)
    options = BuildOptions(warp, learn_step_sizes, multi_step_loss, seed)
    return entry(name, learner, inner, outer, options)
