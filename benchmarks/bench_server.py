"""Latency and throughput of ``innerloop serve`` against a naive per-request PyTorch loop.

Starts a real server per batching setting (``--max-batch-size 1`` = off, ``--batch`` = on),
side by side, and drives each in turn with 1, 8 and 32 closed-loop clients (threads, one
keep-alive ``http.client`` connection each: the load generator shares the server's cores, so it
is the lightest the standard library has) sending Omniglot-shaped requests (105x105 PNG
drawings, as a user would send them). In the same run it measures:

- the **naive reference**: in this process, per request, deep-copy the Conv4, run plain
  ``torch.optim.SGD`` for the same steps and lr on the (already decoded) support set from the
  same prototype head, forward the queries: what a user would write without innerloop;
- **predict with an adapter**: ``POST /v1/adapt`` once, then ``/v1/predict`` with the adapter id
  and 5 queries;
- the **throughput ratio** again, in ``--ratio-rounds`` more pairs of [1 client, most clients]
  levels (5-way 1-shot, batching on): one pair moves by +-10% between runs here, so the median
  is the figure to quote.

Prints one table: p50 / p99 latency, requests per second, how many requests shared each
adaptation call (from ``/metrics``), and the ratios the issue's targets are stated in.

    python benchmarks/bench_server.py                      # checkpoints/omniglot.safetensors
    python benchmarks/bench_server.py --quick              # a short run
    python benchmarks/bench_server.py --scope film --steps 10 --threads 2

Without ``--checkpoint`` and without ``checkpoints/omniglot.safetensors`` a random-initialised
default Conv4 (64 filters, proto head, 5 inner steps) stands in: speed does not depend on what
the weights learned.
"""

from __future__ import annotations

import argparse
import base64
import copy
import http.client
import io
import json
import os
import platform
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
import torch
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


def request_body(ways: int, shots: int, queries: int, seed: int, **extra: object) -> bytes:
    support = [
        {"x": drawing(seed * 1000 + c, s), "y": f"char-{c}"}
        for c in range(ways)
        for s in range(shots)
    ]
    query = [drawing(seed * 1000 + q % ways, 100 + q) for q in range(queries)]
    return json.dumps({"support": support, "query": query, **extra}).encode()


