"""Alphabet-as-task Omniglot: the multi-shot protocol of the Leap and WarpGrad papers.

Each Omniglot *alphabet* is one task: classify up to ``characters`` (20) of its characters, with
the first ``holdout`` drawings (of 20) of every character held out. Methods pre-train on ``k``
background alphabets and are tested on held-out alphabets by adapting for ``test_steps`` steps
(100 in the papers) on the training drawings and measuring accuracy on the held-out ones; the
figure of interest is test accuracy against ``k``, one line per method. This is a long-horizon
problem (many steps, many examples per class) where trajectory-based meta-learners (Leap,
WarpGrad) are meant to shine and few-shot methods (MAML) struggle.

Our data rules, which differ from the papers' (they shuffle all 50 alphabets together):

- pre-training alphabets are drawn from ``images_background`` only, nested (the first ``k`` of
  one seeded permutation, so a larger ``k`` only adds alphabets);
- test alphabets come from ``images_evaluation`` only (a seeded subset), so no test character
  or drawer is ever seen in pre-training, and ``images_evaluation`` is never used to pre-train:
  :func:`check_split` raises if a pre-training class is not a background class.

Pre-training tasks draw ``shots`` training drawings per character as the support set and
``queries`` held-out drawings as the query set (what MAML/FOMAML's outer loss and WarpGrad's
meta-objective see), every image through a random affine transform (the papers' augmentation:
rotation up to ``rotation`` degrees, translation up to ``translate`` of the side, scale in
``scale``). Labels are permuted per sampled task, except for ``ft``, which trains one head per
alphabet and so gets every alphabet's own fixed labels (``permute_labels=False``); every batch
carries the alphabets' indices as ``task_ids``. Alphabets with fewer characters than
``characters`` are padded (``class_mask``; padded support rows have weight 0, padded query rows
repeat real ones), so every task of a batch has the same shapes. Test tasks are not augmented.

Every method starts from the same random init (warp-layers are identity at init, see
:mod:`innerloop.models`), pre-trains with the same budget (``meta_steps`` x ``meta_batch`` tasks)
and is tested with the same inner loop (SGD/Adam, ``inner_lr``, ``test_steps``), through
:func:`innerloop.adaptation.adapt`. Second-order MAML differentiates through its inner loop, so
its pre-training inner loop is capped at ``maml_steps`` to bound memory; all others pre-train
with ``inner_steps``.

Each method's outer optimiser is its own (:func:`~innerloop_training.algorithms.default_outer`:
SGD 0.1 without clipping for leap, warp, warp-leap, reptile and ft, as in the reference code)
unless ``outer_optimizer`` / ``outer_lr`` / ``grad_clip`` are given; what each method ran with
is written to the report (``outer``) and its checkpoint card.

Reported per (method, k): final test accuracy (after ``test_steps`` steps) and the normalised
area under the test-accuracy-vs-step curve (trapezoid rule over steps ``0..test_steps`` divided
by ``test_steps``, so 1.0 is perfect from the first step), averaged over test alphabets, with
two 95% intervals for the final accuracy: ``ci95_queries`` (Wilson score interval over all
held-out drawings pooled, treating them as independent trials: the tighter one) and
``ci95_alphabets`` (Student t over the per-alphabet accuracies: alphabets as the unit, wider
with few test alphabets, the honest one when alphabets differ in difficulty).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from innerloop.adaptation import InnerLoop, Params, adapt
from innerloop.checkpoint import build_card, save_checkpoint
from innerloop.learner import InnerDefaults, Learner
from innerloop.models import ArchConfig
from innerloop_training.algorithms import (
    MetaAlgorithm,
    OuterConfig,
    build_algorithm,
    resolve_outer,
)
from innerloop_training.algorithms.warpgrad import WarpGradConfig
from innerloop_training.data.labelled_images import LabelledImages
from innerloop_training.data.omniglot import load_omniglot, omniglot_alphabet_of, omniglot_alphabets
from innerloop_training.data.registry import default_data_root
from innerloop_training.devices import learner_to
from innerloop_training.tasks import TaskBatch

METHODS = ("leap", "warp", "warp-leap", "reptile", "fomaml", "maml", "ft", "no")
WARP_METHODS = ("warp", "warp-leap")


@dataclass(frozen=True)
class Augmentation:
    """Random affine transform per image (torchvision's ``RandomAffine`` parameters)."""

    rotation: float = 360.0  # angle drawn uniformly from [0, rotation) degrees
    translate: float = 0.2  # shift up to this fraction of the side, each axis
    scale: tuple[float, float] = (0.8, 1.2)

    @property
    def identity(self) -> bool:
        return self.rotation == 0 and self.translate == 0 and self.scale == (1.0, 1.0)

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """``images``: float ``[N, 1, H, W]``, ink high (background 0, which pads)."""
        if self.identity:
            return images
        n = images.shape[0]
        uniform = torch.rand(n, 4, generator=generator, dtype=torch.float64)
        angle = torch.deg2rad(uniform[:, 0] * self.rotation)
        low, high = self.scale
        scale = low + (high - low) * uniform[:, 1]
        shift = (2 * uniform[:, 2:] - 1) * self.translate * 2  # normalised coords span 2
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        # affine_grid maps output to input coordinates: the inverse of rotate-scale-shift
        matrix = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], 1)
        offset = -(matrix @ shift[:, :, None])
        theta = torch.cat([matrix, offset], dim=2).to(images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(
            images, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )


@dataclass
class AlphabetTask:
    """One alphabet: its characters' training and held-out drawings (uint8, ink high)."""

    alphabet: str
    class_names: list[str]
    train: np.ndarray  # [characters, drawings - holdout, H, W]
    held_out: np.ndarray  # [characters, holdout, H, W]

    @property
    def ways(self) -> int:
        return len(self.class_names)


def alphabet_tasks(
    data: LabelledImages, alphabets: Sequence[str], characters: int, holdout: int, seed: int
) -> list[AlphabetTask]:
    """One :class:`AlphabetTask` per alphabet: up to ``characters`` of its characters (a seeded
    choice per alphabet), the first ``holdout`` drawings of each held out."""
    by_alphabet: dict[str, list[int]] = {}
    for index, name in enumerate(data.class_names):
        by_alphabet.setdefault(omniglot_alphabet_of(name), []).append(index)
    tasks = []
    for number, alphabet in enumerate(alphabets):
        if alphabet not in by_alphabet:
            raise ValueError(f"alphabet {alphabet!r} is not in the loaded data")
        indices = by_alphabet[alphabet]
        rng = np.random.default_rng([seed, number, len(indices)])
        chosen = sorted(rng.permutation(len(indices))[:characters].tolist())
        picked = [indices[i] for i in chosen]
        images = np.stack([data.images[i] for i in picked])
        if not 0 < holdout < images.shape[1]:
            raise ValueError(f"holdout must be 1..{images.shape[1] - 1}, got {holdout}")
        tasks.append(
            AlphabetTask(
                alphabet,
                [data.class_names[i] for i in picked],
                images[:, holdout:],
                images[:, :holdout],
            )
        )
    return tasks


def _to_float(images: np.ndarray) -> Tensor:
    return torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]


