"""Reports as JSON-ready dicts: a scan (``ScanReport``) and a run timeline (``RunReport``).

The schemas are documented in docs/json.md. Every decision (verdict, exit
code, findings) is read from what verdict.py stored; nothing is recomputed.
"""

from __future__ import annotations

from collections.abc import Iterator
from json.encoder import encode_basestring_ascii  # (C)
from operator import attrgetter
from typing import Any

from nandoctor import verdict as verdicts
from nandoctor.checkpoint.runs import INCOMPLETE, RunCheckpoint, RunReport, TrainLog
from nandoctor.errors import EXIT_UNREADABLE, NandoctorError
from nandoctor.layers import bad_ranges
from nandoctor.model import ScanReport, TensorResult
from nandoctor.report.jsontext import INDENT, dict_template, encode_at

SCHEMA_VERSION = 3


def _first_bad(t: TensorResult) -> dict[str, Any] | None:
    if t.first_bad is None:
        return None
    out: dict[str, Any] = {"index": t.first_bad, "coords": list(t.first_bad_coords or ())}
    if t.first_bad_block is not None:
        out["block"] = t.first_bad_block
    return out


def _quantization(t: TensorResult) -> dict[str, Any] | None:
    """For a block-quantized tensor: what its counts are of (scale fields) and how many there are."""
    fields = t.ref.region.blocks
    if fields is None:
        return None
    return {
        "type": fields.kind,
        "block_elements": fields.block_elems,
        "block_bytes": fields.block_bytes,
        "blocks": fields.blocks_in(t.ref.region.nbytes),
        "scale_fields": t.ref.counted,
        "scale_dtype": t.ref.region.dtype,
        "fraction": t.fraction,
    }


def tensor_to_json(t: TensorResult) -> dict[str, Any]:
    outliers = t.outliers
    return {
        "name": t.name,
        "file": t.ref.file,
        "role": t.ref.role,
        "dtype": t.ref.dtype,
        "shape": list(t.ref.shape),
        "nan": t.nan,
        "posinf": t.posinf,
        "neginf": t.neginf,
        "first_bad": _first_bad(t),
        "order": t.ref.order,  # "F": GGUF's dimension order, ne0 first and fastest
        "counts_of": "scale_fields" if t.ref.region.blocks is not None else "elements",
        "quantization": _quantization(t),
        "experts": list(t.experts) if t.experts else None,
        "can_hold_nonfinite": t.can_hold_nonfinite,
        "max_abs": t.max_abs,
        "max_abs_exact": t.max_abs_exact,
        "bulk_scale": t.bulk_scale,
        "zeros": t.zeros,
        "exploded": t.exploded,
        "outliers": (
            None
            if outliers is None
            else {
                "count": outliers.count,
                "worst": outliers.worst,
                "threshold": outliers.threshold,
                "first": {"index": outliers.first, "coords": list(t.ref.coords(outliers.first))},
            }
        ),
        "overflow": t.overflow,  # --target-dtype: finite values that overflow the cast
        "findings": list(t.findings),
    }


_TENSOR_KEYS = (
    "name", "file", "role", "dtype", "shape", "nan", "posinf", "neginf", "first_bad", "order", "counts_of",
    "quantization", "experts", "can_hold_nonfinite", "max_abs", "max_abs_exact", "bulk_scale", "zeros",
    "exploded", "outliers", "overflow", "findings",
)
_ENTRY_TEMPLATES: dict[int, str] = {}


