"""The options of every ``raptor-zoo`` subcommand, declared with argparse alone (no torch, timm or transformers).

Each ``add_*_arguments(parser)`` adds one subcommand's flags to a parser and returns it; the scripts in
``benchmarks/`` add the same flags to their own parsers. Names of things the library defines (halting criteria,
perturbations, export formats, ...) are mirrored here so that ``--help`` lists them without importing the library;
tests/test_cli.py checks each against the library's own.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .config import add_config_arguments
from .distill_config import DistillConfig

__all__ = [
    "MODES", "DTYPES", "GPU_BATCH_SIZES", "CPU_BATCH_SIZES", "HALTING_CRITERIA", "DEFAULT_CRITERION",
    "DEFAULT_THRESHOLDS", "PERTURBATIONS", "ANALYSIS_KINDS", "EXPORT_FORMATS", "EXPORT_DTYPES", "PHASE_METRICS", "PHASE_ALGORITHMS",
    "add_demo_arguments", "add_phases_arguments", "add_distill_arguments", "add_bench_arguments",
    "add_adaptive_arguments", "add_bench_command_arguments", "add_analyze_arguments", "add_push_arguments",
    "add_export_arguments",
]

MODES = ("eager", "compile", "cudagraphs")
"""Inference modes of the throughput benchmark: eager, torch.compile, CUDA graphs (compile 'reduce-overhead')."""
DTYPES = ("fp32", "bf16")
GPU_BATCH_SIZES = (1, 8, 64, 256)
CPU_BATCH_SIZES = (1, 8)
HALTING_CRITERIA = ("confidence", "feature_change", "prob_change")
"""``sorted(raptor_zoo.adaptive.CRITERIA)``."""
DEFAULT_CRITERION = "confidence"
"""``raptor_zoo.adaptive.DEFAULT_CRITERION``."""
DEFAULT_THRESHOLDS: dict[str, list[float]] = {
    "confidence": [0.3, 0.2, 0.1, 0.05, 0.02],
    "prob_change": [0.1, 0.05, 0.02, 0.01, 0.005],
    "feature_change": [0.3, 0.2, 0.1, 0.05, 0.02],
}
"""Threshold sweep of the adaptive-depth benchmark per criterion (score < threshold exits), eager to cautious."""
PERTURBATIONS = ("noise", "swap")
"""``raptor_zoo.analysis.basins.PERTURBATIONS``."""
ANALYSIS_KINDS = ("auto", "raptor", "teacher")
"""``raptor_zoo.analysis.cli.KINDS``."""
EXPORT_FORMATS = ("onnx", "torch-export")
"""``raptor_zoo.export.FORMATS``."""
EXPORT_DTYPES = ("fp32", "fp16")
"""``tuple(raptor_zoo.export.DTYPES)``."""
PHASE_METRICS = ("cls_patchmean", "token_cosine", "cka")
"""``raptor_zoo.phases.METRICS``: the layer distances of phase discovery."""
PHASE_ALGORITHMS = ("divisive", "contiguous")
"""``raptor_zoo.phases.ALGORITHMS``: the partition algorithms of phase discovery."""


def add_demo_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``raptor-zoo demo``."""
    parser.add_argument("--out", default="demo_out", help="output folder for the Raptor (default: demo_out)")
    parser.add_argument("--k", type=int, default=2, help="number of unique blocks (default: 2)")
    parser.add_argument("--max-steps", "--max_steps", dest="max_steps", type=int, default=150,
                        help="distillation steps (default: 150)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    parser.add_argument("--relax-rank", "--relax_rank", dest="relax_rank", type=int, default=0,
                        help="rank of per-step low-rank adapters (relaxation); 0 = pure Raptor (default: 0)")
    return parser


