"""ASGI middleware of the HTTP processes, outermost first.

- :class:`RequestLogMiddleware`: one JSON log line and the Prometheus counters per request
  (successful ``/health`` and ``/metrics`` polls are counted but not logged), an
  ``X-Request-ID`` header on every response; payloads are never logged;
- :class:`ApiKeyMiddleware`: with a key configured, every path except ``/health`` needs
  ``X-API-Key: KEY`` or ``Authorization: Bearer KEY`` (constant-time comparison), else 401;
  ``/health`` stays open so container health checks work without the secret, and so do the
  drawing page (``/``, ``/assets/...``), which asks the user for the key;
- :class:`BodySizeMiddleware`: a declared ``Content-Length`` above the limit is refused with 413
  before the body is read (LitServe's ``max_payload_size`` also stops chunked/undeclared bodies);
- :class:`OverloadMiddleware`: reads a ``/v1/predict`` body completely, within
  ``body_timeout_s`` (else 408), and only *then* counts the request in flight: at most
  ``max_in_flight`` at once across all HTTP processes (a shared counter); more get 503 with
  ``Retry-After``. Counting before the body arrived let 128 sockets that send half a body and
  wait lock every client out. While the server drains for shutdown (:class:`DrainState`), new
  requests get 503 and the ones in flight are finished. A request not answered within
  ``request_timeout_s`` gets 504 and gives its slot back: without that, a request whose worker
  was killed waited forever and held its slot for good.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from innerloop_server import logs
from innerloop_server.metrics import metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/health", "/"})
OPEN_PREFIXES = ("/assets/",)  # the drawing page's static files: no data, no model access
KNOWN_PATHS = frozenset(
    {
        "/v1/predict",
        "/v1/adapt",
        "/v1/models",
        "/health",
        "/metrics",
        "/info",
        "/docs",
        "/openapi.json",
        "/",
    }
)
QUIET_PATHS = frozenset({"/health", "/metrics"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


class RequestLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = _header(scope, b"x-request-id")
        request_id = given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                if not any(key.lower() == b"content-type" for key, _ in headers):
                    # LitServe's /health answers "ok" with no type; the schema says text/plain
                    headers.append((b"content-type", b"text/plain; charset=utf-8"))
                message["headers"] = [*headers, (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            path = scope.get("path", "")
            label = path if path in KNOWN_PATHS else "other"
            m = metrics()
            m.requests.labels(method=scope.get("method", ""), path=label, status=str(status)).inc()
            m.latency.labels(path=label).observe(seconds)
            if status >= 400:
                m.errors.labels(path=label, status=str(status)).inc()
            if not (status == 200 and path in QUIET_PATHS):  # health checks: counted only
                logs.event(
                    "http_request",
                    method=scope.get("method"),
                    path=path,
                    status=status,
                    ms=round(seconds * 1000.0, 2),
                    bytes_in=_header(scope, b"content-length"),
                    request_id=request_id,
                    client=(scope.get("client") or ("", 0))[0],
                )


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        offered = _header(scope, b"x-api-key")
        authorization = _header(scope, b"authorization")
        if offered is None and authorization and authorization[:7].lower() == "bearer ":
            offered = authorization[7:].strip()
        if offered is not None and hmac.compare_digest(offered.encode("latin-1"), self.key):
            await self.app(scope, receive, send)
            return
        reason = "missing" if offered is None else "wrong"
        await send_json(
            send,
            401,
            {
                "detail": f"X-API-Key: API key {reason}; send it as "
                "'X-API-Key: KEY' or 'Authorization: Bearer KEY'"
            },
            [(b"www-authenticate", b"Bearer")],
        )


class BodySizeMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = _header(scope, b"content-length") if scope["type"] == "http" else None
        if declared is not None:
            if not declared.strip().isdigit():
                await send_json(send, 400, {"detail": "Content-Length: not a number"})
                return
            if int(declared) > self.max_bytes:
                await send_json(
                    send,
                    413,
                    {
                        "detail": f"body: {int(declared)} bytes; at most {self.max_bytes} allowed "
                        "(send fewer or smaller images)"
                    },
                )
                return
        await self.app(scope, receive, send)


class DrainState:
    """Shared by the main process and the forked HTTP processes (create before they fork).

    ``in_flight`` counts requests whose body has been read and whose answer is not yet sent;
    ``draining`` is set by the main process on SIGTERM, after which new requests get 503.
    """

    def __init__(self) -> None:
        import multiprocessing

        self.in_flight = multiprocessing.Value("i", 0)
        self.draining = multiprocessing.Value("b", 0)

    def wait_idle(self, grace_s: float, poll_s: float = 0.05) -> int:
        """Refuse new requests, then wait up to ``grace_s`` for in-flight ones; returns how many
        were still in flight when it gave up (0 = drained)."""
        self.draining.value = 1
        deadline = time.monotonic() + grace_s
        while self.in_flight.value > 0 and time.monotonic() < deadline:
            time.sleep(poll_s)
        return int(self.in_flight.value)


class OverloadMiddleware:
    """Bounded in-flight requests on ``path``(s); ``counter`` is shared by forked processes."""

    def __init__(
        self,
        app: ASGIApp,
        counter: Any,
        max_in_flight: int,
        path: str | frozenset[str],
        retry_after_s: int = 1,
        body_timeout_s: float = 10.0,
        draining: Any = None,
        max_body_bytes: int | None = None,
        request_timeout_s: float | None = None,
    ) -> None:
        self.app = app
        self.counter = counter  # multiprocessing.Value("i") created before the HTTP processes fork
        self.max_in_flight = max_in_flight
        self.paths = frozenset({path}) if isinstance(path, str) else path
        self.retry_after = str(retry_after_s).encode()
        self.body_timeout_s = body_timeout_s
        self.draining = draining  # multiprocessing.Value("b") or None
        self.max_body_bytes = max_body_bytes
        self.request_timeout_s = request_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        if self.draining is not None and self.draining.value:
            await self._refuse(send, "server is shutting down; retry on another instance or later")
            return
        body = await self._read_body(receive, send)
        if body is None:
            return
        if self.draining is not None and self.draining.value:
            await self._refuse(send, "server is shutting down; retry on another instance or later")
            return
        with self.counter.get_lock():
            busy = self.counter.value >= self.max_in_flight
            if not busy:
                self.counter.value += 1
        if busy:
            await self._refuse(
                send,
                f"server busy: {self.max_in_flight} requests in flight (--max-in-flight); "
                "retry later",
            )
            return
        gauge = metrics().in_flight
        gauge.inc()
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: http.disconnect when the client leaves

        answering = False

        async def tracked(message: Message) -> None:
            nonlocal answering
            answering = answering or message["type"] == "http.response.start"
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, replay, tracked), self.request_timeout_s)
        except TimeoutError:
            if not answering:
                await send_json(
                    send,
                    504,
                    {
                        "detail": f"worker: no answer within {self.request_timeout_s:g} s "
                        "(--request-timeout); the server is overloaded or its worker was "
                        "restarted; retry"
                    },
                )
        finally:
            gauge.dec()
            with self.counter.get_lock():
                self.counter.value -= 1

    async def _refuse(self, send: Send, detail: str) -> None:
        await send_json(send, 503, {"detail": detail}, [(b"retry-after", self.retry_after)])

    async def _read_body(self, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or ``None`` after answering 408 (too slow) or the client leaving."""
        chunks: list[bytes] = []
        size = 0
        deadline = time.monotonic() + self.body_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                message = await asyncio.wait_for(receive(), remaining)
            except TimeoutError:
                await send_json(
                    send,
                    408,
                    {
                        "detail": f"body: not received completely within {self.body_timeout_s:g} s "
                        "(--body-timeout); send the whole request at once"
                    },
                    [(b"connection", b"close")],
                )
                return None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if self.max_body_bytes is not None and size > self.max_body_bytes:
                await send_json(
                    send,
                    413,
                    {
                        "detail": f"body: more than {self.max_body_bytes} bytes; at most "
                        f"{self.max_body_bytes} allowed (send fewer or smaller images)"
                    },
                    [(b"connection", b"close")],
                )
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
