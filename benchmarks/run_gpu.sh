#!/usr/bin/env bash
# All GPU benchmarks in one go on a GPU host, results under benchmarks/results/ (or $OUT).
#   bash benchmarks/run_gpu.sh            # from the repository root
# Needs PyTorch with CUDA; the end-to-end part needs TorchServe + Java (on a bare GPU image:
# `source .gpu-ts/torchserve-on-gpu.sh .gpu-ts`, see ../shared/gpu/pack-torchserve.sh).
set -uo pipefail
export PYTHONUNBUFFERED=1
RESULTS=${OUT:-benchmarks/results}
MODEL=${PEAKNET_BENCH_MODEL:-model_store/peaknet/peaknet.yaml}
mkdir -p "$RESULTS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout ${MODEL_BENCH_S:-280} python3 -m benchmarks.bench_model --device cuda \
  --out "$RESULTS/model_h200.json" ${MODEL_BENCH_ARGS:-}
timeout ${HANDLER_BENCH_S:-100} python3 -m benchmarks.bench_handler --device cuda --model-config "$MODEL" \
  --variants baseline,bf16-eager,bf16-compile --out "$RESULTS/handler_h200.json"
timeout ${E2E_BENCH_S:-200} python3 -m benchmarks.bench_e2e --model-config "$MODEL" \
  --concurrency 8 32 --duration 8 --warmup-s 2 --out "$RESULTS/e2e_h200.json"
