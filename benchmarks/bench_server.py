"""Latency and throughput of ``innerloop serve``, with request batching off and on.

Starts a real server per batching setting (``--max-batch-size 1`` = off, ``--batch`` = on),
side by side, and drives each in turn with 1, 8 and 32 closed-loop clients (threads, one httpx
connection each) sending Omniglot-shaped requests (105x105 PNG drawings, as a user would send
them). Prints one table: p50 / p99 latency, requests per second, and how many requests shared
each adaptation call on average (read from the server's ``/metrics``).

    python benchmarks/bench_server.py                      # checkpoints/omniglot.safetensors
    python benchmarks/bench_server.py --quick              # a short run
    python benchmarks/bench_server.py --checkpoint PATH --threads 4 --seconds 20

Without ``--checkpoint`` and without ``checkpoints/omniglot.safetensors`` a random-initialised
default Conv4 (64 filters, proto head, 5 inner steps) stands in: speed does not depend on what
the weights learned.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"5-way 1-shot": (5, 1, 5), "20-way 5-shot": (20, 5, 20)}  # ways, shots, queries


# ---- requests -------------------------------------------------------------------------------
def drawing(cls: int, example: int, size: int = 105) -> str:
    """A 105x105 black-on-white PNG, like an Omniglot character, base64-encoded."""
    strokes = np.random.default_rng(cls).integers(10, size - 10, size=(4, 4))
    jitter = np.random.default_rng(cls * 7919 + example).integers(-3, 4, size=(4, 4))
    image = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(image)
    for line in strokes + jitter:
        draw.line([int(v) for v in line], fill=0, width=5)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def request_body(ways: int, shots: int, queries: int, seed: int) -> bytes:
    support = [
        {"x": drawing(seed * 1000 + c, s), "y": f"char-{c}"}
        for c in range(ways)
        for s in range(shots)
    ]
    query = [drawing(seed * 1000 + q % ways, 100 + q) for q in range(queries)]
    return json.dumps({"support": support, "query": query}).encode()


# ---- the server -----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, folder: Path, max_batch_size: int, args: argparse.Namespace) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        command = [
            sys.executable,
            "-m",
            "innerloop.cli",
            "serve",
            "--checkpoints",
            str(folder),
            "--host",
            "127.0.0.1",
            "--port",
            self.url.rsplit(":", 1)[1],
            "--max-batch-size",
            str(max_batch_size),
            "--batch-timeout",
            str(args.batch_timeout),
            "--device",
            args.device,
            "--log-level",
            "warning",
            "--max-in-flight",
            "1000",
            "--timeout",
            "3600",  # measure queueing, do not shed it
        ]
        if args.threads:
            command += ["--threads", str(args.threads)]
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError("server failed to start:\n" + self.log.read().decode()[-3000:])
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError("server did not become healthy in 180 s")

    def calls(self) -> tuple[float, float]:
        """(requests adapted, adaptation calls) so far, from /metrics."""
        totals = {"sum": 0.0, "count": 0.0}
        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            for key in totals:
                if line.startswith(f"innerloop_adapt_call_tasks_{key} "):
                    totals[key] = float(line.split()[-1])
        return totals["sum"], totals["count"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


# ---- load -----------------------------------------------------------------------------------
@dataclass
class Level:
    p50_ms: float
    p99_ms: float
    rps: float
    requests: int
    mean_batch: float


def run_level(server: Server, bodies: list[bytes], clients: int, seconds: float) -> Level:
    """``clients`` closed-loop clients for ``seconds`` (each sends at least one request)."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client(index: int) -> None:
        with httpx.Client(timeout=600.0, headers={"content-type": "application/json"}) as http:
            barrier.wait()
            sent = 0
            while sent == 0 or time.monotonic() < deadline[0]:
                body = bodies[(index + sent * clients) % len(bodies)]
                started = time.perf_counter()
                response = http.post(server.url + "/v1/predict", content=body)
                elapsed = time.perf_counter() - started
                with lock:
                    if response.status_code == 200:
                        latencies.append(elapsed)
                    else:
                        errors.append(f"{response.status_code} {response.text[:200]}")
                sent += 1

    before = server.calls()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    deadline[0] = time.monotonic() + seconds
    started = time.perf_counter()
    barrier.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    after = server.calls()
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    calls = after[1] - before[1]
    return Level(
        p50_ms=statistics.median(ordered) * 1000,
        p99_ms=p99 * 1000,
        rps=len(ordered) / wall,
        requests=len(ordered),
        mean_batch=(after[0] - before[0]) / calls if calls else float("nan"),
    )


