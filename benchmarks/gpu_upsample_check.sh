#!/usr/bin/env bash
# Gather-free bilinear upsampling (peaknet_serve.model.resize) on a GPU host, from the repository root:
#   bash benchmarks/gpu_upsample_check.sh
# (a) compiled F.interpolate vs upsample_bilinear_int on the 33M PeakNet's upsample shapes
#     (benchmarks.bench_upsample);
# (b) benchmarks.bench_model on the 33M, 64 x 1 x 352 x 384, modes fp32 and fast, once with the
#     gather-free resize (PEAKNET_RESIZE=blend) and once without (PEAKNET_RESIZE=interpolate, the default);
#     fp32 is eager in both, so it is the control between the two runs;
# (c) a summary table, printed last.
# Files under $OUT (default /tmp/upsample_check): upsample.{json,md}, model_blend.{json,md},
# model_interpolate.{json,md}, summary.md, log.txt.
set -uo pipefail
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
RESULTS=${OUT:-/tmp/upsample_check}
DEVICE=${UPSAMPLE_CHECK_DEVICE:-cuda}
CONFIG=${UPSAMPLE_CHECK_CONFIG:-configs/peaknet-33m.yaml}
CASE=${UPSAMPLE_CHECK_CASE:-64x1x352x384}
REPEATS=${UPSAMPLE_CHECK_REPEATS:-20}
MICRO_ARGS=${UPSAMPLE_CHECK_MICRO_ARGS:-}
PYTHON=${PYTHON:-python3}
mkdir -p "$RESULTS"
exec > >(tee "$RESULTS/log.txt") 2>&1

if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
"$PYTHON" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'

echo "== (a) compiled upsample, F.interpolate vs blend"
timeout "${MICRO_S:-150}" "$PYTHON" -m benchmarks.bench_upsample --device "$DEVICE" --warmup 5 --repeats 50 \
  --out "$RESULTS/upsample.json" $MICRO_ARGS || echo "bench_upsample exited with $?"

for RESIZE in blend interpolate; do
  echo "== (b) bench_model with PEAKNET_RESIZE=$RESIZE"
  PEAKNET_RESIZE=$RESIZE timeout "${MODEL_S:-180}" "$PYTHON" -m benchmarks.bench_model --device "$DEVICE" \
    --configs "$CONFIG" --cases "$CASE" --modes fp32,fast --repeats "$REPEATS" \
    --out "$RESULTS/model_$RESIZE.json" || echo "bench_model ($RESIZE) exited with $?"
  rm -f "$RESULTS/model_$RESIZE.png" "$RESULTS/model_${RESIZE}_memory.png"
done

echo "== (c) summary"
"$PYTHON" - "$RESULTS" <<'EOF' | tee "$RESULTS/summary.md"
import json, sys
from pathlib import Path

out = Path(sys.argv[1])


def rows(name):
    path = out / name
    return json.loads(path.read_text())["rows"] if path.exists() else []


micro = rows("upsample.json")
if micro:
    print("| upsample case | input | interpolate ms | blend ms | × | kernels (interp./blend) | max rel. diff |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in micro:
        shape = "x".join(map(str, r["shape"]))
        print(
            f"| {r['case']} | {shape} {r['dtype']} | {r['interpolate_ms']:.3f} | {r['blend_ms']:.3f} | "
            f"{r['speedup']:.2f} | {r['interpolate_kernels']}/{r['blend_kernels']} | {r['max_rel_diff']:.2g} |"
        )
    print()
model = {resize: {r["mode"]: r for r in rows(f"model_{resize}.json")} for resize in ("blend", "interpolate")}
print("| bench_model mode | ms/batch, blend | ms/batch, interpolate | × (interpolate / blend) | mask = fp32, blend | mask = fp32, interpolate |")
print("| --- | --- | --- | --- | --- | --- |")
for mode in ("fp32", "fast"):
    new, old = model["blend"].get(mode), model["interpolate"].get(mode)
    ms = lambda r: f"{r['ms']:.2f}" if r else "—"
    agreement = lambda r: f"{r['mask_agreement_vs_fp32']:.4f}" if r else "—"
    ratio = f"{old['ms'] / new['ms']:.3f}" if new and old else "—"
    print(f"| {mode} | {ms(new)} | {ms(old)} | {ratio} | {agreement(new)} | {agreement(old)} |")
EOF
