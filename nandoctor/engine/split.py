"""Regions cut across parts: where the cuts fall, what each part sends of its share, how the shares combine.

A region larger than one part's share of the bytes (a 40 GB embedding, a
consolidated checkpoint of a few huge tensors) is cut into byte ranges, each
scanned by one part. Cuts fall on multiples of ``CUT_BYTES`` into the region: a
multiple of every chunk size the pipeline uses (4, 8, 16, 32 MiB) and of every
element size, so a share is exactly the chunks a single scan reads there, and
the census (which is chunk by chunk: samples, segments) comes out the same.

Only a region read whole by its one view (``RegionJob.direct``) is cut: a torch
storage viewed by several tensors, or by one view that covers part of it, keeps
its attribution (views.py) in one part; so do block-quantized regions (GGUF),
whose blocks need not divide the cut.

A share comes back as its tally (NaN/±Inf, first bad, overflow) and its census
(largest magnitudes, zeros, exploded, histogram, high segments); ``combine``
adds them up in region order, as the pipeline merges chunks, and the merged
scan finishes the region as a single scan does (outlier pass, results).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, NamedTuple

import numpy as np

from nandoctor.engine.jobs import RegionJob, Tally
from nandoctor.kernels.census import Census

CUT_BYTES = 64 << 20  # cuts at multiples of this into a region: a multiple of every chunk size


class Share(NamedTuple):
    """``length`` bytes from ``start`` into a job's region, scanned by part ``part``."""

    part: int
    start: int
    length: int


def cuttable(job: RegionJob) -> bool:
    """Whether the region may be cut across parts: one view reading it whole, plain elements."""
    return job.direct and job.spec.can_hold_nonfinite and job.region.blocks is None and CUT_BYTES % job.spec.itemsize == 0


def plan_shares(sizes: list[int], cut: list[bool], count: int) -> list[list[Share]]:
    """The shares of each region: cumulative bytes cut into ``count`` equal spans; a region (or a piece of
    a cuttable one, between cuts at the spans' ends rounded to CUT_BYTES) goes where its middle falls."""
    total = sum(sizes) or 1
    out: list[list[Share]] = []
    before = 0
    for nbytes, may_cut in zip(sizes, cut):
        edges = [0, nbytes]
        if may_cut and nbytes > total / count:
            inside = (k * total / count - before for k in range(1, count))
            rounded = {round(at / CUT_BYTES) * CUT_BYTES for at in inside if 0 < at < nbytes}
            edges = sorted({0, nbytes} | {c for c in rounded if 0 < c < nbytes})
        shares: list[Share] = []
        for start, end in itertools.pairwise(edges):
            part = min(count - 1, int((before + (start + end) / 2) * count // total))
            if shares and shares[-1].part == part:  # neighbours in one part: one share
                shares[-1] = Share(part, shares[-1].start, end - shares[-1].start)
            else:
                shares.append(Share(part, start, end - start))
        out.append(shares)
        before += nbytes
    return out


def encode_share(job: RegionJob) -> dict[str, Any]:
    """The share a part scanned of a cut region, JSON-ready: its span, tally and census."""
    assert job.span is not None and len(job.tallies) == 1  # only direct jobs are cut
    census = job._census or Census()
    fields = {f.name: getattr(census, f.name) for f in dataclasses.fields(Census)}
    fields["histogram"] = None if census.histogram is None else census.histogram.tolist()
    fields["high_segments"] = [list(s) for s in census.high_segments]
    return {"file": job.region.file, "key": job.region.key, "span": list(job.span),
            "tally": dataclasses.asdict(job.tallies[0]), "census": fields}


def combine(job: RegionJob, shares: list[dict[str, Any]]) -> None:
    """Add every part's share of ``job``'s region into it (fresh from plan_jobs), in region order."""
    census = Census()
    for share in sorted(shares, key=lambda s: s["span"][0]):
        job.tallies[0].merge(Tally(**share["tally"]))
        fields = dict(share["census"])
        histogram = fields.pop("histogram")
        segments = fields.pop("high_segments")
        census.merge(Census(**fields, histogram=None if histogram is None else np.asarray(histogram, np.intp),
                            high_segments=[(int(a), int(b), int(c)) for a, b, c in segments]))
    job.census = census


def covered(shares: list[dict[str, Any]], nbytes: int) -> bool:
    """The shares make the whole region, each byte once."""
    at = 0
    for share in sorted(shares, key=lambda s: s["span"][0]):
        start, length = share["span"]
        if start != at:
            return False
        at += length
    return at == nbytes


__all__ = ["CUT_BYTES", "Share", "combine", "covered", "cuttable", "encode_share", "plan_shares"]
