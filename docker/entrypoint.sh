#!/usr/bin/env bash
# Container entrypoint for peaknet-serve: environment -> config.properties + configured archive
# -> `torchserve --foreground`.
#
# Environment (all optional):
#   PEAKNET_WEIGHTS             checkpoint (.pt/.bin/.safetensors); relative paths are under
#                               PEAKNET_MODELS_DIR (default /models, where `-v ...:/models` mounts)
#   PEAKNET_CONFIG              PeakNet YAML (public pipeline layout); relative as above
#   PEAKNET_MODEL_LABEL         model name in answers   default: the PEAKNET_WEIGHTS file's stem, else the archive's
#   PEAKNET_PRECISION           auto | float32 | bfloat16 | float16 (and fp32/bf16/fp16 ...)
#   PEAKNET_WORKERS             workers per GPU (per host on CPU)                     default 1
#   PEAKNET_GPUS                all | N (first N GPUs) | 0,2 (these GPUs) | 0 (CPU)   default all
#   PEAKNET_BATCH_SIZE          requests per TorchServe batch             default: the archive's
#   PEAKNET_MAX_BATCH_DELAY_MS  ms to wait for a batch to fill            default: the archive's
#   PEAKNET_DISABLE_TOKEN_AUTH  true switches token authorisation off     default false
#   PEAKNET_TOKEN_EXPIRATION_MIN  minutes an inference key lives          default 10080 (a week)
#   PEAKNET_MAX_REQUEST_MB      largest request/response in MiB           default 256
#   PEAKNET_JOB_QUEUE_SIZE      requests queued before 503                default 256
#   PEAKNET_RESPONSE_TIMEOUT_S  seconds per batch before a worker is restarted   default 120
#                               (written into the archive too, where TorchServe reads it; the
#                               handler refuses work that would not finish in half of it)
#   PEAKNET_BIND_ADDRESS        address the inference API binds              default 0.0.0.0
#   PEAKNET_METRICS_BIND_ADDRESS  address the metrics API binds (no token: set 0.0.0.0 to let a
#                               Prometheus outside the container scrape it)  default 127.0.0.1
#   PEAKNET_MANAGEMENT_BIND_ADDRESS  address the management API binds; another than 127.0.0.1
#                               needs token authorisation on                 default 127.0.0.1
#   PEAKNET_INFERENCE_PORT / PEAKNET_MANAGEMENT_PORT / PEAKNET_METRICS_PORT   8080 / 8081 / 8082
#   PEAKNET_GRPC_INFERENCE_PORT / PEAKNET_GRPC_MANAGEMENT_PORT   (loopback only)  7070 / 7071
#   PEAKNET_HOME                run directory: config.properties, logs/, key_file.json
#                               default: the working directory
#   PEAKNET_CACHE_DIR           compiled-model cache, kept across restarts  default $PEAKNET_HOME/cache
#                               (mount a volume there: -v peaknet-cache:/home/peaknet/cache)
#   PEAKNET_MPS                 true: run the workers under NVIDIA MPS (control daemon started here,
#                               stopped when TorchServe ends; state in $PEAKNET_HOME/mps)  default false
#   PEAKNET_MODEL_ARCHIVE       archive built into the image  default /opt/peaknet/model_store/peaknet.mar
#   PEAKNET_DRY_RUN=1 (or the argument --print-config): write everything, print the command,
#                               do not start TorchServe.
# Other arguments are passed on to torchserve.
#
# The inference API binds 0.0.0.0:8080; metrics (127.0.0.1:8082), management (127.0.0.1:8081)
# and both gRPC APIs stay on loopback unless opted in; model registration is off and allowed_urls
# admits only archives directly in $PEAKNET_HOME/model_store. Token authorisation is on unless
# PEAKNET_DISABLE_TOKEN_AUTH=true: TorchServe writes key_file.json (owner-only) into PEAKNET_HOME,
# and every inference and management request needs a key from it. Without tokens, any process
# that shares the container's network namespace can scale the workers (docs/security.md).
set -euo pipefail
umask 077

die() {
    echo "entrypoint: $*" >&2
    exit 64
}

# bool NAME DEFAULT -> prints true/false; anything but true/false/1/0/yes/no is an error
bool() {
    local value="${!1:-$2}"
    case "${value,,}" in
        true | 1 | yes) echo true ;;
        false | 0 | no) echo false ;;
        *) die "$1=$value: use true or false" ;;
    esac
}