class _TensorEntry:
    """A tensor's entry for ``jsontext`` (the CLI's lazy report): the text of ``tensor_to_json(t)``,
    written straight from the result for the common entry (no bad values, findings, blocks, experts or
    outliers; plain types), without building its dict; anything else through the dict. ``text``: the
    entry's text at ``_ENTRY_LEVEL``, already written with its batch (``_lazy_entries``), or None."""

    __slots__ = ("t", "text")

    def __init__(self, t: TensorResult, text: str | None = None) -> None:
        self.t = t
        self.text = text

    def json_text(self, level: int) -> str:
        if self.text is not None and level == _ENTRY_LEVEL:
            return self.text
        t = self.t
        ref = t.ref
        shape = ref.shape
        max_abs, bulk = t.max_abs, t.bulk_scale
        if (
            t.first_bad is None and ref.region.blocks is None and not t.experts and t.outliers is None
            and not t.findings
            and type(ref.name) is str and type(ref.region.file) is str and type(ref.role) is str
            and type(ref.dtype) is str and type(ref.order) is str
            and type(t.nan) is int and type(t.posinf) is int and type(t.neginf) is int
            and type(t.zeros) is int and type(t.exploded) is int and type(t.overflow) is int
            and type(t.can_hold_nonfinite) is bool and type(t.max_abs_exact) is bool
            and (max_abs is None or (type(max_abs) is float and max_abs - max_abs == 0))
            and (bulk is None or (type(bulk) is float and bulk - bulk == 0))
            and all(type(d) is int for d in shape)
        ):
            template = _ENTRY_TEMPLATES.get(level)
            if template is None:
                template = _ENTRY_TEMPLATES[level] = dict_template(_TENSOR_KEYS, level)
            if shape:
                inner = "\n" + " " * (INDENT * (level + 2))
                shape_text = "[" + inner + ("," + inner).join(map(int.__repr__, shape)) + "\n" + " " * (INDENT * (level + 1)) + "]"
            else:
                shape_text = "[]"
            return template % (
                encode_basestring_ascii(ref.name), encode_basestring_ascii(ref.region.file),
                encode_basestring_ascii(ref.role), encode_basestring_ascii(ref.dtype), shape_text,
                int.__repr__(t.nan), int.__repr__(t.posinf), int.__repr__(t.neginf), "null",
                encode_basestring_ascii(ref.order), '"elements"', "null", "null",
                "true" if t.can_hold_nonfinite else "false",
                "null" if max_abs is None else float.__repr__(max_abs),
                "true" if t.max_abs_exact else "false",
                "null" if bulk is None else float.__repr__(bulk),
                int.__repr__(t.zeros), int.__repr__(t.exploded), "null", int.__repr__(t.overflow), "[]",
            )
        return encode_at(tensor_to_json(t), level)


_ENTRY_LEVEL = 2  # the report (0) → "tensors" (1) → its entries (2)
_BATCH = 1024
# The fields of a common entry (the fixed ones written into its template), read column by column.
_PLAIN_KEY = attrgetter("first_bad", "outliers", "experts", "findings", "ref.region.blocks")
_PLAIN = (None, None, (), (), None)
_STR_COLUMNS = attrgetter("ref.name", "ref.region.file", "ref.role", "ref.dtype", "ref.order")
_INT_COLUMNS = attrgetter("nan", "posinf", "neginf", "zeros", "exploded", "overflow")
_BOOL_COLUMNS = attrgetter("can_hold_nonfinite", "max_abs_exact")
_FLOAT_COLUMNS = attrgetter("max_abs", "bulk_scale")
_SHAPE = attrgetter("ref.shape")
_ONLY_STR, _ONLY_INT, _ONLY_BOOL = frozenset((str,)), frozenset((int,)), frozenset((bool,))
_FLOAT_OR_NONE, _ONLY_TUPLE = frozenset((float, type(None))), frozenset((tuple,))
_BOOL_TEXT = {True: "true", False: "false"}


class _ShapeTexts(dict):
    """A shape's text in an entry, once per distinct shape; None for a shape not of plain ints."""

    def __missing__(self, shape: tuple) -> str | None:
        if not _ONLY_INT.issuperset(map(type, shape)):
            text = None
        elif shape:
            inner = "\n" + " " * (INDENT * (_ENTRY_LEVEL + 2))
            text = "[" + inner + ("," + inner).join(map(int.__repr__, shape)) + "\n" + " " * (INDENT * (_ENTRY_LEVEL + 1)) + "]"
        else:
            text = "[]"
        self[shape] = text
        return text


def _lazy_entries(tensors: tuple[TensorResult, ...]) -> Iterator[_TensorEntry]:
    """The tensors' entries, the common ones written a batch at a time, column by column (C calls
    across the batch, not a Python call per field): what a --json scan of a million small tensors
    spends its time on."""
    template = dict_template(_TENSOR_KEYS, _ENTRY_LEVEL) % (
        "%s", "%s", "%s", "%s", "%s", "%s", "%s", "%s", "null", "%s", '"elements"', "null", "null",
        "%s", "%s", "%s", "%s", "%s", "%s", "null", "%s", "[]",
    )
    shapes = _ShapeTexts()
    for start in range(0, len(tensors), _BATCH):
        batch = tensors[start : start + _BATCH]
        texts = _batch_texts(batch, template, shapes)
        for t, text in zip(batch, texts):
            yield _TensorEntry(t, text)


