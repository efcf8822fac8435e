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
        elif 0xD800 <= ord(ch) <= 0xDFFF and not 0xDC80 <= ord(ch) <= 0xDCFF:
            out.append(f"\\u{ord(ch):04x}")  # (a lone surrogate from a JSON file: no bytes stand behind it)
        else:
            out.extend(f"\\x{byte:02x}" for byte in os.fsencode(ch))
    return "$'" + "".join(out) + "'"


def scan_command(path: str | os.PathLike[str]) -> str:
    """``nandoctor scan PATH``, the path one shell word (:func:`shell_word`)."""
    return f"nandoctor scan {shell_word(os.fspath(path))}"


__all__ = ["first_few", "scan_command", "shell_word"]
