"""Small real models and tasks shared by the tests (no mocks: these are the production classes)."""

from __future__ import annotations

import torch
from innerloop_training.tasks import TaskBatch

from innerloop.learner import InnerDefaults, Learner
from innerloop.models import ArchConfig


def tiny_image_learner(
    head: str = "proto", steps: int = 2, lr: float = 0.05, learned: bool = False, seed: int = 0
) -> Learner:
    """A 3-block, 4-filter conv learner on 8x8 images: fast enough for exact-gradient tests."""
    arch = ArchConfig(kind="conv4", image_size=8, filters=4, blocks=3, norm_groups=2)
    return Learner.create(arch, head, InnerDefaults(steps, lr), learn_step_sizes=learned, seed=seed)


def tiny_regression_learner(
    steps: int = 2, lr: float = 0.01, learned: bool = False, seed: int = 0
) -> Learner:
    arch = ArchConfig(kind="mlp", hidden=(8, 8))
    return Learner.create(
        arch, "none", InnerDefaults(steps, lr), learn_step_sizes=learned, seed=seed
    )


def random_image_tasks(
    tasks: int, ways: int, shots: int, queries: int, size: int = 8, seed: int = 0
) -> TaskBatch:
    """Tasks whose classes are distinct random prototypes plus noise, so they are learnable."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(tasks, ways, 1, size, size, generator=generator)

    def draw(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(ways).repeat(per_class)
        noise = 0.15 * torch.randn(tasks, ways * per_class, 1, size, size, generator=generator)
        images = prototypes[:, labels] + noise
        return images.clamp(0, 1), labels.expand(tasks, -1).contiguous()

    support_x, support_y = draw(shots)
    query_x, query_y = draw(queries)
    return TaskBatch(
        support_x,
        support_y,
        torch.ones(tasks, ways * shots),
        torch.ones(tasks, ways, dtype=torch.bool),
        query_x,
        query_y,
    )


def to_double(learner: Learner) -> Learner:
    """A float64 copy, for gradient comparisons at tight tolerances."""
    return learner.with_params(
        {k: v.double() for k, v in learner.params.items()},
        {k: v.double() for k, v in learner.step_sizes.items()},
    )
