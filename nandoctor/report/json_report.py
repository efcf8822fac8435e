"""Reports as JSON-ready dicts: a scan (``ScanReport``) and a run timeline (``RunReport``).

The schemas are documented in docs/json.md. Every decision (verdict, exit
code, findings) is read from what verdict.py stored; nothing is recomputed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import repeat
from json.encoder import encode_basestring_ascii  # (C)
from typing import Any, cast

from nandoctor import verdict as verdicts
from nandoctor.checkpoint.runs import INCOMPLETE, RunCheckpoint, RunReport, TrainLog, status_words
from nandoctor.errors import EXIT_UNREADABLE, NandoctorError
from nandoctor.layers import bad_ranges
from nandoctor.model import ScanReport, TensorResult, TensorResults
from nandoctor.report.jsontext import INDENT, EncodedItems, dict_template, encode_at

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
_BATCH = 1024
_ONLY_INT, _ONLY_BOOL, _ONLY_TUPLE = frozenset((int,)), frozenset((bool,)), frozenset((tuple,))
_BOOL_TEXT = {True: "true", False: "false"}


def _entries(tensors: TensorResults) -> EncodedItems:
    """The tensors' entries for ``jsontext`` (the CLI's lazy report): a batch of 1024 at a time, each common
    entry (no bad values, findings, blocks, experts or outliers; plain types) written from the columns
    (C calls across the batch, not a dict per tensor: what a --json scan of a million small tensors spends
    its time on); any other through its dict."""

    def batches(level: int) -> Iterator[list[str]]:
        template = dict_template(_TENSOR_KEYS, level)
        shapes = _ShapeTexts(level)
        for start in range(0, len(tensors), _BATCH):
            stop = min(start + _BATCH, len(tensors))
            texts = _batch_texts(tensors, start, stop, template, shapes)
            yield [encode_at(tensor_to_json(tensors[start + k]), level) if text is None else text
                   for k, text in enumerate(texts)]

    return EncodedItems(batches)


class _ShapeTexts(dict):
    """A shape's text in an entry at ``level``, once per distinct shape (of plain ints only: see _batch_texts)."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def __missing__(self, shape: tuple) -> str:
        if shape:
            inner = "\n" + " " * (INDENT * (self.level + 2))
            text = "[" + inner + ("," + inner).join(map(int.__repr__, shape)) + "\n" + " " * (INDENT * (self.level + 1)) + "]"
        else:
            text = "[]"
        self[shape] = text
        return text


