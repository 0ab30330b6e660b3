"""Build and run the ``LitServer``: routes, middleware, metrics, shutdown.

Routes:

- ``POST /v1/predict``: adapt and predict (:mod:`innerloop_server.api`), or predict with an
  adapter from ``POST /v1/adapt`` (adapt once, predict many): the workers adapt, the HTTP process
  keeps the adapters and answers their predicts (:mod:`innerloop_server.adapter_store`);
- ``GET /v1/models``: the served models' cards (:func:`~innerloop_server.registry.summarize_card`);
- ``GET /health``: 200 ``ok`` once every worker has loaded its models (open even with an API key);
- ``GET /metrics``: Prometheus text, summed over the HTTP and worker processes;
- ``GET /docs``, ``/redoc``, ``/openapi.json``: the schema, from local files
  (:mod:`innerloop_server.pages`); ``GET /info``: LitServe's server info;
- ``GET /``: the drawing page (:mod:`innerloop_server.pages`).

A worker that dies (even of SIGKILL) is restarted (``restart_workers``); the server stays up.

Shutdown: SIGTERM first drains: new requests get 503 and those in flight are answered, for up
to ``--shutdown-grace`` seconds; then it is turned into the SIGINT path (LitServe 0.2.19
otherwise exits its main process only and leaves workers answering), and any child process
still alive afterwards is terminated, so ``docker stop`` leaves nothing behind.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from dataclasses import dataclass
from types import FrameType
from typing import Any

import litserve as ls
import torch
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from litserve.server import RegularRequestHandler
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware

from innerloop_server import logs
from innerloop_server.adapter_store import AdapterStore
from innerloop_server.api import ADAPT_PATH, API_PATH, InnerloopAPI
from innerloop_server.decoding import Task, TooLargeToDecodeInline, decode_request
from innerloop_server.errors import document_errors, validation_detail
from innerloop_server.limits import Limits
from innerloop_server.metrics import cleanup, enable_multiprocess, render
from innerloop_server.middleware import (
    ApiKeyMiddleware,
    BodySizeMiddleware,
    DrainState,
    OverloadMiddleware,
    RequestLogMiddleware,
)
from innerloop_server.pages import install_pages
from innerloop_server.registry import Registry, summarize_card
from innerloop_server.schemas import AdaptRequest, AdaptResponse, PredictRequest, PredictResponse

FASTAPI_PARSE_ERROR = "There was an error parsing the body"


@dataclass
class ServerConfig:
    """How to serve; the request bounds live in :class:`~innerloop_server.limits.Limits`."""

    limits: Limits
    device: str = "auto"  # auto | cpu | cuda
    workers: int = 1  # inference workers per device
    api_key: str | None = None
    max_batch_size: int = 16
    batch_timeout: float = 0.005
    timeout: float = 30.0  # seconds a request may wait in the queue before 504
    threads: int | None = None  # torch threads per worker
    body_timeout: float = 10.0  # seconds to receive a whole request body before 408
    shutdown_grace: float = 30.0  # seconds SIGTERM waits for in-flight requests
    request_timeout: float = 120.0  # seconds from body read to answer before 504


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is usable, else ``cpu``; ``cuda`` without one is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but torch sees no CUDA GPU")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, not {device!r}")
    return device


def default_threads(workers: int) -> int:
    """Torch threads per worker when ``--threads`` is not given: the cores this process may
    use, less one for the HTTP process, shared among the workers, at least one.

    Not torch's default (every core): an OpenMP region needs all its threads scheduled, so
    when anything else wants a core (the HTTP process decoding, another program) each of the
    forward's many small kernels waits for a time slice. Measured on 2 cores with one busy
    elsewhere, shipped omniglot, 5-way 1-shot over HTTP: p50 264 ms with 2 threads, 32 ms with 1.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, (cores - 1) // max(workers, 1))


GZIP_MINIMUM_BYTES = 16 * 1024


def _compress_only_large_answers(server: ls.LitServer) -> None:
    """Raise LitServe's gzip threshold from 1,000 bytes to :data:`GZIP_MINIMUM_BYTES`.

    A five-query answer is ~1.1 kB: compressing it cost 3% of the HTTP process's time under
    load (py-spy) to save a kilobyte. Answers with many queries, where gzip saves real
    transfer time, are still compressed for clients that accept it.
    """
    app = server.app  # the middleware stack is built at the first request: edit it before
    app.user_middleware = [
        Middleware(GZipMiddleware, **{**entry.kwargs, "minimum_size": GZIP_MINIMUM_BYTES})
        if entry.cls is GZipMiddleware
        else entry
        for entry in app.user_middleware
    ]


