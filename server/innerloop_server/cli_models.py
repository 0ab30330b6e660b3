"""List model cards: of a checkpoints folder (without loading tensors) or of a running server.

The table shows, per model: task, input, algorithm, supported ways, inner-loop defaults, what
it was trained on and its evaluated score. ``--json`` prints what ``GET /v1/models`` returns.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from innerloop_server.cli_serve import API_KEY_ENV, default_checkpoints


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--checkpoints",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder of *.safetensors checkpoints (default: as `innerloop serve`)",
    )
    source.add_argument("--url", default=None, help="a running server, e.g. http://127.0.0.1:8000")
    parser.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help=f"API key for --url (default: ${API_KEY_ENV})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    errors: dict[str, str] = {}
    if args.url:
        try:
            models = _from_server(args.url, args.api_key or os.environ.get(API_KEY_ENV))
        except RuntimeError as error:
            print(f"innerloop models: {error}", file=sys.stderr)
            return 1
    else:
        from innerloop_server.registry import summarize_folder

        folder = args.checkpoints or default_checkpoints()
        if not folder.is_dir():
            print(f"innerloop models: {folder} is not a folder", file=sys.stderr)
            return 1
        models, errors = summarize_folder(folder)
    if args.json:
        print(
            json.dumps(
                {"models": models, "errors": errors} if errors else {"models": models}, indent=2
            )
        )
    else:
        print(format_table(models) if models else "no models")
        for name, reason in errors.items():
            print(f"unusable: {name}: {reason}")
    return 0 if models else 1


def _from_server(url: str, api_key: str | None) -> list[dict[str, Any]]:
    import httpx

    headers = {"X-API-Key": api_key} if api_key else {}
    try:
        response = httpx.get(url.rstrip("/") + "/v1/models", headers=headers, timeout=10.0)
    except httpx.HTTPError as error:
        raise RuntimeError(f"cannot reach {url}: {error}") from error
    if response.status_code != 200:
        raise RuntimeError(f"{url}/v1/models answered {response.status_code}: {response.text}")
    models: list[dict[str, Any]] = response.json()["models"]
    return models


# ---- the table --------------------------------------------------------------------------------
COLUMNS = ("NAME", "TASK", "INPUT", "ALGORITHM", "WAYS", "INNER LOOP", "TRAINED ON", "EVALUATION")


def format_table(models: list[dict[str, Any]]) -> str:
    rows = [COLUMNS, *[_row(m) for m in models]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _row(model: dict[str, Any]) -> tuple[str, ...]:
    spec = model.get("input") or {}
    if spec.get("kind") == "image":
        shown_input = f"image {spec.get('size')}x{spec.get('size')}"
    else:
        shown_input = f"vector {spec.get('features')}->{spec.get('targets')}"
    ways = model.get("ways")
    inner = model.get("inner_loop") or {}
    shown_inner = f"{inner.get('steps')} steps, lr {inner.get('lr')} {inner.get('optimizer', '')}"
    if inner.get("learned_step_sizes"):
        shown_inner += " (learned)"
    name = model.get("name", "?") + (" *" if model.get("default") else "")
    return (
        name,
        str(model.get("task")),
        shown_input,
        str(model.get("algorithm") or "-"),
        f"{ways['min']}-{ways['max']}" if ways else "-",
        shown_inner.strip(),
        _short(model.get("trained_on")),
        _evaluation(model.get("evaluation") or {}),
    )


def _short(value: Any, width: int = 40) -> str:
    if value is None or value == {}:
        return "-"
    if isinstance(value, dict):
        text = str(value.get("name") or value.get("dataset") or json.dumps(value, sort_keys=True))
    else:
        text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _evaluation(evaluation: dict[str, Any]) -> str:
    parts = []
    for split, result in evaluation.items():
        if not isinstance(result, dict) or "mean" not in result:
            continue
        metric = result.get("metric", "score")
        mean, ci = float(result["mean"]), float(result.get("ci95") or 0.0)
        shown = (
            f"{100 * mean:.1f}±{100 * ci:.1f}%"
            if metric == "accuracy"
            else f"{metric} {mean:.3g}±{ci:.2g}"
        )
        parts.append(f"{split} {shown}")
    return "; ".join(parts) or "-"
