"""MXFP4 blocks whose E8M0 scale makes ggml's fp32 products overflow (0xFD, 0xFE) are counted element by element,
±Inf with their sign, exactly as gguf.quants.dequantize (which mirrors ggml's dequantize_row_mxfp4) makes them;
files written by gguf's own GGUFWriter. A 0xFF scale (E8M0's NaN) counts once, like a NaN fp16 scale; the
census still reads the scales. The other quantization types cannot overflow from finite scales (checked too)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import nandoctor
from nandoctor.engine import scan
from tests.conftest import run_cli
from tests.gguf_files import LAYOUTS, blocks, gguf, quant_type, write

dequantize = gguf.quants.dequantize

NAME = "blk.0.ffn_down.weight"


def _file(path: Path, raw: np.ndarray, *, big_endian: bool = False, name: str = NAME,
          experts: int | None = None) -> Path:
    ne = (32 * 4, raw.shape[0] // 4) if experts is None else (32 * 2, raw.shape[0] // (2 * experts), experts)
    return write(path, [(name, raw, "MXFP4")], shapes={name: ne}, big_endian=big_endian, expert_count=experts)


def _oracle(path: Path) -> np.ndarray:
    """The tensor as gguf's reader and dequantize give it, one row per block."""
    (tensor,) = gguf.GGUFReader(str(path)).tensors
    with np.errstate(all="ignore"):
        return dequantize(tensor.data, tensor.tensor_type).reshape(-1, 32)


def _counts(values: np.ndarray) -> tuple[int, int, int]:
    return int(np.isnan(values).sum()), int(np.isposinf(values).sum()), int(np.isneginf(values).sum())


def _scanned(path: Path) -> tuple[int, int, int]:
    (t,) = scan(path, device="cpu").tensors
    return t.nan, t.posinf, t.neginf


def test_the_reported_file_overflows_in_32_elements_and_fails_the_nonfinite_gate(tmp_path: Path) -> None:
    good = np.array([0x7F] + [0x21] * 16, np.uint8)
    bad = np.array([0xFE] + [0x44] * 16, np.uint8)  # code 4 (value 4 doubled): 4 * 2^126 overflows fp32
    raw = np.stack([good, bad, good, good] * 2)
    path = _file(tmp_path / "r3.gguf", raw)
    assert _counts(_oracle(path)) == (0, 64, 0)
    assert _scanned(path) == (0, 64, 0)
    result = run_cli("scan", "-q", "--fail-on", "nonfinite", path)
    assert result.exit_code == 1 and "64 +Inf" in result.output
    (t,) = scan(path, device="cpu").tensors
    assert t.first_bad_block == 1 and t.first_bad == 32


