"""A meta-learned starting point: body template, meta-parameters, step sizes, head and defaults.

The classification head is built per task from the support set, so predictions do not depend on
the order or the names of the labels and any number of ways works with one checkpoint:

- ``proto`` (Proto-MAML, Triantafillou et al. 2020): row ``c`` of the head is ``2 * mu_c`` and its
  bias ``-|mu_c|^2``, where ``mu_c`` is the (weighted) mean support feature of class ``c``. Before
  any inner step this is a prototypical network; inner steps then fine-tune body and head.
- ``zero`` (unicorn-MAML, Ye & Chao 2022): one meta-learned head vector and bias copied to every
  class; the inner loop makes them class-specific.

Per-class means use ``support_weight``, so unbalanced support sets and padded rows are exact.

A ``proto`` head may carry a meta-learned logit scale (``head.log_scale``, the temperature of
Snell et al.'s distance logits, learned as in Oreshkin et al.'s TADAM): the head starts as
``s * (2 mu_c, -|mu_c|^2)``. The prototype answer's argmax does not depend on ``s``, but the
support loss the inner loop follows does: without a scale, unnormalised features make a 1-shot
support set fit before the first step, and the loop has no gradient to follow. The scale is a
meta-parameter only; the inner loop adapts the head it initialises.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from innerloop.adaptation import (
    InnerLoop,
    Params,
    Predictions,
    SharedPrefix,
    adapt_and_predict,
    adapt_prepared,
    predict_adapted,
    prepare,
)
from innerloop.loop_choice import Candidate, normalise_candidates, predict_chosen, score
from innerloop.models import (
    ArchConfig,
    apply_layer,
    body_parameters,
    build_body,
    feature_dim,
    warp_parameter_names,
)
from innerloop.scopes import HEAD_LOG_SCALE, frozen_for_scope, scope_of

HEADS = ("proto", "zero", "none")
TASKS = ("classification", "regression")
MASKED_LOGIT = -1.0e4  # finite, so masked ways never produce NaN gradients
# Images per piece when the shared prefix runs on the CPU. Measured on a 2-core AMD EPYC, one
# thread, shipped omniglot Conv4, 640 images (32 five-way one-shot requests): 0.41-0.45 ms per
# image in pieces of 16, 0.47-0.82 in pieces of 32-64 (varying from run to run), 0.82 at 128
# and 1.04-1.14 at 320-640, once activations outgrow the cache (benchmarks/bench_arithmetic.py).
PREFIX_CHUNK = 16


@dataclass(frozen=True)
class InnerDefaults:
    """The inner loop a checkpoint was meta-trained with, used unless a request overrides it."""

    steps: int = 5
    lr: float = 0.4
    optimizer: str = "sgd"
    tolerance: float = 0.0  # early stop: see InnerLoop.tolerance (serving and evaluation)
    # loops a request may choose among by holding out support examples (innerloop.loop_choice);
    # empty: the choice is off. Normalised: sorted, with 0 steps and (steps, lr) among them.
    candidates: tuple[Candidate, ...] = ()
    choice_folds: int = 2  # held-out rounds (one example per label each)

    def __post_init__(self) -> None:
        if isinstance(self.choice_folds, bool) or not isinstance(self.choice_folds, int):
            raise ValueError(f"choice_folds must be an integer, got {self.choice_folds!r}")
        if self.choice_folds < 1:
            raise ValueError(f"choice_folds must be >= 1, got {self.choice_folds}")
        normalised = normalise_candidates(self.candidates, (self.steps, float(self.lr)))
        object.__setattr__(self, "candidates", normalised)

    def loop(self, steps: int | None = None, first_order: bool = True) -> InnerLoop:
        return InnerLoop(
            self.steps if steps is None else steps,
            self.optimizer,
            first_order,
            tolerance=self.tolerance,
        )


class Learner:
    """Meta-parameters plus everything needed to adapt them; what a checkpoint stores."""

    def __init__(
        self,
        arch: ArchConfig,
        task: str,
        head: str,
        params: Params,
        step_sizes: Params,
        inner: InnerDefaults,
        frozen: frozenset[str] = frozenset(),
        max_ways: int = 50,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task {task!r} is not one of {TASKS}")
        if head not in HEADS:
            raise ValueError(f"head {head!r} is not one of {HEADS}")
        if (task == "regression") != (head == "none"):
            raise ValueError("regression models use head='none'; classifiers need a head")
        self.arch = arch
        self.task = task
        self.head = head
        self.body: nn.Sequential = build_body(arch)
        self.params = params
        self.step_sizes = step_sizes
        self.inner = inner
        self.frozen = frozen
        self.max_ways = max_ways

    @classmethod
    def create(
        cls,
        arch: ArchConfig,
        head: str = "proto",
        inner: InnerDefaults | None = None,
        learn_step_sizes: bool = False,
        max_ways: int = 50,
        seed: int = 0,
        head_scale: float | None = None,
    ) -> Learner:
        """A freshly initialised learner (random body; zero shared head for ``zero``).

        ``head_scale``: give a ``proto`` head a meta-learned logit scale starting at this value.
        """
        task = "classification" if arch.is_image_model else "regression"
        head = head if task == "classification" else "none"
        torch.manual_seed(seed)
        body = build_body(arch)
        params = body_parameters(body)
        if head == "zero":
            dim = feature_dim(arch, body)
            params["head.weight"] = torch.zeros(dim)
            params["head.bias"] = torch.zeros(1)
        if head_scale is not None:
            if head != "proto":
                raise ValueError(f"a learned head scale needs the proto head, not {head!r}")
            if not head_scale > 0:
                raise ValueError(f"the head scale must be > 0, got {head_scale}")
            params[HEAD_LOG_SCALE] = torch.tensor(math.log(head_scale))
        inner = inner or InnerDefaults()
        # warp-layers (WarpGrad) and the head's scale are meta-learned but never adapted
        frozen = warp_parameter_names(params) | ({HEAD_LOG_SCALE} & params.keys())
        learner = cls(arch, task, head, params, {}, inner, frozen, max_ways=max_ways)
        learner.step_sizes = learner.initial_step_sizes(learned=learn_step_sizes)
        return learner

    # ---- shapes -------------------------------------------------------------------------
    def head_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the per-task head step sizes (broadcast over ways)."""
        if self.head == "none":
            return {}
        dim = feature_dim(self.arch, self.body)
        return {"head.weight": (1, dim), "head.bias": (1,)}

    def initial_step_sizes(self, learned: bool) -> Params:
        """One step size per adapted tensor: a scalar, or a full tensor for Meta-SGD."""
        shapes = {k: tuple(v.shape) for k, v in self.params.items() if k.startswith("body.")}
        shapes.update(self.head_shapes())
        lr = self.inner.lr
        return {
            name: torch.full(shape if learned else (), lr)
            for name, shape in shapes.items()
            if name not in self.frozen
        }

    @property
    def head_scale(self) -> float | None:
        """The proto head's meta-learned logit scale, if it has one."""
        log_scale = self.params.get(HEAD_LOG_SCALE)
        return None if log_scale is None else float(log_scale.detach().exp())

    @property
    def learned_step_sizes(self) -> bool:
        return any(v.dim() > 0 for v in self.step_sizes.values())

    # ---- the AdaptableModel protocol ------------------------------------------------------
    def features(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        body = {k[len("body.") :]: v for k, v in params.items() if k.startswith("body.")}
        out: Tensor = functional_call(self.body, body, (x,))
        return out

    def task_parameters(
        self,
        meta_params: Params,
        support_x: Tensor,
        support_y: Tensor,
        support_weight: Tensor,
        class_mask: Tensor,
    ) -> Params:
        params = {k: v for k, v in meta_params.items() if not k.startswith("head.")}
        ways = class_mask.shape[-1]
        if self.head == "proto":
            feats = self.features(meta_params, support_x)
            onehot = F.one_hot(support_y, ways).to(feats.dtype) * support_weight[:, None]
            counts = onehot.sum(0).clamp_min(1e-6)
            protos = (onehot.T @ feats) / counts[:, None]
            scale = meta_params[HEAD_LOG_SCALE].exp() if HEAD_LOG_SCALE in meta_params else 1.0
            params["head.weight"] = 2.0 * scale * protos
            params["head.bias"] = -scale * (protos * protos).sum(-1)
        elif self.head == "zero":
            dim = meta_params["head.weight"].shape[-1]
            params["head.weight"] = meta_params["head.weight"].expand(ways, dim)
            params["head.bias"] = meta_params["head.bias"].expand(ways)
        return params

    def adapted_names(self, params: Mapping[str, Tensor]) -> list[str]:
        return [k for k in params if k not in self.frozen]

    def forward(self, params: Params, x: Tensor, class_mask: Tensor) -> Tensor:
        out = self.features(params, x)
        if self.head == "none":
            return out
        logits = out @ params["head.weight"].T + params["head.bias"]
        return logits.masked_fill(~class_mask, MASKED_LOGIT)

    def loss(self, outputs: Tensor, y: Tensor, weight: Tensor) -> Tensor:
        if self.task == "classification":
            per_item = F.cross_entropy(outputs, y, reduction="none")
        else:
            per_item = ((outputs - y) ** 2).mean(-1)
        return (per_item * weight).sum() / weight.sum().clamp_min(1e-6)

    # ---- sharing what no task changes -----------------------------------------------------
    def shared_layers(self) -> int:
        """How many leading body layers hold no adapted parameter (the shared prefix)."""
        adapted = {int(k.split(".")[1]) for k in self.step_sizes if k.startswith("body.")}
        return min(adapted) if adapted else len(self.body)

    def split_shared(
        self, meta_params: Params, step_sizes: Mapping[str, Tensor]
    ) -> SharedPrefix | None:
        """The body split before its first adapted layer (see :class:`SharedPrefix`).

        ``None`` when the first layer adapts (MAML's ``all``): nothing to share.
        """
        split = self.shared_layers()
        if split == 0:
            return None
        prefix_body, rest = self._split_structure(split)
        layer_params: list[dict[str, Tensor]] = [{} for _ in prefix_body]
        for k, v in meta_params.items():
            if not _after(k, split):
                _, layer, name = k.split(".", 2)
                # channels-last weights and activations: MKL-DNN convolutions ran 1.3x and max
                # pooling 5.6x faster than NCHW here (benchmarks/bench_arithmetic.py)
                layer_params[int(layer)][name] = channels_last(v) if v.dim() == 4 else v

        def run(x: Tensor) -> Tensor:
            for layer, params in zip(prefix_body, layer_params, strict=True):
                if x.dim() == 4:
                    x = channels_last(x)
                x = apply_layer(layer, params, x)
            return x.contiguous()

        def prefix(x: Tensor) -> Tensor:
            if x.device.type != "cpu" or x.dim() != 4 or x.shape[0] <= PREFIX_CHUNK:
                return run(x)
            return torch.cat([run(piece) for piece in x.split(PREFIX_CHUNK)])

        params = {_shift(k, split): v for k, v in meta_params.items() if _after(k, split)}
        steps = {_shift(k, split): v for k, v in step_sizes.items()}
        adapts_convolutions = any(
            isinstance(rest.body[_layer(k) or 0], nn.Conv2d) for k in steps if _layer(k) is not None
        )
        return SharedPrefix(prefix, rest, params, steps, "auto" if adapts_convolutions else "vmap")

    def _split_structure(self, split: int) -> tuple[nn.Sequential, Learner]:
        """The prefix template and the rest as a learner, built once per split point."""
        cache: dict[int, tuple[nn.Sequential, Learner]] = self.__dict__.setdefault(
            "_split_cache", {}
        )
        key = split
        if key not in cache or cache[key][1].frozen != self._rest_frozen(split):
            layers = list(self.body)
            rest = Learner(
                self.arch,
                self.task,
                self.head,
                {},
                {},
                self.inner,
                self._rest_frozen(split),
                self.max_ways,
            )
            rest.body = nn.Sequential(*layers[split:])
            cache[key] = (nn.Sequential(*layers[:split]), rest)
        return cache[key]

    def _rest_frozen(self, split: int) -> frozenset[str]:
        return frozenset(_shift(k, split) for k in self.frozen if _after(k, split))

    # ---- the one call that evaluation and serving make ------------------------------------
    def scaled_step_sizes(self, lr: float | None) -> Params:
        """Step sizes for a requested ``lr``: learned ones are scaled by ``lr / default lr``."""
        if lr is None:
            return self.step_sizes
        scale = lr / self.inner.lr
        return {k: v * scale for k, v in self.step_sizes.items()}

    def adapt_and_predict(
        self,
        support_x: Tensor,
        support_y: Tensor,
        support_weight: Tensor,
        class_mask: Tensor,
        query_x: Tensor,
        steps: int | None = None,
        lr: float | None = None,
        keep_params: bool = False,
        choose: bool | None = None,
    ) -> Predictions:
        """Adapt a batch of tasks (leading dim) and predict their queries, without a graph.

        ``choose`` picks each task's loop among the card's candidates from its support set
        (:mod:`innerloop.loop_choice`); ``None`` chooses exactly when the caller names no loop
        (no ``steps``, no ``lr``) and the card turns the choice on. Tasks that cannot choose run
        ``steps``/``lr`` (the card's loop by default).
        """
        if choose is None:
            choose = steps is None and lr is None
        if choose and self.choice_on:
            return self._choose_and_predict(
                support_x, support_y, support_weight, class_mask, query_x, steps, lr, keep_params
            )
        loop = self.inner.loop(steps, first_order=True)
        with torch.no_grad():
            return adapt_and_predict(
                self,
                self.params,
                self.scaled_step_sizes(lr),
                support_x,
                support_y,
                support_weight,
                class_mask,
                query_x,
                loop,
                keep_params=keep_params,
            )

    @property
    def choice_on(self) -> bool:
        """Whether requests that name no loop choose one (classification cards only)."""
        return self.task == "classification" and bool(self.inner.candidates)

    def _choose_and_predict(
        self,
        support_x: Tensor,
        support_y: Tensor,
        support_weight: Tensor,
        class_mask: Tensor,
        query_x: Tensor,
        steps: int | None,
        lr: float | None,
        keep_params: bool,
    ) -> Predictions:
        """The shared prefix runs once; every candidate and fold adapts what is after it."""
        with torch.no_grad():
            prepared = prepare(self, self.params, self.step_sizes, support_x, query_x)

            # candidates of one step size share one trajectory: the answer after 10 steps is
            # on the way to the one after 20, so each fold runs each step size's longest loop
            # once and reads the shorter candidates' answers off it
            wanted: dict[float, list[int]] = {}
            for steps_c, lr_c in self.inner.candidates:
                if steps_c > 0:
                    wanted.setdefault(lr_c, []).append(steps_c)
            share = self.inner.tolerance == 0  # an early stop ends each task on its own
            trajectories: dict[float, tuple[Tensor, Tensor]] = {}  # lr -> (fold weight, outputs)

            def held_out(candidate: Candidate, weight: Tensor) -> Tensor:
                steps_c, lr_c = candidate
                scale = lr_c / self.inner.lr
                if not share or steps_c == 0:
                    loop = self.inner.loop(steps_c, first_order=True)
                    return adapt_prepared(
                        prepared,
                        support_y,
                        weight,
                        class_mask,
                        loop,
                        step_scale=scale,
                        query_x=prepared.support_x,
                    ).outputs
                counts = sorted(wanted[lr_c])
                kept = trajectories.get(lr_c)
                if kept is None or kept[0] is not weight:  # a new fold: run the longest loop
                    outputs = adapt_prepared(
                        prepared,
                        support_y,
                        weight,
                        class_mask,
                        self.inner.loop(counts[-1], first_order=True),
                        step_scale=scale,
                        query_x=prepared.support_x,
                        step_outputs=True,
                        output_steps=frozenset(counts[:-1]),
                    ).step_outputs
                    assert outputs is not None
                    kept = trajectories[lr_c] = (weight, outputs)
                return kept[1][:, counts.index(steps_c)]

            def run(candidate: Candidate, tasks: Tensor) -> Predictions:
                loop = self.inner.loop(candidate[0], first_order=True)
                return adapt_prepared(
                    prepared.subset(tasks),
                    support_y[tasks],
                    support_weight[tasks],
                    class_mask[tasks],
                    loop,
                    keep_params,
                    step_scale=candidate[1] / self.inner.lr,
                )

            choice = score(
                held_out,
                self.inner.candidates,
                support_x,
                support_y,
                support_weight,
                class_mask,
                self.inner.choice_folds,
            )
            default = (
                self.inner.steps if steps is None else steps,
                self.inner.lr if lr is None else lr,
            )
            return predict_chosen(choice, default, run)

    def predict_adapted(self, adapted: Params, query_x: Tensor, class_mask: Tensor) -> Tensor:
        """Outputs for new queries of tasks adapted earlier with ``keep_params=True``."""
        with torch.no_grad():
            return predict_adapted(self, self.params, self.step_sizes, adapted, query_x, class_mask)

    # ---- what adapts ----------------------------------------------------------------------
    def parameter_names(self) -> list[str]:
        """Meta-parameters plus the per-task head tensors the inner loop can move."""
        head = [] if self.head == "none" else ["head.weight", "head.bias"]
        return [*self.params, *(h for h in head if h not in self.params)]

    @property
    def scope(self) -> str:
        """The adaptation preset (:mod:`innerloop.scopes`) that this learner's frozen set is."""
        cached = self.__dict__.get("_scope")
        if cached is None or cached[0] != self.frozen:
            cached = (self.frozen, scope_of(self.body, self.parameter_names(), self.frozen))
            self.__dict__["_scope"] = cached
        return str(cached[1])

    def with_scope(self, scope: str) -> Learner:
        """A copy that adapts ``scope``: newly frozen step sizes are dropped, newly adapted
        tensors get the default scalar step size. ``adapters`` on a body without them adds
        them first (:meth:`with_adapters`), which changes no answer until they adapt."""
        if scope == "adapters" and not self.arch.adapters and self.arch.kind == "conv4":
            return self.with_adapters().with_scope(scope)
        frozen = frozen_for_scope(self.body, self.parameter_names(), scope)
        never_adapted = warp_parameter_names(self.params) | ({HEAD_LOG_SCALE} & self.params.keys())
        frozen |= never_adapted
        unfrozen = self.with_params(self.params)
        unfrozen.frozen = never_adapted
        defaults = unfrozen.initial_step_sizes(learned=False)
        step_sizes = {
            name: self.step_sizes.get(name, defaults[name])
            for name in defaults
            if name not in frozen
        }
        clone = self.with_params(self.params, step_sizes)
        clone.frozen = frozenset(frozen)
        return clone

    def with_adapters(self) -> Learner:
        """The same model with residual adapters (zero) and the feature map (identity) added:
        every existing tensor keeps its name, so any checkpoint can be adapted TSA-style."""
        if self.arch.adapters:
            return self
        arch = replace(self.arch, adapters=True)
        fresh = body_parameters(build_body(arch))  # zeros and an identity: no RNG involved
        params = dict(self.params)
        reference = self.params[next(iter(self.params))]
        for name, value in fresh.items():
            if name not in params:
                params[name] = value.to(reference.device, reference.dtype)
        clone = Learner(
            arch,
            self.task,
            self.head,
            params,
            dict(self.step_sizes),
            self.inner,
            self.frozen | {n for n in fresh if n not in self.params},
            self.max_ways,
        )
        return clone

    def with_params(self, params: Params, step_sizes: Params | None = None) -> Learner:
        """A copy sharing config, with other tensors (e.g. detached for saving)."""
        clone = Learner(
            self.arch,
            self.task,
            self.head,
            params,
            self.step_sizes if step_sizes is None else step_sizes,
            self.inner,
            self.frozen,
            self.max_ways,
        )
        return clone


def channels_last(x: Tensor) -> Tensor:
    """``x`` with channels-last strides, also when it has one channel.

    ``contiguous(memory_format=torch.channels_last)`` leaves a one-channel tensor (a drawing,
    the first convolution's weight) with its NCHW strides, which are channels-last as well in
    PyTorch's eyes but not in MKL-DNN's: the first convolution then ran its NCHW kernel (4.1 ms
    for 16 drawings, against 0.6 ms) and wrote NCHW activations that cost a 2.4 ms copy before
    the next layer. Explicit strides give the channels-last kernel and activations throughout.
    """
    if x.dim() != 4 or (x.is_contiguous(memory_format=torch.channels_last) and x.stride(1) == 1):
        return x
    _, c, h, w = x.shape
    out = torch.empty_strided(x.shape, (h * w * c, 1, w * c, c), dtype=x.dtype, device=x.device)
    return out.copy_(x)


def _layer(name: str) -> int | None:
    """``body.<i>.*`` -> i; ``head.*`` -> None."""
    parts = name.split(".")
    return int(parts[1]) if parts[0] == "body" else None


def _after(name: str, split: int) -> bool:
    """Whether a parameter belongs to the rest of a body split at ``split`` (head included)."""
    layer = _layer(name)
    return layer is None or layer >= split


def _shift(name: str, split: int) -> str:
    """Rename ``body.<i>.*`` to ``body.<i - split>.*`` (the rest of a split body)."""
    layer = _layer(name)
    if layer is None:
        return name
    rest = name.split(".", 2)[2]
    return f"body.{layer - split}.{rest}"
