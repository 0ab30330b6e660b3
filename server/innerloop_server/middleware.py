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
- :class:`OverloadMiddleware`: at most ``max_in_flight`` ``/v1/predict`` requests at once across
  all HTTP processes (a shared counter); more get 503 with ``Retry-After``.
"""

from __future__ import annotations

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
    {"/v1/predict", "/v1/models", "/health", "/metrics", "/info", "/docs", "/openapi.json", "/"}
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
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
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


class OverloadMiddleware:
    """Bounded in-flight ``/v1/predict`` requests; ``counter`` is shared by forked processes."""

    def __init__(
        self, app: ASGIApp, counter: Any, max_in_flight: int, path: str, retry_after_s: int = 1
    ) -> None:
        self.app = app
        self.counter = counter  # multiprocessing.Value("i") created before the HTTP processes fork
        self.max_in_flight = max_in_flight
        self.path = path
        self.retry_after = str(retry_after_s).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != self.path:
            await self.app(scope, receive, send)
            return
        with self.counter.get_lock():
            busy = self.counter.value >= self.max_in_flight
            if not busy:
                self.counter.value += 1
        if busy:
            await send_json(
                send,
                503,
                {
                    "detail": f"server busy: {self.max_in_flight} requests in flight "
                    "(--max-in-flight); retry later"
                },
                [(b"retry-after", self.retry_after)],
            )
            return
        gauge = metrics().in_flight
        gauge.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            gauge.dec()
            with self.counter.get_lock():
                self.counter.value -= 1