def _batch_texts(
    tensors: TensorResults, start: int, stop: int, template: str, shapes: _ShapeTexts,
) -> list[str | None]:
    """The entry text of rows [start, stop), None for a row that is not a common entry (every row, when some
    field of the batch is not of its plain type). A field with one value across the batch is written into
    the batch's template once; the others are filled in row by row."""
    k = stop - start
    refs = tensors.refs
    strs = [c[start:stop] for c in (refs.names, refs.files, refs.roles, refs.dtypes, refs.orders)]
    ints = [c[start:stop] for c in (tensors.nan, tensors.posinf, tensors.neginf, tensors.zeros, tensors.exploded,
                                    tensors.overflow)]
    bools = [c[start:stop] for c in (tensors.can_hold_nonfinite, tensors.max_abs_exact)]
    floats = [c[start:stop] for c in (tensors.max_abs, tensors.bulk_scale)]
    shape_column = refs.shapes[start:stop]
    # Exact types where json writes a subclass otherwise (a bool is not 1, a float 0 is not 0.0; str and float
    # subclasses it writes as str and float): each distinct shape object once ((1,) == (1.0,) == (True,), so
    # the shapes' texts are cached for int-only ones).
    if not (
        all(_ONLY_INT.issuperset(map(type, c)) for c in ints)
        and all(_ONLY_BOOL.issuperset(map(type, c)) for c in bools)
        and _ONLY_TUPLE.issuperset(map(type, shape_column))
        and all(_ONLY_INT.issuperset(map(type, shape)) for shape in dict(zip(map(id, shape_column), shape_column)).values())
    ):
        return [None] * k
    try:
        max_abs, bulk = map(_float_texts, floats)  # (texts: 0.0 == -0.0, but their texts differ)
    except TypeError:  # not a float (nor None): its dict says how json writes it
        return [None] * k
    # Rows that are not common entries: written through their dict (NaN/±Inf floats are spelled by jsontext).
    other = {i for i, v in enumerate(tensors.first_bad[start:stop]) if v is not None}
    plain_fields: tuple[tuple[list[Any], Any], ...] = (
        (tensors.outliers, None), (tensors.experts, ()), (tensors.findings, ()), (refs.blocks, None),
    )
    for column, plain in plain_fields:
        part = column[start:stop]
        if part.count(plain) != k:
            other.update(i for i, v in enumerate(part) if v != plain)
    for float_texts in (max_abs, bulk):
        if "nan" in float_texts or "inf" in float_texts or "-inf" in float_texts:  # spelled by jsontext, via the dict
            other.update(i for i, text in enumerate(float_texts) if text in ("nan", "inf", "-inf"))
    names, files, roles, dtypes, orders = strs
    nans, posinfs, neginfs, zeros, exploded, overflow = ints
    holds, exact = bools
    # (values, how one is written (None: they are texts), whether equal values are written alike) in
    # _TENSOR_KEYS order; no values: the text every common entry has. ((1,) == (1.0,): shapes by their text.)
    fields: list[tuple[list[Any], Callable[[Any], str] | str | None, bool]] = [
        (names, encode_basestring_ascii, True), (files, encode_basestring_ascii, True),
        (roles, encode_basestring_ascii, True), (dtypes, encode_basestring_ascii, True),
        (shape_column, shapes.__getitem__, False), (nans, int.__repr__, True), (posinfs, int.__repr__, True),
        (neginfs, int.__repr__, True), ([], "null", True), (orders, encode_basestring_ascii, True),
        ([], '"elements"', True), ([], "null", True), ([], "null", True), (holds, _BOOL_TEXT.__getitem__, True),
        (max_abs, None, True), (exact, _BOOL_TEXT.__getitem__, True), (bulk, None, True),
        (zeros, int.__repr__, True), (exploded, int.__repr__, True), ([], "null", True), (overflow, int.__repr__, True),
        ([], "[]", True),
    ]
    rows = [i for i in range(k) if i not in other] if other else None
    try:
        written = _rows_text(template.split("%s"), fields, rows)
    except TypeError:  # a name, file, role, dtype or order that is not a str: its dict says how json writes it
        return [None] * k
    if rows is None:
        return written  # type: ignore[return-value]
    out: list[str | None] = [None] * k
    for i, text in zip(rows, written):
        out[i] = text
    return out


def _rows_text(
    parts: list[str], fields: list[tuple[list[Any], Callable[[Any], str] | str | None, bool]], rows: list[int] | None,
) -> list[str]:
    """Each row's text (of ``rows`` only, when given): the template's ``parts`` around its fields, a field the
    rows share written into the text between the others once, the others joined in row by row."""
    between, varying = [parts[0]], []  # the texts between varying fields, and those fields' texts
    for (values, write, by_value), after in zip(fields, parts[1:]):
        if isinstance(write, str):
            between[-1] += write + after
            continue
        column = values if rows is None else [values[i] for i in rows]
        if write is None:
            texts = column
        elif by_value and column and column.count(column[0]) == len(column):
            texts = [write(column[0])]
        else:
            texts = list(map(write, column))
        if len(texts) == 1 or (texts and texts.count(texts[0]) == len(texts)):
            between[-1] += texts[0] + after
        else:
            varying.append(texts)
            between.append(after)
    if not varying:
        return between * (len(fields[0][0]) if rows is None else len(rows))
    pieces: list[Any] = [repeat(between[0])]
    for texts, text in zip(varying, between[1:]):
        pieces += [texts, repeat(text)]
    return list(map("".join, zip(*pieces)))  # (one C join per row: no format string to scan)


def _float_texts(values: list[float | None]) -> list[str]:
    """float.__repr__ of each (TypeError for what is not a float), "null" for None."""
    if None not in values:  # (one C pass; then one C call per value)
        return list(map(float.__repr__, cast("list[float]", values)))
    if values.count(None) == len(values):
        return ["null"] * len(values)
    return ["null" if value is None else float.__repr__(value) for value in values]


