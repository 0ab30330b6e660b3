"""Exceptions raised by the innerloop client.

Every failure the caller can act on maps to one class, so that application code
can write ``except OverloadedError`` (shed load, try later) separately from
``except BadRequestError`` (fix the request) without parsing status codes. Each
carries the HTTP status, the server's own message (its ``detail``) and the raw
body, because the server's message names the offending field and that is the
part a user needs to see.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "ConnectionFailedError",
    "InnerloopError",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "RequestTimeoutError",
    "ResponseFormatError",
    "ServerError",
    "error_from_response",
]


class InnerloopError(Exception):
    """Base class of every error the client raises about a request.

    Attributes:
        status_code: The HTTP status, or ``None`` when no response arrived.
        message: A human-readable message; the server's ``detail`` when it sent one.
        body: The decoded JSON body (or the raw text) of the error response.
        attempts: How many times the request was sent before giving up.
    """

    def __init__(
        self,
        status_code: int | None,
        message: str,
        body: Any = None,
        *,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.body = body
        self.attempts = attempts

    def __str__(self) -> str:
        prefix = f"HTTP {self.status_code}: " if self.status_code is not None else ""
        suffix = f" (after {self.attempts} attempts)" if self.attempts > 1 else ""
        return f"{prefix}{self.message}{suffix}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status_code={self.status_code!r}, message={self.message!r})"


class BadRequestError(InnerloopError):
    """400 or 422: the request broke the contract or a limit; retrying cannot help."""


class AuthenticationError(InnerloopError):
    """401: the API key is missing or wrong."""


class NotFoundError(InnerloopError):
    """404: the requested model (or path) does not exist on this server."""


class PayloadTooLargeError(InnerloopError):
    """413: the request body exceeds the server's size limit; send fewer or smaller inputs."""


class ServerError(InnerloopError):
    """5xx: the server failed. Not retried, except for 503 (see ``OverloadedError``)."""


class OverloadedError(ServerError):
    """503: the server shed the request; retried automatically, raised once retries ran out.

    Attributes:
        retry_after: Seconds the server asked the client to wait, if it said.
    """

    def __init__(
        self,
        status_code: int | None,
        message: str,
        body: Any = None,
        *,
        attempts: int = 1,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(status_code, message, body, attempts=attempts)
        self.retry_after = retry_after


class ConnectionFailedError(InnerloopError):
    """No HTTP response arrived (refused, reset, DNS, ...), also after retrying."""


class RequestTimeoutError(ConnectionFailedError):
    """The server accepted the request but did not answer within ``timeout``.

    Not retried: the server is most likely still busy with it, and sending it
    again would only add load.
    """


class ResponseFormatError(InnerloopError):
    """A 2xx response whose body does not match the HTTP contract (client/server version skew)."""


_BY_STATUS: dict[int, type[InnerloopError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    413: PayloadTooLargeError,
    422: BadRequestError,
    503: OverloadedError,
}


def _format_detail(detail: Any) -> str | None:
    """Turn FastAPI's ``detail`` (a string, or a list of pydantic errors) into one line."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list) and detail:
        parts: list[str] = []
        for item in detail:
            if isinstance(item, dict) and "msg" in item:
                loc = item.get("loc") or ()
                where = ".".join(str(p) for p in loc) if isinstance(loc, list | tuple) else str(loc)
                parts.append(f"{where}: {item['msg']}" if where else str(item["msg"]))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    if detail is not None:
        return json.dumps(detail, default=str)
    return None


def error_from_response(
    status_code: int,
    body: Any,
    *,
    reason: str = "",
    attempts: int = 1,
    retry_after: float | None = None,
) -> InnerloopError:
    """Build the exception matching ``status_code``, carrying the server's message.

    ``body`` is the decoded JSON if the response was JSON, otherwise its text.
    """
    message: str | None = None
    if isinstance(body, dict):
        message = _format_detail(body.get("detail"))
    elif isinstance(body, str) and body.strip():
        message = body.strip()[:1000]
    if not message:
        message = reason or f"HTTP {status_code}"

    cls = _BY_STATUS.get(status_code)
    if cls is None:
        cls = ServerError if status_code >= 500 else InnerloopError
    if cls is OverloadedError:
        return OverloadedError(
            status_code, message, body, attempts=attempts, retry_after=retry_after
        )
    return cls(status_code, message, body, attempts=attempts)
