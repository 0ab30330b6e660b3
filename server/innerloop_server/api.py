"""The LitServe ``LitAPI``: one hook, one job.

- ``setup``: load the checkpoints on the worker's device and warm them up;
- ``decode_request``: validate and decode one request completely (4xx on any problem), so a bad
  request is refused before it can join a batch;
- ``batch``: the list of decoded requests as is (grouping needs the whole list);
- ``predict``: group compatible requests (same model, steps, lr) and run ONE padded
  ``adapt_and_predict`` per group; a failing group fails only its own requests;
- ``unbatch``: one result (or exception) per request;
- ``encode_response``: the JSON response, with ``top_k``.

Runs inside the inference workers (spawned processes) under
:class:`~innerloop_server.loop.IsolatingBatchLoop`. Adapters are not kept here: an adapt answer
carries its adapted tensors back to the HTTP process, which keeps them and answers predicts
with them (:mod:`innerloop_server.adapter_store`).
"""

# No ``from __future__ import annotations`` here: LitServe reads decode_request's and
# encode_response's annotations with inspect.signature and hands them to FastAPI, which needs
# the real PredictRequest/PredictResponse classes, not strings.
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import litserve as ls
import torch

from innerloop.allocator import keep_freed_memory
from innerloop_server import logs
from innerloop_server.adapter_store import ADAPTED_PARAMS_KEY, adapted_params_payload
from innerloop_server.adapters import adapter_id
from innerloop_server.batching import Result, groups, run_group
from innerloop_server.decoding import Task, decode_request
from innerloop_server.errors import request_error
from innerloop_server.limits import Limits
from innerloop_server.loop import IsolatingBatchLoop
from innerloop_server.metrics import metrics
from innerloop_server.registry import Registry
from innerloop_server.responses import encode_answer
from innerloop_server.schemas import PredictRequest, PredictResponse

log = logging.getLogger(logs.LOGGER_NAME)

API_PATH = "/v1/predict"
ADAPT_PATH = "/v1/adapt"  # fed to the same workers (see app.py)


@dataclass
class Answer:
    """A request's decoded task with its result: everything ``encode_response`` needs."""

    task: Task
    result: Result


