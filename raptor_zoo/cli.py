"""What the ``raptor-zoo`` subcommands run, once ``raptor_zoo_cli`` has parsed their options.

The options (and ``main``) live in ``raptor_zoo_cli``, which imports neither torch nor timm: ``--help`` and argument
errors answer at once, and a parsed command imports only the module it runs. This module holds the commands of
its own (``phases``, ``distill``, ``bench``, ``push``); ``demo``, ``analyze`` and ``export`` run their modules'
``*_command`` functions. ``python -m raptor_zoo.cli ...`` is the same command line as ``raptor-zoo ...``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from raptor_zoo_cli import build_parser, main
from raptor_zoo_cli.distill_config import DistillConfig

__all__ = ["main", "build_parser", "phases_command", "distill_command", "bench_or_adaptive_command", "push_command"]


def phases_command(args: argparse.Namespace) -> int:
    """``raptor-zoo phases``: discover the teacher's phases on a random image subset; write JSON and a heatmap."""
    from .bench import resolve_device
    from .data import create_loader, load_image_dataset, random_subset
    from .models.schedule import check_k
    from .phases import discover
    from .teachers import load_teacher

    device = resolve_device(args.device)
    teacher = load_teacher(args.teacher, pretrained=not args.random_init, img_size=args.img_size).to(device)
    try:
        check_k(teacher.depth, args.k, teacher.name)
    except ValueError as error:
        args.parser.error(f"--k: {error}")
    dataset = load_image_dataset(args.data, split=args.split, labels=False)  # photos need no class folders
    dataset, subset = random_subset(dataset, args.num_images, seed=args.seed)
    loader = create_loader(dataset, teacher.data_config, batch_size=args.batch_size, is_training=False,
                           transform=teacher.eval_transform)
    result = discover(
        teacher, (images.to(device) for images, _ in loader), k=args.k, metric=args.metric,
        algorithm=args.algorithm, max_k=args.max_k, tokens=args.tokens, batch_size=args.batch_size)
    if subset["count"] is not None and subset["count"] < args.num_images:
        print(f'--num-images {args.num_images}: the split holds {subset["count"]} images; all of them were used.')
    paths = result.save(args.out)
    print(f"teacher {result.teacher}: depth {result.depth}, {result.num_images} images, metric {result.metric}, "
          f"algorithm {result.algorithm}")
    print(f'k={result.k}: phases {", ".join(_phase_ranges(result.phase_boundaries))} '
          f'block_schedule {tuple(result.block_schedule)}')
    print("k  block_schedule       cut value  fraction of total")
    for row in result.scores:
        print(f"{row['k']:<2} {str(tuple(row['block_schedule'])):<20} {row['cut_value']:>9.3f}  "
              f"{row['cut_fraction']:>6.1%}")
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {paths['json']} and {paths['png']}")
    return 0


def _phase_ranges(boundaries: list[int]) -> list[str]:
    return [f"{a + 1}-{b}" for a, b in zip(boundaries[:-1], boundaries[1:])]


def distill_command(config: DistillConfig) -> int:
    """``raptor-zoo distill``: the recipe's training function on the parsed config, in this process (for several
    processes: ``accelerate launch recipes/distill.py`` with the same flags)."""
    from .recipes.distill import training_function

    training_function(config)
    return 0


def bench_or_adaptive_command(args: argparse.Namespace) -> int:
    """``raptor-zoo bench``: the side-by-side throughput benchmark, or with ``--adaptive`` the early-exit one."""
    from .bench import bench_command
    from .bench_adaptive import adaptive_bench_command

    try:
        adaptive_bench_command(args) if args.adaptive else bench_command(args)
    except ValueError as error:
        args.parser.error(str(error))
    return 0


def push_command(args: argparse.Namespace) -> int:
    """``raptor-zoo push``: validate the folder, then upload it (or, with --dry-run, show what would be)."""
    import yaml
    from huggingface_hub.utils import validate_repo_id

    from .hub import CARD_NAME, _check_folder, push_to_hub

    folder = Path(args.folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{str(folder)!r} is not a folder.")
    validate_repo_id(args.repo_id)
    report = _check_folder(folder)
    if args.dry_run:
        print(f"Dry run: would upload {len(report['files'])} files from {folder} to {args.repo_id} "
              f"(private={args.private}, revision={args.revision or 'main'}, create_pr={args.create_pr}):")
        for name in report["files"]:
            print(f"  {name}  ({(folder / name).stat().st_size:,} bytes)")
        print("Card metadata:" if report["card"] is not None else f"No {CARD_NAME}: the repo would have no card.")
        if report["card"] is not None:
            print(yaml.safe_dump(report["card"], sort_keys=False).rstrip())
        return 0
    url = push_to_hub(folder, args.repo_id, private=args.private, token=args.token,
                      commit_message=args.commit_message, revision=args.revision, create_pr=args.create_pr)
    print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
