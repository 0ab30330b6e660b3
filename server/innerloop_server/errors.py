"""4xx errors whose message names the offending field: one format for every error.

Every error response is JSON ``{"detail": "<field>: <what is wrong and what is allowed>"}``;
validation errors found by FastAPI/pydantic also carry ``"errors": [{"field", "message"}, ...]``.
Fields are written the way a user would point at them: ``support[3].x``, ``query[0]``,
``steps``, ``body``. Error bodies never echo the submitted values.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import HTTPException

# Pydantic puts the member type of a union into an error's location ("x", "list[float]", 0):
# these are those tags for the request schema's unions; they are not field names.
UNION_TAGS = frozenset({"str", "int", "float", "list[float]"})


def request_error(status: int, field: str, message: str) -> HTTPException:
    """An ``HTTPException`` whose detail is ``"<field>: <message>"``."""
    return HTTPException(status_code=status, detail=f"{field}: {message}")


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
