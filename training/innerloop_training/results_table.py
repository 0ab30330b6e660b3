"""The README's results tables, written from the shipped checkpoints' cards.

Every number in the tables is an evaluation that ``innerloop evaluate --record`` stored in a
card, so the README cannot drift from the checkpoints: ``--check`` (run by the tests) fails when
the README's block differs from what the cards say, and ``--write`` rewrites it. Anchors and
targets are the published numbers the issue tracker holds us to; they live here, next to the
code that prints them, with their sources.

    python -m innerloop_training.results_table --write README.md
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

from innerloop.checkpoint import read_card

BEGIN = "<!-- results:begin (python -m innerloop_training.results_table --write README.md) -->"
END = "<!-- results:end -->"

FINN = "Finn et al. 2017"
OMNIGLOT_ANCHORS: dict[tuple[int, int], tuple[float, str]] = {
    # (ways, shots): (our target, the published numbers it is set against)
    (5, 1): (99.0, f"98.7 MAML ({FINN}); 99.5 Meta-SGD (Li et al. 2017)"),
    (5, 5): (99.7, f"99.9 MAML ({FINN})"),
    (20, 1): (96.0, f"95.8 MAML ({FINN})"),
    (20, 5): (99.0, f"98.9 MAML ({FINN})"),
}
FFL = "Fast Forward Labs, *Learning to learn* report, MAML Conv4, 100 images per class"
QUICKDRAW_ANCHORS: dict[tuple[int, int], tuple[float, str]] = {
    (5, 1): (70.0, f"68.3 ({FFL})"),
    (5, 5): (86.0, f"82.6 ({FFL})"),
}
REGRESSION_GAIN_TARGET = 5.0


def shipped_checkpoints(folder: Path) -> list[Path]:
    """The checkpoints git tracks in ``folder``: the shipped ones, not what a user trained into
    it (``innerloop train --out checkpoints/...``). Outside a git checkout, every file."""
    every = sorted(folder.glob("*.safetensors"))
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--", "."],
            cwd=folder,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        return every
    tracked = {name for name in listed.split("\0") if name and "/" not in name}
    return [path for path in every if path.name in tracked]


def load_cards(folder: Path) -> dict[str, dict[str, Any]]:
    return {path.stem: read_card(path) for path in shipped_checkpoints(folder)}


def _dataset(card: dict[str, Any]) -> str:
    return str(card.get("training", {}).get("config", {}).get("dataset", "?"))


def _cell(result: dict[str, Any], key: str) -> str:
    """``mean ± ci`` in points, or ``–`` when the card lacks it (recorded before it existed)."""
    if not result or key not in result:
        return "–"
    ci = result.get("ci95" if key == "mean" else key.replace("accuracy", "ci95"), 0.0)
    return f"{100 * result[key]:.1f} ± {100 * ci:.1f}"


def _gain(result: dict[str, Any]) -> str:
    if not result or "gain" not in result:
        return "–"
    return f"{100 * result['gain']:+.1f} ± {100 * result['gain_ci95']:.1f}"


def _served(card: dict[str, Any]) -> str:
    """The loop the server runs, as the card states it."""
    loop = card.get("inner_loop", {})
    scope = card.get("adaptation", {}).get("scope", "all")
    steps = int(loop.get("steps", 0))
    default = (
        "0 steps (the prototype answer)"
        if steps == 0
        else f"{steps} steps of lr {loop.get('lr')}, scope {scope}"
    )
    candidates = loop.get("candidates") or []
    if not candidates or card.get("task") != "classification":
        return default
    loops = ", ".join(f"{int(s)} steps of lr {lr:g}" for s, lr in candidates)
    return (
        f"per request, the loop its held-out support examples choose among {loops} (scope "
        f"{scope}); {default} where a label has one example"
    )


def _minutes(training: dict[str, Any]) -> float:
    """Wall-clock minutes of the whole run, warm-start stages included."""
    return sum(float(stage.get("seconds", 0.0)) for stage in _stages(training)) / 60.0


def _stages(training: dict[str, Any]) -> list[dict[str, Any]]:
    """The training commands in the order they ran (``--init`` stages first)."""
    stages = [training]
    history = training.get("init")
    while history:
        stages.insert(0, history)
        history = history.get("init")
    return stages


def _how_made(name: str, card: dict[str, Any]) -> str:
    training = card.get("training", {})
    stages = _stages(training)
    steps = [int(stage.get("meta_steps_done", 0)) for stage in stages]
    algorithms = " then ".join(dict.fromkeys(str(s.get("algorithm")) for s in stages))
    shown = f"{sum(steps):,}" + (
        f" ({' + '.join(f'{n:,}' for n in steps)})" if len(steps) > 1 else ""
    )
    stages_note = (
        f" in {len(stages)} stages (the commands below, in order)" if len(steps) > 1 else ""
    )
    return (
        f"`{name}`: {algorithms}, {shown} meta-steps{stages_note}, {_minutes(training):.0f} min "
        f"on {training.get('hardware', 'unknown hardware')}"
    )


# Trajectory methods whose defaults changed to the papers' (SGD 0.1 outer steps, no clipping,
# WarpGrad's per-meta-batch buffer); cards from before record a command that relied on the old
# defaults (Adam, clip 10, a FIFO buffer), so rendering it verbatim would not remake the model.
_PAPER_DEFAULTS_ALGORITHMS = ("reptile", "leap", "warp", "warp-leap")


def _with_then_defaults(stage: dict[str, Any]) -> str:
    """The stage's command, plus the flags that spell out defaults it relied on and that have
    changed since (only for cards from before the change: their config lacks ``grad_clip``).

    WarpGrad's old buffer also replayed each trajectory's end point, which no flag restores,
    so a remade ``warp``/``warp-leap`` checkpoint is close to, not equal to, the shipped one.
    """
    command = str(stage["command"])
    config = stage.get("config", {})
    algorithm = stage.get("algorithm")
    if algorithm not in _PAPER_DEFAULTS_ALGORITHMS or "grad_clip" in config:
        return command
    extra = []
    if "--outer-optimizer" not in command:
        extra.append(f"--outer-optimizer {config.get('outer_optimizer', 'adam')}")
    if "--outer-lr" not in command:
        extra.append(f"--outer-lr {config.get('outer_lr', 0.001)}")
    extra.append("--grad-clip 10")
    if algorithm in ("warp", "warp-leap"):
        extra.append("--warp-buffer fifo --warp-buffer-size 200 --warp-batch 16 --warp-updates 1")
        if algorithm == "warp-leap":
            extra.append("--warp-leap-loss")
    return " ".join([command, *extra])


def _commands(card: dict[str, Any]) -> list[str]:
    """How to remake the checkpoint: its training stages in order, then its inner-loop tuning."""
    stages = _stages(card.get("training", {}))
    commands = [_with_then_defaults(stage) for stage in stages if stage.get("command")]
    tuning = card.get("inner_loop_tuning", {}).get("command")
    return [*commands, str(tuning)] if tuning else commands


def _evaluate_command(name: str, card: dict[str, Any], dataset: str) -> str | None:
    commands = _evaluate_commands(name, card, dataset)
    return commands[0] if commands else None


def _evaluate_commands(name: str, card: dict[str, Any], dataset: str) -> list[str]:
    """One ``innerloop evaluate`` per (task source, protocol) recorded in the card, each giving
    every (ways, shots) of that group; the checkpoint's own source first."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for key, result in card.get("evaluation", {}).items():
        parts = key.split("/")
        if len(parts) < 3 or parts[1] != "test" or key.endswith("/untrained"):
            continue
        if any(p.startswith("scope-") for p in parts[3:]):
            continue
        within = "within-alphabet" if "within-alphabet" in parts[3:] else ""
        groups.setdefault((parts[0], within, -int(result["episodes"])), []).append(result)
    commands = []
    for (source, within, fewer), settings in sorted(
        groups.items(), key=lambda g: (g[0][0] != dataset, g[0])
    ):
        ways = sorted({int(s["ways"]) for s in settings if s.get("ways")})
        shots = sorted({int(s["shots"]) for s in settings})
        episodes = -fewer
        grid = f"--ways {' '.join(map(str, ways))} " if ways else ""
        steps = {s.get("steps") for s in settings}
        step_flag = f" --steps {steps.pop()}" if source in ("sine", "logistic") else ""
        flag = " --within-alphabet" if within else ""
        commands.append(
            f"innerloop evaluate checkpoints/{name}.safetensors --dataset {source} {grid}"
            f"--shots {' '.join(map(str, shots))}{flag}{step_flag} --episodes {episodes}"
        )
    return commands