def build_server(registry: Registry, config: ServerConfig) -> ls.LitServer:
    accelerator = resolve_device(config.device)
    api = InnerloopAPI(
        [m.path for m in registry.models.values()],
        config.limits,
        max_batch_size=config.max_batch_size,
        batch_timeout=config.batch_timeout,
        threads=config.threads or default_threads(config.workers),
    )
    server = ls.LitServer(
        api,
        accelerator=accelerator,
        # torch's count, not LitServe's "auto" (which asks nvidia-smi, absent in many images)
        devices=torch.cuda.device_count() if accelerator == "cuda" else 1,
        workers_per_device=config.workers,
        timeout=config.timeout,
        max_payload_size=int(config.limits.max_body_bytes),
        model_metadata={"models": registry.names, "default": registry.default},
        restart_workers=True,
    )
    _compress_only_large_answers(server)
    app = server.app
    install_pages(app)
    models = {
        "default": registry.default,
        "models": [
            summarize_card(m.name, m.card, config.limits, m.name == registry.default)
            for m in registry.models.values()
        ],
    }

    _route_through_decoding(server, api, registry, config.limits)

    @app.get("/v1/models", tags=["models"], summary="Cards of the models this server serves")
    async def list_models() -> dict[str, Any]:
        return models

    @app.get("/metrics", tags=["monitoring"], summary="Prometheus metrics")
    async def prometheus_metrics() -> Response:
        body, content_type = render()
        return Response(body, media_type=content_type)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_detail(error.errors()), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        if error.status_code == 400 and error.detail == FASTAPI_PARSE_ERROR:
            # json.loads raised something other than JSONDecodeError (e.g. an integer literal
            # with more than 4300 digits): say which field, like every other error
            return JSONResponse(
                {
                    "detail": "body: could not be parsed as JSON (malformed, or "
                    "a number with more than 4300 digits)"
                },
                status_code=400,
            )
        return await http_exception_handler(request, error)

    # added last = outermost: log -> API key -> body size -> overload -> LitServe's own
    drain = server.innerloop_drain = DrainState()  # shared by the forked HTTP processes
    app.add_middleware(
        OverloadMiddleware,
        counter=drain.in_flight,
        max_in_flight=config.limits.max_in_flight,
        path=frozenset({API_PATH, ADAPT_PATH}),
        body_timeout_s=config.body_timeout,
        draining=drain.draining,
        max_body_bytes=config.limits.max_body_bytes,
        request_timeout_s=config.request_timeout,
    )
    app.add_middleware(BodySizeMiddleware, max_bytes=config.limits.max_body_bytes)
    if config.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=config.api_key)
    app.add_middleware(RequestLogMiddleware)
    document_errors(app)
    return server


INLINE_DECODE_ITEMS = 32
INLINE_DECODE_PIXELS = 512 * 512
INLINE_DECODE_CHARACTERS = 1024 * 1024


async def decode_small_inline(
    request: PredictRequest | AdaptRequest, registry: Registry, limits: Limits
) -> Task:
    """Decode a small request on the event loop, anything larger in a worker thread.

    Every request went to the thread pool (``run_in_threadpool``) so that one full of images
    would not hold up the event loop. But a few drawings take 0.15 ms each, less than the hop:
    at 32 clients, dozens of pool threads decoding at once fought each other and the event loop
    for the GIL. Side by side (``benchmarks/bench_versions.py``, 5 interleaved rounds, 5-way
    1-shot with 10 steps, 2-core AMD EPYC; the README has the command) 32-client throughput went
    from 160.5 to 190.7 req/s (median), one client's from 43.6 to 45.4 req/s. So a request of
    at most :data:`INLINE_DECODE_ITEMS` inputs and :data:`INLINE_DECODE_CHARACTERS` of image
    text decodes here, and gives up for the thread pool, before decoding it, at the image that
    would take it past :data:`INLINE_DECODE_PIXELS` (one 512x512 image or 21 105x105 drawings:
    at most ~1 ms of this loop; a 1024x1024 image alone takes ~5 ms).
    """
    inputs = [item.x for item in request.support or []]
    if isinstance(request, PredictRequest):
        inputs += request.query
    characters = sum(len(x) for x in inputs if isinstance(x, str))
    if len(inputs) <= INLINE_DECODE_ITEMS and characters <= INLINE_DECODE_CHARACTERS:
        try:
            return decode_request(request, registry, limits, inline_pixels=INLINE_DECODE_PIXELS)
        except TooLargeToDecodeInline:
            pass
    return await run_in_threadpool(decode_request, request, registry, limits)


