"""What an adaptation call returns: the answers and, when a loop was chosen, why.

Its own module so that the inner loop (:mod:`innerloop.adaptation`) and the per-request choice
(:mod:`innerloop.loop_choice`) both build these without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

Candidate = tuple[int, float]  # (inner steps, step size)
NOT_ELIGIBLE = -1  # Choice.chosen where a task cannot choose (a label with one example)


@dataclass
class Predictions:
    """Outputs for a batch of tasks: logits (or regression outputs) and support losses."""

    outputs: Tensor  # [tasks, queries, ways] or [tasks, queries, out_features]
    loss_before: Tensor  # [tasks]
    loss_after: Tensor  # [tasks]
    params: dict[str, Tensor] | None = None  # adapted tensors per task (leading task dim), if kept
    steps: Tensor | None = None  # [tasks] inner steps each task ran, when the loop stops early
    choice: Choice | None = None  # the per-request choice of loop, when one was made
    # [tasks, steps, queries, ...] outputs after each inner step 1..K (the last is ``outputs``),
    # when asked for (MAML++'s multi-step loss)
    step_outputs: Tensor | None = None


@dataclass(frozen=True)
class Choice:
    """Which candidate each task chose, and the held-out evidence it was chosen on."""

    candidates: tuple[Candidate, ...]
    chosen: Tensor  # [tasks] candidate index; NOT_ELIGIBLE where the support set cannot choose
    held_out_correct: Tensor  # [tasks, candidates] held-out examples labelled right
    held_out_count: Tensor  # [tasks] held-out examples each candidate was scored on
    held_out_loss: Tensor  # [tasks, candidates] mean held-out cross-entropy

    def describe(self, task: int) -> dict[str, Any]:
        """What a response says about one task's choice (JSON-ready)."""
        index = int(self.chosen[task])
        count = int(self.held_out_count[task])
        scored = [
            {
                "steps": steps,
                "lr": lr,
                "held_out_correct": int(self.held_out_correct[task, c]),
                "held_out_loss": round(float(self.held_out_loss[task, c]), 6),
            }
            for c, (steps, lr) in enumerate(self.candidates)
        ]
        if index == NOT_ELIGIBLE:
            return {
                "chosen": None,
                "reason": "every label needs at least two support examples to hold one out; "
                "the model's default loop ran",
                "candidates": [{"steps": s, "lr": lr} for s, lr in self.candidates],
            }
        steps, lr = self.candidates[index]
        return {
            "chosen": {"steps": steps, "lr": lr},
            "reason": f"most held-out support examples labelled right ({count} held out, one per "
            "label per fold); ties go to the lower held-out loss, then the cheaper loop",
            "held_out": count,
            "candidates": scored,
        }
