#!/usr/bin/env python3
r"""Adaptive depth (per-image early exit): accuracy against mean block applications and images/s, Raptor and teacher.

Both models classify the held-out images with the same halting rule (raptor_zoo.adaptive), for a sweep of
thresholds, timed side by side in alternating rounds at each batch size against their own full-depth forward;
plus the fixed-depth anytime curves and the un-timed trade-off of every criterion.

    OMP_NUM_THREADS=2 python benchmarks/adaptive_depth.py --num-threads 2 --note "2 CPU cores shared"
    python benchmarks/adaptive_depth.py --raptor path/to/raptor --teacher org/teacher --data org/mnist --split test
    python benchmarks/adaptive_depth.py --criterion prob_change --thresholds 0.05 0.02 0.01

Writes adaptive_<raptor>_<data>_<criterion>.json / .md / .png into --out (default
benchmarks/results/adaptive_depth/). The same command is `raptor-zoo bench --adaptive ...`.
"""
import argparse
import sys
from pathlib import Path

from raptor_zoo.bench_adaptive import adaptive_bench_command
from raptor_zoo_cli.options import add_adaptive_arguments

RESULTS_DIR = Path(__file__).resolve().parent / "results" / "adaptive_depth"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_adaptive_arguments(parser, default_results_dir=RESULTS_DIR)
    args = parser.parse_args(argv)
    try:
        adaptive_bench_command(args)
    except ValueError as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
