"""Cheaper arithmetic for the served inner loop, measured side by side: keep only what wins.

Times ``Learner.adapt_and_predict`` (the call the server makes) on the shipped ``omniglot``
checkpoint for one request and for a batch of 16, in fp32 (what is served), under bf16
autocast, and with channels-last inputs, interleaving the variants so background load hits them
alike, and prints each one's time beside the largest change it makes to a served probability
and how many predicted labels it flips. A variant is worth serving only if it is clearly faster
and changes no label.

    python benchmarks/bench_arithmetic.py --scope head --steps 10 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from innerloop.checkpoint import load_checkpoint
from innerloop.learner import Learner

REPO = Path(__file__).resolve().parents[1]


def requests(tasks: int, ways: int, shots: int, queries: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    support_x = (torch.rand(tasks, ways * shots, 1, 28, 28, generator=generator) > 0.85).float()
    support_y = torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1)
    weight = torch.ones(tasks, ways * shots)
    mask = torch.ones(tasks, ways, dtype=torch.bool)
    query_x = (torch.rand(tasks, queries, 1, 28, 28, generator=generator) > 0.85).float()
    return support_x, support_y, weight, mask, query_x


@contextlib.contextmanager
def fp32() -> Iterator[None]:
    yield


@contextlib.contextmanager
def bf16() -> Iterator[None]:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yield


Context = Callable[[], contextlib.AbstractContextManager[None]]


def variants(
    learner: Learner, data: tuple[torch.Tensor, ...], steps: int
) -> dict[str, Callable[[], torch.Tensor]]:
    channels_last = learner.with_params(
        {
            k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v
            for k, v in learner.params.items()
        }
    )
    channels_last.frozen = learner.frozen

    def run(model: Learner, context: Context) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            with context():
                out = model.adapt_and_predict(*data, steps=steps).outputs
            return torch.softmax(out.float(), -1)

        return call

    return {
        "fp32 (served)": run(learner, fp32),
        "bf16 autocast": run(learner, bf16),
        "channels-last": run(channels_last, fp32),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", type=Path, default=REPO / "checkpoints/omniglot.safetensors"
    )
    parser.add_argument("--scope", default=None, help="all, film, last or head (default: card's)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    learner, _ = load_checkpoint(args.checkpoint)
    if args.scope:
        learner = learner.with_scope(args.scope)
    print(
        f"{args.checkpoint.name}, scope {learner.scope}, {args.steps} steps, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"{'request':<22}{'variant':<16}{'median ms':>10}{'vs fp32':>9}{'max |dp|':>10}{'flips':>7}"
    )
    for label, shape in (("5-way 1-shot x1", (1, 5, 1, 5)), ("5-way 1-shot x16", (16, 5, 1, 5))):
        data = requests(*shape)
        calls = variants(learner, data, args.steps)
        reference = calls["fp32 (served)"]()
        outputs = {name: call() for name, call in calls.items()}  # warm-up and answers
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.repeats):
            for name, call in calls.items():
                started = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - started)
        base = statistics.median(times["fp32 (served)"])
        for name in calls:
            median = statistics.median(times[name])
            diff = (outputs[name] - reference).abs().max().item()
            flips = int((outputs[name].argmax(-1) != reference.argmax(-1)).sum())
            print(
                f"{label:<22}{name:<16}{median * 1000:>10.2f}{base / median:>8.2f}x"
                f"{diff:>10.4f}{flips:>7d}"
            )


if __name__ == "__main__":
    main()
