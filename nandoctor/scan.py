"""The scan engine: layout → readers → kernel → per-tensor counts → report.

The only module that knows both readers and kernels. Bytes are read through a
read-only mmap in chunks; chunks run on a small thread pool (numpy releases
the GIL), and pages already scanned are dropped from this process so resident
memory stays flat whatever the checkpoint's size. A file whose size or mtime
changes while it is read is reported, never trusted.
"""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nandoctor import layers, layout
from nandoctor.dtypes import DTYPES, DTypeSpec
from nandoctor.errors import FileChangedError, NandoctorError
from nandoctor.kernels import NAN, NEGINF, POSINF, Kernel, select_kernel
from nandoctor.model import Region, ScanProblem, ScanReport, TensorRef, TensorResult, UnviewedBad
from nandoctor.readers import reader_for
from nandoctor.views import covers_whole_region, locate

ProgressCallback = Callable[[int, int, str], None]  # (bytes done, bytes total, current file)

_PAGE = mmap.PAGESIZE
_MAX_LISTED_NAMES = 5


@dataclass
class _Tally:
    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    first_bad: int | None = None

    def add(self, nan: int, posinf: int, neginf: int, first: int | None) -> None:
        self.nan += nan
        self.posinf += posinf
        self.neginf += neginf
        if first is not None and (self.first_bad is None or first < self.first_bad):
            self.first_bad = first


@dataclass
class _RegionJob:
    region: Region
    spec: DTypeSpec
    views: list[TensorRef]
    direct: bool  # one view covering the whole region: counts need no attribution
    tallies: list[_Tally] = field(default_factory=list)
    unviewed: _Tally = field(default_factory=_Tally)


def scan(
    path: str | os.PathLike[str],
    *,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    both_formats: bool = False,
    kernel: Kernel | None = None,
) -> ScanReport:
    """Scan the checkpoint at ``path`` (file or folder) and return its report."""
    started = time.perf_counter()
    files = layout.discover(path, both_formats=both_formats)
    kernel = kernel or select_kernel(device)
    problems = list(files.problems)

    refs_by_file: dict[Path, list[TensorRef]] = {}
    fingerprints: dict[Path, tuple[int, int]] = {}
    for file in files.files:
        try:
            fingerprints[file] = _fingerprint(file)
            refs_by_file[file] = reader_for(file).read_refs(file)
        except NandoctorError as exc:
            problems.append(_problem(file, exc))
        except OSError as exc:
            problems.append(ScanProblem(str(file), f"cannot read: {exc.strerror or exc}"))

    problems += _check_indexes(files, refs_by_file)
    problems += _check_duplicate_names(refs_by_file)

    all_refs = [ref for refs in refs_by_file.values() for ref in refs]
    jobs = _plan_jobs(all_refs)
    total = sum(job.region.nbytes for job in jobs if job.spec.can_hold_nonfinite)
    done = 0

    with ThreadPoolExecutor(max_workers=kernel.workers, thread_name_prefix="nandoctor") as pool:
        for file, refs in refs_by_file.items():
            file_jobs = [j for j in jobs if j.region.file == str(file) and j.spec.can_hold_nonfinite]
            try:
                done = _scan_file(file, file_jobs, kernel, pool, done, total, progress)
                if _fingerprint(file) != fingerprints[file]:
                    raise FileChangedError(str(file), "the file changed while it was being scanned")
            except NandoctorError as exc:
                problems.append(_problem(file, exc))
            except OSError as exc:
                problems.append(ScanProblem(str(file), f"read failed: {exc.strerror or exc}"))

    results, unviewed = _results(jobs, all_refs)
    return ScanReport(
        target=str(path),
        files=tuple(str(f) for f in files.files),
        tensors=tuple(results),
        layers=layers.summarize(results),
        errors=tuple(problems),
        unviewed=tuple(unviewed),
        notes=tuple(files.notes),
        bytes_scanned=done,
        seconds=time.perf_counter() - started,
        device=kernel.name,
    )


def _fingerprint(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _problem(file: Path, exc: NandoctorError) -> ScanProblem:
    message = exc.message
    prefix = f"{file}: "
    return ScanProblem(str(file), message[len(prefix):] if message.startswith(prefix) else message, exc.hint)


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_MAX_LISTED_NAMES])
    more = len(names) - _MAX_LISTED_NAMES
    return shown + (f" and {more} more" if more > 0 else "")


def _check_indexes(files: layout.CheckpointFiles, refs_by_file: dict[Path, list[TensorRef]]) -> list[ScanProblem]:
    problems = []
    for index in files.indexes:
        folder = index.path.parent
        by_shard: dict[str, list[str]] = {}
        for name, shard in index.weight_map.items():
            by_shard.setdefault(shard, []).append(name)
        for shard, names in sorted(by_shard.items()):
            shard_path = folder / shard
            if shard_path not in refs_by_file:
                continue  # missing or unreadable: already reported
            present = {r.name for r in refs_by_file[shard_path]}
            missing = sorted(set(names) - present)
            if missing:
                problems.append(
                    ScanProblem(
                        str(shard_path),
                        f"{len(missing)} tensors that {index.path.name} maps here are absent: {_names(missing)}",
                        "the index and the shards come from different saves; re-save or re-download",
                    )
                )
            extra = sorted(present - set(names))
            if extra:
                problems.append(
                    ScanProblem(
                        str(shard_path),
                        f"{len(extra)} tensors in this shard are not in {index.path.name}: {_names(extra)}",
                        "loaders will ignore them; re-save the checkpoint or fix the index",
                    )
                )
    return problems