def _route_through_decoding(
    server: ls.LitServer, api: InnerloopAPI, registry: Registry, limits: Limits
) -> None:
    """``POST /v1/predict`` and ``POST /v1/adapt`` decode in the HTTP process, then queue.

    LitServe 0.2.19 calls ``decode_request`` inside the inference worker, serialised with
    ``predict``: base64 and PNG decoding of one request full of images would stall every other
    request's adaptation, and on a 2-core machine the worker would do all the work while the
    HTTP process idles. Here the (validated) request is decoded to a
    :class:`~innerloop_server.decoding.Task` of arrays in the HTTP process (small requests on
    its event loop, others in a thread: :func:`decode_small_inline`), so decoding overlaps the
    worker's adaptation and a bad image is refused before it is queued.
    The worker's ``decode_request`` passes a ``Task`` through.

    ``/v1/adapt`` is fed to the /v1/predict worker queue (LitServe gives every api_path its own
    workers); the answer brings the adapted tensors back, and this process keeps them
    (:class:`~innerloop_server.adapter_store.AdapterStore`) and answers a predict with an
    ``adapter`` itself, in a thread: one forward pass, no queue, and one set of adapters
    whatever the number of workers.
    """
    handler = RegularRequestHandler(api, server)
    store = AdapterStore(registry, limits)

    async def submit(task: Task) -> Any:
        return await handler.handle_request(task, Task)

    async def predict(request: PredictRequest) -> PredictResponse:
        if request.adapter is not None:
            with_adapter: Any = await run_in_threadpool(store.predict, request)
            return with_adapter  # the encoded dict, validated as PredictResponse
        task = await decode_small_inline(request, registry, limits)
        answer: PredictResponse = await submit(task)
        return answer

    async def adapt(request: AdaptRequest) -> AdaptResponse:
        task = await decode_small_inline(request, registry, limits)
        answer: Any = await submit(task)  # the worker's encoded dict, validated on return
        kept: AdaptResponse = store.keep(answer)  # type: ignore[assignment]
        return kept

    app = server.app
    app.router.routes = [
        route
        for route in app.router.routes
        if not (isinstance(route, APIRoute) and route.path == API_PATH)
    ]
    routes: list[tuple[str, Any, type, str]] = [
        (
            API_PATH,
            predict,
            PredictResponse,
            "Adapt to the support set and predict the queries (or predict with an adapter)",
        ),
        (
            ADAPT_PATH,
            adapt,
            AdaptResponse,
            "Adapt once on a support set; predict many times with the returned adapter id",
        ),
    ]
    for path, endpoint, response_model, summary in routes:
        app.add_api_route(
            path,
            endpoint,
            methods=["POST"],
            response_model=response_model,
            dependencies=[Depends(server.setup_auth(api))],
            tags=["predict"],
            summary=summary,
        )


class _QuietMonitorShutdown(logging.Filter):
    """LitServe 0.2.19's worker monitor (``restart_workers``) polls a manager-held event; when
    the manager exits first at shutdown, the poll raises a connection error that LitServe logs
    as "Monitoring worker crashed" with a traceback. That is a race of its shutdown order, not
    a fault: log it as one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if record.getMessage() == "Monitoring worker crashed" and isinstance(
            error, OSError | EOFError
        ):
            record.msg = f"worker monitor stopped: {type(error).__name__} (manager already gone)"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


logging.getLogger("litserve.server").addFilter(_QuietMonitorShutdown())


class _Terminated:
    """SIGTERM handler: behave like Ctrl+C once; ignore repeats while shutting down."""

    def __init__(self, drain: DrainState | None = None, grace_s: float = 0.0) -> None:
        self.seen = False
        self.pid = os.getpid()
        self.drain = drain
        self.grace_s = grace_s

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self.pid:
            # a forked child (uvicorn re-raises the signal after its own graceful shutdown):
            # die of it the default way instead of raising KeyboardInterrupt there
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.seen:
            return
        self.seen = True
        if self.drain is not None and self.grace_s > 0:
            logs.event("signal", signal="SIGTERM", action="draining", grace_s=self.grace_s)
            left = self.drain.wait_idle(self.grace_s)
            logs.event("drained", requests_still_in_flight=left)
        logs.event("signal", signal="SIGTERM", action="shutting down")
        raise KeyboardInterrupt


def terminate_children(grace_s: float = 5.0) -> None:
    """Terminate (then kill) any child process LitServe left running."""
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(grace_s)
        if child.is_alive():
            child.kill()
            child.join(1.0)


def serve(
    registry: Registry, config: ServerConfig, host: str, port: int, log_level: str = "info"
) -> int:
    """Run until SIGINT/SIGTERM; returns the exit status."""
    folder, created = enable_multiprocess()  # before any worker process starts
    terminated = _Terminated(grace_s=config.shutdown_grace)
    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        server = build_server(registry, config)
        terminated.drain = server.innerloop_drain
        logs.event(
            "starting",
            host=host,
            port=port,
            models=registry.names,
            default=registry.default,
            device=resolve_device(config.device),
            workers=config.workers,
            max_batch_size=config.max_batch_size,
            batch_timeout=config.batch_timeout,
            api_key=bool(config.api_key),
            skipped=registry.skipped,
        )
        server.run(
            host=host, port=port, generate_client_file=False, log_level=log_level, access_log=False
        )
    except KeyboardInterrupt:
        pass
    finally:
        terminate_children()
        signal.signal(signal.SIGTERM, previous)
        cleanup(folder, created)
        logs.event("stopped")
    return 0
