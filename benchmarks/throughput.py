#!/usr/bin/env python3
r"""Inference throughput and latency of a Raptor against its teacher, measured side by side.

Both models are random-initialised (speed does not depend on the weights) and timed in alternating rounds
for every (mode, dtype, batch size) cell; the Raptor / teacher ratios come with their spread over rounds.
Anytime rows time the Raptor stopped after fewer than L block applications.

    python benchmarks/throughput.py --teacher vit_small_patch14_reg4_dinov2 --k 2 --device cpu --quick
    python benchmarks/throughput.py --arch raptor_vit_base_patch14_reg4_dinov2_k2 raptor_vit_base_patch14_reg4_dinov2_k3
    python benchmarks/throughput.py --teacher vit_base_patch14_reg4_dinov2 --k 2 3 --device cuda \
        --modes eager compile cudagraphs --dtypes bf16 fp32 --batch-sizes 1 8 64 256

Writes throughput_<teacher>_k<k>_<modes>_<dtypes>_b<batch sizes>.json / .md / .png into --out
(default benchmarks/results/<device>-<date>/).
The same command is `raptor-zoo bench ...`.
"""
import argparse
import sys
from pathlib import Path

from raptor_zoo.bench import add_bench_arguments, bench_command

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_arguments(parser, default_results_dir=RESULTS_DIR)
    args = parser.parse_args(argv)
    try:
        bench_command(args)
    except ValueError as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
