"""The proof's ``diff`` section: what moved against the source, and the restored tensors against their donors.

Re-reading the whole output and the whole source (and each whole donor) to
show that nothing but the restored tensors moved cost the repair more than its
own copy. The writer knows exactly which bytes it wrote, so the proof is built
from that instead, reading only the restored extents:

- outside the restored tensors' extents (copying.py: a contiguous tensor's
  bytes, a torch view's whole storage) every byte of the output was written
  from the buffer it was read into from the source, or copied by the kernel,
  and nothing else writes the copy; the source's size and mtime are checked
  unchanged before the output is moved into place (writer.py);
- inside them, each restored tensor is compared element by element with the
  source (is it one of those that differ?), and so is every *other* tensor
  whose storage overlaps a restored extent (a tied or sliced view of the same
  storage), which must come out identical;
- against its donor, each restored tensor was already compared element by
  element by the verification (exactly the donor's elements, rounded as torch
  rounds with ``allow_cast``), so the donor entries record that result.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from nandoctor.model import TensorRef
from nandoctor.restore.copying import extent
from nandoctor.restore.plan import RepairPlan
from nandoctor.restore.tensorbytes import same_elements

MAX_LISTED = 200  # names listed per comparison in the proof; the counts are always complete


def _overlaps(ref: TensorRef, spans: list[tuple[int, int]]) -> bool:
    lo, hi = extent(ref)
    return any(lo < end and start < hi for start, end in spans)


def proof_diff(
    plan: RepairPlan,
    source_path: str | os.PathLike[str],
    refs: Sequence[TensorRef],
    copy_of: Callable[[str], str],
) -> dict[str, Any]:
    """The ``diff`` section of the proof. ``refs``: every tensor of the source (those an ``--only`` /
    ``--exclude`` left out too: a tied or sliced view of a restored storage may be one of them);
    ``copy_of`` maps a source weight file to its copy, which has the very same layout."""
    restored = {r.name for r in plan.restorations}
    spans: dict[str, list[tuple[int, int]]] = {}
    for r in plan.writes:
        spans.setdefault(r.target_ref.file, []).append(extent(r.target_ref))
    differ: set[str] = set()
    for ref in refs:
        if ref.name not in restored and not _overlaps(ref, spans.get(ref.file, [])):
            continue  # copied from the source's own bytes, untouched by any patch
        out = replace(ref, region=replace(ref.region, file=copy_of(ref.file)))
        if not same_elements(out.file, out, ref.file, ref):
            differ.add(ref.name)
    names = sorted(differ)
    tensors = len({ref.name for ref in refs})
    source = {
        "path": os.path.abspath(source_path), "complete": True, "tensors": tensors,
        "identical": tensors - len(names), "differ": len(names), "differ_tensors": names[:MAX_LISTED],
        "only_restored_differ": differ <= restored,
    }
    donors = []
    for index, donor in enumerate(plan.donors):
        took = sorted(r.name for r in plan.restorations if r.donor == index)
        if took:
            # The verification refused the repair unless each of these holds exactly its donor's elements.
            donors.append({
                "path": os.path.abspath(donor.path), "complete": True, "compared": "restored", "tensors": len(took),
                "identical": len(took), "differ": 0, "differ_tensors": [], "restored_identical": True,
            })
    return {"source": source, "donors": donors}
