"""Writing repairs: byte-for-byte output, loaders as oracles, atomicity, refusals, strided views."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from fixtures.builders import RawTensor, finite_bits, plant, write_safetensors, write_sharded
from nandoctor.errors import OutputExistsError, RepairFailedError, RepairRefusedError, UnrestorableError
from nandoctor.model import Region, TensorRef
from nandoctor.restore import PROOF_NAME, repair
from nandoctor.restore import atomic, tensorbytes
from nandoctor.restore.tensorbytes import copy_elements, iter_elements, same_elements

SHAPES = {
    "model.embed_tokens.weight": ("BF16", (64, 16)),
    "model.layers.0.self_attn.q_proj.weight": ("F32", (16, 16)),
    "model.layers.0.input_layernorm.weight": ("F16", (16,)),
    "model.layers.1.self_attn.q_proj.weight": ("F32", (16, 16)),
    "model.layers.1.mlp.up_proj.weight": ("BF16", (32, 16)),
    "model.layers.1.input_layernorm.weight": ("F16", (16,)),
    "model.layers.1.step": ("I64", (1,)),
    "model.norm.weight": ("BF16", (16,)),
    "lm_head.weight": ("BF16", (64, 16)),
}
BAD = {
    "model.layers.1.self_attn.q_proj.weight": {"nan": [0, 5], "posinf": [7]},
    "model.layers.1.mlp.up_proj.weight": {"neginf": [3], "nan": [100]},
    "lm_head.weight": {"nan": [1023]},
}


def tensors(seed: int, poisoned: bool) -> dict[str, RawTensor]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, (dtype, shape) in SHAPES.items():
        bits = finite_bits(dtype, int(np.prod(shape)), rng)
        if poisoned and name in BAD:
            plant(bits, BAD[name], dtype)
        out[name] = RawTensor(dtype, shape, bits.tobytes())
    return out


def make_run(root: Path) -> tuple[Path, Path, dict, dict]:
    target, donor = root / "run" / "checkpoint-300", root / "run" / "checkpoint-200"
    t, d = tensors(1, True), tensors(2, False)
    for folder, data in ((target, t), (donor, d)):
        folder.mkdir(parents=True)
        write_sharded(folder, data, 2)
    (target / "config.json").write_text('{"model_type": "llama"}\n')
    (target / "tokenizer.model").write_bytes(os.urandom(3000))
    (target / "extra").mkdir()
    (target / "extra" / "notes.txt").write_text("kept\n")
    return target, donor, t, d


def sha_tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if "nandoctor-tmp" in p.name]


def test_safetensors_repair_is_byte_exact_and_loads(tmp_path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    target, donor, t, d = make_run(tmp_path)
    before = sha_tree(target)
    out = tmp_path / "run" / "repaired-checkpoint-300"
    result = repair(target, [donor], out)
    assert result.ok and result.exit_code == 0
    assert sorted(r.name for r in result.plan.restorations) == sorted(BAD)

    # Expected bytes built independently: the same writer, the bad tensors' data swapped for the donor's.
    expected = tmp_path / "expected"
    expected.mkdir()
    write_sharded(expected, {n: (d[n] if n in BAD else t[n]) for n in SHAPES}, 2)
    for name in sorted(p.name for p in expected.iterdir()):
        assert (out / name).read_bytes() == (expected / name).read_bytes(), name
    # Non-weight files and subfolders carried over unchanged; the source untouched.
    for rel in ("config.json", "tokenizer.model", "extra/notes.txt"):
        assert (out / rel).read_bytes() == (target / rel).read_bytes()
    assert sha_tree(target) == before
    assert leftovers(out.parent) == []

    # The reference loaders agree.
    loaded: dict[str, torch.Tensor] = {}
    for shard in sorted(out.glob("*.safetensors")):
        loaded.update(load_file(shard))
        with safe_open(shard, framework="pt") as fh:
            assert fh.metadata() == {"format": "pt"}
    donor_loaded = {k: v for s in donor.glob("*.safetensors") for k, v in load_file(s).items()}
    target_loaded = {k: v for s in target.glob("*.safetensors") for k, v in load_file(s).items()}
    for name in SHAPES:
        want = donor_loaded[name] if name in BAD else target_loaded[name]
        assert torch.equal(loaded[name].view(torch.uint8), want.view(torch.uint8)), name
        assert torch.isfinite(loaded[name].float()).all()

    # The proof names everything and its hashes are the files'.
    proof = json.loads((out / PROOF_NAME).read_text())
    assert proof["source"] == str(target.absolute())
    assert proof["donors"] == [{"path": str(donor.absolute()), "step": 200}]
    restored = {r["tensor"]: r for r in proof["restored"]}
    assert restored["lm_head.weight"]["nan"] == 1 and restored["lm_head.weight"]["donor_step"] == 200
    assert restored["model.layers.1.self_attn.q_proj.weight"]["posinf"] == 1
    for f in proof["files"]:
        assert f["sha256"] == hashlib.sha256((out / f["path"]).read_bytes()).hexdigest()
    assert {f["path"] for f in proof["files"]} == {p.name for p in out.glob("*.safetensors")}
    assert proof["verification"]["verdict"] == "CLEAN"
    assert sorted(proof["carried"]) == ["config.json", "extra/notes.txt", "model.safetensors.index.json", "tokenizer.model"]


def test_demo_run_repair_matches_an_independent_patch(tmp_path, demo_run):
    out = tmp_path / "fixed"
    result = repair(demo_run / "checkpoint-300", [demo_run / "checkpoint-200"], out)
    assert result.ok
    planted = json.loads((demo_run / "expected.json").read_text())["checkpoints"]["checkpoint-300"]["bad_tensors"]
    bad_names = set(planted)
    assert {r.name: (r.nan, r.posinf, r.neginf) for r in result.plan.restorations} == {
        n: (c["nan"], c["posinf"], c["neginf"]) for n, c in planted.items()
    }

    def spans(path: Path) -> dict[str, tuple[int, int]]:
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n])
        return {k: (8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"}

    for shard in sorted((demo_run / "checkpoint-300").glob("*.safetensors")):
        src = bytearray(shard.read_bytes())
        donor_file = demo_run / "checkpoint-200" / shard.name
        donor_raw, donor_spans = donor_file.read_bytes(), spans(donor_file)
        for name, (a, b) in spans(shard).items():
            if name in bad_names:
                da, db = donor_spans[name]
                src[a:b] = donor_raw[da:db]
        assert (out / shard.name).read_bytes() == bytes(src)
    assert (out / "trainer_state.json").read_bytes() == (demo_run / "checkpoint-300" / "trainer_state.json").read_bytes()


def test_scope_layer_restores_every_tensor_of_the_bad_layers(tmp_path):
    target, donor, t, d = make_run(tmp_path)
    out = tmp_path / "out"
    result = repair(target, [donor], out, scope="layer")
    layer1 = {n for n in SHAPES if n.startswith("model.layers.1.")}
    assert {r.name for r in result.plan.restorations} == layer1 | {"lm_head.weight"}
    expected = tmp_path / "expected"
    expected.mkdir()
    write_sharded(expected, {n: (d[n] if n in layer1 | {"lm_head.weight"} else t[n]) for n in SHAPES}, 2)
    for shard in expected.glob("*.safetensors"):
        assert (out / shard.name).read_bytes() == shard.read_bytes()


def test_prefixed_donor_and_several_donors(tmp_path):
    target, _, t, d = make_run(tmp_path)
    # Donor 1 lacks the layers entirely (and is non-finite in lm_head); donor 2 is a DDP save: "module." names.
    partial = dict(tensors(3, False))
    partial = {k: v for k, v in partial.items() if "layers" not in k}
    data = bytearray(partial["lm_head.weight"].data)
    data[0:2] = b"\xc0\x7f"  # bf16 NaN
    partial["lm_head.weight"] = RawTensor("BF16", (64, 16), bytes(data))
    write_safetensors(tmp_path / "d1.safetensors", partial)
    write_safetensors(tmp_path / "d2.safetensors", {f"module.{k}": v for k, v in d.items()})
    result = repair(target, [tmp_path / "d1.safetensors", tmp_path / "d2.safetensors"], tmp_path / "out")
    assert result.ok
    assert {r.name: (r.donor, r.donor_name) for r in result.plan.restorations} == {n: (1, f"module.{n}") for n in BAD}


def test_single_file_target(tmp_path):
    t, d = tensors(1, True), tensors(2, False)
    write_safetensors(tmp_path / "model.safetensors", t)
    write_safetensors(tmp_path / "old.safetensors", d)
    result = repair(tmp_path / "model.safetensors", tmp_path / "old.safetensors", tmp_path / "out")
    assert result.ok
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.safetensors", PROOF_NAME]
    write_safetensors(tmp_path / "expected.safetensors", {n: (d[n] if n in BAD else t[n]) for n in SHAPES})
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (tmp_path / "expected.safetensors").read_bytes()


def test_clean_target_gives_a_verified_copy(tmp_path):
    _, donor, _, _ = make_run(tmp_path)
    result = repair(donor, [donor], tmp_path / "copy")
    assert result.ok and result.plan.restorations == ()
    for p in donor.iterdir():
        assert (tmp_path / "copy" / p.name).read_bytes() == p.read_bytes()


def test_dry_run_writes_nothing(tmp_path):
    target, donor, _, _ = make_run(tmp_path)
    result = repair(target, [donor], tmp_path / "out", dry_run=True)
    assert result.dry_run and result.ok and len(result.plan.restorations) == len(BAD)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_existing_out_is_refused_untouched(tmp_path):
    target, donor, _, _ = make_run(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("do not touch")
    with pytest.raises(OutputExistsError):
        repair(target, [donor], out)
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["fixed.safetensors", "fixed.BIN", "model.gguf"])
def test_an_out_named_like_a_weight_file_is_refused_for_a_file(tmp_path, name):
    """A new user: `repair bad.safetensors --out fixed.safetensors` made a folder fixed.safetensors/ holding
    bad.safetensors (load_file on that path: "No such device"). A single file's --out is the folder that will hold
    it: a weight file's suffix is refused, nothing written, with a folder name to use instead. (A folder target keeps
    any name: a sharded Lightning checkpoint is a folder named …step=N.ckpt.)"""
    values = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    bad = values.copy()
    bad[3] = np.nan
    write_safetensors(tmp_path / "bad.safetensors", {"model.layers.0.weight": RawTensor("F32", (64,), bad.tobytes())})
    write_safetensors(tmp_path / "good.safetensors", {"model.layers.0.weight": RawTensor("F32", (64,), values.tobytes())})
    with pytest.raises(RepairRefusedError, match="names the folder the repair creates") as info:
        repair(tmp_path / "bad.safetensors", [tmp_path / "good.safetensors"], tmp_path / name)
    assert f"--out {tmp_path / name.rsplit('.', 1)[0]}" in info.value.hint and "bad.safetensors" in info.value.message
    assert not (tmp_path / name).exists() and leftovers(tmp_path) == []
    assert repair(tmp_path / "bad.safetensors", [tmp_path / "good.safetensors"], tmp_path / "fixed").ok


def test_out_inside_source_and_missing_parent_are_refused(tmp_path):
    target, donor, _, _ = make_run(tmp_path)
    with pytest.raises(RepairRefusedError, match="inside the checkpoint"):
        repair(target, [donor], target / "fixed")
    with pytest.raises(RepairRefusedError, match="does not exist"):
        repair(target, [donor], tmp_path / "nope" / "fixed")
    assert not (target / "fixed").exists()


def test_unrestorable_writes_nothing(tmp_path):
    target, _, _, d = make_run(tmp_path)
    write_safetensors(tmp_path / "d.safetensors", {k: v for k, v in d.items() if k != "lm_head.weight"})
    with pytest.raises(UnrestorableError) as info:
        repair(target, [tmp_path / "d.safetensors"], tmp_path / "out")
    assert [u.name for u in info.value.plan.unrestorable] == ["lm_head.weight"]
    assert info.value.exit_code == 3
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_non_finite_donor_and_shape_mismatch_are_refused(tmp_path):
    target, _, t, d = make_run(tmp_path)
    wrong = dict(d)
    wrong["lm_head.weight"] = RawTensor("BF16", (32, 32), d["lm_head.weight"].data)
    wrong["model.layers.1.mlp.up_proj.weight"] = t["model.layers.1.mlp.up_proj.weight"]  # poisoned too
    write_safetensors(tmp_path / "d.safetensors", wrong)
    with pytest.raises(UnrestorableError) as info:
        repair(target, [tmp_path / "d.safetensors"], tmp_path / "out")
    reasons = {u.name: u.reasons[0] for u in info.value.plan.unrestorable}
    assert "shape [32, 32]" in reasons["lm_head.weight"]
    assert "holds 2 NaN/Inf" in reasons["model.layers.1.mlp.up_proj.weight"]
    assert not (tmp_path / "out").exists()


def test_failed_verification_leaves_nothing(tmp_path, monkeypatch):
    target, donor, _, _ = make_run(tmp_path)
    from nandoctor.restore import writer

    def broken_copy(donor_path, donor_ref, fd, target_ref, **options):
        offset, length = tensorbytes.byte_range(target_ref)
        os.pwrite(fd, b"\xff" * length, offset)  # all NaN: the verification scan must catch it
        return length

    monkeypatch.setattr(writer, "copy_elements", broken_copy)
    with pytest.raises(RepairFailedError, match="verification scan"):
        repair(target, [donor], tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_full_disk_is_refused_before_and_cleaned_up_during(tmp_path, monkeypatch):
    target, donor, _, _ = make_run(tmp_path)
    from nandoctor.restore import writer

    monkeypatch.setattr(writer.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    with pytest.raises(RepairRefusedError, match="are free"):
        repair(target, [donor], tmp_path / "out")
    monkeypatch.undo()

    calls = []
    real = writer._copy_file

    def copy_then_fail(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        real(src, dst)

    monkeypatch.setattr(writer, "_copy_file", copy_then_fail)
    with pytest.raises(RepairFailedError, match="No space left"):
        repair(target, [donor], tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_out_appearing_during_the_build_is_not_overwritten(tmp_path):
    target, donor, _, _ = make_run(tmp_path)
    out = tmp_path / "out"

    def race(phase):
        if phase == "synced":
            out.mkdir()  # an empty folder: plain rename(2) would silently replace it

    with pytest.raises(OutputExistsError):
        repair(target, [donor], out, on_phase=race)
    assert list(out.iterdir()) == [] and leftovers(tmp_path) == []


def test_interrupt_cleans_up_now(tmp_path):
    target, donor, _, _ = make_run(tmp_path)

    def stop(phase):
        if phase == "copied":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        repair(target, [donor], tmp_path / "out", on_phase=stop)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_stale_temp_folders_of_dead_processes_are_removed(tmp_path, monkeypatch):
    """Folders without a lock file (an earlier nandoctor's): by pid, once quiet long enough (restore/stale.py;
    tests/test_repair_stale.py has the locked ones and the quiet rule)."""
    import subprocess
    import sys

    from nandoctor.restore import stale as cleanup

    monkeypatch.setattr(cleanup, "LOCKLESS_QUIET_S", -1.0)  # as if untouched for long
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".old.nandoctor-tmp-{dead_pid}-deadbeef"
    live = tmp_path / f".other.nandoctor-tmp-{os.getppid()}-cafef00d"
    unrelated = tmp_path / ".nandoctor-tmp-notours"
    for p in (stale, live, unrelated):
        p.mkdir()
        (p / "x").write_text("x")
    target, donor, _, _ = make_run(tmp_path / "r")
    repair(target, [donor], tmp_path / "out")
    assert not stale.exists() and live.exists() and unrelated.exists()
    assert atomic.is_temp(stale.name) and not atomic.is_temp("checkpoint-300")


def test_symlinked_and_read_only_sources_stay_untouched(tmp_path):
    # A Hugging Face cache snapshot: files are read-only symlinks into blobs/.
    target, donor, _, _ = make_run(tmp_path)
    repo = tmp_path / "hub" / "models--org--tiny"
    blobs = repo / "blobs"
    blobs.mkdir(parents=True)
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for p in target.iterdir():
        if p.is_file():
            blob = blobs / hashlib.sha256(p.read_bytes()).hexdigest()
            shutil.copyfile(p, blob)
            blob.chmod(0o444)
            (snapshot / p.name).symlink_to(Path("../../blobs") / blob.name)
    before = sha_tree(blobs)
    result = repair(snapshot, [donor], tmp_path / "out")
    assert result.ok
    assert sha_tree(blobs) == before
    assert all(not p.is_symlink() for p in (tmp_path / "out").iterdir())
    for p in (tmp_path / "out").iterdir():
        assert p.stat().st_mode & 0o777 == 0o644  # read-only blobs become the user's own files


# --- strided views (torch files): only a view's own elements are read or written ---------------


def _raw_file(path: Path, values: np.ndarray, pad: int = 24) -> Region:
    path.write_bytes(b"H" * pad + values.tobytes() + b"T" * 7)
    return Region(str(path), pad, values.nbytes, "F32", "0")


VIEWS = [
    ((0, (3, 4), (4, 1)), (0, (3, 4), (1, 3))),  # contiguous → transposed
    ((2, (3, 4), (1, 5)), (1, (3, 4), (5, 1))),  # transposed slice → row slice
    ((5, (4,), (2,)), (3, (4,), (3,))),  # strided 1-d both ways
    ((0, (2, 3, 4), (12, 4, 1)), (1, (2, 3, 4), (1, 2, 6))),  # 3-d, permuted
    ((4, (4, 5), (1, 6)), (0, (4, 5), (12, 2))),  # no stride-1 dimension on the target: element by element
]


@pytest.mark.parametrize("tile", [1 << 20, 16, 4])  # one tile; tiles read as spans or run by run
@pytest.mark.parametrize("donor_view, target_view", VIEWS)
def test_copy_elements_between_views_touches_only_the_view(tmp_path, monkeypatch, donor_view, target_view, tile):
    monkeypatch.setattr(tensorbytes, "TILE_BYTES", tile)
    monkeypatch.setattr(tensorbytes, "_SPAN_SLACK", 1)
    monkeypatch.setattr(tensorbytes, "_SPAN_SMALL", 0 if tile < 1 << 20 else 1 << 20)
    donor_values = np.arange(100, 160, dtype=np.float32)
    target_values = np.arange(-60, 0, dtype=np.float32)
    d_region = _raw_file(tmp_path / "d.bin", donor_values)
    t_region = _raw_file(tmp_path / "t.bin", target_values, pad=40)
    d_off, shape, d_strides = donor_view
    t_off, _, t_strides = target_view
    d_ref = TensorRef("w", "F32", shape, d_region, d_off, d_strides)
    t_ref = TensorRef("w", "F32", shape, t_region, t_off, t_strides)
    before = (tmp_path / "t.bin").read_bytes()
    with open(tmp_path / "t.bin", "r+b") as fh:
        copy_elements(str(tmp_path / "d.bin"), d_ref, fh.fileno(), t_ref)
    # Expected, independently: numpy on the storage arrays.
    item = 4
    want_storage = target_values.copy()
    src = np.lib.stride_tricks.as_strided(donor_values[d_off:], shape, [s * item for s in d_strides])
    dst = np.lib.stride_tricks.as_strided(want_storage[t_off:], shape, [s * item for s in t_strides])
    dst[...] = src
    after = (tmp_path / "t.bin").read_bytes()
    assert after[:40] == before[:40] and after[-7:] == before[-7:]
    assert after[40:-7] == want_storage.tobytes()
    assert same_elements(str(tmp_path / "t.bin"), t_ref, str(tmp_path / "d.bin"), d_ref)
    counted = sorted(np.concatenate([b.view(np.float32) for b in iter_elements(str(tmp_path / "t.bin"), t_ref)]))
    assert counted == sorted(np.asarray(src).reshape(-1))


def test_same_elements_sees_a_single_difference(tmp_path):
    values = np.arange(60, dtype=np.float32)
    a = _raw_file(tmp_path / "a.bin", values)
    changed = values.copy()
    changed[13] = -1
    b = _raw_file(tmp_path / "b.bin", changed)
    ra = TensorRef("w", "F32", (5, 4), a, 1, (1, 12))
    rb = TensorRef("w", "F32", (5, 4), b, 1, (1, 12))
    assert not same_elements(str(tmp_path / "a.bin"), ra, str(tmp_path / "b.bin"), rb)
    rc = TensorRef("w", "F32", (5, 4), b, 20, (4, 1))  # never sees element 13
    rd = TensorRef("w", "F32", (5, 4), a, 20, (4, 1))
    assert same_elements(str(tmp_path / "a.bin"), rd, str(tmp_path / "b.bin"), rc)


def test_views_reaching_past_their_storage_are_refused(tmp_path):
    region = _raw_file(tmp_path / "t.bin", np.zeros(8, np.float32))
    ref = TensorRef("w", "F32", (3, 3), region, 0, (3, 1))
    with pytest.raises(RepairFailedError, match="past the end of its storage"):
        list(iter_elements(str(tmp_path / "t.bin"), ref))
    with pytest.raises(RepairFailedError, match="negative strides"):
        tensorbytes.check_bounds(TensorRef("w", "F32", (3,), region, 2, (-1,)))


@pytest.mark.parametrize("shape", [(7, 5, 3), (1, 1000), (1000,), (3, 1, 4, 1), (), (0, 4)])
def test_boxes_cover_every_element_once(shape):
    region = Region("x", 0, 10**6, "F32", "0")
    refs = [TensorRef("a", "F32", shape, region), TensorRef("b", "F32", shape, region, 0, tuple(reversed(TensorRef("b", "F32", shape, region).contiguous_strides)))]
    seen = np.zeros(shape, dtype=np.int32)
    for origin, extents in tensorbytes.boxes(shape, refs, 4, limit=20):
        index = tuple(slice(o, o + e) for o, e in zip(origin, extents))
        seen[index] += 1
        assert math.prod(extents) * 4 <= 20 or max(extents, default=1) == 1
    assert (seen == 1).all()


def test_big_contiguous_copy_streams(tmp_path, monkeypatch):
    monkeypatch.setattr(tensorbytes, "CHUNK_BYTES", 4096)
    values = np.random.default_rng(0).standard_normal(50_000).astype(np.float32)
    d = _raw_file(tmp_path / "d.bin", values)
    t = _raw_file(tmp_path / "t.bin", np.zeros_like(values), pad=8)
    d_ref, t_ref = TensorRef("w", "F32", (values.size,), d), TensorRef("w", "F32", (values.size,), t)
    monkeypatch.delattr(os, "copy_file_range", raising=False)  # the pread/pwrite fallback
    with open(tmp_path / "t.bin", "r+b") as fh:
        copy_elements(str(tmp_path / "d.bin"), d_ref, fh.fileno(), t_ref)
    assert (tmp_path / "t.bin").read_bytes()[8:-7] == values.tobytes()
    blocks = [bytes(b) for b in iter_elements(str(tmp_path / "t.bin"), t_ref, limit=4096)]
    assert b"".join(blocks) == values.tobytes() and max(map(len, blocks)) == 4096


# --- torch .bin targets: storage bytes patched inside the zip, CRC-32 recomputed ---------------


def _torch_case(tmp_path: Path):
    """A .bin with tied weights, a slice of a bigger storage, a tensor and its transpose; NaN/Inf in each."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("nandoctor.readers.torch.file")
    g = torch.Generator().manual_seed(0)
    wte, big, w = torch.randn(16, 8, generator=g), torch.randn(10, 8, generator=g), torch.randn(6, 4, generator=g)
    b = torch.randn(5, generator=g).to(torch.bfloat16)
    clean = {"transformer.wte.weight": wte, "lm_head.weight": wte, "h.0.slice": big[2:5], "h.0.w": w, "h.0.w_t": w.t(), "h.1.b": b}
    wte_bad, big_bad, w_bad = wte.clone(), big.clone(), w.clone()
    wte_bad[3, 4] = float("nan")
    big_bad[3, 1] = float("inf")
    w_bad[0, 1] = float("-inf")
    bad = {"transformer.wte.weight": wte_bad, "lm_head.weight": wte_bad, "h.0.slice": big_bad[2:5], "h.0.w": w_bad, "h.0.w_t": w_bad.t(), "h.1.b": b}
    big_bad[9, 0] = 7.0  # outside every view: must survive the repair untouched
    (tmp_path / "ckpt").mkdir()
    torch.save(bad, tmp_path / "ckpt" / "pytorch_model.bin")
    (tmp_path / "ckpt" / "config.json").write_text("{}\n")
    donor = {k: (v * 2 + 1) for k, v in clean.items()}  # finite, different from both
    return torch, donor


