"""Repair copies, patches and hashes each shard in one pass (restore/copying.py), and builds the proof's diff
from the restored extents (restore/moved.py): the hashes must still be those of the files on disk, at every
chunk boundary, for safetensors, torch zip and legacy torch files, and the diff must name exactly what moved."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from nandoctor.restore import PROOF_NAME, copying, repair
from tests.test_repair_write import _torch_case, make_run


def _check_hashes(out: Path) -> dict:
    proof = json.loads((out / PROOF_NAME).read_text())
    for f in proof["files"]:
        assert f["sha256"] == hashlib.sha256((out / f["path"]).read_bytes()).hexdigest(), f["path"]
    return proof


@pytest.mark.parametrize("chunk", [64, 4096, 256 << 10])
def test_hash_all_while_copying_matches_the_files(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(copying, "CHUNK_BYTES", chunk)  # chunk edges inside, before and after every patch
    target, donor, _, _ = make_run(tmp_path)
    result = repair(target, [donor], tmp_path / "out", hash_all=True)
    assert result.ok and all(f.sha256 for f in result.files)
    proof = _check_hashes(tmp_path / "out")
    restored = sorted(r.name for r in result.plan.restorations)
    source = proof["diff"]["source"]
    assert source["differ_tensors"] == restored and source["only_restored_differ"] and source["complete"]
    assert source["identical"] + source["differ"] == source["tensors"] == len(result.verification.tensors)
    (donor_entry,) = proof["diff"]["donors"]
    assert donor_entry["restored_identical"] and donor_entry["tensors"] == len(restored)


@pytest.mark.parametrize("legacy", [False, True])
def test_torch_views_hashed_after_patching(tmp_path, monkeypatch, legacy):
    monkeypatch.setattr(copying, "CHUNK_BYTES", 96)
    torch, donor = _torch_case(tmp_path)
    from safetensors.torch import save_file

    if legacy:  # not a zip: patched inline, storage by storage
        bad = torch.load(tmp_path / "ckpt" / "pytorch_model.bin", weights_only=True)
        torch.save(bad, tmp_path / "ckpt" / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    save_file({k: v.contiguous() for k, v in donor.items() if k != "lm_head.weight"}, tmp_path / "donor.safetensors")
    result = repair(tmp_path / "ckpt", [tmp_path / "donor.safetensors"], tmp_path / "out")
    assert result.ok
    proof = _check_hashes(tmp_path / "out")
    source = proof["diff"]["source"]
    # h.1.b was never restored and shares no storage: identical; every restored view moved
    assert source["differ_tensors"] == sorted(r.name for r in result.plan.restorations)
    assert source["only_restored_differ"] and source["identical"] == 1


def test_untouched_shards_are_copied_by_the_kernel_and_not_hashed(tmp_path, monkeypatch, demo_run):
    pumped: list[int] = []
    real = copying._pump

    def counting(fin, fout, start, end, buffer, hash_update):
        pumped.append(end - start)
        return real(fin, fout, start, end, buffer, hash_update)

    monkeypatch.setattr(copying, "_pump", counting)
    result = repair(demo_run / "checkpoint-300", [demo_run / "checkpoint-200"], tmp_path / "out")
    assert result.ok
    patched = [f for f in result.files if f.patched]
    untouched = [f for f in result.files if not f.patched]
    assert untouched and all(f.sha256 is None for f in untouched)
    assert sum(pumped) == sum(f.bytes for f in patched)  # only the patched shards went through our buffer
