"""What the per-request choice of loop costs, side by side with the loops it chooses among.

``Learner.adapt_and_predict`` (the call the server makes) on a real checkpoint and real Quick
Draw test episodes (random drawings where ``../shared/data`` is absent), for one request and for
a batch of 16: each candidate loop alone, then the choice (every candidate on every held-out
fold, then the winner on the whole support set). Runs are interleaved, so background load hits
all alike; the median of ``--repeats`` is printed with the work units that ``--max-work``
bounds.

    python benchmarks/bench_loop_choice.py checkpoints/quickdraw.safetensors \\
        --scope last --candidates 5:0.05 10:0.05 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch

from innerloop.checkpoint import load_checkpoint
from innerloop.learner import Learner
from innerloop.loop_choice import work


def episodes(learner: Learner, tasks: int, ways: int, shots: int) -> tuple[torch.Tensor, ...]:
    """Quick Draw test episodes (15 queries per class), or random drawings without the data."""
    try:
        from innerloop_training.sources import build_source

        source = build_source(
            "quickdraw", "test", ways=ways, shots=shots, queries=15, seed=0,
            image_size=learner.arch.image_size,
        )  # fmt: skip
        batch = source.fixed(tasks, seed=0, chunk=tasks)[0]
        return (
            batch.support_x,
            batch.support_y,
            batch.support_weight,
            batch.class_mask,
            batch.query_x,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"(no Quick Draw data: {error}; timing random drawings)")
        generator = torch.Generator().manual_seed(0)
        size = learner.arch.image_size
        support_x = torch.rand(tasks, ways * shots, 1, size, size, generator=generator) > 0.85
        query_x = torch.rand(tasks, ways * 15, 1, size, size, generator=generator) > 0.85
        support_y = torch.arange(ways).repeat(shots).repeat(tasks, 1)
        return (
            support_x.float(),
            support_y,
            torch.ones(tasks, ways * shots),
            torch.ones(tasks, ways, dtype=torch.bool),
            query_x.float(),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--scope", default=None, help="adapt this scope (default: the card's)")
    parser.add_argument(
        "--candidates",
        nargs="+",
        default=None,
        help="STEPS:LR loops to choose among (default: the card's; 0 steps is always added)",
    )
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    learner, _ = load_checkpoint(args.checkpoint)
    if args.scope:
        learner = learner.with_scope(args.scope)
    candidates = (
        [(int(s), float(r)) for s, r in (c.split(":") for c in args.candidates)]
        if args.candidates
        else list(learner.inner.candidates)
    )
    learner.inner = dataclasses.replace(
        learner.inner, candidates=tuple(candidates), choice_folds=args.folds
    )
    loops = learner.inner.candidates
    print(
        f"{args.checkpoint}, scope {learner.scope}, {args.ways}-way {args.shots}-shot, "
        f"{args.threads} thread(s); candidates {loops}, {args.folds} folds"
    )
    support = args.ways * args.shots
    print(
        f"work units per request: the default loop {support * max(learner.inner.steps, 1)}, "
        f"the choice adds {work(support, loops, args.folds)}"
    )
    for tasks in (1, 16):
        batch = episodes(learner, tasks, args.ways, args.shots)
        runs: dict[str, Callable[[], object]] = {
            f"{s} steps @ {r:g}": (
                lambda s=s, r=r, b=batch: learner.adapt_and_predict(*b, steps=s, lr=r, choose=False)
            )
            for s, r in loops
        }
        runs["choice"] = lambda b=batch: learner.adapt_and_predict(*b, choose=True)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for fn in runs.values():  # warm-up
            fn()
        for _ in range(args.repeats):
            for name, fn in runs.items():
                started = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - started) * 1000.0 / tasks)
        chosen = learner.adapt_and_predict(*batch, choose=True).choice
        picks = (
            [loops[i] if i >= 0 else "default" for i in chosen.chosen.tolist()] if chosen else []
        )
        print(f"\n{tasks} request(s) per call: ms per request (median of {args.repeats})")
        for name, values in times.items():
            print(f"  {name:<20} {statistics.median(values):8.1f}")
        counts = {str(p): picks.count(p) for p in dict.fromkeys(picks)}
        print(f"  chosen: {counts}")


if __name__ == "__main__":
    main()
