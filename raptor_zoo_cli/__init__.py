"""The ``raptor-zoo`` command line: every subcommand's options parsed without torch, timm or transformers.

    raptor-zoo demo      embedded teacher -> phases -> distil a k=2 Raptor -> evaluate -> save (offline, CPU)
    raptor-zoo phases    phase discovery on a teacher: distance matrix, max-cut phases, JSON + heatmap
    raptor-zoo distill   the distillation recipe in this process (every DistillConfig field is a flag; --config YAML)
    raptor-zoo bench     throughput / latency of a Raptor against its teacher (JSON, Markdown, PNG);
                         --adaptive: per-image early exit, accuracy vs depth and img/s, Raptor beside teacher
    raptor-zoo analyze   dynamical interpretability of a Raptor and its teacher (JSON + PNGs)
    raptor-zoo push      upload a saved Raptor folder to the Hub (--dry-run lists what would go up)
    raptor-zoo export    a Raptor or a teacher as ONNX or a torch.export program, checked against eager

Why a package beside ``raptor_zoo``: ``import raptor_zoo`` registers the Raptor architectures with timm and
transformers, so it imports both (seconds), and no module inside ``raptor_zoo`` can be imported without it. This
package declares the options (:mod:`raptor_zoo_cli.options`, config dataclasses as flags through
:mod:`raptor_zoo_cli.config`), so ``--help`` and argument errors answer at once; only a parsed, valid command imports
the module that runs it (``raptor_zoo.cli`` and the subcommands' own modules). ``python -m raptor_zoo_cli`` and
``python -m raptor_zoo.cli`` run the same command line.
"""
from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .config import config_from_args
from .distill_config import DistillConfig
from .options import (
    add_analyze_arguments,
    add_bench_command_arguments,
    add_demo_arguments,
    add_distill_arguments,
    add_export_arguments,
    add_phases_arguments,
    add_push_arguments,
)

__all__ = ["Command", "COMMANDS", "build_parser", "main"]


@dataclass(frozen=True)
class Command:
    """One subcommand: its options, declared here, and the function that runs it, imported once they parsed."""
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]
    run: str
    """``'module:function'``; the function takes the parsed namespace (or the ``config`` instance) and returns
    the exit status."""
    config: type | None = None
    """A config dataclass the flags build, and validate, before ``run`` is imported; ``run`` then receives it."""


COMMANDS: tuple[Command, ...] = (
    Command("demo", "the main job: embedded teacher -> phases -> distil a k=2 Raptor -> evaluate -> save",
            add_demo_arguments, "raptor_zoo.demo:demo_command"),
    Command("phases", "discover the phases of a teacher (distance matrix + max-cut)",
            add_phases_arguments, "raptor_zoo.cli:phases_command"),
    Command("distill", "distil a teacher into a Raptor: the recipe of recipes/distill.py, in this process",
            add_distill_arguments, "raptor_zoo.cli:distill_command", config=DistillConfig),
    Command("bench", "throughput and latency of a Raptor against its teacher, side by side (--adaptive: early exit)",
            add_bench_command_arguments, "raptor_zoo.cli:bench_or_adaptive_command"),
    Command("analyze", "dynamical interpretability: token dynamics, update ranks, basins, phase view (JSON + PNGs)",
            add_analyze_arguments, "raptor_zoo.analysis.cli:analyze_command"),
    Command("push", "upload a Raptor folder (weights, config, card) to the Hub",
            add_push_arguments, "raptor_zoo.cli:push_command"),
    Command("export", "a Raptor or a teacher as ONNX or a torch.export program (numerics checked)",
            add_export_arguments, "raptor_zoo.export:export_command"),
)


def build_parser() -> argparse.ArgumentParser:
    """The whole argparse tree; each subparser carries its :class:`Command` and itself (``args.parser``)."""
    parser = argparse.ArgumentParser(
        prog="raptor-zoo", description="Raptors: block-recurrent surrogates of Vision Transformers.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        subparser = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(subparser)
        subparser.set_defaults(spec=command, parser=subparser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), then import and run the chosen subcommand; its exit status."""
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:  # reported by the subcommand's parser, so the error shows that subcommand's usage
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    command: Command = args.spec
    target = args
    if command.config is not None:
        try:
            target = config_from_args(command.config, args, args.parser)
        except (FileNotFoundError, TypeError, ValueError) as error:
            args.parser.error(str(error))
    module_name, function_name = command.run.split(":")
    return getattr(importlib.import_module(module_name), function_name)(target)