# positive_int NAME DEFAULT [MIN] -> prints the value; errors unless an integer >= MIN (default 1)
positive_int() {
    local value="${!1:-$2}" min="${3:-1}"
    [[ "$value" =~ ^[0-9]+$ ]] && ((10#$value >= min)) || die "$1=$value: use an integer >= $min"
    echo $((10#$value))
}

# model_file NAME -> absolute path of the file named by env NAME (relative: under PEAKNET_MODELS_DIR)
model_file() {
    local value="${!1}"
    [[ "$value" = /* ]] || value="$MODELS_DIR/$value"
    [[ -f "$value" ]] || die "$1: no file $value (mount it, e.g. -v \$PWD/models:$MODELS_DIR)"
    echo "$value"
}

# ipv4 NAME DEFAULT -> prints the address; errors unless it looks like an IPv4 address
ipv4() {
    local value="${!1:-$2}"
    [[ "$value" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || die "$1=$value: use an IPv4 address such as 127.0.0.1"
    echo "$value"
}

# regex_literal TEXT -> TEXT as a Java regex matching it literally: every character but letters,
# digits, / _ and - as \x{hh}, the backslash doubled for config.properties (so a ',' cannot split
# TorchServe's comma-separated allowed_urls either)
regex_literal() {
    local text="$1" out="" c i
    for ((i = 0; i < ${#text}; i++)); do
        c="${text:i:1}"
        if [[ "$c" =~ ^[A-Za-z0-9/_-]$ ]]; then out+="$c"; else out+="$(printf '\\\\x{%x}' "'$c")"; fi
    done
    printf '%s' "$out"
}

# gpu_selection VALUE -> "COUNT VISIBLE" (VISIBLE is '-' when CUDA_VISIBLE_DEVICES is left alone)
gpu_selection() {
    local value="$1"
    if [[ "$value" == all ]]; then
        local count=0
        if command -v nvidia-smi >/dev/null 2>&1; then
            count=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
        fi
        echo "$count -"
    elif [[ "$value" =~ ^[0-9]+$ ]]; then
        echo "$((10#$value)) -"
    elif [[ "$value" =~ ^[0-9]+(,[0-9]+)*$ ]]; then
        local ids
        IFS=, read -r -a ids <<<"$value"
        echo "${#ids[@]} $value"
    else
        die "PEAKNET_GPUS=$value: use all, a count (2) or GPU ids (0,2)"
    fi
}

DRY_RUN="$(bool PEAKNET_DRY_RUN false)"
PASSTHROUGH=()
for arg in "$@"; do
    if [[ "$arg" == --print-config ]]; then DRY_RUN=true; else PASSTHROUGH+=("$arg"); fi
done

HOME_DIR="$(realpath -m -- "${PEAKNET_HOME:-$PWD}")"
MODELS_DIR="${PEAKNET_MODELS_DIR:-/models}"
ARCHIVE="${PEAKNET_MODEL_ARCHIVE:-/opt/peaknet/model_store/peaknet.mar}"
PYTHON="${PEAKNET_PYTHON:-python3}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# -- validate everything before writing anything ------------------------------------------------
# (each $(...) is assigned on its own: `export X="$(f)"` would hide f's exit status from set -e)
if [[ -n "${PEAKNET_WEIGHTS:-}" ]]; then
    PEAKNET_WEIGHTS="$(model_file PEAKNET_WEIGHTS)"
    export PEAKNET_WEIGHTS
    if [[ -z "${PEAKNET_MODEL_LABEL:-}" ]]; then
        PEAKNET_MODEL_LABEL="$(basename "${PEAKNET_WEIGHTS%.*}")"
        export PEAKNET_MODEL_LABEL
    fi
fi
if [[ -n "${PEAKNET_CONFIG:-}" ]]; then
    PEAKNET_CONFIG="$(model_file PEAKNET_CONFIG)"
    export PEAKNET_CONFIG
fi
if [[ -n "${PEAKNET_PRECISION:-}" ]]; then
    case "${PEAKNET_PRECISION,,}" in
        auto | float32 | fp32 | f32 | float | single | bfloat16 | bf16 | float16 | fp16 | f16 | half) ;;
        *) die "PEAKNET_PRECISION=$PEAKNET_PRECISION: use auto, float32, bfloat16 or float16" ;;
    esac
fi
WORKERS_PER_GPU="$(positive_int PEAKNET_WORKERS 1)"
GPUS="$(gpu_selection "${PEAKNET_GPUS:-all}")"
read -r GPU_COUNT VISIBLE <<<"$GPUS"
DISABLE_TOKEN_AUTH="$(bool PEAKNET_DISABLE_TOKEN_AUTH false)"
MPS="$(bool PEAKNET_MPS false)"
if [[ "$MPS" == true ]] && ! command -v nvidia-cuda-mps-control >/dev/null 2>&1; then
    die "PEAKNET_MPS=true: nvidia-cuda-mps-control not found (run with --gpus and the NVIDIA container toolkit)"
fi
TOKEN_EXPIRATION_MIN="$(positive_int PEAKNET_TOKEN_EXPIRATION_MIN 10080)"
MAX_REQUEST_MB="$(positive_int PEAKNET_MAX_REQUEST_MB 256)"
MAX_REQUEST_BYTES=$((MAX_REQUEST_MB * 1048576))
JOB_QUEUE_SIZE="$(positive_int PEAKNET_JOB_QUEUE_SIZE 256)"
RESPONSE_TIMEOUT_S="$(positive_int PEAKNET_RESPONSE_TIMEOUT_S 120)"
INFERENCE_PORT="$(positive_int PEAKNET_INFERENCE_PORT 8080)"
MANAGEMENT_PORT="$(positive_int PEAKNET_MANAGEMENT_PORT 8081)"
METRICS_PORT="$(positive_int PEAKNET_METRICS_PORT 8082)"
GRPC_INFERENCE_PORT="$(positive_int PEAKNET_GRPC_INFERENCE_PORT 7070)"
GRPC_MANAGEMENT_PORT="$(positive_int PEAKNET_GRPC_MANAGEMENT_PORT 7071)"
BIND="$(ipv4 PEAKNET_BIND_ADDRESS 0.0.0.0)"
METRICS_BIND="$(ipv4 PEAKNET_METRICS_BIND_ADDRESS 127.0.0.1)"
MANAGEMENT_BIND="$(ipv4 PEAKNET_MANAGEMENT_BIND_ADDRESS 127.0.0.1)"
if [[ "$MANAGEMENT_BIND" != 127.0.0.1 && "$DISABLE_TOKEN_AUTH" == true ]]; then
    die "PEAKNET_MANAGEMENT_BIND_ADDRESS=$MANAGEMENT_BIND with PEAKNET_DISABLE_TOKEN_AUTH=true would let anyone who reaches it scale or load models: keep token authorisation on"
fi
[[ -f "$ARCHIVE" ]] || die "no model archive at $ARCHIVE (PEAKNET_MODEL_ARCHIVE)"

# one worker per GPU times PEAKNET_WORKERS; TorchServe hands GPUs to workers round-robin
WORKERS=$((WORKERS_PER_GPU * (GPU_COUNT > 0 ? GPU_COUNT : 1)))
ARCHIVE_SETTINGS=(--set "minWorkers=$WORKERS" --set "maxWorkers=$WORKERS" --set "responseTimeout=$RESPONSE_TIMEOUT_S")
if [[ -n "${PEAKNET_BATCH_SIZE:-}" ]]; then
    BATCH_SIZE="$(positive_int PEAKNET_BATCH_SIZE 1)"
    ARCHIVE_SETTINGS+=(--set "batchSize=$BATCH_SIZE")
fi
if [[ -n "${PEAKNET_MAX_BATCH_DELAY_MS:-}" ]]; then
    MAX_BATCH_DELAY_MS="$(positive_int PEAKNET_MAX_BATCH_DELAY_MS 0 0)"
    ARCHIVE_SETTINGS+=(--set "maxBatchDelay=$MAX_BATCH_DELAY_MS")
fi
if [[ "$VISIBLE" != - ]]; then export CUDA_VISIBLE_DEVICES="$VISIBLE"; fi
export PEAKNET_CACHE_DIR="${PEAKNET_CACHE_DIR:-$HOME_DIR/cache}"
if [[ "$MPS" == true ]]; then
    export CUDA_MPS_PIPE_DIRECTORY="$HOME_DIR/mps/pipe" CUDA_MPS_LOG_DIRECTORY="$HOME_DIR/mps/log"
fi

# -- write the run directory --------------------------------------------------------------------
mkdir -p "$HOME_DIR/model_store" "$HOME_DIR/logs"
"$PYTHON" "$HERE/configure_mar.py" "$ARCHIVE" "$HOME_DIR/model_store/peaknet.mar" "${ARCHIVE_SETTINGS[@]}" >&2

CONFIG="$HOME_DIR/config.properties"
cat >"$CONFIG" <<EOF
# written by docker/entrypoint.sh at $(date -u +%Y-%m-%dT%H:%M:%SZ); edits are overwritten
inference_address=http://$BIND:$INFERENCE_PORT
management_address=http://$MANAGEMENT_BIND:$MANAGEMENT_PORT
metrics_address=http://$METRICS_BIND:$METRICS_PORT
grpc_inference_address=127.0.0.1
grpc_management_address=127.0.0.1
grpc_inference_port=$GRPC_INFERENCE_PORT
grpc_management_port=$GRPC_MANAGEMENT_PORT
disable_token_authorization=$DISABLE_TOKEN_AUTH
token_expiration_min=$TOKEN_EXPIRATION_MIN
enable_model_api=false
model_store=$HOME_DIR/model_store
allowed_urls=(?-i)^file://$(regex_literal "$HOME_DIR/model_store")/[A-Za-z0-9_][A-Za-z0-9_.-]*\\\\.mar\$
load_models=peaknet.mar
number_of_gpu=$GPU_COUNT
default_workers_per_model=$WORKERS
max_request_size=$MAX_REQUEST_BYTES
max_response_size=$MAX_REQUEST_BYTES
decode_input_request=false
metrics_mode=prometheus
enable_metrics_api=true
model_metrics_auto_detect=true
ts_open_inference_protocol=true
job_queue_size=$JOB_QUEUE_SIZE
default_response_timeout=$RESPONSE_TIMEOUT_S
install_py_dep_per_model=false
EOF

COMMAND=(torchserve --foreground --ncs --ts-config "$CONFIG" "${PASSTHROUGH[@]}")
export LOG_LOCATION="$HOME_DIR/logs" METRICS_LOCATION="$HOME_DIR/logs"
echo "entrypoint: $WORKERS worker(s) on $GPU_COUNT GPU(s), token authorisation $([[ $DISABLE_TOKEN_AUTH == true ]] && echo off || echo "on (key file: $HOME_DIR/key_file.json)")" >&2
if [[ "$DISABLE_TOKEN_AUTH" == true ]]; then
    echo "entrypoint: warning: without tokens the management APIs (127.0.0.1:$MANAGEMENT_PORT, gRPC 127.0.0.1:$GRPC_MANAGEMENT_PORT) answer every process in this container's network namespace; never run it with --network host" >&2
fi
if [[ "$METRICS_BIND" != 127.0.0.1 ]]; then
    echo "entrypoint: metrics (no token) on $METRICS_BIND:$METRICS_PORT" >&2
fi
if [[ "$DRY_RUN" == true ]]; then
    # the command as it would run: `env` with the variables this script set or resolved
    SHOWN=()
    for name in CUDA_VISIBLE_DEVICES PEAKNET_WEIGHTS PEAKNET_CONFIG PEAKNET_MODEL_LABEL PEAKNET_PRECISION \
        PEAKNET_CACHE_DIR CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY LOG_LOCATION METRICS_LOCATION; do
        if [[ -n "${!name:-}" ]]; then SHOWN+=("$name=${!name}"); fi
    done
    printf '%q ' env "${SHOWN[@]}" "${COMMAND[@]}"
    echo
    exit 0
fi
cd "$HOME_DIR"
if [[ "$MPS" != true ]]; then
    exec "${COMMAND[@]}"
fi
# Under MPS: the daemon first (the workers find it through CUDA_MPS_PIPE_DIRECTORY), TorchServe as a child
# that receives our TERM/INT, and the daemon told to quit once TorchServe has ended.
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
nvidia-cuda-mps-control -d || die "could not start the MPS control daemon (log: $CUDA_MPS_LOG_DIRECTORY)"
"${COMMAND[@]}" &
CHILD=$!
trap 'kill -TERM "$CHILD" 2>/dev/null' TERM INT
STATUS=0
while kill -0 "$CHILD" 2>/dev/null; do
    wait "$CHILD" || STATUS=$?
done
echo quit | nvidia-cuda-mps-control || true
exit "$STATUS"