# ---- the naive reference -----------------------------------------------------------------------
def decoded(body: bytes, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A request's support x, y and queries as the model's tensors (decoding is not timed)."""
    from innerloop.preprocessing import prepare_image

    request = json.loads(body)

    def tensor(item: str) -> torch.Tensor:
        image = Image.open(io.BytesIO(base64.b64decode(item)))
        return torch.from_numpy(prepare_image(image, size).astype(np.float32) / 255.0)[None]

    labels = sorted({item["y"] for item in request["support"]})
    support_x = torch.stack([tensor(item["x"]) for item in request["support"]])
    support_y = torch.tensor([labels.index(item["y"]) for item in request["support"]])
    query_x = torch.stack([tensor(item) for item in request["query"]])
    return support_x, support_y, query_x


def naive_adapt_and_predict(
    body_template: torch.nn.Module,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    steps: int,
    lr: float,
) -> torch.Tensor:
    """Deep-copy the body, prototype head, ``steps`` of SGD on everything, forward the queries."""
    body = copy.deepcopy(body_template)
    ways = int(support_y.max()) + 1
    with torch.no_grad():
        feats = body(support_x)
        protos = torch.stack([feats[support_y == c].mean(0) for c in range(ways)])
    head = torch.nn.Linear(feats.shape[1], ways)
    with torch.no_grad():
        head.weight.copy_(2 * protos)
        head.bias.copy_(-(protos**2).sum(-1))
    optimiser = torch.optim.SGD([*body.parameters(), *head.parameters()], lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(head(body(support_x)), support_y).backward()
        optimiser.step()
    with torch.no_grad():
        return torch.softmax(head(body(query_x)), -1)


def run_naive(checkpoint: Path, bodies: list[bytes], steps: int, seconds: float) -> Level:
    """The naive loop on the same requests, one at a time, for ``seconds`` (at least 3)."""
    from innerloop.checkpoint import load_checkpoint

    learner, card = load_checkpoint(checkpoint)
    template = copy.deepcopy(learner.body)
    template.load_state_dict({k[len("body.") :]: v for k, v in learner.params.items()})
    tensors = [decoded(b, card["input"]["size"]) for b in bodies]
    lr = learner.inner.lr
    naive_adapt_and_predict(template, *tensors[0], steps, lr)  # warm-up
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    while len(latencies) < 3 or time.monotonic() < deadline:
        started = time.perf_counter()
        naive_adapt_and_predict(template, *tensors[len(latencies) % len(tensors)], steps, lr)
        latencies.append(time.perf_counter() - started)
    return summarise(latencies, sum(latencies), float("nan"))


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
        if getattr(args, "workers", None):
            command += ["--workers", str(args.workers)]
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
    client_cpu_ms: float = float("nan")  # the load generator's CPU per request


def summarise(latencies: list[float], wall: float, mean_batch: float) -> Level:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return Level(
        p50_ms=statistics.median(ordered) * 1000,
        p99_ms=p99 * 1000,
        rps=len(ordered) / wall,
        requests=len(ordered),
        mean_batch=mean_batch,
    )


def run_level(
    server: Server,
    bodies: list[bytes],
    clients: int,
    seconds: float,
    path: str = "/v1/predict",
    client: str = "stdlib",
) -> Level:
    """``clients`` closed-loop clients for ``seconds`` (each sends at least one request).

    ``client``: ``stdlib`` (one keep-alive ``http.client`` connection per client: the load
    generator shares the server's cores, so the lightest one) or ``httpx`` (what the SDK uses).
    """
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)
    deadline = [0.0]
    host, port = server.url.rsplit("//", 1)[1].rsplit(":", 1)
    headers = {"content-type": "application/json"}

    def run_client(index: int) -> None:
        # made before the barrier: an httpx.Client's set-up (its TLS context) is not load
        stdlib = http.client.HTTPConnection(host, int(port), timeout=600.0)
        httpx_client = httpx.Client(timeout=600.0, headers=headers) if client == "httpx" else None

        def post(body: bytes) -> tuple[int, bytes]:
            if httpx_client is not None:
                answer = httpx_client.post(server.url + path, content=body)
                return answer.status_code, answer.content
            stdlib.request("POST", path, body, headers)
            response = stdlib.getresponse()
            return response.status, response.read()

        try:
            barrier.wait()
            sent = 0
            while sent == 0 or time.monotonic() < deadline[0]:
                body = bodies[(index + sent * clients) % len(bodies)]
                started = time.perf_counter()
                status, data = post(body)
                elapsed = time.perf_counter() - started
                with lock:
                    if status == 200:
                        latencies.append(elapsed)
                    else:
                        errors.append(f"{status} {data[:200]!r}")
                sent += 1
        finally:
            stdlib.close()
            if httpx_client is not None:
                httpx_client.close()

    before = server.calls()
    threads = [threading.Thread(target=run_client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    deadline[0] = time.monotonic() + seconds
    barrier.wait()  # every client is set up
    cpu_before = time.process_time()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    after = server.calls()
    calls = after[1] - before[1]
    level = summarise(latencies, wall, (after[0] - before[0]) / calls if calls else float("nan"))
    level.client_cpu_ms = cpu / max(len(latencies), 1) * 1000
    return level


def scaling_rounds(
    server: Server, bodies: list[bytes], clients: int, seconds: float, args: argparse.Namespace
) -> list[float]:
    """Throughput at ``clients`` over one client's, in ``args.ratio_rounds`` back-to-back pairs.

    One pair of levels moves by +-10% between runs on a shared 2-core machine; the median of
    several pairs, each measured minutes apart from the others, is the figure to quote."""
    ratios = []
    for round_ in range(args.ratio_rounds):
        one = run_level(server, bodies, 1, seconds, client=args.client)
        many = run_level(server, bodies, clients, seconds, client=args.client)
        ratios.append(many.rps / one.rps)
        print(
            f"  ratio round {round_ + 1}: 1 client {one.rps:6.2f} req/s, {clients} clients "
            f"{many.rps:6.2f} req/s: {ratios[-1]:.2f}x",
            flush=True,
        )
    return ratios


def adapter_bodies(server: Server, bodies: list[bytes], queries: int = 5) -> list[bytes]:
    """Adapt each request's support once; predict bodies with its adapter and ``queries``.

    Empty when the server has no ``/v1/adapt`` (a version from before adapters: the same
    script then measures the "before" of a change)."""
    out = []
    for body in bodies:
        request = json.loads(body)
        adapt = {k: v for k, v in request.items() if k != "query"}
        response = httpx.post(server.url + "/v1/adapt", json=adapt, timeout=600)
        if response.status_code in (404, 405, 409):  # 409: older multi-worker servers
            return []
        response.raise_for_status()
        query = request["query"][:queries]
        out.append(json.dumps({"adapter": response.json()["adapter"], "query": query}).encode())
    return out


# ---- main -------------------------------------------------------------------------------------
def checkpoint_folder(path: Path | None, workdir: Path, scope: str | None) -> tuple[Path, str]:
    """The served folder: the checkpoint as shipped, or re-scoped with ``--scope``."""
    from innerloop.checkpoint import build_card, load_checkpoint, save_checkpoint
    from innerloop.learner import Learner
    from innerloop.models import ArchConfig

    folder = workdir / "checkpoints"
    folder.mkdir()
    target = folder / "omniglot.safetensors"
    shipped = REPO / "checkpoints" / "omniglot.safetensors"
    source = path or (shipped if shipped.exists() else None)
    if source is None:
        learner = Learner.create(ArchConfig(kind="conv4"), head="proto")
        card = build_card(learner, "omniglot")
        model = "random-init Conv4 (64 filters, proto head, 5 inner steps, lr 0.4)"
    else:
        learner, card = load_checkpoint(source)
        model = str(source)
    served_scope = getattr(learner, "scope", "all")  # older innerloop versions adapt everything
    if scope is not None and scope != served_scope:
        learner = learner.with_scope(scope)
        card = {**card, "adaptation": build_card(learner, "omniglot")["adaptation"]}
        model += f" re-scoped to {scope!r}"
    save_checkpoint(learner, target, card)
    inner = learner.inner
    scope_now = getattr(learner, "scope", "all")
    return folder, f"{model}; scope {scope_now}, card loop {inner.steps} steps, lr {inner.lr}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="short levels (~3-4 minutes)")
    parser.add_argument("--seconds", type=float, default=None, help="duration of each level")
    parser.add_argument("--clients", default="1,8,32", help="comma-separated concurrency levels")
    parser.add_argument("--batch", type=int, default=16, help="max_batch_size with batching on")
    parser.add_argument("--batch-timeout", type=float, default=0.005)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    parser.add_argument("--workers", type=int, default=None, help="inference workers (serve's)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--scope", default=None, help="serve the checkpoint re-scoped (all, film, last, head)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="inner steps sent with every 5-way 1-shot request and used by the naive loop "
        "(default: the card's); 20-way 5-shot requests always use the card's loop",
    )
    parser.add_argument(
        "--client",
        default="stdlib",
        choices=["stdlib", "httpx"],
        help="load generator: http.client keep-alive connections (lightest) or httpx (the SDK's)",
    )
    parser.add_argument(
        "--ratio-rounds",
        type=int,
        default=5,
        help="extra interleaved rounds of [1 client, most clients], 5-way 1-shot, batching on, "
        "for the throughput ratio's median (0: none)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args()
    seconds = args.seconds if args.seconds is not None else (2.0 if args.quick else 15.0)
    levels = [int(c) for c in args.clients.split(",")]
    settings = {"off": 1, "on": args.batch}
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="innerloop-bench-") as tmp:
        folder, model = checkpoint_folder(args.checkpoint, Path(tmp), args.scope)
        from innerloop.checkpoint import read_card

        card_steps = int(read_card(folder / "omniglot.safetensors")["inner_loop"]["steps"])
        print(f"model: {model}", flush=True)
        bodies = {}
        for name, shape in SHAPES.items():
            extra = {"steps": args.steps} if name == "5-way 1-shot" and args.steps else {}
            bodies[name] = [request_body(*shape, seed=s, **extra) for s in range(8)]
        results: dict[tuple[str, int, str], Level] = {}
        naive: dict[str, Level] = {}
        naive_steps = {
            name: (args.steps or card_steps) if name == "5-way 1-shot" else card_steps
            for name in SHAPES
        }
        # both servers run side by side (an idle one costs nothing) and every level is measured
        # on one right after the other, so drifting background load hits both settings alike
        servers: dict[str, Server] = {}
        try:
            for setting, max_batch in settings.items():
                servers[setting] = Server(folder, max_batch, args)
            for name in SHAPES:
                for server in servers.values():
                    run_level(server, bodies[name][:2], 1, 0.0)  # warm-up
                naive[name] = run_naive(
                    folder / "omniglot.safetensors", bodies[name], naive_steps[name], seconds
                )
                print(f"  naive loop     {name:14s}  1 client : p50 {naive[name].p50_ms:8.1f} ms")
                for clients in levels:
                    for setting, server in servers.items():
                        level = run_level(
                            server, bodies[name], clients, seconds, client=args.client
                        )
                        results[(name, clients, setting)] = level
                        print(
                            f"  batching {setting:3s} {name:14s} {clients:3d} clients: "
                            f"p50 {level.p50_ms:8.1f} ms  {level.rps:6.2f} req/s",
                            flush=True,
                        )
            ratio_rounds = scaling_rounds(
                servers["on"], bodies["5-way 1-shot"], max(levels), seconds, args
            )
            adapted = adapter_bodies(servers["on"], bodies["5-way 1-shot"])
            if adapted:
                run_level(servers["on"], adapted[:2], 1, 0.0)
            for clients in (1, max(levels)) if adapted else ():
                level = run_level(servers["on"], adapted, clients, seconds, client=args.client)
                results[("adapter, 5 queries", clients, "on")] = level
                print(f"  adapter predict {clients:3d} clients: p50 {level.p50_ms:8.1f} ms")
        finally:
            for server in servers.values():
                server.stop()

    print()
    print(f"model: {model}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, device {args.device}, "
        f"torch threads {args.threads or 'default'}, workers {args.workers or 'default'}; "
        f"{seconds:g} s per level "
        f"(every client sends at least one request); inner steps: 5-way 1-shot "
        f"{naive_steps['5-way 1-shot']}, 20-way 5-shot {naive_steps['20-way 5-shot']}"
    )
    small_levels = [results[("5-way 1-shot", c, "on")].client_cpu_ms for c in levels]
    print(
        f"load generator: {args.client}, on the same cores; its CPU per 5-way 1-shot request "
        + ", ".join(f"{ms:.2f} ms at {c}" for c, ms in zip(levels, small_levels, strict=True))
        + " clients"
    )
    header = (
        f"{'request':14s} {'clients':>7s} | {'naive':>7s} | "
        f"{'batching off (max_batch_size 1)':^33s} | "
        f"{f'batching on (max_batch_size {args.batch})':^44s} | {'on / off':>8s}"
    )
    print(header)
    print(
        f"{'':14s} {'':>7s} | {'p50 ms':>7s} | {'p50 ms':>9s} {'p99 ms':>9s} {'req/s':>7s} "
        f"{'n':>4s} | {'p50 ms':>9s} {'p99 ms':>9s} {'req/s':>7s} {'n':>4s} {'per call':>9s} | "
        f"{'req/s':>8s}"
    )
    print("-" * len(header))
    for name in SHAPES:
        for clients in levels:
            off, on = results[(name, clients, "off")], results[(name, clients, "on")]
            reference = f"{naive[name].p50_ms:7.1f}" if clients == 1 else f"{'':7s}"
            print(
                f"{name:14s} {clients:7d} | {reference} | {off.p50_ms:9.1f} {off.p99_ms:9.1f} "
                f"{off.rps:7.2f} {off.requests:4d} | {on.p50_ms:9.1f} {on.p99_ms:9.1f} "
                f"{on.rps:7.2f} {on.requests:4d} {on.mean_batch:9.1f} | {on.rps / off.rps:7.2f}x"
            )
    for clients in (1, max(levels)) if ("adapter, 5 queries", 1, "on") in results else ():
        on = results[("adapter, 5 queries", clients, "on")]
        print(
            f"{'adapter, 5 q.':14s} {clients:7d} | {'':7s} | {'':33s} | {on.p50_ms:9.1f} "
            f"{on.p99_ms:9.1f} {on.rps:7.2f} {on.requests:4d} {'':9s} |"
        )
    small, top = "5-way 1-shot", max(levels)
    best_single = min(results[(small, 1, s)].p50_ms for s in settings)
    print()
    print("targets (issue 9), measured above:")
    print(
        f"  5-way 1-shot served p50 / naive p50 ({naive_steps[small]} steps): "
        f"{best_single / naive[small].p50_ms:.2f} (target <= 0.5)"
    )
    scaling = results[(small, top, "on")].rps / results[(small, 1, "on")].rps
    print(f"  5-way 1-shot throughput {top} clients / 1 client: {scaling:.2f}x (target >= 4x)")
    if ratio_rounds:
        print(
            f"    the same, median of {len(ratio_rounds)} more rounds of [1, {top}] clients: "
            f"{statistics.median(ratio_rounds):.2f}x "
            f"(rounds: {', '.join(f'{r:.2f}' for r in ratio_rounds)})"
        )
    big = min(results[("20-way 5-shot", 1, s)].p50_ms for s in settings)
    print(f"  20-way 5-shot p50, card's loop, 1 client: {big:.1f} ms (target <= 150 ms)")
    if ("adapter, 5 queries", 1, "on") in results:
        adapter = results[("adapter, 5 queries", 1, "on")].p50_ms
        print(
            f"  predict with a cached adapter, 5 queries, p50: {adapter:.1f} ms (target <= 10 ms)"
        )
    else:
        print("  predict with a cached adapter: no /v1/adapt here (or several workers)")
    if args.json:
        rows = [
            {"request": k[0], "clients": k[1], "batching": k[2], **vars(v)}
            for k, v in results.items()
        ]
        rows += [
            {"request": k, "clients": 1, "batching": "naive", **vars(v)} for k, v in naive.items()
        ]
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
