"""Meta-train a learner and write a self-describing checkpoint.

Shows a progress bar with the current losses, appends one JSON line per meta-step to
RUN_DIR/metrics.jsonl, saves a resumable state every --checkpoint-every steps, and draws
RUN_DIR/training_curve.png (plus RUN_DIR/adaptation.png for sine and logistic tasks).

Example (under a minute on a CPU; writes models/my-sine.safetensors and runs/my-sine/):
  innerloop train --algorithm maml --dataset sine --shots 10 --meta-batch 25 \\
      --meta-steps 1000 --out models/my-sine.safetensors

Your checkpoints go to models/ (git-ignored) unless --out says otherwise; checkpoints/ holds the
shipped ones. Serve yours beside them with `innerloop serve --add models/`.
"""

from __future__ import annotations

import argparse
from dataclasses import fields

import torch

from innerloop.adaptation import OPTIMIZERS
from innerloop.learner import HEADS
from innerloop.models import WARP_KINDS
from innerloop.scopes import ADAPT_SCOPES
from innerloop_training.algorithms import ALGORITHMS, OUTER_OPTIMIZERS
from innerloop_training.data.registry import DATASETS, OMNIGLOT_SPLIT_SCHEMES
from innerloop_training.devices import add_device_argument
from innerloop_training.trainer import STEP_SIZE_LEARNING, TrainConfig, Trainer
from innerloop_training.warpgrad import BUFFERS, OBJECTIVES, WarpGradConfig

