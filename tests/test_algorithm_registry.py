"""The algorithm registry: every name builds its class through ``build_algorithm`` with the
inner loop its method needs, the alphabet protocol builds through it too, and the old module
paths are aliases of the package's modules."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch
from innerloop_training import alphabet_protocol, baselines, leap, warpgrad
from innerloop_training.algorithms import (
    ALGORITHMS,
    MULTI_STEP_LOSS,
    OuterConfig,
    base,
    build_algorithm,
)
from innerloop_training.algorithms import baselines as baselines_module
from innerloop_training.algorithms import leap as leap_module
from innerloop_training.algorithms import warpgrad as warpgrad_module
from innerloop_training.algorithms.baselines import MultiHeadFineTuning, NoMetaTraining
from innerloop_training.algorithms.leap import Leap
from innerloop_training.algorithms.maml import GradientMetaLearner
from innerloop_training.algorithms.reptile import Reptile
from innerloop_training.algorithms.warpgrad import WarpGrad, WarpGradConfig

from innerloop.adaptation import InnerLoop
from innerloop.learner import InnerDefaults, Learner
from innerloop.models import ArchConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# each name's class and the inner loop's first_order, for a caller's second-order loop
EXPECTED: dict[str, tuple[type, bool]] = {
    "maml": (GradientMetaLearner, False),
    "fomaml": (GradientMetaLearner, True),
    "metasgd": (GradientMetaLearner, False),  # as the caller's loop says
    "reptile": (Reptile, True),
    "leap": (Leap, True),
    "warp": (WarpGrad, True),
    "warp-leap": (WarpGrad, True),
    "ft": (MultiHeadFineTuning, True),
    "no": (NoMetaTraining, True),
}


def learner_for(name: str) -> Learner:
    warp = "conv" if name.startswith("warp") else "none"
    arch = ArchConfig(kind="conv4", image_size=8, filters=4, blocks=3, norm_groups=2, warp=warp)
    return Learner.create(arch, "proto", InnerDefaults(2, 0.1), seed=0)


def test_the_registry_names_every_method_once() -> None:
    assert tuple(EXPECTED) == ALGORITHMS
    assert MULTI_STEP_LOSS == ("maml", "fomaml", "metasgd")


@pytest.mark.parametrize("name", ALGORITHMS)
def test_every_name_builds_its_class_with_the_loop_it_needs(name: str) -> None:
    cls, first_order = EXPECTED[name]
    algorithm = build_algorithm(name, learner_for(name), InnerLoop(2), OuterConfig())
    assert type(algorithm) is cls
    assert algorithm.name == name
    assert algorithm.loop.first_order is first_order
    assert algorithm.loop.steps == 2


def test_metasgd_keeps_a_first_order_loop_and_learns_step_sizes() -> None:
    loop = InnerLoop(2, first_order=True)
    algorithm = build_algorithm("metasgd", learner_for("metasgd"), loop, OuterConfig())
    assert isinstance(algorithm, GradientMetaLearner)
    assert algorithm.loop.first_order and algorithm.learn_step_sizes


def test_options_reach_the_method_they_are_for() -> None:
    config = WarpGradConfig(store_every=2, warp_batch=0)
    for name, learn_init in (("warp", False), ("warp-leap", True)):
        algorithm = build_algorithm(name, learner_for(name), InnerLoop(2), OuterConfig(), config)
        assert isinstance(algorithm, WarpGrad)
        assert algorithm.config == replace(config, learn_init=learn_init)
    maml = build_algorithm(
        "maml",
        learner_for("maml"),
        InnerLoop(2),
        OuterConfig(),
        learn_step_sizes=True,
        multi_step_loss=7,
    )
    assert isinstance(maml, GradientMetaLearner)
    assert maml.learn_step_sizes and maml.multi_step_loss == 7
    like = torch.zeros(())
    ft = build_algorithm("ft", learner_for("ft"), InnerLoop(2), OuterConfig(), seed=3)
    assert isinstance(ft, MultiHeadFineTuning)
    direct = MultiHeadFineTuning(learner_for("ft"), InnerLoop(2), OuterConfig(), seed=3)
    for built, expected in zip(ft.head(0, 3, 4, like), direct.head(0, 3, 4, like), strict=True):
        torch.testing.assert_close(built, expected)


def test_unknown_names_and_misplaced_options_are_refused() -> None:
    learner = learner_for("maml")
    with pytest.raises(ValueError, match="is not one of"):
        build_algorithm("mamal", learner, InnerLoop(2), OuterConfig())
    with pytest.raises(ValueError, match="multi-step loss is for maml, fomaml and metasgd, not"):
        build_algorithm("leap", learner, InnerLoop(2), OuterConfig(), multi_step_loss=5)


def test_the_alphabet_protocol_builds_through_build_algorithm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    def recording(name: str, *args: Any, **kwargs: Any) -> Any:
        calls.append((name, kwargs))
        return build_algorithm(name, *args, **kwargs)

    monkeypatch.setattr(alphabet_protocol, "build_algorithm", recording)
    config = alphabet_protocol.ProtocolConfig(filters=8, image_size=28, warp_store_every=2, seed=5)
    assert set(alphabet_protocol.METHODS) <= set(ALGORITHMS)
    for method in alphabet_protocol.METHODS:
        learner = alphabet_protocol.make_learner(method, config)
        algorithm = alphabet_protocol.make_algorithm(method, learner, config)
        assert type(algorithm) is EXPECTED[method][0]
        assert algorithm.name == method
        if isinstance(algorithm, WarpGrad):
            assert algorithm.config == alphabet_protocol.warpgrad_config(method, config)
    assert [name for name, _ in calls] == list(alphabet_protocol.METHODS)
    assert all(kwargs["seed"] == 5 for _, kwargs in calls)


def test_the_old_module_paths_are_aliases() -> None:
    assert leap.Leap is leap_module.Leap and leap.LeapConfig is leap_module.LeapConfig
    assert leap.map_tasks is base.map_tasks and leap.apply_if_finite is base.apply_if_finite
    assert warpgrad.WarpGrad is warpgrad_module.WarpGrad
    assert warpgrad.WarpGradConfig is warpgrad_module.WarpGradConfig
    assert baselines.MultiHeadFineTuning is baselines_module.MultiHeadFineTuning
    assert baselines.NoMetaTraining is baselines_module.NoMetaTraining
