"""Random small distortions of meta-training drawings: more tasks from the same classes.

A drawing of a class stays that class when it is shifted by a pixel or two, scaled a little,
tilted a few degrees or drawn with a thicker pen; a meta-learner that sees those variants learns
features that do not hinge on them, which is what a user's drawings (other pens, other hands)
need. Each image of a meta-training batch, support and query alike, gets its own draw of
``torchvision.transforms.v2.functional.affine`` parameters and, with probability
``thicken``, a 3x3 dilation of its strokes (images are ink-high, so dilation is a max-pool).

Validation and test episodes are never augmented. Draws come from a generator seeded by the
meta-step, so a resumed run sees the same distortions it would have seen without the stop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from innerloop_training.tasks import TaskBatch


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random distortions (the defaults: a pixel or two, ±10%, ±10 degrees)."""

    max_shift: float = 2.0  # pixels, each axis
    scale: tuple[float, float] = (0.9, 1.1)
    max_rotation: float = 10.0  # degrees
    thicken: float = 0.2  # probability of a 3x3 stroke dilation

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["scale"] = list(self.scale)
        return data


def augment_images(
    images: Tensor, augmentation: Augmentation, generator: torch.Generator
) -> Tensor:
    """``[N, C, H, W]`` ink-high images in [0, 1], each distorted on its own."""
    count = images.shape[0]
    uniform = torch.rand(count, 5, generator=generator, dtype=torch.float64)
    low, high = augmentation.scale
    out = []
    for image, (u_angle, u_dx, u_dy, u_scale, u_pen) in zip(images, uniform.tolist(), strict=True):
        angle = (2 * u_angle - 1) * augmentation.max_rotation
        shift = [(2 * u_dx - 1) * augmentation.max_shift, (2 * u_dy - 1) * augmentation.max_shift]
        moved = TF.affine(
            image,
            angle=angle,
            translate=shift,
            scale=low + (high - low) * u_scale,
            shear=[0.0, 0.0],
            interpolation=TF.InterpolationMode.BILINEAR,
        )
        if u_pen < augmentation.thicken:
            moved = F.max_pool2d(moved[None], 3, stride=1, padding=1)[0]
        out.append(moved)
    return torch.stack(out).clamp(0, 1)


def augment_batch(batch: TaskBatch, augmentation: Augmentation, seed: int) -> TaskBatch:
    """Every support and query image of an image batch distorted; labels unchanged."""
    generator = torch.Generator().manual_seed(seed)

    def each(x: Tensor) -> Tensor:
        flat = x.flatten(0, 1)
        return augment_images(flat.cpu(), augmentation, generator).to(x.device).view_as(x)

    return replace(batch, support_x=each(batch.support_x), query_x=each(batch.query_x))
