"""The commands that give a weight file's tensors back the names a model loads.

One flipped bit in a safetensors header renames a tensor (``lm_head.weight`` read as ``lm_iead.weight``):
the bytes under the wrong name are the tensor's, and from_pretrained initialises the right name afresh.
Both places that find such a rename (a run's checkpoint whose names differ from its neighbours',
checkpoint/runs.py; a folder whose config.json builds a model that needs the name, architecture.py) give
this command to put the name back. A wrapper's prefix on every name (``student.``: prefixes.py) is taken off
the same way, and a state dict a training loop saved inside a dict (``{"model": state_dict, "epoch": 3}`` as
``pytorch_model.bin``: nestedstate.py) is saved as the file itself.
"""

from __future__ import annotations

import json

from nandoctor.wording import shell_word


def rename_back_command(file: str, renames: dict[str, str]) -> str:
    """A shell command (``python -c …``) that renames each tensor ``renames[right]`` of the safetensors ``file``
    back to ``right``, keeping the file's metadata."""
    text = json.dumps  # (a Python string literal in double quotes: the shell's single quotes stay whole)
    return _rewrite(file, "; ".join(f"t[{text(right)}] = t.pop({text(wrong)})" for right, wrong in renames.items()))


def strip_prefix_command(file: str, prefix: str) -> str:
    """A shell command (``python -c …``) that takes ``prefix`` off the front of every tensor name of the safetensors
    ``file`` (the names without it are left as they are), keeping the file's metadata."""
    return _rewrite(file, f"t = {{k.removeprefix({json.dumps(prefix)}): v for k, v in t.items()}}")


def _rewrite(file: str, edit: str) -> str:
    """The command that loads the safetensors ``file``'s tensors as ``t``, runs ``edit`` (Python statements) on them
    and saves ``t`` in its place with the file's metadata."""
    # (written beside it, then moved over it: an interrupted write never leaves half a file in its place)
    code = (f"import os; from safetensors import safe_open; from safetensors.torch import load_file, save_file; "
            f"f = {json.dumps(file)}; meta = safe_open(f, \"pt\").metadata(); t = load_file(f); {edit}; "
            f"save_file(t, f + \".renamed\", metadata=meta); os.replace(f + \".renamed\", f)")
    return f"python -c {shell_word(code)}"


def unnest_command(file: str, key: str) -> str:
    """A shell command (``python -c …``) that saves the state dict held under ``key`` of the torch ``file``'s dict as
    the whole file (``{"model": state_dict, "epoch": 3}`` becomes the state dict)."""
    text = json.dumps
    code = (f"import os, torch; f = {text(file)}; "
            f"torch.save(torch.load(f, map_location=\"cpu\", weights_only=True)[{text(key)}], f + \".unnested\"); "
            f"os.replace(f + \".unnested\", f)")
    return f"python -c {shell_word(code)}"


def renamed_words(renames: dict[str, str]) -> str:
    """``"lm_iead.weight back to lm_head.weight"``, for each rename."""
    return ", ".join(f"{wrong} back to {right}" for right, wrong in renames.items())
