"""Episode sampling: shapes, label ranges, disjoint support/query, determinism, padding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from innerloop_training.data import LabelledImages, default_data_root, load_quickdraw345
from innerloop_training.episodes import EpisodeSampler, fixed_episodes, iter_fixed_episodes


def _synthetic(classes: int = 12, per_class: int = 30, size: int = 6) -> LabelledImages:
    """Each image encodes (class, index) in its first two pixels, so tests can identify it."""
    images = []
    for c in range(classes):
        arr = np.zeros((per_class, size, size), dtype=np.uint8)
        arr[:, 0, 0] = c
        arr[:, 0, 1] = np.arange(per_class)
        images.append(arr)
    return LabelledImages([f"class{c}" for c in range(classes)], images, {"dataset": "synthetic"})


def _identity(x: torch.Tensor) -> np.ndarray:
    """[..., 1, H, W] float -> [..., 2] ints (class, index) from the encoded pixels."""
    pixels = torch.round(x[..., 0, 0, :2] * 255).to(torch.int64)
    return pixels.numpy()


def test_shapes_labels_and_disjointness() -> None:
    data = _synthetic()
    batch = EpisodeSampler(data, ways=5, shots=3, queries=4, seed=0).sample(6)
    assert batch.support_x.shape == (6, 15, 1, 6, 6) and batch.support_x.dtype == torch.float32
    assert batch.query_x.shape == (6, 20, 1, 6, 6)
    assert batch.support_y.dtype == torch.int64 and batch.query_y.shape == (6, 20)
    assert batch.ways == 5 and len(batch) == 6
    assert torch.equal(batch.support_weight, torch.ones(6, 15))
    assert float(batch.support_x.max()) <= 1.0
    for b in range(6):
        s_id, q_id = _identity(batch.support_x[b]), _identity(batch.query_x[b])
        assert np.bincount(batch.support_y[b].numpy(), minlength=5).tolist() == [3] * 5
        assert np.bincount(batch.query_y[b].numpy(), minlength=5).tolist() == [4] * 5
        names = batch.class_names[b]
        assert len(set(names)) == 5  # classes without replacement
        # labels map consistently to the named class, in support and query
        for ids, labels in ((s_id, batch.support_y[b]), (q_id, batch.query_y[b])):
            for (cls, _), label in zip(ids, labels.tolist(), strict=True):
                assert names[label] == f"class{cls}"
        # images without replacement, support and query disjoint
        all_ids = [tuple(i) for i in np.concatenate([s_id, q_id])]
        assert len(set(all_ids)) == len(all_ids)
        # bookkeeping refs agree with the pixels
        assert batch.support_ref is not None
        np.testing.assert_array_equal(batch.support_ref[b].numpy(), s_id)


def test_support_order_is_shuffled() -> None:
    batch = EpisodeSampler(_synthetic(), 5, 5, 1, seed=1).sample(4)
    sorted_labels = torch.arange(5).repeat_interleave(5)
    assert any(not torch.equal(batch.support_y[b], sorted_labels) for b in range(4))


def test_determinism_and_seed_sensitivity() -> None:
    data = _synthetic()
    a = EpisodeSampler(data, 4, 2, 3, seed=11)
    b = EpisodeSampler(data, 4, 2, 3, seed=11)
    for size in (3, 1, 5):
        x, y = a.sample(size), b.sample(size)
        assert torch.equal(x.support_x, y.support_x) and torch.equal(x.query_y, y.query_y)
        assert x.class_names == y.class_names
    c = EpisodeSampler(data, 4, 2, 3, seed=12).sample(3)
    d = EpisodeSampler(data, 4, 2, 3, seed=11).sample(3)
    assert not torch.equal(c.support_x, d.support_x)


def test_fixed_episodes_do_not_depend_on_chunking() -> None:
    data = _synthetic()
    chunks_a = fixed_episodes(data, 5, 1, 2, episodes=10, seed=3, batch_size=4)
    chunks_b = list(iter_fixed_episodes(data, 5, 1, 2, episodes=10, seed=3, batch_size=10))
    assert [len(c) for c in chunks_a] == [4, 4, 2] and [len(c) for c in chunks_b] == [10]
    joined = torch.cat([c.query_x for c in chunks_a])
    assert torch.equal(joined, chunks_b[0].query_x)
    assert [n for c in chunks_a for n in c.class_names] == chunks_b[0].class_names


def test_unbalanced_padding() -> None:
    data = _synthetic()
    batch = EpisodeSampler(data, 5, 4, 2, seed=5, unbalanced=True).sample(20)
    assert batch.support_x.shape == (20, 20, 1, 6, 6)
    counts_seen = set()
    for b in range(20):
        w, y = batch.support_weight[b], batch.support_y[b]
        assert set(w.tolist()) <= {0.0, 1.0}
        real = torch.bincount(y[w == 1], minlength=5)
        assert (real >= 1).all() and (real <= 4).all()  # 1..shots real examples per class
        counts_seen.update(real.tolist())
        ids = _identity(batch.support_x[b])
        real_ids = {tuple(i) for i in ids[w.numpy() == 1]}
        assert len(real_ids) == int(w.sum())  # real rows are distinct images
        for row in np.nonzero(w.numpy() == 0)[0]:  # padding copies a real row, with its label
            assert tuple(ids[row]) in real_ids
            twin = [j for j in range(20) if w[j] == 1 and tuple(ids[j]) == tuple(ids[row])]
            assert y[row] == y[twin[0]]
        q_ids = {tuple(i) for i in _identity(batch.query_x[b])}
        assert q_ids.isdisjoint(real_ids)
        assert torch.bincount(batch.query_y[b], minlength=5).tolist() == [2] * 5
    assert len(counts_seen) > 2  # shot counts actually vary
    assert float(batch.support_weight.mean()) < 1.0


def test_small_classes_skipped_and_too_few_rejected() -> None:
    data = _synthetic(classes=6, per_class=10)
    data.images[0] = data.images[0][:3]
    with pytest.warns(UserWarning, match="1 of 6 classes"):
        sampler = EpisodeSampler(data, 5, 2, 3, seed=0)
    assert 0 not in sampler.usable
    batch = sampler.sample(10)
    assert all("class0" not in names for names in batch.class_names)
    with pytest.raises(ValueError, match="only 5 classes"), pytest.warns(UserWarning):
        EpisodeSampler(data, 6, 2, 3, seed=0)
    with pytest.raises(ValueError):
        EpisodeSampler(data, 2, 0, 3, seed=0)


def test_real_quickdraw_episodes() -> None:
    root = default_data_root()
    npz = None if root is None else Path(root) / "quickdraw345" / "quickdraw345_sketches.npz"
    if npz is None or not npz.is_file():
        pytest.skip("shared Quick Draw data not available")
    data = load_quickdraw345(npz, ["cat", "dog", "zigzag", "wheel", "line", "sun", "tree"])
    batch = EpisodeSampler(data, 5, 5, 15, seed=0).sample(4)
    assert batch.support_x.shape == (4, 25, 1, 28, 28) and batch.query_x.shape == (4, 75, 1, 28, 28)
    assert batch.query_ref is not None and batch.support_ref is not None
    for b in range(4):
        s = {tuple(r) for r in batch.support_ref[b].tolist()}
        q = {tuple(r) for r in batch.query_ref[b].tolist()}
        assert s.isdisjoint(q) and len(s) == 25 and len(q) == 75
    moved = batch.to("cpu")
    assert torch.equal(moved.query_x, batch.query_x)
    episode = batch[1]
    assert (
        episode.support_x.shape == (25, 1, 28, 28) and episode.class_names == batch.class_names[1]
    )
