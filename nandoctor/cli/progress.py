"""Progress bars and consoles for the CLI: on stderr, only when stderr is a terminal."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console


def stdout_console() -> Console:
    # NO_COLOR is honoured by rich itself. A pipe gets plain text, wide enough that
    # tensor names are not cut (logs and CI are read by grep, not by eye).
    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal:
        console = Console(highlight=False, soft_wrap=True, width=max(console.width, 160))
    return console


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


@contextmanager
def byte_progress(*, enabled: bool, description: str) -> Iterator[Callable[[int, int, str], None] | None]:
    """Yield a callback (done, total, file) that drives a bar with bytes, speed and ETA."""
    console = stderr_console()
    if not enabled or not console.is_terminal or os.environ.get("NANDOCTOR_NO_PROGRESS"):
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

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[file]}", markup=False),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None, file="")

        def update(done: int, total: int, file: str) -> None:
            bar.update(task, completed=done, total=total, file=os.path.basename(file))

        yield update