def report_to_json(report: ScanReport, fail_on: frozenset[str] | None = None, *, lazy: bool = False,
                   steps: bool = True) -> dict[str, Any]:
    """The scan report as a JSON-ready dict. ``lazy``: ``tensors`` is an iterator that builds each
    entry when it is encoded (the CLI's ``echo_json``), so a million entries never exist at once; ``steps``: with
    ``next`` (a run's row leaves it to the run's own)."""
    decided = report.judgement if fail_on is None else verdicts.judge(report, fail_on)
    assert decided is not None
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "target": report.target,
        "files": list(report.files),
        "tensors": _entries(report.tensors) if lazy else [tensor_to_json(t) for t in report.tensors],
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
            {"file": u.file, "storage": u.storage, "nan": u.nan, "posinf": u.posinf, "neginf": u.neginf, "kind": u.kind}
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
            # (a PEFT adapter alone's base model, scanned with it: adapter_base_scan; its findings under fail_on)
            "base_failing": list(decided.base_failing),
            "base_reported": list(decided.base_reported),
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
            "overflow": sum(report.tensors.overflow),
            "trainer_nonfinite": [t.name for t in verdicts.trainer_nonfinite(report)],
            "bytes": report.bytes_scanned,
            "seconds": round(report.seconds, 6),
            "gb_per_s": round(report.gbps, 3),
            "device": report.device,
        },
    }
    if steps:
        out["next"] = _next_steps(report, decided)
    out.update(report.extra)
    return out


def _next_steps(report: ScanReport, decided: Any) -> list[str]:
    """What the console's ``next:`` lines say (a command each where they give one): a CI log of ``--json`` names them
    too (a real-training trial's failing run carried none)."""
    from nandoctor.report.summary import next_steps

    return [step.strip() for step in next_steps(report, decided)]


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
        "gate": gate_json(fail_on, code),
    }


def _run_next_steps(run: RunReport, fail_on: frozenset[str]) -> list[str]:
    """The run's ``next:`` lines, as :func:`_next_steps` gives a checkpoint's."""
    from nandoctor.report.run_report import next_steps

    return [step.strip() for step in next_steps(run, fail_on)]


def gate_json(fail_on: frozenset[str], code: int) -> dict[str, Any]:
    """The ``gate`` object every JSON report with an exit code carries (scan, run, merge, the callbacks'
    ``nandoctor.json``): what fails it, the exit code the command returns, whether it passed."""
    return {"fail_on": sorted(fail_on), "exit_code": code, "passed": code == 0}


def with_gate(data: dict[str, Any], fail_on: frozenset[str], code: int,
              not_written: NandoctorError | None = None) -> dict[str, Any]:
    """``data`` (a scan's or a run's JSON) as a command prints it: with its ``gate`` (exit 3 when a report
    file could not be written, ``report_errors`` saying why)."""
    data["gate"] = gate_json(fail_on, code if not_written is None else not_written.exit_code)
    return with_report_error(data, not_written)


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
            else {"step": log.first_nonfinite_step, "keys": list(log.first_nonfinite_keys),
                  "skipped_steps": log.skipped_steps}
        ),
        "first_zero_loss_step": log.first_zero_loss_step,
        "loss_jump": None if log.loss_jump is None else {
            "step": log.loss_jump_step, "loss": log.loss_jump[0], "early_loss": log.loss_jump[1],
            "weights_from": log.broken_weights_from, "confirmed": log.loss_jump_confirmed,
            "sustained": log.loss_jump_sustained,
        },
        "error": log.error,
    }


