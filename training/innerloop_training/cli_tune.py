"""Choose a checkpoint's served inner loop (scope, steps, step size) on validation episodes.

A checkpoint serves with the inner loop it was meta-trained with unless a request says
otherwise. That is right for MAML-style learners on their own tasks, but not for Leap or
WarpGrad, whose inits are meant for longer adaptation, nor after a change of schedule, and not
under domain shift, where users' data differs from the training data: there a loop tuned for
the training domain can make answers much worse than not adapting at all.

``innerloop tune`` evaluates a grid of (scope, steps, lr) on fixed episodes of the
**validation** classes (never the test classes: choosing on test would leak into the numbers we
publish) of the model's own domain and of a shifted one (Omniglot <-> Quick Draw by default),
and scores every cell against the nearest-prototype baseline on the un-adapted features, on the
same episodes. The served loop is the cell with the largest mean gain over both domains among
those that are *not worse than the baseline in-domain in any setting*; 0 steps (the baseline
itself) is always a candidate, so the chosen loop never loses to not adapting in-domain.
Ties go to fewer steps, then to the cheaper scope (head < film < last < all), since both cost
latency. With ``--write`` the choice becomes the card's default (the scope as the card's
``adaptation.frozen`` set, via ``Learner.with_scope``), with the whole grid and the command in
``inner_loop_tuning``. Test results measured with the old served loop no longer describe what
is served, so ``--write`` drops them: re-run ``innerloop evaluate --record``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from itertools import product
from typing import Any

from innerloop.checkpoint import build_card, save_checkpoint
from innerloop.learner import InnerDefaults, Learner
from innerloop.scopes import ADAPT_SCOPES
from innerloop_training.cli_evaluate import open_checkpoint
from innerloop_training.devices import add_device_argument, learner_to, resolve_device
from innerloop_training.evaluation import evaluate_learner, prototype_scores
from innerloop_training.sources import build_source
from innerloop_training.tasks import TaskBatch
from innerloop_training.trainer import display_command

VAL_SEED = 4242  # fixed validation episodes, distinct from the test seed
SHIFTED = {"omniglot": "quickdraw", "quickdraw": "omniglot"}
SCOPE_COST = {scope: rank for rank, scope in enumerate(("head", "film", "last", "adapters", "all"))}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("checkpoint", help="a .safetensors checkpoint")
    add("--steps", type=int, nargs="+", default=[1, 3, 5, 10, 20], help="inner steps to try")
    add("--lr", type=float, nargs="+", default=None, help="step sizes to try (default: around "
        "the checkpoint's own: x0.3, x1, x3, x10)")  # fmt: skip
    add(
        "--scopes",
        nargs="+",
        choices=ADAPT_SCOPES,
        default=None,
        help="adaptation scopes to try (default: the checkpoint's own)",
    )
    add(
        "--shift",
        default=None,
        help="dataset of the shifted domain whose validation classes also score each loop "
        "(default: quickdraw for an Omniglot model, omniglot for a Quick Draw one; 'none' "
        "for none)",
    )
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
    add(
        "--write",
        action="store_true",
        help="store the chosen (scope, steps, lr) as the card's default",
    )
    add(
        "--choose-among",
        type=int,
        default=0,
        metavar="N",
        help="with --write, turn the per-request choice on: requests that name no loop choose "
        "among 0 steps, the chosen loop and the N next-best loops of its scope by holding out "
        "support examples (default 0: off)",
    )
    add("--threads", type=int, default=None, help="torch CPU threads")
    add_device_argument(parser)


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
    regression = learner.task == "regression"
    shift = None if regression or args.shift == "none" else (args.shift or SHIFTED.get(dataset))
    base_lr = learner.inner.lr
    rates = [base_lr] if learner.learned_step_sizes else (args.lr or _around(base_lr))
    try:
        device = resolve_device(args.device)
        scoped = {s: learner.with_scope(s) for s in (args.scopes or [learner.scope])}
        domains = {"in-domain": _validation_batches(learner, config, dataset, args)}
        if shift:
            domains["shifted"] = _validation_batches(learner, config, shift, args)
    except (ValueError, FileNotFoundError) as error:
        print(f"innerloop tune: {error}")
        return 2
    scoped = {s: learner_to(m, device) for s, m in scoped.items()}
    baselines = {} if regression else _baselines(next(iter(scoped.values())), domains, device)
    for domain, settings in baselines.items():
        shown = ", ".join(f"{k} {100 * v:.2f}%" for k, v in settings.items())
        print(f"prototype baseline ({domain}): {shown}")
    grid: list[dict[str, Any]] = []
    for scope, steps, lr in _cells(list(scoped), args.steps, rates, base_lr):
        started = time.monotonic()
        model = scoped[scope]
        scores = {
            domain: {
                name: evaluate_learner(model, batches, steps=steps, lr=lr, device=device).mean
                for name, batches in settings.items()
            }
            for domain, settings in domains.items()
        }
        cell = _cell(scope, steps, lr, scores, baselines)
        grid.append(cell)
        print(f"{_shown(learner, cell)}  ({time.monotonic() - started:.0f} s)", flush=True)
    best = _best(learner, grid)
    print(
        f"best on {', '.join(domains['in-domain'])} (validation): steps {best['steps']}, "
        f"lr {best['lr']:.4g}, scope {best['scope']}"
    )
    if args.write:
        default = {"steps": learner.inner.steps, "lr": base_lr, "scope": learner.scope}
        tuning = {
            "settings": list(domains["in-domain"]),
            "shifted_dataset": shift,
            "prototype_baseline": baselines,
            "rule": "largest mean gain over the prototype baseline (in-domain and shifted), "
            "among loops not worse than it in-domain in any setting; ties: fewer steps, "
            "cheaper scope",
        }
        candidates = _candidates(grid, best, args.choose_among)
        if candidates:
            tuning["choice"] = "per request among 0 steps, the chosen loop and the next "
            f"{args.choose_among} by mean gain in its scope (innerloop.loop_choice)"
        _write(learner, card, args.checkpoint, best, default, grid, tuning, candidates)
    return 0


def _candidates(
    grid: list[dict[str, Any]], best: dict[str, Any], among: int
) -> tuple[tuple[int, float], ...]:
    """The loops of the per-request choice: the best cell's scope's ``among`` next-best cells
    (by mean gain) besides the best itself; 0 steps and the best are added on loading."""
    if among <= 0 or "mean_gain" not in best:  # regression models do not choose
        return ()
    same_scope = [
        c for c in grid if c["scope"] == best["scope"] and int(c["steps"]) > 0 and c is not best
    ]
    ranked = sorted(same_scope, key=lambda c: -float(c["mean_gain"]))
    return tuple((int(c["steps"]), float(c["lr"])) for c in ranked[:among]) or (
        (0, float(best["lr"])),
    )


def _around(lr: float) -> list[float]:
    return [round(lr * factor, 10) for factor in (0.3, 1.0, 3.0, 10.0)]


def _cells(
    scopes: list[str], steps: list[int], rates: list[float], base_lr: float
) -> list[tuple[str, int, float]]:
    """Every (scope, steps, lr); 0 steps adapts nothing, so it is one cell (the cheapest scope,
    the checkpoint's lr) whatever the scopes and rates."""
    cells = [(scope, n, lr) for scope, n, lr in product(scopes, steps, rates) if n > 0]
    if 0 in steps:
        cheapest = min(scopes, key=lambda s: SCOPE_COST[s])
        cells.insert(0, (cheapest, 0, base_lr))
    return cells


def _validation_batches(
    learner: Learner, config: dict[str, Any], dataset: str, args: argparse.Namespace
) -> dict[str, list[TaskBatch]]:
    regression = learner.task == "regression"
    shots_grid = args.shots or [int(config.get("shots", 1))]
    ways_grid = args.ways or [int(config.get("ways", 5))]
    settings = [(None, s) for s in shots_grid] if regression else product(ways_grid, shots_grid)
    out: dict[str, list[TaskBatch]] = {}
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
            path=config.get("path") if dataset == config.get("dataset") else None,
            image_size=learner.arch.image_size,
            split_scheme=config.get("split_scheme", "alphabets"),
            split_seed=config.get("split_seed", 0),
        )
        key = f"{shots}-shot regression" if regression else f"{dataset} {ways}-way {shots}-shot"
        if dataset == config.get("dataset"):
            key = key.removeprefix(f"{dataset} ")
        out[key] = source.fixed(args.episodes, seed=VAL_SEED, chunk=25)
    return out