def add_phases_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``raptor-zoo phases``."""
    parser.add_argument("--teacher", default="digits-vit",
                        help="timm name, Hub repo id, local folder or embedded name (default: digits-vit)")
    parser.add_argument("--data", default="digits",
                        help="'digits', a folder of images (flat or in class sub-folders) or a Hub dataset name "
                             "(default: digits)")
    parser.add_argument("--split", default="train", help="dataset split (default: train)")
    parser.add_argument("--k", type=int, default=2, help="number of phases / unique blocks (default: 2)")
    parser.add_argument("--max-k", "--max_k", dest="max_k", type=int, default=None,
                        help="report scores for every k up to this (default: max(k, 6), at most L)")
    parser.add_argument("--num-images", "--num_images", dest="num_images", type=int, default=256,
                        help="images used for the distance matrix: a seeded random subset, stratified where labelled "
                             "(default: 256)")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=32,
                        help="batch size (default: 32)")
    parser.add_argument("--metric", default="cls_patchmean", choices=PHASE_METRICS,
                        help="layer distance (default: cls_patchmean, the paper's)")
    parser.add_argument("--tokens", default="all", choices=["all", "cls", "registers", "patches"],
                        help="tokens compared by token_cosine / cka (default: all)")
    parser.add_argument("--algorithm", default="divisive", choices=PHASE_ALGORITHMS,
                        help="partition algorithm (default: divisive, the paper's)")
    parser.add_argument("--random-init", "--random_init", dest="random_init", action="store_true",
                        help="random-initialised teacher instead of pretrained weights (default: off)")
    parser.add_argument("--img-size", "--img_size", dest="img_size", type=int, default=None,
                        help="image size the teacher runs at (default: the teacher's; 224 for DINOv2)")
    parser.add_argument("--device", default="auto", help="'cpu', 'cuda' or 'auto': cuda if available (default: auto)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random image subset (default: 0)")
    parser.add_argument("--out", default="phases_out", help="output directory (default: phases_out)")
    return parser


def add_distill_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``raptor-zoo distill``: every field of :class:`DistillConfig`, and ``-c/--config file.yaml``."""
    parser.usage = "%(prog)s [-h] [-c FILE] [--FIELD VALUE ...]"  # the ~70 fields are listed below, not in the usage
    return add_config_arguments(parser, DistillConfig)


def add_bench_arguments(parser: argparse.ArgumentParser, default_results_dir: str | Path = "benchmarks/results"
                        ) -> argparse.ArgumentParser:
    """Add the throughput benchmark's flags (shared by benchmarks/throughput.py and ``raptor-zoo bench``)."""
    group = parser.add_argument_group("Model parameters")
    group.add_argument("--teacher", default=None,
                       help="timm ViT teacher name, e.g. vit_small_patch14_reg4_dinov2 (default: the --arch teacher)")
    group.add_argument("--k", type=int, nargs="+", default=None,
                       help="unique blocks of the Raptor(s) built from --teacher; several values run side by side "
                            "(default: 2 unless --arch is given)")
    group.add_argument("--arch", nargs="+", default=None,
                       help="registered Raptor arch(s), e.g. raptor_vit_small_patch14_reg4_dinov2_k2 (default: none)")
    group.add_argument("--img-size", type=int, default=224, help="input resolution (default: 224)")
    group = parser.add_argument_group("Benchmark parameters")
    group.add_argument("--device", default="auto", help="'cpu', 'cuda' or 'auto' (default: auto)")
    group.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                       help=f'batch sizes (default: {" ".join(map(str, GPU_BATCH_SIZES))} on GPU, '
                            f'{" ".join(map(str, CPU_BATCH_SIZES))} on CPU)')
    group.add_argument("--modes", nargs="+", choices=MODES, default=None,
                       help="eager, compile (torch.compile) and/or cudagraphs (compile mode reduce-overhead) "
                            "(default: all three on GPU; eager and compile on CPU, eager only with --quick)")
    group.add_argument("--dtypes", nargs="+", choices=DTYPES, default=None,
                       help="fp32 and/or bf16 (autocast) (default: bf16 fp32 on GPU, fp32 on CPU)")
    group.add_argument("--warmup", type=int, default=None, help="warm-up calls per model and cell (default: 10 GPU, "
                       "2 CPU; --quick 3 GPU, 1 CPU)")
    group.add_argument("--iters", type=int, default=None, help="timed calls per model and round (default: 20 GPU, "
                       "5 CPU; --quick 10 GPU, 2 CPU)")
    group.add_argument("--rounds", type=int, default=None,
                       help="alternating rounds per cell (default: 5; --quick 3)")
    group.add_argument("--anytime-steps", type=int, nargs="*", default=None,
                       help="num_steps < L to time the Raptor at (anytime inference); give none to skip "
                            "(default: L/4 L/2 3L/4; L/2 only with --quick on CPU)")
    group.add_argument("--anytime-batch-size", type=int, default=None,
                       help="batch size of the anytime rows (default: 64 if measured, else the largest; "
                            "1 with --quick on CPU)")
    group.add_argument("--matmul-precision", choices=("highest", "high", "medium"), default="highest",
                       help="torch.set_float32_matmul_precision for the fp32 rows; high allows TF32 (default: highest)")
    group.add_argument("--num-threads", type=int, default=None,
                       help="torch.set_num_threads for CPU runs; 1 avoids oversubscription on a shared machine "
                            "(default: torch's default)")
    group.add_argument("--no-retry-oom", action="store_true",
                       help="record OOM as an error instead of stepping the batch size down (default: retry)")
    group.add_argument("--quick", action="store_true", help="few iterations (on CPU: eager only unless --modes "
                       "is given), for a smoke run (default: off)")
    group = parser.add_argument_group("Output parameters")
    group.add_argument("--out", default=None,
                       help=f"output folder (default: {default_results_dir}/<device>-<YYYYmmdd>)")
    group.add_argument("--note", action="append", default=[],
                       help='a line written into the results, e.g. "2 CPU cores shared with other work" '
                            '(repeatable; default: none)')
    group.add_argument("--no-plot", action="store_true", help="skip the PNG plot (default: plot)")
    parser.set_defaults(default_results_dir=str(default_results_dir))
    return parser


