"""Adapt once, predict many: adapted parameters kept in one cache, bounded in bytes.

``POST /v1/adapt`` runs the inner loop on a support set and keeps the result under an id that is
a content hash of (model, decoded support, labels, steps, lr): the same call always gives the
same id, and adapting again after an eviction gives the id the client already holds. The cache is
a least-recently-used map bounded by the bytes of the tensors it holds
(``--max-adapter-cache-bytes``); an adapter larger than the whole bound is still answered, just
not kept. Predicting with an unknown or evicted id is a 404 that says to adapt again.

Only what the inner loop moved is kept (the adapted tensors plus the task's head), so an
adapter of a ``head``-scope model costs a few KB and one of an ``all``-scope Conv4 ~0.5 MB.
The cache lives in the HTTP process (:mod:`innerloop_server.adapter_store`), one for all
workers.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass

import torch

from innerloop_server.decoding import Task
from innerloop_server.schemas import Label


@dataclass
class Adapter:
    """One adapted task: enough to predict new queries exactly as adapting again would."""

    id: str
    model: str
    task: str
    labels: list[Label]
    steps: int
    lr: float
    params: dict[str, torch.Tensor]  # one task's adapted tensors (no leading task dim)
    loss_before: float
    loss_after: float
    ms: float
    steps_run: int | None = None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.params.values())


def adapter_id(task: Task) -> str:
    """Content hash of everything the adapted parameters depend on (the request's own view)."""
    digest = hashlib.sha256()
    header = {"model": task.model, "steps": task.steps, "lr": task.lr, "labels": task.labels}
    if task.choose:  # the loop is chosen from the support set: not the same adapter
        header["choose"] = True
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for array in (task.support_x, task.support_y):
        digest.update(str(array.dtype).encode() + str(array.shape).encode())
        digest.update(array.tobytes())
    return "ad-" + digest.hexdigest()[:32]


class AdapterCache:
    """Least-recently-used adapters, at most ``max_bytes`` of tensors in all."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, Adapter] = OrderedDict()
        self.bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def put(self, adapter: Adapter) -> None:
        if adapter.id in self._items:
            self._items.move_to_end(adapter.id)
            return
        if adapter.nbytes > self.max_bytes:
            return
        self._items[adapter.id] = adapter
        self.bytes += adapter.nbytes
        while self.bytes > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self.bytes -= evicted.nbytes
            self.evictions += 1

    def get(self, key: str) -> Adapter | None:
        adapter = self._items.get(key)
        if adapter is not None:
            self._items.move_to_end(key)
        return adapter
