"""Synchronous and asynchronous clients for the innerloop HTTP API (v1).

Both clients share everything except the transport: ``_ClientBase`` builds the
request body, decides whether and how long to wait before a retry, and turns a
response into a typed result or an exception. ``Client`` and ``AsyncClient``
only send requests and sleep, so the two cannot drift apart in behaviour.

Retry policy: a request is retried only when retrying can help, namely when no
response arrived (connection refused, reset, dropped) or the server answered
503 (overloaded, or still starting). Every other status is final: a 4xx means
the request itself is wrong, and a 500 would most likely fail again. Waits grow
exponentially with jitter, and a ``Retry-After`` from the server is honoured up
to ``max_backoff`` so one misconfigured header cannot stall the caller.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import os
import random
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from ._encoding import Input, Label, Target, _is_ndarray, encode_input, encode_target
from ._errors import (
    AuthenticationError,
    ConnectionFailedError,
    RequestTimeoutError,
    ResponseFormatError,
    error_from_response,
)
from ._types import AdaptResult, ModelCard, ModelList, PredictResult
from ._version import __version__

__all__ = ["Adapter", "AsyncAdapter", "AsyncClient", "Client", "build_predict_body"]

_ModelT = TypeVar("_ModelT", bound=BaseModel)

# Errors after which no response arrived and sending again is safe: predictions
# are deterministic and side-effect free, so a duplicate costs only compute.
_RETRYABLE_TRANSPORT_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.CloseError,
    httpx.RemoteProtocolError,
)


def _sleep(seconds: float) -> None:
    """Blocking wait between retries (module-level so tests can observe it)."""
    time.sleep(seconds)


async def _async_sleep(seconds: float) -> None:
    """Non-blocking wait between retries (module-level so tests can observe it)."""
    await asyncio.sleep(seconds)


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        seconds = email.utils.mktime_tz(parsed) - time.time()
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def _is_input_container(value: object) -> bool:
    """True for sequences of inputs; false for the single-input types that are also sequences."""
    if isinstance(value, str | bytes | bytearray | memoryview | os.PathLike):
        return False
    return isinstance(value, Sequence) or _is_ndarray(value)


def _build_support(support: Any) -> list[dict[str, Any]]:
    """Normalise the accepted support forms into ``[{"x": ..., "y": ...}, ...]``.

    Accepted: a mapping ``{label: [x, ...]}``, or a sequence whose items are
    ``(x, y)`` pairs or ``{"x": x, "y": y}`` dicts. The mapping form is the
    natural one for classification; pairs also cover regression.
    """
    items: list[dict[str, Any]] = []
    if isinstance(support, Mapping):
        for label, examples in support.items():
            if not _is_input_container(examples):
                raise TypeError(
                    f"support[{label!r}] must be a list of inputs, not "
                    f"{type(examples).__name__}; wrap a single example in a list"
                )
            y = encode_target(label)
            for j, x in enumerate(examples):
                try:
                    items.append({"x": encode_input(x), "y": y})
                except (TypeError, ValueError) as exc:
                    raise type(exc)(f"support[{label!r}][{j}]: {exc}") from exc
    elif _is_input_container(support):
        for i, item in enumerate(support):
            if isinstance(item, Mapping):
                if "x" not in item or "y" not in item:
                    raise TypeError(f"support[{i}] must have keys 'x' and 'y'")
                x, y = item["x"], item["y"]
            elif isinstance(item, tuple | list) and len(item) == 2:
                x, y = item
            else:
                raise TypeError(
                    f"support[{i}] must be an (x, y) pair or a dict with 'x' and 'y', "
                    f"not {type(item).__name__}"
                )
            try:
                items.append({"x": encode_input(x), "y": encode_target(y)})
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"support[{i}]: {exc}") from exc
    else:
        raise TypeError(
            "support must be a mapping {label: [inputs]} or a sequence of (x, y) pairs, "
            f"not {type(support).__name__}"
        )
    if not items:
        raise ValueError("support must contain at least one example")
    return items


def _build_query(query: Any) -> list[str | list[float]]:
    if not _is_input_container(query):
        raise TypeError(
            f"query must be a sequence of inputs, not {type(query).__name__}; "
            "wrap a single input in a list"
        )
    out: list[str | list[float]] = []
    for i, x in enumerate(query):
        try:
            out.append(encode_input(x))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"query[{i}]: {exc}") from exc
    if not out:
        raise ValueError("query must contain at least one input")
    return out


def _check_optional_int(name: str, value: Any, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def build_predict_body(
    support: Any,
    query: Any,
    *,
    model: str | None = None,
    steps: int | None = None,
    lr: float | None = None,
    top_k: int | None = None,
    adapt_only: bool = False,
) -> dict[str, Any]:
    """Build the JSON body of ``POST /v1/predict``; optional fields left ``None`` are omitted
    so the server's (bounded) defaults apply. ``adapt_only`` skips the query (``/v1/adapt``)."""
    _check_optional_int("steps", steps, 0)
    _check_optional_int("top_k", top_k, 1)
    if lr is not None:
        if isinstance(lr, bool) or not isinstance(lr, int | float):
            raise TypeError(f"lr must be a number, not {type(lr).__name__}")
        if not math.isfinite(lr) or lr < 0:
            raise ValueError(f"lr must be a finite number >= 0, got {lr}")
    body: dict[str, Any] = {}
    if model is not None:
        body["model"] = model
    body["support"] = _build_support(support)
    body["query"] = [] if adapt_only else _build_query(query)
    if steps is not None:
        body["steps"] = steps
    if lr is not None:
        body["lr"] = float(lr)
    if top_k is not None:
        body["top_k"] = top_k
    return body


