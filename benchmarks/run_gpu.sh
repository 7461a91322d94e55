#!/usr/bin/env bash
# The GPU benchmark run, one command (written for one H100; any CUDA GPU works):
#   bash benchmarks/run_gpu.sh                 # every part below
#   bash benchmarks/run_gpu.sh vits distill    # some parts: vits | vitb | relax | distill | flops
#
# vits / vitb: inference throughput and latency of DINOv2 ViT-S/14 and ViT-B/14 with 4 registers (random init,
#   224 px) against their Raptors k = 2 and 3, side by side: eager, torch.compile and CUDA graphs
#   (compile mode "reduce-overhead"), bf16 autocast and fp32, batch 1, 8, 64, 256, plus anytime rows.
# relax: ViT-B/14 reg4 Raptor k = 2 pure vs relaxed (rank-4 per-step adapters), eager and compile, bf16,
#   batch 1 and 256: the throughput cost of relaxation (issue 11).
# distill: training-step throughput of recipes/configs/dinov2_vits14_reg4_k2.yaml (synthetic data, random init)
#   and of the digits config, with the teacher / student / backward / optimiser breakdown.
# flops: the FLOPs / params table of every registered arch (device-independent; benchmarks/results/flops.*).
#
# Results go to $OUT (default benchmarks/results/<device>-<YYYYmmdd>/): JSON, Markdown and PNG per run, plus
# nvidia-smi.txt and the log of the run. Knobs (environment): PYTHON (default python), OUT, MODES, DTYPES,
# BATCH_SIZES (space-separated lists overriding the defaults above), MATMUL_PRECISION (fp32 rows; default
# highest, i.e. no TF32). Each compiled cell recompiles (torch._dynamo.reset between cells), so the vits and
# vitb parts take the longest; run them one by one on machines with a per-command time limit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python}
MODES=${MODES:-eager compile cudagraphs}
DTYPES=${DTYPES:-bf16 fp32}
BATCH_SIZES=${BATCH_SIZES:-1 8 64 256}
MATMUL_PRECISION=${MATMUL_PRECISION:-highest}
PARTS=${*:-vits vitb relax distill}

SLUG=$($PYTHON -c "from raptor_zoo.bench import device_slug, resolve_device; print(device_slug(resolve_device('cuda')))")
OUT=${OUT:-benchmarks/results/${SLUG}-$(date +%Y%m%d)}
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
LOG="$OUT/run_gpu.log"
echo "run_gpu.sh parts: $PARTS -> $OUT" | tee -a "$LOG"

throughput() {  # $1 = teacher
  # shellcheck disable=SC2086
  $PYTHON benchmarks/throughput.py --teacher "$1" --k 2 3 --device cuda --img-size 224 \
    --modes $MODES --dtypes $DTYPES --batch-sizes $BATCH_SIZES --matmul-precision "$MATMUL_PRECISION" \
    --out "$OUT" --note "random-init weights; benchmarks/run_gpu.sh" 2>&1 | tee -a "$LOG"
}

for part in $PARTS; do
  case "$part" in
    vits) throughput vit_small_patch14_reg4_dinov2 ;;
    vitb) throughput vit_base_patch14_reg4_dinov2 ;;
    relax)
      $PYTHON benchmarks/throughput.py --arch raptor_vit_base_patch14_reg4_dinov2_k2 \
        raptor_vit_base_patch14_reg4_dinov2_k2_r4 --device cuda --img-size 224 --modes eager compile \
        --dtypes bf16 --batch-sizes 1 256 --out "$OUT" --note "random-init weights; relaxation overhead" 2>&1 | tee -a "$LOG" ;;
    distill)
      for config in recipes/configs/dinov2_vits14_reg4_k2.yaml recipes/configs/digits_k2.yaml; do
        if [[ -f "$config" ]]; then
          $PYTHON benchmarks/distill_throughput.py --config "$config" --device cuda --out "$OUT" 2>&1 | tee -a "$LOG"
        else
          echo "skipping distill: $config not found" | tee -a "$LOG"
        fi
      done ;;
    flops) $PYTHON benchmarks/flops.py 2>&1 | tee -a "$LOG" ;;
    *) echo "unknown part '$part'; choose from vits vitb relax distill flops" >&2; exit 2 ;;
  esac
done
echo "done: results in $OUT" | tee -a "$LOG"
