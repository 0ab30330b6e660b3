"""--augment: each meta-training drawing gets its own small, seeded distortion; labels stay."""

from __future__ import annotations

import pytest
import torch
from helpers import random_image_tasks
from innerloop_training.augment import Augmentation, augment_batch, augment_images
from innerloop_training.trainer import TrainConfig

NONE = Augmentation(max_shift=0.0, scale=(1.0, 1.0), max_rotation=0.0, thicken=0.0)


def strokes(count: int = 6) -> torch.Tensor:
    images = torch.zeros(count, 1, 28, 28)
    images[:, :, 8:20, 13:15] = 1.0  # a vertical bar
    images[:, :, 13:15, 6:22] = 1.0  # and a horizontal one
    return images


def test_no_distortion_is_the_identity() -> None:
    images = strokes()
    out = augment_images(images, NONE, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, images)


def test_each_image_gets_its_own_seeded_distortion() -> None:
    images = strokes()
    a = augment_images(images, Augmentation(), torch.Generator().manual_seed(1))
    b = augment_images(images, Augmentation(), torch.Generator().manual_seed(1))
    c = augment_images(images, Augmentation(), torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len({tuple(x.flatten().tolist()) for x in a}) == len(images)  # all differ
    assert a.min() >= 0 and a.max() <= 1


def test_the_distortion_is_small() -> None:
    images = strokes(20)
    out = augment_images(images, Augmentation(thicken=0.0), torch.Generator().manual_seed(3))
    ink, moved = images.sum((1, 2, 3)), out.sum((1, 2, 3))
    assert ((moved / ink - 1).abs() < 0.35).all()  # scale 0.9-1.1 changes ink by ~20% at most
    overlap = (images * out).sum((1, 2, 3)) / ink
    assert (overlap > 0.2).all()  # still mostly where it was


def test_thicker_strokes_add_ink() -> None:
    images = strokes()
    thick = Augmentation(max_shift=0.0, scale=(1.0, 1.0), max_rotation=0.0, thicken=1.0)
    out = augment_images(images, thick, torch.Generator().manual_seed(0))
    assert (out.sum((1, 2, 3)) > 1.5 * images.sum((1, 2, 3))).all()


def test_a_batch_keeps_its_labels_and_shapes() -> None:
    batch = random_image_tasks(tasks=2, ways=3, shots=2, queries=2, size=28)
    out = augment_batch(batch, Augmentation(), seed=5)
    assert out.support_x.shape == batch.support_x.shape
    assert out.query_x.shape == batch.query_x.shape
    assert torch.equal(out.support_y, batch.support_y) and torch.equal(out.query_y, batch.query_y)
    assert not torch.equal(out.support_x, batch.support_x)
    assert torch.equal(augment_batch(batch, Augmentation(), seed=5).query_x, out.query_x)


def test_regression_cannot_be_augmented() -> None:
    with pytest.raises(ValueError, match="augment"):
        TrainConfig(dataset="sine", augment=True)