def build_adapt_body(
    support: Any, *, model: str | None = None, steps: int | None = None, lr: float | None = None
) -> dict[str, Any]:
    """The JSON body of ``POST /v1/adapt`` (a predict body without query and top_k)."""
    body = build_predict_body(support, [], model=model, steps=steps, lr=lr, adapt_only=True)
    del body["query"]
    return body


def build_adapter_predict_body(
    adapter: str, query: Any, *, top_k: int | None = None
) -> dict[str, Any]:
    """The JSON body of ``POST /v1/predict`` with an adapter: queries only."""
    _check_optional_int("top_k", top_k, 1)
    body: dict[str, Any] = {"adapter": adapter, "query": _build_query(query)}
    if top_k is not None:
        body["top_k"] = top_k
    return body


class Adapter:
    """A support set adapted once on the server (``Client.adapt``); predict with it many times.

    The server keeps adapters in a bounded cache: when this one was evicted, ``predict`` raises
    :class:`NotFoundError`; call ``Client.adapt`` again with the same support (same id).
    """

    def __init__(self, client: Client, result: AdaptResult) -> None:
        self.client = client
        self.result = result
        self.id = result.adapter

    def __repr__(self) -> str:
        return f"Adapter({self.id!r}, model={self.result.model!r})"

    def predict(self, query: Sequence[Input], top_k: int | None = None) -> PredictResult:
        body = build_adapter_predict_body(self.id, query, top_k=top_k)
        response = self.client._send("POST", "/v1/predict", self.client._encode_json(body))
        return self.client._parse(PredictResult, response)


class AsyncAdapter:
    """:class:`Adapter` for :class:`AsyncClient`."""

    def __init__(self, client: AsyncClient, result: AdaptResult) -> None:
        self.client = client
        self.result = result
        self.id = result.adapter

    def __repr__(self) -> str:
        return f"AsyncAdapter({self.id!r}, model={self.result.model!r})"

    async def predict(self, query: Sequence[Input], top_k: int | None = None) -> PredictResult:
        body = build_adapter_predict_body(self.id, query, top_k=top_k)
        response = await self.client._send("POST", "/v1/predict", self.client._encode_json(body))
        return self.client._parse(PredictResult, response)


def _decode_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


