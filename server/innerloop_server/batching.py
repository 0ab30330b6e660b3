"""Many decoded requests -> as few ``Learner.adapt_and_predict`` calls as possible.

Requests that share a model, a number of steps and a step size can share ONE call (vmapped on
GPUs; ``adapt_and_predict`` itself picks a per-task loop for convolutional models on CPU). A
group is split further when padding would more than double the support rows processed (a
5-way 1-shot request batched with a 20-way 5-shot one would cost 20x its own work). Tasks of
different sizes share a call through padding that is exact in the math, not only approximately:

- padded support rows have ``support_weight`` 0: the support loss is a weighted mean, so they add
  exact zeros to the loss, its gradients and the class prototypes;
- padded ways have ``class_mask`` False: their logits are -1e4, whose softmax weight underflows to
  exactly 0, so they change neither the loss nor the probabilities of the real classes;
- padded queries are zeros whose outputs are dropped (every query is predicted on its own:
  the body normalises per sample).

What padding cannot control is floating-point summation order: kernels over a batch of 16
tasks may group sums differently than over 1, so a request's probabilities in a batch can differ
from its solo answer in the last bits (measured: ~1e-6 absolute on CPU). The tests hold the
server to 1e-5.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from innerloop.learner import Learner
from innerloop_server.decoding import Task


@dataclass
class Result:
    """One request's raw answer: probabilities (classification) or outputs (regression)."""

    outputs: np.ndarray  # [Q, ways] probabilities, or [Q, targets]
    loss_before: float
    loss_after: float
    ms: float  # this request's share (by rows) of the shared call's wall time
    batch_size: int  # how many requests shared the adapt_and_predict call
    batch_ms: float = 0.0  # wall time of the whole shared call
    params: dict[str, torch.Tensor] | None = None  # adapted tensors (adapt requests only)
    steps_run: int | None = None  # inner steps this task ran (fewer when the loop stopped early)
    loop: tuple[int, float] | None = None  # (steps, lr) the per-request choice ran, if it chose
    choice: dict[str, Any] | None = None  # what the choice saw (``Choice.describe``)


MAX_PADDING = 2.0  # padded support rows per real row that a shared call may process


def groups(tasks: Sequence[Task], max_padding: float = MAX_PADDING) -> list[list[int]]:
    """Indices of ``tasks`` that can share one call: same :attr:`Task.group_key`, packed by
    support size (:func:`pack_by_size`)."""
    return pack_by_size(
        [t.group_key for t in tasks], [len(t.support_x) for t in tasks], max_padding
    )


