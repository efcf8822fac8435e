"""DiffReport → the JSON ``nandoctor diff --json`` prints (schema in docs/diff.md).

It renders what result.py decided (status words, exit code); nothing is
recomputed here. Floats that are not finite (a NaN on one side) are written
as strings (``"nan"``, ``"inf"``, ``"-inf"``): JSON has no such numbers.
"""

from __future__ import annotations

import math
from typing import Any

from nandoctor.diffs.result import Change, DiffReport, TensorDiff
from nandoctor.model import LayerRange

DIFF_SCHEMA = 1


def number(x: float | None) -> float | str | None:
    if x is None or math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _change(c: Change | None) -> dict[str, Any] | None:
    if c is None:
        return None
    return {"index": c.index, "coords": list(c.coords), "a": number(c.a), "b": number(c.b), "amount": number(c.amount)}


def _coords(coords: tuple[int, ...] | None) -> list[int] | None:
    return None if coords is None else list(coords)


def tensor_json(t: TensorDiff) -> dict[str, Any]:
    return {
        "name": t.name,
        "name_b": t.name_b,
        "status": t.status,
        "dtype_a": t.dtype_a,
        "dtype_b": t.dtype_b,
        "shape_a": None if t.shape_a is None else list(t.shape_a),
        "shape_b": None if t.shape_b is None else list(t.shape_b),
        "order_a": t.order if t.shape_a is not None else None,
        "order_b": t.order_b if t.shape_b is not None else None,
        "file_a": t.file_a,
        "file_b": t.file_b,
        "numel": t.numel,
        "changed": t.changed,
        "blocks": t.blocks,
        "changed_blocks": t.changed_blocks,
        "max_abs_change": _change(t.max_abs),
        "max_rel_change": _change(t.max_rel),
        "max_abs_all": _change(t.max_abs_all),
        "rounding": number(t.rounding),
        "nonfinite_a_only": t.nonfinite_a_only,
        "nonfinite_b_only": t.nonfinite_b_only,
        "first_nonfinite_a_only": t.first_nonfinite_a_only,
        "first_nonfinite_b_only": t.first_nonfinite_b_only,
        "first_nonfinite_a_only_coords": _coords(t.first_nonfinite_a_only_coords),
        "first_nonfinite_b_only_coords": _coords(t.first_nonfinite_b_only_coords),
        "compared_bytes": t.compared_bytes,
        "tied_to": t.tied_to,
        "message": t.message,
    }


def _ranges(ranges: tuple[LayerRange, ...]) -> list[dict[str, Any]]:
    return [{"label": r.label, "stack": r.stack, "first": r.first, "last": r.last, "tensors": r.bad_tensors}
            for r in ranges]


def diff_to_json(report: DiffReport, *, everything: bool = True) -> dict[str, Any]:
    """The whole report; ``everything=False`` leaves identical tensors out of ``tensors`` (counted in ``summary``)."""
    return {
        "nandoctor_diff": DIFF_SCHEMA,
        "a": report.a,
        "b": report.b,
        "summary": {
            "verdict": report.verdict,
            "exit_code": report.exit_code,
            "same": report.same,
            "complete": report.complete,
            "tensors": len(report.tensors),
            "counts": dict(report.counts),
            "bytes_read": report.bytes_read,
            "seconds": round(report.seconds, 3),
        },
        "changed_layer_ranges": _ranges(report.changed_ranges),
        "cast_layer_ranges": _ranges(report.cast_ranges),
        "tensors": [tensor_json(t) for t in report.tensors if everything or t.status != "identical"],
        "problems": [{"path": p.path, "message": p.message, "hint": p.hint} for p in report.problems],
        "notes": list(report.notes),
    }


def diff_error_to_json(a: str, b: str, message: str, hint: str, code: int, word: str = "UNREADABLE",
                       path: str = "") -> dict[str, Any]:
    """The JSON of a diff that could not start (a side missing or refused): the diff schema with no tensors and the
    one problem, its verdict ``word`` the error's (NO CHECKPOINT for a folder whose checkpoints lie below it, as scan
    says; ``path``: the side it is of, where known), so that ``diff --json > d.json`` never leaves an empty file (a
    review's CI step tripped on one); the problem as scan's error object has it."""
    return {
        "nandoctor_diff": DIFF_SCHEMA,
        "a": a,
        "b": b,
        "summary": {"verdict": word, "exit_code": code, "same": False,
                    "complete": False, "tensors": 0, "counts": {}, "bytes_read": 0, "seconds": 0.0},
        "changed_layer_ranges": [],
        "cast_layer_ranges": [],
        "tensors": [],
        "problems": [{"path": path, "message": message.removeprefix(f"{path}: ") if path else message, "hint": hint,
                      "kind": "unreadable" if word == "UNREADABLE" else "error"}],
        "notes": [],
    }
