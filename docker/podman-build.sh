#!/usr/bin/env bash
# Build the peaknet-serve image with podman on a host that reaches package mirrors (Debian, PyPI)
# but no image registry: the base image is made with debootstrap from the host's Debian mirror.
#
#   docker/podman-build.sh [TAG]            (from the repository root; default TAG localhost/peaknet-serve:cpu)
#
# Environment:
#   PEAKNET_BASE_IMAGE   use this Python base instead of building one (e.g. python:3.11.11-slim-bookworm
#                        where a registry is reachable)
#   PEAKNET_TORCH_INDEX  index for the torch wheel (default: the host pip's index, PyPI; with a local
#                        wheel folder such as /opt/wheels holding torch-2.13.0+cpu that one is taken)
#   PEAKNET_WHEELS       folder of wheels mounted as pip's find-links (default /opt/wheels if present)
#   CONTAINER_WORK       scratch folder for the base root file system and logs (default /tmp/peaknet-container)
#
# What it does besides `podman build --format docker` (the docker format keeps HEALTHCHECK):
# the host's CA bundle and a pip.conf are mounted into the build, so pip trusts the same TLS
# certificates as the host; runc is used when installed (crun cannot set rlimits on some hosts).
# Prints the image tag on success; the build log is $CONTAINER_WORK/build.log.
set -euo pipefail
TAG=${1:-localhost/peaknet-serve:cpu}
WORK=${CONTAINER_WORK:-/tmp/peaknet-container}
BASE_TAG=localhost/peaknet-base:bookworm-py311
mkdir -p "$WORK"
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null || { echo "podman-build: $1 not found (apt-get install -y ${2:-$1})" >&2; exit 69; }; }
need podman
RUNTIME=()
if command -v runc >/dev/null; then RUNTIME=(--runtime runc); fi

debian_mirror() {
    local mirror
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [[ -n "$mirror" ]] || mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    echo "${mirror:-http://deb.debian.org/debian}"
}

if [[ -n "${PEAKNET_BASE_IMAGE:-}" ]]; then
    BASE=$PEAKNET_BASE_IMAGE
else
    BASE=$BASE_TAG
    if ! podman image exists "$BASE"; then
        need debootstrap
        rootfs="$WORK/rootfs"
        rm -rf "$rootfs"
        echo "podman-build: debootstrap bookworm from $(debian_mirror) (log: $WORK/debootstrap.log)" >&2
        debootstrap --variant=minbase \
            --include=python3,python3-venv,python-is-python3,ca-certificates,netbase,tzdata \
            bookworm "$rootfs" "$(debian_mirror)" >"$WORK/debootstrap.log" 2>&1
        rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
        tar -C "$rootfs" -c . | podman import --change "ENV LANG=C.UTF-8" - "$BASE" >/dev/null
        rm -rf "$rootfs"
    fi
fi

WHEELS=${PEAKNET_WHEELS:-/opt/wheels}
INDEX=${PEAKNET_TORCH_INDEX:-$(python3 -m pip config get global.index-url 2>/dev/null || echo https://pypi.org/simple)}
MOUNTS=()
PIP_CONF="$WORK/pip.conf"
printf '[global]\n' >"$PIP_CONF"
for bundle in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
    if [[ -f "$bundle" ]]; then
        MOUNTS+=(-v "$bundle:/run/host-ca.crt:ro")
        printf 'cert = /run/host-ca.crt\n' >>"$PIP_CONF"
        break
    fi
done
if [[ -d "$WHEELS" ]]; then
    MOUNTS+=(-v "$WHEELS:/opt/wheels:ro")
    printf 'find-links = /opt/wheels\n' >>"$PIP_CONF"
fi
MOUNTS+=(-v "$PIP_CONF:/etc/pip.conf:ro")

echo "podman-build: building $TAG on $BASE (log: $WORK/build.log)" >&2
started=$SECONDS
if ! podman build --format docker "${RUNTIME[@]}" "${MOUNTS[@]}" \
    --build-arg PYTHON_IMAGE="$BASE" --build-arg TORCH_INDEX="$INDEX" \
    -t "$TAG" . >"$WORK/build.log" 2>&1; then
    tail -30 "$WORK/build.log" >&2
    exit 1
fi
echo "podman-build: built $TAG in $((SECONDS - started)) s" >&2
echo "$TAG"
