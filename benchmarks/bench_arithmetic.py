"""Cheaper arithmetic for the served inner loop, measured side by side: keep only what wins.

First glibc's allocator defaults against ``innerloop.allocator.keep_freed_memory`` on the shared
prefix, each in its own process. Then the changes that were kept, op by op on Conv4's largest
activation: fused ``F.group_norm`` against the plain reductions ``SampleGroupNorm`` used to
compute, channels-last against NCHW for a convolution and max-pooling, and max-pooling before
the ReLU; then the shared prefix on a batch's 640 images in one call against pieces of
``PREFIX_CHUNK``. Then ``Learner.adapt_and_predict`` (the call the server makes) on the shipped
``omniglot`` checkpoint for one request and for a batch of 16, in fp32 (what is served) and
under bf16 autocast, interleaved so background load hits both alike, with each one's time beside
the largest change it makes to a served probability and how many predicted labels it flips.
A variant is worth serving only if it is clearly faster and changes no label.

    python benchmarks/bench_arithmetic.py --scope head --steps 10 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from innerloop.allocator import keep_freed_memory
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
    def run(model: Learner, context: Context) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            with context():
                out = model.adapt_and_predict(*data, steps=steps).outputs
            return torch.softmax(out.float(), -1)

        return call

    return {
        "fp32 (served)": run(learner, fp32),
        "bf16 autocast": run(learner, bf16),
    }


def reductions_group_norm(x: torch.Tensor, groups: int = 8, eps: float = 1e-5) -> torch.Tensor:
    """Group norm as plain reductions: what ``SampleGroupNorm`` computed before ``F.group_norm``."""
    n, c, h, w = x.shape
    grouped = x.reshape(n, groups, -1)
    mean = grouped.mean(-1, keepdim=True)
    var = ((grouped - mean) ** 2).mean(-1, keepdim=True)
    return ((grouped - mean) * torch.rsqrt(var + eps)).reshape(n, c, h, w)


def layers_and_layout(repeats: int) -> None:
    """The two kept changes, on Conv4's largest activation ([160, 64, 28, 28]): fused group norm
    against plain reductions, and channels-last against NCHW for a convolution and max-pooling."""
    x = torch.rand(160, 64, 28, 28)
    last = x.contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    conv_last = torch.nn.Conv2d(64, 64, 3, padding=1).to(memory_format=torch.channels_last)
    pairs = {
        "group norm": (lambda: reductions_group_norm(x), lambda: F.group_norm(x, 8)),
        "conv 3x3 64->64": (lambda: conv(x), lambda: conv_last(last)),
        "max-pool 2x2": (lambda: F.max_pool2d(x, 2), lambda: F.max_pool2d(last, 2)),
        "ReLU, pool -> pool, ReLU": (
            lambda: F.max_pool2d(F.relu(last), 2),
            lambda: F.relu(F.max_pool2d(last, 2)),
        ),
    }
    print(f"{'op on [160, 64, 28, 28]':<24}{'before ms':>10}{'after ms':>10}{'speed-up':>10}")
    with torch.no_grad():
        for name, (before, after) in pairs.items():
            times = {"before": [], "after": []}
            for _ in range(repeats):
                for key, call in (("before", before), ("after", after)):
                    started = time.perf_counter()
                    call()
                    times[key].append(time.perf_counter() - started)
            old, new = (statistics.median(times[k]) for k in ("before", "after"))
            print(f"{name:<24}{old * 1000:>10.2f}{new * 1000:>10.2f}{old / new:>9.2f}x")
    print("(after: F.group_norm / channels-last / pool before ReLU, as the served body runs)")
    print()


def prefix_pieces(learner: Learner, repeats: int) -> None:
    """The shared prefix (frozen layers) on 640 images, as a batch of 32 five-way one-shot
    requests brings: in one call against in pieces of ``PREFIX_CHUNK`` (what is served)."""
    import innerloop.learner as learner_module

    shared = learner.split_shared(learner.params, learner.step_sizes)
    if shared is None:
        print("(scope adapts the first layer: no shared prefix to cut in pieces)")
        return
    x = torch.rand(640, 1, learner.arch.image_size, learner.arch.image_size)
    chosen = learner_module.PREFIX_CHUNK
    times: dict[int, list[float]] = {640: [], chosen: []}
    with torch.inference_mode():
        for _ in range(repeats):
            for chunk in times:
                learner_module.PREFIX_CHUNK = chunk
                started = time.perf_counter()
                shared.prefix(x)
                times[chunk].append(time.perf_counter() - started)
    learner_module.PREFIX_CHUNK = chosen
    whole, pieces = (statistics.median(times[c]) for c in (640, chosen))
    print(
        f"shared prefix on 640 images: one call {whole * 1000:.1f} ms, pieces of {chosen} "
        f"{pieces * 1000:.1f} ms ({whole / pieces:.2f}x)"
    )
    print()


def prefix_ms(checkpoint: Path, repeats: int) -> float:
    """Median shared-prefix forward of 120 drawings (a batch of 12 five-way one-shot requests
    with five queries each) in this process, with its allocator as it is."""
    learner, _ = load_checkpoint(checkpoint)
    shared = learner.split_shared(learner.params, learner.step_sizes)
    size = learner.arch.image_size
    x = torch.rand(120, 1, size, size)
    forward = shared.prefix if shared else partial(learner.features, learner.params)
    times = []
    with torch.inference_mode():
        forward(x)  # warm-up
        for _ in range(repeats * 3):
            started = time.perf_counter()
            forward(x)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def allocator_side_by_side(checkpoint: Path, repeats: int, threads: int) -> None:
    """glibc's defaults against ``keep_freed_memory`` (a process-wide setting that cannot be
    undone, so each runs in its own process, alternately, on the same forward)."""
    times: dict[str, list[float]] = {"default": [], "keep": []}
    for _ in range(3):
        for setting in times:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--checkpoint",
                    str(checkpoint),
                    "--threads",
                    str(threads),
                    "--repeats",
                    str(repeats),
                    "--_prefix-only",
                    setting,
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            times[setting].append(float(out.split()[-1]))
    default, keep = (statistics.median(times[s]) for s in ("default", "keep"))
    print(
        f"shared prefix on 120 images, glibc malloc defaults {default * 1000:.1f} ms, "
        f"keep_freed_memory {keep * 1000:.1f} ms ({default / keep:.2f}x)"
    )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", type=Path, default=REPO / "checkpoints/omniglot.safetensors"
    )
    parser.add_argument("--scope", default=None, help="all, film, last or head (default: card's)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--_prefix-only", choices=["default", "keep"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._prefix_only:
        if args._prefix_only == "keep":
            keep_freed_memory()
        print(prefix_ms(args.checkpoint, args.repeats))
        return
    allocator_side_by_side(args.checkpoint, args.repeats, torch.get_num_threads())
    keep_freed_memory()  # as every innerloop command runs
    learner, _ = load_checkpoint(args.checkpoint)
    if args.scope:
        learner = learner.with_scope(args.scope)
    layers_and_layout(args.repeats)
    prefix_pieces(learner, args.repeats)
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
