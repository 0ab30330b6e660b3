"""The honest baseline: every classification evaluation scores, on the same episodes, the
nearest-prototype classifier on the un-adapted features, and the loop's paired gain over it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_image_tasks, tiny_image_learner
from innerloop_training.data import LabelledImages, default_data_root
from innerloop_training.devices import learner_to, resolve_device
from innerloop_training.episodes import EpisodeSampler
from innerloop_training.evaluation import (
    EvaluationResult,
    episode_scores,
    evaluate_learner,
    prototype_scores,
)
from innerloop_training.tasks import TaskBatch
from server_harness import REPO

from innerloop.checkpoint import read_card

DATA = default_data_root()
needs_data = pytest.mark.skipif(
    DATA is None or not (DATA / "omniglot").exists() or not (DATA / "quickdraw").exists(),
    reason="needs /work/shared/data (Omniglot and Quick Draw)",
)


def test_prototype_baseline_is_the_zero_step_answer_of_a_prototype_head() -> None:
    learner = tiny_image_learner("proto", steps=3, lr=0.5)
    batch = random_image_tasks(6, ways=4, shots=2, queries=5, seed=3)
    assert prototype_scores(learner, batch) == episode_scores(learner, batch, steps=0)


def test_prototype_baseline_of_a_zero_head_is_not_chance() -> None:
    """A zero head answers at chance before adapting; the bar it must clear is not chance."""
    learner = tiny_image_learner("zero", steps=0)
    batch = random_image_tasks(8, ways=5, shots=3, queries=6, seed=1)
    unadapted = sum(episode_scores(learner, batch)) / 8
    baseline = sum(prototype_scores(learner, batch)) / 8
    assert unadapted == pytest.approx(0.2)  # all logits equal: every query gets label 0
    assert baseline > 0.6


def test_masked_ways_never_win_the_baseline() -> None:
    """A masked way scores nothing, even when its prototype is the closest to the queries."""
    learner = tiny_image_learner("proto")
    batch = random_image_tasks(4, ways=4, shots=2, queries=3, seed=2)
    # way 4's support is class 0's queries themselves: unmasked, it takes those queries
    decoy = batch.query_y == 0
    extra_x = batch.query_x[decoy].reshape(4, 3, *batch.query_x.shape[2:])

    def with_decoy(mask_it: bool) -> TaskBatch:
        mask = torch.cat([batch.class_mask, torch.full((4, 1), not mask_it)], dim=1)
        return TaskBatch(
            torch.cat([batch.support_x, extra_x], dim=1),
            torch.cat([batch.support_y, torch.full((4, 3), 4)], dim=1),
            torch.ones(4, batch.support_y.shape[1] + 3),
            mask,
            batch.query_x,
            batch.query_y,
        )

    assert prototype_scores(learner, with_decoy(True)) == prototype_scores(learner, batch)
    assert sum(prototype_scores(learner, with_decoy(False))) < sum(prototype_scores(learner, batch))


def test_gain_is_paired_per_episode() -> None:
    # the loop is exactly 0.1 better on every episode: the paired interval is 0, whereas the
    # two accuracies' own intervals are wide
    loop = [0.5, 0.9, 0.6, 1.0]
    result = EvaluationResult("accuracy", 0.75, 0.2, 4, loop, prototype=[x - 0.1 for x in loop])
    gain, ci = result.gain or (0.0, 1.0)
    assert gain == pytest.approx(0.1) and ci == pytest.approx(0.0, abs=1e-12)
    data = result.to_dict()
    assert data["accuracy"] == 0.75 and data["prototype_accuracy"] == pytest.approx(0.65)
    assert data["gain"] == pytest.approx(0.1) and "gain_ci95" in data
    assert "per_episode" not in data and "prototype" not in data


def test_evaluate_learner_reports_the_baseline_on_the_same_tasks() -> None:
    learner = tiny_image_learner("proto", steps=2, lr=0.3)
    batches = [random_image_tasks(3, 4, 2, 4, seed=s) for s in range(2)]
    result = evaluate_learner(learner, batches, baseline=True)
    expected = [s for b in batches for s in prototype_scores(learner, b)]
    assert result.prototype == expected and len(result.per_episode) == 6


def _groups_dataset() -> tuple[LabelledImages, list[str]]:
    names, images = [], []
    for alphabet in range(4):
        for character in range(3 + alphabet):  # alphabets of 3, 4, 5 and 6 characters
            names.append(f"alpha{alphabet}/character{character:02d}")
            images.append(np.full((6, 4, 4), 10 * alphabet + character, dtype=np.uint8))
    return LabelledImages(names, images, {"dataset": "synthetic"}), [n.split("/")[0] for n in names]


def test_within_group_episodes_draw_every_class_from_one_group() -> None:
    data, groups = _groups_dataset()
    sampler = EpisodeSampler(data, ways=5, shots=1, queries=2, seed=0, groups=groups)
    batch = sampler.sample(40)
    used = set()
    for names in batch.class_names:
        alphabets = {n.split("/")[0] for n in names}
        assert len(alphabets) == 1  # one alphabet per episode
        used |= alphabets
    assert used == {"alpha2", "alpha3"}  # only the alphabets with >= 5 characters
    mixed = EpisodeSampler(data, ways=5, shots=1, queries=2, seed=0).sample(40)
    assert any(len({n.split("/")[0] for n in names}) > 1 for names in mixed.class_names)


def test_within_group_episodes_need_a_group_large_enough() -> None:
    data, groups = _groups_dataset()
    with pytest.raises(ValueError, match="no group has 7 usable classes"):
        EpisodeSampler(data, ways=7, shots=1, queries=2, seed=0, groups=groups)


def test_devices_resolve_and_move() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_evaluation_matches_cpu() -> None:
    learner = tiny_image_learner("proto", steps=2, lr=0.3)
    batches = [random_image_tasks(3, 4, 2, 4, seed=s) for s in range(2)]
    cpu = evaluate_learner(learner, batches, baseline=True)
    gpu = evaluate_learner(
        learner_to(learner, torch.device("cuda")),
        batches,
        baseline=True,
        device=torch.device("cuda"),
    )
    assert gpu.mean == pytest.approx(cpu.mean, abs=0.02)
    assert gpu.prototype == pytest.approx(cpu.prototype, abs=0.05)


def evaluate(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "innerloop.cli", "evaluate", *args, "--threads", "1"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@needs_data
def test_evaluate_json_carries_baseline_and_gain_across_domains() -> None:
    """The Omniglot model on Quick Draw categories, one command; 0 steps is the baseline."""
    checkpoint = str(REPO / "checkpoints" / "omniglot.safetensors")
    common = ["--ways", "5", "--shots", "1", "--episodes", "4", "--json"]
    loop = evaluate(checkpoint, "--dataset", "quickdraw", "--steps", "2", "--lr", "0.05", *common)
    assert loop.returncode == 0, loop.stdout + loop.stderr
    result = json.loads(loop.stdout.splitlines()[-1])
    assert result["dataset"] == "quickdraw" and result["episodes"] == 4
    for key in ("accuracy", "prototype_accuracy", "gain", "gain_ci95"):
        assert isinstance(result[key], float)
    assert result["gain"] == pytest.approx(result["accuracy"] - result["prototype_accuracy"])
    zero = evaluate(checkpoint, "--dataset", "quickdraw", "--steps", "0", *common)
    assert zero.returncode == 0, zero.stdout + zero.stderr
    baseline = json.loads(zero.stdout.splitlines()[-1])
    assert baseline["gain"] == 0.0
    assert baseline["prototype_accuracy"] == result["prototype_accuracy"]


@needs_data
def test_within_alphabet_and_scope_are_recorded_under_their_own_keys(tmp_path: Path) -> None:
    path = tmp_path / "omniglot.safetensors"
    shutil.copy(REPO / "checkpoints" / "omniglot.safetensors", path)
    served_scope = read_card(path)["adaptation"].get("scope", "all")
    other = "film" if served_scope != "film" else "last"
    done = evaluate(
        str(path), "--ways", "5", "--shots", "1", "--episodes", "3", "--within-alphabet",
        "--scope", other, "--steps", "1", "--record", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["scope"] == other and result["within"] == "alphabet"
    card = read_card(path)
    assert f"omniglot/test/5way1shot/within-alphabet/scope-{other}" in card["evaluation"]
    assert card["adaptation"].get("scope", "all") == served_scope  # the file is unchanged
