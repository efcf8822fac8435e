"""Hostile or damaged torch.distributed.checkpoint folders: chunks that do not cover their tensor, chunks
without a storage item, overlapping chunks, hashing and memory bombs in ``.metadata``, and metadata of
tens of thousands of chunks. Folders are written by torch's own ``dcp.save`` and then edited; torch's
loaders are the oracle (what they load, or that they fail), and legitimate multi-rank saves must pass.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import random
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import nandoctor
from nandoctor.errors import CorruptCheckpointError
from nandoctor.readers.dcp_coverage import tiling_fault
from nandoctor.readers.dcp_metadata import DcpChunk, DcpTensor, read_metadata

torch = pytest.importorskip("torch")
dcp = pytest.importorskip("torch.distributed.checkpoint")
from torch.distributed.checkpoint.metadata import (  # noqa: E402
    ChunkStorageMetadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)

ROOT = Path(__file__).resolve().parent.parent


def _save(folder: Path, state: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group: saving in a single process"
        dcp.save(state, checkpoint_id=folder)


def _edit(folder: Path, change) -> None:
    with open(folder / ".metadata", "rb") as fh:
        metadata = pickle.load(fh)  # our own test output: trusted
    change(metadata)
    with open(folder / ".metadata", "wb") as fh:
        pickle.dump(metadata, fh)


def _torch_loads(folder: Path) -> dict:
    """Every tensor as dcp_to_torch_save's own loader loads it (it raises where torch cannot)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _load_state_dict(state, storage_reader=FileSystemReader(folder), planner=_EmptyStateDictLoadPlanner(),
                         no_dist=True)
    return state


# ---------------------------------------------------------------------------------------------------------
# Chunks that do not tile their tensor
# ---------------------------------------------------------------------------------------------------------

def test_a_tensor_larger_than_its_chunks_is_exit_3_naming_the_gap(tmp_path: Path) -> None:
    _save(tmp_path, {"w": torch.ones(4), "b": torch.ones(2)})
    _edit(tmp_path, lambda m: setattr(m.state_dict_metadata["w"], "size", torch.Size([256])))
    loaded = _torch_loads(tmp_path)  # torch loads it: 4 values from the file, 252 from torch.empty
    assert loaded["w"].shape == (256,) and bool((loaded["w"][:4] == 1).all())
    report = nandoctor.scan(tmp_path)
    assert report.exit_code == 3
    (problem,) = report.errors
    assert problem.path.endswith(".metadata")
    assert problem.message == (
        "tensor 'w': its chunks hold 4 of its 256 elements: [4:256] is in no chunk (torch's loader leaves "
        "uninitialised memory there)")
    assert "re-copy the whole checkpoint folder" in problem.hint
    assert {t.name for t in report.tensors} == {"w", "b"}  # the rest is still scanned


def test_a_chunk_without_a_storage_item_is_exit_3_naming_it(tmp_path: Path) -> None:
    _save(tmp_path, {"w": torch.ones(4), "v": torch.ones(2)})

    def second_chunk_without_item(metadata) -> None:
        metadata.state_dict_metadata["w"].size = torch.Size([8])
        metadata.state_dict_metadata["w"].chunks.append(
            ChunkStorageMetadata(offsets=torch.Size([4]), sizes=torch.Size([4])))

    _edit(tmp_path, second_chunk_without_item)
    with pytest.raises(dcp.api.CheckpointException):
        _torch_loads(tmp_path)
    report = nandoctor.scan(tmp_path)
    assert report.exit_code == 3
    (problem,) = report.errors
    assert problem.message.startswith("tensor 'w': chunk [4:8] has no storage item in the .metadata")
    assert "torch.distributed.checkpoint.load fails" in problem.message


