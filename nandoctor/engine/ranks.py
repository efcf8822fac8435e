"""``nandoctor scan --distributed``: torchrun / srun ranks each scan one part; rank 0 merges and prints.

torch.distributed is only the transport, and only its key-value store is
used: rank r scans part r of N (engine/parts.py, torch-free) and puts it in the
store; rank 0 waits for each part with its own deadline (``--rank-timeout``,
not gloo's 30 minutes), so a rank that fails or hangs is named, merges, and
puts the exit code back; every rank exits with it. A rank that fails sends its
error instead of a part; a rank that never answers is named as hung. Either way
the scan is exit 3, never a clean verdict. No tensor is ever sent: parts are a
few KB of JSON per thousand tensors.

Under srun (no torchrun), the rank, world size and rendezvous come from
SLURM_PROCID / SLURM_NTASKS with MASTER_ADDR / MASTER_PORT set by the job script.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from nandoctor.engine.parts import Options, PartSpec, merge_parts, partial_report, scan_part
from nandoctor.errors import EXIT_UNREADABLE, NandoctorError
from nandoctor.model import ScanProblem, ScanReport

FAULT_ENV = "NANDOCTOR_FAULT_RANK"  # tests only: "R" makes rank R fail, "R:hang" makes it hang
_PREFIX = "nandoctor/"


class DistributedSetupError(NandoctorError):
    """The ranks could not be joined (no launcher environment, rendezvous failed)."""


@dataclass
class RankOutcome:
    rank: int
    world: int
    exit_code: int
    report: ScanReport | None  # rank 0 only


_LAUNCHERS = (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS"))  # torchrun's, srun's


def launcher_rank() -> int | None:
    """This process's rank as its launcher (torchrun, srun) set it; None without one."""
    for rank_key, world_key in _LAUNCHERS:
        if rank_key in os.environ and world_key in os.environ:
            return int(os.environ[rank_key])
    return None


def _environment() -> tuple[int, int]:
    for rank_key, world_key in _LAUNCHERS:
        if rank_key in os.environ and world_key in os.environ:
            os.environ.setdefault("RANK", os.environ[rank_key])
            os.environ.setdefault("WORLD_SIZE", os.environ[world_key])
            return int(os.environ[rank_key]), int(os.environ[world_key])
    raise DistributedSetupError(
        "--distributed needs a launcher: no RANK/WORLD_SIZE (torchrun) or SLURM_PROCID/SLURM_NTASKS (srun)",
        "run: torchrun --nproc_per_node N -m nandoctor scan PATH --distributed",
    )


def distributed_scan(path: str, options: Options, *, device: str, rank_timeout: float,
                     emit: Callable[[ScanReport], int] | None = None) -> RankOutcome:
    """This rank's share of a scan across all ranks; rank 0's outcome holds the merged report. ``emit``: what rank 0
    does with the report before the other ranks are told the exit code (print it: returns the exit code). They
    leave only then: torchrun stops every rank once one exits non-zero, and a rank that left with exit 1 before
    rank 0 had printed took the report with it (a test saw no output at all)."""
    rank, world = _environment()
    try:
        import torch.distributed as dist  # only here: the scan itself never imports torch
    except ImportError:  # (a scan-only install under srun: a fresh user's "internal error")
        raise DistributedSetupError(
            f"rank {rank}: --distributed needs torch (its torch.distributed store carries the ranks' parts), and torch "
            "is not installed here",
            "install torch (pip install torch), or split the scan without it: nandoctor scan PATH --part I/N --json "
            "on each node, then nandoctor merge part-*.json",
        ) from None

    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        import torch

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=rank_timeout))
    except Exception as exc:  # noqa: BLE001  any rendezvous failure is one refusal
        raise DistributedSetupError(f"rank {rank}: cannot join the other ranks ({type(exc).__name__}: {exc})") from None
    try:
        store = dist.PrefixStore(_PREFIX, dist.distributed_c10d._get_default_store())
        store.set(f"part/{rank}", _my_part(path, options, device, rank, world))
        if rank == 0:
            report = _gather(path, store, world, rank_timeout)
            code = EXIT_UNREADABLE  # (what the other ranks leave with if printing fails: never a pass)
            try:
                code = report.exit_code if emit is None else emit(report)
            finally:
                store.set("exit", str(code))
            return RankOutcome(rank, world, code, report)
        return RankOutcome(rank, world, _wait_exit(store, rank_timeout), None)
    finally:
        with contextlib.suppress(Exception):  # leaving: a peer already gone must not change the exit code
            dist.destroy_process_group()


def _my_part(path: str, options: Options, device: str, rank: int, world: int) -> str:
    try:
        _fault(rank)
        return json.dumps(scan_part(path, PartSpec(rank, world), options, device=device))
    except Exception as exc:  # noqa: BLE001  whatever failed, rank 0 names this rank and the reason
        return json.dumps({"rank_error": f"{type(exc).__name__}: {exc}"})


def _fault(rank: int) -> None:
    wanted = os.environ.get(FAULT_ENV, "")
    target, _, kind = wanted.partition(":")
    if target.isdigit() and int(target) == rank:
        if kind == "hang":
            time.sleep(3600)
        raise RuntimeError(f"fault injected by {FAULT_ENV}")


def _gather(path: str, store: Any, world: int, rank_timeout: float) -> ScanReport:
    deadline = time.monotonic() + rank_timeout
    parts: list[tuple[str, dict[str, Any]]] = []
    failed: list[ScanProblem] = []
    for r in range(world):
        key = f"part/{r}"
        try:
            store.wait([key], timedelta(seconds=max(1.0, deadline - time.monotonic())))
        except Exception:  # noqa: BLE001  the store's timeout error type differs between torch versions
            failed.append(ScanProblem(path, f"rank {r} sent no part within --rank-timeout {rank_timeout:g} s (hung or gone)",
                                      "look at that rank's log; raise --rank-timeout for very slow filesystems"))
            continue
        data = json.loads(store.get(key))
        if "rank_error" in data:
            failed.append(ScanProblem(path, f"rank {r} failed: {data['rank_error']}", "look at that rank's log"))
        else:
            parts.append((f"rank {r}", data))
    if failed:  # what the other ranks read is still reported; exit 3 all the same
        return partial_report(path, parts, failed)
    return merge_parts(parts)  # (the device each rank's kernel resolved to: cpu, cuda)


def _wait_exit(store: Any, rank_timeout: float) -> int:
    """Rank 0's exit code; exit 3 when it never comes (rank 0 died or hung)."""
    # rank 0 waits up to rank_timeout for the slowest rank, then merges: allow it that long again
    try:
        store.wait(["exit"], timedelta(seconds=2 * rank_timeout + 60))
        return int(store.get("exit"))
    except Exception:  # noqa: BLE001
        return EXIT_UNREADABLE


__all__ = ["DistributedSetupError", "RankOutcome", "distributed_scan"]