def add_adaptive_arguments(parser: argparse.ArgumentParser, standalone: bool = True,
                           default_results_dir: str | Path = "benchmarks/results/adaptive_depth"
                           ) -> argparse.ArgumentParser:
    """The adaptive benchmark's flags; ``standalone=False`` leaves out those ``raptor-zoo bench`` already has."""
    group = parser.add_argument_group("Adaptive depth (raptor-zoo bench --adaptive)")
    if not standalone:
        group.add_argument("--adaptive", action="store_true",
                           help="run the adaptive-depth benchmark instead of the throughput one; results go to "
                                f"{default_results_dir} unless --out is given (default: off)")
    group.add_argument("--raptor", default="raptor-digits-k2",
                       help="zoo name or saved folder of the Raptor (default: raptor-digits-k2)")
    group.add_argument("--data", default="digits",
                       help="'digits' (embedded), an imagefolder directory or a Hub dataset name (default: digits)")
    group.add_argument("--split", default="test", help="dataset split (default: test, the held-out digits)")
    group.add_argument("--num-images", "--num_images", dest="num_images", type=int, default=None,
                       help="use the first N images of the split (default: all)")
    group.add_argument("--criterion", choices=HALTING_CRITERIA, default=DEFAULT_CRITERION,
                       help=f"halting criterion (default: {DEFAULT_CRITERION})")
    group.add_argument("--thresholds", type=float, nargs="+", default=None,
                       help='thresholds to time (default: per criterion, e.g. confidence '
                            f'{" ".join(map(str, DEFAULT_THRESHOLDS["confidence"]))})')
    group.add_argument("--min-steps", "--min_steps", dest="min_steps", type=int, default=None,
                       help="no exit before this step, for both models (default: end of the Raptor's first phase)")
    group.add_argument("--batch1-stride", "--batch1_stride", dest="batch1_stride", type=int, default=4,
                       help="time batch size 1 on every N-th image (default: 4)")
    if standalone:
        group.add_argument("--teacher", default=None, help="teacher of the Raptor (default: digits-vit)")
        group.add_argument("--device", default="cpu", help="'cpu', 'cuda' or 'auto' (default: cpu)")
        group.add_argument("--batch-sizes", "--batch_sizes", dest="batch_sizes", type=int, nargs="+", default=None,
                           help="batch sizes (default: 1 64)")
        group.add_argument("--rounds", type=int, default=None, help="alternating timed rounds (default: 3)")
        group.add_argument("--warmup", type=int, default=None, help="warm-up batches per config (default: 1)")
        group.add_argument("--num-threads", "--num_threads", dest="num_threads", type=int, default=None,
                           help="torch.set_num_threads (default: torch's default)")
        group.add_argument("--out", default=None, help=f"output folder (default: {default_results_dir})")
        group.add_argument("--note", action="append", default=[],
                           help='a line written into the results, e.g. "2 CPU cores shared" (repeatable)')
        group.add_argument("--no-plot", action="store_true", help="skip the PNG (default: plot)")
    parser.set_defaults(default_adaptive_dir=str(default_results_dir))
    return parser


def add_bench_command_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``raptor-zoo bench``: the throughput benchmark's, and ``--adaptive`` with its own."""
    add_bench_arguments(parser)
    return add_adaptive_arguments(parser, standalone=False)


