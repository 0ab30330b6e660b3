"""What every meta-learner shares: the outer optimiser, its per-method defaults, the query
metrics, the :class:`MetaAlgorithm` base and the helpers of the trajectory-based methods.

All meta-learners adapt through :func:`innerloop.adaptation.adapt_and_predict` / :func:`adapt`,
the same functions the server calls; they differ only in what flows back to the meta-parameters
(the methods themselves: ``maml.py``, ``reptile.py``, ``leap.py``, ``warpgrad.py``,
``baselines.py``; their names: the registry in ``__init__.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.func import vmap

from innerloop.adaptation import InnerLoop
from innerloop.learner import Learner
from innerloop_training.tasks import TaskBatch

OUTER_OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class OuterConfig:
    """The outer (meta) optimiser; ``grad_clip`` 0 or None means no clipping."""

    optimizer: str = "adam"
    lr: float = 1e-3
    grad_clip: float | None = 10.0

    def build(self, groups: list[Tensor] | list[dict[str, Any]]) -> torch.optim.Optimizer:
        """``groups``: tensors, or torch parameter groups (a group may carry its own ``lr``)."""
        if self.optimizer == "adam":
            return torch.optim.Adam(groups, lr=self.lr)
        if self.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=self.lr)
        raise ValueError(f"outer optimizer {self.optimizer!r} is not one of {OUTER_OPTIMIZERS}")


def default_outer(name: str) -> OuterConfig:
    """Each method's outer optimiser when none is given, as in its paper / reference code.

    - ``reptile``: plain SGD on ``init - mean(adapted)`` with no clipping, i.e. Reptile's own
      update ``init += lr * (mean(adapted) - init)``; lr 0.1 as in the Leap/WarpGrad reference
      runs of Reptile (``src/omniglot/run_multi.py``, ``get_model_config``).
    - ``leap``, ``warp``, ``warp-leap``: SGD, lr 0.1, no clipping (the reference Omniglot script
      ``src/omniglot/main.py``: ``--outer_opt sgd --outer_kwargs lr 0.1``).
    - ``ft``: SGD, lr 0.1, no clipping: the reference trains the multi-headed baseline with its
      task optimiser (``--inner_opt sgd --inner_kwargs lr 0.1``, ``FtWrapper``).
    - everything else (MAML family, ``no``): Adam 1e-3 with the global norm clipped at 10,
      this project's long-standing setting (recorded in every card).
    """
    if name in ("reptile", "leap", "warp", "warp-leap", "ft"):
        return OuterConfig("sgd", 0.1, None)
    return OuterConfig("adam", 1e-3, 10.0)


def resolve_outer(
    name: str, optimizer: str | None, lr: float | None, grad_clip: float | None
) -> OuterConfig:
    """The method's :func:`default_outer`, with every knob the user gave replacing its default
    (``grad_clip`` 0 turns clipping off)."""
    default = default_outer(name)
    return OuterConfig(
        optimizer if optimizer is not None else default.optimizer,
        lr if lr is not None else default.lr,
        (grad_clip or None) if grad_clip is not None else default.grad_clip,
    )


def query_metrics(learner: Learner, outputs: Tensor, query_y: Tensor) -> tuple[Tensor, Tensor]:
    """Mean query loss over all tasks, and accuracy (classification) or MSE (regression)."""
    flat_out, flat_y = outputs.flatten(0, 1), query_y.flatten(0, 1)
    loss = learner.loss(flat_out, flat_y, torch.ones(flat_y.shape[0], device=flat_y.device))
    if learner.task == "classification":
        score = (flat_out.argmax(-1) == flat_y).float().mean()
    else:
        score = loss.detach()
    return loss, score


class MetaAlgorithm(ABC):
    """Owns the outer optimiser over the learner's meta-parameters (and learned step sizes)."""

    name: str = ""

    def __init__(self, learner: Learner, loop: InnerLoop, outer: OuterConfig) -> None:
        self.learner = learner
        self.loop = loop
        self.outer = outer
        for tensor in self.meta_tensors().values():
            tensor.requires_grad_(True)
        self.optimizer = outer.build(self.param_groups())

    def meta_tensors(self) -> dict[str, Tensor]:
        """Everything the outer optimiser updates, keyed for resumable optimiser state."""
        return {f"param/{k}": v for k, v in self.learner.params.items()}

    def param_groups(self) -> list[dict[str, Any]]:
        """The outer optimiser's groups, in :meth:`meta_tensors` order (one group by default;
        WarpGrad gives its warp-layers their own step size)."""
        return [{"params": list(self.meta_tensors().values())}]

    @abstractmethod
    def step(self, batch: TaskBatch) -> dict[str, float]:
        """One outer update from a meta-batch; returns metrics for the log."""

    def _apply(self) -> float:
        tensors = list(self.meta_tensors().values())
        if self.outer.grad_clip:
            norm = float(torch.nn.utils.clip_grad_norm_(tensors, self.outer.grad_clip))
        else:  # logged all the same: the norm is how a too-large outer step shows up
            grads = [t.grad.detach().norm() for t in tensors if t.grad is not None]
            norm = float(torch.stack(grads).norm()) if grads else 0.0
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm


# ---- shared by the trajectory-based methods (Reptile, Leap, WarpGrad) ----------------------
def map_tasks(fn: Callable[..., Any], tensors: tuple[Any, ...], batching: str = "auto") -> Any:
    """``fn`` over the leading task dim of ``tensors``, outputs stacked along a new dim 0.

    ``tensors`` are tensors or dicts of tensors (pytrees); the first must be a tensor.

    ``auto`` follows :func:`~innerloop.adaptation.adapt_and_predict`: a Python loop for
    convolutional models on CPU (where vmapped convolutions are slower), ``vmap`` otherwise.
    """
    if batching == "auto":
        convolutional = tensors[0].dim() == 5  # [tasks, shots, channels, height, width]
        batching = "loop" if convolutional and not tensors[0].is_cuda else "vmap"
    if batching == "vmap":
        return vmap(fn, randomness="same")(*tensors)
    if batching != "loop":
        raise ValueError(f"batching {batching!r} is not one of ('auto', 'vmap', 'loop')")
    outputs = [fn(*(_index(t, i) for t in tensors)) for i in range(tensors[0].shape[0])]
    return _stack(outputs)


def _index(tree: Any, i: int) -> Any:
    if isinstance(tree, dict):
        return {k: _index(v, i) for k, v in tree.items()}
    return tree[i]


def _stack(items: list[Any]) -> Any:
    """Stack a list of equally shaped pytrees (tensors, dicts, lists, tuples) leaf by leaf."""
    first = items[0]
    if isinstance(first, Tensor):
        return torch.stack(items)
    if isinstance(first, dict):
        return {k: _stack([item[k] for item in items]) for k in first}
    if isinstance(first, list | tuple):
        return type(first)(_stack(list(parts)) for parts in zip(*items, strict=True))
    raise TypeError(f"cannot stack {type(first).__name__}")


def support_and_query(batch: TaskBatch) -> tuple[Tensor, Tensor, Tensor]:
    """Each task's support and query rows together (padded support rows keep weight 0)."""
    x = torch.cat([batch.support_x, batch.query_x], dim=1)
    y = torch.cat([batch.support_y, batch.query_y], dim=1)
    query_weight = torch.ones(
        batch.query_x.shape[:2],
        dtype=batch.support_weight.dtype,
        device=batch.support_weight.device,
    )
    return x, y, torch.cat([batch.support_weight, query_weight], dim=1)


def set_gradients(tensors: Mapping[str, Tensor], grads: Mapping[str, Tensor]) -> None:
    """Hand precomputed meta-gradients to the outer optimiser (``None``: not updated)."""
    for name, tensor in tensors.items():
        grad = grads.get(name)
        tensor.grad = None if grad is None else grad.detach().to(tensor.dtype).clone()


def apply_if_finite(algorithm: MetaAlgorithm) -> float:
    """The outer step, skipped (gradients dropped) when any gradient is NaN or infinite."""
    tensors = list(algorithm.meta_tensors().values())
    if all(t.grad is None or bool(torch.isfinite(t.grad).all()) for t in tensors):
        return algorithm._apply()
    algorithm.optimizer.zero_grad(set_to_none=True)
    return float("nan")