def _expected_bin(torch, source: Path, donor: dict, restored: set[str]) -> bytes:
    """The repaired file computed independently: torch applies the views, zipfile/struct place the bytes."""
    import zipfile
    import zlib

    loaded = torch.load(source, weights_only=True)
    with torch.no_grad():
        for name in restored:
            loaded[name].copy_(donor[name])
    storages: dict[int, torch.Tensor] = {}
    order: list[int] = []
    for t in loaded.values():  # torch.save numbers storages 0, 1, … in the order it meets them
        key = t.untyped_storage().data_ptr()
        if key not in storages:
            storages[key] = t
            order.append(key)
    raw = bytearray(source.read_bytes())
    zf = zipfile.ZipFile(source)
    central = zf.start_dir
    for info in zf.infolist():
        name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
        data = info.header_offset + 30 + name_len + extra_len
        if "/data/" in info.filename:
            t = storages[order[int(info.filename.rsplit("/", 1)[1])]]
            new = torch.tensor([], dtype=torch.uint8).set_(t.untyped_storage()).numpy().tobytes()
            assert len(new) == info.file_size
            raw[data : data + info.file_size] = new
            crc = struct.pack("<I", zlib.crc32(new))
            if info.flag_bits & 0x08:
                at = data + info.file_size
                at += 4 if raw[at : at + 4] == b"PK\x07\x08" else 0
                raw[at : at + 4] = crc
            else:
                raw[info.header_offset + 14 : info.header_offset + 18] = crc
        # the central record of this entry
        assert raw[central : central + 4] == b"PK\x01\x02"
        if "/data/" in info.filename:
            raw[central + 16 : central + 20] = crc
        n, m, k = struct.unpack_from("<HHH", raw, central + 28)
        central += 46 + n + m + k
    return bytes(raw)


