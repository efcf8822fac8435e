"""Tensors stored as chunks (DCP: one per rank that held a shard) restored box by box, in global coordinates.

The plan (plan.py) picks one donor per tensor by name, global shape and dtype,
as for any format. Here a restoration of a chunked tensor is cut into what is
actually written: each of the target's chunks that is unhealthy on its own is
restored (every chunk with ``--scope layer``, or when no chunk alone explains
the tensor's finding, e.g. an outlier judged against the other chunks), and
nothing else of the tensor moves. A chunk is taken from the donor's elements of
the same global box: when the donor stored that box as one chunk (the same
sharding, the usual case) it is one contiguous byte copy; when the donor is
sharded differently (or not at all: a consolidated donor) the box is cut by the
donor's chunks and each part is copied element-wise through strided views
(tensorbytes.py). A box the donor's chunks do not cover exactly once is refused,
never guessed. DeepSpeed's flat ZeRO partitions (``ChunkOf.flat``) are refused.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from nandoctor.dtypes import DTYPES
from nandoctor.model import ChunkOf, TensorRef
from nandoctor.restore.plan import RepairPlan, Restoration, Unrestorable

Box = tuple[tuple[int, ...], tuple[int, ...]]  # (first element, sizes) in global coordinates


class StoredDonor(Protocol):
    def stored(self, name: str) -> list[TensorRef]:
        """The donor tensor ``name`` as stored: its chunks, or the one whole tensor."""


class NotRestorable(Exception):
    """Why a chunked restoration cannot be cut into pieces (a refusal reason, not a crash)."""


def box_of(ref: TensorRef) -> Box:
    """The global box a stored chunk (or a whole tensor) holds."""
    if ref.chunk is None:
        return (0,) * len(ref.shape), tuple(ref.shape)
    if ref.chunk.flat:
        raise NotRestorable("stored as flat ZeRO partitions, which repair does not cut into pieces yet")
    return tuple(ref.chunk.offsets), tuple(ref.shape)


def intersect(a: Box, b: Box) -> Box | None:
    starts = tuple(max(x, y) for x, y in zip(a[0], b[0]))
    ends = tuple(min(x + n, y + m) for x, n, y, m in zip(a[0], a[1], b[0], b[1]))
    if any(e <= s for s, e in zip(starts, ends)) and starts:
        return None
    return starts, tuple(e - s for s, e in zip(starts, ends))


def view(ref: TensorRef, box: Box) -> TensorRef:
    """The elements of global ``box`` (which lies inside what ``ref`` holds) as a strided view of ``ref``."""
    origin = box_of(ref)[0]
    if ref.order != "C" or ref.region.blocks is not None or DTYPES[ref.dtype].bits % 8:
        raise NotRestorable(f"{ref.file}: {ref.name!r} is not stored as plain elements; refused")
    strides = ref.effective_strides
    first = ref.storage_offset + sum((o - g) * s for o, g, s in zip(box[0], origin, strides))
    if box == box_of(ref):
        return dataclasses.replace(ref, chunk=None)
    return dataclasses.replace(ref, shape=box[1], storage_offset=first, strides=strides, chunk=None)


def pieces(target: Box, donor: Sequence[TensorRef], whose: str = "the donor's") -> list[tuple[Box, TensorRef]]:
    """``target`` cut by the donor's stored chunks: (part, the donor chunk holding it); refused unless the
    parts cover every element exactly once (``whose`` chunks, for the reason)."""
    found = [(part, ref) for ref in donor if (part := intersect(target, box_of(ref))) is not None]
    covered = sum(math.prod(part[1]) for part, _ in found)
    if covered != math.prod(target[1]) or any(
        intersect(a, b) is not None for i, (a, _) in enumerate(found) for b, _ in found[i + 1:]
    ):
        raise NotRestorable(f"{whose} chunks do not cover the box at {list(target[0])} of {list(target[1])} "
                            "exactly once (overlapping or missing chunks)")
    return found


def expand(
    plan: RepairPlan,
    target_chunks: Mapping[str, list[TensorRef]],
    donors: Sequence[StoredDonor],
    unhealthy: Callable[[TensorRef], str | None],
    counts: Callable[[TensorRef], tuple[int, int, int]],
) -> RepairPlan:
    """``plan`` with each restoration of a chunked tensor (in the target or its donor) replaced by the
    pieces written: one per (restored target chunk × donor chunk it meets). ``unhealthy`` judges a target
    chunk alone; ``counts`` gives the NaN/+Inf/-Inf of a piece of the target before the repair."""
    out: list[Restoration] = []
    refused: list[Unrestorable] = []
    for r in plan.restorations:
        stored = donors[r.donor].stored(r.donor_name)
        chunks = target_chunks.get(r.name)
        if r.via is not None or (chunks is None and all(ref.chunk is None for ref in stored)):
            out.append(r)
            continue
        try:
            out += _pieces_of(r, chunks or [r.target_ref], stored, unhealthy, counts)
        except NotRestorable as exc:
            where = plan.donor_label(r.donor)
            refused.append(Unrestorable(r.name, r.nan, r.posinf, r.neginf, (f"{where}: {exc}",)))
    return dataclasses.replace(plan, restorations=tuple(out), unrestorable=plan.unrestorable + tuple(refused))


def _pieces_of(
    r: Restoration, chunks: list[TensorRef], stored: list[TensorRef],
    unhealthy: Callable[[TensorRef], str | None], counts: Callable[[TensorRef], tuple[int, int, int]],
) -> list[Restoration]:
    chosen = chunks if r.reason == "layer" else [c for c in chunks if unhealthy(c) is not None] or chunks
    out = []
    for chunk in chosen:
        for part, donor_chunk in pieces(box_of(chunk), stored):
            target = view(chunk, part)
            nan, posinf, neginf = counts(target)
            out.append(dataclasses.replace(
                r, shape=part[1], nan=nan, posinf=posinf, neginf=neginf, target_ref=target,
                donor_ref=view(donor_chunk, part), box=ChunkOf(part[0], tuple(r.shape)),
            ))
    return out


__all__ = ["NotRestorable", "StoredDonor", "box_of", "expand", "intersect", "pieces", "view"]
