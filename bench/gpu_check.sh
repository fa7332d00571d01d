#!/usr/bin/env bash
# The GPU check in one go (well under 10 minutes on one GPU): model speed at full size, then the
# kit's real-size path (fit, Adapt BN, 3x3 TTA) on synthetic 32x224 clips.
# Usage: bash bench/gpu_check.sh [OUT_DIR]   (run from the repo root, in the nightkit environment)
set -euo pipefail
out=${1:-outputs/bench}
mkdir -p "$out"
py=${PYTHON:-python}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$py" bench/models.py --device cuda --amp bf16 --frames 32 --size 224 --batch 4 \
  --models uniformer_b,mvit_b,slowfast_r101 --min-seconds 2 --attention-model uniformer_b 2>&1 | tee "$out/gpu_models.txt"
"$py" bench/gpu_check.py --out "$out/gpu_check.json" 2>&1 | tee "$out/gpu_check.txt"
