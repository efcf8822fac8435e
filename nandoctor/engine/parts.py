"""Plan → scan a part → merge: one scan split into N parts that run anywhere, then joined into one report.

``plan_parts`` cuts a checkpoint's regions into N parts of about equal bytes,
in file order (each part reads a contiguous run of files: friendly to shared
filesystems); every process that opens the same checkpoint computes the same
plan. ``scan_part`` scans one part and returns it as a plain JSON-ready dict
(``nandoctor scan --part I/N --json``; a torchrun rank). ``merge_parts``
checks that the parts make exactly one whole scan of the checkpoint as it is
now (every part once, same N, same checkpoint and options, files unchanged
since they were scanned), then assembles the one report, tensor for tensor the
report a single-process scan gives. Plain functions: nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nandoctor.access import unreadable
from nandoctor.checkpoint.opener import Checkpoint, open_checkpoint
from nandoctor.engine import Scanned, assemble, finish_jobs, scan_jobs
from nandoctor.engine.jobs import RegionJob, plan_jobs
from nandoctor.engine.part_schema import BadPart, Record, check, part_record, record_of
from nandoctor.engine.pipeline import ProgressCallback
from nandoctor.engine.split import Share, combine, covered, cuttable, encode_share, plan_shares
from nandoctor.errors import NandoctorError
from nandoctor.kernels import select_kernel
from nandoctor.kernels.census import HealthLimits
from nandoctor.kernels.targets import TargetSpec, target
from nandoctor.model import Outliers, ScanProblem, ScanReport, TensorRef, TensorResult, TensorResults, UnviewedBad
from nandoctor.wording import path_word

PART_FORMAT = "nandoctor-part/1"
_RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(TensorResult) if f.name not in ("ref", "findings"))


class PartsError(NandoctorError):
    """Parts that do not make one whole scan: missing, duplicated, foreign or stale (exit 3)."""


@dataclass(frozen=True)
class PartSpec:
    index: int  # 0-based, as SLURM_ARRAY_TASK_ID and torch ranks count
    count: int

    @classmethod
    def parse(cls, text: str) -> PartSpec:
        """``"I/N"`` with 0 <= I < N; ValueError otherwise."""
        head, sep, tail = text.partition("/")
        if not sep or not head.strip().isdigit() or not tail.strip().isdigit():
            raise ValueError(f"{text!r} is not I/N (e.g. 0/4: the first of 4 parts)")
        index, count = int(head), int(tail)
        if count == 0:
            raise ValueError(f"{text!r} splits into no parts: N is at least 1 (e.g. 0/4: the first of 4 parts)")
        if not 0 <= index < count:
            raise ValueError(f"part {index} of {count} does not exist: parts are numbered 0 to {count - 1}")
        return cls(index, count)


@dataclass(frozen=True)
class Options:
    """What every part must agree on: the same options give the same plan and the same findings."""

    both_formats: bool = False
    target_dtype: str | None = None
    max_abs: float | None = None
    outlier_factor: float | None = None

    @property
    def limits(self) -> HealthLimits:
        defaults = HealthLimits()
        return HealthLimits(
            self.max_abs,  # None: each dtype's own default ceiling
            defaults.outlier_factor if self.outlier_factor is None else self.outlier_factor,
        )


def plan_parts(jobs: list[RegionJob], count: int) -> list[list[Share]]:
    """The shares of each job: cumulative bytes cut into ``count`` equal spans; a job goes whole to the part
    where its middle falls, unless it is larger than a span and may be cut (engine/split.py)."""
    return plan_shares([job.region.nbytes for job in jobs], [cuttable(job) for job in jobs], count)


def identity(checkpoint: Checkpoint, options: Options, count: int) -> str:
    """A digest of what the parts must share: the checkpoint's files as they are, its tensors, N, the options."""
    files = sorted((str(f), *_portable(checkpoint, f)) for f in checkpoint.files.files)
    what = [str(Path(checkpoint.path).resolve()), files, len(checkpoint.refs), count, dataclasses.asdict(options)]
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _portable(checkpoint: Checkpoint, file: Path) -> tuple[int, ...]:
    """The file's identity as parts scanned on several hosts agree on it; (-1, -1) for one never opened."""
    found = checkpoint.fingerprints.get(file)
    return found.portable() if found is not None else (-1, -1)


