# syntax=docker/dockerfile:1.7
# timemark CPU worker: the `cpu` queue (probe, finalize, deliver, ingest, sweep). PyAV (its wheel
# carries FFmpeg) and numpy for probing and planning; no torch. Build from the repository root:
#   docker build -f deploy/docker/worker-cpu.Dockerfile -t timemark-worker-cpu .
# The same image serves the `gpu` queue as a thin client when the engine is `openai` (model server split).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY deploy/docker/requirements/worker-cpu.txt /tmp/requirements.txt
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
 && python -c "import av, numpy, core, model_runtime.video" \
 && ! python -c "import torch" 2>/dev/null

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 timemark \
 && useradd --system --uid 10001 --gid timemark --create-home --home-dir /home/timemark --shell /usr/sbin/nologin timemark \
 && install -d -o timemark -g timemark /var/lib/timemark
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY alembic.ini ./
COPY migrations ./migrations
COPY deploy/docker/prestart.sh deploy/docker/worker_control.py /opt/timemark/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TIMEMARK_DATA_DIR=/var/lib/timemark
USER 10001:10001
EXPOSE 9808
CMD ["timemark", "worker", "--queues", "cpu"]
