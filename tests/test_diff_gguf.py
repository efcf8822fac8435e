"""nandoctor diff on GGUF files: quantized tensors block by block, GGUF against safetensors/torch, no numpy warnings.

Files are written with llama.cpp's own ``gguf.GGUFWriter`` (quantized blocks made by ``gguf.quants.quantize``),
and the oracles are gguf's reader and dequantizer, safetensors and torch, and nandoctor's scan for the scale
fields (each NaN/Inf field counts 1, as docs/gguf.md says).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file

import nandoctor
from nandoctor.checkpoint.opener import open_checkpoint
from nandoctor.cli import cli
from nandoctor.diffs import diff_checkpoints
from nandoctor.report.diff_report import detail
from tests.gguf_files import LAYOUTS, blocks, gguf, write

quants = pytest.importorskip("gguf.quants")
dequantize, quantize = quants.dequantize, quants.quantize

Q8_0, Q4_1 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_1
NAN, INF = float("nan"), float("inf")


def _write(path: Path, tensors: list[tuple[str, np.ndarray, object]]) -> Path:
    """A GGUF file by gguf.GGUFWriter: float arrays as they are, quantized ones as raw blocks of ``kind``."""
    w = gguf.GGUFWriter(str(path), "llama")
    for name, array, kind in tensors:
        if kind is None:
            w.add_tensor(name, array)
        else:
            w.add_tensor(name, array, raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _set_field(q: np.ndarray, kind: object, block: int, field: int, bits: int) -> None:
    """Set fp16 field ``field`` (d, then m) of ``block`` of the raw blocks ``q`` to the bit pattern ``bits``."""
    size = gguf.GGML_QUANT_SIZES[kind][1]
    q.reshape(-1)[block * size + 2 * field : block * size + 2 * field + 2] = np.array([bits], "<u2").view(np.uint8)


def _f16(value: float) -> int:
    return int(np.array([value], np.float16).view("<u2")[0])


def _dequantized_blocks(path: Path, name: str) -> np.ndarray:
    """gguf's own dequantization of tensor ``name``, one row per block."""
    (t,) = [t for t in gguf.GGUFReader(str(path)).tensors if t.name == name]
    with np.errstate(all="ignore"):
        return dequantize(t.data, t.tensor_type).reshape(-1, gguf.GGML_QUANT_SIZES[t.tensor_type][0])


def _blocks_that_differ(a: np.ndarray, b: np.ndarray) -> int:
    """Blocks whose dequantized values differ (NaN equals NaN, -0 equals +0)."""
    differ = (a != b) & ~(np.isnan(a) & np.isnan(b))
    return int(differ.any(axis=1).sum())


def _quantized(tmp_path: Path) -> tuple[Path, Path]:
    """B: Q8_0 and Q4_1 tensors made by gguf's quantize. A: Q8_0 block 5's scale NaN, block 30's -Inf, one
    payload byte of block 12 changed; Q4_1 block 3's d and m both NaN. B's own Q4_1 block 6 has m = +Inf."""
    rng = np.random.default_rng(0)
    q8 = quantize(rng.standard_normal((8, 128)).astype(np.float32), Q8_0)  # ne [128, 8]: 32 blocks of 34 bytes
    q41 = quantize(rng.standard_normal((4, 256)).astype(np.float32), Q4_1)  # ne [256, 4]: 32 blocks of 20 bytes
    q8_a, q41_a, q41_b = q8.copy(), q41.copy(), q41.copy()
    _set_field(q8_a, Q8_0, 5, 0, _f16(NAN))
    _set_field(q8_a, Q8_0, 30, 0, _f16(-INF))
    q8_a.reshape(-1)[12 * 34 + 2 + 7] ^= 0x01
    _set_field(q41_a, Q4_1, 3, 0, _f16(NAN))
    _set_field(q41_a, Q4_1, 3, 1, _f16(NAN))
    _set_field(q41_b, Q4_1, 6, 1, _f16(INF))
    a = _write(tmp_path / "a.gguf", [("blk.2.attn_k.weight", q8_a, Q8_0), ("blk.3.ffn_down.weight", q41_a, Q4_1)])
    b = _write(tmp_path / "b.gguf", [("blk.2.attn_k.weight", q8, Q8_0), ("blk.3.ffn_down.weight", q41_b, Q4_1)])
    return a, b


