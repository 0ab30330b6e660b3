"""Choosing how much to adapt, per request, from the support set alone.

A loop that pays on one kind of drawing can lose on another, and a server cannot know in advance
which kind a request brings. When every label has at least two support examples, the support set
can answer the question itself: hold out one example per label (rotating over ``folds``), adapt
each candidate loop on the rest, and count how many held-out examples it labels right. The winner
(ties: the lower held-out loss, then the cheaper candidate) then adapts on the whole support set.
0 steps, the prototype answer, is always a candidate, which is what keeps a served loop from doing
worse than not adapting wherever the support set can tell.

Only the support set is used, never the queries, so a single query gets the answer it would get
among fifteen. Which examples are held out depends on their content, not their order (each label's
examples are ranked by a fixed projection of their pixels), so a shuffled support set, the
server's canonical order and an evaluation episode all make the same choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from innerloop.predictions import NOT_ELIGIBLE, Candidate, Choice, Predictions

# held-out rows -> [tasks, rows, ways] outputs after adapting ``candidate`` on ``weight``
HeldOutFn = Callable[[Candidate, Tensor], Tensor]
# (candidate, task indices) -> predictions of those tasks adapted on their whole support set
RunFn = Callable[[Candidate, Tensor], Predictions]

LOSS_CAP = 1e3  # held-out loss per example is capped here, so one held-out hit outweighs any loss


def normalise_candidates(
    candidates: Iterable[Sequence[Any]], default: Candidate
) -> tuple[Candidate, ...]:
    """Validated, sorted by cost, with 0 steps and the default loop always among them.

    Empty stays empty (the choice is off). Sorting by (steps, lr) makes "the earlier candidate"
    of a tie the cheaper one, 0 steps first.
    """
    parsed: set[Candidate] = set()
    for item in candidates:
        if len(item) != 2:
            raise ValueError(f"a loop candidate is [steps, lr], got {list(item)!r}")
        steps, lr = item
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"a loop candidate's steps must be an integer >= 0, got {steps!r}")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
            raise ValueError(f"a loop candidate's lr must be a finite number > 0, got {lr!r}")
        parsed.add((steps, float(lr)))
    if not parsed:
        return ()
    parsed.add(default)
    if not any(steps == 0 for steps, _ in parsed):
        parsed.add((0, default[1]))
    # the step size of a 0-step loop changes nothing: keep one of them
    zero = min(c for c in parsed if c[0] == 0)
    return tuple(sorted({c for c in parsed if c[0] > 0} | {zero}))


def eligible(support_y: Tensor, support_weight: Tensor, class_mask: Tensor) -> Tensor:
    """[tasks] whether every label of a task has at least two (weighted) support examples."""
    counts = _class_counts(support_y, support_weight, class_mask.shape[-1])
    return ((counts >= 2) | ~class_mask).all(-1) & class_mask.any(-1)


def content_rank(support_x: Tensor, support_y: Tensor, support_weight: Tensor) -> Tensor:
    """[tasks, rows] each live example's rank within its label by content; -1 for padding.

    The key is a fixed pseudo-random projection of the example, in float64 so that batching
    cannot reorder two different examples; equal examples fall back to their position, where
    either order gives the same result."""
    tasks, rows = support_y.shape
    flat = support_x.reshape(tasks, rows, -1).to(torch.float64)
    generator = torch.Generator().manual_seed(0)
    projection = torch.rand(flat.shape[-1], generator=generator, dtype=torch.float64)
    key = flat @ projection.to(flat.device)  # [tasks, rows]
    live = support_weight > 0
    same = (support_y[:, :, None] == support_y[:, None, :]) & live[:, :, None] & live[:, None, :]
    position = torch.arange(rows, device=support_y.device)
    before = (key[:, None, :] < key[:, :, None]) | (
        (key[:, None, :] == key[:, :, None]) & (position[None, :] < position[:, None])
    )  # [tasks, row, other]: other comes before row
    return (same & before).sum(-1).masked_fill(~live, -1)


def score(
    held_out_outputs: HeldOutFn,
    candidates: Sequence[Candidate],
    support_x: Tensor,
    support_y: Tensor,
    support_weight: Tensor,
    class_mask: Tensor,
    folds: int,
) -> Choice:
    """Score every candidate on held-out support examples (see the module docstring)."""
    tasks = support_y.shape[0]
    rank = content_rank(support_x, support_y, support_weight)
    can_choose = eligible(support_y, support_weight, class_mask)
    device = support_y.device
    count = torch.zeros(tasks, dtype=torch.long, device=device)
    correct = torch.zeros(tasks, len(candidates), dtype=torch.long, device=device)
    loss = torch.zeros(tasks, len(candidates), device=device)
    for fold in range(folds):
        held = (rank == fold) & can_choose[:, None]  # one example per label with > fold rows
        if not held.any():
            break
        keep_weight = support_weight * (~held).to(support_weight.dtype)
        count += held.sum(-1)
        for c, candidate in enumerate(candidates):
            outputs = held_out_outputs(candidate, keep_weight)
            # a loop that diverged labels nothing right and costs the most (NaN never wins)
            finite = torch.isfinite(outputs).all(-1)
            hits = (outputs.argmax(-1) == support_y) & held & finite
            correct[:, c] += hits.sum(-1)
            per_row = F.cross_entropy(outputs.transpose(1, 2), support_y, reduction="none")
            per_row = torch.where(finite, per_row.nan_to_num(LOSS_CAP), LOSS_CAP).clamp(
                max=LOSS_CAP
            )
            loss[:, c] += (per_row * held).sum(-1)
    mean_loss = loss / count.clamp_min(1)[:, None]
    # lexicographic (most right, then lowest loss, then earliest): argmax keeps the first maximum
    key = correct.to(mean_loss.dtype) * (2 * LOSS_CAP) - mean_loss
    chosen = key.argmax(-1).masked_fill(~can_choose, NOT_ELIGIBLE)
    return Choice(tuple(candidates), chosen, correct, count, mean_loss)


def predict_chosen(choice: Choice, default: Candidate, run: RunFn) -> Predictions:
    """Adapt each task with its winner on its whole support set, in one call per winner;
    tasks that could not choose run ``default``. Outputs come back in the tasks' order."""
    loops = [choice.candidates[int(i)] if int(i) >= 0 else default for i in choice.chosen]
    by_loop: dict[Candidate, list[int]] = {}
    for task, candidate in enumerate(loops):
        by_loop.setdefault(candidate, []).append(task)
    device = choice.chosen.device
    pieces = []
    for candidate, members in by_loop.items():
        index = torch.tensor(members, dtype=torch.long, device=device)
        pieces.append((index, candidate, run(candidate, index)))
    first = pieces[0][2]
    tasks = len(loops)

    def gather(pick: Callable[[Predictions], Tensor]) -> Tensor:
        sample = pick(first)
        out = sample.new_zeros((tasks, *sample.shape[1:]))
        for index, _, predictions in pieces:
            out[index] = pick(predictions)
        return out

    def kept(name: str) -> Callable[[Predictions], Tensor]:
        return lambda p: (p.params or {})[name]

    params = None
    if first.params is not None:
        params = {k: gather(kept(k)) for k in first.params}
    # steps each task ran: its loop's, or fewer where that loop stopped early
    steps = torch.zeros(tasks, dtype=torch.long, device=device)
    for index, candidate, predictions in pieces:
        ran = predictions.steps
        steps[index] = ran if ran is not None else candidate[0]
    return Predictions(
        gather(lambda p: p.outputs),
        gather(lambda p: p.loss_before),
        gather(lambda p: p.loss_after),
        params,
        steps,
        choice,
    )


def work(support: int, candidates: Sequence[Candidate], folds: int) -> int:
    """Work units the choice adds to a request (``Limits.work``'s unit: support rows x steps):
    each fold adapts every candidate on the support set and predicts it back."""
    return folds * sum(support * max(steps, 1) + support for steps, _ in candidates)


def _class_counts(support_y: Tensor, support_weight: Tensor, ways: int) -> Tensor:
    onehot = F.one_hot(support_y, ways).to(support_weight.dtype)
    return (onehot * (support_weight > 0)[..., None].to(support_weight.dtype)).sum(1)
