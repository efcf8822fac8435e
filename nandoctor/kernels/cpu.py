"""The numpy kernel: bit tests on unsigned-integer views of the raw bytes.

numpy has no bf16 or fp8, so every float is tested through its bits. The fast
pass needs no temporary array: for an IEEE type, an element is non-finite
exactly when its signed view is >= the exponent mask (positive NaN/Inf) or its
unsigned view is >= sign|exponent (negative NaN/-Inf), so two read-only max
reductions answer "anything bad here?". Counting, which allocates, only runs
on chunks the fast pass flagged.
"""

from __future__ import annotations

import os

import numpy as np

from nandoctor.dtypes import DTypeSpec, Family
from nandoctor.kernels import CLEAN, NAN, NEGINF, POSINF, ChunkCounts

_UNSIGNED = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}
_SIGNED = {8: np.int8, 16: np.int16, 32: np.int32, 64: np.int64}

# Both max reductions over a block that still sits in L2 cost little more than one pass.
_BLOCK_BYTES = 1 << 20


class CpuKernel:
    name = "cpu"
    chunk_bytes = 4 << 20
    workers = max(1, min(4, os.cpu_count() or 1))

    def any_nonfinite(self, data: np.ndarray, spec: DTypeSpec) -> bool:
        if spec.family is Family.FINITE or data.size == 0:
            return False
        lane = spec.lane_bits
        if spec.family is Family.NAN_CODES:
            u = data.view(np.uint8)
            return any(bool((u == code).any()) for code in spec.nan_codes)
        signed_limit = spec.exp_mask
        unsigned_limit = spec.exp_mask | spec.sign_mask
        signed, unsigned = data.view(_SIGNED[lane]), data.view(_UNSIGNED[lane])
        step = _BLOCK_BYTES * 8 // lane
        for start in range(0, signed.size, step):
            if int(signed[start : start + step].max()) >= signed_limit:
                return True
            if int(unsigned[start : start + step].max()) >= unsigned_limit:
                return True
        return False

    def count(self, data: np.ndarray, spec: DTypeSpec) -> ChunkCounts:
        if spec.family is Family.FINITE or data.size == 0:
            return CLEAN
        u = data.view(_UNSIGNED[spec.lane_bits])
        if spec.family is Family.NAN_CODES:
            bad = np.isin(u, np.array(spec.nan_codes, dtype=u.dtype))
            nan = int(np.count_nonzero(bad))
            first = int(np.argmax(bad)) if nan else -1
            return ChunkCounts(nan=nan, first_bad=first)
        exp = u.dtype.type(spec.exp_mask)
        magnitude = u & u.dtype.type(spec.sign_mask - 1)
        bad = magnitude >= exp
        total = int(np.count_nonzero(bad))
        if not total:
            return CLEAN
        posinf = int(np.count_nonzero(u == exp))
        neginf = int(np.count_nonzero(u == u.dtype.type(spec.exp_mask | spec.sign_mask)))
        first_lane = int(np.argmax(bad))
        return ChunkCounts(
            nan=total - posinf - neginf,
            posinf=posinf,
            neginf=neginf,
            first_bad=first_lane // spec.lanes_per_element,
        )

    def classify(self, data: np.ndarray, spec: DTypeSpec) -> tuple[np.ndarray, np.ndarray]:
        empty = (np.empty(0, np.int64), np.empty(0, np.uint8))
        if spec.family is Family.FINITE or data.size == 0:
            return empty
        u = data.view(_UNSIGNED[spec.lane_bits])
        if spec.family is Family.NAN_CODES:
            lanes = np.flatnonzero(np.isin(u, np.array(spec.nan_codes, dtype=u.dtype)))
            return lanes, np.full(lanes.size, NAN, np.uint8)
        exp = spec.exp_mask
        lanes = np.flatnonzero((u & u.dtype.type(spec.sign_mask - 1)) >= u.dtype.type(exp))
        values = u[lanes]
        kinds = np.full(lanes.size, NAN, np.uint8)
        kinds[values == u.dtype.type(exp)] = POSINF
        kinds[values == u.dtype.type(exp | spec.sign_mask)] = NEGINF
        return lanes // spec.lanes_per_element, kinds