def checkpoint_to_json(c: RunCheckpoint) -> dict[str, Any]:
    return {
        "name": c.name,  # "final" for the run's final model (its top-level weights, a Lightning final file)
        "step": c.step if c.step_known else None,
        "final": c.final,
        "weights_of": c.weights_of,  # (a final model holding an earlier checkpoint's weights: load_best_model_at_end)
        "last": c.last,  # a Lightning run's last.ckpt (what ckpt_path="last" resumes from)
        "pointed": c.pointed or None,  # the run's resume pointer (DeepSpeed's latest) naming this save, not the newest
        "same_as": None if c.same_as is None else {"name": c.same_as, "how": c.same_how},
        "path": c.path,
        "status": c.status,
        "status_words": status_words(c),  # (as the timelines say it: "not loadable" for a folder read whole)
        "health": c.health,
        "max_abs": c.max_abs,
        "scale": c.scale,
        "growth": c.growth,
        "baseline_growth": c.baseline_growth,
        "why": c.why or None,
        "zeroed": list(c.zeroed),  # weights all zero that an earlier checkpoint held not all zero: no resume point
        "incomplete": list(c.incomplete),
        "train_log": log_to_json(c.log),
        "report": None if c.report is None else _row_report(c.report),
    }


def _row_report(report: ScanReport) -> dict[str, Any]:
    """A run row's report: a checkpoint's, less its next steps (the run's own) and its adapter's base model scan,
    which the run says once (``run.adapter_bases``); ``summary`` still judges the row with it."""
    out = report_to_json(report, steps=False)
    out.pop(verdicts.ADAPTER_BASE_SCAN, None)
    return out


def _adapter_bases(run: RunReport) -> list[dict[str, Any]]:
    """Each base model the run's adapter checkpoints are applied to, as a scan's ``adapter_base_scan`` (without the
    name one adapter_config.json gives it), with the checkpoints applied to it."""
    bases: dict[str, dict[str, Any]] = {}
    for c in run.checkpoints:
        base = verdicts.adapter_base_scan(c.report) if c.report is not None else None
        if base is not None:
            kept = bases.setdefault(str(base.get("path")), {**{k: v for k, v in base.items() if k != "named"},
                                                             "checkpoints": []})
            kept["checkpoints"].append(c.name)
    return list(bases.values())


def run_to_json(run: RunReport, fail_on: frozenset[str] | None = None) -> dict[str, Any]:
    fail_on = verdicts.DEFAULT_FAIL_ON if fail_on is None else fail_on
    newest, last_clean, first_bad = run.newest, run.last_healthy_under(fail_on), run.first_bad
    decider = run.decider(fail_on)
    code = run.exit_code(fail_on)
    dtypes = {c.report.extra["target_dtype"] for c in run.checkpoints
              if c.report is not None and "target_dtype" in c.report.extra}
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run": {
            "target": run.target,
            "checkpoints": [checkpoint_to_json(c) for c in run.checkpoints],
            "newest": newest.name if newest else None,
            "last_healthy": last_clean.name if last_clean else None,
            "last_clean": last_clean.name if last_clean else None,  # = last_healthy (schema 1 name)
            "first_bad": first_bad.name if first_bad else None,
            "incomplete": [c.name for c in run.checkpoints if c.status == INCOMPLETE],
            # (a passing run's poisoned or diverged checkpoints before the deciding one: the text reports' ⚠)
            "bad_behind": [c.name for c in run.bad_behind(fail_on)],
            "train_log": log_to_json(run.log),
            # (every checkpoint passes while the log's last loss is still 4x an untrained model's: the ⚠ PASS's why)
            "never_trained": run.never_trained,
            # (three or more saves whose weights all agree: the run did not train; [first, newest])
            "unchanged": list(run.unchanged) if run.unchanged is not None else None,
            "notes": list(run.notes),
            "problems": list(run.problems),
            # (a LoRA run: the base model its adapters are applied to, scanned once, each base once)
            "adapter_bases": _adapter_bases(run),
        },
        "summary": {
            "decided_by": decider.name if decider else None,
            "verdict": run.verdict_under(fail_on),
            # (the deciding row's health, as its row says it: the case the headlines add, NON-FINITE (POISONED))
            "health": decider.health if decider is not None else None,
            "ok": code == 0,
            "exit_code": code,
            "fail_on": sorted(fail_on),
            "checkpoints": len(run.checkpoints),
            "seconds": round(run.seconds, 6),
        },
        "next": _run_next_steps(run, fail_on) if code else [],
    }
    if dtypes:  # as a scan's top level: the --target-dtype every checkpoint was judged under
        out["target_dtype"] = min(dtypes)
    return out
