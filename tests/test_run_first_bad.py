"""A run's first bad checkpoint counts one that is unreadable in one part and unhealthy in another: a tester's
run whose newest .bin held a 2.29e36 weight beside a storage failing its CRC-32 said "first bad: none"."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

import nandoctor  # noqa: E402
from tests.torch_helpers import entry_offset, flip_byte  # noqa: E402


def _checkpoint(folder, step, *, explode=False, flip=False):
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    state = {f"model.layers.{i}.mlp.down_proj.weight": torch.randn(64, 64) * 0.02 for i in range(3)}
    if explode:
        state["model.layers.0.mlp.down_proj.weight"][3, 5] = 2.29e36
    torch.save(state, folder / "pytorch_model.bin")
    if flip:  # a finite mantissa bit of another storage: only its CRC-32 can tell
        flip_byte(folder / "pytorch_model.bin", entry_offset(folder / "pytorch_model.bin", "/data/2") + 9, 0x01)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))


def test_an_unreadable_checkpoint_with_an_exploded_weight_is_the_first_bad(tmp_path):
    for step in (5, 10):
        _checkpoint(tmp_path / f"checkpoint-{step}", step)
    _checkpoint(tmp_path / "checkpoint-15", 15, explode=True, flip=True)
    run = nandoctor.scan_run(str(tmp_path))
    newest = run.checkpoints[-1]
    assert newest.status == "unreadable" and newest.report is not None
    assert [t.name for t in newest.report.unhealthy_tensors] == ["model.layers.0.mlp.down_proj.weight"]
    assert run.first_bad is not None and run.first_bad.name == "checkpoint-15"
    assert run.last_healthy is not None and run.last_healthy.name == "checkpoint-10"


def test_a_checkpoint_lacking_trainer_files_says_what_a_resume_from_it_starts_with(tmp_path):
    """The note names each missing file's consequence (it said "a fresh optimizer or schedule" whatever was gone)."""
    for step in (5, 10, 15, 20):
        folder = tmp_path / f"checkpoint-{step}"
        _checkpoint(folder, step)
        for name in ("optimizer.pt", "rng_state.pth", "scheduler.pt"):
            if step != 15 or name == "scheduler.pt":
                torch.save({"state": {0: {"exp_avg": torch.zeros(4)}}, "param_groups": []} if name == "optimizer.pt"
                           else {"x": torch.zeros(2)}, folder / name)
    run = nandoctor.scan_run(str(tmp_path))
    [note] = [n for n in run.notes if n.startswith("checkpoint-15 lacks")]
    assert note == ("checkpoint-15 lacks optimizer.pt, rng_state.pth, which every other checkpoint of the run holds: "
                    "resume_from_checkpoint from it would start with a fresh optimizer and with other random states")
