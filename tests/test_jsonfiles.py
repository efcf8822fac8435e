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


def test_a_checkpoint_scanned_alone_says_when_its_trainer_log_could_not_be_read(tmp_path):
    """An audit: a checkpoint with findings, scanned alone in its run, passed over a trainer_state.json it could not
    read without a word (the run scan said so in train_log.error)."""
    import numpy as np
    from safetensors.numpy import save_file

    import nandoctor

    rng = np.random.default_rng(0)
    for step in (10, 20):
        folder = tmp_path / "run" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        weights = {f"model.layers.{i}.mlp.weight": rng.standard_normal((8, 8)).astype(np.float32) for i in range(3)}
        if step == 20:
            weights["model.layers.1.mlp.weight"][0, 0] = np.nan
        save_file(weights, str(folder / "model.safetensors"))
        (folder / "trainer_state.json").write_text('{"log_history": [' + "{}," * 5_000_000 + "{}]}" if step == 20
                                                   else json.dumps({"log_history": [{"step": 10, "loss": 1.0}]}))
    report = nandoctor.scan(str(tmp_path / "run" / "checkpoint-20"))
    assert report.exit_code == 1
    assert [n for n in report.notes if "trainer_state.json: not read" in n and "not judged" in n]
