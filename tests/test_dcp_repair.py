"""Repair of torch.distributed.checkpoint folders: real ``dcp.save`` targets with planted NaN/Inf, repaired from an
earlier clean save; torch's own ``dcp.load`` (safetensors' loader for that serialisation) is the oracle, and every
byte outside the patched ranges must be the source's."""

# Planted NaN in 2 of the 3 weight tensors of these toy saves: diverged under the rule that counts NaN
# tensors toward DIVERGED_SHARE (docs/health.md); --allow-diverged keeps the byte-level repair under test.

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from pathlib import Path

import pytest

import nandoctor
from nandoctor.readers.dcp_metadata import read_metadata
from nandoctor.restore import zippatch
from nandoctor.restore.tensorbytes import byte_range
from tests.conftest import run_cli
from tests.dcp_writer import torch_reference, write_two_rank

torch = pytest.importorskip("torch")
dcp = pytest.importorskip("torch.distributed.checkpoint")
FORMATS = ("TORCH_SAVE", "SAFETENSORS")


def _save(folder: Path, fmt: str, state: dict) -> None:
    from torch.distributed.checkpoint.filesystem import FileSystemWriter, SerializationFormat

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group: saving in a single process"
        dcp.save(state, storage_writer=FileSystemWriter(folder, serialization_format=getattr(SerializationFormat, fmt)))


def _load(folder: Path) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch_reference(str(folder))


def _bits(t):
    return t.contiguous().view(torch.uint8)


