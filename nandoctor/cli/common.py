"""What every command shares: the `error:` line, known errors mapped to exit codes, JSON output."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, NoReturn, TypeVar

import click

from nandoctor.errors import EXIT_UNREADABLE, NandoctorError

F = TypeVar("F", bound=Callable[..., Any])


def debug_enabled(ctx: click.Context | None = None) -> bool:
    if os.environ.get("NANDOCTOR_DEBUG"):
        return True
    ctx = ctx or click.get_current_context(silent=True)
    return bool(ctx and (ctx.find_root().params.get("debug") or ctx.meta.get(_DEBUG_KEY)))


_DEBUG_KEY = "nandoctor.debug"


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[_DEBUG_KEY] = True  # (meta is shared by the whole context tree)


def debug_option(func: F) -> F:
    """``--debug`` on a command too (``nandoctor scan x --debug``), not only before it."""
    return click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
                        help="Show tracebacks (also NANDOCTOR_DEBUG=1).")(func)


def echo_json(data: Any) -> None:
    """Write ``data`` as indented JSON to stdout, piece by piece: a report of a million tensors is
    never held as one string, and an iterator in it (the CLI's tensor list) is encoded item by item."""
    from nandoctor.report.jsontext import iter_json

    out = sys.stdout  # (CliRunner swaps sys.stdout in tests, as it does for click.echo)
    pending: list[str] = []
    size = 0
    for piece in iter_json(data):
        pending.append(piece)
        size += len(piece)
        if size >= 1 << 20:  # a write per MiB, not per piece
            out.write("".join(pending))
            pending, size = [], 0
    pending.append("\n")
    out.write("".join(pending))
    out.flush()


def fail(message: str, hint: str = "", code: int = EXIT_UNREADABLE) -> NoReturn:
    """Print one `error:` line (and a hint) to stderr and exit with ``code``."""
    from nandoctor.report.text import safe

    click.echo(f"error: {safe(message)}", err=True)
    if hint:
        click.echo(f"hint: {safe(hint)}", err=True)
    sys.exit(code)


def handles_errors(func: F) -> F:
    """Known errors become a message and an exit code; tracebacks only with --debug."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except NandoctorError as exc:
            if debug_enabled():
                raise
            fail(exc.message, exc.hint, exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:  # a bug of ours: say so plainly, never claim "clean"
            if debug_enabled():
                raise
            fail(
                f"internal error: {type(exc).__name__}: {exc}",
                "run again with --debug for the traceback and report it as a nandoctor bug",
            )

    return wrapper  # type: ignore[return-value]
