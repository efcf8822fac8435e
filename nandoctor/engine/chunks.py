"""Chunks of one tensor (DCP shards, ZeRO partitions saved by several ranks) merged into one result in global coordinates.

Each chunk is scanned as a tensor of its own; here the counts are added, the
first bad element and the first outlier become flat indices of the *global*
tensor, and the census keeps the largest magnitude of its chunks and the sum of
the rest (zeros, exploded, overflow). Outliers and the bulk are the whole
tensor's: the chunks' own where they share a scale, else measured again on the
whole tensor (chunkcensus.py). A tensor whose chunks are not all present still
gets one result; the missing file is a problem of its own (exit 3).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from nandoctor.model import Outliers, TensorRef, TensorResult, coords_of

Measured = tuple["Outliers | None", "float | None"]  # a whole tensor's (outliers, bulk scale), read again


def in_global(local: int, ref: TensorRef) -> int:
    """Flat (C-order) index in the global tensor of flat index ``local`` in the stored chunk ``ref``."""
    chunk = ref.chunk
    assert chunk is not None
    if chunk.flat:
        return chunk.offsets[0] + local
    coords = coords_of(local, ref.shape)
    flat = 0
    for c, o, size in zip(coords, chunk.offsets, chunk.global_shape):
        flat = flat * size + c + o
    return flat


def global_index(local: int, result: TensorResult) -> int:
    """Flat index in the global tensor of flat index ``local`` in the chunk ``result`` was read from."""
    return in_global(local, result.ref)


def whole(ref: TensorRef) -> TensorRef:
    """The global tensor a stored chunk is part of, as the scan reports it: its global shape, no chunk (the
    chunk's file and region stand for where it is stored)."""
    chunk = ref.chunk
    assert chunk is not None
    return dataclasses.replace(ref, shape=chunk.global_shape, storage_offset=0, strides=None, chunk=None)


def gather(refs: Iterable[TensorRef]) -> tuple[list[TensorRef], dict[str, list[TensorRef]]]:
    """A checkpoint's refs as its global tensors: each chunked tensor's chunks replaced, where the first of
    them stood, by its :func:`whole`; and each chunked tensor's stored chunks by name. A name that is also
    an unchunked tensor stays in the list twice (the caller says it is ambiguous)."""
    out: list[TensorRef] = []
    chunks: dict[str, list[TensorRef]] = {}
    for ref in refs:
        if ref.chunk is None:
            out.append(ref)
            continue
        if ref.name not in chunks:
            out.append(whole(ref))
        chunks.setdefault(ref.name, []).append(ref)
    return out, chunks


def merge_chunks(placed: list[tuple[int, TensorResult]],
                 measure: Callable[[list[TensorResult]], Measured | None] | None = None) -> list[tuple[int, TensorResult]]:
    """(position, result) pairs with the chunks of each tensor replaced, where the first of them stood (and
    at its position), by one result; ``measure``: the whole tensor's (outliers, bulk scale) read again where its
    chunks' own do not tell them (engine/chunkcensus.py), None where they do."""
    groups: dict[str, list[TensorResult]] = {}
    for _, result in placed:
        if result.ref.chunk is not None:
            groups.setdefault(result.ref.name, []).append(result)
    out = []
    for position, result in placed:
        if result.ref.chunk is None:
            out.append((position, result))
        elif groups.get(result.ref.name, [None])[0] is result:
            chunks = groups[result.ref.name]
            out.append((position, _merged(chunks, measure(chunks) if measure is not None else None)))
    return out


def _min(values: list[int]) -> int | None:
    return min(values) if values else None


def _merged(chunks: list[TensorResult], measured: Measured | None) -> TensorResult:
    chunks = sorted(chunks, key=lambda r: r.ref.chunk.offsets if r.ref.chunk else ())
    firsts = [(global_index(r.first_bad, r), r) for r in chunks if r.first_bad is not None]
    first_bad = min(firsts, key=lambda pair: pair[0]) if firsts else None
    shown = first_bad[1] if first_bad else chunks[0]  # the chunk (and file) the report points at
    ref = whole(shown.ref)
    magnitudes = [r.max_abs for r in chunks if r.max_abs is not None]
    scales = [r.bulk_scale for r in chunks if r.bulk_scale is not None]
    outliers, bulk = measured if measured is not None else (_outliers(chunks), max(scales) if scales else None)
    return TensorResult(
        ref,
        nan=sum(r.nan for r in chunks),
        posinf=sum(r.posinf for r in chunks),
        neginf=sum(r.neginf for r in chunks),
        first_bad=first_bad[0] if first_bad else None,
        can_hold_nonfinite=any(r.can_hold_nonfinite for r in chunks),
        overflow=sum(r.overflow for r in chunks),
        max_abs=max(magnitudes) if magnitudes else None,
        max_abs_exact=all(r.max_abs_exact for r in chunks),
        zeros=sum(r.zeros for r in chunks),
        outliers=outliers,
        bulk_scale=bulk,  # (unmeasured: the loudest chunk's, against which an outlier was judged)
        exploded=sum(r.exploded for r in chunks),
    )


def _outliers(chunks: list[TensorResult]) -> Outliers | None:
    """The chunks' own outliers as the whole tensor's, where no chunk's values stand out against another's bulk
    (chunkcensus.suspect: else the whole tensor is measured again): the chunks share a scale, so each one's bulk
    is the whole one's."""
    found = [(r.outliers, r) for r in chunks if r.outliers is not None and r.outliers.count]
    if not found:
        return None
    worst = max((o.worst for o, _ in found), key=abs)
    first = _min([global_index(o.first, r) for o, r in found])
    assert first is not None
    return Outliers(sum(o.count for o, _ in found), worst, first, min(o.threshold for o, _ in found))