def _batch_texts(batch: tuple[TensorResult, ...], template: str, shapes: _ShapeTexts) -> list[str | None]:
    """Each tensor's entry text at ``_ENTRY_LEVEL``, None for one that is not a common entry (or the
    whole batch when some field is not of its plain type)."""
    none: list[str | None] = [None] * len(batch)
    strs = list(zip(*map(_STR_COLUMNS, batch)))
    ints = list(zip(*map(_INT_COLUMNS, batch)))
    bools = list(zip(*map(_BOOL_COLUMNS, batch)))
    floats = list(zip(*map(_FLOAT_COLUMNS, batch)))
    shape_column = list(map(_SHAPE, batch))
    if not (
        all(_ONLY_STR.issuperset(map(type, c)) for c in strs)
        and all(_ONLY_INT.issuperset(map(type, c)) for c in ints)
        and all(_ONLY_BOOL.issuperset(map(type, c)) for c in bools)
        and all(_FLOAT_OR_NONE.issuperset(map(type, c)) for c in floats)
        and _ONLY_TUPLE.issuperset(map(type, shape_column))
    ):
        return none
    names, files, roles, dtypes, orders = (list(map(encode_basestring_ascii, c)) for c in strs)
    nans, posinfs, neginfs, zeros, exploded, overflow = (list(map(int.__repr__, c)) for c in ints)
    holds, exact = (list(map(_BOOL_TEXT.__getitem__, c)) for c in bools)
    # NaN and ±Inf are spelled by jsontext's _float: such an entry (None here) goes through its dict.
    max_abs, bulk = (
        ["null" if v is None else float.__repr__(v) if v - v == 0 else None for v in c] for c in floats
    )
    shape_texts = list(map(shapes.__getitem__, shape_column))
    plain = list(map(_PLAIN.__eq__, map(_PLAIN_KEY, batch)))
    out: list[str | None] = []
    for fields in zip(
        names, files, roles, dtypes, shape_texts, nans, posinfs, neginfs, orders,
        holds, max_abs, exact, bulk, zeros, exploded, overflow,
    ):
        out.append(template % fields if None not in fields else None)
    return [text if ok is True else None for text, ok in zip(out, plain)]


def report_to_json(report: ScanReport, fail_on: frozenset[str] | None = None, *, lazy: bool = False) -> dict[str, Any]:
    """The scan report as a JSON-ready dict. ``lazy``: ``tensors`` is an iterator that builds each
    entry when it is encoded (the CLI's ``echo_json``), so a million entries never exist at once."""
    decided = report.judgement if fail_on is None else verdicts.judge(report, fail_on)
    assert decided is not None
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "target": report.target,
        "files": list(report.files),
        "tensors": _lazy_entries(report.tensors) if lazy else [tensor_to_json(t) for t in report.tensors],
        "layers": [
            {
                "layer": s.layer,
                "index": s.index,
                "tensors": s.tensors,
                "bad_tensors": s.bad_tensors,
                "nan": s.nan,
                "posinf": s.posinf,
                "neginf": s.neginf,
                "worst": s.worst,
                "bad_components": list(s.bad_components),
            }
            for s in report.layers
        ],
        "bad_layer_ranges": [r.label for r in bad_ranges(report.layers)],
        "unviewed": [
            {"file": u.file, "storage": u.storage, "nan": u.nan, "posinf": u.posinf, "neginf": u.neginf}
            for u in report.unviewed
        ],
        "errors": [{"path": e.path, "message": e.message, "hint": e.hint, "kind": e.kind} for e in report.errors],
        "notes": list(report.notes),
        "summary": {
            "verdict": decided.words,
            "health": decided.health,
            "ok": decided.exit_code == 0,
            "complete": report.complete,
            "exit_code": decided.exit_code,
            "fail_on": sorted(decided.fail_on),
            "failing": list(decided.failing),
            "reported": list(decided.reported),
            "tensors": len(report.tensors),
            "bad_tensors": len(report.bad_tensors),
            "unhealthy_tensors": len(report.unhealthy_tensors),
            "bad_layers": len(report.bad_layers),
            "nan": report.nan,
            "posinf": report.posinf,
            "neginf": report.neginf,
            "max_abs": verdicts.max_abs(report, "weight"),
            "exploded_tensors": len(verdicts.with_finding(report, verdicts.EXPLODED)),
            "outlier_tensors": len(verdicts.with_finding(report, verdicts.OUTLIER)),
            "zeroed_tensors": len(verdicts.with_finding(report, verdicts.ZEROED)),
            "overflow": sum(t.overflow for t in report.tensors),
            "bytes": report.bytes_scanned,
            "seconds": round(report.seconds, 6),
            "gb_per_s": round(report.gbps, 3),
            "device": report.device,
        },
    }
    out.update(report.extra)
    return out


