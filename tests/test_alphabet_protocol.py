"""The alphabet-as-task protocol: splits never pre-train on images_evaluation, tasks are padded
correctly, and a tiny end-to-end comparison writes its table, figure and loadable checkpoints."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from innerloop_training.alphabet_protocol import (
    METHODS,
    AlphabetTask,
    AlphabetTaskSource,
    Augmentation,
    ProtocolConfig,
    alphabet_tasks,
    area_under_curve,
    check_split,
    held_out_batch,
    run_comparison,
    split_alphabets,
    t_interval,
    wilson_interval,
)
from innerloop_training.data.labelled_images import LabelledImages
from innerloop_training.data.omniglot import omniglot_alphabets

from innerloop.checkpoint import load_checkpoint
from innerloop.models import is_warp_parameter

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def synthetic(
    background: bool,
    characters: int = 3,
    drawings: int = 4,
    size: int = 16,
    small: dict[str, int] | None = None,
) -> LabelledImages:
    """Omniglot-named classes of random strokes; ``small`` gives some alphabets fewer chars."""
    rng = np.random.default_rng(0 if background else 1)
    names, images = [], []
    for alphabet in omniglot_alphabets(background=background):
        for c in range((small or {}).get(alphabet, characters)):
            names.append(f"{alphabet}/character{c + 1:02d}")
            base = (rng.random((size, size)) > 0.8).astype(np.uint8) * 255
            images.append(np.stack([np.roll(base, d, axis=1) for d in range(drawings)]))
    return LabelledImages(names, images, {"dataset": "synthetic"})


def test_split_uses_background_for_pretraining_and_evaluation_for_testing() -> None:
    config = ProtocolConfig(test_alphabets=7, seed=3)
    order, test = split_alphabets(config)
    assert sorted(order) == sorted(omniglot_alphabets(background=True))
    assert len(test) == 7 and set(test) <= set(omniglot_alphabets(background=False))
    data = synthetic(True)
    evaluation = synthetic(False)
    pool = alphabet_tasks(data, order[:5], 20, 1, seed=0)
    check_split(pool, alphabet_tasks(evaluation, test, 20, 1, seed=0))
    leaked = alphabet_tasks(evaluation, test[:1], 20, 1, seed=0)
    with pytest.raises(ValueError, match="images_background"):
        check_split(pool + leaked, [])
    with pytest.raises(ValueError, match="test alphabets were used"):
        check_split(pool, pool[:1])


def test_pretraining_tasks_are_padded_without_fake_labels() -> None:
    data = synthetic(True, characters=4, drawings=6, small={"Arcadian": 2})
    tasks = alphabet_tasks(data, ["Arcadian", "Armenian"], characters=4, holdout=2, seed=0)
    assert [t.ways for t in tasks] == [2, 4]
    assert tasks[0].train.shape == (2, 4, 16, 16) and tasks[0].held_out.shape == (2, 2, 16, 16)
    source = AlphabetTaskSource(
        tasks, shots=3, queries=2, max_ways=4, augmentation=Augmentation(rotation=30), seed=0
    )
    batch = source.sample(4)  # every alphabet once before any twice: two of each
    assert batch.support_x.shape == (4, 12, 1, 16, 16) and batch.query_x.shape == (4, 8, 1, 16, 16)
    ways = batch.class_mask.sum(-1).tolist()
    assert sorted(ways) == [2, 2, 4, 4]
    for b, w in enumerate(ways):
        real = batch.support_weight[b] > 0
        assert int(real.sum()) == 3 * w  # padded support rows carry weight 0
        assert set(batch.support_y[b][real].tolist()) == set(range(w))
        assert int(batch.query_y[b].max()) < w  # padded query rows repeat real ones
    assert float(batch.support_x.max()) <= 1.0


def test_augmentation_and_held_out_batch() -> None:
    images = torch.zeros(2, 1, 16, 16)
    images[:, :, 6:10, 6:10] = 1.0
    generator = torch.Generator().manual_seed(0)
    same = Augmentation(rotation=0, translate=0, scale=(1.0, 1.0))
    assert same(images, generator) is images
    moved = Augmentation(rotation=90, translate=0.1, scale=(0.9, 1.1))(images, generator)
    assert moved.shape == images.shape and not torch.equal(moved, images)
    assert float(moved.sum()) == pytest.approx(float(images.sum()), rel=0.35)  # ink is kept
    task = AlphabetTask(
        "A",
        ["A/character01", "A/character02"],
        np.zeros((2, 3, 16, 16), np.uint8),
        np.full((2, 2, 16, 16), 255, np.uint8),
    )
    batch = held_out_batch(task, shots=2)
    assert batch.support_x.shape == (1, 4, 1, 16, 16) and batch.query_y.tolist() == [[0, 0, 1, 1]]
    assert float(batch.query_x.max()) == 1.0


def test_area_under_curve() -> None:
    assert area_under_curve([0, 1, 2], [0.0, 1.0, 1.0]) == pytest.approx(0.75)
    assert area_under_curve([0, 2, 4], [0.5, 0.5, 0.5]) == pytest.approx(0.5)
    assert area_under_curve([0], [0.3]) == pytest.approx(0.3)


def tiny_config(**overrides: Any) -> ProtocolConfig:
    """A comparison of every method that runs in seconds on synthetic alphabets."""
    settings: dict[str, Any] = dict(
        test_alphabets=2,
        characters=3,
        holdout=1,
        shots=2,
        queries=1,
        image_size=16,
        filters=8,
        inner_steps=2,
        maml_steps=1,
        test_steps=2,
        meta_steps=1,
        meta_batch=2,
        warp_batch=2,
        warp_store_every=1,
        inner_lr=0.01,
    )
    return ProtocolConfig(**{**settings, **overrides})


def test_tiny_comparison_end_to_end(tmp_path: Path) -> None:
    config = tiny_config(pretrain_alphabets=(1, 2))
    config = replace(config, augmentation=Augmentation(rotation=10, translate=0.1))
    report = run_comparison(
        config,
        tmp_path,
        background=synthetic(True),
        evaluation=synthetic(False),
        log=lambda line: None,
    )
    assert set(report["results"]) == set(METHODS)
    for per_k in report["results"].values():
        assert set(per_k) == {"1", "2"}
        for result in per_k.values():
            assert 0.0 <= result["final_accuracy"] <= 1.0 and len(result["curve"]) == 3
            low, high = result["ci95_queries"]
            assert low <= result["final_accuracy"] <= high and result["queries"] == 2 * 3 * 1
            low, high = result["ci95_alphabets"]
            assert (
                low <= result["final_accuracy"] + 1e-9 and result["final_accuracy"] <= high + 1e-9
            )
    methods = report["methods"]
    assert methods["reptile"]["outer"] == {"optimizer": "sgd", "lr": 0.1, "grad_clip": 0.0}
    assert methods["maml"]["outer"] == {"optimizer": "adam", "lr": 1e-3, "grad_clip": 10.0}
    assert methods["warp-leap"]["warpgrad"]["buffer"] == "batch"
    assert methods["warp-leap"]["warpgrad"]["warp_lr"] == 0.1
    assert report["results"]["no"]["1"] == report["results"]["no"]["2"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["test_alphabets"] == report["test_alphabets"]
    table = (tmp_path / "results.md").read_text()
    assert "| warp-leap |" in table and "k=2" in table
    assert (tmp_path / "accuracy_vs_alphabets.png").stat().st_size > 1000
    learner, card = load_checkpoint(tmp_path / "checkpoints" / "warp-k2.safetensors")
    assert card["training"]["algorithm"] == "warp" and learner.arch.warp == "conv"
    assert card["training"]["outer"]["optimizer"] == "sgd"
    assert card["training"]["warpgrad"]["warp_batch"] == 2
    assert learner.frozen and all(is_warp_parameter(k) for k in learner.frozen)


def test_confidence_intervals() -> None:
    low, high = wilson_interval(50, 100)
    assert (round(low, 3), round(high, 3)) == (0.404, 0.596)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    low, high = t_interval([0.5, 0.6, 0.7])  # mean 0.6, sd 0.1, t(2) = 4.303
    assert low == pytest.approx(0.6 - 4.303 * 0.1 / 3**0.5)
    assert high == pytest.approx(0.6 + 4.303 * 0.1 / 3**0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch")
def test_tiny_comparison_on_cuda_matches_cpu(tmp_path: Path) -> None:
    """``innerloop compare --device cuda``: every method runs on the GPU and ``no`` (nothing
    trained, the same init and test tasks) scores what it scores on the CPU."""
    config = tiny_config(pretrain_alphabets=(1,))
    runs = {
        device: run_comparison(
            config,
            tmp_path / device,
            background=synthetic(True),
            evaluation=synthetic(False),
            log=lambda line: None,
            device=device,
        )
        for device in ("cpu", "cuda")
    }
    assert set(runs["cuda"]["results"]) == set(METHODS) and runs["cuda"]["device"] == "cuda"
    on_gpu, on_cpu = (runs[d]["results"]["no"]["1"]["curve"] for d in ("cuda", "cpu"))
    assert on_gpu == pytest.approx(on_cpu, abs=0.2)
    learner, _ = load_checkpoint(tmp_path / "cuda" / "checkpoints" / "leap-k1.safetensors")
    assert all(v.device.type == "cpu" for v in learner.params.values())
