#!/usr/bin/env bash
# The GPU check in one go, inside a time budget. Steps, most wanted first:
#   tests     the tests of Adapt BN and of the Triton kernel, and the CUDA tests of the loader's finishing
#             step and of fit/predict; if they fail, the check stops there
#   kernels   Adapt BN's statistics kernels side by side (PyTorch's on cut channels, Triton's), and the pass
#             through the layers' own forward (PyTorch's kernel, no SplitForward)
#   workers   the train loader at 32 x 224 profiled in the main process and in 8 workers
#   profiles  where the GPU time of Adapt BN goes, for each statistics kernel
#   loaders   the suite's loader section on the GPU (ratios over raw decoding, finishing on the GPU)
#   chunks    the train loader in 8 workers with whole clips against parts of 8 and 4 frames
#             (data.chunk_frames), on the loaders step's 32 x 224 set
#   layout    UniFormer-B and SlowFast-R101 training and inference speed with contiguous weights, then
#             channels-last-3d ones (the channels_last param, off in params/base.yaml until timed here)
#   realsize  the kit's real-size path (fit, Adapt BN, 3 x 3 TTA) on synthetic 32 x 224 clips (it ran on
#             2026-11-26)
#
# Usage: bash bench/gpu_check.sh [RESULTS_DIR]   (from the repo root, in the nightkit environment)
#   RESULTS_DIR (default outputs/bench/gpu) receives at most four files: gpu_check.log (everything the
#   steps print, each step's exit status and seconds), the loader section's <date>.md and .json, and
#   gpu_check.json. The synthetic sets are generated into CACHE_DIR (default outputs/bench/cache).
#   BUDGET_S (default 540): seconds for the whole check. Each step stops at its own limit or at the end
#   of the budget, whichever comes first; a step that no longer has its minimum left is skipped.
#   Exit status: 1 if the tests failed, else 0 (a step's own failure is in the log, the check goes on).
set -uo pipefail
out=${1:-outputs/bench/gpu}
cache=${CACHE_DIR:-outputs/bench/cache}
py=${PYTHON:-python}
budget=${BUDGET_S:-540}
export PYTHONUNBUFFERED=1
end=$((SECONDS + budget))

# step NAME LIMIT_S MIN_S COMMAND...: COMMAND for at most LIMIT_S seconds, fewer if the budget ends first;
# skipped when less than MIN_S seconds of the budget are left. Returns COMMAND's status (124: stopped).
step() {
  local name=$1 limit=$2 need=$3
  shift 3
  local left=$((end - SECONDS))
  if ((left < need || left < 1)); then  # timeout 0 would mean no limit at all
    echo "== $name: skipped, $left s of the budget left (it needs $need)"
    return 0
  fi
  ((limit > left)) && limit=$left
  echo "== $name: $* (at most $limit s)"
  local t0=$SECONDS rc=0
  timeout --kill-after=10 "$limit" "$@" || rc=$?
  local note=""
  ((rc == 124 || rc == 137)) && note=" (stopped at its limit)"
  echo "== $name: exit $rc after $((SECONDS - t0)) s$note"
  return "$rc"
}

check() {
  echo "== gpu_check: budget $budget s, results in $out, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "(no nvidia-smi)"
  # the timings below mean nothing if these fail
  step tests 150 60 "$py" -m pytest -q -p no:cacheprovider tests/test_bn_stats.py tests/test_adapt_bn.py \
    tests/test_data.py tests/test_engine.py -k "bn_stats or adapt_bn or cuda or gpu" ||
    { echo "== gpu_check: the tests failed, nothing else was run"; return 1; }
  step kernels 180 60 "$py" bench/adapt_bn.py --device cuda --models slowfast_r101,uniformer_b --frames 32 \
    --size 224 --batch 8 --batches 8 --repeats 3 --split-blocks-per-sm 0,4 --stats-kernel pytorch,triton --layer-forward \
    --rounds 2
  step workers 120 60 "$py" -m bench.hotspots loader --train --workers 8 --clips 32 --passes 2 --top 16 \
    --cache "$cache"
  for kernel in triton pytorch; do
    step "profile-$kernel" 60 30 "$py" -m bench.hotspots adapt_bn --device cuda --model slowfast_r101 --frames 32 \
      --size 224 --batch 8 --batches 2 --top 12 --stats-kernel "$kernel"
  done
  step loaders 180 90 "$py" -m bench --device cuda --only loader --out "$out" --cache "$cache"
  step chunks 120 45 "$py" bench/loader.py "$cache/synth_224px_4x16" --frames 32 --crop 224 --short-side 224 \
    --randaugment rand-m7-n4-mstd0.5 --random-erasing 0.25 --workers 8 --batch-size 4 --max-clips 64 --repeats 2 \
    --chunk-frames 0,8,4 --device cuda
  local models=(bench/models.py --device cuda --amp bf16 --frames 32 --size 224 --batch 4
    --models uniformer_b,slowfast_r101 --attention-model '')
  step layout-contiguous 90 45 "$py" "${models[@]}"
  step layout-channels-last 90 45 "$py" "${models[@]}" --channels-last
  step realsize 240 120 "$py" bench/gpu_check.py --out "$out/gpu_check.json"
  echo "== gpu_check: done in $SECONDS s"
  return 0
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then  # run, not sourced (the tests source it for step)
  mkdir -p "$out"
  check 2>&1 | tee "$out/gpu_check.log"
fi
