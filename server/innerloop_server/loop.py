"""The inference-worker loop: dynamic batching where one bad request fails only itself.

LitServe 0.2.19's ``BatchedLoop`` decodes, predicts and encodes a batch inside one ``try``: an
``HTTPException`` raised for one request is sent to *every* request of the batch (LitServe issue
#340), and its ``SingleLoop`` calls ``predict`` with a bare item instead of a list. This loop
keeps LitServe's queue and transport but handles each request on its own:

1. block until a request arrives, then take every request already queued (at most
   ``max_batch_size``), waiting up to ``batch_timeout`` for more only while the previous batch
   was shared; requests that waited longer than the server's ``timeout`` get 504;
2. ``decode_request`` each one: a failure answers that request only;
3. ``batch`` + ``predict`` + ``unbatch`` on the decoded ones: ``predict`` returns, per request,
   either a result or the exception that request caused;
4. ``encode_response`` each one and send it.

The same loop runs for ``max_batch_size == 1``, so ``predict`` always receives a list.
"""

from __future__ import annotations

import logging
import time
from queue import Empty, Queue
from typing import Any

from fastapi import HTTPException
from litserve import LitAPI
from litserve.callbacks import CallbackRunner
from litserve.loops.base import _SENTINEL_VALUE, LitLoop
from litserve.transport.base import MessageTransport
from litserve.utils import LitAPIStatus, LoopResponseType, PickleableHTTPException

log = logging.getLogger("innerloop.server")

_REGULAR = LoopResponseType.REGULAR


class _Stop(Exception):
    pass


class IsolatingBatchLoop(LitLoop):
    """Per-request error isolation around batched ``predict`` (see the module docstring)."""

    def __call__(
        self,
        lit_api: LitAPI,
        device: str,
        worker_id: int,
        request_queue: Queue,
        transport: MessageTransport,
        workers_setup_status: dict[int, str],
        callback_runner: CallbackRunner,
    ) -> None:
        while True:
            try:
                requests = self._collect(lit_api, request_queue, transport)
            except _Stop:
                return
            except KeyboardInterrupt:  # pragma: no cover - interactive Ctrl+C
                return
            if requests:
                self.process(lit_api, requests, transport)

    # ---- 1. collect ------------------------------------------------------------------------
    def _collect(
        self, lit_api: LitAPI, request_queue: Queue, transport: MessageTransport
    ) -> list[tuple[int, str, Any]]:
        try:
            first = request_queue.get(timeout=1.0)
        except (Empty, ValueError):
            return []
        items = [first]
        # Greedy first: take whatever is already queued, without waiting. Under load, requests
        # pile up while a batch computes, so the next batch fills by itself; a lone request is
        # not held back batch_timeout for company that is not coming. Only when the last batch
        # was shared (load is on) does the loop wait up to batch_timeout for more.
        self._drain(request_queue, items, lit_api.max_batch_size)
        if self._last_batch > 1 and len(items) < lit_api.max_batch_size:
            deadline = time.monotonic() + lit_api.batch_timeout
            while len(items) < lit_api.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    items.append(request_queue.get(timeout=remaining))
                except (Empty, ValueError):
                    break
                self._drain(request_queue, items, lit_api.max_batch_size)
        self._last_batch = len(items)
        accepted = []
        stop = False
        timeout = lit_api.request_timeout
        for item in items:
            if item == _SENTINEL_VALUE:
                stop = True
                continue
            response_queue_id, uid, timestamp, payload = item
            # No START message (LitServe's loops send one per request): its only reader records
            # the worker id for LitServe's dead-worker monitor, which runs in the main process
            # and never sees the HTTP process's response buffer; a killed worker's requests get
            # 504 from --request-timeout instead. Skipping it saves two manager-queue round
            # trips (and a thread hop in the HTTP process) per request.
            if timeout not in (None, -1, False) and time.monotonic() - timestamp > timeout:
                log.warning("request %s waited more than %ss in the queue", uid, timeout)
                self._send_error(
                    transport,
                    response_queue_id,
                    uid,
                    HTTPException(
                        504,
                        f"queue: waited more than {timeout} s for a worker "
                        "(--timeout); the server is overloaded, retry later",
                    ),
                )
            else:
                accepted.append((response_queue_id, uid, payload))
        if stop:
            for response_queue_id, uid, _ in accepted:
                self._send_error(
                    transport, response_queue_id, uid, HTTPException(503, "server is shutting down")
                )
            raise _Stop
        return accepted

    _last_batch = 0

    @staticmethod
    def _drain(request_queue: Queue, items: list[Any], limit: int) -> None:
        while len(items) < limit:
            try:
                items.append(request_queue.get_nowait())
            except (Empty, ValueError):
                return

    # ---- 2-4. decode, predict, encode --------------------------------------------------------
    def process(
        self, lit_api: LitAPI, requests: list[tuple[int, str, Any]], transport: MessageTransport
    ) -> None:
        decoded = []
        for response_queue_id, uid, payload in requests:
            try:
                decoded.append((response_queue_id, uid, lit_api.decode_request(payload)))
            except Exception as error:
                self._send_error(transport, response_queue_id, uid, error)
        if not decoded:
            return
        try:
            outputs = list(lit_api.unbatch(lit_api.predict(lit_api.batch([d[2] for d in decoded]))))
            if len(outputs) != len(decoded):
                raise RuntimeError(
                    f"predict returned {len(outputs)} outputs for {len(decoded)} requests"
                )
        except Exception as error:
            log.exception("predict failed for a batch of %d requests", len(decoded))
            outputs = [error] * len(decoded)
        for (response_queue_id, uid, _), output in zip(decoded, outputs, strict=True):
            try:
                if isinstance(output, BaseException):
                    raise output
                encoded = lit_api.encode_response(output)
            except Exception as error:
                self._send_error(transport, response_queue_id, uid, error)
                continue
            self.put_response(transport, response_queue_id, uid, encoded, LitAPIStatus.OK, _REGULAR)

    def _send_error(
        self, transport: MessageTransport, response_queue_id: int, uid: str, error: BaseException
    ) -> None:
        if isinstance(error, HTTPException):
            self.put_response(
                transport,
                response_queue_id,
                uid,
                PickleableHTTPException.from_exception(error),
                LitAPIStatus.ERROR,
                _REGULAR,
            )
            return
        log.error("request %s failed: %s: %s", uid, type(error).__name__, error, exc_info=error)
        self.put_error_response(transport, response_queue_id, uid, error, _REGULAR)
