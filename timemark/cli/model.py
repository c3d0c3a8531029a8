"""`timemark model …`: make and inspect native Keye checkpoints.

`timemark model init --size tiny --out DIR` writes a random-weight checkpoint in the official layout
(what the tests, the CPU demo and a fresh training run start from); `timemark model info DIR` prints
its configuration and parameter count; `timemark model quantize DIR --out FP8DIR` writes a copy with FP8
experts (issue 10). torch is imported inside the commands so `--help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer

from timemark.cli import app

model_app = typer.Typer(help="Native Keye-VL checkpoints: create, inspect, quantise.", no_args_is_help=True)
app.add_typer(model_app, name="model")
EXPERT_LAYOUTS = ("fused", "per_expert")


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _require_new_folder(out: Path) -> None:
    """A checkpoint is written into a new or empty folder, never over another one's files."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        _fail(f"--out {out} already exists and is not an empty folder; choose a new one")


@model_app.command("init")
def init(
    out: Path = typer.Option(..., "--out", help="Folder to write the checkpoint into."),
    size: str = typer.Option("tiny", "--size", help="Model size; only 'tiny' is written to disk."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights."),
    expert_layout: str = typer.Option("fused", "--expert-layout", help="'fused' or 'per_expert' tensors."),
) -> None:
    """Write a random-weight checkpoint (config, safetensors, tokenizer, preprocessor config)."""
    from model_runtime.checkpoint import init_checkpoint

    if expert_layout not in EXPERT_LAYOUTS:
        _fail(f"--expert-layout must be one of {', '.join(EXPERT_LAYOUTS)}, got {expert_layout!r}")
    _require_new_folder(out)
    try:
        path = init_checkpoint(out, size=size, seed=seed, expert_layout=expert_layout)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(f"wrote {size} checkpoint to {path}")


@model_app.command("info")
def info(checkpoint: Path = typer.Argument(..., help="Checkpoint folder.")) -> None:
    """Print the architecture numbers and the parameter count of a checkpoint's config."""
    import torch

    from model_runtime.config import KeyeConfig
    from model_runtime.model import count_parameters
    from model_runtime.vlm import KeyeVL

    config = KeyeConfig.from_pretrained(checkpoint)
    with torch.device("meta"):
        n_params = count_parameters(KeyeVL(config))
    t = config.text
    typer.echo(
        f"layers={t.num_hidden_layers} hidden={t.hidden_size} heads={t.num_attention_heads}/"
        f"{t.num_key_value_heads}x{t.head_dim} experts={t.num_experts} top{t.num_experts_per_tok} "
        f"vocab={t.vocab_size} sa_topk={t.sa.topk if t.sa else None} params={n_params:,}"
    )


@model_app.command("quantize")
def quantize(
    checkpoint: Path = typer.Argument(
        ..., exists=True, file_okay=False, help="Checkpoint folder (bf16/fp32)."
    ),
    out: Path = typer.Option(..., "--out", help="Folder to write the FP8 checkpoint into."),
    device: str = typer.Option("cpu", "--device", help="Where to quantise (cuda is faster for 30B)."),
) -> None:
    """Write a copy whose experts are FP8 (e4m3, 128x128 block scales), loadable without --quantize."""
    import shutil

    from model_runtime.checkpoint import CheckpointError, load_model, save_checkpoint

    if out.resolve() == checkpoint.resolve():
        raise typer.BadParameter("--out must be another folder than the checkpoint")
    _require_new_folder(out)
    try:
        model = load_model(checkpoint, device=device, quantize="fp8")
    except (CheckpointError, ValueError, FileNotFoundError) as exc:
        typer.echo(f"model quantize: {str(exc).splitlines()[0]}", err=True)
        raise typer.Exit(1) from exc
    save_checkpoint(model, model.config, out)
    for extra in (
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "generation_config.json",
    ):
        if (checkpoint / extra).is_file():
            shutil.copy(checkpoint / extra, out / extra)
    typer.echo(f"wrote FP8-expert checkpoint to {out}")