class AlphabetTaskSource:
    """Random augmented pre-training tasks over a fixed list of alphabets.

    Alphabets are visited in shuffled rounds (every alphabet once before any twice), as the
    reference implementation does; each visit draws fresh drawings, augmentations and labels.
    """

    def __init__(
        self,
        tasks: list[AlphabetTask],
        shots: int,
        queries: int,
        max_ways: int,
        augmentation: Augmentation,
        seed: int,
        permute_labels: bool = True,
    ) -> None:
        if not tasks:
            raise ValueError("no pre-training alphabets")
        self.tasks = tasks
        self.permute_labels = permute_labels
        self.shots = shots
        self.queries = queries
        self.max_ways = max_ways
        self.augmentation = augmentation
        self._rng = np.random.default_rng(seed)
        self._generator = torch.Generator().manual_seed(seed)
        self._queue: list[int] = []

    def sample(self, count: int) -> TaskBatch:
        chosen = []
        for _ in range(count):
            if not self._queue:
                self._queue = self._rng.permutation(len(self.tasks)).tolist()
            chosen.append(self._queue.pop())
        parts = [self._one(self.tasks[index]) for index in chosen]
        tensors = (torch.stack(p) for p in zip(*parts, strict=True))
        ids = torch.tensor(chosen, dtype=torch.long)
        return replace(TaskBatch(*tensors), task_ids=ids)

    def _one(self, task: AlphabetTask) -> tuple[Tensor, ...]:
        rng, ways = self._rng, task.ways
        shots = min(self.shots, task.train.shape[1])  # equal for every alphabet (20 drawers)
        queries = min(self.queries, task.held_out.shape[1])
        # class c of the alphabet gets label labels[c] (always c for multi-headed training)
        labels = rng.permutation(ways) if self.permute_labels else np.arange(ways)
        support = np.stack(
            [
                task.train[c, rng.choice(task.train.shape[1], shots, replace=False)]
                for c in range(ways)
            ]
        )
        query = np.stack(
            [
                task.held_out[c, rng.choice(task.held_out.shape[1], queries, replace=False)]
                for c in range(ways)
            ]
        )
        support_x = self.augmentation(
            _to_float(support.reshape(-1, *support.shape[2:])), self._generator
        )
        query_x = self.augmentation(_to_float(query.reshape(-1, *query.shape[2:])), self._generator)
        support_y = torch.from_numpy(np.repeat(labels, shots))
        query_y = torch.from_numpy(np.repeat(labels, queries))
        return pad_task(
            support_x,
            support_y,
            query_x,
            query_y,
            ways,
            self.max_ways,
            rows=(self.max_ways * shots, self.max_ways * queries),
        )