def error_to_json(target: str, message: str, hint: str, code: int, fail_on: frozenset[str],
                  word: str | None = None) -> dict[str, Any]:
    """The report of a scan that could not start (no such path, a refused folder): no tensors, one error,
    the verdict ``word`` (the error's ``verdict_word``: UNREADABLE for the checkpoint itself, ERROR for
    anything else, such as no CUDA device; by default UNREADABLE for exit 3, else ERROR) and the gate, so
    that ``--json > r.json`` never leaves an empty file."""
    word = word or ("UNREADABLE" if code == EXIT_UNREADABLE else "ERROR")
    return {
        "schema_version": SCHEMA_VERSION,
        "target": target,
        "files": [],
        "tensors": [],
        "errors": [{"path": target, "message": message.removeprefix(f"{target}: "), "hint": hint,
                    "kind": "unreadable" if word == "UNREADABLE" else "error"}],
        "summary": {
            "verdict": word,
            "health": "unreadable",
            "ok": False,
            "complete": False,
            "exit_code": code,
            "fail_on": sorted(fail_on),
            "tensors": 0,
        },
        "gate": {"fail_on": sorted(fail_on), "exit_code": code, "passed": False},
    }


def with_report_error(data: dict[str, Any], error: NandoctorError | None) -> dict[str, Any]:
    """``data`` with ``report_errors`` when a report file (``--html``) could not be written: the command then
    exits 3, while ``summary`` is still the scan's own verdict (docs/json.md)."""
    if error is not None:
        data["report_errors"] = [{"message": error.message, "hint": error.hint}]
    return data


def log_to_json(log: TrainLog | None) -> dict[str, Any] | None:
    if log is None:
        return None
    return {
        "source": log.source,
        "last_step": log.last_step,
        "first_nonfinite": (
            None
            if log.first_nonfinite_step is None
            else {"step": log.first_nonfinite_step, "keys": list(log.first_nonfinite_keys)}
        ),
        "first_zero_loss_step": log.first_zero_loss_step,
        "error": log.error,
    }


def checkpoint_to_json(c: RunCheckpoint) -> dict[str, Any]:
    return {
        "name": c.name,  # "final" for the run's final model (its top-level weights, a Lightning final file)
        "step": c.step if c.step_known else None,
        "final": c.final,
        "last": c.last,  # a Lightning run's last.ckpt (what ckpt_path="last" resumes from)
        "same_as": None if c.same_as is None else {"name": c.same_as, "how": c.same_how},
        "path": c.path,
        "status": c.status,
        "health": c.health,
        "max_abs": c.max_abs,
        "scale": c.scale,
        "growth": c.growth,
        "baseline_growth": c.baseline_growth,
        "why": c.why or None,
        "incomplete": list(c.incomplete),
        "train_log": log_to_json(c.log),
        "report": None if c.report is None else report_to_json(c.report),
    }


def run_to_json(run: RunReport, fail_on: frozenset[str] | None = None) -> dict[str, Any]:
    fail_on = verdicts.DEFAULT_FAIL_ON if fail_on is None else fail_on
    newest, last_clean, first_bad = run.newest, run.last_clean, run.first_bad
    decider = run.decider(fail_on)
    code = run.exit_code(fail_on)
    return {
        "schema_version": SCHEMA_VERSION,
        "run": {
            "target": run.target,
            "checkpoints": [checkpoint_to_json(c) for c in run.checkpoints],
            "newest": newest.name if newest else None,
            "last_healthy": last_clean.name if last_clean else None,
            "last_clean": last_clean.name if last_clean else None,  # = last_healthy (schema 1 name)
            "first_bad": first_bad.name if first_bad else None,
            "incomplete": [c.name for c in run.checkpoints if c.status == INCOMPLETE],
            "train_log": log_to_json(run.log),
            "notes": list(run.notes),
            "problems": list(run.problems),
        },
        "summary": {
            "decided_by": decider.name if decider else None,
            "verdict": run.verdict_under(fail_on),
            "ok": code == 0,
            "exit_code": code,
            "fail_on": sorted(fail_on),
            "checkpoints": len(run.checkpoints),
            "seconds": round(run.seconds, 6),
        },
    }
