"""``--device {auto,cpu,cuda}`` for the training commands, resolved and applied in one place.

Every tensor of a run must live on one device: the learner's meta-parameters and step sizes are
moved once, and task batches (built on the CPU from images) are moved as they are used. A
request for CUDA on a machine without it is a clear error, not a silent fall back to the CPU.
"""

from __future__ import annotations

import argparse

import torch

from innerloop.learner import Learner

DEVICES = ("auto", "cpu", "cuda")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="where tensors live: auto (cuda when available, else cpu), cpu or cuda",
    )


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without a GPU raises ``ValueError``."""
    if name not in DEVICES:
        raise ValueError(f"device {name!r} is not one of {DEVICES}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available on this machine")
    return torch.device(name)


def learner_to(learner: Learner, device: torch.device) -> Learner:
    """A copy of ``learner`` whose meta-parameters and step sizes are on ``device``."""
    params = {k: v.to(device) for k, v in learner.params.items()}
    steps = {k: v.to(device) for k, v in learner.step_sizes.items()}
    moved = learner.with_params(params, steps)
    moved.body = moved.body.to(device)  # a template (parameters are passed in); buffers, if any
    return moved
