"""The meta-training loop: sample, step, log, validate, checkpoint, resume.

Long CPU runs are the norm here, so the loop is built to be interrupted: it writes a resumable
state (learner + outer optimiser) every ``checkpoint_every`` steps and on ``--max-minutes``, and
``--resume`` continues from it with a deterministic, step-dependent task stream.
"""

from __future__ import annotations

import contextlib
import json
import platform
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from innerloop.adaptation import InnerLoop
from innerloop.checkpoint import build_card, load_checkpoint, save_checkpoint
from innerloop.learner import InnerDefaults, Learner
from innerloop.models import ArchConfig
from innerloop.scopes import HEAD_LOG_SCALE
from innerloop_training.algorithms import (
    GradientMetaLearner,
    OuterConfig,
    build_algorithm,
    resolve_outer,
)
from innerloop_training.augment import Augmentation, augment_batch
from innerloop_training.devices import learner_to, resolve_device
from innerloop_training.evaluation import EvaluationResult, evaluate_learner
from innerloop_training.sources import TaskSource, build_source
from innerloop_training.warpgrad import WarpGradConfig

STEP_SIZE_LEARNING = ("none", "tensor", "parameter")
AUGMENTATION = Augmentation()  # what --augment draws from (recorded in the card)


@dataclass
class TrainConfig:
    """Every knob of a training run; stored verbatim in the checkpoint card."""

    algorithm: str = "maml"
    dataset: str = "omniglot"
    data_root: str | None = None
    path: str | None = None
    split_scheme: str = "alphabets"
    split_seed: int = 0
    ways: int = 5
    shots: int = 1
    queries: int = 15
    unbalanced: bool = False
    rotations: bool = True
    image_size: int = 28
    filters: int = 64
    # WarpGrad warp-layers: none | linear | conv | residual; None: conv (images) or linear
    # (regression) for warp / warp-leap, none otherwise
    warp: str | None = None
    head: str = "proto"
    # a meta-learned logit scale on the proto head, started at this value (None: unscaled)
    head_scale: float | None = None
    augment: bool = False  # distort meta-training drawings (innerloop_training.augment)
    max_ways: int = 50
    inner_steps: int = 5
    inner_lr: float = 0.1
    inner_optimizer: str = "sgd"
    first_order: bool = False
    # which step sizes the outer loop learns: none | tensor (one per adapted tensor, MAML++'s
    # per-layer LSLR without its per-step axis) | parameter (Meta-SGD); None: parameter for
    # metasgd, none otherwise
    learn_step_sizes: str | None = None
    first_order_warmup: int = 0
    # MAML++'s multi-step loss, annealed to the last step's over this many meta-steps (0: off)
    multi_step_loss: int = 0
    meta_batch: int = 16
    meta_steps: int = 1000
    # the outer optimiser; None: the algorithm's own (algorithms.default_outer)
    outer_optimizer: str | None = None
    outer_lr: float | None = None
    grad_clip: float | None = None  # global-norm clip of the meta-gradient; 0 = off
    # WarpGrad (warp, warp-leap); see innerloop_training.warpgrad.WarpGradConfig
    warp_buffer: str = "batch"
    warp_buffer_size: int = 200
    warp_store_every: int = 1
    warp_batch: int = 1
    warp_updates: int = 0
    warp_objective: str = "step"
    warp_lr: float | None = None
    warp_leap_loss: bool = False
    seed: int = 0
    eval_every: int = 200
    eval_episodes: int = 100
    checkpoint_every: int = 200
    max_minutes: float | None = None
    out: str = "checkpoints/model.safetensors"
    run_dir: str | None = None
    resume: bool = False
    init: str | None = None  # start from this checkpoint's meta-parameters (warm start)
    device: str = "auto"  # auto | cpu | cuda (innerloop_training.devices)
    adapt: str = "all"  # adaptation scope meta-trained and served (innerloop.scopes)
    command: list[str] = field(default_factory=lambda: list(sys.argv))

    def __post_init__(self) -> None:
        """Fill in the algorithm's defaults, so the card records what actually ran."""
        outer = resolve_outer(self.algorithm, self.outer_optimizer, self.outer_lr, self.grad_clip)
        self.outer_optimizer, self.outer_lr = outer.optimizer, outer.lr
        self.grad_clip = outer.grad_clip or 0.0
        if self.learn_step_sizes is None:
            self.learn_step_sizes = "parameter" if self.algorithm == "metasgd" else "none"
        if self.learn_step_sizes not in STEP_SIZE_LEARNING:
            raise ValueError(
                f"learn_step_sizes {self.learn_step_sizes!r} is not one of {STEP_SIZE_LEARNING}"
            )
        if self.learn_step_sizes != "none" and self.algorithm not in ("maml", "fomaml", "metasgd"):
            raise ValueError("learned step sizes need maml, fomaml or metasgd")
        if self.augment and self.is_regression:
            raise ValueError("--augment distorts drawings; regression tasks have none")
        warped = self.algorithm in ("warp", "warp-leap")
        if self.warp is None:
            self.warp = ("linear" if self.is_regression else "conv") if warped else "none"
        if warped and self.warp_lr is None:
            self.warp_lr = self.outer_lr

    @property
    def outer(self) -> OuterConfig:
        """The resolved outer optimiser (``__post_init__`` filled in every None)."""
        assert self.outer_optimizer is not None and self.outer_lr is not None
        return OuterConfig(self.outer_optimizer, self.outer_lr, self.grad_clip)

    @property
    def warpgrad(self) -> WarpGradConfig:
        return WarpGradConfig(
            buffer=self.warp_buffer,
            buffer_size=self.warp_buffer_size,
            store_every=self.warp_store_every,
            warp_batch=self.warp_batch,
            warp_updates=self.warp_updates,
            objective=self.warp_objective,
            leap_loss=self.warp_leap_loss,
            warp_lr=self.warp_lr,
            seed=self.seed,
        )

    @property
    def name(self) -> str:
        return Path(self.out).stem

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name

    @property
    def is_regression(self) -> bool:
        return self.dataset in ("sine", "logistic")