def test_quantized_tensors_are_compared_block_by_block_counting_nan_inf_as_scan(tmp_path: Path) -> None:
    a, b = _quantized(tmp_path)
    scan_a = {t.name: t for t in nandoctor.scan(a).tensors}
    scan_b = {t.name: t for t in nandoctor.scan(b).tensors}
    report = nandoctor.diff(a, b)
    t = {x.name: x for x in report.tensors}
    assert report.exit_code == 1

    q8 = t["blk.2.attn_k.weight"]
    assert scan_a[q8.name].nonfinite == 2 and scan_b[q8.name].nonfinite == 0  # NaN in block 5, -Inf in block 30
    assert (q8.status, q8.nonfinite_a_only, q8.nonfinite_b_only) == ("changed", 2, 0)
    assert q8.blocks == 32 and q8.changed is None and q8.compared_bytes is False
    # Blocks 5, 12 and 30: gguf's dequantization tells them apart and nothing else
    oracle = _blocks_that_differ(_dequantized_blocks(a, q8.name), _dequantized_blocks(b, q8.name))
    assert q8.changed_blocks == oracle == 3
    assert q8.first_nonfinite_a_only == 5 * 32 and q8.first_nonfinite_a_only_coords == scan_a[q8.name].first_bad_coords
    assert q8.first_nonfinite_a_only_coords == (32, 1)  # element 160 of ne [128, 8]: row 1, column 32

    q41 = t["blk.3.ffn_down.weight"]
    assert scan_a[q41.name].nan == 2 and scan_b[q41.name].posinf == 1  # two fields of one block; one of another
    assert (q41.nonfinite_a_only, q41.nonfinite_b_only) == (2, 1)
    assert q41.changed_blocks == _blocks_that_differ(_dequantized_blocks(a, q41.name),
                                                     _dequantized_blocks(b, q41.name)) == 2
    assert q41.first_nonfinite_b_only_coords == scan_b[q41.name].first_bad_coords == (6 * 32 % 256, 6 * 32 // 256)

    result = CliRunner().invoke(cli, ["diff", str(a), str(b), "--json"])
    assert result.exit_code == 1
    (entry,) = [x for x in json.loads(result.output)["tensors"] if x["name"] == q8.name]
    assert (entry["nonfinite_a_only"], entry["nonfinite_b_only"], entry["changed"], entry["changed_blocks"],
            entry["blocks"], entry["compared_bytes"], entry["message"]) == (2, 0, None, 3, 32, False, None)
    assert entry["first_nonfinite_a_only_coords"] == [32, 1] and entry["order_a"] == "F"
    assert detail(q8) == "3 of 32 Q8_0 blocks; 2 NaN/Inf only in A (scale fields; first at [32, 1])"


def _iq1m(scales: list[float]) -> np.ndarray:
    """IQ1_M blocks (random payload, seed fixed) whose fp16 scales, one per block, are ``scales``: the scale sits in
    the top nibbles of the four uint16 sub-scales at bytes 48–55 (ggml-common.h's iq1m_scale_t)."""
    raw = np.random.default_rng(7).integers(0, 256, (len(scales), 56), dtype=np.uint8)
    sub = raw[:, 48:56].copy().view("<u2")
    scale = np.array(scales, np.float16).view(np.uint16)
    for k in range(4):
        sub[:, k] = (sub[:, k] & 0x0FFF) | (((scale >> (4 * k)) & 0xF) << 12)
    raw[:, 48:56] = sub.view(np.uint8)
    return raw


@pytest.mark.parametrize("big_endian", [False, True], ids=["little", "big"])
@pytest.mark.parametrize(("kind", "ne", "bad_a", "bad_b"), [
    ("Q8_K", (256, 4), {(1, 0): NAN, (3, 0): -INF}, {}),  # fp32 d
    ("Q4_K", (512, 2), {(2, 0): NAN, (2, 1): -INF}, {(3, 1): INF}),  # d and dmin: two fields of one block
    ("Q6_K", (256, 4), {(0, 0): INF}, {(2, 0): NAN}),  # d at byte 208
    ("MXFP4", (64, 4), {(6, 0): 0xFF}, {(1, 0): 0xFF}),  # E8M0: 0xFF is NaN
])
def test_quantized_types_and_byte_orders_counted_as_scan(
    tmp_path: Path, kind: str, ne: tuple[int, int], bad_a: dict[tuple[int, int], float], bad_b: dict[tuple[int, int], float], big_endian: bool
) -> None:
    n = ne[0] * ne[1] // LAYOUTS[kind][0]
    e = ">" if big_endian else "<"
    a = write(tmp_path / "a.gguf", [("blk.0.attn_q.weight", blocks(kind, n, bad=bad_a, endian=e), kind)],
              big_endian=big_endian, shapes={"blk.0.attn_q.weight": ne})
    b = write(tmp_path / "b.gguf", [("blk.0.attn_q.weight", blocks(kind, n, bad=bad_b, endian=e), kind)],
              big_endian=big_endian, shapes={"blk.0.attn_q.weight": ne})
    (scan_a,), (scan_b,) = nandoctor.scan(a).tensors, nandoctor.scan(b).tensors
    assert (scan_a.nonfinite, scan_b.nonfinite) == (len(bad_a), len(bad_b))
    (t,) = nandoctor.diff(a, b).tensors
    assert (t.status, t.blocks, t.nonfinite_a_only, t.nonfinite_b_only) == ("changed", n, len(bad_a), len(bad_b))
    assert t.changed_blocks == len({block for block, _ in [*bad_a, *bad_b]})  # the same payload otherwise
    assert t.first_nonfinite_a_only_coords == scan_a.first_bad_coords
    assert t.first_nonfinite_b_only_coords == scan_b.first_bad_coords


def test_iq1m_packed_scales_counted_as_scan(tmp_path: Path) -> None:
    a = write(tmp_path / "a.gguf", [("blk.0.attn_q.weight", _iq1m([0.01, NAN, 0.02, -INF]), "IQ1_M")],
              shapes={"blk.0.attn_q.weight": (256, 4)})
    b = write(tmp_path / "b.gguf", [("blk.0.attn_q.weight", _iq1m([0.01, 0.03, 0.02, 0.04]), "IQ1_M")],
              shapes={"blk.0.attn_q.weight": (256, 4)})
    (scan_a,) = nandoctor.scan(a).tensors
    (t,) = nandoctor.diff(a, b).tensors
    assert (t.changed_blocks, t.nonfinite_a_only, t.nonfinite_b_only) == (2, scan_a.nonfinite, 0) == (2, 2, 0)
    assert t.first_nonfinite_a_only_coords == scan_a.first_bad_coords == (0, 1)
    assert _blocks_that_differ(_dequantized_blocks(a, t.name), _dequantized_blocks(b, t.name)) == 2


def test_quantized_blocks_with_the_same_values_are_equal(tmp_path: Path) -> None:
    """-0 against +0 and two NaN payloads in a scale: other bytes, the same dequantized values."""
    q8 = quantize(np.random.default_rng(1).standard_normal((4, 128)).astype(np.float32), Q8_0)
    q8_a, q8_b = q8.copy(), q8.copy()
    _set_field(q8_a, Q8_0, 4, 0, 0x8000)
    _set_field(q8_b, Q8_0, 4, 0, 0x0000)
    _set_field(q8_a, Q8_0, 7, 0, 0x7E00)
    _set_field(q8_b, Q8_0, 7, 0, 0x7E01)
    a = _write(tmp_path / "a.gguf", [("blk.0.attn_q.weight", q8_a, Q8_0)])
    b = _write(tmp_path / "b.gguf", [("blk.0.attn_q.weight", q8_b, Q8_0)])
    assert _blocks_that_differ(_dequantized_blocks(a, "blk.0.attn_q.weight"),
                               _dequantized_blocks(b, "blk.0.attn_q.weight")) == 0
    report = nandoctor.diff(a, b)
    (t,) = report.tensors
    assert (t.status, t.changed_blocks, t.changed, t.nonfinite_a_only, t.nonfinite_b_only) == ("equal", 0, 0, 0, 0)
    assert report.exit_code == 0


def test_quantized_counts_are_unknown_when_nothing_was_decoded(tmp_path: Path) -> None:
    """Bytes only (repair's proof) or a quantized tensor against floats: NaN/Inf counts are None, never 0."""
    a, b = _quantized(tmp_path)
    only_bytes = diff_checkpoints(open_checkpoint(a), open_checkpoint(b), values=False)
    q8 = next(t for t in only_bytes.tensors if t.name == "blk.2.attn_k.weight")
    assert (q8.status, q8.compared_bytes, q8.changed, q8.nonfinite_a_only, q8.nonfinite_b_only) == (
        "changed", True, None, None, None)

    floats = {t.name: np.ascontiguousarray(_dequantized_blocks(b, t.name).reshape(t.shape[::-1]))
              for t in gguf.GGUFReader(str(b)).tensors}
    save_numpy(floats, tmp_path / "f.safetensors")
    result = CliRunner().invoke(cli, ["diff", str(a), str(tmp_path / "f.safetensors"), "--json"])
    assert result.exit_code == 1
    (entry,) = [x for x in json.loads(result.output)["tensors"] if x["name"] == "blk.2.attn_k.weight"]
    assert entry["status"] == "changed" and entry["shape_a"] == [128, 8] and entry["shape_b"] == [8, 128]
    assert (entry["changed"], entry["nonfinite_a_only"], entry["nonfinite_b_only"], entry["compared_bytes"]) == (
        None, None, None, False)
    assert "Q8_0" in entry["message"] and "F32" in entry["message"]


def _floats(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(2)
    arrays = {"blk.0.attn_q.weight": rng.standard_normal((64, 32)).astype(np.float32),  # ne [32, 64]
              "blk.1.ffn_up.weight": rng.standard_normal((16, 64)).astype(np.float16)}  # ne [64, 16]
    return _write(tmp_path / "m.gguf", [(k, v, None) for k, v in arrays.items()]), arrays


def test_gguf_against_safetensors_of_its_arrays_is_the_same(tmp_path: Path) -> None:
    """gguf's reader gives each tensor as the row-major array of the reversed ne: saved so, it is the same."""
    model, _ = _floats(tmp_path)
    read = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(model)).tensors}
    assert read["blk.0.attn_q.weight"].shape == (64, 32)
    save_numpy(read, tmp_path / "m.safetensors")
    for a, b in ((model, tmp_path / "m.safetensors"), (tmp_path / "m.safetensors", model)):
        report = nandoctor.diff(a, b)
        assert report.exit_code == 0 and report.verdict == "SAME"
        assert {t.status for t in report.tensors} == {"identical"}


