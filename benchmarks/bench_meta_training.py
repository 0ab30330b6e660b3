"""Meta-training throughput: our inner loop (vmapped and per-task) against ``higher``, then
the served-scope recipes against the first-order all-parameter one the shipped models used.

Our two sides run the same model, the same episodes and the same inner loop (``adapt``), and
both back-propagate the query loss into the meta-parameters; only the batching differs. The
third line is the independent reference: the same Conv4 and shared zero head as an ``nn.Module``
adapted with ``higher.innerloop_ctx`` and a differentiable SGD (a dev dependency, never used by
the product), task by task, as most MAML code is written. Run:

    python benchmarks/bench_meta_training.py [--ways 5 --shots 1 --queries 15 --steps 5
                                              --meta-batch 16 --repeats 3 --first-order]

The second table is one meta-step of each recipe on the same batch through
``adapt_and_predict`` as ``innerloop train`` runs it (prototype head; its default batching, so
the layers before the first adapted one run once for the whole meta-batch): first-order MAML
adapting everything (how the shipped ``omniglot`` and ``quickdraw`` were trained), and
second-order MAML with a learned head scale in the ``head``, ``last`` and ``film`` scopes (the
loops the server runs).

Synthetic 28x28 images keep the benchmark independent of the data folder; the FLOPs are the
same as for Omniglot.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
from innerloop_training.tasks import TaskBatch

from innerloop.adaptation import InnerLoop, adapt, adapt_and_predict
from innerloop.learner import InnerDefaults, Learner
from innerloop.models import ArchConfig


def synthetic_batch(tasks: int, ways: int, shots: int, queries: int, seed: int) -> TaskBatch:
    generator = torch.Generator().manual_seed(seed)
    support_y = torch.arange(ways).repeat(shots).expand(tasks, -1).contiguous()
    query_y = torch.arange(ways).repeat(queries).expand(tasks, -1).contiguous()
    return TaskBatch(
        torch.rand(tasks, ways * shots, 1, 28, 28, generator=generator),
        support_y,
        torch.ones(tasks, ways * shots),
        torch.ones(tasks, ways, dtype=torch.bool),
        torch.rand(tasks, ways * queries, 1, 28, 28, generator=generator),
        query_y,
    )


def vmapped_step(learner: Learner, batch: TaskBatch, loop: InnerLoop) -> None:
    out = adapt_and_predict(
        learner,
        learner.params,
        learner.step_sizes,
        batch.support_x,
        batch.support_y,
        batch.support_weight,
        batch.class_mask,
        batch.query_x,
        loop,
        batching="vmap",
    ).outputs
    loss = torch.nn.functional.cross_entropy(out.flatten(0, 1), batch.query_y.flatten())
    loss.backward()


def looped_step(learner: Learner, batch: TaskBatch, loop: InnerLoop) -> None:
    total = torch.zeros(())
    for t in range(batch.tasks):
        adapted = adapt(
            learner,
            learner.params,
            learner.step_sizes,
            batch.support_x[t],
            batch.support_y[t],
            batch.support_weight[t],
            batch.class_mask[t],
            loop,
        )
        out = learner.forward(adapted.params, batch.query_x[t], batch.class_mask[t])
        total = total + torch.nn.functional.cross_entropy(out, batch.query_y[t])
    (total / batch.tasks).backward()


def higher_step(learner: Learner, batch: TaskBatch, loop: InnerLoop) -> None:
    """The reference: ``higher``'s functional copy of a plain module, per task."""
    import higher

    module = _reference_module(learner)
    inner = torch.optim.SGD(module.parameters(), lr=0.1)
    total = torch.zeros(())
    for t in range(batch.tasks):
        with higher.innerloop_ctx(
            module, inner, copy_initial_weights=False, track_higher_grads=not loop.first_order
        ) as (fmodel, diffopt):
            ways = int(batch.class_mask[t].sum())
            for _ in range(loop.steps):
                logits = fmodel(batch.support_x[t])[:, :ways]
                diffopt.step(torch.nn.functional.cross_entropy(logits, batch.support_y[t]))
            out = fmodel(batch.query_x[t])[:, :ways]
            total = total + torch.nn.functional.cross_entropy(out, batch.query_y[t])
    (total / batch.tasks).backward()


