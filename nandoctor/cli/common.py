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

# Every path argument: click's own readability check would answer "Path 'x' is not readable" with exit 2
# and no report; nandoctor's readers say which path, why and what to do, with exit 3 (access.py).
USER_PATH = click.Path(path_type=str, readable=False)


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


def health_limit_options(func: F) -> F:
    """``--max-abs`` and ``--outlier-factor``: the health thresholds, for scan and repair alike (a repair judges
    the target, its donors and its verification by them, as the scan that sent the user there did)."""
    func = click.option("--outlier-factor", type=float, default=None,
                        help="How far above its tensor's bulk a value is an 'outlier' (default 1024 = 2^10).")(func)
    return click.option("--max-abs", type=float, default=None,
                        help="Exploded ceiling: a weight above it is 'exploded' (default 1e5, 2^14 for fp16; "
                        "docs/health.md).")(func)


def checked_limits(max_abs: float | None, outlier_factor: float | None) -> Any:
    """The thresholds of ``--max-abs``/``--outlier-factor`` (None: the defaults); a bad value is a usage error
    before anything is read."""
    from nandoctor import api

    try:
        return api.health_limits(max_abs, outlier_factor)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


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


def known_error(exc: BaseException) -> NandoctorError | None:
    """``exc`` as an error the user can act on: a NandoctorError, or an ``OSError`` on a path (a folder
    that may not be listed, a file that may not be read: access.unreadable names it and says what to do,
    exit 3); None for anything else (a bug of ours)."""
    if isinstance(exc, NandoctorError):
        return exc
    if isinstance(exc, OSError) and exc.filename:
        from nandoctor.access import unreadable

        return unreadable(exc.filename, exc)
    return None


def handles_errors(func: F) -> F:
    """Known errors become a message and an exit code; tracebacks only with --debug."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (NandoctorError, OSError) as exc:
            if debug_enabled():
                raise
            known = known_error(exc)
            if known is None:
                _internal(exc)
            fail(known.message, known.hint, known.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:  # a bug of ours: say so plainly, never claim "clean"
            if debug_enabled():
                raise
            _internal(exc)

    return wrapper  # type: ignore[return-value]


def _internal(exc: BaseException) -> NoReturn:
    fail(
        f"internal error: {type(exc).__name__}: {exc}",
        "run again with --debug for the traceback and report it as a nandoctor bug",
    )