def test_gguf_against_safetensors_positions_in_each_sides_order(tmp_path: Path) -> None:
    model, arrays = _floats(tmp_path)
    name = "blk.0.attn_q.weight"
    changed = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
    changed[name][50, 3] = NAN
    changed[name][10, 20] += 100.0
    save_file(changed, tmp_path / "b.safetensors")
    oracle = load_file(tmp_path / "b.safetensors")[name]
    assert [tuple(x) for x in torch.isnan(oracle).nonzero().tolist()] == [(50, 3)]
    want_changed = int((oracle != torch.from_numpy(arrays[name])).sum())  # NaN != anything: counted

    ab = {t.name: t for t in nandoctor.diff(model, tmp_path / "b.safetensors").tensors}[name]
    assert (ab.status, ab.changed, ab.nonfinite_a_only, ab.nonfinite_b_only) == ("changed", want_changed, 0, 1)
    assert ab.first_nonfinite_b_only_coords == (3, 50)  # A is GGUF: ne order, as scan gives it
    assert ab.max_abs is not None and ab.max_abs.coords == (20, 10)
    ba = {t.name: t for t in nandoctor.diff(tmp_path / "b.safetensors", model).tensors}[name]
    assert (ba.changed, ba.nonfinite_a_only, ba.first_nonfinite_a_only_coords) == (want_changed, 1, (50, 3))
    assert ba.max_abs is not None and ba.max_abs.coords == (10, 20)


