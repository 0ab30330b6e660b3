"""Before/after a change on a drifting host: two checkouts' servers side by side, interleaved.

``bench_server.py`` compares settings within one run of one checkout. A change's before/after
needs two checkouts, and this shared machine's speed drifts by up to 2x between runs minutes
apart, so two separate runs cannot be compared. Here both servers are up at once and every
level runs on one, then at once on the other, for several rounds: drift hits both alike.

    git worktree add ../innerloop-before 6c0a9dc     # any earlier commit
    python benchmarks/bench_versions.py --before ../innerloop-before

Each server runs the code of its own tree (``PYTHONPATH`` puts that tree first) on the same
checkpoint. Requests: ``adapter`` (``/v1/predict`` with an adapter id and 5 queries), ``5w1s``
(5-way 1-shot with ``--steps``), ``20w5s`` (20-way 5-shot, the card's loop), as in
``bench_server.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import bench_server as bs

REPO = Path(__file__).resolve().parents[1]


def bodies_for(request: str, steps: int | None) -> list[bytes]:
    extra = {"steps": steps} if steps is not None and request == "5w1s" else {}
    ways, shots, queries = (5, 1, 5) if request in ("5w1s", "adapter") else (20, 5, 20)
    return [bs.request_body(ways, shots, queries, seed=s, **extra) for s in range(32)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="a checkout of the earlier commit")
    parser.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "omniglot.safetensors"))
    parser.add_argument("--requests", default="adapter,5w1s,20w5s")
    parser.add_argument("--clients", default="1,32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=10, help="inner steps of 5w1s requests")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="innerloop-versions-") as tmp:
        folder, model = bs.checkpoint_folder(Path(args.checkpoint), Path(tmp), None)
        print(f"model: {model}")
        run(args, folder)


def run(args: argparse.Namespace, folder: Path) -> None:
    options = argparse.Namespace(batch_timeout=0.005, device="cpu", threads=None, workers=None)
    trees = {"before": Path(args.before).resolve(), "after": REPO}
    servers: dict[str, bs.Server] = {}
    for name, tree in trees.items():
        os.environ["PYTHONPATH"] = f"{tree}:{tree / 'training'}:{tree / 'server'}"
        servers[name] = bs.Server(folder, 16, options)
    results: dict[tuple[str, int, str], list[bs.Level]] = {}
    try:
        requests = args.requests.split(",")
        clients_levels = [int(c) for c in args.clients.split(",")]
        bodies: dict[tuple[str, str], list[bytes]] = {}
        for request in requests:
            for name, server in servers.items():
                made = bodies_for(request, args.steps)
                if request == "adapter":
                    made = bs.adapter_bodies(server, made)
                    if not made:
                        sys.exit(f"{name}: this checkout has no /v1/adapt")
                bodies[(request, name)] = made
                bs.run_level(server, made[:2], 1, 0.0)  # warm-up
        for round_ in range(args.rounds):
            for request in requests:
                for clients in clients_levels:
                    for name, server in servers.items():
                        level = bs.run_level(server, bodies[(request, name)], clients, args.seconds)
                        results.setdefault((request, clients, name), []).append(level)
                        print(
                            f"round {round_} {request:7s} {clients:3d} clients {name:6s}: "
                            f"p50 {level.p50_ms:8.1f} ms {level.rps:7.1f} req/s",
                            flush=True,
                        )
    finally:
        for server in servers.values():
            server.stop()
    print(
        f"\nbefore: {trees['before']}\nafter: {trees['after']}; medians over {args.rounds} rounds"
    )
    print(f"{'request':8s}{'clients':>8s} | {'p50 ms before':>14s}{'after':>8s}{'ratio':>7s} | "
          f"{'req/s before':>13s}{'after':>8s}{'ratio':>7s}")  # fmt: skip
    for request in requests:
        for clients in clients_levels:
            b = results[(request, clients, "before")]
            a = results[(request, clients, "after")]
            p50_b = statistics.median(x.p50_ms for x in b)
            p50_a = statistics.median(x.p50_ms for x in a)
            rps_b = statistics.median(x.rps for x in b)
            rps_a = statistics.median(x.rps for x in a)
            print(
                f"{request:8s}{clients:8d} | {p50_b:14.1f}{p50_a:8.1f}{p50_a / p50_b:7.2f} | "
                f"{rps_b:13.1f}{rps_a:8.1f}{rps_a / rps_b:7.2f}"
            )


if __name__ == "__main__":
    main()