def scan_part(
    path: str | os.PathLike[str], part: PartSpec, options: Options = Options(), *, device: str = "auto",
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Scan part ``part.index`` of ``part.count`` of the checkpoint at ``path``; the part as a JSON-ready dict."""
    started = time.perf_counter()
    # absolute: parts scanned from different folders (`st`, `../st`) are parts of one checkpoint, and merge
    # finds it (and its files' fingerprints) from wherever it runs
    path = os.path.abspath(path)
    checkpoint = open_checkpoint(path, both_formats=options.both_formats)
    cast_to = target(options.target_dtype) if options.target_dtype else None
    jobs = plan_jobs(checkpoint.refs, options.limits, cast_to)
    mine = []
    for job, shares in zip(jobs, plan_parts(jobs, part.count)):
        for share in shares:
            if share.part == part.index:
                job.span = None if len(shares) == 1 else (share.start, share.length)
                mine.append(job)
    files = {Path(job.region.file) for job in mine}
    if part.index == 0:  # files without a region to read are still checked for changes, by part 0
        files |= {f for f, refs in checkpoint.refs_by_file.items() if not refs}
    kernel = select_kernel(device)
    regions = len(mine)  # (scan_jobs empties the list as it frees each job)
    found = scan_jobs(checkpoint, mine, kernel, options.limits, progress, files)
    index = {id(ref): i for i, ref in enumerate(checkpoint.refs)}
    return {
        "format": PART_FORMAT,
        "target": path,
        "part": part.index,
        "of": part.count,
        "identity": identity(checkpoint, options, part.count),
        "options": dataclasses.asdict(options),
        "fingerprints": {str(f): list(fp.portable()) for f, fp in checkpoint.fingerprints.items()},
        "device": kernel.name,
        "seconds": time.perf_counter() - started,
        "bytes_scanned": found.bytes_scanned,
        "regions": regions,
        "tensors": [_encode(t, index[id(t.ref)]) for t in found.tensors],
        "unviewed": [dataclasses.asdict(u) for u in found.unviewed],
        "problems": [dataclasses.asdict(p) for p in found.problems],
        # What opening the checkpoint found unreadable (every part opens all of it, so every part lists them;
        # merge finds them again when it opens the checkpoint): the part's own exit code must not be 0 then.
        "checkpoint_problems": [dataclasses.asdict(p) for p in checkpoint.problems],
        "shares": [encode_share(job) for job in found.partial],
    }


def _encode(result: TensorResult, ref_index: int) -> dict[str, Any]:
    out: dict[str, Any] = {"ref": ref_index, "name": result.ref.name}
    for name in _RESULT_FIELDS:
        value = getattr(result, name)
        out[name] = dataclasses.asdict(value) if isinstance(value, Outliers) else value
    return out


def _decode(data: dict[str, Any], refs: list[TensorRef], label: str) -> TensorResult:
    ref_index = data["ref"]
    if not (isinstance(ref_index, int) and 0 <= ref_index < len(refs)) or refs[ref_index].name != data["name"]:
        raise PartsError(f"{label}: tensor {data.get('name')!r} is not where the checkpoint has it now",
                         "the checkpoint changed since the part was scanned; scan the parts again")
    # JSON has no tuples: tuple fields (experts) come back as lists
    fields: dict[str, Any] = {name: tuple(data[name]) if isinstance(data[name], list) else data[name]
                              for name in _RESULT_FIELDS}
    if fields["outliers"] is not None:
        fields["outliers"] = Outliers(**fields["outliers"])
    return TensorResult(refs[ref_index], **fields)


def read_part(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A part file written by ``nandoctor scan --part I/N --json``; PartsError naming it otherwise."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise unreadable(path, exc) from None
    except ValueError as exc:
        raise PartsError(f"{path}: not a readable part file ({exc})",
                         "write parts with: nandoctor scan PATH --part I/N --json > part-I.json") from None
    if not isinstance(data, dict) or data.get("format") != PART_FORMAT:
        raise PartsError(f"{path}: not a nandoctor part (a scan report or another file?)",
                         "write parts with: nandoctor scan PATH --part I/N --json > part-I.json")
    try:
        _check_part(data)
    except BadPart as exc:
        raise PartsError(f"{path}: not a nandoctor part file, or from another version: {exc}",
                         "re-run that part: nandoctor scan PATH --part I/N --json > part-I.json") from None
    return data


def _check_part(data: dict[str, Any]) -> None:
    """BadPart unless ``data`` holds every key merge reads, of its type, and values merge can use."""
    check(data, _part_record())
    if not 0 <= data["part"] < data["of"]:
        raise BadPart(f"part {data['part']} of {data['of']} does not exist (parts are 0 to N-1 of N >= 1)")
    options = Options(**data["options"])
    try:
        _ = options.limits
        if options.target_dtype is not None:
            target(options.target_dtype)
    except ValueError as exc:
        raise BadPart(f"options: {exc}") from None


@functools.cache
def _part_record() -> Record:
    return part_record(_RESULT_FIELDS, record_of(Options))


def merge_parts(parts: list[tuple[str, dict[str, Any]]], *, device: str | None = None) -> ScanReport:
    """The one report of a scan split into ``parts`` ((label, part) pairs); PartsError unless they make one whole."""
    if not parts:
        raise PartsError("no parts to merge", "pass every part-*.json of the scan")
    first_label, first = parts[0]
    count = first["of"]
    by_index: dict[int, str] = {}
    for label, part in parts:
        if part["of"] != count:
            raise PartsError(f"{label}: a part of {part['of']} where {first_label} is a part of {count}",
                             "merge the parts of one split only")
        differs = _differs(part, first, first_label)
        if differs:
            raise PartsError(f"{label}: {differs}", "merge the parts of one scan only (scanned with the same options)")
        if part["part"] in by_index:
            raise PartsError(f"{label} and {by_index[part['part']]} are both part {part['part']}/{count}",
                             "keep one of them (a retried part replaces the first try)")
        by_index[part["part"]] = label
    missing = [i for i in range(count) if i not in by_index]
    if missing:
        more = " (and the same for each missing part)" if len(missing) > 1 else ""
        raise PartsError(f"part(s) {', '.join(f'{i}/{count}' for i in missing)} missing",
                         f"run: {_part_command(first, missing[0])}{more}")
    options = Options(**first["options"])
    checkpoint = open_checkpoint(first["target"], both_formats=options.both_formats)
    now = identity(checkpoint, options, count)
    for label, part in parts:
        if part["identity"] != now:
            raise PartsError(f"{label}: {_what_changed(part, checkpoint)}",
                             "the checkpoint is not what was scanned; scan the parts again")
    found = _gathered(parts, checkpoint)
    cast_to = target(options.target_dtype) if options.target_dtype else None
    _finish_cut_regions(parts, checkpoint, found, options, cast_to)
    _check_coverage(checkpoint, found)
    return _assembled(parts, checkpoint, found, device)


def _check_coverage(checkpoint: Checkpoint, found: Scanned) -> None:
    """Every tensor of the checkpoint has exactly one result among the parts (where everything was read): a part
    file that lost tensors (cut short, edited) must not make a smaller checkpoint look clean. The counts in a part
    are trusted: merge checks that the parts belong together and cover the checkpoint, not that they are true."""
    if found.problems or checkpoint.problems:
        return  # (what could not be read is reported as such; its tensors have no results)

    def key(ref: TensorRef) -> tuple[Any, ...]:
        return (ref.name, *ref.elements_key)

    seen = Counter(key(t.ref) for t in found.tensors)
    missing = [ref.name for ref in checkpoint.refs if seen[key(ref)] == 0]
    twice = [name for (name, *_), n in seen.items() if n > 1]
    if missing or twice:
        what = (f"no result for {len(missing)} tensor(s) ({missing[0]!r} …)" if missing
                else f"{len(twice)} tensor(s) twice ({twice[0]!r} …)")
        raise PartsError(f"the parts hold {what}: a part file is incomplete or was edited",
                         "scan the parts again (nandoctor scan PATH --part I/N --json > part-I.json)")


def partial_report(path: str, parts: list[tuple[str, dict[str, Any]]], missing: list[ScanProblem]) -> ScanReport:
    """What the ``parts`` that came in read, when others did not (``missing``: a rank that failed or hung, as
    problems): their tensors and findings, and exit 3, never a verdict on the whole checkpoint. The shares of
    regions cut across parts are left out (a region is only read when all of its shares are in)."""
    from nandoctor import verdict

    nothing = verdict.judged(ScanReport(target=path, files=(), tensors=TensorResults.of(()), layers=(),
                                        errors=tuple(missing)))
    if not parts:
        return nothing
    try:
        checkpoint = open_checkpoint(path, both_formats=Options(**parts[0][1]["options"]).both_formats)
        found = _gathered(parts, checkpoint)
    except NandoctorError:  # (changed since the part was scanned: the problems say what is missing)
        return nothing
    found.problems += missing
    return _assembled(parts, checkpoint, found, None)


def _gathered(parts: list[tuple[str, dict[str, Any]]], checkpoint: Checkpoint) -> Scanned:
    refs = checkpoint.refs
    found = Scanned([], [], [], 0)
    for label, part in parts:
        found.tensors += [_decode(t, refs, label) for t in part["tensors"]]
        found.unviewed += [UnviewedBad(**u) for u in part["unviewed"]]
        found.problems += [ScanProblem(**p) for p in part["problems"]]
        found.bytes_scanned += part["bytes_scanned"]
    return found


def _assembled(parts: list[tuple[str, dict[str, Any]]], checkpoint: Checkpoint, found: Scanned,
               device: str | None) -> ScanReport:
    first = parts[0][1]
    options = Options(**first["options"])
    cast_to = target(options.target_dtype) if options.target_dtype else None
    seconds = max(part["seconds"] for _, part in parts)  # the parts ran side by side
    report = assemble(first["target"], checkpoint, found, device or first["device"], seconds, cast_to, options.limits)
    return dataclasses.replace(report, extra={**report.extra, "parts": first["of"]})


_FLAGS = {"both_formats": "--both-formats", "target_dtype": "--target-dtype", "max_abs": "--max-abs",
          "outlier_factor": "--outlier-factor"}


def _differs(part: dict[str, Any], first: dict[str, Any], first_label: str) -> str | None:
    """How ``part`` differs from ``first`` in what every part must share: the checkpoint, or an option (both values)."""
    if part["target"] != first["target"]:
        return f"a part of {part['target']}, where {first_label} is a part of {first['target']}"
    for key in sorted(set(part["options"]) | set(first["options"])):
        mine, theirs = part["options"].get(key), first["options"].get(key)
        if mine != theirs:
            return f"scanned {_with(key, mine)}, where {first_label} was scanned {_with(key, theirs)}"
    return None


def _with(key: str, value: Any) -> str:
    """An option as the command line gave it: ``with --target-dtype fp16``, ``without --max-abs``."""
    flag = _FLAGS.get(key, key)
    if value is None or value is False:
        return f"without {flag}"
    return f"with {flag}" if value is True else f"with {flag} {_value(value)}"


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _part_command(part: dict[str, Any], index: int) -> str:
    """The command that scans part ``index`` as ``part`` was scanned (its options), into part-INDEX.json."""

    words = ["nandoctor", "scan", path_word(part["target"])]
    for key, value in sorted(part["options"].items()):
        if value is True:
            words.append(_FLAGS.get(key, key))
        elif value not in (None, False):
            words += [_FLAGS.get(key, key), _value(value)]
    return " ".join([*words, "--part", f"{index}/{part['of']}", "--json", ">", f"part-{index}.json"])


def _finish_cut_regions(
    parts: list[tuple[str, dict[str, Any]]], checkpoint: Checkpoint, found: Scanned, options: Options,
    cast_to: TargetSpec | None,
) -> None:
    """The regions cut across parts, their shares added up and finished as a single scan finishes them:
    the outlier pass reads their high segments again, here, where every share's census is in."""
    shares: dict[tuple[str, str], list[dict[str, Any]]] = {}
    label_of: dict[int, str] = {}
    for label, part in parts:
        for share in part["shares"]:
            shares.setdefault((share["file"], share["key"]), []).append(share)
            label_of[id(share)] = label
    if not shares:
        return
    jobs = []
    for job in plan_jobs(checkpoint.refs, options.limits, cast_to):
        mine = shares.pop((job.region.file, job.region.key), None)
        if mine is None:
            continue
        if not covered(mine, job.region.nbytes):
            raise PartsError(f"the parts' shares of {job.views[0].name!r} do not make the whole region",
                             "the parts were not cut by one plan; scan the parts again")
        for share in mine:
            wrong = _share_values(share, job)
            if wrong:
                raise PartsError(f"{label_of[id(share)]}: not a nandoctor part file, or from another version: its share "
                                 f"of {job.views[0].name!r} holds {wrong}",
                                 "re-run that part: nandoctor scan PATH --part I/N --json > part-I.json")
        combine(job, mine)
        jobs.append(job)
    if shares:
        raise PartsError(f"a share of a region the checkpoint does not have ({next(iter(shares))[1]!r})",
                         "the checkpoint changed since the parts were scanned; scan the parts again")
    failed = {p.path for p in found.problems}  # (a file whose read failed in some part: no outlier pass there)
    finished = finish_jobs(jobs, select_kernel("cpu"), options.limits, failed)
    found.tensors += finished.tensors
    found.unviewed += finished.unviewed
    found.problems += finished.problems


def _share_values(share: dict[str, Any], job: RegionJob) -> str | None:
    """What in a cut region's share no scan of that region writes (a magnitude wider than its lanes, a histogram
    of another dtype, a segment outside the region), which the merge would fail on; None when nothing."""
    info = job.info
    if info is None:
        return "a census of a region that has none"
    census, lanes = share["census"], job.region.nbytes * 8 // info.lane_bits
    magnitudes = [census["high_max"], census["sample_max"], census["exact_max"], share["tally"]["max_bits"]]
    magnitudes += [top for _, _, top in census["high_segments"]]
    if any(not -1 <= bits <= info.mag_mask for bits in magnitudes):
        return f"a magnitude that is not one of {job.spec.name}"
    bins = (info.mag_mask >> info.mantissa) + 1
    histogram = census["histogram"]
    if histogram is not None and (len(histogram) != bins or any(not 0 <= n <= lanes for n in histogram)):
        return f"a histogram that is not one of {job.spec.name}'s exponents"
    if any(start < 0 or count < 0 or start + count > lanes for start, count, _ in census["high_segments"]):
        return "a segment outside the region"
    return None


def _what_changed(part: dict[str, Any], checkpoint: Checkpoint) -> str:
    then = part["fingerprints"]
    now = {str(f): list(fp.portable()) for f, fp in checkpoint.fingerprints.items()}
    for file in sorted(set(then) | set(now)):
        if then.get(file) != now.get(file):
            verb = "appeared" if file not in then else "is gone" if file not in now else "changed"
            return f"{file} {verb} since this part was scanned"
    return "another checkpoint, or the same one split another way"


__all__ = ["Options", "PartSpec", "PartsError", "merge_parts", "partial_report", "plan_parts", "read_part", "scan_part"]
