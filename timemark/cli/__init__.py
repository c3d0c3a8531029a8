"""The `timemark` command line.

One Typer app; each command group lives in its own module (service, video, model, grounding) and
registers itself on import. Command modules import heavy libraries (torch, PyAV) inside the command
functions so that `timemark --help` stays fast and the API images need no torch.
"""

from __future__ import annotations

import os

import typer
from typer.exceptions import TyperException

app = typer.Typer(
    name="timemark",
    help="Find when things happen in long videos.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def main() -> None:
    """Entry point of the `timemark` script.

    Commands turn the errors they expect into one-line messages themselves, and so does this for a bad
    option or value (Typer would draw a box of several lines); anything else that escapes
    (an unwritable path, a malformed checkpoint file, a device this machine lacks) still ends as one line,
    not a traceback. TIMEMARK_DEBUG=1 lets it through with its traceback.
    """
    # Imported for their side effect: each module adds its commands to `app`.
    from timemark.cli import grounding, model, serve_model, service, video  # noqa: F401

    try:
        code = app(standalone_mode=False)  # usage errors come back as exceptions, printed below in one line
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        raise SystemExit(130) from None
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        raise SystemExit(1) from None
    except TyperException as err:  # Typer's own (click's) usage errors: a bad option, value or command
        if type(err).__name__ == "NoArgsIsHelpError":
            typer.echo(err.ctx.get_help())
            raise SystemExit(err.exit_code) from None
        ctx = getattr(err, "ctx", None)
        hint = f" (try '{ctx.command_path} --help')" if ctx is not None else ""
        typer.echo(f"error: {' '.join(err.format_message().split())}{hint}", err=True)
        raise SystemExit(err.exit_code) from None
    except Exception as err:  # the last resort of a command line: one line, with the cause's name
        if os.environ.get("TIMEMARK_DEBUG"):
            raise
        typer.echo(f"error: {describe_error(err)} (TIMEMARK_DEBUG=1 shows the traceback)", err=True)
        raise SystemExit(1) from None
    if isinstance(code, int):  # a command's typer.Exit(n)
        raise SystemExit(code)


def describe_error(err: BaseException) -> str:
    """One line naming what failed: an OS error's file and reason, else the exception's kind and text."""
    if isinstance(err, OSError) and err.strerror:
        where = f"{err.filename}: " if err.filename is not None else ""
        return f"{where}{err.strerror.lower()}"
    text = " ".join(str(err).split()) or "no details"
    return f"{type(err).__name__}: {text[:300]}"
