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
    (5, 1): (80.0, f"68.3 ({FFL})"),
    (5, 5): (92.0, f"82.6 ({FFL})"),
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


def _accuracy(card: dict[str, Any], dataset: str, ways: int, shots: int) -> str:
    result = card.get("evaluation", {}).get(f"{dataset}/test/{ways}way{shots}shot")
    if not result:
        return "–"
    return f"{100 * result['mean']:.1f} ± {100 * result['ci95']:.1f}"


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


def _commands(card: dict[str, Any]) -> list[str]:
    """How to remake the checkpoint: its training stages in order, then its inner-loop tuning."""
    stages = _stages(card.get("training", {}))
    commands = [str(stage["command"]) for stage in stages if stage.get("command")]
    tuning = card.get("inner_loop_tuning", {}).get("command")
    return [*commands, str(tuning)] if tuning else commands


def _evaluate_command(name: str, card: dict[str, Any], dataset: str) -> str | None:
    keys = [k for k in card.get("evaluation", {}) if k.startswith(f"{dataset}/test/")]
    settings = [card["evaluation"][k] for k in keys if not k.endswith("/untrained")]
    if not settings:
        return None
    ways = sorted({int(s["ways"]) for s in settings if s.get("ways")})
    shots = sorted({int(s["shots"]) for s in settings})
    episodes = max(int(s["episodes"]) for s in settings)
    grid = f"--ways {' '.join(map(str, ways))} " if ways else ""
    steps = {s.get("steps") for s in settings}
    step_flag = f" --steps {steps.pop()}" if dataset in ("sine", "logistic") else ""
    return (
        f"innerloop evaluate checkpoints/{name}.safetensors --dataset {dataset} {grid}"
        f"--shots {' '.join(map(str, shots))}{step_flag} --episodes {episodes}"
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
    lines.append("| task | " + " | ".join(f"`{n}`" for n in names) + " | target | anchor |")
    lines.append("|---|" + "---:|" * len(names) + "---:|---|")
    for (ways, shots), (target, anchor) in anchors.items():
        cells = [_accuracy(cards[n], dataset, ways, shots) for n in names]
        lines.append(
            f"| {ways}-way {shots}-shot | " + " | ".join(cells) + f" | {target:.1f} | {anchor} |"
        )
    lines += ["", "How each was made (from its card):", ""]
    lines += [f"- {_how_made(n, cards[n])}" for n in names]
    lines += ["", "```bash"]
    for name in names:
        lines += _commands(cards[name])
        command = _evaluate_command(name, cards[name], dataset)
        if command:
            lines.append(command)
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
            "never seen in training (600 fixed episodes, 15 queries per class, 95% CI):",
            "omniglot",
            cards,
            OMNIGLOT_ANCHORS,
        ),
        *_classification_section(
            "**Quick Draw**: 5-way tasks on categories never seen in training (600 fixed "
            "episodes, 15 queries per class, 95% CI):",
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