def pad_task(
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
    ways: int,
    max_ways: int,
    rows: tuple[int, int] | None = None,
) -> tuple[Tensor, ...]:
    """One task's tensors padded to ``max_ways`` ways and ``rows`` support/query rows.

    Padded support rows repeat row 0 with weight 0 (no effect on loss or prototypes); padded
    query rows repeat real rows (a mild reweighting, but never a row with a made-up label, which
    an unweighted query loss would count).
    """
    support_rows, query_rows = rows or (support_x.shape[0], query_x.shape[0])
    weight = torch.ones(support_x.shape[0])
    extra = support_rows - support_x.shape[0]
    if extra > 0:
        support_x = torch.cat([support_x, support_x[:1].expand(extra, *support_x.shape[1:])])
        support_y = torch.cat([support_y, support_y[:1].expand(extra)])
        weight = torch.cat([weight, torch.zeros(extra)])
    extra = query_rows - query_x.shape[0]
    if extra > 0:
        repeat = torch.arange(extra) % query_x.shape[0]
        query_x, query_y = (
            torch.cat([query_x, query_x[repeat]]),
            torch.cat([query_y, query_y[repeat]]),
        )
    mask = torch.zeros(max_ways, dtype=torch.bool)
    mask[:ways] = True
    return (support_x, support_y.long(), weight, mask, query_x, query_y.long())


def held_out_batch(task: AlphabetTask, shots: int | None = None) -> TaskBatch:
    """A test alphabet as a one-task batch: the first ``shots`` (default all) training drawings
    of every character as support, all held-out drawings as queries; no augmentation."""
    train = task.train if shots is None else task.train[:, :shots]
    ways = task.ways
    support_x = _to_float(train.reshape(-1, *train.shape[2:]))
    query_x = _to_float(task.held_out.reshape(-1, *task.held_out.shape[2:]))
    support_y = torch.arange(ways).repeat_interleave(train.shape[1])
    query_y = torch.arange(ways).repeat_interleave(task.held_out.shape[1])
    tensors = pad_task(support_x, support_y, query_x, query_y, ways, ways)
    return TaskBatch(*(t[None] for t in tensors))


