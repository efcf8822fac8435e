"""The scan on real safetensors bytes: exact planted counts, every dtype, index checks."""

from __future__ import annotations

import json
import shutil
import struct
import sys

import numpy as np
import pytest

from fixtures.builders import SPECIALS, RawTensor, bf16_bits, finite_bits, write_safetensors, write_sharded
from nandoctor.layers import bad_ranges
from nandoctor.engine import scan
from tests.conftest import DEMO_RUN, FIXTURES


def by_name(report):
    return {t.name: t for t in report.tensors}


def test_demo_checkpoint_300_exact_counts():
    expected = json.loads((DEMO_RUN / "expected.json").read_text())["checkpoints"]["checkpoint-300"]
    report = scan(DEMO_RUN / "checkpoint-300", device="cpu")
    assert report.complete and not report.ok and report.exit_code == 1
    assert len(report.tensors) == expected["tensors"]
    results = by_name(report)
    bad = {n: t for n, t in results.items() if t.bad}
    assert set(bad) == set(expected["bad_tensors"])
    for name, want in expected["bad_tensors"].items():
        got = results[name]
        assert (got.nan, got.posinf, got.neginf, got.first_bad) == (
            want["nan"], want["posinf"], want["neginf"], want["first_bad"]
        ), name
    assert [r.label for r in bad_ranges(report.layers)] == ["transformer.h.21–23"]
    assert (report.nan, report.posinf, report.neginf) == (expected["nan"], expected["posinf"], expected["neginf"])


@pytest.mark.parametrize("step", [100, 200])
def test_demo_clean_checkpoints(step):
    report = scan(DEMO_RUN / f"checkpoint-{step}", device="cpu")
    assert report.ok and report.exit_code == 0 and report.verdict == "CLEAN"
    assert report.bytes_scanned == sum(t.ref.region.nbytes for t in report.tensors)


def test_dtype_zoo_exact_counts():
    expected = json.loads((FIXTURES / "dtype-zoo.expected.json").read_text())
    report = scan(FIXTURES / "dtype-zoo.safetensors", device="cpu")
    results = by_name(report)
    assert set(results) == set(expected)
    for name, want in expected.items():
        got = results[name]
        assert (got.nan, got.posinf, got.neginf, got.first_bad) == (
            want["nan"], want["posinf"], want["neginf"], want["first_bad"]
        ), name
        assert got.can_hold_nonfinite == want.get("can_hold_nonfinite", True), name


TORCH_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn",
                "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz", "F8_E8M0": "float8_e8m0fnu"}


def test_dtype_zoo_agrees_with_torch():
    torch = pytest.importorskip("torch")
    from safetensors import safe_open

    report = by_name(scan(FIXTURES / "dtype-zoo.safetensors", device="cpu"))
    with safe_open(FIXTURES / "dtype-zoo.safetensors", framework="pt") as f:
        for st_name, torch_name in TORCH_DTYPES.items():
            if not hasattr(torch, torch_name):
                continue
            name = f"zoo.{st_name.lower()}"
            t = f.get_tensor(name)
            assert t.dtype == getattr(torch, torch_name)
            if st_name.startswith("F8"):  # torch lacks isinf on fp8: compare in float32 (casts are exact)
                t = t.float()
            got = report[name]
            assert got.nan == int(torch.isnan(t).sum()), name
            assert got.posinf == int(torch.isposinf(t).sum()), name
            assert got.neginf == int(torch.isneginf(t).sum()), name


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32", "F64", "F8_E5M2"])
def test_large_tensor_across_chunks(tmp_path, dtype):
    """Bad values on both sides of chunk boundaries are counted once, first index is global."""
    rng = np.random.default_rng(1)
    itemsize = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "F8_E5M2": 1}[dtype]
    n = (9 << 20) // itemsize + 3  # > two 4 MB chunks, not a multiple of anything
    bits = finite_bits(dtype, n, rng)
    chunk_elems = (4 << 20) // itemsize
    nan_at = [chunk_elems - 1, chunk_elems, 2 * chunk_elems + 5, n - 1]
    pos_at = [17, chunk_elems + 1]
    neg_at = [2 * chunk_elems - 1]
    for p in nan_at:
        bits[p] = SPECIALS[dtype]["nan"]
    for p in pos_at:
        bits[p] = SPECIALS[dtype]["posinf"]
    for p in neg_at:
        bits[p] = SPECIALS[dtype]["neginf"]
    write_safetensors(tmp_path / "big.safetensors", {"w": RawTensor(dtype, (n,), bits.tobytes())})
    t = scan(tmp_path / "big.safetensors", device="cpu").tensors[0]
    assert (t.nan, t.posinf, t.neginf, t.first_bad) == (len(nan_at), len(pos_at), len(neg_at), 17)