def _check_duplicate_names(refs_by_file: dict[Path, list[TensorRef]]) -> list[ScanProblem]:
    seen: dict[str, Path] = {}
    problems = []
    for file, refs in refs_by_file.items():
        for ref in refs:
            if ref.name in seen and seen[ref.name] != file:
                problems.append(
                    ScanProblem(str(file), f"tensor {ref.name!r} is also in {seen[ref.name].name}; which one loads is ambiguous")
                )
            seen.setdefault(ref.name, file)
    return problems


def _plan_jobs(refs: list[TensorRef]) -> list[_RegionJob]:
    by_region: dict[tuple[str, str], _RegionJob] = {}
    for ref in refs:
        key = (ref.region.file, ref.region.key)
        job = by_region.get(key)
        if job is None:
            job = by_region[key] = _RegionJob(ref.region, DTYPES[ref.region.dtype], [], True)
        job.views.append(ref)
    for job in by_region.values():
        job.direct = len(job.views) == 1 and covers_whole_region(job.views[0], job.spec.bits)
        job.tallies = [_Tally() for _ in job.views]
    return list(by_region.values())


def _chunks(job: _RegionJob, chunk_bytes: int) -> Iterator[tuple[int, int]]:
    """(start, length) in bytes within the region, cut on element boundaries."""
    step = max(job.spec.itemsize, chunk_bytes - chunk_bytes % job.spec.itemsize)
    for start in range(0, job.region.nbytes, step):
        yield start, min(step, job.region.nbytes - start)


def _scan_file(
    file: Path,
    jobs: list[_RegionJob],
    kernel: Kernel,
    pool: ThreadPoolExecutor,
    done: int,
    total: int,
    progress: ProgressCallback | None,
) -> int:
    if not jobs:
        return done
    with open(file, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        for job in jobs:
            if job.region.offset + job.region.nbytes > size:
                raise FileChangedError(str(file), f"tensor data of {job.region.key!r} lies past the end of the file")
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        in_flight: list[tuple[Future, int, int]] = []
        limit = kernel.workers * 2
        for job in jobs:
            for start, length in _chunks(job, kernel.chunk_bytes):
                absolute = job.region.offset + start
                future = pool.submit(_scan_chunk, mapped, absolute, length, start, job, kernel)
                in_flight.append((future, job, absolute, length))
                while len(in_flight) >= limit:
                    done = _finish(in_flight.pop(0), mapped, done, total, file, progress)
        while in_flight:
            done = _finish(in_flight.pop(0), mapped, done, total, file, progress)
    finally:
        mapped.close()
    return done


def _finish(item, mapped: mmap.mmap, done: int, total: int, file: Path, progress) -> int:
    future, job, absolute, length = item
    # Tallies are updated here, on one thread, so workers never race on them.
    for slot, nan, posinf, neginf, first in future.result():
        (job.unviewed if slot < 0 else job.tallies[slot]).add(nan, posinf, neginf, first)
    _release(mapped, absolute, length)
    done += length
    if progress:
        progress(done, total, str(file))
    return done


def _release(mapped: mmap.mmap, absolute: int, length: int) -> None:
    """Drop scanned pages from this process (the page cache keeps them) so RSS stays flat."""
    if not hasattr(mmap, "MADV_DONTNEED"):
        return
    start = absolute - absolute % _PAGE
    end = absolute + length
    end -= end % _PAGE
    if end > start:
        mapped.madvise(mmap.MADV_DONTNEED, start, end - start)


_ChunkFinding = tuple[int, int, int, int, "int | None"]  # (view slot or -1, nan, +inf, -inf, first)


def _kind_counts(kinds: np.ndarray) -> tuple[int, int, int]:
    return (
        int(np.count_nonzero(kinds == NAN)),
        int(np.count_nonzero(kinds == POSINF)),
        int(np.count_nonzero(kinds == NEGINF)),
    )


def _scan_chunk(
    mapped: mmap.mmap, absolute: int, length: int, start: int, job: _RegionJob, kernel: Kernel
) -> list[_ChunkFinding]:
    data = np.frombuffer(mapped, dtype=np.uint8, count=length, offset=absolute)
    try:
        if not kernel.any_nonfinite(data, job.spec):
            return []
        first_element = start * 8 // job.spec.bits
        if job.direct:
            counts = kernel.count(data, job.spec)
            return [(0, counts.nan, counts.posinf, counts.neginf, first_element + counts.first_bad)]
        indices, kinds = kernel.classify(data, job.spec)
        indices = indices + first_element
        seen = np.zeros(indices.size, dtype=bool)
        findings: list[_ChunkFinding] = []
        for slot, view in enumerate(job.views):
            inside, logical = locate(view, indices)
            if inside.any():
                seen |= inside
                findings.append((slot, *_kind_counts(kinds[inside]), int(logical[inside].min())))
        if not seen.all():
            findings.append((-1, *_kind_counts(kinds[~seen]), None))
        return findings
    finally:
        del data  # an exported buffer would stop the mmap from closing


def _results(jobs: list[_RegionJob], order: list[TensorRef]) -> tuple[list[TensorResult], list[UnviewedBad]]:
    by_ref: dict[int, TensorResult] = {}
    unviewed = []
    for job in jobs:
        for view, tally in zip(job.views, job.tallies):
            by_ref[id(view)] = TensorResult(
                view,
                tally.nan,
                tally.posinf,
                tally.neginf,
                tally.first_bad,
                job.spec.can_hold_nonfinite,
            )
        u = job.unviewed
        if u.nan or u.posinf or u.neginf:
            unviewed.append(UnviewedBad(job.region.file, job.region.key, u.nan, u.posinf, u.neginf))
    return [by_ref[id(ref)] for ref in order], unviewed
