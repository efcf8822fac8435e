"""The exploded ceiling of a block-quantized GGUF tensor is applied to its weights, not to its scale fields.

A GGUF trial: Q8_0 scales of 1,490 (weights up to 1.9e5 once dequantized) passed CLEAN, since the census compared
the scale fields themselves with the fp16 ceiling of 2^14; the same values stored as F32 were EXPLODED. A weight is
its block's scale times a code (times a K-quant's sub-block scale): blockfields.WEIGHT_PER_SCALE bounds that
product per type, checked here against gguf.quants.dequantize (ggml's own arithmetic) on random blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nandoctor.blockfields import WEIGHT_PER_SCALE
from nandoctor.engine import scan
from tests.gguf_files import LAYOUTS, blocks, gguf, quant_type, write

NAME = "blk.0.attn_q.weight"


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q5_0", "Q4_1", "Q5_1"])
def test_a_scale_field_times_its_factor_is_at_most_a_weight_of_its_block(kind: str) -> None:
    """gguf's own quantizer (llama.cpp's arithmetic): in every block each scale field times the type's factor is at
    most the block's largest weight (no healthy tensor is called exploded for its scales), and for the d-only
    types it is that weight within rounding (the factor is not loose)."""
    rng = np.random.default_rng(1)
    weights = (rng.standard_normal((64, 256)) * rng.uniform(0.01, 5.0, (64, 1))).astype(np.float32)
    elems, size, offset, count, _ = {"Q5_1": (32, 24, 0, 2, "f2"), **LAYOUTS}[kind]
    raw = gguf.quants.quantize(weights, quant_type(kind)).reshape(-1, size)
    fields = np.abs(raw[:, offset : offset + 2 * count].copy().view(np.float16).astype(np.float32)).max(axis=1)
    largest = np.abs(gguf.quants.dequantize(raw.reshape(-1), quant_type(kind)).reshape(-1, elems)).max(axis=1)
    factor = WEIGHT_PER_SCALE.get(kind, 1)
    assert (fields * factor <= largest * 1.01 + 1e-6).all()
    if count == 1:
        assert (fields * factor >= largest * 0.99).all()


def _quantized(path: Path, weights: np.ndarray, kind: str) -> Path:
    raw = gguf.quants.quantize(weights, quant_type(kind))
    return write(path, [(NAME, raw.reshape(-1, LAYOUTS[kind][1]), kind)], shapes={NAME: weights.shape[::-1]})


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q5_0"])  # (Q4_1 stores its block minimum, a weight, as a field)
def test_weights_past_the_ceiling_are_exploded_whatever_their_scales(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(0)
    healthy = (rng.standard_normal((64, 256)) * 3).astype(np.float32)  # (|w| up to ~15: large for a weight)
    (t,) = scan(_quantized(tmp_path / "ok.gguf", healthy, kind), device="cpu").tensors
    assert t.findings == ()
    grown = healthy * 2000  # dequantized up to ~3e4, above fp16's 2^14, the scales still far below it
    path = _quantized(tmp_path / "grown.gguf", grown, kind)
    (tensor,) = gguf.GGUFReader(str(path)).tensors
    values = gguf.quants.dequantize(tensor.data, quant_type(kind))
    assert np.abs(values).max() > 2**14
    report = scan(path, device="cpu")
    (t,) = report.tensors
    assert t.max_abs is not None and t.max_abs < 2**14  # (max_abs of a quantized tensor: its largest scale)
    assert "exploded" in t.findings and report.exit_code == 1


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q5_0", "Q4_1"])
def test_a_large_row_is_judged_alike_in_every_type_and_a_flipped_scale_still_stands_out(tmp_path: Path, kind: str) -> None:
    """An adversarial trial: one row 2000x the bulk (256 weights, 8 blocks; finite, dequantized by gguf) passed in
    BF16 and Q8_0 and was 8 outliers in Q4_0/Q5_0: the bulk's k counted scale lanes, not the elements they speak
    for, so 8 blocks were 8 spikes. k counts elements now (census.bulk_exponent's per_lane). One block's scale
    flipped far above its row is still an outlier (in the types whose scale lanes reach the census's high level
    at that size: Q8_0's and Q4_1's stay below it, found by sampling only, docs/gguf.md)."""
    rng = np.random.default_rng(0)
    weights = (rng.standard_normal((256, 256)) * 0.02).astype(np.float32)
    weights[0] *= 2000
    path = _quantized(tmp_path / "row.gguf", weights, kind)
    (tensor,) = gguf.GGUFReader(str(path)).tensors
    assert np.isfinite(gguf.quants.dequantize(tensor.data, quant_type(kind))).all()
    (t,) = scan(path, device="cpu").tensors
    assert t.findings == () and t.outliers is None
    if kind not in ("Q4_0", "Q5_0"):
        return
    for rows in (16, 64, 256):  # (a review: at 16 and 64 rows, 128 and 512 blocks, the flipped scale was the bulk)
        raw = gguf.quants.quantize((rng.standard_normal((rows, 256)) * 0.02).astype(np.float32), quant_type(kind))
        raw = raw.reshape(-1, LAYOUTS[kind][1]).copy()
        scale = raw[100, 0:2].view(np.float16)
        scale[0] = np.float16(float(scale[0]) * 4096)  # one block's d 4096x (a flipped exponent bit's order)
        path = write(tmp_path / f"flip{rows}.gguf", [(NAME, raw, kind)], shapes={NAME: (256, rows)})
        (t,) = scan(path, device="cpu").tensors
        assert "outlier" in t.findings, rows
