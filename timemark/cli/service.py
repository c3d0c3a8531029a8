"""`timemark` commands of the job service: serve, worker, beat, apikey create, demo.

Heavy imports (uvicorn, Celery, the API, torch) happen inside the commands so `timemark --help` stays
fast. `serve --embedded` and `demo` need no servers at all (SQLite, a SQLite broker, a local folder,
the CPU engine); the other commands read the production settings from `TIMEMARK_*` variables.
"""

from __future__ import annotations

from pathlib import Path

import typer

from timemark.cli import app

apikey_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(apikey_app, name="apikey")


@app.command()
def serve(
    embedded: bool = typer.Option(
        False, "--embedded", help="SQLite + SQLite broker + local storage + CPU engine."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port to listen on."),
    data_dir: Path = typer.Option(
        Path(".timemark"), help="Embedded mode: where the database and files live."
    ),
    checkpoint: str | None = typer.Option(None, help="Embedded mode: model checkpoint folder."),
    workers: int = typer.Option(1, min=1, max=64, help="API worker processes (production mode)."),
    log_format: str = typer.Option("json", help="Production mode: json (one object per line) or text."),
) -> None:
    """Run the HTTP API (and, with --embedded, a worker beside it)."""
    if embedded:
        from workers.embedded import run_embedded

        run_embedded(data_dir, checkpoint, host=host, port=port, log=typer.echo)
        return
    import uvicorn

    from core.logging import LOG_FORMATS, logging_config

    if log_format not in LOG_FORMATS:
        raise typer.BadParameter(f"log format must be json or text, got {log_format!r}")
    uvicorn.run(
        "api.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        log_config=logging_config(log_format, "INFO"),
    )


@app.command()
def worker(
    queues: str = typer.Option("cpu,gpu", help="Comma-separated queues to consume: cpu, gpu."),
    concurrency: int = typer.Option(1, min=1, max=256, help="Processes (prefork) consuming at once."),
    pool: str = typer.Option("prefork", help="prefork (time limits enforced) or solo (one process)."),
    beat: bool = typer.Option(False, "--beat", help="Also run the sweeper schedule inside this worker."),
    loglevel: str = typer.Option("INFO", help="Celery log level."),
    metrics_port: int = typer.Option(
        9808, min=0, max=65535, help="Serve Prometheus metrics of all pool processes here (0: off)."
    ),
    log_format: str | None = typer.Option(None, help="json or text (default: json; text in embedded mode)."),
) -> None:
    """Run a Celery worker for timemark's tasks (GPU workers: --queues gpu --concurrency 1)."""
    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = set(names) - {"cpu", "gpu"}
    if not names or unknown:
        raise typer.BadParameter(f"queues must be cpu and/or gpu, got {queues!r}")
    if pool not in ("prefork", "solo", "threads"):
        raise typer.BadParameter(f"pool must be prefork, solo or threads, got {pool!r}")
    if log_format not in (None, "json", "text"):
        raise typer.BadParameter(f"log format must be json or text, got {log_format!r}")
    import os
    import shutil
    import tempfile

    metrics_dir = tempfile.mkdtemp(prefix="timemark-metrics-") if metrics_port else None
    if metrics_dir:
        # Before anything imports prometheus_client, and before Celery forks: see workers/metrics.py.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from celery.signals import setup_logging

    from core.logging import configure_logging
    from core.settings import get_settings
    from workers.app import create_worker_app

    settings = get_settings()
    chosen_format = log_format or ("text" if settings.embedded else "json")

    def use_our_logging(**_: object) -> None:  # a receiver here stops Celery configuring logging itself
        configure_logging(chosen_format, loglevel)

    setup_logging.connect(use_our_logging, weak=False)
    celery = create_worker_app(settings)
    if metrics_port:
        from workers.metrics import serve_metrics

        serve_metrics(metrics_port)
    argv = ["worker", "-Q", ",".join(names), "-c", str(concurrency), "-P", pool, "-l", loglevel]
    argv += ["-n", f"timemark-{'-'.join(names)}@%h", "--without-gossip", "--without-mingle"]
    if beat:
        schedule = Path(settings.data_dir).expanduser().resolve() / "celerybeat-schedule"
        schedule.parent.mkdir(parents=True, exist_ok=True)
        argv += ["-B", "-s", str(schedule)]
    try:
        celery.worker_main(argv)
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


@app.command("beat")
def beat_command(
    schedule: Path = typer.Option(None, help="Beat's schedule file (default: in the data folder)."),
) -> None:
    """Run Celery beat: sends `timemark.sweep` every `TIMEMARK_SWEEP_INTERVAL_S` seconds (run exactly one)."""
    from core.settings import get_settings
    from workers.app import create_worker_app

    settings = get_settings()
    path = schedule or Path(settings.data_dir).expanduser().resolve() / "celerybeat-schedule"
    path.parent.mkdir(parents=True, exist_ok=True)
    create_worker_app(settings).start(["beat", "-s", str(path), "-l", "INFO"])


@apikey_app.command("create")
def apikey_create(
    tenant: str = typer.Option(..., help="Tenant name (created if new)."),
    name: str | None = typer.Option(None, help="A label for the key."),
) -> None:
    """Create an API key for TENANT and print it once (only its hash is stored)."""
    from core.db import make_engine, make_sessionmaker
    from core.security import create_api_key
    from core.settings import get_settings

    tenant = tenant.strip()
    if not tenant or len(tenant) > 100:
        raise typer.BadParameter("tenant must be 1 to 100 characters")
    engine = make_engine(get_settings())
    try:
        with make_sessionmaker(engine)() as session:
            key = create_api_key(session, tenant, name=name)
    finally:
        engine.dispose()
    typer.echo(key)


@app.command()
def demo(
    data_dir: Path | None = typer.Option(
        None, help="Where to keep the demo's service data (default: a temp dir)."
    ),
    checkpoint: str | None = typer.Option(
        None, help="Model checkpoint folder (default: the shipped small model)."
    ),
    out: Path = typer.Option(
        Path("timemark-demo"), help="Folder for the sample video and the timeline picture."
    ),
    port: int = typer.Option(0, min=0, max=65535, help="API port (0: a free one)."),
    timeout_s: float = typer.Option(300.0, min=10, help="Give up after this many seconds."),
) -> None:
    """Make a sample video, start the embedded service, ground a few queries over HTTP, show the result."""
    from workers.demo import run_demo

    raise typer.Exit(
        run_demo(data_dir=data_dir, checkpoint=checkpoint, out=out, port=port, timeout_s=timeout_s)
    )
