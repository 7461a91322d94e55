#!/usr/bin/env bash
# The GPU benchmark run, one command (written for one H100; any CUDA GPU works), in parts that each stay under
# 8 minutes there:
#   bash benchmarks/run_gpu.sh                 # bs1 bs256 distill relax
#   bash benchmarks/run_gpu.sh bs1 distill     # some parts: bs1 | bs256 | distill | relax | flops
#   bash benchmarks/run_gpu.sh --estimate      # the expected time of every part on one H100
#   bash benchmarks/run_gpu.sh --dry-run       # every part at tiny sizes on CPU: check it before the GPU's minutes
# The parts, the dry run and the estimate are benchmarks/run_gpu.py (--help). Knobs (environment): PYTHON (default
# python); --out DIR (default benchmarks/results/<device>-<YYYYmmdd>/).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" benchmarks/run_gpu.py "$@"