def test_bin_repair_patches_views_and_keeps_ties(tmp_path):
    import zipfile

    torch, donor = _torch_case(tmp_path)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in donor.items() if k != "lm_head.weight"}, tmp_path / "donor.safetensors")
    source = tmp_path / "ckpt" / "pytorch_model.bin"
    before = source.read_bytes()
    result = repair(tmp_path / "ckpt", [tmp_path / "donor.safetensors"], tmp_path / "out", allow_diverged=True)
    assert result.ok
    restored = {r.name for r in result.plan.restorations}
    assert restored == {"transformer.wte.weight", "lm_head.weight", "h.0.slice", "h.0.w", "h.0.w_t"}
    assert [r.name for r in result.plan.writes if r.name.endswith("weight")] == ["transformer.wte.weight"]

    out_file = tmp_path / "out" / "pytorch_model.bin"
    assert out_file.read_bytes() == _expected_bin(torch, source, donor, restored)
    assert source.read_bytes() == before
    assert zipfile.ZipFile(out_file).testzip() is None  # every CRC-32 right

    got = torch.load(out_file, weights_only=True)
    assert got["lm_head.weight"].data_ptr() == got["transformer.wte.weight"].data_ptr()  # still tied
    assert got["h.0.w_t"].untyped_storage().data_ptr() == got["h.0.w"].untyped_storage().data_ptr()
    for name, t in got.items():
        want = donor[name] if name in restored else torch.load(source, weights_only=True)[name]
        assert torch.equal(t, want), name
    storage = torch.tensor([], dtype=torch.float32).set_(got["h.0.slice"].untyped_storage())
    assert storage[72].item() == 7.0  # bytes outside the views are not touched


