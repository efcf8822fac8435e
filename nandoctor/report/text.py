"""Names from untrusted files made safe to print: control and format characters escaped.

Its own module (no rich) so the HTML/SVG side and the console report share it without importing
each other.
"""

from __future__ import annotations

import unicodedata

from nandoctor.wording import surrogate_shown


def safe(text: str) -> str:
    """Escape control and format characters (terminal escapes, bidi overrides) from a file's names, and the bytes
    of a file name that are no UTF-8 (Python's surrogate escapes: ``\\xff``, the byte; printed as they are, they
    failed the output with "surrogates not allowed" where the terminal's encoding is strict)."""
    out = []
    for ch in text:
        category = unicodedata.category(ch)
        if category == "Cs":
            out.append(surrogate_shown(ch) or ch)
        elif category in ("Cc", "Cf", "Zl", "Zp"):
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)