# ---- settings ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProtocolConfig:
    """One comparison run; the defaults are the papers' sizes (see ``QUICK`` for a fast run)."""

    pretrain_alphabets: tuple[int, ...] = (1, 3, 5, 10, 15, 20, 25)
    methods: tuple[str, ...] = METHODS
    test_alphabets: int = 10
    characters: int = 20
    holdout: int = 5
    shots: int = 15  # training drawings per character in a pre-training support set
    queries: int = 5  # held-out drawings per character in a pre-training query set
    test_shots: int | None = None  # training drawings per character at test (None: all)
    image_size: int = 28
    filters: int = 64
    warp: str = "conv"
    # the papers' inner loop: a linear head from zero and plain SGD(0.1). Measured on 3 test
    # alphabets, untrained 32-filter net, 20-way, 5 shots, accuracy after 100 steps: zero head
    # + SGD 0.1 58.7%, zero + Adam 1e-3 56.3%, proto + Adam 1e-3 47.0%, proto + SGD 0.1 38.3%
    # (the prototype head's first SGD steps overshoot). SGD also leaves WarpGrad's
    # preconditioning intact, which Adam's per-parameter normalisation largely undoes.
    head: str = "zero"
    inner_steps: int = 100
    maml_steps: int = 5
    test_steps: int = 100
    inner_lr: float = 0.1
    inner_optimizer: str = "sgd"
    meta_steps: int = 1000
    meta_batch: int = 20
    # None: each method's own (algorithms.default_outer); grad_clip 0 = off
    outer_optimizer: str | None = None
    outer_lr: float | None = None
    grad_clip: float | None = None
    # WarpGrad (algorithms.warpgrad.WarpGradConfig; defaults: the reference code's)
    warp_buffer: str = "batch"
    warp_buffer_size: int = 200
    warp_store_every: int = 1
    warp_batch: int = 1
    warp_updates: int = 0
    warp_objective: str = "step"
    warp_lr: float | None = None
    warp_leap_loss: bool = False
    augmentation: Augmentation = field(default_factory=Augmentation)
    curve_every: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {METHODS}")
        background = len(omniglot_alphabets(background=True))
        bad = [k for k in self.pretrain_alphabets if not 1 <= k <= background]
        if bad:
            raise ValueError(f"pre-training alphabet counts must be 1..{background}, got {bad}")
        evaluation = len(omniglot_alphabets(background=False))
        if not 1 <= self.test_alphabets <= evaluation:
            raise ValueError(f"test_alphabets must be 1..{evaluation}, got {self.test_alphabets}")
        if not 0 < self.queries <= self.holdout:
            raise ValueError(f"queries must be 1..holdout ({self.holdout}), got {self.queries}")


QUICK = {
    "pretrain_alphabets": (1, 5, 15),
    "test_alphabets": 5,
    "shots": 3,
    "queries": 2,
    "test_shots": 5,
    "filters": 16,
    "inner_steps": 8,
    "maml_steps": 3,
    "test_steps": 20,
    "meta_steps": 15,
    "meta_batch": 3,
    "warp_batch": 0,
    "warp_store_every": 2,
}


def split_alphabets(config: ProtocolConfig) -> tuple[list[str], list[str]]:
    """(pre-training order over background alphabets, test alphabets from evaluation)."""
    rng = np.random.default_rng(config.seed)
    background = omniglot_alphabets(background=True)
    evaluation = omniglot_alphabets(background=False)
    order = [background[i] for i in rng.permutation(len(background))]
    test = sorted(evaluation[i] for i in rng.permutation(len(evaluation))[: config.test_alphabets])
    return order, test