def test_bin_donor_for_a_safetensors_target(tmp_path):
    torch, donor = _torch_case(tmp_path)
    from safetensors.torch import save_file

    bad = torch.load(tmp_path / "ckpt" / "pytorch_model.bin", weights_only=True)
    save_file({k: v.contiguous() for k, v in bad.items() if k != "lm_head.weight"}, tmp_path / "t.safetensors")
    torch.save(donor, tmp_path / "old.bin")
    result = repair(tmp_path / "t.safetensors", [tmp_path / "old.bin"], tmp_path / "out", allow_diverged=True)
    assert result.ok
    from safetensors.torch import load_file

    got = load_file(tmp_path / "out" / "t.safetensors")
    for name in ("transformer.wte.weight", "h.0.slice", "h.0.w", "h.0.w_t"):
        assert torch.equal(got[name], donor[name]), name
    assert torch.equal(got["h.1.b"], bad["h.1.b"])


def test_bin_views_with_conflicting_donors_fail_verification(tmp_path):
    torch, donor = _torch_case(tmp_path)
    from safetensors.torch import save_file

    conflicting = {k: v.contiguous() for k, v in donor.items() if k != "lm_head.weight"}
    conflicting["h.0.w_t"] = conflicting["h.0.w_t"] + 1  # no longer the transpose of h.0.w
    save_file(conflicting, tmp_path / "donor.safetensors")
    with pytest.raises(RepairFailedError, match="would not hold its donor's bytes"):
        repair(tmp_path / "ckpt", [tmp_path / "donor.safetensors"], tmp_path / "out", allow_diverged=True)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_bin_bytes_no_view_sees_are_refused(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("nandoctor.readers.torch.file")
    big = torch.ones(10)
    big[9] = float("nan")
    (tmp_path / "ckpt").mkdir()
    torch.save({"a": big[:5]}, tmp_path / "ckpt" / "pytorch_model.bin")
    torch.save({"a": torch.ones(5)}, tmp_path / "old.bin")
    with pytest.raises(UnrestorableError, match="no tensor views"):
        repair(tmp_path / "ckpt", [tmp_path / "old.bin"], tmp_path / "out")


def _zip64_archive(payload: bytes) -> bytes:
    """One STORED entry with a data descriptor, every 32-bit field saturated into ZIP64 records."""
    import zlib

    name = b"m/data/0"
    crc = zlib.crc32(payload)
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0x08, 0, 0, 0, 0, 0xFFFFFFFF, 0xFFFFFFFF, len(name), 20)
    local += name + struct.pack("<HHQQ", 1, 16, 0, 0)
    descriptor = struct.pack("<IIQQ", 0x08074B50, crc, len(payload), len(payload))
    body = local + payload + descriptor
    extra = struct.pack("<HHQQQ", 1, 24, len(payload), len(payload), 0)
    central = struct.pack(
        "<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0x08, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(name), len(extra), 0, 0, 0, 0, 0xFFFFFFFF
    ) + name + extra
    cd_offset = len(body)
    z64 = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, 1, 1, len(central), cd_offset)
    locator = struct.pack("<IIQI", 0x07064B50, 0, cd_offset + len(central), 1)
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return body + central + z64 + locator + eocd