def test_an_object_without_a_storage_item_is_exit_3(tmp_path: Path) -> None:
    _save(tmp_path, {"w": torch.ones(4), "step": 3})
    _edit(tmp_path, lambda m: m.storage_data.pop(next(k for k in m.storage_data if k.fqn == "step")))
    with pytest.raises(dcp.api.CheckpointException):
        _torch_loads(tmp_path)
    report = nandoctor.scan(tmp_path)
    assert report.exit_code == 3
    assert [p.message for p in report.errors] == [
        "object 'step': no storage item in the .metadata (torch.distributed.checkpoint.load fails on it)"]


def test_overlapping_chunks_are_exit_3_naming_an_element_in_both(tmp_path: Path) -> None:
    _save(tmp_path, {"w": torch.ones(4)})

    def overlap(metadata) -> None:
        tensor = metadata.state_dict_metadata["w"]
        tensor.size = torch.Size([6])
        tensor.chunks.append(ChunkStorageMetadata(offsets=torch.Size([2]), sizes=torch.Size([4])))
        stored = metadata.storage_data[MetadataIndex("w", torch.Size([0]))]
        metadata.storage_data[MetadataIndex("w", torch.Size([2]), 1)] = stored  # the same 4 values again

    _edit(tmp_path, overlap)
    assert _torch_loads(tmp_path)["w"].shape == (6,)  # torch loads both chunks, the later one winning
    report = nandoctor.scan(tmp_path)
    assert report.exit_code == 3
    (problem,) = report.errors
    assert problem.message == ("tensor 'w': element [2] lies in 2 of its chunks ([0:4], [2:6]): chunks must not "
                               "overlap (which value torch loads there depends on the read order)")


@pytest.mark.integration
def test_real_multi_rank_layouts_pass(tmp_path: Path) -> None:
    """Uneven rows, columns, an empty chunk of a one-element tensor, a replicated tensor, a pickled object;
    and the same saved without collectives (per-rank metadata files): all tile, all load in torch."""
    from tests.dcp_layouts_writer import write

    write(str(tmp_path))
    shared, local = tmp_path / "shared", tmp_path / "local"
    assert sorted(p.name for p in local.glob("*.metadata")) == ["__0.metadata", "__1.metadata"]
    loaded = _torch_loads(shared)
    for folder in (shared, local):
        report = nandoctor.scan(folder)
        assert report.errors == () and report.exit_code == 0, report.errors
        # each tensor once: rank 1's empty chunk of `one` is never read (it was listed as a second `one`)
        assert sorted(t.name for t in report.tensors) == ["cols", "one", "rep", *(["rep@rank1"] if folder is local else []),
                                                          "rows"]
        # the same values as torch's own consolidation: SAME, exit 0 (INCOMPLETE, exit 3 with the empty chunk)
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        dcp_to_torch_save(str(shared), str(tmp_path / "whole.pt"))
        from tests.conftest import run_cli

        compared = run_cli("diff", folder, tmp_path / "whole.pt", "--exclude", "step", "--exclude", "rep*")
        assert compared.exit_code == 0 and "SAME" in compared.output, compared.output


def _brute_force_exact(size: tuple[int, ...], chunks: list[DcpChunk]) -> bool:
    cover = np.zeros(size, dtype=np.int64)
    for c in set(chunks):
        cover[tuple(slice(o, o + s) for o, s in zip(c.offsets, c.sizes))] += 1
    return bool((cover == 1).all())


def test_the_tiling_check_agrees_with_counting_every_element() -> None:
    """Grids of up to 3 dimensions, a chunk taken away or one added anywhere: the check says exactly what a
    count of each element's chunks says, and the element or box it names is one it says it is."""
    rng = random.Random(7)
    faults = 0
    for _ in range(3000):
        size = tuple(rng.randint(0, 5) for _ in range(rng.randint(0, 3)))
        cuts = [sorted({0, g, *rng.sample(range(g + 1), min(g + 1, rng.randint(0, 2)))}) for g in size]
        chunks = [DcpChunk(tuple(a for a, _ in cell), tuple(b - a for a, b in cell))
                  for cell in itertools.product(*[list(zip(c, c[1:])) for c in cuts])]
        roll = rng.random()
        if roll < 0.3 and chunks:
            chunks.pop(rng.randrange(len(chunks)))
        elif roll < 0.6:
            off = tuple(rng.randint(0, g) for g in size)
            chunks.append(DcpChunk(off, tuple(rng.randint(0, g - o) for o, g in zip(off, size))))
        fault = tiling_fault(DcpTensor("w", "F32", size, tuple(chunks)))
        assert (fault is None) == _brute_force_exact(size, chunks), (size, chunks, fault)
        faults += fault is not None
    assert 500 < faults < 2500


