"""Quantizer scales judged by the weights they make (FP8's multiplied, BitNet's divided).

An FP8 weight stores at most 448 (E4M3) or 57344 (E5M2), so its own bytes never explode; the quantizer multiplies
it by its scale (``weight_scale_inv`` of transformers' FineGrainedFP8 / DeepSeek-V3, ``weight_scale`` of
compressed-tensors), one per tensor or per block. A scale whose exponent bit flipped (×2^24) made weights of 1.5e6
(Inf in a float16 model: NaN logits, generate raised) while every stored value scanned healthy: a per-tensor scale
is one number, with no bulk to be an outlier against. checkpoint/quantized.scaled_pairs says which tensors pair up;
here each scale value times its weight's largest stored magnitude (the bound of what it dequantizes) is judged: above
the exploded ceiling of the dtype the model loads in, ``exploded``; past the target dtype's range, ``overflow``. The
counts are the scale's (how many blocks dequantize out of range) and go on the scale's row, with that bound as its
largest magnitude: a repair restores the scale.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nandoctor.checkpoint.quantized import ScaledPair
from nandoctor.dtypes import DTYPES
from nandoctor.kernels.census import HealthLimits
from nandoctor.kernels.decode import decode
from nandoctor.kernels.targets import TargetSpec
from nandoctor.model import TensorRef, TensorResults

_MAX_SCALE_BYTES = 64 << 20  # scales are a block's 1/16,384 of its weight: far below this


def judged_scales(
    tensors: TensorResults, pairs: Sequence[ScaledPair], cast_to: TargetSpec | None, limits: HealthLimits,
) -> tuple[TensorResults, list[str]]:
    """``tensors`` with each scale of ``pairs`` counted as the weights it makes; notes naming the scales that make
    them exploded or overflowed."""
    if not pairs:
        return tensors, []
    rows = {key: i for i, key in enumerate(zip(tensors.refs.files, tensors.refs.names))}
    ceiling = limits.ceiling("F32", {"fp16": "F16", "bf16": "BF16"}.get(cast_to.name) if cast_to else None)
    max_abs, exact = list(tensors.max_abs), list(tensors.max_abs_exact)
    overflow, exploded = list(tensors.overflow), list(tensors.exploded)
    notes: list[str] = []
    for pair in pairs:
        scale = pair.scale
        s = rows.get((scale.region.file, scale.name))
        w = rows.get((pair.weight.region.file, pair.weight.name)) if pair.weight is not None else None
        largest = 1.0 if pair.weight is None else (max_abs[w] if w is not None else None)  # (ternary codes: 1)
        if s is None or not largest or tensors.nan[s] or tensors.posinf[s] or tensors.neginf[s]:
            continue  # (left out, unread, or a NaN scale: counted as what it is already)
        values = _values(scale)
        if values is None:
            continue
        magnitude = np.abs(values.astype(np.float64))
        with np.errstate(divide="ignore"):
            bound = (float(largest) / magnitude) if pair.divides else magnitude * float(largest)
        over = np.zeros(bound.shape, dtype=bool) if cast_to is None else (
            bound >= cast_to.limit if cast_to.inclusive else bound > cast_to.limit)
        above = (bound > ceiling) & ~over
        if not over.any() and not above.any():
            continue
        # (a zero divisor makes Inf: the largest finite float stands for it, as JSON holds no Infinity)
        max_abs[s], exact[s] = min(float(bound.max()), sys.float_info.max), False
        # (each element once: one out of range by its own value is out of range by what it makes, or counted as that)
        overflow[s] = max(int(overflow[s]), int(over.sum()))
        exploded[s] = max(int(exploded[s]), int(above.sum()))
        made = (f"{pair.weight.name}'s largest stored magnitude ({float(largest):g}) {'divided' if pair.divides else 'multiplied'} by it makes"
                if pair.weight is not None else f"the ternary weights {'divided' if pair.divides else 'multiplied'} by it make")
        size = "Inf (a scale of 0)" if np.isinf(bound).any() else f"{float(bound.max()):.3g}"
        notes.append(f"{scale.name}: {made} weights up to {size}: judged as those weights")
    columns: dict[str, list[Any]] = {"max_abs": max_abs, "max_abs_exact": exact, "overflow": overflow,
                                     "exploded": exploded}
    return tensors.with_columns(columns), notes


def _values(ref: TensorRef) -> np.ndarray | None:
    """A small scale tensor's values (its dtype one of quantized.py's scale dtypes), None where it cannot be read."""
    region = ref.region
    if region.nbytes > _MAX_SCALE_BYTES or region.byteorder != "little" or not ref.is_contiguous:
        return None
    width = DTYPES[ref.dtype].bits // 8
    try:
        raw = np.fromfile(Path(region.file), dtype=np.uint8, count=ref.numel * width,
                          offset=region.offset + ref.storage_offset * width)
    except (OSError, ValueError):
        return None
    return decode(raw, ref.dtype) if raw.size == ref.numel * width else None


__all__ = ["judged_scales"]
