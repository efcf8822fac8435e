"""The console rendering of a repair: the plan (layers, tensors, donors, refusals) and the result.

It renders what the planner and the writer decided (``restore/plan.py``, ``restore/proof.py``);
it decides nothing. Names and paths fold onto more lines instead of ending in "…".
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

from nandoctor.report.columns import add_column
from nandoctor.wording import LATER_DONOR, scan_command

if TYPE_CHECKING:
    from nandoctor.restore.plan import RepairPlan, Restoration
    from nandoctor.restore.proof import RepairResult

MAX_ROWS = 40  # restored tensors listed before "--all"

def _donor_short(plan: RepairPlan, index: int, narrow: bool = False) -> str:
    """A donor as a table cell: its path and step; ``narrow``: its number in the list above the tables (a path folded
    into a narrow last column lost characters: rich crops a table its columns' minimum widths overflow)."""
    from nandoctor.report.text import safe

    info = plan.donors[index]
    if info.own:  # a tied copy restored from its partner in the target itself (restore/tied.py)
        return "the target itself"
    step = f" (step {info.step})" if info.step is not None else ""
    return f"donor {index + 1}{step}" if narrow else safe(info.path) + step


# Below this width the tensor table keeps the tensor, its NaN/Inf and its donor: at 60 columns eight columns left the
# why and donor columns no width at all, and the names wrapped five characters a line (a review)
NARROW_WIDTH = 100


def _layer_table(plan: RepairPlan, width: int = NARROW_WIDTH) -> Table:
    from nandoctor.layers import natural_key
    from nandoctor.report.text import safe

    narrow = width < NARROW_WIDTH  # (NaN, +Inf and -Inf as one column: the donor column keeps its room)
    table = Table(title="Restored per layer", title_justify="left", show_edge=False, header_style="bold")
    columns = ("layer", "tensors", "NaN/Inf", "from") if narrow else ("layer", "tensors", "NaN", "+Inf", "-Inf", "from")
    for column in columns:
        add_column(table, column, numeric=column in ("tensors", "NaN", "+Inf", "-Inf", "NaN/Inf"), name=column == "layer")
    groups: dict[str, list] = {}
    for r in plan.restorations:
        groups.setdefault(r.layer, []).append(r)
    for layer in sorted(groups, key=natural_key):
        members = groups[layer]
        donors = sorted({r.donor for r in members})
        counts = [sum(r.nan for r in members), sum(r.posinf for r in members), sum(r.neginf for r in members)]
        table.add_row(
            Text(safe(layer), style="bold"),
            str(len({r.name for r in members})),  # a tensor once, however many of its chunks (DCP) are restored
            *([f"{sum(counts):,}"] if narrow else [f"{n:,}" for n in counts]),
            Text(", ".join(_donor_short(plan, d, narrow) for d in donors)),
        )
    return table


def _tensor_table(plan: RepairPlan, limit: int | None, width: int = NARROW_WIDTH) -> Table:
    from nandoctor.report.text import safe

    narrow = width < NARROW_WIDTH
    table = Table(title="Restored tensors", title_justify="left", show_edge=False, header_style="bold")
    columns = ("tensor", "NaN/Inf", "donor") if narrow else ("tensor", "dtype", "shape", "NaN", "+Inf", "-Inf", "why",
                                                             "donor")
    for column in columns:
        add_column(table, column, numeric=column in ("NaN", "+Inf", "-Inf", "NaN/Inf"), name=column == "tensor")
    rows = list(plan.restorations)
    shown = rows if limit is None else rows[:limit]
    for r in shown:
        donor = _donor_short(plan, r.donor, narrow)
        if r.donor_name != r.name:
            donor += f" as {safe(r.donor_name)}"
        if r.via:
            donor += f" (tied to {safe(r.via)}, written once)"
        if narrow:
            table.add_row(Text(safe(r.name)), f"{r.nan + r.posinf + r.neginf:,}", Text(donor))
            continue
        table.add_row(
            Text(safe(r.name)),
            r.dtype,
            _shape_text(r),
            f"{r.nan:,}",
            f"{r.posinf:,}",
            f"{r.neginf:,}",
            ", ".join(r.findings) or "its layer",  # the findings verdict.py gave it, not always NaN/Inf
            Text(donor),
        )
    if len(rows) > len(shown):
        table.caption = f"… and {len(rows) - len(shown)} more (--all lists them, --json gives every one)"
    return table


def _shape_text(r: Restoration) -> str:
    """The restored shape; for a chunk of a sharded tensor (DCP, ZeRO) also the global tensor's, as scan shows it,
    and where the chunk starts (two chunks of one tensor are two rows, told apart by it)."""
    shape = "×".join(map(str, r.shape)) or "scalar"
    if r.box is None:
        return shape
    whole = "×".join(map(str, r.box.global_shape)) or "scalar"
    return f"{shape} of {whole} at {list(r.box.offsets)}" if shape != whole else shape


def _refusal_table(plan: RepairPlan) -> Table:
    from nandoctor.report.text import safe

    table = Table(title="Cannot be restored", title_justify="left", show_edge=False, header_style="bold red")
    for column in ("tensor", "NaN/Inf", "why each donor failed"):
        add_column(table, column, numeric=column == "NaN/Inf", name=column == "tensor")
    for u in plan.unrestorable:
        table.add_row(Text(safe(u.name)), f"{u.nan + u.posinf + u.neginf:,}", Text("\n".join(safe(r) for r in u.reasons)))
    return table


def render_plan(plan: RepairPlan, console: Console, *, show_all: bool = False) -> None:
    from nandoctor.report.rich_report import human_bytes, safe

    donors = "\n".join(f"    {i + 1}. {_donor_short(plan, i)}" for i in range(len(plan.donors)) if not plan.donors[i].own)
    # (an --from auto with no checkpoint before the target lists none: "none" under the heading, never a blank line)
    listed = f"  donors, tried in order:\n{donors}" if donors else "  donors: none (nothing before it to restore from)"
    console.print(Text.assemble(("nandoctor repair ", "bold"), safe(plan.target), f"\n  scope: {plan.scope}\n{listed}"))
    for note in plan.notes:
        console.print(Text(f"  note: {safe(note)}", style="yellow"))
    if plan.restorations:
        console.print()
        console.print(_layer_table(plan, console.width))
        console.print()
        console.print(_tensor_table(plan, None if show_all else MAX_ROWS, console.width))
    if plan.unrestorable:
        console.print()
        console.print(_refusal_table(plan))
    for u in plan.unviewed:
        console.print(
            Text(
                f"  {safe(u.label())}: {u.nan + u.posinf + u.neginf:,} NaN/Inf outside every tensor "
                f"({u.what()}); they cannot be restored by name",
                style="red",
            )
        )
    console.print()
    restored = plan.tensors_restored
    if not plan.refused:
        console.print(
            Text(f"  plan: restore {restored} tensor(s), {human_bytes(plan.bytes_restored)}, from {_sources(plan)}")
            if restored
            else Text("  nothing to restore" + (" among the tensors judged" if plan.excluded
                                                 else ": the target is already clean"))
        )


def _sources(plan: RepairPlan) -> str:
    """Where the restored bytes come from: ``2 donor(s)``, with the target's own tied partners when used."""
    used = {r.donor for r in plan.restorations}
    own = sum(1 for i in used if plan.donors[i].own)
    donors = f"{len(used) - own} donor(s)"
    return donors + " and the tied partner(s) in the target" if own and len(used) > own else (
        "the tied partner(s) in the target" if own else donors)


def _unjudged(plan: RepairPlan, out: str | None) -> str:
    """What a repair with --only / --exclude leaves unsaid: the tensors it never judged, by name."""
    from nandoctor.report.rich_report import safe
    from nandoctor.wording import first_few

    what = plan.selection.describe() if plan.selection is not None else "the selection"
    names = first_few(list(plan.excluded_names), 5, quoted=True) or f"{plan.excluded:,} tensor(s)"
    return (f"it is clean except the {plan.excluded:,} tensor(s) left out by {safe(what)}, which were not judged "
            f"and still hold whatever they held, NaN/Inf included: {safe(names)} (`{safe(scan_command(out)) if out else 'nandoctor scan OUT'}` "
            "without those options judges them)")


def quiet_line(result: RepairResult) -> str:
    """``repair --quiet``'s one line (a script's: the exit code says the rest): what was done, where, and a doubt."""
    plan = result.plan
    if result.dry_run:
        if not result.ok:  # (a new user: "REFUSED …: 0 tensor(s) to restore" where one had no good donor)
            return (f"REFUSED {plan.target}: {len(plan.unrestorable) + len(plan.unviewed)} tensor(s) have no good donor; "
                    "nothing would be written")
        used = len({r.donor for r in plan.restorations})
        return f"PLAN COMPLETE {plan.target}: {plan.tensors_restored} tensor(s) to restore from {used} donor(s); nothing written"
    if result.verification is None or not result.ok:
        return f"FAILED {plan.target}: the repaired copy did not verify; nothing left at {result.out}"
    # (a selection's left-out tensors are never called clean here either: the full report's caveat, a new user's)
    unjudged = f"; but {_unjudged(plan, result.out)}" if plan.excluded else ""
    if not plan.restorations:
        return f"NOTHING RESTORED {plan.target}: an unchanged, verified copy at {result.out}{unjudged}"
    doubt = f"; but {plan.doubts[0]}" if plan.doubts else ""
    return (f"REPAIRED {plan.target}: {plan.tensors_restored} tensor(s) restored into {result.out}, verified "
            f"{result.verification.verdict}{doubt}{unjudged}")


def render_result(result: RepairResult, console: Console, *, show_all: bool = False) -> None:
    from nandoctor.report.rich_report import safe, verdict_text

    plan = result.plan
    render_plan(plan, console, show_all=show_all)
    for note in result.notes:
        console.print(Text(f"  note: {safe(note)}", style="yellow"))
    if result.dry_run:
        console.print(
            Text.assemble(("✓ PLAN COMPLETE", "bold green"), ": dry run, nothing written")
            if result.ok
            else Text.assemble(("✗ REFUSED", "bold red"), ": some tensors have no good donor; nothing would be written")
        )
        return
    if result.verification is not None:
        console.print(Text.assemble("  verification scan: ", verdict_text(result.verification)))
    patched = sum(1 for f in result.files if f.patched)
    if not plan.restorations:
        from nandoctor import verdict as verdicts

        left = verdicts.present(result.verification) if result.verification is not None else ()
        if left:  # findings that do not fail (a zeroed tensor no donor holds otherwise): nothing is "clean" here
            console.print(Text.assemble(
                ("⚠ NOTHING RESTORED", "bold yellow"),
                f": no donor could restore what was found ({', '.join(left)}: see the notes above); wrote an "
                f"unchanged, verified copy to {safe(result.out or '')} in {result.seconds:.2f} s",
                f"\n  proof: {safe(result.proof or '')}",
            ))
            return
        if plan.excluded:  # never "clean", nor the source "fine": the left-out tensors were not judged
            console.print(Text.assemble(
                ("✓ NOTHING TO RESTORE", "bold green"),
                f" among the tensors judged: wrote an unchanged, verified copy to {safe(result.out or '')} in "
                f"{result.seconds:.2f} s; {_unjudged(plan, result.out)}",
                f"\n  proof: {safe(result.proof or '')}",
            ))
            return
        console.print(
            Text.assemble(
                ("✓ ALREADY CLEAN", "bold green"),
                f": nothing to restore; wrote an unchanged, verified copy to {safe(result.out or '')} "
                f"in {result.seconds:.2f} s (the source itself is fine to use)",
                f"\n  proof: {safe(result.proof or '')}",
            )
        )
        return
    doubted = bool(plan.doubts)
    console.print(
        Text.assemble(
            ("⚠ REPAIRED", "bold yellow") if doubted else ("✓ REPAIRED", "bold green"),
            f": wrote {safe(result.out or '')} ({plan.tensors_restored} tensor(s) restored, "
            f"{patched} of {len(result.files)} scanned file(s) patched, {len(result.carried)} other file(s) carried over) "
            f"in {result.seconds:.2f} s" + (f"; {_unjudged(plan, result.out)}" if plan.excluded else ""),
            f"\n  proof: {safe(result.proof or '')}",
        )
    )
    if doubted:  # (said above the tables as notes: here again, where the user reads the result; kept in the proof)
        # (the whole-model doubt is the first where there is one; a later donor's is this model's all the same)
        whole = plan.whole_model_from is not None or LATER_DONOR in plan.doubts[0]
        console.print(Text(("  but " if whole else "  but a donor may not be this model's: ") + safe(plan.doubts[0])
                           + (f" (and {len(plan.doubts) - 1} more, in the proof's donor_doubts)" if len(plan.doubts) > 1 else "")
                           + ("" if whole else "; check that --from names an earlier checkpoint of this run before using "
                              "the repair"), style="yellow"), soft_wrap=True)
    steps = next_steps(result)
    if steps:
        console.print(Text("  next: " + "\n        ".join(safe(step) for step in steps), style="dim"), soft_wrap=True)


def next_steps(result: RepairResult) -> list[str]:
    """The steps that use a written, verified repair in the source's place (the console's ``next:``, ``--json``'s
    ``next``); [] for none."""
    if not (result.out and result.verification is not None and result.verification.exit_code == 0):
        return []
    from nandoctor.hints import using_repair

    steps = using_repair(result.plan.target, Path(result.out))
    whole = result.plan.whole_model_from
    if whole is not None and steps:  # (a trial: a merged LoRA "repaired" from its base is the base: no plain mv)
        return [f"the copy holds {whole}'s weights almost throughout (see the doubt above): put it in place only if that "
                "is the model you want", *steps]
    return steps