def test_zip64_entries_get_their_crc_rewritten(tmp_path):
    import zipfile
    import zlib

    from nandoctor.restore import zippatch

    path = tmp_path / "z.bin"
    path.write_bytes(_zip64_archive(b"A" * 100))
    assert zipfile.ZipFile(path).testzip() is None
    (entry,) = zippatch.read_entries(str(path))
    assert entry.zip64 and entry.size == 100 and entry.data_offset == 30 + 8 + 20
    with open(path, "r+b") as fh:
        os.pwrite(fh.fileno(), b"B" * 10, entry.data_offset + 45)
        assert zippatch.crc_of(fh.fileno(), entry) == zlib.crc32(b"A" * 45 + b"B" * 10 + b"A" * 45)
        zippatch.rewrite_crc(fh.fileno(), entry, zippatch.crc_of(fh.fileno(), entry))
    zf = zipfile.ZipFile(path)
    assert zf.testzip() is None and zf.read("m/data/0") == b"A" * 45 + b"B" * 10 + b"A" * 45
    raw = path.read_bytes()
    assert raw[14:18] == b"\0\0\0\0"  # a descriptor follows: the local CRC stays zero
    assert raw[entry.data_offset + 100 + 4 : entry.data_offset + 108] == struct.pack("<I", zf.getinfo("m/data/0").CRC)


