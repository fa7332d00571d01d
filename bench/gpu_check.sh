#!/usr/bin/env bash
# The GPU check in one go (under 10 minutes on one GPU, by the parts' earlier timings): the CUDA tests
# of Adapt BN, the benchmark suite on the GPU (loaders finishing batches on it, full-size models in
# bf16 at 32 x 224, Adapt BN), Adapt BN's statistics kernels side by side and profiled, the train
# loader profiled in 8 workers, then the kit's real-size path (fit, Adapt BN, 3x3 TTA) on synthetic
# 32x224 clips.
# Usage: bash bench/gpu_check.sh [OUT_DIR]   (run from the repo root, in the nightkit environment)
set -euo pipefail
out=${1:-outputs/bench}
mkdir -p "$out"
py=${PYTHON:-python}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# Adapt BN's tests, on the GPU: the timings below mean nothing if these fail (pipefail stops the script)
"$py" -m pytest -q -p no:cacheprovider tests/test_bn_stats.py tests/test_adapt_bn.py 2>&1 | tee "$out/gpu_tests.txt"
"$py" -m bench --device cuda --only loader,models,adapt_bn --out "$out"
# Adapt BN's statistics: PyTorch's kernel on cut channels (the default) against the Triton kernel
"$py" bench/adapt_bn.py --device cuda --models slowfast_r101,uniformer_b --frames 32 --size 224 --batch 8 \
  --batches 8 --repeats 3 --split-blocks-per-sm 0,4 --stats-kernel pytorch,triton --rounds 2 \
  2>&1 | tee "$out/adapt_bn_kernels.txt"
for kernel in pytorch triton; do  # where the GPU time of each goes
  "$py" -m bench.hotspots adapt_bn --device cuda --model slowfast_r101 --frames 32 --size 224 --batch 8 \
    --batches 2 --top 12 --stats-kernel "$kernel" 2>&1 | tee "$out/adapt_bn_hotspots_$kernel.txt"
done
# the train loader at 32 x 224 in the main process and in 8 workers: where the workers lose time
"$py" -m bench.hotspots loader --train --workers 8 --clips 32 --passes 2 --top 16 2>&1 \
  | tee "$out/loader_workers_hotspots.txt"
"$py" bench/gpu_check.py --out "$out/gpu_check.json" 2>&1 | tee "$out/gpu_check.txt"