DEFAULTS = TrainConfig()
USER_MODELS = "models"  # the user's checkpoints (git-ignored); checkpoints/ is the shipped ones


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--algorithm",
        choices=ALGORITHMS,
        default=DEFAULTS.algorithm,
        help="meta-learner: second-order MAML, first-order MAML, Meta-SGD, Reptile, Leap, "
        "WarpGrad (warp), WarpGrad + Leap init (warp-leap), or the baseline no (no "
        "meta-training: the random init); ft (multi-headed fine-tuning) needs tasks with an "
        "identity and runs in `innerloop compare` only",
    )
    add("--dataset", choices=DATASETS, default=DEFAULTS.dataset, help="task source")
    add(
        "--data-root",
        default=None,
        help="data folder (default: $INNERLOOP_DATA or ../shared/data next to the repo)",
    )
    add("--path", default=None, help="for --dataset folder: a folder of class folders of images")
    add(
        "--split-scheme",
        choices=OMNIGLOT_SPLIT_SCHEMES,
        default=DEFAULTS.split_scheme,
        help="Omniglot class split: Lake's alphabets (test = images_evaluation) or Vinyals'",
    )
    add(
        "--split-seed",
        type=int,
        default=DEFAULTS.split_seed,
        help="seed of the train/val/test class split (Quick Draw, folder, val alphabets)",
    )
    add("--ways", type=int, default=DEFAULTS.ways, help="classes per training episode (N)")
    add(
        "--shots",
        type=int,
        default=DEFAULTS.shots,
        help="support examples per class (K); for regression, support points per task",
    )
    add(
        "--queries",
        type=int,
        default=DEFAULTS.queries,
        help="query examples per class (Q); for regression, query points per task",
    )
    add("--unbalanced", action="store_true", help="train on support sets with 1..K shots per class")
    add(
        "--no-rotations",
        dest="rotations",
        action="store_false",
        help="do not add 90/180/270-degree rotations as extra training classes",
    )
    add("--image-size", type=int, default=DEFAULTS.image_size, help="input side in pixels")
    add("--filters", type=int, default=DEFAULTS.filters, help="Conv4 filters per layer")
    add(
        "--warp",
        choices=WARP_KINDS,
        default=None,
        help="WarpGrad warp-layers after every adaptable block, held fixed by the inner loop: "
        "linear (1x1 conv), conv (3x3 conv), residual (conv-norm-relu-conv + skip); default "
        "conv (the papers' Omniglot setting; linear for sine/logistic) for warp and warp-leap, "
        "none otherwise",
    )
    add(
        "--head",
        choices=[h for h in HEADS if h != "none"],
        default=DEFAULTS.head,
        help="per-task classification head: prototype-initialised or zero shared vector",
    )
    add(
        "--head-scale",
        type=float,
        default=DEFAULTS.head_scale,
        help="proto head: meta-learn a logit scale on its distances, starting at this value "
        "(so a 1-shot support set is not fit before the inner loop starts); default: none",
    )
    add(
        "--multi-step-loss",
        type=int,
        default=DEFAULTS.multi_step_loss,
        metavar="N",
        help="MAML++'s multi-step loss: the query loss after every inner step, weighted, "
        "annealed to the last step's over the first N meta-steps (default 0: last step only)",
    )
    add(
        "--augment",
        action="store_true",
        help="distort every meta-training drawing a little (shifts, scales, small rotations, "
        "thicker strokes; innerloop_training.augment); validation never is",
    )
    add(
        "--max-ways",
        type=int,
        default=DEFAULTS.max_ways,
        help="largest number of classes the checkpoint accepts at adaptation time",
    )
    add("--inner-steps", type=int, default=DEFAULTS.inner_steps, help="inner-loop steps")
    add(
        "--inner-lr",
        type=float,
        default=DEFAULTS.inner_lr,
        help="inner step size (Meta-SGD: initial value of the learned step sizes)",
    )
    add(
        "--inner-optimizer",
        choices=OPTIMIZERS,
        default=DEFAULTS.inner_optimizer,
        help="inner-loop optimiser",
    )
    add(
        "--first-order",
        action="store_true",
        help="detach inner gradients (first-order Meta-SGD; implied by fomaml and reptile)",
    )
    add(
        "--learn-step-sizes",
        choices=STEP_SIZE_LEARNING,
        default=None,
        help="step sizes the outer loop learns: none, tensor (one per adapted tensor: MAML++'s "
        "per-layer step sizes) or parameter (Meta-SGD); default parameter for metasgd, else none",
    )
    add(
        "--first-order-warmup",
        type=int,
        default=DEFAULTS.first_order_warmup,
        help="meta-steps to run first-order before switching to second order",
    )
    add("--meta-batch", type=int, default=DEFAULTS.meta_batch, help="tasks per outer update")
    add("--meta-steps", type=int, default=DEFAULTS.meta_steps, help="outer updates in all")
    add(
        "--outer-optimizer",
        choices=OUTER_OPTIMIZERS,
        default=None,
        help="outer (meta) optimiser (default: the method's own: sgd for reptile, leap, warp, "
        "warp-leap as in their papers, adam otherwise)",
    )
    add(
        "--outer-lr",
        type=float,
        default=None,
        help="outer step size; for warp-leap the init's (default: 0.1 for reptile, leap, "
        "warp, warp-leap; 1e-3 otherwise)",
    )
    add(
        "--grad-clip",
        type=float,
        default=None,
        help="clip the meta-gradient's global norm at this value, 0 = off (default: off for "
        "reptile, leap, warp, warp-leap; 10 otherwise)",
    )
    add_warpgrad_arguments(parser, None)
    add("--seed", type=int, default=DEFAULTS.seed, help="seed of init and task sampling")
    add(
        "--eval-every",
        type=int,
        default=DEFAULTS.eval_every,
        help="validate on fixed episodes every this many meta-steps",
    )
    add(
        "--eval-episodes",
        type=int,
        default=DEFAULTS.eval_episodes,
        help="fixed validation episodes",
    )
    add(
        "--checkpoint-every",
        type=int,
        default=DEFAULTS.checkpoint_every,
        help="save a resumable state every this many meta-steps",
    )
    add(
        "--max-minutes",
        type=float,
        default=None,
        help="stop (and save) after this many minutes of wall-clock time",
    )
    add(
        "--out",
        default=None,
        help=f"checkpoint to write (default: {USER_MODELS}/DATASET-ALGORITHM.safetensors)",
    )
    add("--run-dir", default=None, help="logs, plots and resume state (default: runs/NAME)")
    add("--resume", action="store_true", help="continue from RUN_DIR/resume.safetensors")
    add(
        "--init",
        default=None,
        help="start from this checkpoint's meta-parameters (same model; fresh outer optimiser); "
        "its training record is kept in the new card",
    )
    add("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    add_device_argument(parser)
    add(
        "--adapt",
        choices=ADAPT_SCOPES,
        default=DEFAULTS.adapt,
        help="what the inner loop adapts, in training and when served: everything, the "
        "normalisation affine + head (film), the last block + head, or the head only",
    )


def all_or_int(text: str) -> int:
    """``all`` (or ``0``) -> 0, the config's "all points" / "one pass" value."""
    if text.strip().lower() in ("all", "epoch", "pass"):
        return 0
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a count >= 0 or 'all', got {text!r}")
    return value


def add_warpgrad_arguments(parser: argparse.ArgumentParser, none_default: bool | None) -> None:
    """WarpGrad's knobs (Algorithm 2), shared by ``train`` and ``compare``.

    ``none_default``: leave every default None (``compare`` fills them from its preset)."""
    config = WarpGradConfig()

    def default(value: object) -> object:
        return None if none_default else value

    add = parser.add_argument
    add(
        "--warp-buffer",
        choices=BUFFERS,
        default=default(config.buffer),
        help="WarpGrad trajectory points: batch (this meta-batch's, cleared after the "
        "meta-update: Algorithm 2 and the reference) or fifo (kept across meta-steps)",
    )
    add(
        "--warp-buffer-size",
        type=int,
        default=default(config.buffer_size),
        help=f"fifo buffer: points kept ({config.buffer_size})",
    )
    add(
        "--warp-store-every",
        type=int,
        default=default(config.store_every),
        help=f"store the task parameters every this many inner steps ({config.store_every})",
    )
    add(
        "--warp-batch",
        type=all_or_int,
        default=default(config.warp_batch),
        help="points per warp-layer update, or 'all' (reference: 1)",
    )
    add(
        "--warp-updates",
        type=all_or_int,
        default=default(config.warp_updates),
        help="warp-layer updates per meta-step, or 'all' for one pass over the points (all)",
    )
    add(
        "--warp-objective",
        choices=OBJECTIVES,
        default=default(config.objective),
        help="warp meta-objective: query loss one inner step past the point (step, the "
        "paper's) or at the point (loss, cheaper)",
    )
    add(
        "--warp-lr",
        type=float,
        default=None,
        help="outer step size of the warp-layers (default: the --outer-lr)",
    )
    add(
        "--warp-leap-loss",
        action="store_true",
        default=None if none_default else False,
        help="warp-leap: meta-learn the init with full Leap (loss dimension) instead of the "
        "reference's simplified Leap (unit-length parameter steps)",
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)} - {"command"}
    given = {k: v for k, v in vars(args).items() if k in names}
    if given.get("out") is None:
        given["out"] = f"{USER_MODELS}/{args.dataset}-{args.algorithm}.safetensors"
    return TrainConfig(**given)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    config = config_from_args(args)
    try:
        trainer = Trainer(config)
    except (ValueError, FileNotFoundError) as error:
        print(f"innerloop train: {error}")
        return 2
    path = trainer.run()
    from innerloop_training.plots import plot_run

    figures = plot_run(trainer)
    print(f"wrote {path}")
    for figure in figures:
        print(f"wrote {figure}")
    return 0
