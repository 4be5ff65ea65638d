# peaknet-serve: TorchServe + PeakNet on a GPU host.
#
#   docker build -t peaknet-serve .
#   docker run --gpus all -p 8080:8080 peaknet-serve
#   (8080 is nginx, deploy/nginx, in front of TorchServe's inference API on the container's loopback;
#    -e PEAKNET_PROXY=off publishes TorchServe itself there; see docs/security.md)
#   (metrics carry no token and stay on the container's loopback unless
#    -e PEAKNET_METRICS_BIND_ADDRESS=0.0.0.0 -p 8082:8082; see docs/security.md)
#
# With podman, build with `--format docker`: the OCI image format has no HEALTHCHECK and podman
# drops it otherwise. docker/podman-build.sh builds it where no image registry is reachable.
#
# Two stages: `build` installs the pinned Python environment (CUDA PyTorch from the PyTorch wheel
# index; the wheels bring their own CUDA runtime, the host only needs the NVIDIA driver and the
# container toolkit) and builds model_store/peaknet.mar; `runtime` is a slim Python image with a
# headless JRE 17, g++ and nginx that receives the environment, the archive and the proxy's
# configuration generator, nothing else.
#
# AOT packages (compile_backend: auto, with compile: true) are built in the container: g++ (with
# gcc, which Triton also compiles its kernel launchers with) compiles them against the CUDA headers
# that docker/cuda_home.py gathers from the CUDA wheels into /opt/venv/cuda (CUDA_HOME); the
# python:*-slim images carry Python's headers, the torch wheel its own. Keep the compile cache on a
# volume (-v peaknet-cache:/home/peaknet/cache): a restarted container loads the packages from it.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
# pip requirement of CUDA's nvcc component (its crt/ headers); empty: the one matching torch's CUDA
ARG CUDA_NVCC_WHEEL=
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
COPY docker/requirements.txt /tmp/requirements.txt
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}" \
    && pip install -r /tmp/requirements.txt
COPY docker/cuda_home.py /tmp/cuda_home.py
RUN python /tmp/cuda_home.py /opt/venv/cuda ${CUDA_NVCC_WHEEL:+--nvcc-wheel "$CUDA_NVCC_WHEEL"}
WORKDIR /src
COPY src/ src/
COPY model_store/peaknet/ model_store/peaknet/
COPY model-config.yaml ./
RUN PYTHONPATH=/src/src python -m peaknet_serve.launch.archive --export-path /opt/peaknet/model_store \
    && pip uninstall -y torch-model-archiver enum-compat

FROM ${PYTHON_IMAGE} AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless=17.* tini=0.19.* g++=4:12.* nginx=1.22.* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin peaknet \
    && chgrp -R 0 /home/peaknet && chmod -R g=u /home/peaknet \
    && mkdir -p /models
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/peaknet/model_store/peaknet.mar /opt/peaknet/model_store/peaknet.mar
COPY docker/entrypoint.sh docker/configure_mar.py docker/healthcheck.py /opt/peaknet/docker/
# the nginx configuration generator (standard library only) and its template, for the entrypoint
COPY src/peaknet_serve/__init__.py src/peaknet_serve/errors.py src/peaknet_serve/resources.py /opt/peaknet/src/peaknet_serve/
COPY src/peaknet_serve/launch/proxy.py src/peaknet_serve/launch/properties.py /opt/peaknet/src/peaknet_serve/launch/
COPY deploy/nginx/peaknet.conf.in /opt/peaknet/deploy/nginx/
# expandable_segments: the CUDA caching allocator grows segments in place, so reserved memory stays
# close to allocated (README, Configuration; benchmarks/results/model_padded_h200, e2e_alloc_*_h200).
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/peaknet \
    PYTHONDONTWRITEBYTECODE=1 \
    PEAKNET_HOME=/home/peaknet \
    PEAKNET_MODELS_DIR=/models \
    PEAKNET_MODEL_ARCHIVE=/opt/peaknet/model_store/peaknet.mar \
    PEAKNET_PYTHON=/opt/venv/bin/python \
    CUDA_HOME=/opt/venv/cuda \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
USER 10001
WORKDIR /home/peaknet
EXPOSE 8080 8082
HEALTHCHECK --interval=30s --timeout=10s --start-period=600s --retries=3 \
    CMD ["/opt/venv/bin/python", "/opt/peaknet/docker/healthcheck.py"]
# tini as PID 1: a process there gets no default signal handlers, so without it `docker stop`
# (SIGTERM) would wait out its grace period and SIGKILL; -g hands the signal to the whole process
# group (the torchserve launcher and the Java frontend it starts).
ENTRYPOINT ["/usr/bin/tini", "-g", "--", "/opt/peaknet/docker/entrypoint.sh"]
