"""4xx errors whose message names the offending field: one format for every error.

Every error response is JSON ``{"detail": "<field>: <what is wrong and what is allowed>"}``;
validation errors found by FastAPI/pydantic also carry ``"errors": [{"field", "message"}, ...]``.
Fields are written the way a user would point at them: ``support[3].x``, ``query[0]``,
``steps``, ``body``. Error bodies never echo the submitted values.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from fastapi import HTTPException

# Pydantic puts the member type of a union into an error's location ("x", "list[float]", 0):
# these are those tags for the request schema's unions; they are not field names.
UNION_TAGS = frozenset({"str", "int", "float", "list[float]"})


def request_error(status: int, field: str, message: str) -> HTTPException:
    """An ``HTTPException`` whose detail is ``"<field>: <message>"``."""
    return HTTPException(status_code=status, detail=f"{field}: {message}")


def refuse_non_finite(outputs: Any, losses: Sequence[float], steps: int, lr: float) -> None:
    """422 when an adaptation produced NaN or infinity, instead of a 200 full of ``null``.

    ``losses`` is ``[before, after]``. A loss that is not finite *before* adapting means the
    support inputs overflow the model; one that turns non-finite after means the inner loop
    diverged (too large an lr, or too many steps); finite losses with non-finite outputs mean the
    query inputs overflow the model.
    """
    before, after = (float(v) for v in losses)
    if not math.isfinite(before):
        raise request_error(
            422,
            "support",
            "the support loss is not finite before adaptation: the support inputs are too "
            "large for this model; scale them down",
        )
    if not math.isfinite(after):
        raise request_error(
            422,
            "lr",
            f"adaptation diverged: the support loss became NaN or infinite after {steps} steps "
            f"at lr {lr}; lower lr or steps",
        )
    if outputs is not None and not bool(np.isfinite(np.asarray(outputs)).all()):
        raise request_error(
            422,
            "query",
            f"adaptation diverged or the query inputs overflow the model: the predictions are "
            f"not finite numbers (steps {steps}, lr {lr}); lower lr or steps, or scale the "
            "query inputs down",
        )


def field_path(location: Sequence[str | int]) -> str:
    """``("body", "support", 3, "x")`` -> ``support[3].x``; pydantic union tags are dropped."""
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in UNION_TAGS and not (part == "body" and not path):
            path += f".{part}" if path else part
    return path or "body"


_JSON_TYPES = {
    type(None): "null",
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
}


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _message(error: dict[str, Any]) -> str:
    kind = error.get("type", "")
    if kind == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "invalid JSON")
        where = error["loc"][-1] if isinstance(error["loc"][-1], int) else None
        return f"not valid JSON ({reason}{f' at character {where}' if where is not None else ''})"
    if kind == "missing" and tuple(error.get("loc", ())) == ("body",):
        return "a JSON object is required"
    if kind == "extra_forbidden":
        return "unknown field (see /docs for the request schema)"
    message = str(error.get("msg", "invalid value"))
    if kind.endswith("_type") and "input" in error:
        message += f" (got {_json_type(error['input'])})"
    return message


def describe_validation_errors(errors: Iterable[dict[str, Any]]) -> list[dict[str, str]]:
    """Pydantic errors -> ``[{"field", "message"}]``, one entry per field.

    A union (``x: str | list[float]``) fails once per member; when one member got further (the
    input was a list but item 2 is NaN) only that deeper error is kept, otherwise the members'
    messages are merged ("Input should be a valid string or a valid list").
    """
    by_field: dict[str, list[str]] = {}
    for error in errors:
        location = error.get("loc", ())
        if error.get("type") == "json_invalid":
            location = ("body",)
        name = field_path(location)
        message = _message(error)
        if message not in by_field.setdefault(name, []):
            by_field[name].append(message)
    deeper = {
        name
        for name in by_field
        if any(
            other != name and (other.startswith(name + "[") or other.startswith(name + "."))
            for other in by_field
        )
    }
    described = []
    for name, messages in by_field.items():
        if name in deeper:
            continue
        described.append({"field": name, "message": _merge(messages)})
    return described


def _merge(messages: list[str]) -> str:
    if len(messages) == 1:
        return messages[0]
    prefix = "Input should be a valid "
    got = ""
    parts = []
    for message in messages:
        text = message
        if " (got " in text:
            text, got = text.split(" (got ", 1)
            got = " (got " + got
        parts.append(text[len(prefix) :] if text.startswith(prefix) else text)
    return prefix + ", ".join(parts[:-1]) + " or " + parts[-1] + got


def validation_detail(errors: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The 422 body for FastAPI's ``RequestValidationError``."""
    described = describe_validation_errors(errors)
    detail = "; ".join(f"{item['field']}: {item['message']}" for item in described)
    return {"detail": detail or "body: invalid request", "errors": described}


def json_body(detail: str) -> bytes:
    return json.dumps({"detail": detail}).encode()


# ---- the OpenAPI document says what the server really answers -------------------------------
_ERROR_SCHEMA: dict[str, Any] = {
    "title": "ErrorResponse",
    "type": "object",
    "required": ["detail"],
    "properties": {
        "detail": {
            "type": "string",
            "description": "'<field>: <what is wrong and what is allowed>'",
        },
        "errors": {
            "type": "array",
            "description": "Validation errors (422 from schema validation only), one per field.",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}
_ERROR_REF = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
_BODY_ERRORS = {
    "400": "Body or header that cannot be parsed (e.g. Content-Length not a number)",
    "404": "Unknown model",
    "408": "Body not received completely within --body-timeout",
    "413": "A size bound exceeded: body, image bytes or pixels, items, work (see --max-*)",
    "422": "Invalid request: the detail names the field and what is allowed",
    "503": "Too many requests in flight (--max-in-flight) or shutting down; see Retry-After",
    "504": "Waited longer than --timeout for a worker, or no answer within --request-timeout",
}
_TEXT = {"text/plain": {"schema": {"type": "string"}}}


def document_errors(app: Any) -> None:
    """Make ``/openapi.json`` describe the error bodies, statuses and content types we send.

    FastAPI documents 422 as its own ``{"detail": [...]}`` array and nothing else; ours is
    ``{"detail": "<field>: ...", "errors": [...]}``, and the middleware answers 400, 401, 408,
    413, 503, 504 that no route declares. ``/health`` and ``/metrics`` answer plain text.
    """
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return dict(app.openapi_schema)
        schema: dict[str, Any] = original()
        schema.setdefault("components", {}).setdefault("schemas", {})["ErrorResponse"] = (
            _ERROR_SCHEMA
        )
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                if path == "/health":
                    responses["200"] = {
                        "description": "ok: every worker is ready",
                        "content": _TEXT,
                    }
                    responses["503"] = {"description": "Workers not ready yet", "content": _TEXT}
                    continue
                if path == "/metrics":
                    responses["200"] = {"description": "Prometheus text format", "content": _TEXT}
                if path == "/":
                    responses["200"] = {
                        "description": "A page about the server",
                        "content": {**_TEXT, "text/html": {"schema": {"type": "string"}}},
                    }
                responses["401"] = {
                    "description": "API key missing or wrong (servers started with one)",
                    "content": _ERROR_REF,
                }
                if "requestBody" in operation:
                    for status, description in _BODY_ERRORS.items():
                        responses[status] = {"description": description, "content": _ERROR_REF}
                    responses["503"]["headers"] = {
                        "Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}
                    }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
