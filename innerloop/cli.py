"""``innerloop train | evaluate | tune | compare | data | serve | models``: one command.

Each subcommand's options and behaviour live next to the code they drive (training in
``innerloop_training.cli_*``, serving in ``innerloop_server.cli_*``); this module only wires
them together, importing only the chosen subcommand so ``innerloop models --url`` stays light.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from innerloop.allocator import keep_freed_memory

# subcommand -> (module, help); each module defines add_arguments(parser) and run(args) -> int
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("innerloop_training.cli_train", "meta-train a learner and write a checkpoint"),
    "evaluate": (
        "innerloop_training.cli_evaluate",
        "evaluate a checkpoint on fixed, seeded episodes (accuracy or MSE, 95%% CI)",
    ),
    "tune": (
        "innerloop_training.cli_tune",
        "choose a checkpoint's served inner loop (steps, step size) on validation episodes",
    ),
    "compare": (
        "innerloop_training.cli_compare",
        "compare meta-learners on Omniglot alphabets as tasks (accuracy vs pre-training size)",
    ),
    "data": (
        "innerloop_training.cli_data",
        "where the training data is looked for, verify checksums, fetch the original files",
    ),
    "serve": ("innerloop_server.cli_serve", "serve checkpoints over HTTP"),
    "models": ("innerloop_server.cli_models", "list model cards of a folder or a running server"),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the ``selected`` subcommand's module is imported and given options."""
    parser = argparse.ArgumentParser(
        prog="innerloop",
        description="Few-shot adaptation: meta-train starting points, then adapt them per request.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if name != selected:
            commands.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        sub = commands.add_parser(
            name,
            help=help_text,
            description=(module.__doc__ or help_text).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    keep_freed_memory()  # every subcommand runs Conv4 forwards (innerloop/allocator.py)
    selected = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(selected if selected in SUBCOMMANDS else None).parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
