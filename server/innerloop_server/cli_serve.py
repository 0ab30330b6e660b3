"""Serve checkpoints over HTTP: POST /v1/predict, GET /v1/models, /health, /metrics, /docs.

Every ``*.safetensors`` file in the checkpoints folder (the shipped ones by default), and in each
``--add`` folder or file (your own, e.g. ``models/``), is served under its file name (without
the extension); a file that fails to load is reported and skipped, and the server refuses to
start when none loads. Requests are batched across clients: compatible requests (same model,
steps and lr) share one adaptation call. Every request bound has a ``--max-...`` flag. With an
API key (``--api-key`` or ``INNERLOOP_API_KEY``) every path except ``/health`` needs
``X-API-Key: KEY`` or ``Authorization: Bearer KEY``. SIGTERM drains first (new requests get 503,
those in flight are answered for up to ``--shutdown-grace`` seconds); SIGTERM and Ctrl+C both
stop every process. A body not received within ``--body-timeout`` seconds gets 408.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from innerloop_server.limits import add_limit_arguments, limits_from_args

API_KEY_ENV = "INNERLOOP_API_KEY"
CHECKPOINTS_ENV = "INNERLOOP_CHECKPOINTS"


def default_checkpoints() -> Path:
    """``$INNERLOOP_CHECKPOINTS``, else the repository's ``checkpoints/`` (next to the source
    tree), else ``./checkpoints``."""
    if os.environ.get(CHECKPOINTS_ENV):
        return Path(os.environ[CHECKPOINTS_ENV])
    shipped = Path(__file__).resolve().parents[2] / "checkpoints"
    if shipped.is_dir():
        return shipped
    return Path.cwd() / "checkpoints"


def checkpoint_paths(folder: Path, added: list[Path]) -> list[Path]:
    """The folder's checkpoints plus each ``--add`` file or folder; names must stay unique."""
    paths = sorted(folder.glob("*.safetensors"))
    for extra in added:
        if extra.is_dir():
            paths.extend(sorted(extra.glob("*.safetensors")))
        elif extra.is_file():
            paths.append(extra)
        else:
            raise ValueError(f"--add {extra}: no such file or folder")
    seen: dict[str, Path] = {}
    for path in paths:
        other = seen.setdefault(path.stem, path)
        if other.resolve() != path.resolve():
            raise ValueError(
                f"{other} and {path} would both be served as {path.stem!r}; rename one "
                "(a model's name is its file name)"
            )
    return list({p.resolve(): p for p in paths}.values())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoints",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder of *.safetensors checkpoints (default: $INNERLOOP_CHECKPOINTS, "
        "else the repository's checkpoints/, else ./checkpoints)",
    )
    parser.add_argument(
        "--add",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="also serve this checkpoint file, or every *.safetensors in this folder (e.g. "
        "models/, where `innerloop train` writes); repeatable",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        choices=["127.0.0.1", "0.0.0.0", "::"],
        help="interface to listen on; 0.0.0.0 in a container (default: %(default)s)",
    )
    parser.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where adaptation runs; auto = cuda when available (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="inference worker processes per device (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch threads per worker (default: the usable cores less one, shared among the "
        "workers, at least 1)",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help=f"require this key on every path but /health (default: "
        f"${API_KEY_ENV} if set, else no key)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=16,
        metavar="N",
        help="most requests a worker adapts together; 1 = no batching (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-timeout",
        type=float,
        default=0.005,
        metavar="S",
        help="seconds a worker waits for more requests to batch (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds a request may wait in the queue before 504 (default: %(default)s)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds to receive a whole request body; slower gets 408 (default: %(default)s)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds from a body received to its answer; later gets 504 and frees its slot "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=30.0,
        metavar="S",
        help="on SIGTERM, seconds to finish requests in flight (new ones get 503); "
        "0 = stop at once (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="(default: %(default)s)",
    )
    add_limit_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from innerloop_server import logs
    from innerloop_server.registry import Registry

    logs.configure(args.log_level)
    try:
        limits = limits_from_args(args)
    except ValueError as error:
        print(f"innerloop serve: {error}", file=sys.stderr)
        return 2
    for name in ("workers", "max_batch_size"):
        if getattr(args, name) < 1:
            print(
                f"innerloop serve: --{name.replace('_', '-')} must be at least 1", file=sys.stderr
            )
            return 2
    if args.batch_timeout < 0 or args.timeout <= 0:
        print("innerloop serve: --batch-timeout must be >= 0 and --timeout > 0", file=sys.stderr)
        return 2
    if args.body_timeout <= 0 or args.request_timeout <= 0 or args.shutdown_grace < 0:
        print(
            "innerloop serve: --body-timeout and --request-timeout must be > 0 and "
            "--shutdown-grace >= 0",
            file=sys.stderr,
        )
        return 2
    folder = args.checkpoints or default_checkpoints()
    if not folder.is_dir():
        print(
            f"innerloop serve: checkpoints folder {folder} does not exist (pass --checkpoints DIR)",
            file=sys.stderr,
        )
        return 1
    try:
        paths = checkpoint_paths(folder, args.add)
    except ValueError as error:
        print(f"innerloop serve: {error}", file=sys.stderr)
        return 1
    registry = Registry.from_paths(paths)
    if not registry.models:
        print(
            f"innerloop serve: no checkpoint in {folder} could be loaded; refusing to start.",
            file=sys.stderr,
        )
        if not registry.skipped:
            print(
                f"  (no *.safetensors files in {folder}; train one with `innerloop train`)",
                file=sys.stderr,
            )
        for name, reason in registry.skipped.items():
            print(f"  {name}: {reason}", file=sys.stderr)
        return 1

    from innerloop_server.app import ServerConfig, resolve_device, serve

    config = ServerConfig(
        limits=limits,
        device=args.device,
        workers=args.workers,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
        timeout=args.timeout,
        threads=args.threads,
        body_timeout=args.body_timeout,
        shutdown_grace=args.shutdown_grace,
        request_timeout=args.request_timeout,
    )
    try:
        resolve_device(config.device)
    except ValueError as error:
        print(f"innerloop serve: {error}", file=sys.stderr)
        return 1
    try:
        return serve(registry, config, args.host, args.port, args.log_level)
    except (RuntimeError, ValueError, OSError) as error:
        print(f"innerloop serve: {error}", file=sys.stderr)
        return 1
