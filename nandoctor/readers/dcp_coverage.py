"""Whether a DCP checkpoint's chunks are its tensors, exactly: no element left out, none in two chunks.

``.metadata`` declares each tensor's global size and its chunks; torch.distributed.checkpoint's loader
allocates the tensor with ``torch.empty`` and copies each chunk in. An element no chunk covers keeps
whatever that memory held (NaN, in practice, when a freed tensor's pages come back): a scan of the chunks
alone would call such a tensor clean. A chunk the metadata lists without a storage item cannot be loaded at
all (a ``CheckpointException``), and two chunks that share elements leave the value to the read order.

So every tensor's chunks must tile its size. The test is exact and linear in the chunks: each chunk, a
box, is the d-fold prefix sum of its signed corners (+1 at the start corner, -1 or +1 at the others), so
the chunks tile the tensor exactly when their corners, added up, equal the tensor's own. Where they do
not, the smallest corner that differs is an element covered zero or two or more times, and the
uncovered box around it is found by growing it along each dimension up to the nearest chunk.

Chunks of no elements (a rank's empty shard of an uneven split) cover nothing and are never read by
torch: they are passed over, with or without an item. Nothing here imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import product

from nandoctor.model import ScanProblem
from nandoctor.readers.dcp_metadata import DcpMetadata, DcpTensor
from nandoctor.wording import first_few

# Corners added up for one tensor (chunks x 2**dims split): real saves split one or two dimensions; past this,
# a crafted metadata would cost minutes, so the tensor is reported as not verified (exit 3) instead.
MAX_CORNERS = 1 << 22
_SHOWN_TENSORS = 10  # problems named one by one; the rest in one more
_HINT = ("the .metadata and the .distcp files do not describe the same save (a partial copy, files of two saves, "
         "or a damaged .metadata); re-copy the whole checkpoint folder from where it was saved, or save it again")

Box = tuple[tuple[int, ...], tuple[int, ...]]  # (offsets, sizes)


def coverage_problems(metadata: DcpMetadata, path: str) -> list[ScanProblem]:
    """One problem per tensor whose chunks do not tile it or lack a storage item, and per pickled object
    without one (``path``: the ``.metadata`` file they are read through)."""
    stored = {(item.fqn, item.chunk_offsets) for item in metadata.items}
    faults: list[str] = []
    for fqn, tensor in metadata.tensors.items():
        fault = _missing_item(tensor, stored) or tiling_fault(tensor)
        if fault:
            faults.append(f"tensor {fqn!r}: {fault}")
    faults += [f"object {fqn!r}: no storage item in the .metadata (torch.distributed.checkpoint.load fails on it)"
               for fqn in sorted(metadata.objects) if (fqn, None) not in stored]
    problems = [ScanProblem(path, fault, _HINT) for fault in faults[:_SHOWN_TENSORS]]
    if len(faults) > _SHOWN_TENSORS:
        rest = [f.split(":", 1)[0] for f in faults[_SHOWN_TENSORS:]]
        problems.append(ScanProblem(path, f"{len(rest)} more tensors or objects whose chunks are not as the .metadata "
                                          f"declares: {first_few(rest, 5)}", _HINT))
    return problems


def _missing_item(tensor: DcpTensor, stored: set[tuple[str, tuple[int, ...] | None]]) -> str | None:
    lost = [c for c in tensor.chunks if math.prod(c.sizes) and (tensor.fqn, c.offsets) not in stored]
    if not lost:
        return None
    boxes = first_few([_box(c.offsets, c.sizes) for c in lost], 3)
    which = f"chunk {boxes} has" if len(lost) == 1 else f"{len(lost)} of its {len(tensor.chunks)} chunks ({boxes}) have"
    return (f"{which} no storage item in the .metadata: no .distcp file holds those elements, and "
            f"torch.distributed.checkpoint.load fails on them")


def tiling_fault(tensor: DcpTensor) -> str | None:
    """What is wrong with how ``tensor``'s chunks cover its size (None: they tile it exactly)."""
    size = tensor.size
    boxes = list(dict.fromkeys((c.offsets, c.sizes) for c in tensor.chunks if math.prod(c.sizes)))
    for off, sz in boxes:
        if len(off) != len(size) or any(o + s > g for o, s, g in zip(off, sz, size)):
            return f"chunk {_box(off, sz)} lies outside its size {list(size)}"
    numel = math.prod(size)
    if numel == 0:
        return None  # nothing to cover, and every chunk holds nothing
    split = [k for k in range(len(size)) if any(off[k] or sz[k] != size[k] for off, sz in boxes)]
    if len(boxes) << len(split) > MAX_CORNERS:
        return (f"its {len(boxes):,} chunks split {len(split)} of its dimensions, too many to check that they cover "
                f"it; not verified")
    residual: dict[tuple[int, ...], int] = {}
    whole: Box = ((0,) * len(size), size)
    for (off, sz), sign in [*((b, 1) for b in boxes), (whole, -1)]:
        for corner, parity in _corners([off[k] for k in split], [off[k] + sz[k] for k in split]):
            residual[corner] = residual.get(corner, 0) + sign * parity
    differing = [corner for corner, count in residual.items() if count]
    if not differing:
        return None
    # The smallest corner that differs (in C order) is an element covered 1 + residual times: every corner
    # before it in every dimension is lexicographically smaller, so the prefix sum there is its own count.
    first = min(differing)
    element = [0] * len(size)
    for k, coordinate in zip(split, first):
        element[k] = coordinate
    held = sum(math.prod(sz) for _, sz in boxes)
    if not boxes:
        return f"no chunk holds any of its {numel:,} elements (torch's loader leaves uninitialised memory there)"
    if residual[first] < 0:
        gap = _uncovered_box(element, boxes, size)
        return (f"its chunks hold {held:,} of its {numel:,} elements: {_box(*gap)} is in no chunk (torch's loader "
                f"leaves uninitialised memory there)")
    holding = [(off, sz) for off, sz in boxes if _inside(element, off, sz)]
    return (f"element {element} lies in {len(holding)} of its chunks ({first_few([_box(*b) for b in holding], 2)}): "
            f"chunks must not overlap (which value torch loads there depends on the read order)")


