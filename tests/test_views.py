"""views.locate against brute force: every storage element each random strided view reads, and where."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from nandoctor.errors import UnsupportedFormatError
from nandoctor.model import Region, TensorRef
from nandoctor.views import MAX_IRREGULAR_SPAN, is_nested, locate


def brute_force(shape, strides, offset):
    first = {}
    for logical, index in enumerate(itertools.product(*[range(n) for n in shape])):
        first.setdefault(offset + sum(i * s for i, s in zip(index, strides)), logical)
    return first


def test_random_views_match_brute_force():
    rng = np.random.default_rng(0)
    nested_seen = irregular_seen = 0
    for _ in range(1500):
        shape = tuple(int(x) for x in rng.integers(1, 5, rng.integers(1, 4)))
        strides = tuple(int(x) for x in rng.integers(0, 7, len(shape)))
        offset = int(rng.integers(0, 5))
        ref = TensorRef("t", "F32", shape, Region("f", 0, 4096, "F32", "k"), offset, strides)
        nested_seen += is_nested(ref)
        irregular_seen += not is_nested(ref)
        want = brute_force(shape, strides, offset)
        inside, logical = locate(ref, np.arange(80, dtype=np.int64))
        assert {int(e): int(logical[e]) for e in np.flatnonzero(inside)} == want, (shape, strides, offset)
    assert nested_seen > 100 and irregular_seen > 100  # both code paths were exercised


def test_transpose_is_nested_and_overlap_is_not():
    region = Region("f", 0, 4096, "F32", "k")
    assert is_nested(TensorRef("t", "F32", (3, 4), region, 0, (1, 3)))
    assert not is_nested(TensorRef("t", "F32", (4, 6), region, 0, (2, 1)))


def test_huge_irregular_view_is_refused_not_enumerated():
    n = MAX_IRREGULAR_SPAN  # an overlapping (1, 1)-strided view spanning more than the cap
    ref = TensorRef("t", "F32", (n, n), Region("f", 0, 8 * n, "F32", "k"), 0, (1, 1))
    with pytest.raises(UnsupportedFormatError):
        locate(ref, np.array([5], dtype=np.int64))
