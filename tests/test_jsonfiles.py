"""checkpoint/jsonfiles.py: the JSON beside the weights is read within bounds of bytes and of objects built."""

from __future__ import annotations

import json
import resource

import pytest

from nandoctor.checkpoint import jsonfiles


def test_a_file_of_empty_objects_is_refused_before_parsing(tmp_path):
    """A crafted 30 MB trainer_state.json of empty objects ([{},{},…], under the byte limit) took ~30 bytes of
    memory per byte to parse; now refused by counting, before anything is built."""
    path = tmp_path / "trainer_state.json"
    count = 10_000_000
    path.write_text('{"log_history": [' + "{}," * (count - 1) + "{}]}")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match="objects/arrays"):
        jsonfiles.read_json(path)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 150, grown_mb  # the bytes and their text, not 10M dicts (~700 MB)


def test_a_long_real_log_is_still_read(tmp_path):
    """A 300k-step run logged every step (five numbers an entry) is well within the bounds."""
    path = tmp_path / "trainer_state.json"
    entries = [{"epoch": i / 1000, "grad_norm": 1.5, "learning_rate": 1e-5, "loss": 2.5, "step": i} for i in range(300_000)]
    path.write_text(json.dumps({"log_history": entries}))
    assert len(jsonfiles.read_json(path)["log_history"]) == 300_000