def _baselines(
    learner: Learner, domains: dict[str, dict[str, list[TaskBatch]]], device: Any
) -> dict[str, dict[str, float]]:
    """Nearest-prototype accuracy on the un-adapted features, per domain and setting."""
    out: dict[str, dict[str, float]] = {}
    for domain, settings in domains.items():
        out[domain] = {}
        for name, batches in settings.items():
            scores = [s for b in batches for s in prototype_scores(learner, b.to(device))]
            out[domain][name] = sum(scores) / len(scores)
    return out


def _cell(
    scope: str,
    steps: int,
    lr: float,
    scores: dict[str, dict[str, float]],
    baselines: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """One grid cell; ``score`` is the in-domain mean (what earlier versions recorded)."""
    inside = scores["in-domain"]
    cell: dict[str, Any] = {
        "scope": scope,
        "steps": steps,
        "lr": lr,
        "score": sum(inside.values()) / len(inside),
        "scores": scores,
    }
    if baselines:
        gains = {
            domain: {k: v - baselines[domain][k] for k, v in settings.items()}
            for domain, settings in scores.items()
        }
        cell["gains"] = gains
        cell["worst_in_domain_gain"] = min(gains["in-domain"].values())
        per_domain = [sum(g.values()) / len(g) for g in gains.values()]
        cell["mean_gain"] = sum(per_domain) / len(per_domain)
        if "shifted" in scores:
            shifted = scores["shifted"]
            cell["shifted_score"] = sum(shifted.values()) / len(shifted)
    return cell


def _shown(learner: Learner, cell: dict[str, Any]) -> str:
    head = f"scope {cell['scope']:<4}  steps {cell['steps']:>3}  lr {cell['lr']:<8.4g}"
    score = float(cell["score"])
    if learner.task == "regression":
        return f"{head} mse {score:.4f}"
    text = f"{head} accuracy {100 * score:.2f}%"
    if "shifted_score" in cell:
        text += f"  shifted {100 * float(cell['shifted_score']):.2f}%"
    if "mean_gain" in cell:
        text += (
            f"  gain: worst in-domain {100 * cell['worst_in_domain_gain']:+.2f}, "
            f"mean {100 * cell['mean_gain']:+.2f}"
        )
    return text


def _best(learner: Learner, grid: list[dict[str, Any]]) -> dict[str, Any]:
    """Regression: the lowest MSE. Classification: the largest mean gain among the loops not
    worse than the prototype baseline in-domain (all loops if none is: a head that starts at
    chance). Equal to 4 decimals: fewer steps, then the cheaper scope, then the smaller lr."""

    def rounded(value: float) -> float:
        return round(value, 4) if math.isfinite(value) else -math.inf

    def cost(cell: dict[str, Any]) -> tuple[int, int, float]:
        return (int(cell["steps"]), SCOPE_COST[str(cell["scope"])], float(cell["lr"]))

    if learner.task == "regression":
        return min(grid, key=lambda c: (-rounded(-float(c["score"])), *cost(c)))
    safe = [c for c in grid if rounded(float(c["worst_in_domain_gain"])) >= 0.0] or grid
    return min(safe, key=lambda c: (-rounded(float(c["mean_gain"])), *cost(c)))


def _write(
    learner: Learner,
    card: dict[str, Any],
    path: str,
    best: dict[str, Any],
    default: dict[str, Any],
    grid: list[dict[str, Any]],
    tuning: dict[str, Any],
    candidates: tuple[tuple[int, float], ...] = (),
) -> None:
    chosen = learner.with_scope(str(best["scope"]))
    chosen.step_sizes = chosen.scaled_step_sizes(float(best["lr"]))
    chosen.inner = InnerDefaults(
        int(best["steps"]), float(best["lr"]), learner.inner.optimizer, candidates=candidates
    )
    card["inner_loop"] = build_card(chosen, str(card.get("name", "model")))["inner_loop"]
    card["adaptation"] = build_card(chosen, str(card.get("name", "model")))["adaptation"]
    card["inner_loop_tuning"] = {
        "command": display_command(sys.argv),
        "split": "val",
        **tuning,
        "seed": VAL_SEED,
        "metric": "mse" if learner.task == "regression" else "accuracy",
        "trained_with": default,
        "grid": grid,
    }
    evaluation = card.get("evaluation", {})
    served_before = (default["steps"], default["lr"], default["scope"])
    served_now = (chosen.inner.steps, chosen.inner.lr, chosen.scope)
    stale = [
        key
        for key, result in evaluation.items()
        if key != "validation"
        and served_now != served_before
        and (result.get("steps"), result.get("lr"), result.get("scope", default["scope"]))
        == served_before
    ]
    for key in stale:
        del evaluation[key]
    save_checkpoint(chosen, path, card)
    print(
        f"wrote steps {chosen.inner.steps}, lr {chosen.inner.lr:.4g}, scope {chosen.scope} "
        f"into {path}"
    )
    if stale:
        print(f"dropped {len(stale)} results measured with the old defaults: re-run evaluate")