def _corners(lo: list[int], hi: list[int]) -> Iterator[tuple[tuple[int, ...], int]]:
    """The 2**d corners of the box [lo, hi) with their signs: -1 for each dimension taken at its end."""
    for picks in product((0, 1), repeat=len(lo)):
        yield tuple(h if pick else low for low, h, pick in zip(lo, hi, picks)), -1 if sum(picks) % 2 else 1


def _inside(element: list[int], off: tuple[int, ...], sz: tuple[int, ...]) -> bool:
    return all(o <= e < o + s for e, o, s in zip(element, off, sz))


def _uncovered_box(element: list[int], boxes: list[Box], size: tuple[int, ...]) -> Box:
    """A box around the uncovered ``element`` that no chunk meets, grown along each dimension in turn up to the
    nearest chunk that meets it in the others (or the tensor's edge)."""
    lo, hi = list(element), [e + 1 for e in element]
    for k in range(len(size)):
        down, up = 0, size[k]
        for off, sz in boxes:
            if all(off[j] < hi[j] and lo[j] < off[j] + sz[j] for j in range(len(size)) if j != k):
                if off[k] >= hi[k]:
                    up = min(up, off[k])
                elif off[k] + sz[k] <= lo[k]:
                    down = max(down, off[k] + sz[k])
        lo[k], hi[k] = down, up
    return tuple(lo), tuple(h - low for low, h in zip(lo, hi))


def _box(off: tuple[int, ...] | list[int], sz: tuple[int, ...] | list[int]) -> str:
    """``[4:8, 0:16]``: a box as the slices that select it."""
    return "[" + ", ".join(f"{o}:{o + s}" for o, s in zip(off, sz)) + "]"


__all__ = ["MAX_CORNERS", "coverage_problems", "tiling_fault"]