def test_copy_falls_back_when_copy_file_range_is_refused(tmp_path, monkeypatch):
    from nandoctor.restore import writer

    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(100_000))

    def refuse(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    writer._copy_file(src, tmp_path / "dst.bin")
    assert (tmp_path / "dst.bin").read_bytes() == src.read_bytes()


def test_repairing_a_repaired_folder_replaces_its_proof_and_notes_linked_folders(tmp_path):
    target, donor, _, _ = make_run(tmp_path)
    first = repair(target, [donor], tmp_path / "once")
    assert first.ok
    (tmp_path / "once" / "linked").symlink_to(target / "extra")
    again = repair(tmp_path / "once", [donor], tmp_path / "twice")
    assert again.ok and again.plan.restorations == ()
    proof = json.loads((tmp_path / "twice" / PROOF_NAME).read_text())
    assert proof["source"] == str((tmp_path / "once").absolute()) and PROOF_NAME not in proof["carried"]
    assert not (tmp_path / "twice" / "linked").exists()
    assert any("linked: a link to a folder" in n for n in again.notes)


def test_legacy_torch_file_target(tmp_path):
    torch, donor = _torch_case(tmp_path)
    from safetensors.torch import save_file

    bad = torch.load(tmp_path / "ckpt" / "pytorch_model.bin", weights_only=True)
    (tmp_path / "legacy").mkdir()
    torch.save(bad, tmp_path / "legacy" / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    save_file({k: v.contiguous() for k, v in donor.items() if k != "lm_head.weight"}, tmp_path / "donor.safetensors")
    before = (tmp_path / "legacy" / "pytorch_model.bin").read_bytes()
    result = repair(tmp_path / "legacy", [tmp_path / "donor.safetensors"], tmp_path / "out", allow_diverged=True)
    assert result.ok
    out = (tmp_path / "out" / "pytorch_model.bin").read_bytes()
    assert len(out) == len(before) and out[:64] == before[:64]  # same layout, patched in place
    got = torch.load(tmp_path / "out" / "pytorch_model.bin", weights_only=True)
    for name in ("transformer.wte.weight", "lm_head.weight", "h.0.slice", "h.0.w", "h.0.w_t"):
        assert torch.equal(got[name], donor[name]), name
    assert got["lm_head.weight"].data_ptr() == got["transformer.wte.weight"].data_ptr()
    assert torch.equal(got["h.1.b"], bad["h.1.b"])


def test_proof_hashes_patched_files_and_every_file_with_hash_all(tmp_path, demo_run):
    result = repair(demo_run / "checkpoint-300", [demo_run / "checkpoint-200"], tmp_path / "a")
    by_path = {f.path: f for f in result.files}
    patched = by_path["model-00002-of-00002.safetensors"]
    untouched = by_path["model-00001-of-00002.safetensors"]  # all of h.21–23 lives in the second shard
    assert patched.patched and patched.sha256 == hashlib.sha256((tmp_path / "a" / patched.path).read_bytes()).hexdigest()
    assert not untouched.patched and untouched.sha256 is None
    assert json.loads((tmp_path / "a" / PROOF_NAME).read_text())["files"][0]["sha256"] is None
    every = repair(demo_run / "checkpoint-300", [demo_run / "checkpoint-200"], tmp_path / "b", hash_all=True)
    for f in every.files:
        assert f.sha256 == hashlib.sha256((tmp_path / "b" / f.path).read_bytes()).hexdigest()


def test_a_target_that_changes_during_the_repair_fails_it(tmp_path):
    target, donor, _, _ = make_run(tmp_path)
    shard = target / "model-00001-of-00002.safetensors"

    def touch(phase):
        if phase == "proof":  # the copy is verified; the source moved on meanwhile (a trainer still saving)
            st = shard.stat()
            os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))

    with pytest.raises(RepairFailedError, match="changed during the repair"):
        repair(target, [donor], tmp_path / "out", on_phase=touch)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def replace_keeping_size_and_mtime(path: Path, flip_at: int) -> None:
    """What ``rsync -a`` or ``cp -p`` does to a re-saved file: a new inode under the old name, its bytes
    changed, its size and modification time those of the file it replaces."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[flip_at] ^= 0x01  # one mantissa bit of a finite value: still finite, another value
    fresh = path.with_name(path.name + ".partial")
    fresh.write_bytes(bytes(data))
    os.utime(fresh, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(fresh, path)
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)


@pytest.mark.parametrize("which", ["target", "donor"])
def test_a_file_replaced_with_its_size_and_mtime_kept_during_the_repair_fails_it(tmp_path, which):
    """A trial: a source shard replaced rsync -a style (new inode, same size, old mtime) while the repair ran went
    unnoticed, and the output held the new, never checked bytes beside a proof of the old. The file's identity
    (fileidentity.py: inode, ctime) is compared now, for the target's and the donors' files alike."""
    target, donor, _, _ = make_run(tmp_path)
    folder = target if which == "target" else donor
    shard = folder / "model-00002-of-00002.safetensors"
    header = 8 + struct.unpack("<Q", shard.read_bytes()[:8])[0]

    def swap(phase):
        if phase == "copied":
            replace_keeping_size_and_mtime(shard, header + 1)

    with pytest.raises(RepairFailedError, match="changed during the repair") as raised:
        repair(target, [donor], tmp_path / "out", on_phase=swap)
    assert str(shard) in raised.value.message and "replaced by another file" in raised.value.message
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_a_repair_is_no_longer_offered_once_its_source_was_replaced_with_size_and_mtime_kept(tmp_path):
    from nandoctor.hints import verified_repair

    target, donor, _, _ = make_run(tmp_path)
    repair(target, [donor], tmp_path / "out")
    assert verified_repair(tmp_path / "out", target)
    recorded = json.loads((tmp_path / "out" / PROOF_NAME).read_text())["source_files"]
    assert set(next(iter(recorded.values()))) == {"bytes", "mtime_ns", "ctime_ns", "inode"}
    shard = target / "model-00001-of-00002.safetensors"
    replace_keeping_size_and_mtime(shard, 8 + struct.unpack("<Q", shard.read_bytes()[:8])[0] + 1)
    assert not verified_repair(tmp_path / "out", target)  # (was: offered, for a checkpoint it never read)


def test_trainer_files_that_are_not_weights_are_copied_as_they_are(tmp_path, demo_run):
    """training_args.bin has a weight suffix but holds no tensors: the scan skips it, the repair copies it."""
    import argparse

    torch = pytest.importorskip("torch")
    target = tmp_path / "checkpoint-300"
    shutil.copytree(demo_run / "checkpoint-300", target)
    torch.save(argparse.Namespace(output_dir="out", learning_rate=5e-5), target / "training_args.bin")
    result = repair(target, [demo_run / "checkpoint-200"], tmp_path / "fixed")
    assert result.ok and result.left_out == ()
    assert not any("training_args.bin" in n and "weights" in n for n in result.notes)
    assert (tmp_path / "fixed" / "training_args.bin").read_bytes() == (target / "training_args.bin").read_bytes()


def test_out_inside_a_donor_is_refused_and_dangling_links_are_left_out(tmp_path, demo_run):
    from nandoctor.errors import RepairRefusedError

    target, donor = tmp_path / "checkpoint-300", tmp_path / "checkpoint-200"
    shutil.copytree(demo_run / "checkpoint-300", target)
    shutil.copytree(demo_run / "checkpoint-200", donor)
    with pytest.raises(RepairRefusedError, match="inside the donor checkpoint"):
        repair(target, [donor], donor / "fixed")
    assert not (donor / "fixed").exists()

    (target / "README.md").symlink_to(tmp_path / "nowhere")
    (target / "loop").symlink_to(target / "loop")
    result = repair(target, [donor], tmp_path / "fixed")
    assert result.ok and not (tmp_path / "fixed" / "README.md").exists()
    assert any(n.startswith("README.md: a link to nothing readable") for n in result.notes)


def test_an_interrupt_after_the_repair_is_in_place_says_it_is_complete(tmp_path, monkeypatch):
    """A trial: Ctrl-C in the instant after the output was renamed into place printed "interrupted" (exit 130) over a
    complete, verified repair, which repair.md says never appears when interrupted."""
    from nandoctor.restore import atomic
    from tests.conftest import run_cli

    target, donor, _, _ = make_run(tmp_path)
    rename = atomic.rename_noreplace

    def rename_then_interrupt(source, destination):
        rename(source, destination)
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic, "rename_noreplace", rename_then_interrupt)
    result = run_cli("repair", target, "--from", donor, "--out", tmp_path / "out", "--no-progress")
    assert result.exit_code == 0 and "interrupted after the repair was complete" in result.output, result.output
    assert (tmp_path / "out" / "nandoctor-repair.json").is_file()

    monkeypatch.setattr(atomic, "rename_noreplace", lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    stopped = run_cli("repair", target, "--from", donor, "--out", tmp_path / "out2", "--no-progress")
    assert stopped.exit_code == 130 and not (tmp_path / "out2").exists()  # (before the rename: the interrupt stands)
    # an --out that held a verified repair before this one started is never claimed (a review: exit 0 over it)
    import nandoctor.restore

    monkeypatch.setattr(nandoctor.restore, "repair", lambda *_, **__: (_ for _ in ()).throw(KeyboardInterrupt))
    taken = run_cli("repair", target, "--from", donor, "--out", tmp_path / "out", "--no-progress")
    assert taken.exit_code == 130 and "complete" not in taken.output, taken.output


@pytest.mark.parametrize("how", ["console", "json"])
def test_an_interrupt_while_the_report_prints_says_the_repair_is_complete(tmp_path, monkeypatch, how):
    """Two trials: Ctrl-C (or SIGTERM) while the finished repair's report was printed gave exit 130 "interrupted",
    and a script retrying on 130 met "--out already exists" over a complete, verified repair."""
    from nandoctor.cli import repair_cmd
    from nandoctor.report import repair_report
    from tests.conftest import run_cli

    target, donor, _, _ = make_run(tmp_path)

    def interrupt(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr(repair_report if how == "console" else repair_cmd,
                        "render_result" if how == "console" else "echo_json", interrupt)
    result = run_cli("repair", target, "--from", donor, "--out", tmp_path / "out", "--no-progress",
                     *(["--json"] if how == "json" else []))
    assert result.exit_code == 0 and "interrupted after the repair was complete" in result.output, result.output


def test_ctrl_c_while_a_command_starts_is_interrupted_not_aborted(monkeypatch, capsys):
    """A trial: Ctrl-C while a command's module was imported gave click's "Aborted!" and exit 1 (for scan: "findings
    fail the gate"). The interrupt's own exit code, 130, whatever the moment."""
    import sys

    from nandoctor import cli

    monkeypatch.setattr(cli.LazyGroup, "get_command", lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    monkeypatch.setattr(sys, "argv", ["nandoctor", "scan", "checkpoint"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 130 and "interrupted" in capsys.readouterr().err


def test_file_names_that_are_not_utf8_are_repaired_and_reported(tmp_path):
    """A trial: a target whose file name holds bytes that are no UTF-8 (``bad\\xff\\xfe.safetensors``) failed its
    repair with "internal error: UnicodeEncodeError" while writing the proof, and ``scan --html`` of it likewise.
    The proof keeps the exact name (JSON escapes read back to it); the HTML page names the bytes as ``\\xff``."""
    import json as _json

    from tests.conftest import run_cli

    target, donor, _, _ = make_run(tmp_path)
    odd = os.fsencode(target) + b"/extra/odd\xff\xfe.txt"
    with open(odd, "wb") as fh:
        fh.write(b"carried\n")
    done = run_cli("repair", target, "--from", donor, "--out", tmp_path / "out", "--no-progress")
    assert done.exit_code == 0, done.output
    assert open(os.fsencode(tmp_path / "out") + b"/extra/odd\xff\xfe.txt", "rb").read() == b"carried\n"
    proof = _json.loads((tmp_path / "out" / "nandoctor-repair.json").read_bytes())
    assert any(os.fsencode(c) == b"extra/odd\xff\xfe.txt" for c in proof["carried"]), proof["carried"]

    single = tmp_path / "single"
    single.mkdir()
    name = os.fsdecode(b"bad\xff\xfe.safetensors")
    shutil.copy(next(target.glob("*.safetensors")), single / name)
    page = tmp_path / "page.html"
    scanned = run_cli("scan", single / name, "--html", page, "--quiet")
    assert scanned.exit_code in (0, 1) and "internal error" not in scanned.output, scanned.output
    assert "bad\\xff\\xfe.safetensors" in page.read_text(encoding="utf-8")
    for options in ((), ("--json",), ("--markdown",)):  # (the test's output stream is strict UTF-8, as many terminals)
        shown = run_cli("scan", single / name, *options)
        assert shown.exit_code in (0, 1) and "internal error" not in shown.output, (options, shown.output)
    assert "bad\\xff\\xfe" in run_cli("repair", single / name, "--from", donor, "--out", tmp_path / "o2").output