class _ClientBase:
    """Configuration, request building, retry decisions and response parsing.

    Holds no transport, so the sync and async clients share it verbatim.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float | None = 30.0,
        retries: int = 3,
        backoff: float = 0.25,
        *,
        max_backoff: float = 10.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {retries!r}")
        if backoff < 0 or max_backoff < 0:
            raise ValueError("backoff and max_backoff must be >= 0")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0 or None, got {timeout!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._headers: dict[str, str] = {
            "Accept": "application/json",
            "User-Agent": f"innerloop-client/{__version__}",
        }
        if headers:
            self._headers.update(headers)
        if api_key is not None:
            self._headers["X-API-Key"] = api_key

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    # --- retry policy -------------------------------------------------------------

    def _delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Wait before retry number ``attempt + 1``.

        The server's ``Retry-After`` wins when present (capped); otherwise
        exponential backoff with "equal jitter" (half fixed, half random), which
        keeps a floor on the wait but spreads out clients that were all shed at
        the same moment so they do not return in lockstep.
        """
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        base = min(self.backoff * (2.0**attempt), self.max_backoff)
        return base / 2.0 + random.uniform(0.0, base / 2.0)

    def _retry_delay_for_response(self, attempt: int, response: httpx.Response) -> float | None:
        """Delay before retrying after ``response``, or ``None`` if it is final."""
        if response.status_code != 503 or attempt >= self.retries:
            return None
        return self._delay(attempt, _parse_retry_after(response.headers.get("Retry-After")))

    def _retry_delay_for_error(self, attempt: int, exc: httpx.TransportError) -> float:
        """Delay before retrying after a transport error; raises if it is final."""
        if isinstance(exc, httpx.TimeoutException) and not isinstance(
            exc, httpx.ConnectTimeout | httpx.PoolTimeout
        ):
            raise RequestTimeoutError(
                None,
                f"no response within {self.timeout}s from {self.base_url} ({exc}); "
                "the server may still be working on it. Increase timeout= for large requests.",
                attempts=attempt + 1,
            ) from exc
        if not isinstance(exc, _RETRYABLE_TRANSPORT_ERRORS) or attempt >= self.retries:
            raise ConnectionFailedError(
                None,
                f"could not reach the innerloop server at {self.base_url}: "
                f"{type(exc).__name__}: {exc}",
                attempts=attempt + 1,
            ) from exc
        return self._delay(attempt)

    # --- response parsing ---------------------------------------------------------

    @staticmethod
    def _raise_for_status(response: httpx.Response, attempts: int) -> None:
        if response.is_success:
            return
        raise error_from_response(
            response.status_code,
            _decode_body(response),
            reason=response.reason_phrase,
            attempts=attempts,
            retry_after=_parse_retry_after(response.headers.get("Retry-After")),
        )

    @staticmethod
    def _parse(model: type[_ModelT], response: httpx.Response) -> _ModelT:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise ResponseFormatError(
                response.status_code,
                f"the server's response to {response.request.url.path} does not match "
                f"the innerloop v1 contract ({model.__name__}): {exc}",
                _decode_body(response),
            ) from exc

    @staticmethod
    def _encode_json(body: Mapping[str, Any]) -> bytes:
        # allow_nan=False: NaN/Infinity are not JSON; fail here, not with a server 422.
        return json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")

    @staticmethod
    def _health_from_response(response: httpx.Response) -> bool:
        if response.status_code == 401:
            raise AuthenticationError(401, "the server rejected the API key on /health")
        return response.status_code == 200


