"""The per-request choice of loop: held out from the support set only, deterministic, exact.

A task that chose candidate ``(steps, lr)`` must get exactly what asking for that loop gives; the
choice must not look at the queries; tasks that cannot hold out (a label with one example) run
the default loop; the card carries the candidates and a corrupt list is refused.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import random_image_tasks

from innerloop.checkpoint import CheckpointError, build_card, load_checkpoint, save_checkpoint
from innerloop.learner import InnerDefaults, Learner
from innerloop.loop_choice import NOT_ELIGIBLE, eligible, normalise_candidates, work
from innerloop.models import ArchConfig

ARCH = ArchConfig(kind="conv4", image_size=8, filters=4, blocks=3, norm_groups=2)
CANDIDATES = ((3, 0.05), (3, 2.0))


def choosing_learner(scope: str = "last", candidates: tuple = CANDIDATES) -> Learner:
    inner = InnerDefaults(3, 0.05, candidates=candidates)
    return Learner.create(ARCH, "proto", inner, head_scale=0.1, seed=4).with_scope(scope)


def run(learner: Learner, batch, **kwargs):  # type: ignore[no-untyped-def]
    return learner.adapt_and_predict(
        batch.support_x,
        batch.support_y,
        batch.support_weight,
        batch.class_mask,
        batch.query_x,
        **kwargs,
    )


def test_candidates_are_normalised_with_zero_steps_and_the_default_loop() -> None:
    assert normalise_candidates([], (5, 0.1)) == ()
    assert normalise_candidates([[10, 0.1], [5, 1]], (5, 0.1)) == (
        (0, 0.1),
        (5, 0.1),
        (5, 1.0),
        (10, 0.1),
    )
    for bad in ([[-1, 0.1]], [[1, 0.0]], [[1, float("nan")]], [[1.5, 0.1]], [[1]], [[True, 1]]):
        with pytest.raises(ValueError):
            normalise_candidates(bad, (5, 0.1))
    with pytest.raises(ValueError):
        InnerDefaults(1, 0.1, candidates=((1, 0.1),), choice_folds=0)


def test_each_task_gets_exactly_the_loop_it_chose() -> None:
    learner = choosing_learner()
    batch = random_image_tasks(tasks=6, ways=3, shots=3, queries=4, seed=2)
    chosen = run(learner, batch)
    assert chosen.choice is not None
    picks = chosen.choice.chosen.tolist()
    assert all(0 <= p < len(learner.inner.candidates) for p in picks)
    for task, pick in enumerate(picks):
        steps, lr = learner.inner.candidates[pick]
        alone = run(learner, batch, steps=steps, lr=lr, choose=False)
        torch.testing.assert_close(chosen.outputs[task], alone.outputs[task], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(chosen.loss_after[task], alone.loss_after[task])


def test_the_choice_follows_the_held_out_evidence() -> None:
    learner = choosing_learner()
    batch = random_image_tasks(tasks=6, ways=3, shots=3, queries=4, seed=2)
    choice = run(learner, batch).choice
    assert choice is not None
    # two folds of one example per label: 6 held out per task
    assert choice.held_out_count.tolist() == [6] * 6
    for task, pick in enumerate(choice.chosen.tolist()):
        correct = choice.held_out_correct[task]
        assert int(correct[pick]) == int(correct.max())
        best = correct == correct.max()
        assert float(choice.held_out_loss[task, pick]) == float(
            choice.held_out_loss[task][best].min()
        )
    described = choice.describe(0)
    assert described["chosen"] == dict(
        zip(("steps", "lr"), learner.inner.candidates[int(choice.chosen[0])], strict=True)
    )
    assert len(described["candidates"]) == len(learner.inner.candidates)


def test_the_choice_ignores_the_queries_and_is_deterministic() -> None:
    learner = choosing_learner()
    batch = random_image_tasks(tasks=4, ways=3, shots=2, queries=6, seed=5)
    full = run(learner, batch)
    again = run(learner, batch)
    one_query = batch.__class__(
        batch.support_x,
        batch.support_y,
        batch.support_weight,
        batch.class_mask,
        batch.query_x[:, :1],
        batch.query_y[:, :1],
    )
    single = run(learner, one_query)
    assert full.choice is not None and again.choice is not None and single.choice is not None
    assert torch.equal(full.choice.chosen, again.choice.chosen)
    assert torch.equal(full.choice.chosen, single.choice.chosen)
    torch.testing.assert_close(single.outputs[:, 0], full.outputs[:, 0], rtol=1e-5, atol=1e-5)


def test_a_label_with_one_example_runs_the_default_loop() -> None:
    learner = choosing_learner()
    batch = random_image_tasks(tasks=3, ways=3, shots=2, queries=2, seed=7)
    weight = batch.support_weight.clone()
    weight[0, batch.support_y[0].tolist().index(1, 3)] = 0  # task 0: label 1 keeps one example
    assert eligible(batch.support_y, weight, batch.class_mask).tolist() == [False, True, True]
    uneven = batch.__class__(
        batch.support_x, batch.support_y, weight, batch.class_mask, batch.query_x, batch.query_y
    )
    chosen = run(learner, uneven)
    assert chosen.choice is not None and int(chosen.choice.chosen[0]) == NOT_ELIGIBLE
    assert chosen.choice.describe(0)["chosen"] is None
    default = run(learner, uneven, choose=False)
    torch.testing.assert_close(chosen.outputs[0], default.outputs[0], rtol=1e-5, atol=1e-5)


def test_naming_a_loop_turns_the_choice_off() -> None:
    learner = choosing_learner()
    batch = random_image_tasks(tasks=2, ways=3, shots=2, queries=2, seed=3)
    assert run(learner, batch, steps=3).choice is None
    assert run(learner, batch, lr=0.05).choice is None
    assert choosing_learner(candidates=()).choice_on is False


def test_a_diverging_loop_is_never_chosen() -> None:
    """A loop whose outputs blow up to inf/NaN labels nothing right (NaN must not win argmax)."""
    learner = choosing_learner(candidates=((3, 1e30),))
    batch = random_image_tasks(tasks=4, ways=3, shots=3, queries=3, seed=9)
    chosen = run(learner, batch)
    choice = chosen.choice
    assert choice is not None
    wrecked = learner.inner.candidates.index((3, 1e30))
    assert choice.held_out_correct[:, wrecked].tolist() == [0] * 4
    assert wrecked not in choice.chosen.tolist()
    assert torch.isfinite(chosen.outputs).all()


def test_kept_params_follow_the_choice() -> None:
    learner = choosing_learner()
    batch = random_image_tasks(tasks=3, ways=3, shots=2, queries=2, seed=1)
    chosen = run(learner, batch, keep_params=True)
    assert chosen.params is not None and chosen.choice is not None
    later = learner.predict_adapted(chosen.params, batch.query_x, batch.class_mask)
    torch.testing.assert_close(later, chosen.outputs, rtol=1e-5, atol=1e-5)


def test_the_card_carries_the_candidates(tmp_path: Path) -> None:
    learner = choosing_learner()
    path = save_checkpoint(learner, tmp_path / "m.safetensors", build_card(learner, "m"))
    loaded, _ = load_checkpoint(path)
    assert loaded.inner.candidates == learner.inner.candidates
    assert loaded.inner.choice_folds == 2 and loaded.choice_on


def test_a_corrupt_candidate_list_is_refused(tmp_path: Path) -> None:
    learner = choosing_learner()
    card = build_card(learner, "m")
    card["inner_loop"]["candidates"] = [[2, -1.0]]
    path = save_checkpoint(learner, tmp_path / "bad.safetensors", card)
    with pytest.raises(CheckpointError, match="lr must be a finite number"):
        load_checkpoint(path)


def test_the_work_of_a_choice() -> None:
    assert work(10, ((0, 0.1), (5, 0.1)), folds=2) == 2 * ((10 + 10) + (50 + 10))


def test_the_choice_does_not_depend_on_the_support_order() -> None:
    learner = choosing_learner()
    batch = random_image_tasks(tasks=5, ways=3, shots=3, queries=3, seed=11)
    order = torch.randperm(9, generator=torch.Generator().manual_seed(3))
    shuffled = batch.__class__(
        batch.support_x[:, order],
        batch.support_y[:, order],
        batch.support_weight[:, order],
        batch.class_mask,
        batch.query_x,
        batch.query_y,
    )
    a, b = run(learner, batch).choice, run(learner, shuffled).choice
    assert a is not None and b is not None
    assert torch.equal(a.chosen, b.chosen)
    assert torch.equal(a.held_out_correct, b.held_out_correct)


def test_candidates_sharing_a_step_size_share_one_trajectory_with_the_same_scores() -> None:
    """The held-out scores read off one 3-step trajectory equal those of separate 2- and
    3-step loops: the shortcut changes the cost, not the choice."""
    from innerloop.adaptation import adapt_prepared, prepare
    from innerloop.loop_choice import score

    learner = choosing_learner(candidates=((2, 0.05), (3, 0.05), (3, 2.0)))
    batch = random_image_tasks(tasks=4, ways=3, shots=3, queries=2, seed=12)
    shared = run(learner, batch).choice
    assert shared is not None
    with torch.no_grad():
        prepared = prepare(
            learner, learner.params, learner.step_sizes, batch.support_x, batch.query_x
        )

        def separately(candidate: tuple[int, float], weight: torch.Tensor) -> torch.Tensor:
            return adapt_prepared(
                prepared,
                batch.support_y,
                weight,
                batch.class_mask,
                learner.inner.loop(candidate[0], first_order=True),
                step_scale=candidate[1] / learner.inner.lr,
                query_x=prepared.support_x,
            ).outputs

        alone = score(
            separately,
            learner.inner.candidates,
            batch.support_x,
            batch.support_y,
            batch.support_weight,
            batch.class_mask,
            learner.inner.choice_folds,
        )
    assert torch.equal(shared.held_out_correct, alone.held_out_correct)
    torch.testing.assert_close(shared.held_out_loss, alone.held_out_loss, rtol=1e-5, atol=1e-6)
    assert torch.equal(shared.chosen, alone.chosen)
