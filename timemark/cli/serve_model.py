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
    port: int = typer.Option(8000, min=1, max=65535, help="Port to listen on."),
    device: str = typer.Option("cpu", help="Torch device for the model, e.g. cpu or cuda."),
    attn_impl: str = typer.Option("reference", "--attn-impl", help="dense, reference or triton."),
    moe_impl: str = typer.Option("reference", "--moe-impl", help="reference or triton."),
    quantize: str = typer.Option(
        "none", "--quantize", help="none, or fp8: expert weights in FP8 at load time."
    ),
    index_fp8: bool = typer.Option(
        False, "--index-fp8", help="Score keys as the official server does (Hadamard + e4m3 indexer)."
    ),
    tp: int = typer.Option(1, "--tp", min=1, help="Tensor parallelism: one process per GPU (cuda:0…)."),
    cuda_graphs: bool = typer.Option(
        True, "--cuda-graphs/--no-cuda-graphs", help="On CUDA, replay each decode step from a captured graph."
    ),
    model_name: str | None = typer.Option(
        None, "--model-name", help="Served model id (default: folder name)."
    ),
    no_local_files: bool = typer.Option(
        False, "--no-local-files", help="Refuse file paths and file:// URLs."
    ),
    context_tokens: int = typer.Option(
        188_416,
        "--context-tokens",
        min=1,
        help="Tokens one request may hold (KV cache), for the memory check.",
    ),
    gpu_memory_gib: float | None = typer.Option(
        None,
        "--gpu-memory-gib",
        min=0.5,
        help="Memory to plan against (default on CUDA: the GPU's free memory).",
    ),
    max_batch: int = typer.Option(
        8, "--max-batch", min=1, help="Most requests run together in one engine call."
    ),
    batch_window_ms: float = typer.Option(
        20.0,
        "--batch-window-ms",
        min=0.0,
        max=10_000.0,
        help="How long the first request of a batch waits for company.",
    ),
) -> None:
    """Serve /v1/chat/completions, /v1/models and /healthz over the native Keye runtime.

    Before loading the weights, the memory planner checks that they, the KV and indexer caches for
    --context-tokens and the prefill activations fit (on CUDA, or wherever --gpu-memory-gib is given).
    """
    import uvicorn

    from model_runtime.engine.server import create_app

    if quantize not in ("none", "fp8"):
        typer.echo(f"serve-model: --quantize must be none or fp8, got {quantize!r}", err=True)
        raise typer.Exit(2)
    fp8 = quantize == "fp8"
    if gpu_memory_gib is not None or device.startswith("cuda"):
        _check_memory(checkpoint, device, context_tokens, gpu_memory_gib, fp8, tp, index_fp8)
    server_app = create_app(
        checkpoint,
        model_name=model_name,
        device=device,
        attn_impl=attn_impl,
        moe_impl=moe_impl,
        quantize="fp8" if fp8 else None,
        index_fp8=index_fp8,
        tp=tp,
        cuda_graphs=cuda_graphs,
        allow_local_files=not no_local_files,
        max_batch=max_batch,
        batch_window_s=batch_window_ms / 1000,
    )
    uvicorn.run(server_app, host=host, port=port, log_level="info")


def _check_memory(
    checkpoint: Path,
    device: str,
    context_tokens: int,
    gpu_memory_gib: float | None,
    fp8: bool,
    tp: int,
    index_fp8: bool,
) -> None:
    """Refuse (exit 1, the planner's message naming the knobs) a configuration that cannot fit."""
    from model_runtime.config import KeyeConfig
    from model_runtime.memory_plan import GIB, MemoryPlanError, check_fits, dims_from_checkpoint

    if gpu_memory_gib is not None:
        available = int(gpu_memory_gib * GIB)
    else:
        import torch

        available, _ = torch.cuda.mem_get_info(torch.device(device))
    fp8 = fp8 or KeyeConfig.from_pretrained(checkpoint).fp8_experts  # a pre-quantised checkpoint
    try:
        plan = check_fits(
            dims_from_checkpoint(checkpoint), context_tokens=context_tokens, gpu_memory_bytes=available,
            weight_format="fp8" if fp8 else "bf16", tp=tp, indexer_cache_format="fp8" if index_fp8 else "bf16",
        )  # fmt: skip
    except MemoryPlanError as err:
        typer.echo(f"serve-model: {err}", err=True)
        raise typer.Exit(1) from err
    typer.echo(f"memory plan: {plan.describe()}")