def pack_by_size(
    keys: Sequence[Hashable], sizes: Sequence[int], max_padding: float = MAX_PADDING
) -> list[list[int]]:
    """Indices grouped by equal ``keys``, and, within a key, sorted by size and packed while
    ``items x largest size <= max_padding x real rows``: padding every item of a pack to its
    largest never more than ``max_padding``-folds the work."""
    by_key: dict[Hashable, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        by_key[key].append(i)
    packed: list[list[int]] = []
    for indices in by_key.values():
        current: list[int] = []
        rows = 0
        for i in sorted(indices, key=lambda j: sizes[j]):
            size = sizes[i]  # the largest so far: sorted ascending
            if current and (len(current) + 1) * size > max_padding * (rows + size):
                packed.append(current)
                current, rows = [], 0
            current.append(i)
            rows += size
        packed.append(current)
    return packed


Padded = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def pad_group(tasks: Sequence[Task], device: torch.device | str) -> Padded:
    """Stack tasks into ``adapt_and_predict``'s padded inputs (leading task dimension)."""
    count = len(tasks)
    support = max(len(t.support_x) for t in tasks)
    queries = max(1, max(len(t.query_x) for t in tasks))  # adapt-only tasks: one dummy row
    ways = max(len(t.labels) for t in tasks) or 1
    first = tasks[0]
    support_x = np.zeros((count, support, *first.support_x.shape[1:]), dtype=np.float32)
    support_y = np.zeros((count, support, *first.support_y.shape[1:]), dtype=first.support_y.dtype)
    weight = np.zeros((count, support), dtype=np.float32)
    mask = np.zeros((count, ways), dtype=bool)
    query_x = np.zeros((count, queries, *first.query_x.shape[1:]), dtype=np.float32)
    for i, task in enumerate(tasks):
        n = len(task.support_x)
        support_x[i, :n] = task.support_x
        support_y[i, :n] = task.support_y
        weight[i, :n] = 1.0
        mask[i, : max(len(task.labels), 1)] = True
        query_x[i, : len(task.query_x)] = task.query_x
    sx, sy, sw, cm, qx = (
        torch.from_numpy(a).to(device) for a in (support_x, support_y, weight, mask, query_x)
    )
    return sx, sy, sw, cm, qx


def run_group(learner: Learner, tasks: Sequence[Task], device: torch.device | str) -> list[Result]:
    """One ``adapt_and_predict`` call for tasks sharing a group key; one result per task.

    Adapt-only tasks (``POST /v1/adapt``) keep their adapted tensors in :attr:`Result.params`.
    Each task's ``ms`` is its share of the call by rows (support + queries): the cost it added,
    not the whole batch's time.
    """
    steps, lr, choose = tasks[0].steps, tasks[0].lr, tasks[0].choose
    keep = tasks[0].kind == "adapt"
    started = time.perf_counter()
    support_x, support_y, weight, mask, query_x = pad_group(tasks, device)
    predictions = learner.adapt_and_predict(
        support_x,
        support_y,
        weight,
        mask,
        query_x,
        steps=steps,
        lr=lr,
        keep_params=keep,
        choose=choose,
    )
    choice = predictions.choice
    outputs = predictions.outputs
    before = predictions.loss_before.cpu().tolist()
    after = predictions.loss_after.cpu().tolist()
    host = [_probabilities(task, outputs[i]).cpu().numpy() for i, task in enumerate(tasks)]
    kept = predictions.params or {}
    ran = (
        predictions.steps.cpu().tolist() if predictions.steps is not None else [steps] * len(tasks)
    )
    batch_ms = (time.perf_counter() - started) * 1000.0
    rows = [len(t.support_x) + len(t.query_x) for t in tasks]
    results = []
    for i in range(len(tasks)):
        params = {k: v[i].clone() for k, v in kept.items()} if keep else None
        share = batch_ms * rows[i] / sum(rows)
        described = choice.describe(i) if choice is not None else None
        chosen = described["chosen"] if described is not None else None
        results.append(
            Result(
                host[i],
                float(before[i]),
                float(after[i]),
                share,
                len(tasks),
                batch_ms,
                params,
                int(ran[i]),
                (int(chosen["steps"]), float(chosen["lr"])) if chosen is not None else None,
                described,
            )
        )
    return results


def predict_with_adapters(
    learner: Learner,
    tasks: Sequence[Task],
    params: Sequence[dict[str, torch.Tensor]],
    device: torch.device | str,
) -> list[np.ndarray]:
    """Probabilities (or outputs) for each task's queries from its adapted tensors, no inner
    loop: ONE ``predict_adapted`` call for all of them (the un-adapted prefix runs once over
    every query). Heads of fewer ways are padded with masked rows and queries with zeros,
    exact in the math as in :func:`pad_group`."""
    count = len(tasks)
    queries = max(1, max(len(t.query_x) for t in tasks))
    first = tasks[0]
    query_x = np.zeros((count, queries, *first.query_x.shape[1:]), dtype=np.float32)
    for i, task in enumerate(tasks):
        query_x[i, : len(task.query_x)] = task.query_x
    classification = first.task == "classification"
    ways = max(max(len(t.labels) for t in tasks), 1) if classification else 1
    mask = torch.zeros(count, ways, dtype=torch.bool, device=device)
    stacked: dict[str, torch.Tensor] = {}
    for name in params[0]:
        rows = [p[name] for p in params]
        if classification and name.startswith("head."):  # [ways, ...] per task: pad the ways
            rows = [F.pad(r, (0, 0) * (r.dim() - 1) + (0, ways - r.shape[0])) for r in rows]
        stacked[name] = torch.stack(rows).to(device)
    for i, task in enumerate(tasks):
        mask[i, : max(len(task.labels), 1) if classification else 1] = True
    outputs = learner.predict_adapted(stacked, torch.from_numpy(query_x).to(device), mask)
    return [_probabilities(task, outputs[i]).cpu().numpy() for i, task in enumerate(tasks)]


def _probabilities(task: Task, outputs: torch.Tensor) -> torch.Tensor:
    out = outputs[: len(task.query_x)]
    if task.task == "classification":
        return torch.softmax(out[:, : len(task.labels)], dim=-1)
    return out
