"""Evaluate a checkpoint on fixed, seeded episodes of a held-out split.

Prints mean accuracy (classification) or MSE (regression) with a 95% confidence interval. The
episodes depend only on --dataset, --split, --ways, --shots, --queries, --episodes and --seed,
so every checkpoint and every method is compared on the same tasks. Adaptation goes through
the same call the server makes, so this is the accuracy users get over HTTP.

Example: innerloop evaluate checkpoints/omniglot.safetensors --dataset omniglot --ways 20 \\
         --shots 1 --episodes 600

Several --ways and --shots values evaluate every combination (one line, or one JSON line, each);
--plot draws accuracy against ways, one line per shots value, with 95% confidence bands.

Every classification result also carries, on the same episodes, the nearest-prototype baseline
on the un-adapted features (``prototype_accuracy``) and the loop's ``gain`` over it with a
paired 95% interval (``gain_ci95``): the inner loop must pay for itself. Any checkpoint runs on
any task source (``--dataset quickdraw`` for the Omniglot model is the domain-shift row);
``--within-alphabet`` draws every class of an Omniglot episode from one test alphabet (Lake's
harder protocol); ``--scope`` evaluates the checkpoint adapting only part of itself.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from innerloop.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from innerloop.learner import Learner
from innerloop.scopes import ADAPT_SCOPES
from innerloop_training.data.registry import DATASETS, OMNIGLOT_SPLIT_SCHEMES
from innerloop_training.devices import add_device_argument, learner_to, resolve_device
from innerloop_training.evaluation import EvaluationResult, evaluate_learner
from innerloop_training.sources import build_source

EVAL_SEED = 2024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("checkpoint", help="a .safetensors checkpoint written by innerloop train")
    add(
        "--dataset",
        choices=DATASETS,
        default=None,
        help="task source (default: the dataset the checkpoint was trained on)",
    )
    add(
        "--split",
        choices=("test", "val", "train"),
        default="test",
        help="class split to draw episodes from (Omniglot test = images_evaluation)",
    )
    add(
        "--data-root", default=None, help="data folder (default: $INNERLOOP_DATA or ../shared/data)"
    )
    add(
        "--path",
        default=None,
        help="for --dataset folder: a folder of class folders (default: the card's, when the "
        "checkpoint was trained on a folder)",
    )
    add(
        "--split-scheme",
        choices=OMNIGLOT_SPLIT_SCHEMES,
        default=None,
        help="Omniglot class split (default: the checkpoint's)",
    )
    add("--split-seed", type=int, default=None, help="class split seed (default: the checkpoint's)")
    add(
        "--ways",
        type=int,
        nargs="+",
        default=[5],
        help="classes per episode (N); several values evaluate each",
    )
    add(
        "--shots",
        type=int,
        nargs="+",
        default=[1],
        help="support examples per class (K) or support points; several values evaluate each",
    )
    add(
        "--queries",
        type=int,
        default=None,
        help="queries per class (default 15; regression: 100 query points)",
    )
    add("--unbalanced", action="store_true", help="episodes with 1..K shots per class")
    add(
        "--within-alphabet",
        action="store_true",
        help="Omniglot: all classes of an episode from one alphabet (Lake's within-alphabet "
        "protocol); recorded as KEY/within-alphabet",
    )
    add(
        "--scope",
        choices=ADAPT_SCOPES,
        default=None,
        help="adapt only this part of the model (default: the checkpoint's own scope); "
        "recorded as KEY/scope-SCOPE when it differs from the card's",
    )
    add("--episodes", type=int, default=600, help="number of fixed episodes")
    add("--seed", type=int, default=EVAL_SEED, help="seed of the fixed episodes")
    add("--steps", type=int, default=None, help="inner steps (default: the checkpoint's)")
    add("--lr", type=float, default=None, help="inner step size (default: the checkpoint's)")
    add("--chunk", type=int, default=25, help="episodes adapted together in one vmapped call")
    add("--json", action="store_true", help="print one JSON object instead of a sentence")
    add(
        "--record",
        action="store_true",
        help="also store the result in the checkpoint card's evaluation section",
    )
    add(
        "--untrained",
        action="store_true",
        help="evaluate the no-meta-training baseline instead: the same architecture, head and "
        "inner loop from a random init (seeded as the checkpoint's run); --record stores it "
        "as KEY/untrained, beside the checkpoint's own result",
    )
    add("--threads", type=int, default=None, help="torch CPU threads")
    add_device_argument(parser)
    add(
        "--plot",
        default=None,
        metavar="PNG",
        help="draw accuracy (or MSE) against ways, one line per shots value, into this file",
    )


def open_checkpoint(args: argparse.Namespace, command: str) -> tuple[Learner, dict[str, Any]]:
    """Apply ``--threads`` and load ``args.checkpoint``; a bad file becomes a one-line message
    (raised as ``SystemExit(2)``), not a stack trace."""
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return load_checkpoint(args.checkpoint)
    except CheckpointError as error:
        print(f"innerloop {command}: {error}")
        raise SystemExit(2) from error


def run(args: argparse.Namespace) -> int:
    learner, card = open_checkpoint(args, "evaluate")
    dataset = args.dataset or card.get("training", {}).get("config", {}).get("dataset")
    if dataset is None:
        print("innerloop evaluate: the checkpoint does not say its dataset; pass --dataset")
        return 2
    regression = learner.task == "regression"
    try:
        device = resolve_device(args.device)
        evaluated = untrained_twin(learner, card) if args.untrained else learner
        if args.scope is not None:
            evaluated = evaluated.with_scope(args.scope)
    except ValueError as error:
        print(f"innerloop evaluate: {error}")
        return 2
    other_scope = args.scope is not None and args.scope != learner.scope
    evaluated = learner_to(evaluated, device)
    grid = (
        [(None, shots) for shots in args.shots]
        if regression
        else [(ways, shots) for ways in args.ways for shots in args.shots]
    )
    results: list[EvaluationResult] = []
    for ways, shots in grid:
        try:
            result = _evaluate_one(evaluated, card, dataset, args, ways, shots, device)
        except (ValueError, FileNotFoundError) as error:
            print(f"innerloop evaluate: {error}")
            return 2
        results.append(result)
        if args.json:
            print(json.dumps(result.to_dict()), flush=True)
        else:
            what = "regression" if regression else f"{ways}-way {shots}-shot"
            what += " within-alphabet" if args.within_alphabet else ""
            what += f" (scope {evaluated.scope})" if other_scope else ""
            what += " (untrained baseline)" if args.untrained else ""
            print(f"{card['name']} on {dataset} {args.split}, {what}: {result.summary()}")
        if args.record:
            key = result_key(regression, ways, shots, args.within_alphabet, other_scope, args)
            try:
                record_result(learner, args.checkpoint, f"{dataset}/{args.split}/{key}", result)
            except CheckpointError as error:
                print(f"innerloop evaluate: not recorded: {error}")
                return 2
    if args.plot:
        from innerloop_training.plots import plot_ways_and_shots

        title = f"{card['name']}: {dataset} {args.split} split, {args.episodes} episodes each"
        print(f"wrote {plot_ways_and_shots(results, Path(args.plot), title)}")
    return 0


def result_key(
    regression: bool,
    ways: int | None,
    shots: int,
    within_alphabet: bool,
    other_scope: bool,
    args: argparse.Namespace,
) -> str:
    """The card key under ``DATASET/SPLIT/``: setting, then protocol and variant suffixes."""
    key = "regression" if regression else f"{ways}way{shots}shot"
    key += "/within-alphabet" if within_alphabet else ""
    key += f"/scope-{args.scope}" if other_scope else ""
    return key + ("/untrained" if args.untrained else "")


def record_result(learner: Learner, path: str, key: str, result: EvaluationResult) -> None:
    """Add one result to the card as it is on disk *now*, not as it was when we loaded it.

    Evaluations take minutes, and two of them (or a tune) may run on one checkpoint at once;
    re-reading the card keeps every result instead of the last writer's. If the tensors changed
    meanwhile (the file was retrained), the result describes another model: refuse it.
    """
    current, card = load_checkpoint(path)
    same = current.params.keys() == learner.params.keys() and all(
        torch.equal(current.params[k], learner.params[k]) for k in learner.params
    )
    if not same:
        raise CheckpointError(f"{path} changed while it was being evaluated")
    card.setdefault("evaluation", {})[key] = result.to_dict()
    save_checkpoint(current, path, card)


def untrained_twin(learner: Learner, card: dict[str, Any]) -> Learner:
    """The checkpoint's model before any meta-training: what meta-learning is measured against.

    Same architecture, head, inner-loop defaults and ``max_ways``; the init is the one its
    training run started from (its seed), so the baseline is reproducible from the card alone.
    """
    seed = int(card.get("training", {}).get("config", {}).get("seed", 0))
    return Learner.create(
        learner.arch, learner.head, learner.inner, max_ways=learner.max_ways, seed=seed
    )


def _evaluate_one(
    learner: Learner,
    card: dict[str, Any],
    dataset: str,
    args: argparse.Namespace,
    ways: int | None,
    shots: int,
    device: torch.device,
) -> EvaluationResult:
    trained = card.get("training", {}).get("config", {})
    regression = ways is None
    queries = args.queries if args.queries is not None else (100 if regression else 15)
    source = build_source(
        dataset,
        args.split,
        ways=ways or 1,
        shots=shots,
        queries=queries,
        seed=args.seed,
        data_root=args.data_root,
        path=args.path or _card_path(trained, dataset),
        image_size=learner.arch.image_size,
        unbalanced=args.unbalanced,
        split_scheme=args.split_scheme or trained.get("split_scheme", "alphabets"),
        split_seed=args.split_seed if args.split_seed is not None else trained.get("split_seed", 0),
        within_alphabet=args.within_alphabet,
    )
    batches = source.fixed(args.episodes, seed=args.seed, chunk=args.chunk)
    started = time.monotonic()
    result = evaluate_learner(
        learner,
        batches,
        steps=args.steps,
        lr=args.lr,
        progress=not args.json,
        baseline=True,
        device=device,
    )
    result.settings = {
        "dataset": dataset,
        "split": args.split,
        "ways": ways,
        "shots": shots,
        "queries": queries,
        "unbalanced": args.unbalanced,
        "seed": args.seed,
        "steps": args.steps if args.steps is not None else learner.inner.steps,
        "lr": args.lr if args.lr is not None else learner.inner.lr,
        "scope": learner.scope,
        # the card's candidates when each episode chose its loop (no --steps, no --lr)
        "choice": [list(c) for c in learner.inner.candidates]
        if learner.choice_on and args.steps is None and args.lr is None
        else None,
        "seconds": round(time.monotonic() - started, 2),
        "device": device.type,
    }
    if args.within_alphabet:
        result.settings["within"] = "alphabet"
    return result


def _card_path(trained: dict[str, Any], dataset: str) -> str | None:
    """A folder model's own folder, so ``evaluate`` needs no ``--path`` for it."""
    if dataset == "folder" and trained.get("dataset") == "folder":
        path = trained.get("path")
        return str(path) if path else None
    return None
