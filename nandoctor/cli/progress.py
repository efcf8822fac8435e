"""Progress bars and consoles for the CLI: on stderr, only when stderr is a terminal.

rich is imported only where a console is made: a ``--quiet`` or ``--json`` scan, or one whose stderr is
a pipe, never pays for it (issue 18's start-up budget).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


def stdout_console() -> Console:
    from rich.console import Console

    # NO_COLOR is honoured by rich itself. A pipe gets plain text, wide enough that
    # tensor names are not cut (logs and CI are read by grep, not by eye).
    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal:
        console = Console(highlight=False, soft_wrap=True, width=max(console.width, 160))
    return console


def stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _stderr_may_be_terminal() -> bool:
    # rich also treats FORCE_COLOR / TTY_COMPATIBLE as a terminal; only then is a console worth making
    if os.environ.get("FORCE_COLOR") or os.environ.get("TTY_COMPATIBLE"):
        return True
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


_FULL_BAR_WIDTH = 72  # columns from which the bar shows its speed and time left


@contextmanager
def byte_progress(*, enabled: bool, description: str) -> Iterator[Callable[[int, int, str], None] | None]:
    """Yield a callback (done, total, file) that drives a bar with bytes, speed and ETA."""
    if not enabled or os.environ.get("NANDOCTOR_NO_PROGRESS") or not _stderr_may_be_terminal():
        yield None
        return
    console = stderr_console()
    if not console.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.table import Column

    # One line at any width (a review: at 80 columns the bar wrapped onto two lines and cut the byte total): the
    # numbers never wrap, a narrow terminal drops the speed and time left, and the file name gets what is left
    # (cut with an ellipsis; none below a few columns).
    wide = console.width >= _FULL_BAR_WIDTH
    numbers = [TransferSpeedColumn(table_column=Column(no_wrap=True)),
               TimeRemainingColumn(table_column=Column(no_wrap=True))] if wide else []
    room = console.width - (_FULL_BAR_WIDTH - 5 if wide else 40)
    name = [TextColumn("{task.fields[file]}", markup=False,
                       table_column=Column(no_wrap=True, overflow="ellipsis", max_width=room))] if room >= 8 else []
    with Progress(
        TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True)),
        BarColumn(bar_width=20 if wide else 10),
        DownloadColumn(table_column=Column(no_wrap=True)),
        *numbers,
        *name,
        console=console,
        transient=True,
    ) as bar:
        # Hidden until the first report says how many bytes there are (no "0/? bytes ?" frames while the
        # checkpoint is opened)
        task = bar.add_task(description, total=None, file="", visible=False)

        def update(done: int, total: int, file: str) -> None:
            bar.update(task, completed=done, total=total, file=os.path.basename(file), visible=True)

        with _status_on(lambda text: bar.update(task, file=text, visible=True)):
            yield update


@contextmanager
def _status_on(show: Callable[[str], None]) -> Iterator[None]:
    """Show what the ``nandoctor.status`` logger says (a step of seconds with no bytes to count: a model built
    with transformers) while the bar is up, so that the bar never sits still at its end without a word."""
    import logging

    class OnTheBar(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            show(record.getMessage())

    status, handler = logging.getLogger("nandoctor.status"), OnTheBar(logging.INFO)
    level = status.level
    status.addHandler(handler)
    status.setLevel(logging.INFO)
    try:
        yield
    finally:
        status.removeHandler(handler)
        status.setLevel(level)
