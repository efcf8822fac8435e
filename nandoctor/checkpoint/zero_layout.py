"""DeepSpeed ZeRO partition arithmetic: which parameter elements a rank's flat partition holds, and where.

Pure arithmetic on the numbers DeepSpeed saves (``param_shapes`` from the model
states file; ``partition_count``, ``param_alignment_paddings`` and the flat
partitions' sizes from the optimizer states files), following
``deepspeed/utils/zero_to_fp32.py``, the reference reader of these files:

- **ZeRO-1/2** (``stage_1_and_2.py``): each parameter group is flattened in
  ``param_shapes`` order, each parameter followed by its alignment padding, the
  whole padded to a multiple of ``2 * world``, and cut into ``world`` equal
  partitions: rank r holds group elements ``[r * P, (r + 1) * P)``, saved
  without the padding that falls in it (``group_paddings``).
- **ZeRO-3** (``stage3.py``): every parameter is partitioned on its own into
  ``ceil(numel / world)`` elements per rank (rank r holds elements
  ``[r * p, (r + 1) * p)``, the last rank's tail padding); a rank's partitions
  of all parameters are concatenated in ``param_shapes`` order and that vector
  is cut into the sub-groups of ``fp32_flat_groups``.

Nothing here reads a file or imports deepspeed.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from itertools import accumulate

Shapes = list[tuple[str, tuple[int, ...]]]  # (parameter name, shape) in param_shapes order


class LayoutError(Exception):
    """The saved numbers do not add up (DeepSpeed's own reader refuses such a checkpoint too)."""


@dataclass(frozen=True, slots=True)
class Piece:
    """A run of one parameter's elements inside a rank's flat partition."""

    param: str
    shape: tuple[int, ...]
    start: int  # first element, in the flat partition
    length: int
    param_start: int  # first element, as a flat C-order index of the parameter

    @property
    def whole(self) -> bool:
        return self.param_start == 0 and self.length == math.prod(self.shape)


def _align(n: int, to: int) -> int:
    return to * math.ceil(n / to)


def zero2_pieces(
    shapes: Shapes, paddings: list[int] | None, saved: int, tail: int, world: int, rank: int
) -> list[Piece]:
    """The pieces of one ZeRO-1/2 parameter group in rank ``rank``'s partition: ``saved`` elements in the file,
    ``tail`` more of padding that were not saved."""
    if paddings is not None and len(paddings) != len(shapes):
        raise LayoutError(f"{len(paddings)} alignment paddings for {len(shapes)} parameters")
    partition = saved + tail
    low, high = rank * partition, rank * partition + saved
    offset = 0
    pieces = []
    for i, (name, shape) in enumerate(shapes):
        numel = math.prod(shape)
        begin, end = max(offset, low), min(offset + numel, high)
        if begin < end:
            pieces.append(Piece(name, shape, begin - low, end - begin, begin - offset))
        offset += numel + (paddings[i] if paddings is not None else 0)
    # zero_to_fp32's own check: the parameters, aligned to 2 * world, fill the partitions exactly
    if _align(offset, 2 * world) != _align(partition * world, 2 * world):
        raise LayoutError(f"the parameters take {offset:,} elements where {world} partitions of {partition:,} "
                          f"hold {partition * world:,}")
    return pieces


def zero3_pieces(shapes: Shapes, world: int, rank: int, group_sizes: list[int]) -> list[list[Piece]]:
    """The pieces of rank ``rank``'s ZeRO-3 partitions, one list per flat group of ``group_sizes`` elements."""
    bounds = [0, *accumulate(group_sizes)]
    per_rank = [math.ceil(math.prod(shape) / world) for _, shape in shapes]
    if sum(per_rank) != bounds[-1]:
        raise LayoutError(f"the parameters' partitions take {sum(per_rank):,} elements per rank where the flat "
                          f"groups hold {bounds[-1]:,}")
    out: list[list[Piece]] = [[] for _ in group_sizes]
    offset = 0
    for (name, shape), share in zip(shapes, per_rank):
        first = rank * share
        length = max(0, min(share, math.prod(shape) - first))  # the rest of the share is padding
        at = offset
        while at < offset + length:  # a parameter's share may straddle sub-groups (zero_to_fp32's GatheredTensor)
            group = bisect.bisect_right(bounds, at) - 1
            end = min(offset + length, bounds[group + 1])
            out[group].append(Piece(name, shape, at - bounds[group], end - at, first + at - offset))
            at = end
        offset += share
    return out


__all__ = ["LayoutError", "Piece", "Shapes", "zero2_pieces", "zero3_pieces"]
