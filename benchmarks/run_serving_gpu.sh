#!/usr/bin/env bash
# The serving benchmarks of docs/performance-serving.md on one GPU host, results under $OUT
# (default benchmarks/results). Needs PyTorch with CUDA, TorchServe + Java (on a bare GPU image:
# `source .gpu-ts/torchserve-on-gpu.sh .gpu-ts`) and hdf5plugin for the compressed encodings.
#
#   bash benchmarks/run_serving_gpu.sh mps        # 33M: workers x batch x MPS, start-up cold then warm
#   bash benchmarks/run_serving_gpu.sh models     # peak extraction per mask; random vs trained-like 33M,
#                                                 # bundled model vs echo, compressed input
#   bash benchmarks/run_serving_gpu.sh mps-models # peak extraction per mask; 33M trained-like and random,
#                                                 # 4 workers x batch 4, under MPS and without
#   bash benchmarks/run_serving_gpu.sh aoti       # 33M trained-like, 4 workers x batch 4: a cold start and
#                                                 # warm restarts with torch.compile + its cache, then the
#                                                 # same with AOTInductor packages (compile_backend: aoti)
#   bash benchmarks/run_serving_gpu.sh recipe     # 33M trained-like as docs/performance-serving.md deploys it:
#                                                 # MPS, 8 workers x batch 4, 40 ms delay, pure bf16, blocking
#                                                 # waits, AOTInductor; a 60 s 120 Hz stream, cold + warm start
#   bash benchmarks/run_serving_gpu.sh bundled    # the bundled model under MPS, 8 and 12 workers x batch 4,
#                                                 # against the echo handler's ceiling in the same run, and
#                                                 # bitshuffle-LZ4 / zstd HDF5 requests against raw uint16
#   bash benchmarks/run_serving_gpu.sh compressed # the bundled model, MPS, 8 workers x batch 4: bitshuffle-LZ4
#                                                 # and zstd HDF5 requests against raw uint16 in one run
#                                                 # (the server's Python needs lz4 and backports.zstd)
#
# The 33M checkpoints have random weights (configs/peaknet-33m.yaml); "trained-like" is the same
# draw with its head calibrated to mark 0.5% of the pixels of simulated ePix10k2M frames
# (benchmarks/make_random_checkpoint.py --mask-fraction), as a trained model's masks do.
set -uo pipefail
export PYTHONUNBUFFERED=1
PHASE=${1:?usage: run_serving_gpu.sh mps|models|mps-models|aoti|recipe|bundled|compressed}
RESULTS=${OUT:-benchmarks/results}
MODELS=${MODELS_DIR:-/tmp/peaknet-models}
CACHE=${PEAKNET_CACHE_DIR:-/tmp/peaknet-compile-cache}
mkdir -p "$RESULTS" "$MODELS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
[[ -f $MODELS/p33-trained-like/peaknet.yaml ]] ||
  python3 -m benchmarks.make_random_checkpoint configs/peaknet-33m.yaml "$MODELS/p33-trained-like" --mask-fraction 0.005
E2E=(python3 -m benchmarks.bench_e2e --variants compiled --cache-dir "$CACHE" --duration "${DURATION_S:-6}" --warmup-s 2
     --concurrency 16 --rate 120 --ready-timeout "${READY_TIMEOUT_S:-300}" --logs-dir "${LOGS_DIR:-$RESULTS/logs}")
