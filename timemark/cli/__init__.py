"""The `timemark` command line.

One Typer app; each command group lives in its own module (service, video, model, grounding) and
registers itself on import. Command modules import heavy libraries (torch, PyAV) inside the command
functions so that `timemark --help` stays fast and the API images need no torch.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="timemark",
    help="Find when things happen in long videos.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def main() -> None:
    """Entry point of the `timemark` script."""
    # Imported for their side effect: each module adds its commands to `app`.
    from timemark.cli import grounding, model, serve_model, service, video  # noqa: F401

    app()
