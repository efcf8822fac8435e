"""`nandoctor repair`: restore the NaN/Inf tensors from earlier checkpoints into a new, verified folder.

The command parses options, draws the plan or the result with rich, and maps
outcomes to exit codes: 0 repaired and verified clean (or, with --dry-run, a
complete plan); 3 refused or failed, with nothing left at --out.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from nandoctor.cli import common
from nandoctor.cli.common import USER_PATH, debug_enabled, debug_option, echo_json, fail, handles_errors, known_error
from nandoctor.cli.progress import byte_progress
from nandoctor.report.repair_report import MAX_ROWS, next_steps


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
@click.argument("target", type=USER_PATH)
@click.option(
    "--from",
    "donors",
    multiple=True,
    metavar="CHECKPOINT",
    help="An earlier checkpoint to restore from; repeat to try several in order. "
    "'auto' = the run's healthy checkpoints before TARGET (checkpoint-N folders, or Lightning "
    "…step=N….ckpt files), newest first.",
)
@click.option("--out", type=USER_PATH, help="New folder for the repaired checkpoint (must not exist).")
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
              help="Repair a diverged checkpoint anyway (refused by default: resume from the last healthy one); "
              "never one that stays diverged by growth, which no restored tensor undoes.")
@click.option("--allow-cast", is_flag=True,
              help="Take a donor of another float dtype (an fp32 master copy for a bf16 checkpoint), rounded as "
              "torch's tensor.to(dtype) rounds; refused when a value would not be finite in the target's dtype.")
@common.health_limit_options
@click.option("--only", "only", multiple=True, metavar="GLOB",
              help="Judge and restore only tensors whose full name matches GLOB (repeatable; e.g. 'state_dict.*'); "
              "the others are carried over unchanged.")
@click.option("--exclude", "exclude", multiple=True, metavar="GLOB",
              help="Neither judge nor restore tensors whose full name matches GLOB (repeatable; e.g. "
              "'optimizer_states.*'); they are carried over byte-identical and counted in the plan and proof.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan or result as JSON on stdout (a refusal or error too: docs/repair.md).")
@click.option("--all", "show_all", is_flag=True, help=f"List every restored tensor, not only the first {MAX_ROWS}.")
@click.option("--no-progress", is_flag=True, help="Never draw a progress bar.")
@click.option("-q", "--quiet", is_flag=True, help="Print one line (REPAIRED, REFUSED …) instead of the report.")
@debug_option
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
    max_abs: float | None,
    outlier_factor: float | None,
    only: tuple[str, ...],
    exclude: tuple[str, ...],
    as_json: bool,
    show_all: bool,
    no_progress: bool,
    quiet: bool,
) -> None:
    """Restore TARGET's bad tensors (NaN/Inf, exploded, outliers, zeroed, overflowing) from earlier checkpoints into --out.

    Each bad tensor (or, with --scope layer, each tensor of a bad layer) is taken
    from the first donor that holds it with the same dtype and shape and healthy;
    --from auto takes only the run's healthy checkpoints before its first bad one,
    and a diverged TARGET is refused (resume from the last healthy checkpoint);
    everything else stays byte-identical. The result is re-scanned and moved into
    place only when clean, with nandoctor-repair.json as its proof. Exit 0:
    repaired and verified clean; 3: refused or failed, nothing left at --out.

    \b
    Examples:
      nandoctor repair run/checkpoint-300 --from run/checkpoint-200 \\
          --out run/repaired-checkpoint-300
      nandoctor repair ckpt/ --from older/ --from oldest/ --out fixed/ --scope layer
      nandoctor repair run/checkpoint-300 --from auto --out fixed/
      nandoctor repair ckpt/ --from older/ --dry-run
      nandoctor repair 'ckpts/epoch=0-step=600.ckpt' --from auto \\
          --exclude 'optimizer_states.*' --out fixed/
    """
    from nandoctor.checkpoint.selection import selection
    from nandoctor.cli.progress import stdout_console
    from nandoctor.errors import UnrestorableError
    from nandoctor.report.repair_report import render_plan, render_result
    from nandoctor.restore import repair as run_repair

    if not donors:  # (click's own "Missing option '--from'" said nothing of what to give)
        raise click.UsageError("--from is required: an earlier clean checkpoint to restore from (--from "
                               "run/checkpoint-200, repeat for more), or --from auto for the run's healthy checkpoints "
                               "before TARGET")
    if out is None and not dry_run:
        raise click.UsageError("--out is required (or use --dry-run to see the plan)")
    if out == "":
        raise click.UsageError("--out is empty; name a new folder for the repaired checkpoint")
    limits = common.checked_limits(max_abs, outlier_factor)
    try:
        chosen = selection(only, exclude)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    console = stdout_console()
    existed = out is not None and os.path.lexists(out)  # (then an interrupt never claims what is there)
    with _json_on_error(as_json, target, donors, scope, allow_cast):
        try:
            with _sigterm_interrupts():
                with byte_progress(enabled=not no_progress and not as_json and not quiet, description="repairing") as progress:
                    result = run_repair(
                        target, list(donors), out, scope=scope, dry_run=dry_run, progress=progress, hash_all=hash_all,
                        allow_diverged=allow_diverged, allow_cast=allow_cast, limits=limits, selection=chosen,
                    )
                if result.ok and not dry_run and result.out:
                    from nandoctor.cli.pipes import stands_if_unwritten

                    # (a report that stdout cannot take, a full disk, loses nothing of the repair: exit 0, as for a
                    # reader that closed the pipe, saying where it is)
                    stands_if_unwritten(f"the repair is complete: {_in_place(result.out)}")
                # (the report too: an interrupt while it prints finds the repair in place, and says so)
                if as_json:
                    from nandoctor.restore.proof import plan_json, proof_json

                    # (the proof as written beside the repair, with what the command returns and the steps that
                    # use it: a script reads one object, as for a refusal)
                    echo_json(plan_json(result.plan) if dry_run
                              else {**proof_json(result), "exit_code": result.exit_code,
                                    "next": [step.strip() for step in next_steps(result)]})
                elif quiet:
                    from nandoctor.report.repair_report import quiet_line

                    click.echo(quiet_line(result))
                else:
                    render_result(result, console, show_all=show_all)
        except KeyboardInterrupt:
            if not existed:
                _complete_anyway(out, target, dry_run)
            raise
        except UnrestorableError as exc:
            from nandoctor.restore.plan import RepairPlan

            if isinstance(exc.plan, RepairPlan) and not as_json and not quiet:  # (--json: the plan is printed below)
                render_plan(exc.plan, console, show_all=show_all)
            raise
    sys.exit(result.exit_code)


def _complete_anyway(out: str | None, target: str, dry_run: bool) -> None:
    """Interrupted once this repair was in place (between its rename and its report; --out did not exist before):
    say so, exit 0. Anything earlier left nothing at --out, and the interrupt stands."""
    from nandoctor.hints import verified_repair

    if out and not dry_run and verified_repair(Path(out), Path(target)):
        click.echo(f"interrupted after the repair was complete: {_in_place(out)}", err=True)
        sys.exit(0)


def _in_place(out: str) -> str:
    """Where a complete, verified repair is, said when its report was cut short (an interrupt, stdout full)."""
    from nandoctor.report.text import safe

    return safe(f"{out} holds it, verified (its nandoctor-repair.json says what was restored)")


@contextmanager
def _json_on_error(as_json: bool, target: str, donors: tuple[str, ...], scope: str, allow_cast: bool) -> Iterator[None]:
    """--json: a refusal or error is still one JSON object on stdout, the plan's shape with ``exit_code`` and
    ``errors`` (as ``scan --json`` reports a scan that cannot start: a redirect never leaves an empty file),
    besides the usual ``error:`` line and hint on stderr and the same exit code."""
    from nandoctor.errors import NandoctorError

    if not as_json:
        yield
        return
    try:
        yield
    except (NandoctorError, OSError) as raised:
        exc = known_error(raised)
        if exc is None:  # a bug of ours: handles_errors says so
            raise
        from nandoctor.restore.plan import RepairPlan
        from nandoctor.restore.proof import plan_json, refusal_json

        plan = getattr(exc, "plan", None)
        echo_json(plan_json(plan, exc) if isinstance(plan, RepairPlan)
                  else refusal_json(target, donors, scope, allow_cast, exc))
        if debug_enabled():
            raise
        fail(exc.message, exc.hint, exc.exit_code)
