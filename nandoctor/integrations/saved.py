"""Verify on save at scale: after ``dcp.save`` (or a DeepSpeed save), every rank checks the files it wrote,
and the ranks agree on one verdict with one collective.

    import torch.distributed.checkpoint as dcp
    from nandoctor.integrations.saved import verify_saved

    dcp.save(state_dict, checkpoint_id=path)
    result = verify_saved(path)          # on every rank; one all_reduce (target_dtype="fp16": overflow too)
    if not result.ok:                    # the same answer on every rank
        raise SystemExit(result.exit_code)

No process reads everything: rank r scans the files named for it
(``engine/owned.py``: ``__r_*.distcp``, ``*zero_pp_rank_r_*``; files named
for no rank are rank 0's), then one ``all_reduce`` of a vector of exit codes
(one slot per rank) gives every rank every rank's code. The agreed exit code
is the highest (3 unreadable > 1 findings > 0 clean). A rank whose scan raised
still joins the collective (with 3), so no rank hangs on it. torch is imported
inside ``verify_saved`` only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nandoctor import verdict as verdicts
from nandoctor.engine.owned import scan_owned, writer_rank
from nandoctor.errors import NandoctorError
from nandoctor.model import ScanReport


@dataclass(frozen=True)
class SavedVerdict:
    """The ranks' one verdict on a checkpoint they saved, and this rank's own report."""

    exit_code: int  # agreed: the highest of every rank's (0 clean, 1 findings, 3 unreadable)
    rank_codes: tuple[int, ...]  # each rank's own exit code, by rank
    report: ScanReport | None  # this rank's files; None when its scan raised (see error)
    error: str = ""
    # agreed as exit_code, with the config files' problems (BAD CONFIG) left out: whether the weights are a resume
    # point (a training callback keeps such a checkpoint and warns; the scan of the folder still fails)
    weights_exit_code: int | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def weights_ok(self) -> bool:
        return (self.exit_code if self.weights_exit_code is None else self.weights_exit_code) == 0

    @property
    def failed_ranks(self) -> tuple[int, ...]:
        return tuple(rank for rank, code in enumerate(self.rank_codes) if code)


def verify_saved(
    path: str | os.PathLike[str], *, group: Any = None, fail_on: str | list[str] | None = None, device: str = "cpu",
    target_dtype: str | None = None,
) -> SavedVerdict:
    """Call on every rank of ``group`` (default: the world) after saving ``path``; every rank gets the same
    ``exit_code``. ``fail_on`` as ``nandoctor scan --fail-on``; ``device`` where this rank counts;
    ``target_dtype`` (``fp16``, ``bf16``, ``fp8_e4m3``, ``fp8_e5m2``, ``none``) as ``nandoctor scan --target-dtype``:
    each rank also counts the weights of its files that would overflow that cast (``overflow`` findings,
    which fail unless ``fail_on`` leaves ``overflow`` out); none given, the dtype config.json makes
    ``from_pretrained`` load them in, as a scan does (checkpoint/loaddtype.py). A bad ``fail_on`` or ``target_dtype`` is this
    rank's error (exit code 3, ``error`` says which), never a hang of the others."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise NandoctorError("verify_saved needs an initialised torch.distributed process group",
                             "call it on every rank after dcp.save, or check in one process with nandoctor.scan")
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    report, error = None, ""
    try:
        from nandoctor.api import scan_target

        failing = verdicts.parse_fail_on(fail_on)
        verdicts.require_target_for_overflow(failing, target_dtype)  # a check that passes anything is a bug
        target = scan_target(path, target_dtype)  # none given: the dtype config.json loads the weights in
        report = verdicts.judged(scan_owned(path, rank, world, device=device, target_dtype=target), failing)
        code = report.exit_code
        weights_code = verdicts.weights_report(report, failing).exit_code
    except (NandoctorError, OSError, ValueError) as exc:  # this rank still joins the collective below
        code, weights_code, error = 3, 3, f"rank {rank}: {getattr(exc, 'message', None) or exc}"
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else "cpu"
    codes = torch.zeros(2 * world, dtype=torch.int64, device=on)  # (each rank's code, then its weights' code)
    codes[rank], codes[world + rank] = code, weights_code
    dist.all_reduce(codes, group=group)  # the one collective: every rank learns every rank's codes
    every = [int(c) for c in codes.tolist()]
    rank_codes = tuple(every[:world])
    return SavedVerdict(max(rank_codes), rank_codes, report, error, weights_exit_code=max(every[world:]))


def wrote_own_files(folder: str | os.PathLike[str], rank: int, depth: int = 2) -> bool:
    """Whether ``folder`` (or a subfolder, ``depth`` levels down: a DeepSpeed ``global_stepN/``, an FSDP
    ``pytorch_model_fsdp_0/``) holds a file a per-rank writer named for ``rank``. Each rank wrote its own
    files before it returns from the save, so every rank of a per-rank save answers True and every rank
    of a process-zero save answers False, without asking the others."""
    base = Path(folder)
    try:
        for here, dirs, names in os.walk(base):
            if len(Path(here).relative_to(base).parts) >= depth:
                dirs[:] = []
            if any(writer_rank(Path(name)) == rank for name in names):
                return True
    except OSError:
        return False
    return False


__all__ = ["SavedVerdict", "verify_saved", "wrote_own_files"]