def _same_bits(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def _allowed_bytes(result, fmt: str) -> dict[str, set[int]]:
    """file name → the byte positions a repair may change: the restored elements, and the CRC-32 fields of
    the zip entries (local header, data descriptor, central directory) of the items that hold them."""
    allowed: dict[str, set[int]] = {}
    for r in result.plan.writes:
        ref = r.target_ref
        here = allowed.setdefault(Path(ref.file).name, set())
        span = byte_range(ref)
        assert span is not None  # DCP chunks are contiguous: one byte range each
        here.update(range(span[0], span[0] + span[1]))
        if fmt == "TORCH_SAVE":
            metadata = read_metadata(Path(ref.file).parent / ".metadata")
            item = next(i for i in metadata.items_in(Path(ref.file).name) if i.offset <= span[0] < i.offset + i.length)
            for entry in zippatch.read_entries(ref.file, item.offset, item.length):
                here.update(range(entry.local_offset + 14, entry.local_offset + 18))
                here.update(range(entry.central_offset + 16, entry.central_offset + 20))
                if entry.flags & 0x08:  # torch writes a data descriptor (signature, then the CRC)
                    here.update(range(entry.data_offset + entry.size + 4, entry.data_offset + entry.size + 8))
    return allowed


def _check_bytes(source: Path, out: Path, result, fmt: str) -> None:
    allowed = _allowed_bytes(result, fmt)
    assert (source / ".metadata").read_bytes() == (out / ".metadata").read_bytes()
    for name in sorted(os.listdir(source)):
        before, after = (source / name).read_bytes(), (out / name).read_bytes()
        assert len(before) == len(after), name
        changed = {i for i, (x, y) in enumerate(zip(before, after)) if x != y}
        if name in allowed:
            assert changed, name  # a patched file did change …
        assert changed <= allowed.get(name, set()), f"{name}: bytes changed outside the patched ranges"
    if fmt == "TORCH_SAVE":  # … and every item's zip passes Python's own CRC check
        metadata = read_metadata(out / ".metadata")
        for item in metadata.items:
            blob = (out / item.relative_path).read_bytes()[item.offset : item.offset + item.length]
            assert zipfile.ZipFile(io.BytesIO(blob)).testzip() is None, item.fqn


def _single_state(shift: float, plant: bool) -> dict:
    torch.manual_seed(0)
    state = {"model": {"a.weight": torch.randn(5, 7) + shift, "b": torch.randn(16, dtype=torch.bfloat16) + shift,
                       "c": torch.randn(3, 4) + shift}, "step": 7}
    if plant:
        state["model"]["a.weight"][2, 3] = float("nan")
        state["model"]["b"][9] = float("-inf")
    return state


@pytest.mark.parametrize("fmt", FORMATS)
def test_single_process_save_repaired_from_an_earlier_one(tmp_path: Path, fmt: str) -> None:
    donor, target, out = tmp_path / "step-100", tmp_path / "step-200", tmp_path / "fixed"
    _save(donor, fmt, _single_state(0.0, plant=False))
    _save(target, fmt, _single_state(1.0, plant=True))
    done = run_cli("repair", target, "--from", donor, "--out", out, "--no-progress", "--allow-diverged")
    assert done.exit_code == 0, done.output
    result = nandoctor.repair(target, [donor], tmp_path / "fixed-api", allow_diverged=True)
    assert sorted(r.name for r in result.plan.restorations) == ["model.a.weight", "model.b"]
    before, source, repaired = _load(donor), _load(target), _load(out)
    assert _same_bits(repaired["model.a.weight"], before["model.a.weight"])
    assert _same_bits(repaired["model.b"], before["model.b"])
    assert _same_bits(repaired["model.c"], source["model.c"]) and not _same_bits(source["model.c"], before["model.c"])
    _check_bytes(target, out, result, fmt)
    proof = json.loads((out / "nandoctor-repair.json").read_text())
    assert proof["verification"]["verdict"] == "CLEAN" and {r["chunk"] for r in proof["restored"]} == {None}
    assert nandoctor.scan(out).exit_code == 0


@pytest.fixture(scope="module", params=FORMATS)
def two_rank_pair(request, tmp_path_factory) -> tuple[Path, Path, str]:
    """(clean save, the same save with NaN/-Inf planted in some ranks' halves), 2 gloo ranks with DTensor shards."""
    root = tmp_path_factory.mktemp(f"dcp-repair-{request.param.lower()}")
    write_two_rank(str(root / "step-1"), request.param, plant=False)
    write_two_rank(str(root / "step-2"), request.param)
    return root / "step-1", root / "step-2", request.param


# The chunks tests/dcp_writer.py plants a bad value in: (tensor, global box of the chunk)
BAD_CHUNKS = {"model.0.weight": (slice(4, 8),), "model.2.weight": (slice(0, 2),),
              "optim.state.2.bias.exp_avg": (slice(2, 4),)}


def _expected(target: dict, donor: dict) -> dict:
    """The target's values with each bad chunk replaced by the donor's."""
    out = {name: t.clone() for name, t in target.items()}
    for name, box in BAD_CHUNKS.items():
        out[name][box] = donor[name][box]
    return out


@pytest.mark.integration
def test_two_rank_sharded_save_repaired_chunk_by_chunk(two_rank_pair, tmp_path: Path) -> None:
    donor, target, fmt = two_rank_pair
    out = tmp_path / "fixed"
    result = nandoctor.repair(target, [donor], out, allow_diverged=True)
    assert result.ok and nandoctor.scan(out).exit_code == 0
    restored = {(r.name, r.box.offsets if r.box else None) for r in result.plan.restorations}
    # (a parameter's optimizer moments are restored together: exp_avg_sq's two chunks with exp_avg's bad one)
    assert restored == {("model.0.weight", (4, 0)), ("model.2.weight", (0, 0)), ("optim.state.2.bias.exp_avg", (2,)),
                        ("optim.state.2.bias.exp_avg_sq", (0,)), ("optim.state.2.bias.exp_avg_sq", (2,))}
    repaired, expected = _load(out), _expected(_load(target), _load(donor))
    assert repaired.keys() == expected.keys()
    for name in expected:
        assert _same_bits(repaired[name], expected[name]), name
    _check_bytes(target, out, result, fmt)
    proof = json.loads((out / "nandoctor-repair.json").read_text())
    chunks = {r["tensor"]: r["chunk"] for r in proof["restored"]}
    assert chunks["model.0.weight"] == {"offsets": [4, 0], "global_shape": [8, 6]}
    assert sum(r["nan"] + r["posinf"] + r["neginf"] for r in proof["restored"]) == 3
    moved = proof["diff"]["source"]
    assert moved["only_restored_differ"] is True and moved["differ_tensors"] == sorted(BAD_CHUNKS)
    # the console's table shows each restored chunk within its global tensor, as scan shows the tensor
    shown = run_cli("repair", target, "--from", donor, "--out", tmp_path / "fixed-2", "--no-progress",
                    "--allow-diverged", "--dry-run")
    assert "4×6 of 8×6" in shown.output, shown.output


@pytest.mark.integration
def test_donor_sharded_differently_is_taken_element_wise(two_rank_pair, tmp_path: Path) -> None:
    """A consolidated donor (one process, whole tensors) for a 2-rank target: each bad chunk is a box of
    the donor's tensor, copied through a strided view."""
    clean, target, fmt = two_rank_pair
    whole = _load(clean)
    donor = tmp_path / "consolidated"
    _save(donor, "TORCH_SAVE", whole)
    out = tmp_path / "fixed"
    result = nandoctor.repair(target, [donor], out, allow_diverged=True)
    assert result.ok
    assert all(r.donor_ref.chunk is None and r.donor_ref.file.startswith(str(donor)) for r in result.plan.writes)
    assert any(r.donor_ref.strides is not None for r in result.plan.writes)  # a box of a whole tensor: a view
    repaired, expected = _load(out), _expected(_load(target), whole)
    for name in expected:
        assert _same_bits(repaired[name], expected[name]), name
    _check_bytes(target, out, result, fmt)