class Client(_ClientBase):
    """Blocking client for an innerloop server.

    Args:
        base_url: Server root, e.g. ``"http://127.0.0.1:8000"``.
        api_key: Sent as the ``X-API-Key`` header when the server requires one.
        timeout: Seconds to wait for connecting and for each read; ``None`` waits forever.
        retries: Extra attempts after a connection error or a 503 (0 disables retrying).
        backoff: First retry wait in seconds; doubles on each further retry.
        max_backoff: Upper bound on any single wait, including a server's ``Retry-After``.
        headers: Extra headers sent with every request.

    Example::

        with Client("http://127.0.0.1:8000") as client:
            result = client.predict({"cat": ["cat1.png"], "dog": ["dog1.png"]}, ["x.png"])
            print(result.predictions[0].label)
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float | None = 30.0,
        retries: int = 3,
        backoff: float = 0.25,
        *,
        max_backoff: float = 10.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            timeout,
            retries,
            backoff,
            max_backoff=max_backoff,
            headers=headers,
        )
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=self._headers)

    def _send(self, method: str, path: str, content: bytes | None = None) -> httpx.Response:
        headers = {"Content-Type": "application/json"} if content is not None else None
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, content=content, headers=headers)
            except httpx.TransportError as exc:
                delay = self._retry_delay_for_error(attempt, exc)
            else:
                maybe = self._retry_delay_for_response(attempt, response)
                if maybe is None:
                    self._raise_for_status(response, attempt + 1)
                    return response
                response.close()
                delay = maybe
            attempt += 1
            _sleep(delay)

    def predict(
        self,
        support: Mapping[Label, Sequence[Input]]
        | Sequence[tuple[Input, Target]]
        | Sequence[Mapping[str, Any]],
        query: Sequence[Input],
        model: str | None = None,
        steps: int | None = None,
        lr: float | None = None,
        top_k: int | None = None,
    ) -> PredictResult:
        """Adapt a model to ``support`` and predict every item of ``query``.

        Args:
            support: ``{label: [x, ...]}`` or a sequence of ``(x, y)`` pairs. ``x`` is an
                image (path, bytes, PIL image, HxW/HxWxC array) or a vector; ``y`` a
                ``str``/``int`` label or a number/vector for regression.
            query: Inputs to predict, of the same kind as the support inputs.
            model: Model name; the server's default model when ``None``.
            steps, lr: Inner-loop overrides, bounded by the server.
            top_k: Return only the ``k`` best scores per query.

        Returns:
            The predictions in query order, with labels exactly as given.
        """
        body = build_predict_body(support, query, model=model, steps=steps, lr=lr, top_k=top_k)
        response = self._send("POST", "/v1/predict", self._encode_json(body))
        return self._parse(PredictResult, response)

    def adapt(
        self,
        support: Mapping[Label, Sequence[Input]]
        | Sequence[tuple[Input, Target]]
        | Sequence[Mapping[str, Any]],
        model: str | None = None,
        steps: int | None = None,
        lr: float | None = None,
    ) -> Adapter:
        """Adapt once to ``support`` (``POST /v1/adapt``); ``adapter.predict(query)`` then
        answers without adapting again. Arguments as in :meth:`predict`."""
        body = build_adapt_body(support, model=model, steps=steps, lr=lr)
        response = self._send("POST", "/v1/adapt", self._encode_json(body))
        return Adapter(self, self._parse(AdaptResult, response))

    def model_list(self) -> ModelList:
        """``GET /v1/models``: every model card and the default model's name."""
        return self._parse(ModelList, self._send("GET", "/v1/models"))

    def models(self) -> list[ModelCard]:
        """The cards of the models the server has loaded."""
        return self.model_list().models

    def health(self) -> bool:
        """True once the server is ready; False while it starts (503) or is unreachable.

        Not retried: a health probe should report the state now. Raises
        ``AuthenticationError`` on 401, since a wrong key would otherwise look like
        a server that never becomes ready.
        """
        try:
            response = self._http.get("/health")
        except httpx.TransportError:
            return False
        return self._health_from_response(response)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient(_ClientBase):
    """``asyncio`` twin of :class:`Client`, with the same arguments and methods (awaited).

    Example::

        async with AsyncClient("http://127.0.0.1:8000") as client:
            result = await client.predict([("a.png", "a"), ("b.png", "b")], ["q.png"])
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float | None = 30.0,
        retries: int = 3,
        backoff: float = 0.25,
        *,
        max_backoff: float = 10.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            timeout,
            retries,
            backoff,
            max_backoff=max_backoff,
            headers=headers,
        )
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, headers=self._headers
        )

    async def _send(self, method: str, path: str, content: bytes | None = None) -> httpx.Response:
        headers = {"Content-Type": "application/json"} if content is not None else None
        attempt = 0
        while True:
            try:
                response = await self._http.request(method, path, content=content, headers=headers)
            except httpx.TransportError as exc:
                delay = self._retry_delay_for_error(attempt, exc)
            else:
                maybe = self._retry_delay_for_response(attempt, response)
                if maybe is None:
                    self._raise_for_status(response, attempt + 1)
                    return response
                await response.aclose()
                delay = maybe
            attempt += 1
            await _async_sleep(delay)

    async def predict(
        self,
        support: Mapping[Label, Sequence[Input]]
        | Sequence[tuple[Input, Target]]
        | Sequence[Mapping[str, Any]],
        query: Sequence[Input],
        model: str | None = None,
        steps: int | None = None,
        lr: float | None = None,
        top_k: int | None = None,
    ) -> PredictResult:
        """Adapt a model to ``support`` and predict ``query``; see :meth:`Client.predict`.

        Inputs are encoded before the first ``await``; encoding is CPU work, so
        very large batches of images are better encoded in a thread by the caller.
        """
        body = build_predict_body(support, query, model=model, steps=steps, lr=lr, top_k=top_k)
        response = await self._send("POST", "/v1/predict", self._encode_json(body))
        return self._parse(PredictResult, response)

    async def adapt(
        self,
        support: Mapping[Label, Sequence[Input]]
        | Sequence[tuple[Input, Target]]
        | Sequence[Mapping[str, Any]],
        model: str | None = None,
        steps: int | None = None,
        lr: float | None = None,
    ) -> AsyncAdapter:
        """Adapt once to ``support``; see :meth:`Client.adapt`."""
        body = build_adapt_body(support, model=model, steps=steps, lr=lr)
        response = await self._send("POST", "/v1/adapt", self._encode_json(body))
        return AsyncAdapter(self, self._parse(AdaptResult, response))

    async def model_list(self) -> ModelList:
        """``GET /v1/models``: every model card and the default model's name."""
        return self._parse(ModelList, await self._send("GET", "/v1/models"))

    async def models(self) -> list[ModelCard]:
        """The cards of the models the server has loaded."""
        return (await self.model_list()).models

    async def health(self) -> bool:
        """True once the server is ready; see :meth:`Client.health`."""
        try:
            response = await self._http.get("/health")
        except httpx.TransportError:
            return False
        return self._health_from_response(response)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    aclose = close

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