def test_unaligned_data_offsets(tmp_path):
    """A 1-byte tensor first shifts every following tensor off 8-byte alignment."""
    bits = bf16_bits(np.ones(1001, np.float32))
    bits[1000] = SPECIALS["BF16"]["neginf"]
    write_safetensors(tmp_path / "u.safetensors", {
        "a.byte": RawTensor("U8", (1,), b"\x07"),
        "b.w": RawTensor("BF16", (1001,), bits.tobytes()),
    })
    t = by_name(scan(tmp_path / "u.safetensors", device="cpu"))["b.w"]
    assert (t.neginf, t.first_bad, t.first_bad_coords) == (1, 1000, (1000,))


def test_first_bad_coords(tmp_path):
    bits = bf16_bits(np.zeros(6 * 7, np.float32))
    bits[3 * 7 + 4] = SPECIALS["BF16"]["nan"]
    write_safetensors(tmp_path / "c.safetensors", {"m": RawTensor("BF16", (6, 7), bits.tobytes())})
    t = scan(tmp_path / "c.safetensors", device="cpu").tensors[0]
    assert t.first_bad == 25 and t.first_bad_coords == (3, 4)


def _demo_copy(tmp_path, step=300):
    dst = tmp_path / f"checkpoint-{step}"
    shutil.copytree(DEMO_RUN / f"checkpoint-{step}", dst)
    return dst


def test_index_missing_shard_is_reported_and_other_shard_still_scanned(tmp_path):
    ckpt = _demo_copy(tmp_path)
    (ckpt / "model-00002-of-00002.safetensors").unlink()
    report = scan(ckpt, device="cpu")
    assert report.exit_code == 3 and not report.ok
    assert any("missing" in e.message and e.path.endswith("model-00002-of-00002.safetensors") for e in report.errors)
    assert len(report.tensors) > 0  # the first shard was still read


def test_index_shard_escaping_folder_is_refused(tmp_path):
    ckpt = _demo_copy(tmp_path, 100)
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = "../outside.safetensors"
    (tmp_path / "outside.safetensors").write_bytes((ckpt / "model-00001-of-00002.safetensors").read_bytes())
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    report = scan(ckpt, device="cpu")
    assert report.exit_code == 3
    assert any("outside the checkpoint folder" in e.message for e in report.errors)
    assert str(tmp_path / "outside.safetensors") not in report.files


def test_index_name_mismatches_are_reported_by_name(tmp_path):
    ckpt = _demo_copy(tmp_path, 100)
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    shard1 = "model-00001-of-00002.safetensors"
    index["weight_map"]["ghost.weight"] = shard1
    dropped = next(n for n, s in index["weight_map"].items() if s == shard1 and n != "ghost.weight")
    del index["weight_map"][dropped]
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    report = scan(ckpt, device="cpu")
    messages = [e.message for e in report.errors]
    assert any("absent from every shard" in m and "'ghost.weight'" in m for m in messages)
    assert any("not in model.safetensors.index.json" in n and repr(dropped) in n for n in report.notes)


def test_a_stale_index_whose_tensor_lies_in_another_listed_shard_loads(tmp_path):
    """A real-use trial: a tensor moved to another shard, the index not updated. transformers reads every tensor of
    every shard the index lists, so the model loads bit for bit; it was NO TENSORS + UNREADABLE (exit 3)."""
    ckpt = _demo_copy(tmp_path, 100)
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    moved = next(n for n, s in index["weight_map"].items() if s == "model-00001-of-00002.safetensors")
    index["weight_map"][moved] = "model-00002-of-00002.safetensors"
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    report = scan(ckpt, device="cpu")
    assert report.exit_code == 0 and not report.errors, report.errors
    assert any("lie in another shard" in n and repr(moved) in n for n in report.notes)


def test_fifo_shard_does_not_hang(tmp_path):
    import os

    folder = tmp_path / "ck"
    folder.mkdir()
    write_safetensors(folder / "a.safetensors", {"x": RawTensor("F32", (2,), b"\0" * 8)})
    os.mkfifo(folder / "b.safetensors")
    report = scan(folder, device="cpu")
    assert report.exit_code == 3
    assert any("regular file" in e.message for e in report.errors)
    assert [t.name for t in report.tensors] == ["x"]


