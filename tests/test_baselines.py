"""The papers' baselines: ``ft`` is multi-headed fine-tuning (one head per pre-training alphabet,
fixed labels, SGD) and refuses tasks without an identity; ``no`` leaves the init alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import random_image_tasks
from innerloop_training.alphabet_protocol import (
    AlphabetTaskSource,
    Augmentation,
    ProtocolConfig,
    alphabet_tasks,
    make_algorithm,
    make_learner,
    split_alphabets,
)
from innerloop_training.baselines import MultiHeadFineTuning
from innerloop_training.data.omniglot import load_omniglot
from innerloop_training.data.registry import default_data_root

from innerloop.cli import main as innerloop_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.skipif(default_data_root() is None, reason="shared data folder is absent")
def test_ft_pretrains_one_head_per_background_alphabet_and_its_loss_goes_down() -> None:
    root = default_data_root()
    assert root is not None
    background = load_omniglot(root / "omniglot", background=True, size=28)
    config = ProtocolConfig(filters=16, inner_steps=4, meta_batch=3, shots=5, queries=1)
    order, _ = split_alphabets(config)
    pool = alphabet_tasks(background, order[:3], config.characters, config.holdout, seed=0)
    plain = Augmentation(rotation=0, translate=0, scale=(1.0, 1.0))
    source = AlphabetTaskSource(pool, 5, 1, config.characters, plain, seed=0, permute_labels=False)
    learner = make_learner("ft", config)
    algorithm = make_algorithm("ft", learner, config)
    assert isinstance(algorithm, MultiHeadFineTuning)
    assert (algorithm.outer.optimizer, algorithm.outer.lr, algorithm.outer.grad_clip) == (
        "sgd",
        0.1,
        None,
    )
    fixed = source.sample(3)
    # every alphabet keeps its own labels: class c is always label c
    ways = config.characters
    for b in range(fixed.tasks):
        real = fixed.support_weight[b] > 0
        assert torch.equal(fixed.support_y[b][real], torch.arange(ways).repeat_interleave(5)[real])
    with torch.no_grad():
        before, _ = algorithm.loss(fixed)
    body_before = {k: v.detach().clone() for k, v in learner.params.items()}
    for _ in range(6):
        metrics = algorithm.step(source.sample(3))
    with torch.no_grad():
        after, accuracy = algorithm.loss(fixed)
    print(f"ft pre-training loss {float(before):.3f} -> {float(after):.3f}, acc {accuracy:.2f}")
    assert float(after) < 0.85 * float(before)
    assert sorted(algorithm.heads) == [0, 1, 2] and metrics["heads"] == 3
    weights = [algorithm.heads[i][0] for i in range(3)]
    assert all(w.shape == (ways, 16) for w in weights)  # 16 filters, 1x1 after 4 poolings
    assert not torch.equal(weights[0], weights[1])  # separate heads, trained separately
    assert any(not torch.equal(v.detach(), body_before[k]) for k, v in learner.params.items())


def test_ft_refuses_tasks_without_an_identity(tmp_path: Path) -> None:
    config = ProtocolConfig(filters=8, inner_steps=1)
    algorithm = make_algorithm("ft", make_learner("ft", config), config)
    with pytest.raises(ValueError, match="task ids"):
        algorithm.step(random_image_tasks(tasks=2, ways=3, shots=2, queries=2, size=28))
    out = tmp_path / "ft.safetensors"
    args = ["train", "--algorithm", "ft", "--dataset", "sine", "--out", str(out)]
    assert innerloop_main([*args, "--run-dir", str(tmp_path / "run")]) == 2
    assert not out.exists()


def test_no_meta_training_changes_nothing() -> None:
    config = ProtocolConfig(filters=8, inner_steps=1)
    learner = make_learner("no", config)
    before = {k: v.detach().clone() for k, v in learner.params.items()}
    make_algorithm("no", learner, config).step(random_image_tasks(2, 3, 2, 2, size=28))
    assert all(torch.equal(v.detach(), before[k]) for k, v in learner.params.items())
