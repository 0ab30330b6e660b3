"""Compare meta-learners on Omniglot with alphabets as tasks (the Leap / WarpGrad protocol).

Each alphabet is one 20-way task with held-out drawings. Every method (leap, warp, warp-leap,
reptile, fomaml, maml, ft, no) pre-trains on k background alphabets for each k given, then
adapts for --test-steps steps on held-out alphabets from images_evaluation (never used for
pre-training). Writes OUT_DIR/results.json (curves, per-alphabet accuracies, settings, timings),
OUT_DIR/results.md (final accuracy and area under the adaptation curve per method and k),
OUT_DIR/accuracy_vs_alphabets.png and, unless --no-checkpoints, a checkpoint per method and k.

Defaults are the papers' sizes (hours to days on a CPU). --quick picks small settings that
finish in minutes on 2 CPU cores; any flag given explicitly overrides the preset.

Example: innerloop compare --quick --threads 1 --out-dir runs/compare-quick
         innerloop compare --pretrain-alphabets 1 3 5 10 15 20 25 --out-dir runs/compare
"""

from __future__ import annotations

import argparse
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch

from innerloop.adaptation import OPTIMIZERS
from innerloop.models import WARP_KINDS
from innerloop_training.alphabet_protocol import (
    METHODS,
    QUICK,
    Augmentation,
    ProtocolConfig,
    run_comparison,
)
from innerloop_training.cli_train import add_warpgrad_arguments
from innerloop_training.devices import add_device_argument, resolve_device

DEFAULTS = ProtocolConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--quick",
        action="store_true",
        help="small preset: k in 1 5 15, 5 test alphabets, 16 filters, 20 meta-steps of 4 "
        "tasks, 10 inner / 20 test steps",
    )
    add(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=None,
        help=f"methods to compare (default: all: {' '.join(METHODS)})",
    )
    add(
        "--pretrain-alphabets",
        nargs="+",
        type=int,
        default=None,
        metavar="K",
        help="numbers of background alphabets to pre-train on (default 1 3 5 10 15 20 25)",
    )
    add(
        "--test-alphabets",
        type=int,
        default=None,
        help="held-out images_evaluation alphabets to test on (default 10)",
    )
    add("--characters", type=int, default=None, help="characters (ways) per alphabet (20)")
    add(
        "--holdout",
        type=int,
        default=None,
        help="drawings per character held out for validation / testing (5 of 20)",
    )
    add(
        "--shots",
        type=int,
        default=None,
        help="training drawings per character in a pre-training task (default 15 = all)",
    )
    add(
        "--queries",
        type=int,
        default=None,
        help="held-out drawings per character in a pre-training query set (default 5)",
    )
    add(
        "--test-shots",
        type=int,
        default=None,
        help="training drawings per character used to adapt at test (default: all)",
    )
    add("--image-size", type=int, default=None, help="input side in pixels (28)")
    add("--filters", type=int, default=None, help="Conv4 filters per layer (64)")
    add(
        "--warp",
        choices=[w for w in WARP_KINDS if w != "none"],
        default=None,
        help="warp-layers of warp and warp-leap (default conv)",
    )
    add(
        "--head",
        choices=("proto", "zero"),
        default=None,
        help="per-task head (zero: the papers' linear head)",
    )
    add("--inner-steps", type=int, default=None, help="pre-training inner steps (100)")
    add(
        "--maml-steps",
        type=int,
        default=None,
        help="second-order MAML's pre-training inner steps, bounded for memory (5)",
    )
    add("--test-steps", type=int, default=None, help="adaptation steps at test (100)")
    add("--inner-lr", type=float, default=None, help="inner step size, for every method (0.1)")
    add("--inner-optimizer", choices=OPTIMIZERS, default=None, help="inner optimiser (sgd)")
    add("--meta-steps", type=int, default=None, help="outer updates per method and k (1000)")
    add("--meta-batch", type=int, default=None, help="tasks per outer update (20)")
    add(
        "--outer-optimizer",
        choices=("adam", "sgd"),
        default=None,
        help="outer optimiser for every method (default: each method's own: sgd for leap, "
        "warp, warp-leap, reptile, ft; adam for maml, fomaml)",
    )
    add(
        "--outer-lr",
        type=float,
        default=None,
        help="outer step size for every method (default: 0.1 for the sgd ones, 1e-3 for adam)",
    )
    add(
        "--grad-clip",
        type=float,
        default=None,
        help="clip the meta-gradient's global norm, 0 = off (default: off for leap, warp, "
        "warp-leap, reptile, ft; 10 for maml, fomaml)",
    )
    add_warpgrad_arguments(parser, none_default=True)
    add(
        "--rotation",
        type=float,
        default=None,
        help="augmentation: rotation drawn from [0, ROTATION) degrees (360; 0 = none)",
    )
    add(
        "--translate",
        type=float,
        default=None,
        help="augmentation: shift up to this fraction of the side (0.2)",
    )
    add(
        "--scale",
        nargs=2,
        type=float,
        default=None,
        metavar=("LOW", "HIGH"),
        help="augmentation: scale range (0.8 1.2)",
    )
    add(
        "--curve-every",
        type=int,
        default=None,
        help="record test accuracy every this many adaptation steps (1)",
    )
    add("--seed", type=int, default=None, help="seed of splits, init and sampling (0)")
    add("--data-root", default=None, help="data folder (default: $INNERLOOP_DATA or shared)")
    add("--out-dir", default="runs/compare", help="where results, figure, checkpoints go")
    add(
        "--no-checkpoints",
        dest="checkpoints",
        action="store_false",
        help="do not write a checkpoint per method and k",
    )
    add("--threads", type=int, default=None, help="torch CPU threads")
    add_device_argument(parser)


def config_from_args(args: argparse.Namespace) -> ProtocolConfig:
    """Preset (papers' sizes, or --quick), then every flag that was given explicitly."""
    config = ProtocolConfig(**QUICK) if args.quick else ProtocolConfig()  # type: ignore[arg-type]
    names = {f.name for f in fields(ProtocolConfig)}
    given: dict[str, Any] = {k: v for k, v in vars(args).items() if k in names and v is not None}
    for key in ("pretrain_alphabets", "methods"):
        if key in given:
            given[key] = tuple(given[key])
    augmentation = config.augmentation
    if args.rotation is not None:
        augmentation = replace(augmentation, rotation=args.rotation)
    if args.translate is not None:
        augmentation = replace(augmentation, translate=args.translate)
    if args.scale is not None:
        augmentation = replace(augmentation, scale=(args.scale[0], args.scale[1]))
    return replace(config, augmentation=Augmentation(**vars(augmentation)), **given)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"innerloop compare: {error}")
        return 2
    out_dir = Path(args.out_dir)
    started = time.monotonic()
    try:
        device = resolve_device(args.device)
        report = run_comparison(
            config, out_dir, args.data_root, save_checkpoints=args.checkpoints, device=device
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"innerloop compare: {error}")
        return 2
    minutes = (time.monotonic() - started) / 60
    print((out_dir / "results.md").read_text())
    print(
        f"wrote {out_dir / 'results.json'}, {out_dir / 'results.md'}, "
        f"{out_dir / 'accuracy_vs_alphabets.png'} in {minutes:.1f} min "
        f"({len(report['results'])} methods)"
    )
    return 0