def check_split(pretrain: list[AlphabetTask], test: list[AlphabetTask]) -> None:
    """Refuse any overlap, and any pre-training class outside ``images_background``."""
    background = set(omniglot_alphabets(background=True))
    leaked = sorted({t.alphabet for t in pretrain} - background)
    if leaked:
        raise ValueError(f"pre-training must use images_background only; got {leaked}")
    names = {n for t in pretrain for n in t.class_names}
    if any(omniglot_alphabet_of(n) not in background for n in names):
        raise ValueError("a pre-training class is not from images_background")
    shared = sorted({t.alphabet for t in pretrain} & {t.alphabet for t in test})
    if shared:
        raise ValueError(f"test alphabets were used for pre-training: {shared}")


# ---- pre-training and testing -----------------------------------------------------------------
def make_learner(method: str, config: ProtocolConfig) -> Learner:
    """The same random init for every method (warp-layers start as the identity)."""
    arch = ArchConfig(
        kind="conv4",
        image_size=config.image_size,
        filters=config.filters,
        warp=config.warp if method in WARP_METHODS else "none",
    )
    inner = InnerDefaults(config.test_steps, config.inner_lr, config.inner_optimizer)
    return Learner.create(
        arch, config.head, inner, max_ways=max(config.characters, 2), seed=config.seed
    )


def outer_config(method: str, config: ProtocolConfig) -> OuterConfig:
    """The method's own outer optimiser, with whatever the config sets explicitly."""
    return resolve_outer(method, config.outer_optimizer, config.outer_lr, config.grad_clip)


def warpgrad_config(method: str, config: ProtocolConfig) -> WarpGradConfig:
    return WarpGradConfig(
        buffer=config.warp_buffer,
        buffer_size=config.warp_buffer_size,
        store_every=config.warp_store_every,
        warp_batch=config.warp_batch,
        warp_updates=config.warp_updates,
        objective=config.warp_objective,
        learn_init=method == "warp-leap",
        leap_loss=config.warp_leap_loss,
        warp_lr=config.warp_lr,
        seed=config.seed,
    )


def make_algorithm(method: str, learner: Learner, config: ProtocolConfig) -> MetaAlgorithm:
    steps = config.maml_steps if method == "maml" else config.inner_steps
    loop = InnerLoop(steps, config.inner_optimizer)
    outer = outer_config(method, config)
    warp = warpgrad_config(method, config) if method in WARP_METHODS else None
    return build_algorithm(method, learner, loop, outer, warp, seed=config.seed)


def method_settings(method: str, config: ProtocolConfig) -> dict[str, Any]:
    """What the method actually ran with (for the report and the card)."""
    outer = outer_config(method, config)
    settings: dict[str, Any] = {
        "outer": {
            "optimizer": outer.optimizer,
            "lr": outer.lr,
            "grad_clip": outer.grad_clip or 0.0,
        }
    }
    if method in WARP_METHODS:
        warp = warpgrad_config(method, config)
        settings["warpgrad"] = {**asdict(warp), "warp_lr": warp.warp_lr or outer.lr}
    return settings


@dataclass
class AlphabetResult:
    """Mean over test alphabets; ``curve[i]`` is accuracy after ``steps[i]`` inner steps."""

    final_accuracy: float
    auc: float
    steps: list[int]
    curve: list[float]
    per_alphabet: dict[str, float]
    initial_accuracy: float
    queries: int = 0  # held-out drawings pooled over test alphabets
    ci95_queries: tuple[float, float] = (0.0, 1.0)  # Wilson, over pooled held-out drawings
    ci95_alphabets: tuple[float, float] = (0.0, 1.0)  # Student t, over per-alphabet accuracy


# two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom (then the normal's)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def wilson_interval(correct: float, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (sensible near 0 and 1)."""
    if trials <= 0:
        return (0.0, 1.0)
    p = correct / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    half /= 1 + z * z / trials
    return (max(0.0, centre - half), min(1.0, centre + half))


def t_interval(values: Sequence[float]) -> tuple[float, float]:
    """95% Student t interval of the mean of ``values`` (the value itself when only one)."""
    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return (mean, mean)
    t = _T975[n - 2] if n - 1 <= len(_T975) else 1.959964
    half = t * float(np.std(values, ddof=1)) / math.sqrt(n)
    return (mean - half, mean + half)