case $PHASE in
  mps)
    timeout "${MPS_BENCH_S:-420}" "${E2E[@]}" --model-config "$MODELS/p33-trained-like/peaknet.yaml" \
      --workers 2 4 --batch-size 4 8 --mps off on --starts 2 --skip-echo --out "$RESULTS/e2e_33m_mps_h200.json"
    ;;
  models)
    [[ -f $MODELS/p33-random/peaknet.yaml ]] ||
      python3 -m benchmarks.make_random_checkpoint configs/peaknet-33m.yaml "$MODELS/p33-random"
    timeout "${PEAKS_BENCH_S:-120}" python3 -m benchmarks.bench_peaks --device cuda \
      --dense-model "$MODELS/p33-random/peaknet.yaml" --network-ms "${NETWORK_MS:-28}" \
      --out "$RESULTS/peaks_h200.json"
    timeout "${MODELS_BENCH_S:-400}" "${E2E[@]}" --model-config "$MODELS/p33-trained-like/peaknet.yaml" \
      "$MODELS/p33-random/peaknet.yaml" model_store/peaknet/peaknet.yaml --workers "${WORKERS:-4}" \
      --batch-size "${BATCH:-4}" --mps "${MPS:-off}" --starts 2 --encodings raw hdf5-bslz4 hdf5-zstd \
      --out "$RESULTS/e2e_models_h200.json"
    ;;
  mps-models)
    [[ -f $MODELS/p33-random/peaknet.yaml ]] ||
      python3 -m benchmarks.make_random_checkpoint configs/peaknet-33m.yaml "$MODELS/p33-random"
    timeout "${PEAKS_BENCH_S:-60}" python3 -m benchmarks.bench_peaks --device cuda --fractions 0.02 0.049 \
      --dense-model "$MODELS/p33-random/peaknet.yaml" --network-ms "${NETWORK_MS:-108}" \
      --out "$RESULTS/peaks_h200.json"
    timeout "${MPS_BENCH_S:-330}" "${E2E[@]}" --model-config "$MODELS/p33-trained-like/peaknet.yaml" \
      "$MODELS/p33-random/peaknet.yaml" --workers 4 --batch-size 4 --mps ${MPS_MODES:-on off} --skip-echo \
      --out "$RESULTS/e2e_33m_mps_models_h200.json"
    ;;
  aoti)
    # A fresh cache directory: each backend's first start is cold, the later ones warm restarts.
    # BACKENDS=aoti (or inductor) runs one series alone where a command's time is limited.
    AOTI_CACHE=$(mktemp -d /tmp/peaknet-aoti-cache.XXXXXX)
    timeout "${AOTI_BENCH_S:-900}" "${E2E[@]}" --cache-dir "$AOTI_CACHE" \
      --model-config "$MODELS/p33-trained-like/peaknet.yaml" --workers 4 --batch-size 4 --mps off \
      --compile-backend ${BACKENDS:-inductor aoti} --starts "${STARTS:-3}" --skip-echo --concurrency 16 \
      --rate 0 --ready-timeout "${READY_TIMEOUT_S:-560}" --out "$RESULTS/e2e_33m_aoti${BACKENDS:+_${BACKENDS// /_}}_h200.json"
    ls -l "$AOTI_CACHE"
    ;;
  recipe)
    RECIPE_CACHE=$(mktemp -d /tmp/peaknet-recipe-cache.XXXXXX)
    timeout "${RECIPE_BENCH_S:-560}" "${E2E[@]}" --cache-dir "$RECIPE_CACHE" --variants compiled-pure-block \
      --compile-backend aoti --model-config "$MODELS/p33-trained-like/peaknet.yaml" --workers 8 --batch-size 4 \
      --delay-ms 40 --mps on --starts 2 --duration "${DURATION_S:-60}" --warmup-s 3 --concurrency 48 64 \
      --skip-echo --out "$RESULTS/e2e_33m_recipe_h200.json"
    ;;
  bundled)
    timeout "${BUNDLED_BENCH_S:-560}" "${E2E[@]}" --variants compiled-block --model-config model_store/peaknet/peaknet.yaml \
      --workers 8 12 --batch-size 4 --delay-ms 5 --mps on --duration "${DURATION_S:-20}" --concurrency 32 64 --rate 0 \
      --encodings raw hdf5-bslz4 hdf5-zstd --out "$RESULTS/e2e_bundled_mps_h200.json"
    ;;
  compressed)
    timeout "${COMPRESSED_BENCH_S:-560}" "${E2E[@]}" --variants compiled-block --model-config model_store/peaknet/peaknet.yaml \
      --workers 8 --batch-size 4 --delay-ms 5 --mps on --duration "${DURATION_S:-20}" --concurrency 64 --rate 0 \
      --skip-echo --encodings raw hdf5-bslz4 hdf5-zstd --out "$RESULTS/e2e_compressed_h200.json"
    ;;
  *) echo "unknown phase $PHASE" >&2; exit 2 ;;
esac
