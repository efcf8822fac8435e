"""`nandoctor repair`: restore the NaN/Inf tensors from earlier checkpoints into a new, verified folder.

The command parses options, draws the plan or the result with rich, and maps
outcomes to exit codes: 0 repaired and verified clean (or, with --dry-run, a
complete plan); 3 refused or failed, with nothing left at --out.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from nandoctor.cli.common import echo_json, handles_errors
from nandoctor.cli.progress import byte_progress

if TYPE_CHECKING:
    from nandoctor.restore.plan import RepairPlan
    from nandoctor.restore.proof import RepairResult

MAX_ROWS = 40


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so the temporary folder is cleaned up, as on Ctrl-C."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (tests calling main from a thread)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.command()
@click.argument("target", type=click.Path(path_type=str))
@click.option(
    "--from",
    "donors",
    multiple=True,
    required=True,
    metavar="CHECKPOINT",
    help="An earlier checkpoint to restore from; repeat to try several in order. "
    "'auto' = the earlier checkpoint-N siblings of TARGET, newest first.",
)
@click.option("--out", type=click.Path(path_type=str), help="New folder for the repaired checkpoint (must not exist).")
@click.option(
    "--scope",
    type=click.Choice(["tensor", "layer"]),
    default="tensor",
    show_default=True,
    help="tensor: restore the bad tensors only; layer: every tensor of each layer holding a bad one.",
)
@click.option("--dry-run", is_flag=True, help="Print the plan (tensor, counts, donor) and write nothing.")
@click.option(
    "--hash-all",
    is_flag=True,
    help="Record the sha256 of every weight file written, not only of the patched ones (slower: sha256 "
    "costs more CPU than copying).",
)
@click.option("--allow-diverged", is_flag=True,
              help="Repair a diverged checkpoint anyway (refused by default: resume from the last healthy one).")
@click.option("--allow-cast", is_flag=True,
              help="Take a donor of another float dtype (an fp32 master copy for a bf16 checkpoint), rounded as "
              "torch's tensor.to(dtype) rounds; refused when a value would not be finite in the target's dtype.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan or result as JSON on stdout.")
@click.option("--all", "show_all", is_flag=True, help=f"List every restored tensor, not only the first {MAX_ROWS}.")
@click.option("--no-progress", is_flag=True, help="Never draw a progress bar.")
@handles_errors
def repair(
    target: str,
    donors: tuple[str, ...],
    out: str | None,
    scope: str,
    dry_run: bool,
    hash_all: bool,
    allow_diverged: bool,
    allow_cast: bool,
    as_json: bool,
    show_all: bool,
    no_progress: bool,
) -> None:
    """Restore TARGET's bad tensors (NaN/Inf, exploded, outliers) from earlier checkpoints into --out.

    Each bad tensor (or, with --scope layer, each tensor of a bad layer) is taken
    from the first donor that holds it with the same dtype and shape and healthy;
    --from auto takes only the run's healthy checkpoints before its first bad one,
    and a diverged TARGET is refused (resume from the last healthy checkpoint);
    everything else stays byte-identical. The result is re-scanned and moved into
    place only when clean, with nandoctor-repair.json as its proof. Exit 0:
    repaired and verified clean; 3: refused or failed, nothing left at --out.

    \b
    Examples:
      nandoctor repair run/checkpoint-300 --from run/checkpoint-200 --out run/checkpoint-300-repaired
      nandoctor repair ckpt/ --from older/ --from oldest/ --out fixed/ --scope layer
      nandoctor repair run/checkpoint-300 --from auto --out fixed/
      nandoctor repair ckpt/ --from older/ --dry-run
    """
    from nandoctor.cli.progress import stdout_console
    from nandoctor.errors import UnrestorableError
    from nandoctor.restore import repair as run_repair

    if out is None and not dry_run:
        raise click.UsageError("--out is required (or use --dry-run to see the plan)")
    if out == "":
        raise click.UsageError("--out is empty; name a new folder for the repaired checkpoint")
    console = stdout_console()
    try:
        with _sigterm_interrupts(), byte_progress(enabled=not no_progress and not as_json, description="repairing") as progress:
            result = run_repair(
                target, list(donors), out, scope=scope, dry_run=dry_run, progress=progress, hash_all=hash_all,
                allow_diverged=allow_diverged, allow_cast=allow_cast,
            )
    except UnrestorableError as exc:
        from nandoctor.restore.plan import RepairPlan

        if isinstance(exc.plan, RepairPlan):
            if as_json:
                from nandoctor.restore.proof import plan_json

                echo_json(plan_json(exc.plan))
            else:
                render_plan(exc.plan, console, show_all=show_all)
        raise
    if as_json:
        from nandoctor.restore.proof import plan_json, proof_json

        echo_json(plan_json(result.plan) if dry_run else proof_json(result))
    else:
        render_result(result, console, show_all=show_all)
    sys.exit(result.exit_code)


def _donor_short(plan: RepairPlan, index: int) -> str:
    from nandoctor.report.rich_report import safe

    info = plan.donors[index]
    return safe(info.path) + (f" (step {info.step})" if info.step is not None else "")


def _add_column(table: Table, header: str, *, numeric: bool) -> None:
    # Names and paths fold onto more lines, never end in "…": a cut tensor name cannot be
    # searched for or pasted (and a pipe's 160 columns are not always enough for name + donor path).
    if numeric:
        table.add_column(header, justify="right", no_wrap=True)
    else:
        table.add_column(header, overflow="fold")


def _layer_table(plan: RepairPlan) -> Table:
    from nandoctor.layers import natural_key
    from nandoctor.report.rich_report import safe

    table = Table(title="Restored per layer", title_justify="left", show_edge=False, header_style="bold")
    for column in ("layer", "tensors", "NaN", "+Inf", "-Inf", "from"):
        _add_column(table, column, numeric=column in ("tensors", "NaN", "+Inf", "-Inf"))
    groups: dict[str, list] = {}
    for r in plan.restorations:
        groups.setdefault(r.layer, []).append(r)
    for layer in sorted(groups, key=natural_key):
        members = groups[layer]
        donors = sorted({r.donor for r in members})
        table.add_row(
            Text(safe(layer), style="bold"),
            str(len(members)),
            f"{sum(r.nan for r in members):,}",
            f"{sum(r.posinf for r in members):,}",
            f"{sum(r.neginf for r in members):,}",
            Text(", ".join(_donor_short(plan, d) for d in donors)),
        )
    return table


def _tensor_table(plan: RepairPlan, limit: int | None) -> Table:
    from nandoctor.report.rich_report import safe

    table = Table(title="Restored tensors", title_justify="left", show_edge=False, header_style="bold")
    for column in ("tensor", "dtype", "shape", "NaN", "+Inf", "-Inf", "why", "donor"):
        _add_column(table, column, numeric=column in ("NaN", "+Inf", "-Inf"))
    rows = list(plan.restorations)
    shown = rows if limit is None else rows[:limit]
    for r in shown:
        donor = _donor_short(plan, r.donor)
        if r.donor_name != r.name:
            donor += f" as {safe(r.donor_name)}"
        if r.via:
            donor += f" (tied to {safe(r.via)}, written once)"
        table.add_row(
            Text(safe(r.name)),
            r.dtype,
            "×".join(map(str, r.shape)) or "scalar",
            f"{r.nan:,}",
            f"{r.posinf:,}",
            f"{r.neginf:,}",
            "NaN/Inf" if r.reason == "bad" else "its layer",
            Text(donor),
        )
    if len(rows) > len(shown):
        table.caption = f"… and {len(rows) - len(shown)} more (--all lists them, --json gives every one)"
    return table


def _refusal_table(plan: RepairPlan) -> Table:
    from nandoctor.report.rich_report import safe

    table = Table(title="Cannot be restored", title_justify="left", show_edge=False, header_style="bold red")
    for column in ("tensor", "NaN/Inf", "why each donor failed"):
        _add_column(table, column, numeric=column == "NaN/Inf")
    for u in plan.unrestorable:
        table.add_row(Text(safe(u.name)), f"{u.nan + u.posinf + u.neginf:,}", Text("\n".join(safe(r) for r in u.reasons)))
    return table


def render_plan(plan: RepairPlan, console: Console, *, show_all: bool = False) -> None:
    from nandoctor.report.rich_report import human_bytes, safe

    donors = "\n".join(f"    {i + 1}. {_donor_short(plan, i)}" for i in range(len(plan.donors)))
    console.print(Text.assemble(("nandoctor repair ", "bold"), safe(plan.target), f"\n  scope: {plan.scope}\n  donors, tried in order:\n{donors}"))
    for note in plan.notes:
        console.print(Text(f"  note: {safe(note)}", style="yellow"))
    if plan.restorations:
        console.print()
        console.print(_layer_table(plan))
        console.print()
        console.print(_tensor_table(plan, None if show_all else MAX_ROWS))
    if plan.unrestorable:
        console.print()
        console.print(_refusal_table(plan))
    for u in plan.unviewed:
        console.print(
            Text(
                f"  storage {safe(u.storage)} in {safe(u.file)}: {u.nan + u.posinf + u.neginf:,} NaN/Inf in bytes "
                "no tensor views; they cannot be restored by name",
                style="red",
            )
        )
    console.print()
    restored = len(plan.restorations)
    if not plan.refused:
        console.print(
            Text(f"  plan: restore {restored} tensor(s), {human_bytes(plan.bytes_restored)}, from {len({r.donor for r in plan.restorations})} donor(s)")
            if restored
            else Text("  nothing to restore: the target is already clean")
        )


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
        console.print(
            Text.assemble(
                ("✓ ALREADY CLEAN", "bold green"),
                f": nothing to restore; wrote an unchanged, verified copy to {safe(result.out or '')} "
                f"in {result.seconds:.2f} s (the source itself is fine to use)",
                f"\n  proof: {safe(result.proof or '')}",
            )
        )
        return
    console.print(
        Text.assemble(
            ("✓ REPAIRED", "bold green"),
            f": wrote {safe(result.out or '')} ({len(plan.restorations)} tensor(s) restored, "
            f"{patched} of {len(result.files)} weight file(s) patched, {len(result.carried)} other file(s) carried over) "
            f"in {result.seconds:.2f} s",
            f"\n  proof: {safe(result.proof or '')}",
        )
    )