def test_a_transposed_tensor_is_a_shape_change_said_in_each_order(tmp_path: Path) -> None:
    """numpy (32, 64) against a GGUF ne [32, 64] (numpy (64, 32)): the same list, another tensor."""
    model, arrays = _floats(tmp_path)
    name = "blk.0.attn_q.weight"
    save_numpy({name: np.ascontiguousarray(arrays[name].T)}, tmp_path / "t.safetensors")
    result = CliRunner().invoke(cli, ["diff", str(model), str(tmp_path / "t.safetensors"), "--only", name, "--json"])
    (entry,) = json.loads(result.output)["tensors"]
    assert (entry["status"], entry["shape_a"], entry["order_a"], entry["shape_b"], entry["order_b"]) == (
        "shape", [32, 64], "F", [32, 64], "C")
    (t,) = nandoctor.diff(model, tmp_path / "t.safetensors").with_status("shape")
    assert detail(t) == "ne [32, 64] F32 → [32, 64] F32"


def test_gguf_against_a_torch_view_lines_up(tmp_path: Path) -> None:
    """A torch file's transposed view (strides, not C-contiguous) against the GGUF of the same values."""
    model, arrays = _floats(tmp_path)
    name = "blk.0.attn_q.weight"
    base = torch.from_numpy(np.ascontiguousarray(arrays[name].T))  # (32, 64); its .t() is (64, 32), strided
    torch.save({name: base.t()}, tmp_path / "v.bin")
    (t,) = nandoctor.diff(model, tmp_path / "v.bin", only=[name]).tensors
    assert t.status in ("identical", "equal")
    base.t()[50, 3] = NAN
    torch.save({name: base.t()}, tmp_path / "v.bin")
    loaded = torch.load(tmp_path / "v.bin")[name]
    assert loaded.stride() == (1, 64) and [tuple(x) for x in torch.isnan(loaded).nonzero().tolist()] == [(50, 3)]
    (t,) = nandoctor.diff(model, tmp_path / "v.bin", only=[name]).tensors
    assert (t.status, t.changed, t.nonfinite_b_only, t.first_nonfinite_b_only_coords) == ("changed", 1, 1, (3, 50))


