# syntax=docker/dockerfile:1.7
# timemark API: FastAPI behind uvicorn. No torch, no PyAV, no model runtime (DESIGN §1), so the image
# stays small and starts in seconds. Build from the repository root:
#   docker build -f deploy/docker/api.Dockerfile -t timemark-api .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The lock first: this layer is reused until a pin changes.
COPY deploy/docker/requirements/api.txt /tmp/requirements.txt
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
# The project itself, without dependencies: the lock above is the whole environment.
RUN pip install --no-deps --no-build-isolation . \
 && pip uninstall --yes setuptools \
 && python -c "import api, core" \
 && ! python -c "import torch" 2>/dev/null

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 timemark \
 && useradd --system --uid 10001 --gid timemark --create-home --home-dir /home/timemark --shell /usr/sbin/nologin timemark \
 && install -d -o timemark -g timemark /var/lib/timemark
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY alembic.ini ./
COPY migrations ./migrations
COPY deploy/docker/prestart.sh /opt/timemark/prestart.sh
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TIMEMARK_DATA_DIR=/var/lib/timemark
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# One process per container (Prometheus counters are per process); scale with replicas.
CMD ["uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers", "--forwarded-allow-ips", "*", "--no-server-header"]