DATASET_TITLES = {"omniglot": "Omniglot", "quickdraw": "Quick Draw", "folder": "a folder"}
WITHIN_ALPHABET_TARGETS: dict[tuple[int, int], float] = {(20, 1): 95.0}
GAIN_TARGETS: dict[tuple[str, str, int, int], str] = {
    # (model's dataset, task source, ways, shots): the adaptation-gain target
    ("quickdraw", "quickdraw", 5, 5): "≥ +1",
    ("omniglot", "quickdraw", 5, 5): "≥ +3",
    ("quickdraw", "omniglot", 5, 5): "≥ +3",
}


def _row(
    label: str, result: dict[str, Any], target: str, gain_target: str, anchor: str = ""
) -> str:
    return (
        f"| {label} | {_cell(result, 'mean')} | {_cell(result, 'prototype_accuracy')} | "
        f"{_gain(result)} | {target} | {gain_target} | {anchor} |"
    )


def _classification_section(
    title: str,
    dataset: str,
    cards: dict[str, dict[str, Any]],
    anchors: dict[tuple[int, int], tuple[float, str]],
) -> list[str]:
    names = sorted(
        (
            n
            for n, c in cards.items()
            if c.get("task") == "classification" and _dataset(c) == dataset
        ),
        key=lambda n: (n != dataset, n),
    )
    if not names:
        return []
    lines = [title, ""]
    lines.append(
        "| model, task | served loop | prototype baseline | gain | target | gain target | anchor |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---|")
    for name in names:
        main = name == names[0]  # targets and anchors are for the first (the dataset's) model
        evaluation = cards[name].get("evaluation", {})
        for (ways, shots), (target, anchor) in anchors.items():
            result = evaluation.get(f"{dataset}/test/{ways}way{shots}shot", {})
            if not result and not main:
                continue
            gain_target = GAIN_TARGETS.get((dataset, dataset, ways, shots), "≥ 0")
            label = f"`{name}`, {ways}-way {shots}-shot"
            shown = (f"{target:.1f}", anchor) if main else ("", "")
            lines.append(_row(label, result, shown[0], gain_target, shown[1]))
        for (ways, shots), target in WITHIN_ALPHABET_TARGETS.items():
            result = evaluation.get(f"{dataset}/test/{ways}way{shots}shot/within-alphabet", {})
            if result:
                label = f"`{name}`, {ways}-way {shots}-shot, within one alphabet"
                bar = f"{target:.1f}" if main else ""
                lines.append(_row(label, result, bar, "≥ 0", "Lake et al.'s protocol"))
        for source in (d for d in DATASET_TITLES if d != dataset):
            for (ways, shots), _ in anchors.items():
                result = evaluation.get(f"{source}/test/{ways}way{shots}shot", {})
                if result:
                    gain_target = GAIN_TARGETS.get((dataset, source, ways, shots), "")
                    label = (
                        f"`{name}` on {DATASET_TITLES[source]} (domain shift), "
                        f"{ways}-way {shots}-shot"
                    )
                    lines.append(_row(label, result, "", gain_target, "never trained on it"))
    lines += ["", "How each was made and what it serves (from its card):", ""]
    lines += [f"- {_how_made(n, cards[n])}; serves {_served(cards[n])}" for n in names]
    lines += ["", "```bash"]
    for name in names:
        lines += _commands(cards[name])
        lines += _evaluate_commands(name, cards[name], dataset)
    lines += ["```", ""]
    return lines


