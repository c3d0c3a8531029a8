"""`timemark serve-model`: the native engine behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

from pathlib import Path

import typer

from timemark.cli import app


@app.command("serve-model")
def serve_model(
    checkpoint: Path = typer.Option(
        ..., "--checkpoint", exists=True, file_okay=False, help="Checkpoint folder."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    device: str = typer.Option("cpu", help="Torch device for the model, e.g. cpu or cuda."),
    attn_impl: str = typer.Option("reference", "--attn-impl", help="dense, reference or triton."),
    model_name: str | None = typer.Option(
        None, "--model-name", help="Served model id (default: folder name)."
    ),
    no_local_files: bool = typer.Option(
        False, "--no-local-files", help="Refuse file paths and file:// URLs."
    ),
) -> None:
    """Serve /v1/chat/completions, /v1/models and /healthz over the native Keye runtime."""
    import uvicorn

    from model_runtime.engine.server import create_app

    server_app = create_app(
        checkpoint,
        model_name=model_name,
        device=device,
        attn_impl=attn_impl,
        allow_local_files=not no_local_files,
    )
    uvicorn.run(server_app, host=host, port=port, log_level="info")