def test_folder_without_index(tmp_path):
    rng = np.random.default_rng(3)
    bits = finite_bits("F16", 50, rng)
    bits[7] = SPECIALS["F16"]["posinf"]
    write_safetensors(tmp_path / "one.safetensors", {"model.layers.0.mlp.up_proj.weight": RawTensor("F16", (5, 10), bits.tobytes())})
    write_safetensors(tmp_path / "two.safetensors", {"model.layers.1.mlp.up_proj.weight": RawTensor("F16", (50,), finite_bits("F16", 50, rng).tobytes())})
    report = scan(tmp_path, device="cpu")
    assert len(report.files) == 2 and report.posinf == 1 and report.exit_code == 1
    assert [s.layer for s in report.bad_layers] == ["model.layers.0"]


def test_sharded_write_roundtrip(tmp_path):
    """The builder's index/shards agree with the reference loader (guards the fixtures themselves)."""
    from safetensors.numpy import load_file

    rng = np.random.default_rng(0)
    tensors = {f"layers.{i}.w": RawTensor("F32", (3, 4), finite_bits("F32", 12, rng).tobytes()) for i in range(5)}
    weight_map = write_sharded(tmp_path, tensors, shards=2)
    loaded = {}
    for shard in sorted(set(weight_map.values())):
        loaded.update(load_file(tmp_path / shard))
    assert set(loaded) == set(tensors)
    for n, t in tensors.items():
        assert loaded[n].tobytes() == t.data
    assert scan(tmp_path, device="cpu").ok


def test_file_changed_between_header_and_scan_is_detected(tmp_path, monkeypatch):
    import dataclasses

    from nandoctor.checkpoint import opener
    from nandoctor.engine import pipeline
    from nandoctor.fileidentity import fingerprint

    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"w": RawTensor("F32", (4,), b"\0" * 16)})
    calls = {"n": 0}

    def changing(p):
        calls["n"] += 1
        found = fingerprint(p)
        return dataclasses.replace(found, mtime_ns=found.mtime_ns + calls["n"])  # every look sees a newer mtime

    monkeypatch.setattr(opener, "fingerprint", changing)
    monkeypatch.setattr(pipeline, "fingerprint", changing)
    report = scan(path, device="cpu")
    assert report.exit_code == 3 and any("changed" in e.message for e in report.errors)


def test_header_lengths_never_allocate_from_lies(tmp_path):
    path = tmp_path / "lie.safetensors"
    path.write_bytes(struct.pack("<Q", 99_999_999) + b"{}")
    report = scan(path, device="cpu")
    assert report.exit_code == 3 and "past the end" in report.errors[0].message


@pytest.mark.parametrize("how", ["append", "rewrite_same_size"])
def test_file_written_during_scan_is_reported(tmp_path, how):
    """A writer touching the file mid-scan (here: from the progress callback) is caught, not trusted."""
    import os

    path = tmp_path / "m.safetensors"
    n = (12 << 20) // 4  # several chunks, so the callback runs before the scan ends
    write_safetensors(path, {"w": RawTensor("F32", (n,), b"\0" * (4 * n))})
    touched = []

    def writer(done, total, file):
        if not touched:
            touched.append(done)
            if how == "append":
                with open(path, "ab") as fh:
                    fh.write(b"\0" * 16)
            else:
                with open(path, "r+b") as fh:
                    fh.seek(100)
                    fh.write(b"\x7f\xc0\x00\x00")
                st = os.stat(path)
                os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # coarse clocks: force a new mtime

    report = scan(path, device="cpu", progress=writer)
    assert touched and report.exit_code == 3
    assert any("changed" in e.message for e in report.errors)


def test_same_names_in_separate_checkpoints_is_a_note_but_in_shards_a_problem(tmp_path):
    t = {"layers.0.w": RawTensor("F32", (2,), b"\0" * 8)}
    separate = tmp_path / "separate"
    write_safetensors(separate / "epoch=1.safetensors", t)
    write_safetensors(separate / "epoch=2.safetensors", t)
    report = scan(separate, device="cpu")
    assert report.exit_code == 0 and len(report.tensors) == 2
    assert any("separate checkpoints" in n for n in report.notes)
    shards = tmp_path / "shards"
    write_safetensors(shards / "model-00001-of-00002.safetensors", t)
    write_safetensors(shards / "model-00002-of-00002.safetensors", t)
    report = scan(shards, device="cpu")
    assert report.exit_code == 3 and any("ambiguous" in e.message for e in report.errors)
