"""ScanReport → a JSON-ready dict (schema documented in docs/json.md)."""

from __future__ import annotations

from typing import Any

from nandoctor.layers import bad_ranges
from nandoctor.model import ScanReport, TensorResult

SCHEMA_VERSION = 1


def tensor_to_json(t: TensorResult) -> dict[str, Any]:
    return {
        "name": t.name,
        "file": t.ref.file,
        "dtype": t.ref.dtype,
        "shape": list(t.ref.shape),
        "nan": t.nan,
        "posinf": t.posinf,
        "neginf": t.neginf,
        "first_bad": (
            None if t.first_bad is None else {"index": t.first_bad, "coords": list(t.first_bad_coords or ())}
        ),
        "can_hold_nonfinite": t.can_hold_nonfinite,
        # --target-dtype: finite values that overflow the cast, and the largest finite magnitude (null without it)
        "overflow": t.overflow,
        "max_abs": t.max_abs,
    }


def report_to_json(report: ScanReport) -> dict[str, Any]:
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "target": report.target,
        "files": list(report.files),
        "tensors": [tensor_to_json(t) for t in report.tensors],
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
        "errors": [{"path": e.path, "message": e.message, "hint": e.hint} for e in report.errors],
        "notes": list(report.notes),
        "summary": {
            "verdict": report.verdict,
            "ok": report.ok,
            "complete": report.complete,
            "exit_code": report.exit_code,
            "tensors": len(report.tensors),
            "bad_tensors": len(report.bad_tensors),
            "bad_layers": len(report.bad_layers),
            "nan": report.nan,
            "posinf": report.posinf,
            "neginf": report.neginf,
            "overflow": sum(t.overflow for t in report.tensors),
            "bytes": report.bytes_scanned,
            "seconds": round(report.seconds, 6),
            "gb_per_s": round(report.gbps, 3),
            "device": report.device,
        },
    }
    out.update(report.extra)
    return out