# ---- main -------------------------------------------------------------------------------------
def checkpoint_folder(path: Path | None, workdir: Path) -> tuple[Path, str]:
    folder = workdir / "checkpoints"
    folder.mkdir()
    shipped = REPO / "checkpoints" / "omniglot.safetensors"
    source = path or (shipped if shipped.exists() else None)
    if source is not None:
        shutil.copy(source, folder / "omniglot.safetensors")
        return folder, str(source)
    from innerloop.checkpoint import build_card, save_checkpoint
    from innerloop.learner import Learner
    from innerloop.models import ArchConfig

    learner = Learner.create(ArchConfig(kind="conv4"), head="proto")
    save_checkpoint(learner, folder / "omniglot.safetensors", build_card(learner, "omniglot"))
    return folder, "random-init Conv4 (64 filters, proto head, 5 inner steps, lr 0.4)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="short levels (~2-3 minutes)")
    parser.add_argument("--seconds", type=float, default=None, help="duration of each level")
    parser.add_argument("--clients", default="1,8,32", help="comma-separated concurrency levels")
    parser.add_argument("--batch", type=int, default=16, help="max_batch_size with batching on")
    parser.add_argument("--batch-timeout", type=float, default=0.005)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args()
    seconds = args.seconds if args.seconds is not None else (2.0 if args.quick else 15.0)
    levels = [int(c) for c in args.clients.split(",")]
    settings = {"off": 1, "on": args.batch}

    with tempfile.TemporaryDirectory(prefix="innerloop-bench-") as tmp:
        folder, model = checkpoint_folder(args.checkpoint, Path(tmp))
        bodies = {
            name: [request_body(*shape, seed=s) for s in range(8)] for name, shape in SHAPES.items()
        }
        results: dict[tuple[str, int, str], Level] = {}
        # both servers run side by side (an idle one costs nothing) and every level is measured
        # on one right after the other, so drifting background load hits both settings alike
        servers: dict[str, Server] = {}
        try:
            for setting, max_batch in settings.items():
                servers[setting] = Server(folder, max_batch, args)
            for name in SHAPES:
                for server in servers.values():
                    run_level(server, bodies[name][:2], 1, 0.0)  # warm-up
                for clients in levels:
                    for setting, server in servers.items():
                        level = run_level(server, bodies[name], clients, seconds)
                        results[(name, clients, setting)] = level
                        print(
                            f"  batching {setting:3s} {name:14s} {clients:3d} clients: "
                            f"p50 {level.p50_ms:8.1f} ms  {level.rps:6.2f} req/s",
                            flush=True,
                        )
        finally:
            for server in servers.values():
                server.stop()

    print()
    print(f"model: {model}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, device {args.device}, "
        f"torch threads {args.threads or 'default'}; {seconds:g} s per level "
        f"(every client sends at least one request)"
    )
    header = (
        f"{'request':14s} {'clients':>7s} | {'batching off (max_batch_size 1)':^33s} | "
        f"{f'batching on (max_batch_size {args.batch})':^44s} | {'throughput':>10s}"
    )
    print(header)
    print(
        f"{'':14s} {'':>7s} | {'p50 ms':>9s} {'p99 ms':>9s} {'req/s':>7s} {'n':>4s} | "
        f"{'p50 ms':>9s} {'p99 ms':>9s} {'req/s':>7s} {'n':>4s} {'per call':>9s} | "
        f"{'on / off':>10s}"
    )
    print("-" * len(header))
    for name in SHAPES:
        for clients in levels:
            off, on = results[(name, clients, "off")], results[(name, clients, "on")]
            print(
                f"{name:14s} {clients:7d} | {off.p50_ms:9.1f} {off.p99_ms:9.1f} {off.rps:7.2f} "
                f"{off.requests:4d} | {on.p50_ms:9.1f} {on.p99_ms:9.1f} {on.rps:7.2f} "
                f"{on.requests:4d} {on.mean_batch:9.1f} | {on.rps / off.rps:9.2f}x"
            )
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {"request": k[0], "clients": k[1], "batching": k[2], **vars(v)}
                    for k, v in results.items()
                ],
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