def adaptation_curve(
    learner: Learner, batch: TaskBatch, steps: int, every: int = 1
) -> tuple[list[int], list[float]]:
    """Query accuracy after 0, every, 2*every, ..., steps inner steps on one test task.

    Observed through the inner loop's ``trajectory`` hook (accuracy of the parameters *before*
    each update), plus the adapted end point, so this is exactly the served adaptation.
    """
    support_x, support_y, weight, mask, query_x, query_y = (t[0] for t in batch.astuple())
    points: list[int] = []
    accuracy: list[float] = []
    fixed = {k: v for k, v in learner.params.items() if k in learner.frozen}

    def score(params: Params) -> float:
        logits = learner.forward({**fixed, **params}, query_x, mask)
        return float((logits.argmax(-1) == query_y).float().mean())

    def observe(step: int, params: Params, grads: Params, loss: Tensor) -> None:
        if step % every == 0:
            points.append(step)
            accuracy.append(score(params))

    loop = learner.inner.loop(steps, first_order=True)
    with torch.no_grad():
        result = adapt(
            learner,
            learner.params,
            learner.step_sizes,
            support_x,
            support_y,
            weight,
            mask,
            loop,
            trajectory=observe,
        )
        points.append(steps)
        accuracy.append(score(result.params))
    return points, accuracy


def area_under_curve(steps: list[int], values: list[float]) -> float:
    """Trapezoid area divided by the step range (the value itself when there are no steps)."""
    if len(steps) < 2 or steps[-1] == steps[0]:
        return values[-1]
    area = sum(
        (b - a) * (u + v) / 2
        for a, b, u, v in zip(steps[:-1], steps[1:], values[:-1], values[1:], strict=True)
    )
    return area / (steps[-1] - steps[0])


def evaluate_alphabets(
    learner: Learner, tests: list[tuple[str, TaskBatch]], steps: int, every: int = 1
) -> AlphabetResult:
    curves = {name: adaptation_curve(learner, batch, steps, every) for name, batch in tests}
    points = next(iter(curves.values()))[0]
    mean_curve = [float(np.mean([c[1][i] for c in curves.values()])) for i in range(len(points))]
    aucs = [area_under_curve(p, c) for p, c in curves.values()]
    sizes = {name: int(batch.query_y[0].numel()) for name, batch in tests}
    correct = sum(round(curves[name][1][-1] * sizes[name]) for name in curves)
    queries = sum(sizes.values())
    finals = [c[1][-1] for c in curves.values()]
    return AlphabetResult(
        final_accuracy=mean_curve[-1],
        auc=float(np.mean(aucs)),
        steps=points,
        curve=mean_curve,
        per_alphabet={name: c[1][-1] for name, c in curves.items()},
        initial_accuracy=mean_curve[0],
        queries=queries,
        ci95_queries=wilson_interval(correct, queries),
        ci95_alphabets=t_interval(finals),
    )


