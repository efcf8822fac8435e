"""The local base model a PEFT adapter alone is applied to, scanned with it.

``AutoModelForCausalLM.from_pretrained(adapter_folder)`` (and PEFT's AutoPeftModel) loads the base model
adapter_config.json names and puts the adapter on it: NaN in the base makes the adapted model's logits NaN as surely
as NaN in the adapter (an adversarial round's adapter on a local NaN base scanned CLEAN, with a note). A base that is
a local folder is scanned with the adapter (its scan, as ``nandoctor scan`` of it gives it), and one that fails makes
the adapter fail, naming the base. A repo id is never looked up (no download, and no cache scan: a hub model's scan
is the user's to ask for), nor a base itself an adapter: the note says how to scan them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from nandoctor import verdict as verdicts
from nandoctor.checkpoint import loadability
from nandoctor.errors import NandoctorError
from nandoctor.model import BASE_KIND, ScanProblem, ScanReport
from nandoctor.wording import path_word


def with_base(report: ScanReport, adapter: Path, scan_one: Callable[[Path], ScanReport]) -> ScanReport:
    """``report`` of the checkpoint ``adapter`` with what its base model is: named (``adapter_base``) for a PEFT
    adapter alone, and where that base is a local folder, scanned with ``scan_one`` (its verdict words in
    ``adapter_base_scan``, a BASE MODEL FAILS problem where it fails); unchanged for any other checkpoint."""
    named = loadability.adapter_base(adapter)
    if named is None:
        return report
    report = dataclasses.replace(report, extra={**report.extra, verdicts.ADAPTER_BASE: named})
    local = loadability.local_base(adapter)
    if local is None:
        return report
    try:
        base = scan_one(local)
    except (NandoctorError, OSError) as exc:  # (a folder the scan refuses: said as of a base it does not read)
        return dataclasses.replace(report, notes=(*report.notes, f"{adapter}: the adapter is applied to the base model "
                                                  f"{named!r}, which could not be scanned with it ({exc}): scan it too "
                                                  f"(nandoctor scan {path_word(local)})"))
    decided = verdicts.judge(base)
    report = dataclasses.replace(report, extra={**report.extra, verdicts.ADAPTER_BASE_SCAN: decided.words})
    if decided.exit_code == 0:
        return report
    problem = ScanProblem(
        str(local), f"the base model adapter_config.json names ({named!r}), which from_pretrained of this folder loads "
        f"and puts the adapter on, scans FAIL {verdicts.words_with_case(decided)}: "
        f"{'; '.join(verdicts.facts(base)[:2])}: the adapted model computes with its weights",
        f"scan it (nandoctor scan {path_word(local)}) for what fails there and repair or replace it; the adapter's "
        "own tensors are judged here", kind=BASE_KIND)
    return verdicts.judged(dataclasses.replace(report, errors=(*report.errors, problem)))


__all__ = ["with_base"]