@pytest.mark.parametrize("seed", range(6))
def test_random_blocks_count_exactly_what_gguf_dequantizes(tmp_path: Path, seed: int) -> None:
    """Random codes and scale bytes, most of them near the top (where products overflow), 0xFF excluded: the
    NaN/+Inf/-Inf counts of the scan equal gguf.quants.dequantize's, in total and per block."""
    rng = np.random.default_rng(seed)
    n = 4 * 64
    raw = rng.integers(0, 256, (n, 17), dtype=np.uint8)
    raw[:, 0] = np.where(rng.random(n) < 0.6, rng.integers(0xF8, 0xFF, n), rng.integers(0, 0xFF, n))
    big_endian = bool(seed % 2)
    path = _file(tmp_path / "f.gguf", raw, big_endian=big_endian)
    values = _oracle(path)
    expected = _counts(values)
    assert expected[1] > 0 and expected[2] > 0 and expected[0] == 0
    assert _scanned(path) == expected
    (t,) = scan(path, device="cpu").tensors
    assert t.first_bad_block == int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0])
    # block by block: a file of the blocks up to each bad one holds exactly gguf's count so far
    bad_rows = np.flatnonzero(~np.isfinite(values).all(axis=1))
    cut = int(bad_rows[len(bad_rows) // 2]) // 4 * 4 + 4
    part = _file(tmp_path / "part.gguf", raw[:cut], big_endian=big_endian)
    assert _scanned(part) == _counts(values[:cut])


def test_every_scale_byte_and_code_against_gguf(tmp_path: Path) -> None:
    """All 255 finite scale bytes with every code, low and high nibble: the scan equals gguf.quants."""
    codes = np.arange(16, dtype=np.uint8)
    payload = np.concatenate([codes | (codes[::-1] << 4)])  # 16 bytes: every code in both nibbles
    raw = np.zeros((256, 17), np.uint8)
    raw[:255, 0] = np.arange(255)
    raw[255, 0] = 0x7F
    raw[:, 1:] = payload
    path = _file(tmp_path / "all.gguf", raw)
    expected = _counts(_oracle(path))
    assert expected == (0, 2 * (2 + 4), 2 * (2 + 4))  # 0xFD: +8, +12 (and -); 0xFE: +4 … +12; both nibbles
    assert _scanned(path) == expected


def test_a_nan_scale_counts_once_and_the_rest_as_gguf(tmp_path: Path) -> None:
    """0xFF is E8M0's NaN (OCP MX; CUDA's e8m0 conversion gives NaN). ggml's CPU code decodes it as 2^127, so
    gguf.quants gives ±Inf (or ±2^127) there: not finite either way. Counted once per block, as a NaN fp16
    scale of a Q8_0 block is, and the other blocks exactly as gguf."""
    raw = blocks("MXFP4", 16, seed=3)
    raw[[2, 9], 0] = 0xFF
    raw[5, 0] = 0xFE
    path = _file(tmp_path / "nan.gguf", raw)
    values = _oracle(path)
    assert (~np.isfinite(values[[2, 9]]) | (np.abs(values[[2, 9]]) >= 2.0**127)).any(axis=1).all()
    rest = _counts(np.delete(values, [2, 9], axis=0))
    assert _scanned(path) == (2, rest[1], rest[2])
    (t,) = scan(path, device="cpu").tensors
    assert t.first_bad_block == 2


def test_clean_mxfp4_weights_are_clean_and_the_census_reads_the_scales(tmp_path: Path) -> None:
    weights = np.random.default_rng(0).standard_normal((4, 128)).astype(np.float32) * 0.02
    raw = gguf.quants.quantize(weights, gguf.GGMLQuantizationType.MXFP4).reshape(-1, 17)
    path = _file(tmp_path / "clean.gguf", raw)
    assert np.isfinite(_oracle(path)).all()
    report = scan(path, device="cpu")
    (t,) = report.tensors
    assert report.exit_code == 0 and t.nonfinite == 0 and t.findings == ()
    assert t.max_abs == 2.0 ** (int(raw[:, 0].max()) - 127)  # the largest E8M0 scale, as before
    huge = raw.copy()
    huge[3, 0] = 0xF0  # a bit flip: 2^113, finite products (gguf agrees), an exploded scale
    path = _file(tmp_path / "huge.gguf", huge)
    assert np.isfinite(_oracle(path)).all()
    (t,) = scan(path, device="cpu").tensors
    assert t.nonfinite == 0 and "exploded" in t.findings


def test_per_expert_counts_and_diff_agree_with_gguf(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    raw = blocks("MXFP4", 4 * 8, seed=5)
    raw[[3, 17, 18], 0] = [0xFD, 0xFE, 0xFE]
    raw[[3, 17, 18], 1:] = rng.integers(0, 256, (3, 16), dtype=np.uint8) | 0x77  # large codes
    name = "blk.0.ffn_down_exps.weight"
    path = _file(tmp_path / "moe.gguf", raw, name=name, experts=4)
    values = _oracle(path).reshape(4, -1)  # experts are the last (slowest) dimension
    (t,) = scan(path, device="cpu").tensors
    assert t.experts == tuple(int((~np.isfinite(v)).sum()) for v in values)
    clean = raw.copy()
    clean[[3, 17, 18], 0] = 0x78
    donor = _file(tmp_path / "donor.gguf", clean, name=name, experts=4)
    (d,) = nandoctor.diff(path, donor).tensors
    assert (d.nonfinite_a_only, d.nonfinite_b_only, d.changed_blocks) == (t.nonfinite, 0, 3)
    payload = clean.copy()
    payload[7, 5] ^= 0x10  # one code of one block: a changed block, though the scales are the same
    other = _file(tmp_path / "other.gguf", payload, name=name, experts=4)
    (d,) = nandoctor.diff(donor, other).tensors
    assert (d.changed_blocks, d.nonfinite_a_only, d.nonfinite_b_only) == (1, 0, 0)


@pytest.mark.parametrize("kind", [k for k in LAYOUTS if k not in ("MXFP4", "IQ1_M", "Q8_K")])
def test_finite_scales_of_the_other_types_never_dequantize_to_inf(tmp_path: Path, kind: str) -> None:
    """fp16 scales at the largest finite values times the largest codes stay inside fp32 in gguf.quants (as in
    ggml's dequantize_row_*): counting the scale fields is exact for these types."""
    elems, size, offset, count, dtype = LAYOUTS[kind]
    raw = blocks(kind, 64, seed=1)
    extreme = np.random.default_rng(1).choice(np.array([65504, -65504, 60000], np.float16), (64, count))
    raw[:, offset : offset + 2 * count] = extreme.view(np.uint8).reshape(64, -1)
    name = "blk.0.attn_q.weight"
    path = write(tmp_path / "x.gguf", [(name, raw, kind)], shapes={name: (elems * 4, 16)})
    (tensor,) = gguf.GGUFReader(str(path)).tensors
    assert np.isfinite(dequantize(tensor.data, quant_type(kind))).all()
    (t,) = scan(path, device="cpu").tensors
    assert t.nonfinite == 0
