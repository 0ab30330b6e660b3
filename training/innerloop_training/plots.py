"""Figures people would rather look at than read: training curves and adapted regression curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from innerloop.learner import Learner
from innerloop_training.data.regression import RegressionTaskFamily

if TYPE_CHECKING:
    from innerloop_training.evaluation import EvaluationResult
    from innerloop_training.trainer import Trainer


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curve(log_path: Path, out: Path, title: str) -> Path:
    """Query loss (smoothed) and validation score against meta-steps."""
    plt = _pyplot()
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    steps = np.array([r["step"] for r in records])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    key = "query_loss" if "query_loss" in records[0] else "support_loss_after"
    values = np.array([r.get(key, np.nan) for r in records], dtype=float)
    window = max(1, len(values) // 50)
    smooth = np.convolve(values, np.ones(window) / window, mode="valid")
    left.plot(steps, values, alpha=0.25, color="tab:blue")
    left.plot(steps[window - 1 :], smooth, color="tab:blue")
    left.set(xlabel="meta-step", ylabel=key.replace("_", " "), title="meta-training loss")
    val = [
        (r["step"], v) for r in records for k, v in r.items() if k in ("val_accuracy", "val_mse")
    ]
    if val:
        right.plot(*zip(*val, strict=True), marker="o", color="tab:green")
        metric = "val_accuracy" if any("val_accuracy" in r for r in records) else "val_mse"
        right.set(xlabel="meta-step", ylabel=metric.replace("_", " "), title="validation")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_regression_adaptation(
    learner: Learner,
    family: RegressionTaskFamily,
    out: Path,
    shots: int = 10,
    tasks: int = 3,
    seed: int = 0,
    baseline: Learner | None = None,
) -> Path:
    """Like the MAML paper's sine figure: truth, support points, pre- and post-adaptation fits."""
    plt = _pyplot()
    generator = torch.Generator().manual_seed(seed)
    batch = family.sample(tasks, shots, 0, generator)
    grid = torch.linspace(*family.x_range, 200).reshape(1, -1, 1).expand(tasks, -1, -1)
    weight = torch.ones(tasks, shots)
    mask = torch.ones(tasks, 1, dtype=torch.bool)
    adapted = learner.adapt_and_predict(batch.support_x, batch.support_y, weight, mask, grid)
    before = learner.adapt_and_predict(
        batch.support_x, batch.support_y, weight, mask, grid, steps=0
    )
    other = (
        baseline.adapt_and_predict(batch.support_x, batch.support_y, weight, mask, grid)
        if baseline is not None
        else None
    )
    fig, axes = plt.subplots(1, tasks, figsize=(4.2 * tasks, 3.4), squeeze=False)
    xs = grid[0, :, 0].numpy()
    for i, ax in enumerate(axes[0]):
        ax.plot(xs, np.asarray(family.function(batch.params[i], xs)), color="black", label="truth")
        ax.plot(xs, before.outputs[i, :, 0].numpy(), "--", color="tab:gray", label="meta-init")
        ax.plot(
            xs,
            adapted.outputs[i, :, 0].numpy(),
            color="tab:red",
            label=f"after {learner.inner.steps} step{'s' if learner.inner.steps != 1 else ''}",
        )
        if other is not None:
            ax.plot(
                xs,
                other.outputs[i, :, 0].numpy(),
                ":",
                color="tab:blue",
                label="no meta-training, same steps",
            )
        ax.scatter(
            batch.support_x[i, :, 0],
            batch.support_y[i, :, 0],
            color="tab:orange",
            zorder=3,
            label=f"{shots} support points",
        )
        ax.set(xlabel="x", ylabel="y")
    axes[0][0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _setting(result: EvaluationResult, key: str) -> int:
    value = result.settings.get(key)
    return value if isinstance(value, int) else 1


def plot_ways_and_shots(results: list[EvaluationResult], out: Path, title: str) -> Path:
    """Mean score against ways, one line per shots value, 95% CI as a band: how far one
    checkpoint stretches (it serves any N up to its ``max_ways``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    metric = results[0].metric if results else "accuracy"
    for shots in sorted({_setting(r, "shots") for r in results}):
        rows = sorted(
            (_setting(r, "ways"), r.mean, r.ci95) for r in results if r.settings["shots"] == shots
        )
        ways, means, cis = (np.array(column, dtype=float) for column in zip(*rows, strict=True))
        scale = 100.0 if metric == "accuracy" else 1.0
        ax.plot(ways, means * scale, marker="o", label=f"{shots}-shot")
        ax.fill_between(ways, (means - cis) * scale, (means + cis) * scale, alpha=0.2)
        for w, m in zip(ways, means, strict=True):
            ax.annotate(
                f"{m * scale:.1f}",
                (w, m * scale),
                fontsize=7,
                xytext=(3, 4),
                textcoords="offset points",
            )
    ax.set_xscale("log")
    ax.minorticks_off()  # log-scale minor labels ("3x10^0") would crowd the ways we measured
    ticks = sorted({_setting(r, "ways") for r in results})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set(
        xlabel="ways (classes per task)",
        ylabel="query accuracy (%)" if metric == "accuracy" else metric,
        title=title,
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_run(trainer: Trainer) -> list[Path]:
    """All figures of a finished training run, into its run folder."""
    config = trainer.config
    figures = [
        plot_training_curve(
            trainer.log_path,
            trainer.run_path / "training_curve.png",
            f"{config.algorithm} on {config.dataset}",
        )
    ]
    if config.is_regression:
        from innerloop_training.data.registry import load_task_family
        from innerloop_training.trainer import build_learner

        figures.append(
            plot_regression_adaptation(
                trainer.learner,
                load_task_family(config.dataset),
                trainer.run_path / "adaptation.png",
                shots=config.shots,
                baseline=build_learner(config),
            )
        )
    return figures
