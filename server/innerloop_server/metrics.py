"""Prometheus metrics across the server's processes, exposed at ``GET /metrics``.

LitServe runs HTTP servers (forked) and inference workers (spawned) as separate processes, so
metrics use prometheus_client's multiprocess mode: :func:`enable_multiprocess` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before any worker starts; every process writes
its samples there and ``/metrics`` sums them. HTTP processes count requests, errors by status,
latency and in-flight requests; workers record batch sizes, adaptation time and queries served.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

ENV = "PROMETHEUS_MULTIPROC_DIR"
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def enable_multiprocess() -> tuple[Path, bool]:
    """Use multiprocess mode; return the folder and whether we created it (and must delete it).

    Must run in the main process before workers start. An existing ``PROMETHEUS_MULTIPROC_DIR``
    (set by the operator) is used as is.
    """
    existing = os.environ.get(ENV)
    created = False
    if existing:
        folder = Path(existing)
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix="innerloop-metrics-"))
        os.environ[ENV] = str(folder)
        created = True
    # prometheus_client picks its value class at import time; if something imported it before
    # the variable was set, switch it now (metrics are created lazily, after this call).
    from prometheus_client import values

    values.ValueClass = values.get_value_class()
    return folder, created


def cleanup(folder: Path, created: bool) -> None:
    if created:
        shutil.rmtree(folder, ignore_errors=True)


class Metrics:
    """The server's metrics; create through :func:`metrics` (one set per process)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter(
            "innerloop_http_requests_total", "HTTP requests answered", ["method", "path", "status"]
        )
        self.errors = Counter(
            "innerloop_http_errors_total", "HTTP responses with status >= 400", ["path", "status"]
        )
        self.latency = Histogram(
            "innerloop_http_request_duration_seconds",
            "Time from request received to response sent",
            ["path"],
            buckets=_SECONDS_BUCKETS,
        )
        self.in_flight = Gauge(
            "innerloop_predict_in_flight",
            "/v1/predict requests in progress",
            multiprocess_mode="livesum",
        )
        self.batch_requests = Histogram(
            "innerloop_batch_requests",
            "Requests handled together by one worker iteration",
            buckets=_SIZE_BUCKETS,
        )
        self.call_tasks = Histogram(
            "innerloop_adapt_call_tasks",
            "Requests (tasks) sharing one adapt_and_predict call",
            buckets=_SIZE_BUCKETS,
        )
        self.adaptation = Histogram(
            "innerloop_adaptation_seconds",
            "Wall time of one adapt_and_predict call",
            ["model"],
            buckets=_SECONDS_BUCKETS,
        )
        self.queries = Counter("innerloop_queries_total", "Query items predicted", ["model"])


@lru_cache(maxsize=1)
def metrics() -> Metrics:
    return Metrics()


def render() -> tuple[bytes, str]:
    """The exposition text for ``/metrics`` (summed over processes in multiprocess mode)."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry: Any = REGISTRY
    if os.environ.get(ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST
