"""The command that renames a safetensors file's tensors back to the names a model loads.

One flipped bit in a safetensors header renames a tensor (``lm_head.weight`` read as ``lm_iead.weight``):
the bytes under the wrong name are the tensor's, and from_pretrained initialises the right name afresh.
Both places that find such a rename (a run's checkpoint whose names differ from its neighbours',
checkpoint/runs.py; a folder whose config.json builds a model that needs the name, architecture.py) give
this command to put the name back.
"""

from __future__ import annotations

import json

from nandoctor.wording import shell_word


def rename_back_command(file: str, renames: dict[str, str]) -> str:
    """A shell command (``python -c …``) that renames each tensor ``renames[right]`` of the safetensors ``file``
    back to ``right``, keeping the file's metadata."""
    text = json.dumps  # (a Python string literal in double quotes: the shell's single quotes stay whole)
    moves = "; ".join(f"t[{text(right)}] = t.pop({text(wrong)})" for right, wrong in renames.items())
    # (written beside it, then moved over it: an interrupted write never leaves half a file in its place)
    code = (f"import os; from safetensors import safe_open; from safetensors.torch import load_file, save_file; "
            f"f = {text(file)}; meta = safe_open(f, \"pt\").metadata(); t = load_file(f); {moves}; "
            f"save_file(t, f + \".renamed\", metadata=meta); os.replace(f + \".renamed\", f)")
    return f"python -c {shell_word(code)}"


def renamed_words(renames: dict[str, str]) -> str:
    """``"lm_iead.weight back to lm_head.weight"``, for each rename."""
    return ", ".join(f"{wrong} back to {right}" for right, wrong in renames.items())
