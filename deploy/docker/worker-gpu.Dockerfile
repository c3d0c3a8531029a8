# syntax=docker/dockerfile:1.7
# timemark GPU worker: the `gpu` queue (infer) with the native PyTorch runtime and its Triton kernels.
# torch's PyPI wheel brings its own CUDA 13.0 user-space libraries (nvidia-* wheels) and triton; the
# CUDA base image supplies the NVIDIA container-runtime contract (driver >= 580 for CUDA 13.0). Triton
# compiles a small C launcher at first use, so the runtime stage keeps gcc and the Python headers.
#   docker build -f deploy/docker/worker-gpu.Dockerfile -t timemark-worker-gpu .
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install --yes --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY deploy/docker/requirements/worker-gpu.txt /tmp/requirements.txt
RUN pip install --no-deps -r /tmp/requirements.txt \
 && pip install setuptools==80.9.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY api ./api
COPY core ./core
COPY workers ./workers
COPY model_runtime ./model_runtime
COPY kernels ./kernels
COPY timemark ./timemark
COPY migrations ./migrations
RUN pip install --no-deps --no-build-isolation . \
 && pip uninstall --yes setuptools \
 && python -c "import torch, triton, av, model_runtime, kernels"

FROM ${CUDA_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
# The base image's tag pins the Ubuntu release; apt versions float within it (security updates).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install --yes --no-install-recommends python3 gcc libc6-dev python3-dev \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 timemark \
 && useradd --system --uid 10001 --gid timemark --create-home --home-dir /home/timemark --shell /usr/sbin/nologin timemark \
 && install -d -o timemark -g timemark /var/lib/timemark /var/cache/timemark
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY alembic.ini ./
COPY migrations ./migrations
COPY deploy/docker/prestart.sh deploy/docker/worker_control.py /opt/timemark/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TIMEMARK_DATA_DIR=/var/lib/timemark \
    TRITON_CACHE_DIR=/var/cache/timemark/triton \
    XDG_CACHE_HOME=/var/cache/timemark \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    TIMEMARK_ENGINE_KIND=native \
    TIMEMARK_ENGINE_DEVICE=cuda \
    TIMEMARK_ENGINE_DTYPE=bfloat16 \
    TIMEMARK_ENGINE_ATTN_IMPL=triton \
    TIMEMARK_ENGINE_MOE_IMPL=triton
USER 10001:10001
EXPOSE 9808
# One task at a time per GPU; prefork keeps the main process free to answer control commands
# (cancel_consumer in the preStop hook) while the child runs a chunk, and time limits work.
CMD ["timemark", "worker", "--queues", "gpu", "--concurrency", "1"]
