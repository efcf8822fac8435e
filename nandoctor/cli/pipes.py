"""stdout and stderr that may not take what is written: a reader that closes the pipe early
(`nandoctor scan CKPT | head -5`), or a disk that is full or failing (`> /dev/full`: ENOSPC, EIO).

A write that fails raises OSError (BrokenPipeError for a closed pipe: Python ignores SIGPIPE). Left alone,
click would print a traceback, rich exits with 1 (the code for "findings that fail the gate"), and our own
handler called it an internal error, "a nandoctor bug": a repair that was complete and verified at --out
exited 3, which says nothing was left there. Here the rest of that stream's output goes to /dev/null instead,
and the command finishes with its own exit code (the verdict's: gate scripts read it). A closed pipe is the
reader's choice and needs no word; any other failure is said on stderr by :func:`finished`, the one place that
ends every command, with what still stands (a repair in place) where the command said so.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

from nandoctor.errors import EXIT_OK, EXIT_UNREADABLE


class _DropAfterFailure:
    """A text stream that forwards to ``stream`` until a write fails, then drops what is written."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.closed_early = False
        self.failure: OSError | None = None  # the first failure that was not a closed pipe

    def write(self, text: str) -> int:
        if not self.closed_early:
            try:
                return int(self._stream.write(text))
            except OSError as exc:
                self._drop(exc)
        return len(text)

    def flush(self) -> None:
        if not self.closed_early:
            try:
                self._stream.flush()
            except OSError as exc:
                self._drop(exc)

    def _drop(self, exc: OSError) -> None:
        self.closed_early = True
        if not isinstance(exc, BrokenPipeError):
            self.failure = exc
        # what the stream still holds is flushed at exit: into /dev/null, not into a closed pipe or a full disk
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno, buffer … as the stream has them
        return getattr(self._stream, name)


_standing: list[str] = []  # what a command did that stands although its report was lost (the last said wins)
_result_on_stdout: list[bool] = []  # the command's stdout is its result (a manifest), not a report of a verdict


def tolerate_early_close() -> None:
    """Make ``sys.stdout`` and ``sys.stderr`` drop what is written once a write failed (once per process)."""
    if sys.stdout is not None and not isinstance(sys.stdout, _DropAfterFailure):
        sys.stdout = _DropAfterFailure(sys.stdout)
    if sys.stderr is not None and not isinstance(sys.stderr, _DropAfterFailure):
        sys.stderr = _DropAfterFailure(sys.stderr)


def stands_if_unwritten(done: str) -> None:
    """Say ``done`` (what is complete whatever stdout took: "the repair is complete: …") in place of an error
    when the report cannot be written; the exit code stays the command's."""
    _standing.append(done)


def result_on_stdout() -> None:
    """The command's stdout is its result (a manifest, a part of a split scan), not a report of a verdict:
    when it cannot be written the command failed, exit 3 where it would be 0."""
    _result_on_stdout.append(True)


def unwritten() -> OSError | None:
    """The failure that kept stdout from taking the report (not a reader that closed the pipe); None if none."""
    return sys.stdout.failure if isinstance(sys.stdout, _DropAfterFailure) else None


def reason(exc: OSError) -> str:
    """``No space left on device (ENOSPC)``: the errno's words and name, without Python's ``[Errno 28]``."""
    name = errno.errorcode.get(exc.errno or 0)
    words = exc.strerror or str(exc)
    return f"{words} ({name})" if name else words


def finished(code: int) -> int:
    """The exit code of a command that ended with ``code``, once what stdout could not take is said on stderr
    (if stderr takes it): the command's own code, a verdict's included (``scan > /dev/full`` still gates), except
    that a result on stdout that was lost is exit 3."""
    failure = unwritten()
    if failure is None:
        return code
    from nandoctor.report.text import safe

    if _standing:
        print(safe(f"{_standing[-1]}; its report could not be written to stdout: {reason(failure)}"), file=sys.stderr)
        return code
    from nandoctor.errors import ReportNotWrittenError

    lost = bool(_result_on_stdout) and code == EXIT_OK  # (the output is the result itself: a manifest, a part's report)
    error = ReportNotWrittenError(
        f"could not write the report to stdout: {reason(failure)}",
        "the command's result is its output, so this is exit 3; send stdout where it can be written (a disk with space, "
        "another file) and run the command again" if lost else None)
    print(f"error: {safe(error.message)}", file=sys.stderr)
    print(f"hint: {safe(error.hint)}", file=sys.stderr)
    return EXIT_UNREADABLE if lost else code
