"""Shapes the loaders refuse although they hold no element.

A tensor with a 0 among its dimensions holds nothing, so no byte count says its shape is wrong; but the loaders
still do arithmetic on it. safetensors' reader multiplies the dimensions in order with overflow checks
("overflow computing buffer size from shape": ``[2**32, 2**32, 0]`` overflows before it reaches the 0); torch
keeps sizes and strides as int64 and checks the product as it multiplies ("numel: integer multiplication
overflow"); llama.cpp's GGUF reader divides ``INT64_MAX`` by ``ne[1]``, ``ne[2]`` and ``ne[3]`` to check the
element count, so a 0 there stops (or crashes) it. Such a shape is written by no saver; a crafted one must not
pass as a model that loads. The rule is the loaders' (each multiplies in order: once the product is 0 it stays
0, so ``[0, 2**40, 2**40]`` loads), one bit stricter than theirs: the dimensions before the first 0 multiply to
2**63 or more, or any one dimension is that large.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

INT64_LIMIT = 1 << 63


def refused_empty_shape(shape: Sequence[int]) -> str | None:
    """Why the loaders refuse ``shape``, a shape with a 0 among its dimensions; None when they take it (or when it
    holds elements: its byte count is checked against the data then)."""
    if 0 not in shape:
        return None
    if any(d >= INT64_LIMIT for d in shape):
        return f"shape {list(shape)}: a dimension does not fit int64, which torch keeps sizes in"
    if math.prod(shape[: list(shape).index(0)]) >= INT64_LIMIT:
        return (f"shape {list(shape)} holds no element, but the dimensions before its 0 multiply past int64: "
                "safetensors' and torch's size arithmetic overflow on it and refuse the file")
    return None


def refused_gguf_dims(dims: Sequence[int]) -> str | None:
    """Why llama.cpp refuses a GGUF tensor's ``dims`` (ne0 first) that hold no element; None when it takes them."""
    if 0 in dims[1:]:
        return (f"dimensions {list(dims)}: a 0 past the first one, which llama.cpp divides INT64_MAX by when it "
                "checks the element count (gguf.cpp): it stops on the file")
    return refused_empty_shape(dims)


__all__ = ["INT64_LIMIT", "refused_empty_shape", "refused_gguf_dims"]