def describe_hardware(device: torch.device | None = None) -> str:
    """What trained it, for the card: results are only comparable on like hardware."""
    if device is not None and device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"CPU {cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def display_command(argv: list[str]) -> str:
    """The command as a user would retype it: ``innerloop train ...`` rather than the absolute
    path of the console script (or of ``innerloop/cli.py`` under ``python -m``)."""
    if argv and Path(argv[0]).name in ("innerloop", "cli.py"):
        argv = ["innerloop", *argv[1:]]
    return shlex.join(argv)


def build_learner(config: TrainConfig) -> Learner:
    if config.is_regression:
        arch = ArchConfig(kind="mlp", warp=config.warp or "none")
    else:
        arch = ArchConfig(
            kind="conv4",
            image_size=config.image_size,
            filters=config.filters,
            warp=config.warp or "none",
        )
    inner = InnerDefaults(config.inner_steps, config.inner_lr, config.inner_optimizer)
    learner = Learner.create(
        arch,
        config.head,
        inner,
        learn_step_sizes=config.learn_step_sizes == "parameter",
        max_ways=config.max_ways,
        seed=config.seed,
        head_scale=config.head_scale,
    )
    # meta-train the loop the server will run: only the scope adapts (learned step sizes kept)
    return learner if config.adapt == "all" else learner.with_scope(config.adapt)


def build_sources(config: TrainConfig, train_seed: int) -> tuple[TaskSource, TaskSource]:
    """Training source (rotations as extra classes) and validation source (no rotations)."""
    common: dict[str, Any] = dict(
        ways=config.ways,
        shots=config.shots,
        queries=config.queries,
        data_root=config.data_root,
        path=config.path,
        image_size=config.image_size,
        split_scheme=config.split_scheme,
        split_seed=config.split_seed,
    )
    train = build_source(
        config.dataset,
        "train",
        seed=train_seed,
        rotations=config.rotations,
        unbalanced=config.unbalanced,
        **common,
    )
    val = build_source(config.dataset, "val", seed=config.seed + 1, **common)
    return train, val


_SHOWN = (
    "query_loss",
    "query_accuracy",
    "query_mse",
    "support_loss_after",
    "val_accuracy",
    "val_mse",
)


