"""Choose a checkpoint's served inner loop (steps, step size) on validation episodes.

A checkpoint serves with the inner loop it was meta-trained with unless a request says
otherwise. That is right for MAML-style learners, whose init is tuned for exactly that loop,
but not for Leap or WarpGrad, whose inits are meant for longer adaptation, nor after a change of
schedule. ``innerloop tune`` evaluates a grid of (steps, lr) on fixed episodes of the
**validation** classes (never the test classes: choosing on test would leak into the numbers we
publish), prints every cell, and with ``--write`` stores the best as the card's default, with
the whole grid recorded in ``inner_loop_tuning``. Test results recorded with the old defaults
no longer describe what is served, so ``--write`` drops them: re-run ``innerloop evaluate
--record``.
"""

from __future__ import annotations

import argparse
import math
import sys
from itertools import product
from typing import Any

from innerloop.checkpoint import save_checkpoint
from innerloop.learner import InnerDefaults, Learner
from innerloop_training.cli_evaluate import open_checkpoint
from innerloop_training.evaluation import evaluate_learner
from innerloop_training.sources import build_source
from innerloop_training.trainer import display_command

VAL_SEED = 4242  # fixed validation episodes, distinct from the test seed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("checkpoint", help="a .safetensors checkpoint")
    add("--steps", type=int, nargs="+", default=[1, 3, 5, 10, 20], help="inner steps to try")
    add("--lr", type=float, nargs="+", default=None, help="step sizes to try (default: around "
        "the checkpoint's own: x0.3, x1, x3, x10)")  # fmt: skip
    add(
        "--ways",
        type=int,
        nargs="+",
        default=None,
        help="ways of the validation episodes (default: the checkpoint's training episodes)",
    )
    add(
        "--shots",
        type=int,
        nargs="+",
        default=None,
        help="shots; regression: support points (default: the checkpoint's training episodes)",
    )
    add("--queries", type=int, default=None, help="queries per class (default 15; regression 100)")
    add("--episodes", type=int, default=100, help="validation episodes per setting")
    add("--data-root", default=None, help="data folder (default: as innerloop train)")
    add("--write", action="store_true", help="store the best (steps, lr) as the card's default")
    add("--threads", type=int, default=None, help="torch CPU threads")


def run(args: argparse.Namespace) -> int:
    learner, card = open_checkpoint(args, "tune")
    if learner.learned_step_sizes and args.lr:
        print(
            "innerloop tune: this checkpoint learned its step sizes (Meta-SGD); tune --steps only"
        )
        return 2
    config = card.get("training", {}).get("config", {})
    dataset = config.get("dataset")
    if dataset is None:
        print("innerloop tune: the checkpoint does not say its dataset")
        return 2
    base_lr = learner.inner.lr
    rates = [base_lr] if learner.learned_step_sizes else (args.lr or _around(base_lr))
    try:
        batches = _validation_batches(learner, config, dataset, args)
    except (ValueError, FileNotFoundError) as error:
        print(f"innerloop tune: {error}")
        return 2
    grid: list[dict[str, Any]] = []
    for steps, lr in product(args.steps, rates):
        scores = [
            evaluate_learner(learner, chunk, steps=steps, lr=lr).mean for chunk in batches.values()
        ]
        cell = {"steps": steps, "lr": lr, "score": sum(scores) / len(scores)}
        grid.append(cell)
        print(f"steps {steps:>3}  lr {lr:<8.4g} {_metric(learner)} {_shown(learner, cell)}")
    best = _best(learner, grid)
    default = {"steps": learner.inner.steps, "lr": base_lr}
    print(f"best on {', '.join(batches)} (validation): steps {best['steps']}, lr {best['lr']:.4g}")
    if args.write:
        _write(learner, card, args.checkpoint, best, default, grid, list(batches))
    return 0


def _around(lr: float) -> list[float]:
    return [round(lr * factor, 10) for factor in (0.3, 1.0, 3.0, 10.0)]


def _validation_batches(
    learner: Learner, config: dict[str, Any], dataset: str, args: argparse.Namespace
) -> dict[str, list[Any]]:
    regression = learner.task == "regression"
    shots_grid = args.shots or [int(config.get("shots", 1))]
    ways_grid = args.ways or [int(config.get("ways", 5))]
    settings = [(None, s) for s in shots_grid] if regression else product(ways_grid, shots_grid)
    out: dict[str, list[Any]] = {}
    for ways, shots in settings:
        queries = args.queries if args.queries is not None else (100 if regression else 15)
        source = build_source(
            dataset,
            "val",
            ways=ways or 1,
            shots=shots,
            queries=queries,
            seed=VAL_SEED,
            data_root=args.data_root,
            image_size=learner.arch.image_size,
            split_scheme=config.get("split_scheme", "alphabets"),
            split_seed=config.get("split_seed", 0),
        )
        key = f"{shots}-shot regression" if regression else f"{ways}-way {shots}-shot"
        out[key] = source.fixed(args.episodes, seed=VAL_SEED, chunk=25)
    return out


def _metric(learner: Learner) -> str:
    return "mse" if learner.task == "regression" else "accuracy"


def _shown(learner: Learner, cell: dict[str, Any]) -> str:
    score = float(cell["score"])
    return f"{score:.4f}" if learner.task == "regression" else f"{100 * score:.2f}%"


def _best(learner: Learner, grid: list[dict[str, Any]]) -> dict[str, Any]:
    """Best score; among equals (to 4 decimals) the fewest steps, since steps cost latency."""
    sign = 1.0 if learner.task == "regression" else -1.0

    def badness(cell: dict[str, Any]) -> float:
        score = float(cell["score"])
        return round(sign * score, 4) if math.isfinite(score) else math.inf

    return min(grid, key=lambda c: (badness(c), c["steps"], c["lr"]))


def _write(
    learner: Learner,
    card: dict[str, Any],
    path: str,
    best: dict[str, Any],
    default: dict[str, Any],
    grid: list[dict[str, Any]],
    settings: list[str],
) -> None:
    step_sizes = learner.scaled_step_sizes(float(best["lr"]))
    learner.inner = InnerDefaults(int(best["steps"]), float(best["lr"]), learner.inner.optimizer)
    learner.step_sizes = step_sizes
    card["inner_loop"] = {
        "steps": learner.inner.steps,
        "lr": learner.inner.lr,
        "optimizer": learner.inner.optimizer,
    }
    card["inner_loop_tuning"] = {
        "command": display_command(sys.argv),
        "split": "val",
        "settings": settings,
        "seed": VAL_SEED,
        "metric": _metric(learner),
        "trained_with": default,
        "grid": grid,
    }
    evaluation = card.get("evaluation", {})
    served_before = (default["steps"], default["lr"])
    served_now = (learner.inner.steps, learner.inner.lr)
    stale = [
        key
        for key, result in evaluation.items()
        if key != "validation"
        and served_now != served_before
        and (result.get("steps"), result.get("lr")) == served_before
    ]
    for key in stale:
        del evaluation[key]
    save_checkpoint(learner, path, card)
    print(f"wrote steps {learner.inner.steps}, lr {learner.inner.lr:.4g} into {path}")
    if stale:
        print(f"dropped {len(stale)} results measured with the old defaults: re-run evaluate")
