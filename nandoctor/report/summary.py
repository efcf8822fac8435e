"""What the HTML and Markdown reports both show, gathered once from a report and its verdict.

The worst tensors as rows, a cell's worst finding, the next steps: read from the
findings and health that verdict.py decided (``ScanReport.judgement``), never
decided again. Both renderers take these values, so they cannot disagree.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nandoctor import verdict as verdicts
from nandoctor.access import as_spelled
from nandoctor.checkpoint.roles import is_variance
from nandoctor.checkpoint.runs import CLEAN as CLEAN_STATUS
from nandoctor.checkpoint.runs import RunCheckpoint, RunReport, checkpoint_name
from nandoctor.layers import LayerKey, layer_of, natural_key, zero_breaks
from nandoctor.model import ScanReport, TensorResult, Verdict
from nandoctor.wording import first_few, scan_command

_MEANT_BELOW = 1e15  # exploded values above this are no model's meant values: no --max-abs is offered for them
MAX_ROWS = 40  # as the console (rich_report.MAX_TENSOR_ROWS): --json lists every tensor
# A cell (a layer, a component, a checkpoint) takes the colour of its worst finding, in this order.
SEVERITY = (verdicts.NONFINITE, verdicts.EXPLODED, verdicts.OUTLIER, verdicts.OVERFLOW, verdicts.ZEROED)
CLEAN = "clean"


def worst_finding(findings: Iterable[str]) -> str:
    """The most severe of ``findings`` (``nonfinite`` first), or ``clean``."""
    present = set(findings)
    return next((f for f in SEVERITY if f in present), CLEAN)


NEGATIVE = "negative"  # a table's word for a variance's values below zero (the finding is verdict.EXPLODED's)


@dataclass(frozen=True)
class TensorRow:
    """One tensor with findings, as a table row: counts, its worst value and where the damage starts."""

    name: str
    file: str
    role: str
    dtype: str
    shape: str
    findings: tuple[str, ...]
    nan: int
    posinf: int
    neginf: int
    outliers: int
    worst: str  # NaN / +Inf / -Inf when it holds one, else the outlier's value, else the largest magnitude
    first_at: tuple[int, ...] | None  # the first NaN/Inf, else the first outlier
    max_abs: float | None = None  # the largest finite magnitude
    fraction: float = 0.0  # NaN/Inf over the values counted

    @property
    def first_at_words(self) -> str:
        """``[3, 17]``; ``scalar`` for a tensor of no dimensions (an optimizer's learning rate); "" for none."""
        if self.first_at is None:
            return ""
        # (GGUF's coordinates are in its ne order, the fastest dimension first: gguf-py's numpy array reverses them)
        return f"[{', '.join(map(str, self.first_at))}]{' (ne)' if self.ne_order else ''}" if self.first_at else "scalar"
    scales: bool = False  # block-quantized: the counts are of its scale fields
    ne_order: bool = False  # shape and coordinates in GGUF's ne order (TensorRef.order "F")
    variance: bool = False  # a variance whose exploded values are its negative ones (kernels/census.py)

    def word(self, finding: str) -> str:
        """How a table says ``finding`` of this tensor: a variance's "exploded" values are its negative ones."""
        return NEGATIVE if self.variance and finding == verdicts.EXPLODED else finding


def _row(t: TensorResult) -> TensorRow:
    out = t.outliers
    first = t.first_bad_coords
    if first is None and out is not None and out.count:
        first = t.ref.coords(out.first)
    return TensorRow(
        name=t.name,
        file=t.ref.file,
        role=t.ref.role,
        dtype=t.ref.dtype,
        shape="×".join(map(str, t.ref.shape)) or "scalar",
        findings=t.findings,
        nan=t.nan,
        posinf=t.posinf,
        neginf=t.neginf,
        outliers=out.count if out is not None else 0,
        worst=_worst_value(t),
        first_at=first,
        max_abs=t.max_abs,
        # (bad: NaN/Inf and exploded values alike; a tensor scaled whole to 1e28 showed a blank, 100 % exploded)
        fraction=(t.nonfinite + t.exploded) / t.ref.counted if t.ref.counted else 0.0,
        scales=t.ref.region.blocks is not None,
        ne_order=t.ref.order == "F",
        variance=verdicts.EXPLODED in t.findings and is_variance(t.name, t.ref.role),
    )


def _worst_value(t: TensorResult) -> str:
    from nandoctor.report.svg import num

    if t.nan or t.posinf or t.neginf:
        return "NaN" if t.nan else ("+Inf" if t.posinf else "-Inf")
    if t.outliers is not None and t.outliers.count:
        return num(t.outliers.worst)
    return "" if t.max_abs is None else num(t.max_abs)


def tensor_rows(
    report: ScanReport, limit: int | None = MAX_ROWS, findings: Collection[str] = SEVERITY
) -> tuple[list[TensorRow], int]:
    """The tensors with one of ``findings``, worst first (by finding, then amount of damage), capped at
    ``limit``; with the number left out."""
    found = list(report.tensors.with_any(findings))

    def severity(t: TensorResult) -> tuple[Any, ...]:
        # by finding, then how much is bad, then how large it got; of equals, in layer order (layers.2 before
        # layers.10: natural order, as the layer table has it)
        rank = SEVERITY.index(worst_finding(t.findings))
        damage = t.exploded + (t.outliers.count if t.outliers is not None else 0) + t.overflow
        largest = (t.max_abs or 0.0) if SEVERITY[rank] in (verdicts.EXPLODED, verdicts.OUTLIER) else 0.0
        return (rank, -t.nonfinite, -damage, -largest, natural_key(t.name))

    found.sort(key=severity)
    shown = found if limit is None else found[:limit]
    return [_row(t) for t in shown], len(found) - len(shown)


@dataclass(frozen=True)
class FindingRange:
    """Consecutive layers of one stack that all have one finding (``model.layers.4–6``, ``exploded``):
    a range per finding, so a layer is never listed under a finding it does not have."""

    finding: str
    label: str
    members: tuple[TensorResult, ...]  # the tensors of these layers with the finding
    tensors: int  # every tensor of these layers


def finding_ranges(report: ScanReport, findings: Collection[str] = SEVERITY) -> list[FindingRange]:
    """Per finding (most severe first), the layer ranges whose tensors have it, in layer order."""
    sizes = {s.layer: s.tensors for s in report.layers}
    found = report.tensors.with_any(findings)
    out: list[FindingRange] = []
    for finding in (f for f in SEVERITY if f in findings):
        groups: dict[str, list[TensorResult]] = {}
        keys: dict[str, LayerKey] = {}
        for t in found:
            if finding in t.findings:
                key = layer_of(t.name)
                groups.setdefault(key.group, []).append(t)
                keys[key.group] = key
        runs: list[list[LayerKey]] = []
        for group in sorted(groups, key=natural_key):
            key = keys[group]
            prev = runs[-1][-1] if runs else None
            if prev is None or key.index is None or prev.index is None or prev.stack != key.stack or key.index != prev.index + 1:
                runs.append([key])  # a layer outside a stack, another stack or a gap starts a new range
            else:
                runs[-1].append(key)
        for run in runs:
            first, last = run[0], run[-1]
            label = first.group if first.index is None or first.index == last.index else f"{first.stack}.{first.index}–{last.index}"
            members = tuple(t for key in run for t in groups[key.group])
            out.append(FindingRange(finding, label, members, sum(sizes.get(key.group, 0) for key in run)))
    return out


def next_steps(report: ScanReport, decided: Verdict | None = None) -> list[str]:
    """What to do about one checkpoint, from the health verdict.py gave it and what fails the gate
    (``decided``: the verdict under the command's ``--fail-on``; the report's own by default): a repair
    only for findings that fail and a repair restores, the cast advice for overflow (docs/health.md,
    "What to do")."""
    from nandoctor.hints import repair_command, resave_command, use_verified_repair_of

    decided = decided if decided is not None else report.judgement
    failing = set(decided.failing if decided is not None else verdicts.FAILING_BY_DEFAULT)
    repairable = bool(failing & {verdicts.NONFINITE, verdicts.EXPLODED, verdicts.OUTLIER})
    health = report.health
    steps: list[str] = []
    # (a config file's values beside judged weights: corrected first, since a repair copies no config file and
    # refuses a target whose config fails)
    config_first = bool(report.errors) and not verdicts.weight_errors(report)
    if config_first:
        steps += [_PROBLEM_STEPS[kind] for kind in verdicts.problem_kinds(report)]
    base = verdicts.adapter_base_scan(report)
    if decided is not None and decided.base_failing and base is not None:  # (a PEFT adapter's base: adapterbase.py)
        from nandoctor.hints import base_model_steps

        steps += base_model_steps(report.target, base)  # (first: a repair of the adapter is refused until it is fixed)
    if health == "unreadable":
        steps += [_PROBLEM_STEPS.get(kind, _PROBLEM_STEPS[verdicts.UNREADABLE_KIND]) for kind in verdicts.problem_kinds(report)]
        if report.bad_tensors and verdicts.NONFINITE in failing:
            steps += ["then restore the bad tensors with", f"    {repair_command(report)}"]
    elif health == "diverged" and (repairable or verdicts.EXPLODED in (decided.fail_on if decided else failing)):
        # (diverged by growth alone fails where exploded weights fail, with no finding: its next step all the same)
        context = verdicts.run_context(report)
        where = (f" (`{scan_command(as_spelled(Path(context['run']), report.target))}` names it)"
                 if context and context.get("run") else "")
        steps.append(f"diverged: {verdicts.diverged_why(report)}: {verdicts.diverged_advice(report, where)}; a repair "
                     "would only stitch a broken model together")
    elif health == "poisoned" and repairable:
        optimizer = verdicts.optimizer_only(report, failing)
        floats = verdicts.only_pickled_floats(report, failing)
        if floats:  # (no tensor to restore: a repair would find no donor for them)
            steps.append(f"only {verdicts.RATE_FLOATS} are bad ({first_few([report.tensors.refs.names[i] for i in verdicts.failing_rows(report, failing)], 2)}); "
                         "the model weights are healthy, so the model loads and "
                         "generates, but resuming training from this checkpoint restores them, and a NaN learning rate "
                         "makes every weight NaN at the next step (a NaN or infinite loss scale skips every step): resume from an earlier checkpoint instead (a repair "
                         "restores tensors, not these)")
        else:
            if optimizer and not report.unviewed and verdicts.overflowed_moments(report, failing):
                # (an Adam second moment at +Inf took a gradient beyond ~1e19: a real run's weights, finite and under
                # every ceiling, scored an eval loss of 8,960 where an untrained model scores 4.9)
                steps.append(f"only optimizer state is bad ({first_few(optimizer, 2)}), but {verdicts.OVERFLOWED_MOMENT}; "
                             "evaluate the model (its loss on held-out data) before using it, and resume from an "
                             "earlier checkpoint (with a lower learning rate, or gradient clipping) rather than from this one")
            elif optimizer and not report.unviewed:
                steps.append(f"only optimizer state is bad ({first_few(optimizer, 2)}); the model weights are healthy, so the "
                             "model loads and generates, but resuming training from this checkpoint restores the bad "
                             "state: resume from an earlier checkpoint instead")
            outside = [u for u in report.unviewed if u.nan or u.posinf or u.neginf] if verdicts.NONFINITE in failing else []
            unviewed = [u.file for u in outside]
            for file in dict.fromkeys(u.file for u in outside if not u.pickled):  # no repair by name restores them
                steps += [f"NaN/Inf in bytes no tensor of {file} views: re-save it with only the bytes its tensors view",
                          f"    {resave_command(file)}"]
            for u in outside:
                if u.pickled:
                    steps.append(f"NaN/Inf in the {u.label()}: fix it where it is computed (or leave it out of the "
                                 "checkpoint, or take it from an earlier one); a repair restores tensors only")
            in_place = use_verified_repair_of(report.target, report)
            broke = verdicts.loss_broke_from(report)
            context = verdicts.run_context(report) or {}
            if broke is not None and report.bad_tensors and not in_place and context.get("run"):  # (run_report.py too)
                run = as_spelled(Path(context["run"]), report.target)
                steps.append(verdicts.diverged_advice(report, f" (`{scan_command(run)}` names it)")
                             + f"; or: {verdicts.loss_broke_words(checkpoint_name(report.target), broke)}")
            if in_place and not unviewed:
                steps += in_place
            elif report.bad_tensors or not unviewed:
                lead = "then r" if unviewed or config_first else "or r" if optimizer else "r"
                steps += [f"{lead}estore the bad tensors from an earlier checkpoint with",
                          f"    {repair_command(report)}"]
    if verdicts.OVERFLOW in failing and verdicts.overflow_count(report):
        dtype = verdicts.target_dtype(report)
        wider = "fp32" if dtype == "bf16" else "bf16 or fp32"
        worst, several = verdicts.worst_overflow_layer(report), len(verdicts.overflow_tensors(report)) > 1
        which = (f"the {len(verdicts.overflow_tensors(report))} tensors that overflow (worst {worst})" if several and worst
                 else worst or "those weights")
        steps.append(f"some finite weights overflow {dtype}: serve in a wider dtype ({wider}), or clamp/rescale "
                     f"{which} before casting")
    load = report.extra.get("load_dtype")
    if (verdicts.EXPLODED in failing and verdicts.with_finding(report, verdicts.EXPLODED) and isinstance(load, dict)
            and load.get("checked") and load.get("target_dtype") == "fp16"):
        from nandoctor.checkpoint.loaddtype import wider as load_wider

        steps.append(f"or, if the weights are right as stored: {load_wider(load)} (from_pretrained loads them as "
                     f"{load['value']}, where a weight above 2^14 breaks fp16 arithmetic)")
    exploded = verdicts.with_finding(report, verdicts.EXPLODED)
    # (values a model may mean: far from float32's range, where a bit flip or a BitNet scale of 0 puts them)
    tops = [t.max_abs for t in exploded if t.max_abs is not None and t.max_abs < _MEANT_BELOW
            and t.ref.dtype not in ("F16", "C32")]
    if verdicts.EXPLODED in failing and tops and verdicts.NONFINITE not in failing:
        # (a new user's regression on house prices, R² 0.98, its bias 3.8e5: "broken throughout: make the file again";
        # a model of raw units may hold such values by design, and --max-abs says so)
        steps.append(f"or, if values of {max(tops):.3g} are meant (a model of raw units: a regression's bias in dollars), "
                     f"scan with --max-abs 1e{math.floor(math.log10(max(tops))) + 1} (the exploded ceiling: "
                     "1e5 by default)")
    reported = decided.reported if decided is not None else ()
    if verdicts.ZEROED in failing or verdicts.ZEROED in reported:
        zeroed = verdicts.with_finding(report, verdicts.ZEROED)
        # (an LM head or token embedding all zero leaves no working model: said plainly. A norm gain is not: a model
        # whose norms scale by 1 + w, Gemma's, still works with one at zero)
        breaking = [t.ref.name for t in zeroed if zero_breaks(t.ref.name, len(t.ref.shape)) == "token matrix"]
        if breaking:
            steps.append(f"{first_few(breaking, 2)} all zero: the model loads and generates, but its output no longer "
                         "depends on the input tokens (a zero LM head gives the same logits for every input, a zero "
                         "embedding the same input for every token)"
                         + ("" if verdicts.ZEROED in failing else "; a gate that must stop it: zeroed in --fail-on, as "
                            "by default"))
        repair = f"    {repair_command(report)}"
        if repair in steps:  # (the bad tensors' repair restores the zeroed ones too: one command, said once)
            steps.append("all-zero tensors: compare with the source of the weights (a failed copy or conversion); the "
                         "repair above restores them too")
        else:
            steps += ["all-zero tensors: compare with the source of the weights (a failed copy or conversion), or "
                      "restore them from an earlier checkpoint with", repair]
    return steps


# What to do first about each kind of problem (ScanProblem.kind, exit 3), before anything is judged.
_PROBLEM_STEPS = {
    verdicts.UNREADABLE_KIND: "do what each problem's hint above says, then scan again once every part reads",
    verdicts.HASH_KIND: "the files listed are not the bytes recorded for them: restore them from a good copy "
                        "(or re-download them), then scan again",
    verdicts.SELECTION_KIND: "check the --only/--exclude patterns (they are globs on the full tensor name), then scan again",
    verdicts.EMPTY_KIND: "save the model's weights into it (its state_dict), or scan the checkpoint that holds them",
    verdicts.UNLOADABLE_KIND: "put back or correct what the problems listed name (or use another checkpoint), then scan again",
    verdicts.CONFIG_KIND: "correct the config or tokenizer files the problems name (each hint says how), then scan again",
    verdicts.BASE_KIND: "make the base model the adapter is applied to readable as its problem's hint says (or point "
                        "base_model_name_or_path in adapter_config.json to one that loads), then scan the adapter again",
    verdicts.UNVERIFIED_KIND: "record the hashes from a good copy (`nandoctor manifest PATH > manifest.json`) and scan "
                              "with --manifest manifest.json, or scan the repo id from the Hugging Face cache",
}


def timeline_rows(run: RunReport, limit: int) -> list[RunCheckpoint]:
    """The checkpoints a timeline lists: all up to ``limit``; beyond, every one that is not clean, the
    first, the last healthy and the newest, and an even spread of the clean rest."""
    chosen = list(run.checkpoints)
    if len(chosen) <= limit:
        return chosen
    keep = {id(c) for c in (chosen[0], run.last_healthy, run.first_bad, run.newest) if c is not None}
    keep |= {id(c) for c in chosen if c.status != CLEAN_STATUS}
    rest = [c for c in chosen if id(c) not in keep]
    room = max(0, limit - len(keep))
    if room:
        keep |= {id(c) for c in rest[:: max(1, len(rest) // room)][:room]}
    return [c for c in chosen if id(c) in keep][: max(limit, 1)]