@contextmanager
def _stop_requests() -> Iterator[list[str]]:
    """Turn SIGINT/SIGTERM into a polite stop request, so an interrupted run still saves."""
    requests: list[str] = []
    previous = {}

    def request(signum: int, _frame: object) -> None:
        requests.append(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, request)
    try:
        yield requests
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Runs one :class:`TrainConfig` to a checkpoint, with logs and plots in ``run_path``."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.run_path = config.run_path
        self.run_path.mkdir(parents=True, exist_ok=True)
        self.resume_path = self.run_path / "resume.safetensors"
        if config.algorithm == "ft":
            raise ValueError(
                "ft (multi-headed fine-tuning) trains one head per pre-training task and needs "
                "tasks with a fixed identity and consistent labels; episodic sources have "
                "neither. Run it in the alphabet-as-task protocol: innerloop compare --methods ft"
            )
        self.device = resolve_device(config.device)
        self.learner = build_learner(config)
        self.start_step = 0
        self.seconds_before = 0.0
        self.init_history: dict[str, Any] | None = None
        if config.resume and self.resume_path.exists():
            self._load_resume()
        elif config.init:
            self.init_history = self._load_init(Path(config.init))
        self.learner = learner_to(self.learner, self.device)
        loop = InnerLoop(config.inner_steps, config.inner_optimizer, config.first_order)
        self.algorithm = build_algorithm(
            config.algorithm,
            self.learner,
            loop,
            config.outer,
            config.warpgrad,
            learn_step_sizes=config.learn_step_sizes != "none",
            multi_step_loss=config.multi_step_loss,
        )
        if config.resume and self.resume_path.exists():
            self._load_optimizer_state()
        # a resumed segment gets a fresh, deterministic task stream of its own
        train_seed = config.seed + 7919 * self.start_step
        self.train_source, self.val_source = build_sources(config, train_seed)
        self.val_batches = self.val_source.fixed(config.eval_episodes, seed=config.seed + 10_000)
        self.log_path = self.run_path / "metrics.jsonl"
        self.best_score: float | None = None  # best validation of this segment (not resumed)

    def _open_log(self) -> TextIO:
        """A fresh run starts a fresh log (no curve mixing two runs); a resumed one keeps the
        lines up to its saved step, since the steps logged after the last save are redone."""
        if self.start_step == 0 or not self.log_path.exists():
            return self.log_path.open("w")
        kept: list[str] = []
        for line in self.log_path.read_text().splitlines():
            try:
                if int(json.loads(line)["step"]) <= self.start_step:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short when the previous run was killed
        self.log_path.write_text("".join(kept))
        return self.log_path.open("a")

    def run(self) -> Path:
        """Train until ``meta_steps``, ``--max-minutes``, or SIGINT/SIGTERM; then save."""
        config = self.config
        started = time.monotonic()
        deadline = started + 60 * config.max_minutes if config.max_minutes else None
        second_order_loop = self.algorithm.loop
        first_order_loop = replace(second_order_loop, first_order=True)
        bar = tqdm(
            total=config.meta_steps,
            initial=self.start_step,
            desc=f"{config.algorithm} {config.dataset}",
            unit="step",
            dynamic_ncols=True,
        )
        done = self.start_step
        with self._open_log() as log, _stop_requests() as stop:
            while done < config.meta_steps and not stop:
                warm = done < config.first_order_warmup
                self.algorithm.loop = first_order_loop if warm else second_order_loop
                if isinstance(self.algorithm, GradientMetaLearner):
                    self.algorithm.meta_step = done  # anneals the multi-step loss
                batch = self.train_source.sample(config.meta_batch)
                if config.augment:  # seeded by the step: a resumed run sees the same draws
                    batch = augment_batch(batch, AUGMENTATION, config.seed * 1_000_003 + done)
                batch = batch.to(self.device)
                metrics = self.algorithm.step(batch)
                done += 1
                record: dict[str, Any] = {
                    "step": done,
                    **metrics,
                    "seconds": self._seconds(started),
                }
                if done % config.eval_every == 0 or done == config.meta_steps:
                    result = self.validate()
                    record[f"val_{result.metric}"] = result.mean
                    record["val_ci95"] = result.ci95
                    self._keep_if_best(done, started, result)
                bar.set_postfix(
                    {k: f"{v:.3f}" for k, v in record.items() if k in _SHOWN}, refresh=False
                )
                bar.update()
                log.write(json.dumps(record) + "\n")
                log.flush()
                if done % config.checkpoint_every == 0:
                    self._save_resume(done, started)
                if deadline is not None and time.monotonic() > deadline:
                    bar.write(f"--max-minutes reached at step {done}; saving")
                    break
            if stop:
                bar.write(f"stopped by {stop[0]} at step {done}; saving")
        bar.close()
        self._save_resume(done, started)
        return self._save_final(done, started)

    def validate(self) -> EvaluationResult:
        return evaluate_learner(self.learner, self.val_batches, device=self.device)

    @property
    def best_path(self) -> Path:
        """The checkpoint of this segment's best validation so far (``runs/NAME/best``)."""
        return self.run_path / "best.safetensors"

    def _keep_if_best(self, steps_done: int, started: float, result: EvaluationResult) -> None:
        """Warm-started runs can get worse on held-out classes as they fit the training ones;
        the final checkpoint is the last, so the best validated one is kept beside it."""
        score = result.mean if result.metric == "accuracy" else -result.mean
        if self.best_score is not None and score <= self.best_score:
            return
        self.best_score = score
        card = self._card(steps_done, started, result)
        card["training"]["best_of_validations"] = True
        save_checkpoint(self.learner, self.best_path, card)

    # ---- checkpoints ------------------------------------------------------------------------
    def _seconds(self, started: float) -> float:
        return self.seconds_before + time.monotonic() - started

    def _card(
        self, steps_done: int, started: float, validation: EvaluationResult
    ) -> dict[str, Any]:
        training = {
            "algorithm": self.config.algorithm,
            "config": asdict(self.config),
            "command": display_command(self.config.command),
            "seed": self.config.seed,
            "meta_steps_done": steps_done,
            "seconds": round(self._seconds(started), 1),
            "hardware": describe_hardware(self.device),
            "data": self.train_source.describe(),
        }
        if self.config.augment:
            training["augmentation"] = AUGMENTATION.to_dict()
        if self.init_history is not None:
            training["init"] = self.init_history
        evaluation = {"validation": validation.to_dict()}
        return build_card(
            self.learner, self.config.name, {"training": training, "evaluation": evaluation}
        )

    def _save_resume(self, steps_done: int, started: float) -> None:
        card = build_card(
            self.learner,
            self.config.name,
            {
                "training": {
                    "resume_step": steps_done,
                    "seconds": self._seconds(started),
                    "init": self.init_history,
                }
            },
        )
        save_checkpoint(self.learner, self.resume_path, card)
        state = self.algorithm.optimizer.state_dict()
        tensors: dict[str, torch.Tensor] = {}
        for index, slots in state["state"].items():
            for key, value in slots.items():
                tensors[f"{index}/{key}"] = torch.as_tensor(value).detach().clone()
        save_file(
            tensors,
            str(self.run_path / "resume.optimizer.safetensors"),
            metadata={"param_groups": json.dumps(state["param_groups"])},
        )

    def _load_init(self, path: Path) -> dict[str, Any]:
        """Warm start: take a checkpoint's meta-parameters (a fresh outer optimiser).

        This is how a finished run continues under a new schedule (a lower outer step size,
        second order after first order) when its resume state is gone. The checkpoint must
        have the architecture and head this run would build; its training record is kept in
        the new card, so the whole history of a shipped model stays readable.
        """
        learner, card = load_checkpoint(path)
        mine = self.learner
        if mine.arch.adapters and not learner.arch.adapters:  # --adapt adapters: start at zero
            learner = learner.with_adapters()
        if learner.arch != mine.arch or learner.head != mine.head or learner.task != mine.task:
            raise ValueError(
                f"--init {path}: its model ({learner.arch.kind}, head {learner.head}, "
                f"warp {learner.arch.warp}) does not match this run's ({mine.arch.kind}, head "
                f"{mine.head}, warp {mine.arch.warp}); pass the same --filters/--warp/--head"
            )
        # a head scale this run adds to an init that has none starts at --head-scale
        added = {HEAD_LOG_SCALE} & (mine.params.keys() - learner.params.keys())
        if set(learner.params) | added != set(mine.params):
            raise ValueError(f"--init {path}: its parameters do not match this model's")
        mine.params = {name: learner.params.get(name, mine.params[name]) for name in mine.params}
        if set(learner.step_sizes) == set(mine.step_sizes):
            mine.step_sizes = {name: learner.step_sizes[name] for name in mine.step_sizes}
        training = card.get("training", {})
        history = {
            key: training[key]
            for key in ("algorithm", "command", "meta_steps_done", "seconds", "hardware", "init")
            if key in training
        }
        return {"path": str(path), "name": card.get("name"), **history}

    def _load_resume(self) -> None:
        learner, card = load_checkpoint(self.resume_path)
        self.learner.params = learner.params
        self.learner.step_sizes = learner.step_sizes
        self.start_step = int(card["training"]["resume_step"])
        self.seconds_before = float(card["training"]["seconds"])
        self.init_history = card["training"].get("init")

    def _load_optimizer_state(self) -> None:
        path = self.run_path / "resume.optimizer.safetensors"
        if not path.exists():
            return
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            groups = json.loads(handle.metadata()["param_groups"])
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            index, slot = key.split("/", 1)
            state.setdefault(int(index), {})[slot] = value
        self.algorithm.optimizer.load_state_dict({"state": state, "param_groups": groups})

    def _save_final(self, steps_done: int, started: float) -> Path:
        card = self._card(steps_done, started, self.validate())
        return save_checkpoint(self.learner, self.config.out, card)
