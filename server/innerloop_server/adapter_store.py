"""Adapters held and served by the HTTP process: adapt in a worker, predict without one.

A predict with an adapter runs no inner loop: it is one forward pass of a few queries. Sent
through LitServe's worker queue it paid two inter-process hops on top of that forward (5
queries, two servers side by side in ``benchmarks/bench_versions.py`` on 2 cores: p50 18.5 ms
that way, 14.2 ms answered here; 4.3 ms in the README's latest ``bench_server.py`` run), and each
worker kept its own adapters, so a server with several workers found an adapter only when
LitServe happened to pick the worker that made it. So the worker that adapts sends the adapted
tensors back with its answer (under :data:`ADAPTED_PARAMS_KEY`, stripped before the client sees
it), and the HTTP process keeps them in one byte-bounded cache and answers adapter predicts
itself, in a thread, with the same ``Learner.predict_adapted`` the worker would have run, on the
CPU copy of the model it already holds for decoding. Any number of workers now share one set of
adapters.

Concurrent adapter predicts are combined: each request's thread queues its decoded queries,
and whichever thread holds the forward lock runs every queued request of a model in ONE
``predict_adapted`` call (the un-adapted prefix once over all their queries), packed so that
padding never more than doubles the rows, then hands each thread its answer. One forward runs
at a time, so a burst of requests does not split the cores among dozens of small forwards;
a lone request runs at once, with no batching delay.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from innerloop_server import logs
from innerloop_server.adapters import Adapter, AdapterCache
from innerloop_server.batching import Result, pack_by_size, predict_with_adapters
from innerloop_server.decoding import Task, decode_adapter_queries
from innerloop_server.errors import request_error
from innerloop_server.limits import Limits
from innerloop_server.metrics import metrics
from innerloop_server.registry import Registry
from innerloop_server.responses import encode_answer
from innerloop_server.schemas import PredictRequest

log = logging.getLogger(logs.LOGGER_NAME)

ADAPTED_PARAMS_KEY = "_adapted_params"  # worker -> HTTP process only; never in a response


def adapted_params_payload(params: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The worker's adapted tensors as host arrays: they cross a process boundary by pickle."""
    return {k: v.detach().cpu().numpy() for k, v in params.items()}


@dataclass
class _Job:
    """One adapter predict waiting for (or done by) a combined forward."""

    task: Task
    adapter: Adapter
    done: threading.Event = field(default_factory=threading.Event)
    outputs: np.ndarray | None = None
    error: BaseException | None = None
    ms: float = 0.0
    batch_size: int = 1
    batch_ms: float = 0.0


def _packs(jobs: list[_Job]) -> list[list[_Job]]:
    """Jobs that can share one call: same model, padded query rows at most ``MAX_PADDING``
    times the real ones (a 1,000-query request never pads 31 five-query ones to 1,000)."""
    sizes = [max(len(job.task.query_x), 1) for job in jobs]
    packs = pack_by_size([job.adapter.model for job in jobs], sizes)
    return [[jobs[i] for i in pack] for pack in packs]


class AdapterStore:
    """The HTTP process's adapters: kept from adapt answers, used by adapter predicts.

    ``threads`` is the torch thread count for these forwards. One by default: they run in the
    HTTP process's thread pool, many at once under load, beside the event loop and decoding, and
    this process was forked by LitServe after the parent had used torch (GNU OpenMP is not safe
    to re-enter after a fork, one thread never enters it).
    """

    def __init__(self, registry: Registry, limits: Limits, threads: int = 1) -> None:
        self.registry = registry
        self.limits = limits
        self.threads = threads
        self.cache = AdapterCache(limits.max_adapter_cache_bytes)
        self._lock = threading.Lock()
        self._forward_lock = threading.Lock()
        self._pending: list[_Job] = []
        self._threads_set = False

    def keep(self, answer: dict[str, Any]) -> dict[str, Any]:
        """Cache the adapter of a worker's adapt answer; return the answer without its tensors."""
        answer = dict(answer)
        params = answer.pop(ADAPTED_PARAMS_KEY, None)
        if params is None:
            return answer
        adaptation = answer["adaptation"]
        before, after = adaptation["support_loss"]
        adapter = Adapter(
            answer["adapter"],
            answer["model"],
            answer["task"],
            list(answer["labels"]),
            int(adaptation["max_steps"]),
            float(adaptation["lr"]),
            {k: torch.from_numpy(np.asarray(v)) for k, v in params.items()},
            float(before),
            float(after),
            float(adaptation["ms"]),
            int(adaptation["steps"]),
        )
        with self._lock:
            self.cache.put(adapter)
        return answer

    def adapter(self, adapter_id: str) -> Adapter:
        with self._lock:
            adapter = self.cache.get(adapter_id)
        if adapter is None:
            raise request_error(
                404,
                "adapter",
                f"{adapter_id!r} is unknown or was evicted from the adapter cache; "
                "POST /v1/adapt again (the same support gives the same id)",
            )
        return adapter

    def predict(self, request: PredictRequest) -> dict[str, Any]:
        """Decode the queries, predict them with the adapter, encode the answer (4xx on error)."""
        adapter = self.adapter(request.adapter or "")
        model = self.registry.get(adapter.model)
        task = decode_adapter_queries(request, model, self.limits)
        task.task, task.steps, task.lr, task.labels = (
            adapter.task,
            adapter.steps,
            adapter.lr,
            adapter.labels,
        )
        if task.top_k is not None:
            task.top_k = min(task.top_k, len(adapter.labels))
        job = _Job(task, adapter)
        with self._lock:
            self._pending.append(job)
        while not job.done.is_set():
            with self._forward_lock:
                if job.done.is_set():  # another thread's combined forward answered it
                    break
                with self._lock:
                    jobs, self._pending = self._pending, []
                self._run(jobs)  # includes this job: only a forward-lock holder drains
        if job.error is not None:
            raise job.error
        assert job.outputs is not None
        result = Result(
            job.outputs,
            adapter.loss_before,
            adapter.loss_after,
            job.ms,
            job.batch_size,
            job.batch_ms,
            steps_run=adapter.steps_run,
        )
        metrics().queries.labels(model=model.name).inc(len(task.query_x))
        return encode_answer(task, result, model.learner.scope)

    def _run(self, jobs: list[_Job]) -> None:
        """One ``predict_adapted`` call per pack of ``jobs``; every job ends done."""
        self._use_own_threads()
        for pack in _packs(jobs):
            started = time.perf_counter()
            try:
                learner = self.registry.get(pack[0].adapter.model).learner
                with torch.no_grad():
                    outputs = predict_with_adapters(
                        learner, [j.task for j in pack], [j.adapter.params for j in pack], "cpu"
                    )
                batch_ms = (time.perf_counter() - started) * 1000.0
                rows = [max(len(j.task.query_x), 1) for j in pack]
                for job, out, row in zip(pack, outputs, rows, strict=True):
                    job.outputs = out
                    job.ms = batch_ms * row / sum(rows)
                    job.batch_size, job.batch_ms = len(pack), batch_ms
            except Exception as error:  # fails this pack's requests only
                log.exception("adapter predict failed for %d requests", len(pack))
                for job in pack:
                    job.error = error
            finally:
                for job in pack:
                    job.done.set()

    def _use_own_threads(self) -> None:
        if not self._threads_set:
            torch.set_num_threads(self.threads)
            self._threads_set = True