def test_signalling_nans_give_no_numpy_warning(tmp_path: Path) -> None:
    """A bit-flipped NaN with its quiet bit clear, in fp32, fp16 and bf16: counted, and stderr stays clean."""
    sd = {"f32": torch.ones(64), "f16": torch.ones(64, dtype=torch.float16), "bf16": torch.ones(64, dtype=torch.bfloat16)}
    save_file(sd, tmp_path / "b.safetensors")
    bad = {k: v.clone() for k, v in sd.items()}
    bad["f32"].view(torch.int32)[7] = 0x7F800001
    bad["f16"].view(torch.int16)[3] = 0x7C01
    bad["bf16"].view(torch.int16)[5] = 0x7F81
    save_file(bad, tmp_path / "a.safetensors")
    loaded = load_file(tmp_path / "a.safetensors")
    assert all(int(torch.isnan(loaded[k]).sum()) == 1 for k in sd)
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    out = subprocess.run([sys.executable, "-m", "nandoctor", "diff", str(tmp_path / "a.safetensors"),
                          str(tmp_path / "b.safetensors"), "--json"], capture_output=True, text=True, env=env)
    assert out.returncode == 1
    assert out.stderr == ""
    entries = {x["name"]: x for x in json.loads(out.stdout)["tensors"]}
    for name in sd:
        assert (entries[name]["changed"], entries[name]["nonfinite_a_only"], entries[name]["first_nonfinite_a_only"]) == (
            1, 1, {"f32": 7, "f16": 3, "bf16": 5}[name])


def test_a_gguf_against_the_hugging_face_names_it_came_from_says_nothing_was_compared(tmp_path: Path) -> None:
    """A trial: a GGUF converted from a safetensors checkpoint (llama.cpp's names) diffed against it said
    "6 of 6 tensors differ" and nothing else (0 B read): every tensor only on one side, no word why."""
    rng = np.random.default_rng(0)
    embedding = (rng.standard_normal((64, 32)) * 0.05).astype(np.float32)
    gguf_file = write(tmp_path / "conv.gguf", [("token_embd.weight", embedding, None),
                                               ("output_norm.weight", np.ones(32, np.float32), None)])
    save_numpy({"model.embed_tokens.weight": embedding, "model.norm.weight": np.ones(32, np.float32)},
               str(tmp_path / "hf.safetensors"))
    report = nandoctor.diff(str(gguf_file), str(tmp_path / "hf.safetensors"))
    assert {t.status for t in report.tensors} == {"only_a", "only_b"}
    assert any("no tensor name of A is one of B's (A is GGUF" in n and "nothing was compared" in n
               for n in report.notes), report.notes
    same = nandoctor.diff(str(gguf_file), str(gguf_file))
    assert not any("nothing was compared" in n for n in same.notes)
