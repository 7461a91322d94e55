"""`raptor-zoo` command line: thin argparse over the package's modules.

    raptor-zoo demo      embedded teacher -> phases -> distil a k=2 Raptor -> evaluate -> save (offline, CPU)
    raptor-zoo phases    phase discovery on a teacher: distance matrix, max-cut phases, JSON + heatmap
    raptor-zoo bench     throughput / latency of a Raptor against its teacher (JSON, Markdown, PNG);
                         --adaptive: per-image early exit, accuracy vs depth and img/s, Raptor beside teacher
    raptor-zoo analyze   dynamical interpretability of a Raptor and its teacher (JSON + PNGs)
    raptor-zoo push      upload a saved Raptor folder to the Hub (--dry-run lists what would go up)
    raptor-zoo export    a Raptor or a teacher as ONNX or a torch.export program, checked against eager
"""
import argparse
import sys
from typing import List, Optional

import torch

from .analysis.cli import add_analyze_arguments, analyze_command
from .bench import add_bench_arguments
from .bench_adaptive import add_adaptive_arguments
from .demo import add_demo_arguments, demo_command
from .export import add_export_arguments, export_command
from .hub import add_push_arguments, push_command

__all__ = ['main', 'build_parser']


def _add_phases_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--teacher', default='digits-vit',
                        help='timm name, Hub repo id, local folder or embedded name (default: digits-vit)')
    parser.add_argument('--data', default='digits',
                        help="'digits', a folder of images (flat or in class sub-folders) or a Hub dataset name "
                             "(default: digits)")
    parser.add_argument('--split', default='train', help='dataset split (default: train)')
    parser.add_argument('--k', type=int, default=2, help='number of phases / unique blocks (default: 2)')
    parser.add_argument('--max-k', '--max_k', dest='max_k', type=int, default=None,
                        help='report scores for every k up to this (default: max(k, 6), at most L)')
    parser.add_argument('--num-images', '--num_images', dest='num_images', type=int, default=256,
                        help='images used for the distance matrix: a seeded random subset, stratified where labelled (default: 256)')
    parser.add_argument('--batch-size', '--batch_size', dest='batch_size', type=int, default=32,
                        help='batch size (default: 32)')
    parser.add_argument('--metric', default='cls_patchmean', choices=['cls_patchmean', 'token_cosine', 'cka'],
                        help="layer distance (default: cls_patchmean, the paper's)")
    parser.add_argument('--tokens', default='all', choices=['all', 'cls', 'registers', 'patches'],
                        help='tokens compared by token_cosine / cka (default: all)')
    parser.add_argument('--algorithm', default='divisive', choices=['divisive', 'contiguous'],
                        help="partition algorithm (default: divisive, the paper's)")
    parser.add_argument('--random-init', '--random_init', dest='random_init', action='store_true',
                        help='random-initialised teacher instead of pretrained weights (default: off)')
    parser.add_argument('--img-size', '--img_size', dest='img_size', type=int, default=None,
                        help="image size the teacher runs at (default: the teacher's; 224 for DINOv2)")
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='device (default: cuda if available, else cpu)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random image subset (default: 0)')
    parser.add_argument('--out', default='phases_out', help='output directory (default: phases_out)')


def phases_command(args: argparse.Namespace) -> int:
    from .data import create_loader, load_image_dataset, random_subset
    from .phases import discover
    from .teachers import load_teacher

    teacher = load_teacher(args.teacher, pretrained=not args.random_init, img_size=args.img_size).to(args.device)
    if not 1 <= args.k <= teacher.depth:
        raise SystemExit(f'--k {args.k} is out of range for {teacher.name} (depth {teacher.depth}); '
                         f'use 1 <= k <= {teacher.depth}.')
    dataset = load_image_dataset(args.data, split=args.split, labels=False)  # photos need no class folders
    dataset, subset = random_subset(dataset, args.num_images, seed=args.seed)
    loader = create_loader(dataset, teacher.data_config, batch_size=args.batch_size, is_training=False,
                           transform=teacher.eval_transform)
    result = discover(
        teacher, (images.to(args.device) for images, _ in loader), k=args.k, metric=args.metric,
        algorithm=args.algorithm, max_k=args.max_k, tokens=args.tokens, batch_size=args.batch_size)
    if subset["count"] is not None and subset["count"] < args.num_images:
        print(f'--num-images {args.num_images}: the split holds {subset["count"]} images; all of them were used.')
    paths = result.save(args.out)
    print(f'teacher {result.teacher}: depth {result.depth}, {result.num_images} images, metric {result.metric}, '
          f'algorithm {result.algorithm}')
    print(f'k={result.k}: phases {", ".join(_phase_ranges(result.phase_boundaries))} '
          f'block_schedule {tuple(result.block_schedule)}')
    print('k  block_schedule       cut value  fraction of total')
    for row in result.scores:
        print(f"{row['k']:<2} {str(tuple(row['block_schedule'])):<20} {row['cut_value']:>9.3f}  "
              f"{row['cut_fraction']:>6.1%}")
    for note in result.notes:
        print(f'note: {note}')
    print(f"wrote {paths['json']} and {paths['png']}")
    return 0


def _phase_ranges(boundaries) -> List[str]:
    return [f'{a + 1}-{b}' for a, b in zip(boundaries[:-1], boundaries[1:])]


def _bench_command(args: argparse.Namespace) -> int:
    from .bench import bench_command
    from .bench_adaptive import adaptive_bench_command

    try:
        adaptive_bench_command(args) if args.adaptive else bench_command(args)
    except ValueError as error:
        args.parser.error(str(error))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='raptor-zoo', description='Raptors: block-recurrent surrogates of Vision Transformers.')
    subparsers = parser.add_subparsers(dest='command', required=True)
    demo = subparsers.add_parser(
        'demo', help='the main job: embedded teacher -> phases -> distil a k=2 Raptor -> evaluate -> save')
    add_demo_arguments(demo)
    demo.set_defaults(func=demo_command)
    phases = subparsers.add_parser('phases', help='discover the phases of a teacher (distance matrix + max-cut)')
    _add_phases_arguments(phases)
    phases.set_defaults(func=phases_command)
    bench = subparsers.add_parser(
        'bench', help='throughput and latency of a Raptor against its teacher, side by side (--adaptive: early exit)')
    add_bench_arguments(bench)
    add_adaptive_arguments(bench, standalone=False)
    bench.set_defaults(func=_bench_command, parser=bench)
    analyze = subparsers.add_parser(
        'analyze', help='dynamical interpretability: token dynamics, update ranks, basins, phase view (JSON + PNGs)')
    add_analyze_arguments(analyze)
    analyze.set_defaults(func=analyze_command)
    push = subparsers.add_parser('push', help='upload a Raptor folder (weights, config, card) to the Hub')
    add_push_arguments(push)
    push.set_defaults(func=push_command)
    export = subparsers.add_parser(
        'export', help='a Raptor or a teacher as ONNX or a torch.export program (numerics checked)')
    add_export_arguments(export)
    export.set_defaults(func=export_command)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())
