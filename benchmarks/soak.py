"""Soak test: N closed-loop clients for M minutes against a real ``innerloop serve``.

Starts a server on the shipped checkpoints (or uses ``--url``), runs ``--clients`` threads,
each with its own httpx connection, sending a fixed mix until ``--minutes`` have passed:
5-way 1-shot Omniglot-shaped requests (105x105 PNG drawings), 20-way 5-shot ones, ``sine``
regressions and a few bad requests that must be refused with a 4xx. Every request has a
timeout, so the run is bounded by ``--minutes`` plus one timeout.

Prints the answers by status (a refusal of a bad request is expected; anything else that is not
200 is an error), p50/p99 latency of the good requests, and the memory of the whole server
process tree over time (RSS summed over processes, and PSS, which counts shared pages once),
with the growth from the end of the warm-up to the end of the run.

    python benchmarks/soak.py --clients 32 --minutes 30            # the target run
    python benchmarks/soak.py --clients 32 --minutes 3 --threads 1 # a short one
    python benchmarks/soak.py --url http://127.0.0.1:8000 ...      # an already running server
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from bench_server import drawing, free_port  # the same 105x105 drawings as the benchmark

REPO = Path(__file__).resolve().parents[1]


# ---- requests ---------------------------------------------------------------------------------
def image_body(ways: int, shots: int, queries: int, seed: int) -> bytes:
    support = [
        {"x": drawing(seed * 100 + c, s), "y": f"class-{c}"}
        for c in range(ways)
        for s in range(shots)
    ]
    query = [drawing(seed * 100 + q % ways, 50 + q) for q in range(queries)]
    return json.dumps({"model": "omniglot", "support": support, "query": query}).encode()


def sine_body(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    xs = rng.uniform(-5, 5, 10)
    body = {
        "model": "sine",
        "support": [{"x": [float(x)], "y": [float(np.sin(x + seed))]} for x in xs],
        "query": [[float(x)] for x in np.linspace(-5, 5, 5)],
    }
    return json.dumps(body).encode()


@dataclass(frozen=True)
class Kind:
    name: str
    bodies: list[bytes]
    expect: int  # the status a correct server gives


def request_mix() -> list[Kind]:
    """The weighted mix every client cycles through (a list, so it is deterministic)."""
    small = Kind("5-way 1-shot", [image_body(5, 1, 5, seed) for seed in range(8)], 200)
    large = Kind("20-way 5-shot", [image_body(20, 5, 20, seed) for seed in range(2)], 200)
    sine = Kind("sine", [sine_body(seed) for seed in range(8)], 200)
    bad = Kind(
        "bad (refused)",
        [
            b'{"support": [',
            json.dumps({"model": "omniglot", "support": [], "query": ["x"]}).encode(),
            # a lone surrogate label (valid JSON, not valid text)
            b'{"support": [{"x": "' + drawing(1, 0).encode() + b'", "y": "\\ud800"}, '
            b'{"x": "'
            + drawing(2, 0).encode()
            + b'", "y": "b"}], "query": ["'
            + drawing(1, 1).encode()
            + b'"]}',
        ],
        422,
    )
    return [small] * 14 + [large] + [sine] * 4 + [bad]


# ---- the server -------------------------------------------------------------------------------
class Server:
    def __init__(self, checkpoints: Path, threads: int, log: Path, extra: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "innerloop.cli",
                "serve",
                "--checkpoints",
                str(checkpoints),
                "--port",
                str(self.port),
                "--threads",
                str(threads),
                *extra,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_healthy(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}")
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("server not healthy in time")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self._log.close()


def server_pid(url: str) -> int | None:
    """The main process listening on ``url``'s port, for ``--url`` runs on this machine."""
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        out = subprocess.run(
            ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    pids = [int(p.split("=")[1]) for p in out.replace(",", " ").split() if p.startswith("pid=")]
    if not pids:
        return None
    pid = min(pids)
    parent = _parent(pid)
    while parent is not None and parent > 1 and "innerloop" in _cmdline(parent):
        pid, parent = parent, _parent(parent)
    return pid


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


# ---- memory of the process tree ---------------------------------------------------------------
def tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent = _parent(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found, stack = [pid], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _kib(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory_mib(pid: int) -> tuple[float, float, int]:
    """(RSS summed, PSS summed, processes) over ``pid`` and its descendants, in MiB."""
    pids = tree(pid)
    rss = sum(_kib(Path(f"/proc/{p}/status"), "VmRSS") for p in pids)
    pss = sum(_kib(Path(f"/proc/{p}/smaps_rollup"), "Pss") for p in pids)
    return rss / 1024, pss / 1024, len(pids)


# ---- the run ----------------------------------------------------------------------------------
@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    by_kind: dict[str, Counter[str]] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    unexpected: Counter[str] = field(default_factory=Counter)
    no_retry_after: int = 0

    def add(self, kind: Kind, outcome: str, seconds: float, retry_after: bool) -> None:
        with self.lock:
            self.by_kind.setdefault(kind.name, Counter())[outcome] += 1
            if outcome == str(kind.expect):
                if kind.expect == 200:
                    self.latencies.append(seconds)
            else:
                self.unexpected[outcome] += 1
                if outcome == "503" and not retry_after:
                    self.no_retry_after += 1


def client_loop(
    url: str, index: int, mix: list[Kind], deadline: float, timeout_s: float, tally: Tally
) -> None:
    position = index * 7  # clients start at different places of the mix
    with httpx.Client(base_url=url, timeout=timeout_s) as http:
        while time.monotonic() < deadline:
            kind = mix[position % len(mix)]
            body = kind.bodies[(position // len(mix)) % len(kind.bodies)]
            position += 1
            started = time.monotonic()
            retry_after = False
            try:
                response = http.post(
                    "/v1/predict", content=body, headers={"content-type": "application/json"}
                )
                outcome = str(response.status_code)
                retry_after = "retry-after" in response.headers
            except httpx.HTTPError as error:
                outcome = type(error).__name__
            tally.add(kind, outcome, time.monotonic() - started, retry_after)
            if outcome == "503":
                time.sleep(1.0)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--warmup-minutes", type=float, default=None, help="default: 20%% of run")
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=120.0, help="per request, seconds")
    parser.add_argument("--url", default=None, help="use this running server instead")
    parser.add_argument("--checkpoints", type=Path, default=REPO / "checkpoints")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra serve flag")
    args = parser.parse_args()
    if args.clients < 1 or args.minutes <= 0 or args.sample_seconds <= 0:
        parser.error("--clients, --minutes and --sample-seconds must be positive")
    warmup_s = 60 * (args.warmup_minutes if args.warmup_minutes is not None else args.minutes / 5)

    server: Server | None = None
    if args.url:
        url, pid = args.url.rstrip("/"), server_pid(args.url)
    else:
        log = Path(tempfile.mkdtemp(prefix="innerloop-soak-")) / "server.log"
        server = Server(args.checkpoints, args.threads, log, args.serve_arg)
        print(f"starting innerloop serve on {server.url} (log: {log})", flush=True)
        server.wait_healthy()
        url, pid = server.url, server.process.pid
    try:
        mix = request_mix()
        tally = Tally()
        started = time.monotonic()
        deadline = started + 60 * args.minutes
        threads = [
            threading.Thread(
                target=client_loop,
                args=(url, i, mix, deadline, args.timeout, tally),
                daemon=True,
            )
            for i in range(args.clients)
        ]
        for thread in threads:
            thread.start()
        samples: list[tuple[float, float, float, int, int]] = []
        while time.monotonic() < deadline:
            if pid is not None:
                rss, pss, count = memory_mib(pid)
                with tally.lock:
                    done = sum(sum(c.values()) for c in tally.by_kind.values())
                samples.append((time.monotonic() - started, rss, pss, count, done))
                print(
                    f"  t={samples[-1][0]:6.0f}s  RSS {rss:8.1f} MiB  PSS {pss:8.1f} MiB  "
                    f"processes {count}  requests {done}",
                    flush=True,
                )
            time.sleep(min(args.sample_seconds, max(deadline - time.monotonic(), 0.0)))
        for thread in threads:
            thread.join(args.timeout + 10)
        if pid is not None:
            rss, pss, count = memory_mib(pid)
            with tally.lock:
                done = sum(sum(c.values()) for c in tally.by_kind.values())
            samples.append((time.monotonic() - started, rss, pss, count, done))
    finally:
        if server is not None:
            server.stop()

    elapsed = time.monotonic() - started
    total = sum(sum(c.values()) for c in tally.by_kind.values())
    print(f"\n{args.clients} clients for {elapsed / 60:.1f} min against {url}: {total} requests")
    print(f"{'request':<16} {'answers by status':<50}")
    for name, counts in tally.by_kind.items():
        print(f"{name:<16} {', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))}")
    errors = sum(tally.unexpected.values())
    print(f"unexpected answers: {dict(tally.unexpected) or 'none'}")
    print(f"503 without Retry-After: {tally.no_retry_after}")
    print(
        f"good requests: p50 {percentile(tally.latencies, 50) * 1000:.0f} ms, "
        f"p99 {percentile(tally.latencies, 99) * 1000:.0f} ms, "
        f"{len(tally.latencies) / elapsed:.1f} per second"
    )
    if samples:
        after = [s for s in samples if s[0] >= warmup_s] or samples[-1:]
        first, last = after[0], samples[-1]
        for label, column in (("RSS", 1), ("PSS", 2)):
            growth = (last[column] / first[column] - 1) * 100 if first[column] else float("nan")
            peak = max(s[column] for s in after)
            print(
                f"{label} of the process tree: {first[column]:.1f} MiB after the "
                f"{warmup_s / 60:.1f}-min warm-up -> {last[column]:.1f} MiB at the end "
                f"({growth:+.2f}%), peak {peak:.1f} MiB"
            )
    else:
        print("memory: not sampled (the server's process is not on this machine)")
    non_503 = errors - tally.unexpected.get("503", 0)
    return 1 if non_503 or tally.no_retry_after else 0


if __name__ == "__main__":
    sys.exit(main())
