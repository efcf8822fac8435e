"""``nandoctor-repair.json``: the record of what a repair restored, from where, and what it wrote.

Written into the output folder before it is moved into place, so a repaired
checkpoint always carries its proof: the source, the donors in order, every
restored tensor with its donor and its NaN/Inf counts before the repair, the
sha256 of every weight file written, and the verification scan's verdict.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nandoctor.checkpoint.hashes import PROOF_NAME
from nandoctor.errors import NandoctorError, OutputExistsError, RepairRefusedError
from nandoctor.fileidentity import FileIdentity
from nandoctor.model import ScanReport
from nandoctor.restore.plan import DonorInfo, RepairPlan, Restoration

PROOF_SCHEMA = 1


@dataclass(frozen=True)
class WrittenFile:
    path: str  # relative to the output folder
    bytes: int
    sha256: str | None  # None: an unpatched copy that was not hashed (hash_all=False)
    patched: bool


@dataclass(frozen=True)
class RepairResult:
    plan: RepairPlan
    out: str | None  # None for a dry run
    verification: ScanReport | None
    files: tuple[WrittenFile, ...] = ()
    carried: tuple[str, ...] = ()  # non-weight files copied unchanged
    left_out: tuple[str, ...] = ()
    proof: str | None = None
    seconds: float = 0.0
    dry_run: bool = False
    notes: tuple[str, ...] = field(default=())
    diffs: dict[str, Any] = field(default_factory=dict)  # the output against the source and each donor
    source_files: dict[str, FileIdentity] = field(default_factory=dict)  # the source's files read, as they were

    @property
    def ok(self) -> bool:
        if self.dry_run:
            return not self.plan.refused
        return self.verification is not None and self.verification.ok

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 3


def proof_json(result: RepairResult) -> dict[str, Any]:
    from nandoctor import __version__

    plan = result.plan
    verification = result.verification
    if verification is None:  # only a dry run has none, and it has a plan, not a proof
        raise ValueError("a repair result without a verification scan has no proof; use plan_json")
    return {
        "nandoctor_repair": PROOF_SCHEMA,
        "nandoctor_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": os.path.abspath(plan.target),
        "source_files": {path: found.recordable() for path, found in result.source_files.items()},
        "donors": [_donor(d) for d in plan.donors],
        "scope": plan.scope,
        "allow_cast": plan.allow_cast,
        **({"health_limits": plan.health_limits} if plan.health_limits else {}),
        **plan.excluded_json(),
        "restored": [_restoration(plan, r) for r in plan.restorations],
        "files": [
            {"path": f.path, "bytes": f.bytes, "sha256": f.sha256, "patched": f.patched} for f in result.files
        ],
        "carried": list(result.carried),
        "left_out": list(result.left_out),
        # (the plan's notes, a donor's doubts among them (``donor_doubts``), and the writer's: every one the console said)
        "notes": list(dict.fromkeys((*plan.notes, *result.notes))),
        "donor_doubts": list(plan.doubts),
        **({"diff": result.diffs} if result.diffs else {}),
        "verification": {
            "verdict": verification.verdict,
            "tensors": len(verification.tensors),
            "nonfinite": verification.nonfinite,
            "bytes_scanned": verification.bytes_scanned,
        },
    }


def _donor(info: DonorInfo) -> dict[str, Any]:
    """A donor as the proof and the plan list it; ``own``: the target itself, whose tied partners gave copies."""
    return {"path": os.path.abspath(info.path), "step": info.step, **({"own": True} if info.own else {})}


def _restoration(plan: RepairPlan, r: Restoration) -> dict[str, Any]:
    donor = plan.donors[r.donor]
    return {
        "tensor": r.name,
        "dtype": r.dtype,
        "shape": list(r.shape),
        "reason": r.reason,
        "findings": list(r.findings),  # why "bad": nonfinite, exploded, outlier
        "nan": r.nan,
        "posinf": r.posinf,
        "neginf": r.neginf,
        "donor": os.path.abspath(donor.path),
        "donor_step": donor.step,
        "donor_tensor": r.donor_name,
        "donor_dtype": r.donor_ref.dtype,  # differs from dtype only with allow_cast: rounded as torch rounds
        "via": r.via,
        # a box of the tensor (a DCP chunk): its first element and the whole tensor's shape; null: all of it
        "chunk": None if r.box is None else {"offsets": list(r.box.offsets), "global_shape": list(r.box.global_shape)},
    }


def write_proof(result: RepairResult, path: Path) -> None:
    data = proof_json(result)
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:  # a file name's undecodable bytes: JSON's escapes, which json.load reads back exactly
        encoded = (json.dumps(data, indent=2) + "\n").encode("ascii")
    with open(path, "wb") as fh:
        fh.write(encoded)


def source_unchanged(proof: dict[str, Any], root: Path) -> bool:
    """Whether the files a repair read (its proof's ``source_files``) are still those at ``root`` (size, times
    and inode, as the writer's own change check compares them, less the device: FileIdentity.recordable); True
    for a proof that records none."""
    from nandoctor.fileidentity import fingerprint

    recorded = proof.get("source_files")
    if not isinstance(recorded, dict):
        return True  # (a proof written before source files were recorded)
    for path, was in recorded.items():
        try:
            now = fingerprint(root / path).recordable()
        except (OSError, ValueError):
            return False
        # a proof of an earlier version records bytes and mtime_ns only: those are compared
        if not isinstance(was, dict) or not was or any(now.get(key) != value for key, value in was.items()):
            return False
    return True


def read_proof(folder: str | os.PathLike[str]) -> dict[str, Any]:
    from nandoctor.checkpoint.jsonfiles import read_json

    return read_json(Path(folder) / PROOF_NAME)


def plan_json(plan: RepairPlan, error: NandoctorError | None = None) -> dict[str, Any]:
    """The plan alone (for --dry-run --json and refusals): what would be restored from where, or why not;
    ``error``: what refused the repair (its exit code and an ``errors`` entry, as a scan's)."""
    return {
        "nandoctor_repair_plan": PROOF_SCHEMA,
        "source": os.path.abspath(plan.target),
        "donors": [_donor(d) for d in plan.donors],
        "scope": plan.scope,
        "allow_cast": plan.allow_cast,
        **({"health_limits": plan.health_limits} if plan.health_limits else {}),
        **plan.excluded_json(),
        "complete": not plan.refused and error is None,
        "exit_code": error.exit_code if error is not None else 3 if plan.refused else 0,
        "errors": [] if error is None else [_error(plan.target, error)],
        "notes": list(plan.notes),  # what the console prints as notes (a donor holding another dtype …)
        "donor_doubts": list(plan.doubts),
        "restore": [_restoration(plan, r) for r in plan.restorations],
        "unrestorable": [
            {"tensor": u.name, "nan": u.nan, "posinf": u.posinf, "neginf": u.neginf, "reasons": list(u.reasons)}
            for u in plan.unrestorable
        ],
        "unviewed": [
            {"file": u.file, "storage": u.storage, "nan": u.nan, "posinf": u.posinf, "neginf": u.neginf}
            for u in plan.unviewed
        ],
    }


def refusal_json(
    target: str, donors: Sequence[str], scope: str, allow_cast: bool, error: NandoctorError
) -> dict[str, Any]:
    """The plan JSON of a repair stopped before it had a plan (an unreadable or diverged target, --out taken, a
    failed write): the same keys, nothing to restore, ``complete`` false, and ``errors`` saying why. Paths that
    do not exist (a model name, ``auto``) are given as typed, not made absolute."""
    empty = RepairPlan(target=target, donors=(), scope=scope, restorations=(), allow_cast=allow_cast)
    return {
        **plan_json(empty, error),
        "source": _as_given(target),
        "donors": [{"path": _as_given(d), "step": None} for d in donors],
    }


def _as_given(path: str) -> str:
    return os.path.abspath(path) if os.path.lexists(path) else path


def _error(target: str, error: NandoctorError) -> dict[str, Any]:
    """One ``errors`` entry, shaped as a scan's (docs/json.md): the path, the message without that path in
    front, the hint, and its kind: ``unreadable`` (the checkpoint itself), ``refused`` (nothing was attempted:
    diverged, no good donor, --out taken) or ``error`` (the writing or verification failed)."""
    path = str(getattr(error, "path", None) or target)
    if error.verdict_word == "UNREADABLE":
        kind = "unreadable"
    elif isinstance(error, (RepairRefusedError, OutputExistsError)):
        kind = "refused"
    else:
        kind = "error"
    return {"path": path, "message": error.message.removeprefix(f"{path}: "), "hint": error.hint, "kind": kind}