class InnerloopAPI(ls.LitAPI):
    """Few-shot adaptation per request, batched across requests."""

    def __init__(
        self,
        checkpoint_paths: Sequence[Path],
        limits: Limits,
        max_batch_size: int = 16,
        batch_timeout: float = 0.005,
        threads: int | None = None,
    ) -> None:
        with warnings.catch_warnings():
            # "batch and unbatch implemented but max_batch_size not set": irrelevant here, our
            # loop always hands predict a list, also with max_batch_size=1
            warnings.simplefilter("ignore", UserWarning)
            super().__init__(
                max_batch_size=max_batch_size,
                batch_timeout=batch_timeout,
                api_path=API_PATH,
                loop=IsolatingBatchLoop(),
            )
        self.checkpoint_paths = [Path(p) for p in checkpoint_paths]
        self.limits = limits
        self.threads = threads
        self.registry = Registry()
        self.torch_device = torch.device("cpu")

    # FastAPI-facing auth hook: the API key is enforced by ApiKeyMiddleware for every path, so
    # LitServe's own LIT_SERVER_API_KEY check (which would also lock /health) is disabled here.
    def authorize(self) -> None:
        return None

    def setup(self, device: str) -> None:
        logs.configure()
        keep_freed_memory()  # a spawned worker does not inherit the CLI's setting
        if self.threads:
            torch.set_num_threads(self.threads)
        self.torch_device = torch.device(device)
        self.registry = Registry.from_paths(self.checkpoint_paths, strict=True).to(device)
        for model in self.registry.models.values():
            _warm_up(model.learner, model.card, self.torch_device)
        logs.event(
            "worker_ready",
            device=device,
            models=self.registry.names,
            max_batch_size=self.max_batch_size,
            batch_timeout=self.batch_timeout,
            threads=torch.get_num_threads(),
        )

    def decode_request(self, request: PredictRequest, **kwargs: Any) -> Task:
        # the HTTP process decodes (app._route_through_decoding) and sends a Task; a predict
        # with an adapter never reaches a worker (the HTTP process answers it)
        if isinstance(request, Task):
            return request
        if isinstance(request, PredictRequest) and request.adapter is not None:
            raise request_error(
                422, "adapter", "predictions with an adapter are answered by the HTTP process"
            )
        started = time.perf_counter()
        task = decode_request(request, self.registry, self.limits)
        task.decode_ms = (time.perf_counter() - started) * 1000.0
        return task

    def batch(self, inputs: list[Task]) -> list[Task]:
        return list(inputs)

    def predict(self, tasks: list[Task], **kwargs: Any) -> list[Answer | Exception]:
        started = time.perf_counter()
        results: list[Answer | Exception | None] = [None] * len(tasks)
        index_groups = groups(tasks)
        for indices in index_groups:
            group = [tasks[i] for i in indices]
            model = self.registry.get(group[0].model)
            try:
                answers: Sequence[Result | Exception] = run_group(
                    model.learner, group, self.torch_device
                )
                if group[0].kind == "adapt":
                    for task in group:
                        task.adapter = adapter_id(task)
            except Exception as error:
                log.exception(
                    "adapt_and_predict failed for %d requests of model %s", len(group), model.name
                )
                answers = [error] * len(group)
            for i, answer in zip(indices, answers, strict=True):
                results[i] = Answer(tasks[i], answer) if isinstance(answer, Result) else answer
            self._record(model.name, group, answers)
        m = metrics()
        m.batch_requests.observe(len(tasks))
        logs.event(
            "batch",
            requests=len(tasks),
            groups=len(index_groups),
            ms=round((time.perf_counter() - started) * 1000.0, 2),
            decode_ms=round(sum(t.decode_ms for t in tasks), 2),
        )
        return [r if r is not None else RuntimeError("no result") for r in results]

    def unbatch(self, output: list[Answer | Exception]) -> list[Answer | Exception]:
        return output

    def encode_response(self, output: Answer, **kwargs: Any) -> PredictResponse:
        task, result = output.task, output.result
        response = encode_answer(task, result, self.registry.get(task.model).learner.scope)
        if task.kind == "adapt" and result.params is not None:
            # for the HTTP process's adapter store, which strips it (adapter_store.py)
            response[ADAPTED_PARAMS_KEY] = adapted_params_payload(result.params)
        return response  # type: ignore[return-value]  # FastAPI validates it as PredictResponse

    @staticmethod
    def _record(model: str, group: list[Task], answers: Sequence[Result | Exception]) -> None:
        m = metrics()
        m.call_tasks.observe(len(group))
        first = answers[0] if answers else None
        if isinstance(first, Result):
            m.adaptation.labels(model=model).observe(first.ms / 1000.0)
            m.queries.labels(model=model).inc(sum(len(t.query_x) for t in group))


def _warm_up(learner: Any, card: dict[str, Any], device: torch.device) -> None:
    """One tiny adaptation so the first real request does not pay for lazy initialisation."""
    spec = card["input"]
    if spec["kind"] == "image":
        x = torch.zeros(1, 2, 1, spec["size"], spec["size"], device=device)
        q = torch.zeros(1, 1, 1, spec["size"], spec["size"], device=device)
    else:
        x = torch.zeros(1, 2, spec["features"], device=device)
        q = torch.zeros(1, 1, spec["features"], device=device)
    if learner.task == "classification":
        y = torch.tensor([[0, 1]], device=device)
        mask = torch.ones(1, 2, dtype=torch.bool, device=device)
    else:
        y = torch.zeros(1, 2, spec["targets"], device=device)
        mask = torch.ones(1, 1, dtype=torch.bool, device=device)
    learner.adapt_and_predict(x, y, torch.ones(1, 2, device=device), mask, q, steps=1)
