"""stdout that its reader may close early (`nandoctor scan CKPT | head -5`).

A write to a pipe whose reader is gone raises BrokenPipeError (Python ignores SIGPIPE). Left alone, click
would print a traceback and rich exits with 1, the code for "findings that fail the gate", so a clean
checkpoint piped into ``head`` looked bad. Here the rest of the output goes to /dev/null instead and the
command finishes and exits with its own code (the verdict's); the reader chose to read no further.
"""

from __future__ import annotations

import os
import sys
from typing import Any


class _DropAfterBrokenPipe:
    """A text stream that forwards to ``stream`` until its reader is gone, then drops what is written."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.closed_early = False

    def write(self, text: str) -> int:
        if not self.closed_early:
            try:
                return int(self._stream.write(text))
            except BrokenPipeError:
                self._drop()
        return len(text)

    def flush(self) -> None:
        if not self.closed_early:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._drop()

    def _drop(self) -> None:
        self.closed_early = True
        # what the stream still holds is flushed at exit: into /dev/null, not into a closed pipe
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno, buffer … as the stream has them
        return getattr(self._stream, name)


def tolerate_early_close() -> None:
    """Make ``sys.stdout`` drop what is written after its reader closed the pipe (once per process)."""
    if sys.stdout is not None and not isinstance(sys.stdout, _DropAfterBrokenPipe):
        sys.stdout = _DropAfterBrokenPipe(sys.stdout)
