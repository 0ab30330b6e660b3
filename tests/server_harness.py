"""Shared helpers for the server tests: real checkpoints, drawings, a real server subprocess.

Nothing here mocks the model: checkpoints are random-initialised learners saved with
``save_checkpoint``, and the server is ``python -m innerloop.cli serve`` in its own process group.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image, ImageDraw

from innerloop.checkpoint import build_card, save_checkpoint
from innerloop.learner import InnerDefaults, Learner
from innerloop.models import ArchConfig

REPO = Path(__file__).resolve().parents[1]
VECTOR_FEATURES = 3
VECTOR_TARGETS = 2


# ---- checkpoints ------------------------------------------------------------------------------
def make_checkpoints(folder: Path) -> Path:
    """``omniglot`` (tiny conv4 + proto head), ``sine`` (mlp regression) and a broken file."""
    folder.mkdir(parents=True, exist_ok=True)
    image = Learner.create(
        ArchConfig(kind="conv4", filters=8, norm_groups=4, blocks=3),
        head="proto",
        inner=InnerDefaults(steps=2, lr=0.01),
        max_ways=20,
    )
    save_checkpoint(
        image,
        folder / "omniglot.safetensors",
        build_card(
            image,
            "omniglot",
            {
                "training": {"algorithm": "random-init (test fixture)", "data": "none"},
                "evaluation": {
                    "test": {"metric": "accuracy", "mean": 0.5, "ci95": 0.01, "episodes": 10}
                },
            },
        ),
    )
    vector = Learner.create(
        ArchConfig(
            kind="mlp", in_features=VECTOR_FEATURES, out_features=VECTOR_TARGETS, hidden=(16,)
        ),
        inner=InnerDefaults(steps=3, lr=0.01),
    )
    save_checkpoint(vector, folder / "sine.safetensors", build_card(vector, "sine"))
    (folder / "broken.safetensors").write_bytes(b"this is not a safetensors file")
    return folder


# ---- drawings ---------------------------------------------------------------------------------
def glyph(cls: int, example: int, size: int = 28) -> Image.Image:
    """A black-on-white drawing: class ``cls``'s strokes, jittered per ``example``."""
    strokes = np.random.default_rng(1000 + cls).integers(3, size - 3, size=(3, 4))
    jitter = np.random.default_rng(cls * 7919 + example).integers(-1, 2, size=(3, 4))
    image = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(image)
    for line in strokes + jitter:
        draw.line([int(v) for v in line], fill=0, width=2)
    return image


def encode(image: Image.Image, fmt: str = "PNG", data_url: bool = False, **options: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    text = base64.b64encode(buffer.getvalue()).decode()
    return f"data:image/{fmt.lower()};base64,{text}" if data_url else text


def image_request(
    ways: int,
    shots: int,
    queries: int,
    *,
    seed: int = 0,
    labels: Sequence[str | int] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A classification request: ``ways`` x ``shots`` support drawings, ``queries`` queries."""
    names = list(labels) if labels is not None else [f"class-{c}" for c in range(ways)]
    support = [
        {"x": encode(glyph(seed * 100 + c, s)), "y": names[c]}
        for c in range(ways)
        for s in range(shots)
    ]
    query = [encode(glyph(seed * 100 + q % ways, 50 + q)) for q in range(queries)]
    return {"support": support, "query": query, **extra}


def vector_request(items: int, queries: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "model": "sine",
        "support": [
            {
                "x": rng.normal(size=VECTOR_FEATURES).round(4).tolist(),
                "y": rng.normal(size=VECTOR_TARGETS).round(4).tolist(),
            }
            for _ in range(items)
        ],
        "query": [rng.normal(size=VECTOR_FEATURES).round(4).tolist() for _ in range(queries)],
    }


# ---- the server process -----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


class ServerProcess:
    """``innerloop serve`` as a subprocess in its own session, logging to a file."""

    def __init__(
        self, checkpoints: Path, log_path: Path, *args: str, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        command = [
            sys.executable,
            "-m",
            "innerloop.cli",
            "serve",
            "--checkpoints",
            str(checkpoints),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--threads",
            "1",
            *args,
        ]
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=log_path.parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_healthy(self, timeout_s: float = 120.0) -> ServerProcess:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}:\n{self.log_text()[-3000:]}"
                )
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"server not healthy after {timeout_s}s:\n{self.log_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int | None:
        """Signal the main process, wait, then kill whatever is left in its process group."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(10)
        self._log.close()
        return self.process.returncode


@contextlib.contextmanager
def running(checkpoints: Path, log_path: Path, *args: str) -> Iterator[ServerProcess]:
    """A healthy server for the duration of a ``with`` block (or a module fixture)."""
    process = ServerProcess(checkpoints, log_path, *args)
    try:
        yield process.wait_healthy()
    finally:
        process.stop()


@contextlib.contextmanager
def http_client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60.0) as http:
        yield http
