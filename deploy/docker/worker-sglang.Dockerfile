# syntax=docker/dockerfile:1.7
# timemark GPU worker on the Keye SGLang image, for the `sglang` engine (the fork's sglang.Engine in the
# worker process) or for running the fork's `launch_server` beside a thin worker. The Keye image's
# Python environment already holds torch, sglang and the fork's kernels; only timemark's service
# packages are added, within pyproject's ranges, and `pip check` fails the build on a conflict.
#   docker build -f deploy/docker/worker-sglang.Dockerfile -t timemark-worker-sglang .
ARG KEYE_IMAGE=kwaikeye/kwai-keye-vl:keye_vl_v2_30b_a3b

FROM ${KEYE_IMAGE} AS runtime
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
USER 0
WORKDIR /src
COPY deploy/docker/requirements/worker-sglang.in /tmp/requirements.in
COPY pyproject.toml README.md ./
COPY api ./api
COPY core ./core
COPY workers ./workers
COPY model_runtime ./model_runtime
COPY kernels ./kernels
COPY timemark ./timemark
COPY migrations ./migrations
# hadolint ignore=DL3013
RUN python3 -m pip install --upgrade-strategy only-if-needed -r /tmp/requirements.in \
 && python3 -m pip install --no-deps . \
 && python3 -m pip check \
 && python3 -c "import sglang, torch, core, model_runtime"
RUN groupadd --system --gid 10001 timemark \
 && useradd --system --uid 10001 --gid timemark --create-home --home-dir /home/timemark --shell /usr/sbin/nologin timemark \
 && install -d -o timemark -g timemark /var/lib/timemark /var/cache/timemark
WORKDIR /app
COPY alembic.ini ./
COPY migrations ./migrations
COPY deploy/docker/prestart.sh deploy/docker/worker_control.py /opt/timemark/
ENV PYTHONUNBUFFERED=1 \
    TIMEMARK_DATA_DIR=/var/lib/timemark \
    TRITON_CACHE_DIR=/var/cache/timemark/triton \
    XDG_CACHE_HOME=/var/cache/timemark \
    TIMEMARK_ENGINE_KIND=sglang
USER 10001:10001
EXPOSE 9808
CMD ["timemark", "worker", "--queues", "gpu", "--concurrency", "1"]