def add_analyze_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``raptor-zoo analyze``."""
    parser.add_argument("--model", required=True,
                        help="a Raptor (zoo name, folder written by save_pretrained, Hub repo id with --kind raptor) "
                             "or a teacher (embedded name such as digits-vit, timm name, folder, Hub repo id)")
    parser.add_argument("--kind", default="auto", choices=ANALYSIS_KINDS,
                        help="what --model is (default: auto: zoo names and folders whose config.json names a "
                             "raptor architecture are Raptors, anything else a teacher)")
    parser.add_argument("--teacher", default=None,
                        help="the Raptor's teacher (default: the teacher recorded in its config.json)")
    parser.add_argument("--data", default="digits",
                        help="'digits', an imagefolder directory or a Hub dataset name (default: digits)")
    parser.add_argument("--split", default="test", help="dataset split (default: test)")
    parser.add_argument("--num-images", "--num_images", dest="num_images", type=int, default=64,
                        help="images analysed (default: 64)")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=64,
                        help="loader batch size (default: 64)")
    parser.add_argument("--perturbation", default="noise", choices=PERTURBATIONS,
                        help="noise: Gaussian of relative norm SCALE; swap: a fraction SCALE of tokens taken from "
                             "another image (default: noise)")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.5, 1.0],
                        help="perturbation sizes (default: 0.05 0.1 0.2 0.5 1.0)")
    parser.add_argument("--start-layers", "--start_layers", dest="start_layers", type=int, nargs="+", default=None,
                        help="perturbation depths in 0..L-1 (default: 4 spread over the depth)")
    parser.add_argument("--k", type=int, default=None,
                        help="phases in the phase view (default: the Raptor's unique blocks, else 2)")
    parser.add_argument("--angular-updates", "--angular_updates", dest="angular_updates", action="store_true",
                        help="ranks of the angular updates x̂_l - x̂_l-1 instead of x_l - x_l-1 (default: off)")
    parser.add_argument("--random-init", "--random_init", dest="random_init", action="store_true",
                        help="random-initialised teacher instead of its published weights (default: off)")
    parser.add_argument("--img-size", "--img_size", dest="img_size", type=int, default=None,
                        help="image size the teacher runs at (default: the teacher's)")
    parser.add_argument("--device", default="cpu", help="device (default: cpu)")
    parser.add_argument("--seed", type=int, default=0, help="perturbation seed (default: 0)")
    parser.add_argument("--out", default="analysis_out", help="output directory (default: analysis_out)")
    return parser


def add_push_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``raptor-zoo push <folder> --repo-id org/name``."""
    parser.add_argument("folder", help="Raptor folder written by raptor_zoo.hub.save_pretrained.")
    parser.add_argument("--repo-id", "--repo_id", dest="repo_id", required=True,
                        help="Hub repo id, org/name (default: None, required)")
    parser.add_argument("--private", action="store_true", help="create the repo private (default: False)")
    parser.add_argument("--revision", default=None, help="branch to commit to, created if absent (default: main)")
    parser.add_argument("--create-pr", "--create_pr", dest="create_pr", action="store_true",
                        help="open a pull request instead of committing (default: False)")
    parser.add_argument("--commit-message", "--commit_message", dest="commit_message",
                        default="Upload Raptor with raptor_zoo", help="commit message (default: %(default)s)")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in token)")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="list the files and the card metadata, upload nothing (default: False)")
    return parser


def add_export_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``raptor-zoo export``."""
    parser.add_argument("model", help="a Raptor (zoo name such as raptor-digits-k2, folder, Hub repo id, registered "
                                      "architecture such as raptor_vit_small_patch14_reg4_dinov2_k2) or a teacher "
                                      "(anything raptor_zoo.load_teacher accepts, e.g. vit_small_patch16_dinov3)")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default="onnx", help="graph format (default: %(default)s)")
    parser.add_argument("--out", required=True, help="file to write: .onnx or .pt2 (default: None, required)")
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--static-batch", "--static_batch", dest="static_batch", action="store_true",
                       help="batch fixed at --batch-size (default: the batch is free at run time)")
    batch.add_argument("--dynamic-batch", "--dynamic_batch", dest="dynamic_batch", action="store_true",
                       help="batch free at run time: the default, accepted for older commands")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=None,
                        help="batch size of a fixed-batch graph; implies --static-batch (default: 1 with "
                             "--static-batch)")
    parser.add_argument("--dynamic-size", "--dynamic_size", dest="dynamic_size", action="store_true",
                        help="height and width free at run time, multiples of the patch (default: the model's size)")
    parser.add_argument("--dtype", choices=EXPORT_DTYPES, default="fp32",
                        help="weights and compute dtype; fp16 is compared with eager fp32 (default: %(default)s)")
    parser.add_argument("--num-steps", "--num_steps", dest="num_steps", type=int, default=None,
                        help="anytime depth: stop after this many block applications (default: all L)")
    parser.add_argument("--random-init", "--random_init", dest="random_init", action="store_true",
                        help="random weights for an architecture or teacher name instead of published ones "
                             "(default: off)")
    return parser