# ---------------------------------------------------------------------------------------------------------
# Bombs in .metadata
# ---------------------------------------------------------------------------------------------------------

def _bomb_folder(folder: Path) -> Path:
    """A 429-byte .metadata: {t60: 1}, t60 a tuple of 2**60 paths through the memo (hashing it never ends)."""
    folder.mkdir(parents=True)
    body = b"\x80\x04})\x94"  # a dict, then () memoized
    for level in range(60):  # drop the last tuple (the memo keeps it), pair it with itself, memoize the pair
        body += b"0h" + bytes([level]) + b"h" + bytes([level]) + b"\x86\x94"
    (folder / ".metadata").write_bytes(body + b"K\x01s.")
    (folder / "__0_0.distcp").write_bytes(b"")
    return folder


def _cli(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "nandoctor", "scan", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return done, time.perf_counter() - started


def test_a_hashing_bomb_in_metadata_is_refused_fast(tmp_path: Path) -> None:
    folder = _bomb_folder(tmp_path / "bomb")
    done, took = _cli(str(folder))
    assert done.returncode == 3 and took < 30
    assert f"{folder / '.metadata'}: the DCP metadata pickle is refused: a tuple holds more than" in done.stdout
    assert "hashing bomb" in done.stdout


def test_a_hashing_bomb_beside_a_clean_checkpoint_does_not_hang_its_run(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    for step in (10, 20, 30):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
        if step != 20:
            save_file({"w": torch.ones(4)}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    _bomb_folder(tmp_path / "checkpoint-20" / "pytorch_model_fsdp_0")
    done, took = _cli(str(tmp_path / "checkpoint-30"), "-q")
    assert done.returncode == 0 and took < 30, done.stdout  # its own files are clean
    run = nandoctor.scan_run(tmp_path)
    (row,) = [r for r in run.checkpoints if r.step == 20]
    assert row.status == "unreadable" and row.report is not None
    assert any("hashing bomb" in p.message for p in row.report.errors)


def _with_planner_data(folder: Path, data) -> None:
    _save(folder, {"w": torch.ones(4)})
    _edit(folder, lambda m: setattr(m, "planner_data", data))


def test_a_metadata_of_millions_of_empty_lists_is_refused_before_it_is_built(tmp_path: Path) -> None:
    """Two million empty lists (4 MB: torch's pickle.load builds 150 MB of them, 38 bytes a byte) ride in a real
    save's planner_data: refused near the start, and the message says why."""
    _with_planner_data(tmp_path, [[] for _ in range(2_000_000)])
    assert (tmp_path / ".metadata").stat().st_size > 4_000_000
    with open(tmp_path / ".metadata", "rb") as fh:
        assert len(pickle.load(fh).planner_data) == 2_000_000  # torch's own reading of it
    report = nandoctor.scan(tmp_path)
    assert report.exit_code == 3 and report.tensors == ()
    (problem,) = report.errors
    assert "would take about" in problem.message and "a memory bomb); refused before it was built" in problem.message


def test_a_huge_memo_index_is_refused_before_the_unpickler_allocates_it(tmp_path: Path) -> None:
    """Seven bytes (NONE, LONG_BINPUT 2**24, POP) at the start of a real .metadata (pickled with protocol 2's
    numbered memo entries): pickle's memo becomes an array of 2**25 pointers (256 MiB; 16 GiB at 2**30)."""
    _save(tmp_path, {"w": torch.ones(4)})
    with open(tmp_path / ".metadata", "rb") as fh:
        raw = pickle.dumps(pickle.load(fh), protocol=2)
    raw = raw[:2] + b"Nr" + struct.pack("<I", 1 << 24) + b"0" + raw[2:]
    (tmp_path / ".metadata").write_bytes(raw)
    with open(tmp_path / ".metadata", "rb") as fh:
        assert "w" in pickle.load(fh).state_dict_metadata  # still a metadata torch reads
    report = nandoctor.scan(tmp_path)
    assert report.exit_code == 3
    (problem,) = report.errors
    assert "unpickling its first" in problem.message and "a memory bomb" in problem.message


@pytest.mark.parametrize("case", ["built twice", "long size", "ordered dict from items", "many paths"])
def test_stand_ins_copy_nothing_large(tmp_path: Path, case: str) -> None:
    """What a stand-in would copy per call (a record's fields, a torch.Size's list, an OrderedDict's items, a
    path's parts) is bounded or refused, so the pre-scan's estimate of what the load holds stays true."""
    md = "torch.distributed.checkpoint.metadata"
    record = f"c{md}\nChunkStorageMetadata\n".encode()
    if case == "built twice":  # a record rebuilt from the same shared dict: one copy of it per record
        body = record + b")\x81}q\x01(X\x01\x00\x00\x00aK\x01ub" + b"h\x01b"
    elif case == "long size":  # torch.Size of 65 sizes
        body = b"ctorch\nSize\n(" + b"K\x01" * 65 + b"t\x85R"
    elif case == "ordered dict from items":  # OrderedDict(a dict): a copy of the dict per call
        body = b"ccollections\nOrderedDict\n}(K\x01K\x01u\x85R"
    else:  # seventeen paths
        body = b"cpathlib\nPosixPath\nq\x01" + b"h\x01X\x01\x00\x00\x00a\x85R0" * 17 + b"N"
    path = tmp_path / ".metadata"
    path.write_bytes(b"\x80\x02" + body + b".")
    with pytest.raises(CorruptCheckpointError, match="not a readable DCP metadata pickle"):
        read_metadata(path)


# ---------------------------------------------------------------------------------------------------------
# Tens of thousands of chunks: linear, not quadratic
# ---------------------------------------------------------------------------------------------------------

def _many_chunks(folder: Path, chunks: int, files: int) -> None:
    """One tensor of ``chunks`` one-element chunks in ``files`` files (each a one-element safetensors stream),
    its Metadata made of torch's own classes."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import Metadata

    folder.mkdir()
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    header += b" " * (-len(header) % 8)
    blob = struct.pack("<Q", len(header)) + header + struct.pack("<f", 1.0)
    for f in range(files):
        (folder / f"__{f}_0.distcp").write_bytes(blob)
    tensor = TensorStorageMetadata(
        properties=TensorProperties(dtype=torch.float32), size=torch.Size([chunks]),
        chunks=[ChunkStorageMetadata(offsets=torch.Size([i]), sizes=torch.Size([1])) for i in range(chunks)])
    storage = {MetadataIndex("w", torch.Size([i]), i): _StorageInfo(f"__{i % files}_0.distcp", 0, len(blob))
               for i in range(chunks)}
    with open(folder / ".metadata", "wb") as fh:
        pickle.dump(Metadata(state_dict_metadata={"w": tensor}, storage_data=storage), fh)


def test_thirty_thousand_chunks_in_five_hundred_files_scan_in_linear_time(tmp_path: Path) -> None:
    """Each item's chunk was found by a walk over all chunks, each file's items by a walk over all items: 17 s
    here, 2 s now."""
    _many_chunks(tmp_path / "many", 30_000, 500)
    started = time.perf_counter()
    report = nandoctor.scan(tmp_path / "many")
    took = time.perf_counter() - started
    assert report.errors == () and report.exit_code == 0
    (tensor,) = report.tensors
    assert tensor.ref.shape == (30_000,) and tensor.nan == 0
    assert took < 10, took


def test_a_storage_file_name_with_a_nul_byte_is_refused_not_an_internal_error(tmp_path: Path) -> None:
    """A fuzzer's find: a .metadata naming its storage file "_\\x000_0.distcp" ended as "internal error: ValueError:
    embedded null byte", with no report (no --json document, no --quiet line)."""
    from tests.conftest import run_cli

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"w": torch.randn(3)}, checkpoint_id=str(tmp_path), no_dist=True)
    data = (tmp_path / ".metadata").read_bytes()
    assert data.count(b"__0_0.distcp") == 1
    (tmp_path / ".metadata").write_bytes(data.replace(b"__0_0.distcp", b"_\x000_0.distcp"))
    result = run_cli("scan", str(tmp_path), "--json")
    assert result.exit_code == 3
    errors = json.loads(result.output)["errors"]
    assert any("is not a valid file name (it holds a NUL byte)" in e["message"] for e in errors), errors


@pytest.mark.parametrize(("layout", "loads"), [(b"torch.strided", True), (b"torch._mkldnn", True),  # (same length)
                                                (b"torch.strXded", False), (b"torch.float32", False)])
def test_a_tensor_layout_torch_does_not_have_is_refused_as_dcp_load_refuses_it(tmp_path: Path, layout, loads) -> None:
    """A fuzzer's find: 'torch.strided' changed to 'torch.strXded' in .metadata made dcp_to_torch_save fail
    (torch.serialization._get_layout: KeyError) while the scan said CLEAN. The oracle: torch's own metadata read."""
    from torch.distributed.checkpoint import FileSystemReader

    folder = tmp_path / "ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"w": torch.randn(3)}, checkpoint_id=str(folder), no_dist=True)
    data = (folder / ".metadata").read_bytes()
    assert data.count(b"torch.strided") == 1
    (folder / ".metadata").write_bytes(data.replace(b"torch.strided", layout))
    try:
        FileSystemReader(str(folder)).read_metadata()
        torch_reads = True
    except KeyError:  # _get_layout's cache lookup
        torch_reads = False
    assert torch_reads == loads
    report = nandoctor.scan(folder)
    assert (report.exit_code == 3) == (not loads), report.errors
    if not loads:
        assert "is none torch has (dcp.load refuses it)" in report.errors[0].message


# ---------------------------------------------------------------------------------------------------------
# File names that name the same file another way
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spelling", ["./{}", ".//{}", "././{}"])
def test_an_item_whose_file_is_spelled_with_dot_parts_is_read(tmp_path: Path, spelling: str) -> None:
    """An adversarial round: .metadata gave the NaN tensor's file as ``./__0_0.distcp`` (the other tensor's as
    ``__0_0.distcp``); dcp.load opened it and got the NaN, nandoctor matched its items to no file, never read
    them and called the folder CLEAN. Every item is read from the file it names, however spelled."""
    import dataclasses

    _save(tmp_path, {"w": torch.tensor([1.0, float("nan"), 3.0, 4.0]), "b": torch.ones(3)})

    def respell(metadata) -> None:
        metadata.storage_data = {k: dataclasses.replace(v, relative_path=spelling.format(v.relative_path))
                                 if k.fqn == "w" else v for k, v in metadata.storage_data.items()}

    _edit(tmp_path, respell)
    loaded = _torch_loads(tmp_path)
    assert int(torch.isnan(loaded["w"]).sum()) == 1  # the oracle: torch reads the NaN
    report = nandoctor.scan(tmp_path)
    assert report.exit_code == 1 and report.nan == 1
    assert {t.ref.name for t in report.tensors if t.nan} == {"w"} and len(report.tensors) == 2
