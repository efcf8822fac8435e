"""How messages name things: the first few names and how many more; a path as a shell word to paste."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence


def first_few(names: Sequence[str], shown: int, *, quoted: bool = False) -> str:
    """``a, b, c and 4 more``: the first ``shown`` of ``names`` (``repr``'d when ``quoted``: names from a file,
    where a space or an empty name must stay visible), then how many were left out."""
    listed = ", ".join(repr(n) if quoted else n for n in names[:shown])
    more = len(names) - shown
    return listed + (f" and {more} more" if more > 0 else "")


def shell_word(text: str) -> str:
    """``text`` quoted for a POSIX shell so that pasting it gives the very name: ``shlex.quote``, or bash's ``$'…'``
    where the name holds characters a terminal does not show as they are (control characters, a file name's bytes
    that are no UTF-8): printed escaped, a plain quote of them named another file (``'ck/esc_\\x1b[31mRED'``)."""
    if all(ch.isprintable() for ch in text):  # (a surrogate escape is not printable either)
        return shlex.quote(text)
    out = []
    for ch in text:
        if ch in "'\\":
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:  # (bash reads \xNN as the byte and \uXXXX as the character, as surrogate_shown writes them)
            out.append(surrogate_shown(ch) or "".join(f"\\x{byte:02x}" for byte in ch.encode("utf-8")))
    return "$'" + "".join(out) + "'"


def surrogate_shown(ch: str) -> str | None:
    """A lone surrogate as the text that names it: ``\\xff`` for a file name's byte that is no UTF-8 (Python's
    surrogate escape), ``\\ud800`` for another (a JSON file's); None for any other character. Printed, written
    to a report file or pasted into bash, they name what the name holds (as they are, "surrogates not allowed")."""
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}" if 0xD800 <= code <= 0xDFFF else None


def path_word(path: str | os.PathLike[str]) -> str:
    """A path as one shell word (:func:`shell_word`) that no command reads as an option: a relative one starting
    with ``-`` gets ``./`` in front (a trial's folder ``-tmp``: ``nandoctor repair -tmp/…`` was "No such option",
    ``mv -tmp/…`` a usage error)."""
    text = os.fspath(path)
    return shell_word(f"./{text}" if text.startswith("-") else text)


def scan_command(path: str | os.PathLike[str]) -> str:
    """``nandoctor scan PATH``, the path one shell word (:func:`path_word`)."""
    return f"nandoctor scan {path_word(path)}"


# the words that tell a repair plan's doubt of a donor saved after its target (restore/donors.py) among its doubts
LATER_DONOR = "after the target (step"

__all__ = ["LATER_DONOR", "first_few", "path_word", "scan_command", "setting_shown", "shell_word", "surrogate_shown"]


def plural(count: int, word: str, words: str | None = None) -> str:
    """``1 tensor``, ``2 tensors`` (``words`` when the plural is not ``word + "s"``)."""
    return f"{count:,} {word if count == 1 else (words or word + 's')}"


def setting_shown(value: object, width: int = 30) -> str:
    """A config setting's JSON, cut short to ``width`` characters (the config checks' messages quote values so)."""
    import json

    text = json.dumps(value)
    return text if len(text) <= width else text[:width - 3] + "…"