_REFERENCE: dict[int, torch.nn.Module] = {}


def _reference_module(learner: Learner) -> torch.nn.Module:
    """The learner's body plus a linear head with a shared row per class, as one module."""
    if id(learner) not in _REFERENCE:
        body = learner.body
        head = torch.nn.Linear(learner.params["head.weight"].shape[-1], 20)
        with torch.no_grad():
            body.load_state_dict(
                {k[len("body.") :]: v for k, v in learner.params.items() if k.startswith("body.")}
            )
            head.weight.zero_()
            head.bias.zero_()
        _REFERENCE[id(learner)] = torch.nn.Sequential(body, head)
    return _REFERENCE[id(learner)]


RECIPES = (
    ("fomaml, all (shipped)", "all", True),
    ("maml, head + scale", "head", False),
    ("maml, last + scale", "last", False),
    ("maml, film + scale", "film", False),
    ("fomaml, film + scale", "film", True),
)


def recipe_step(learner: Learner, batch: TaskBatch, loop: InnerLoop) -> None:
    """One meta-step as ``innerloop train`` takes it: default batching, query loss backward."""
    out = adapt_and_predict(
        learner,
        learner.params,
        learner.step_sizes,
        batch.support_x,
        batch.support_y,
        batch.support_weight,
        batch.class_mask,
        batch.query_x,
        loop,
    ).outputs
    loss = torch.nn.functional.cross_entropy(out.flatten(0, 1), batch.query_y.flatten())
    loss.backward()


def recipe_learner(scope: str, steps: int) -> Learner:
    scaled = scope != "all"
    learner = Learner.create(
        ArchConfig(), "proto", InnerDefaults(steps, 0.1), head_scale=0.1 if scaled else None
    ).with_scope(scope)
    for tensor in learner.params.values():
        tensor.requires_grad_(True)
    return learner


def time_it(step: Callable[[], None], repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--meta-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--first-order", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-recipes", action="store_true", help="skip the recipe table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    learner = Learner.create(ArchConfig(), "zero", InnerDefaults(args.steps, 0.1))
    for tensor in learner.params.values():
        tensor.requires_grad_(True)
    loop = InnerLoop(args.steps, first_order=args.first_order)
    batch = synthetic_batch(args.meta_batch, args.ways, args.shots, args.queries, seed=0)
    order = "first" if args.first_order else "second"
    print(
        f"{args.ways}-way {args.shots}-shot, {args.queries} queries/class, {args.steps} inner "
        f"steps, {order} order, meta-batch {args.meta_batch}, {torch.get_num_threads()} threads"
    )
    results = {}
    methods: tuple[tuple[str, Callable[[Learner, TaskBatch, InnerLoop], None]], ...] = (
        ("vmapped (ours)", vmapped_step),
        ("per-task (ours)", looped_step),
        ("higher 0.2.1", higher_step),
    )
    for name, step in methods:
        seconds = time_it(partial(step, learner, batch, loop), args.repeats)
        results[name] = args.meta_batch / seconds
        for tensor in learner.params.values():
            tensor.grad = None
    print(f"{'method':<16}{'tasks/s':>10}")
    for name, rate in results.items():
        print(f"{name:<16}{rate:>10.2f}")
    ours = max(results["vmapped (ours)"], results["per-task (ours)"])
    print(
        f"speed-up of vmap over the loop: "
        f"{results['vmapped (ours)'] / results['per-task (ours)']:.2f}x; "
        f"ours (best) over higher: {ours / results['higher 0.2.1']:.2f}x"
    )
    if args.no_recipes:
        return
    print(f"\n{'recipe (one meta-step, same batch)':<36}{'tasks/s':>10}{'vs shipped':>12}")
    rates = {}
    for name, scope, first_order in RECIPES:
        learner = recipe_learner(scope, args.steps)
        loop = InnerLoop(args.steps, first_order=first_order)
        seconds = time_it(partial(recipe_step, learner, batch, loop), args.repeats)
        rates[name] = args.meta_batch / seconds
        shipped = rates[RECIPES[0][0]]
        print(f"{name:<36}{rates[name]:>10.2f}{rates[name] / shipped:>11.2f}x")


if __name__ == "__main__":
    main()
