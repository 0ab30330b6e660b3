"""A decoded task and its raw result -> the JSON answer, wherever it was computed.

Adapt-and-predict answers are encoded in the inference worker (``InnerloopAPI.encode_response``);
predictions with a cached adapter are computed and encoded in the HTTP process
(:class:`~innerloop_server.adapter_store.AdapterStore`). Both call :func:`encode_answer`, so an
answer has one shape whichever path made it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from innerloop_server.batching import Result
from innerloop_server.decoding import Task
from innerloop_server.errors import refuse_non_finite


def encode_answer(task: Task, result: Result, scope: str) -> dict[str, Any]:
    """The response body: ``PredictResponse`` fields, or ``AdaptResponse`` ones for an adapt.

    A NaN or infinite result is a 422 that says what to change, never a 200 full of ``null``.
    """
    steps, lr = result.loop if result.loop is not None else (task.steps, task.lr)
    refuse_non_finite(result.outputs, [result.loss_before, result.loss_after], steps, lr)
    choice = result.choice
    if choice is None and task.choice_note is not None:
        choice = {"chosen": None, "reason": task.choice_note}
    adaptation = {
        "steps": steps if result.steps_run is None else result.steps_run,
        "max_steps": steps,
        "lr": lr,
        "support_loss": [result.loss_before, result.loss_after],
        "ms": round(result.ms, 3),
        "batch_size": result.batch_size,
        "batch_ms": round(result.batch_ms, 3),
        "scope": scope,
        "adapter": task.adapter,
        "choice": choice,
    }
    if task.kind == "adapt":
        return {
            "model": task.model,
            "task": task.task,
            "adapter": task.adapter,
            "labels": task.labels,
            "adaptation": adaptation,
        }
    predictions: list[dict[str, Any]] = []
    if task.task == "classification":
        ways = len(task.labels)
        k = min(task.top_k or ways, ways)
        for row in result.outputs:
            # stable sort: ties go to the canonical class order, never to label names
            order = np.argsort(-row, kind="stable")[:k]
            predictions.append(
                {
                    "label": task.labels[int(order[0])],
                    "scores": {str(task.labels[int(j)]): float(row[j]) for j in order},
                }
            )
    else:
        predictions = [{"y": [float(v) for v in row]} for row in result.outputs]
    return {
        "model": task.model,
        "task": task.task,
        "predictions": predictions,
        "adaptation": adaptation,
    }