def _regression_section(cards: dict[str, dict[str, Any]]) -> list[str]:
    names = [n for n, c in cards.items() if c.get("task") == "regression"]
    if not names:
        return []
    lines = [
        "**Regression** (MSE after 10 inner steps from K = 10 support points, 100 query points "
        "per task, 600 tasks; *untrained* is the same network and inner loop from its random "
        "init, `--untrained`):",
        "",
        "| family | ours (MSE) | untrained (MSE) | gain | target |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in names:
        dataset = _dataset(cards[name])
        evaluation = cards[name].get("evaluation", {})
        ours = evaluation.get(f"{dataset}/test/regression")
        untrained = evaluation.get(f"{dataset}/test/regression/untrained")
        if not ours:
            continue
        base = f"{untrained['mean']:.3f} ± {untrained['ci95']:.3f}" if untrained else "–"
        gain = f"{untrained['mean'] / ours['mean']:.0f}×" if untrained else "–"
        lines.append(
            f"| `{name}` | {ours['mean']:.3f} ± {ours['ci95']:.3f} | {base} | {gain} | "
            f"≥ {REGRESSION_GAIN_TARGET:.0f}× |"
        )
    lines += ["", "```bash"]
    for name in names:
        lines += _commands(cards[name])
        command = _evaluate_command(name, cards[name], _dataset(cards[name]))
        if command:
            lines += [command, command + " --untrained"]
    lines += ["```", ""]
    return lines


def results_markdown(folder: Path) -> str:
    cards = load_cards(folder)
    lines = [
        *_classification_section(
            "**Omniglot**: 5- and 20-way tasks on the 20 alphabets of `images_evaluation`, "
            "never seen in training (fixed episodes, 15 queries per class, 95% CI). *Served "
            "loop* is the checkpoint's own inner loop, as the server runs it; *prototype "
            "baseline* is the nearest-prototype classifier on its un-adapted features, on the "
            "same episodes; *gain* is their paired difference (points):",
            "omniglot",
            cards,
            OMNIGLOT_ANCHORS,
        ),
        *_classification_section(
            "**Quick Draw**: 5-way tasks on categories never seen in training (fixed episodes, "
            "15 queries per class, 95% CI; columns as above):",
            "quickdraw",
            cards,
            QUICKDRAW_ANCHORS,
        ),
        *_regression_section(cards),
    ]
    return "\n".join(lines).rstrip() + "\n"


def replace_block(text: str, block: str) -> str:
    if BEGIN not in text or END not in text:
        raise ValueError(f"the README has no results block; add the lines {BEGIN!r} and {END!r}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{block}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", type=Path, metavar="README", help="rewrite the README's block")
    action.add_argument("--check", type=Path, metavar="README", help="exit 1 if it is stale")
    args = parser.parse_args(argv)
    block = results_markdown(args.checkpoints)
    if args.write:
        args.write.write_text(replace_block(args.write.read_text(), block))
        print(f"wrote the results block of {args.write}")
    elif args.check:
        current = args.check.read_text()
        if replace_block(current, block) != current:
            print(f"{args.check}: the results block is stale; run with --write", file=sys.stderr)
            return 1
    else:
        print(block, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