# ---- the whole comparison ---------------------------------------------------------------------
def run_comparison(
    config: ProtocolConfig,
    out_dir: Path,
    data_root: Path | str | None = None,
    background: LabelledImages | None = None,
    evaluation: LabelledImages | None = None,
    save_checkpoints: bool = True,
    log: Callable[[str], None] = print,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Pre-train every method for every ``k``, test, and write results, table and figure.

    Learners and task batches live on ``device`` (batches are built on the CPU from images and
    moved as they are used); results and checkpoints are written from the CPU.

    ``background`` / ``evaluation`` may be passed in (tests); otherwise they are loaded from
    ``data_root``. Results are rewritten to ``results.json`` after every (method, k), so an
    interrupted run keeps what it finished.
    """
    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    if background is None or evaluation is None:
        root = Path(data_root) if data_root is not None else default_data_root()
        if root is None:
            raise FileNotFoundError("no data root: pass --data-root or set $INNERLOOP_DATA")
        root = root / "omniglot" if (root / "omniglot").is_dir() else root
        background = load_omniglot(root, background=True, size=config.image_size)
        evaluation = load_omniglot(root, background=False, size=config.image_size)
    order, test_names = split_alphabets(config)
    most = max(config.pretrain_alphabets)
    pool = alphabet_tasks(background, order[:most], config.characters, config.holdout, config.seed)
    tests = alphabet_tasks(
        evaluation, test_names, config.characters, config.holdout, config.seed + 1
    )
    check_split(pool, tests)
    device = torch.device(device)
    test_batches = [(t.alphabet, held_out_batch(t, config.test_shots).to(device)) for t in tests]
    report: dict[str, Any] = {
        "protocol": "omniglot alphabet-as-task",
        "settings": _jsonable(asdict(config)),
        "pretrain_order": order[:most],
        "test_alphabets": test_names,
        "results": {},
        "methods": {},  # per method: the outer optimiser (and WarpGrad settings) it ran with
        "ci95": "ci95_queries: Wilson over pooled held-out drawings; ci95_alphabets: Student "
        "t over per-alphabet final accuracies",
        "seconds": {},
        "device": str(device),
    }
    log(f"test alphabets (images_evaluation): {', '.join(test_names)}")
    untrained: AlphabetResult | None = None
    for method in config.methods:
        for k in sorted(config.pretrain_alphabets):
            clock = time.monotonic()
            learner = learner_to(make_learner(method, config), device)
            if method == "no":  # nothing is pre-trained: one evaluation serves every k
                untrained = untrained or evaluate_alphabets(
                    learner, test_batches, config.test_steps, config.curve_every
                )
                result = untrained
            else:
                source = AlphabetTaskSource(
                    pool[:k],
                    config.shots,
                    config.queries,
                    config.characters,
                    config.augmentation,
                    seed=config.seed + 1000 * k,
                    permute_labels=method != "ft",
                )
                algorithm = make_algorithm(method, learner, config)
                metrics: dict[str, float] = {}
                progress = tqdm(
                    range(config.meta_steps), desc=f"{method} k={k}", unit="meta-step", leave=False
                )
                for _ in progress:
                    metrics = algorithm.step(source.sample(config.meta_batch).to(device))
                _warn_if_not_finite(metrics, method, k, log)
                result = evaluate_alphabets(
                    learner, test_batches, config.test_steps, config.curve_every
                )
            seconds = time.monotonic() - clock
            report["results"].setdefault(method, {})[str(k)] = asdict(result)
            report["seconds"].setdefault(method, {})[str(k)] = round(seconds, 1)
            report["methods"][method] = method_settings(method, config)
            low, high = result.ci95_queries
            log(
                f"{method:>9} k={k:<2} final {100 * result.final_accuracy:5.1f}% "
                f"[{100 * low:.1f}, {100 * high:.1f}]  AUC {100 * result.auc:5.1f}  "
                f"({seconds:.0f}s)"
            )
            if save_checkpoints:
                _save(learner, method, k, config, result, out_dir)
            report["total_seconds"] = round(time.monotonic() - started, 1)
            (out_dir / "results.json").write_text(json.dumps(report, indent=1))
    write_table(report, out_dir / "results.md")
    plot_comparison(report, out_dir / "accuracy_vs_alphabets.png")
    return report


def _warn_if_not_finite(
    metrics: dict[str, float], method: str, k: int, log: Callable[[str], None]
) -> None:
    bad = [name for name, value in metrics.items() if not math.isfinite(value)]
    if bad:
        log(f"warning: {method} k={k}: non-finite {bad} at the last meta-step")


def _save(
    learner: Learner,
    method: str,
    k: int,
    config: ProtocolConfig,
    result: AlphabetResult,
    out_dir: Path,
) -> None:
    name = f"{method}-k{k}"
    card = build_card(
        learner,
        name,
        {
            "training": {
                "algorithm": method,
                "protocol": "omniglot alphabet-as-task",
                "pretrain_alphabets": k,
                "config": _jsonable(asdict(config)),
                **_jsonable(method_settings(method, config)),
            },
            "evaluation": {
                "alphabets": {
                    "final_accuracy": result.final_accuracy,
                    "auc": result.auc,
                    "test_steps": config.test_steps,
                }
            },
        },
    )
    save_checkpoint(
        learner.with_params(
            {k: v.detach().cpu() for k, v in learner.params.items()},
            {k: v.detach().cpu() for k, v in learner.step_sizes.items()},
        ),
        out_dir / "checkpoints" / f"{name}.safetensors",
        card,
    )


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))


# ---- report -----------------------------------------------------------------------------------
def write_table(report: dict[str, Any], path: Path) -> Path:
    """Markdown: final accuracy and AUC per method (rows) and number of alphabets (columns)."""
    results = report["results"]
    ks = sorted({int(k) for per_k in results.values() for k in per_k})
    settings = report["settings"]
    lines = [
        "# Omniglot alphabet-as-task comparison",
        "",
        f"Test: {len(report['test_alphabets'])} alphabets from images_evaluation "
        f"({', '.join(report['test_alphabets'])}), {settings['characters']}-way, "
        f"{settings['test_steps']} adaptation steps ({settings['inner_optimizer']}, lr "
        f"{settings['inner_lr']}); pre-training: {settings['meta_steps']} meta-steps x "
        f"{settings['meta_batch']} tasks, {settings['inner_steps']} inner steps "
        f"(MAML {settings['maml_steps']}), {settings['filters']} filters.",
        "",
    ]
    for title, key in (
        ("Final test accuracy (%)", "final_accuracy"),
        ("Area under the test-accuracy curve (%)", "auc"),
    ):
        lines += [
            f"## {title}",
            "",
            "| method | " + " | ".join(f"k={k}" for k in ks) + " |",
            "|---|" + "---:|" * len(ks),
        ]
        for method, per_k in results.items():
            cells = [_cell(per_k[str(k)], key) if str(k) in per_k else "" for k in ks]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        if key == "final_accuracy":
            lines += ["", "Final accuracy: [95% Wilson interval over pooled held-out drawings]."]
        lines.append("")
    finals = [r["final_accuracy"] for per_k in results.values() for r in per_k.values()]
    queries = len(report["test_alphabets"]) * settings["characters"] * settings["holdout"]
    if finals:
        p = float(np.mean(finals))
        error = 100 * math.sqrt(p * (1 - p) / queries)
        lines.append(
            f"Each cell is measured on {queries} held-out drawings: its binomial "
            f"standard error is about {error:.1f} points at {100 * p:.0f}% accuracy."
        )
    seconds = report.get("total_seconds")
    if seconds is not None:
        lines.append(f"Total time: {seconds / 60:.1f} min.")
    path.write_text("\n".join(lines) + "\n")
    return path


def _cell(result: dict[str, Any], key: str) -> str:
    value = f"{100 * result[key]:.1f}"
    interval = result.get("ci95_queries")
    if key == "final_accuracy" and interval:
        value += f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"
    return value


def plot_comparison(report: dict[str, Any], path: Path) -> Path:
    """Test accuracy (and AUC) against the number of pre-training alphabets, one line each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for method, per_k in report["results"].items():
        ks = sorted(int(k) for k in per_k)
        for ax, key in zip(axes, ("final_accuracy", "auc"), strict=True):
            ax.plot(
                ks,
                [100 * per_k[str(k)][key] for k in ks],
                marker="o",
                label=method,
                linestyle="--" if method in ("ft", "no") else "-",
            )
    settings = report["settings"]
    axes[0].set_title(f"final test accuracy after {settings['test_steps']} steps")
    axes[1].set_title("area under the test-accuracy curve")
    for ax in axes:
        ax.set_xlabel("pre-training alphabets (k)")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
    axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.suptitle(
        f"Omniglot alphabets as tasks: {settings['characters']}-way, tested on "
        f"{len(report['test_alphabets'])} images_evaluation alphabets"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
