"""config.json edited in place, for the tests that judge a checkpoint by what its config says."""

from __future__ import annotations

import json
from pathlib import Path

GONE = object()  # an edit's value: delete the key


def edited(folder: Path, edits: dict) -> Path:
    """``folder`` with its config.json's keys set to ``edits``' values (``GONE``: deleted)."""
    data = json.loads((folder / "config.json").read_text())
    for key, value in edits.items():
        if value is GONE:
            data.pop(key, None)
        else:
            data[key] = value
    (folder / "config.json").write_text(json.dumps(data))
    return folder
