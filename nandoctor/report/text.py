"""Names from untrusted files made safe to print: control and format characters escaped.

Its own module (no rich) so the HTML/SVG side and the console report share it without importing
each other.
"""

from __future__ import annotations

import unicodedata


def safe(text: str) -> str:
    """Escape control and format characters (terminal escapes, bidi overrides) from a file's names."""
    out = []
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)
