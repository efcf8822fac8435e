"""A scan split across processes: `nandoctor scan --part I/N`, `--distributed` (torchrun/srun), `nandoctor merge`.

The work is engine/parts.py (plan, scan a part, merge: torch-free) and, for
--distributed only, engine/ranks.py (torch.distributed's store as transport).
The merged report prints exactly as `nandoctor scan` prints a report.
"""

from __future__ import annotations

import sys

import click

from nandoctor.cli.common import USER_PATH, debug_option, echo_json, fail, handles_errors


def scan_split(
    path: str, part: str | None, distributed: bool, rank_timeout: float, device: str, as_json: bool, quiet: bool,
    show_all: bool, fail_on: frozenset[str], both_formats: bool, target_dtype: str | None,
    max_abs: float | None, outlier_factor: float | None,
) -> None:
    """`scan --part` or `scan --distributed`; exits."""
    from nandoctor.cli.emit import emit_scan
    from nandoctor.engine.parts import Options, PartSpec, scan_part

    options = Options(both_formats, target_dtype, max_abs, outlier_factor)
    if part is not None and distributed:
        raise click.UsageError("--part and --distributed split the scan two ways; pick one")
    if part is not None:
        if not as_json:
            raise click.UsageError("--part prints a part for `nandoctor merge`: add --json (and redirect it to a file)")
        try:
            spec = PartSpec.parse(part)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--part") from None
        data = scan_part(path, spec, options, device=device)
        echo_json(data)
        # exit 3 when this part could not read something (a retry may help); the verdict is merge's
        sys.exit(3 if data["problems"] else 0)
    from nandoctor.engine.ranks import distributed_scan

    outcome = distributed_scan(path, options, device=device, rank_timeout=rank_timeout)
    if outcome.report is not None:  # rank 0 prints the one report
        code = emit_scan(outcome.report, as_json, quiet, show_all, fail_on)
        if outcome.report.errors and code != 3:
            code = 3
    else:
        code = outcome.exit_code
    sys.exit(code)


@click.command()
@click.argument("parts", nargs=-1, required=True, type=USER_PATH)
@click.option("--json", "as_json", is_flag=True, help="Print the merged report as JSON (as `scan --json`).")
@click.option("-q", "--quiet", is_flag=True, help="Print one line: verdict, counts, worst layer range.")
@click.option("--all", "show_all", is_flag=True, help="List every bad tensor, not only the worst 40.")
@click.option("--fail-on", "fail_on", default="nonfinite,exploded,outlier,overflow", show_default=True,
              help="What fails the gate (exit 1), as for `nandoctor scan`.")
@debug_option
@handles_errors
def merge(parts: tuple[str, ...], as_json: bool, quiet: bool, show_all: bool, fail_on: str) -> None:
    """Join the parts of a split scan (`nandoctor scan PATH --part I/N --json > part-I.json`) into one report.

    The report is the one `nandoctor scan PATH` prints, tensor for tensor. Refused
    (exit 3, naming the part): a missing or duplicated part, a part of another
    checkpoint or of another N, or a checkpoint whose files changed since.

    \b
    Example (a Slurm job array of 8):
      nandoctor scan /ckpt/step-1000 --part $SLURM_ARRAY_TASK_ID/8 --json > part-$SLURM_ARRAY_TASK_ID.json
      nandoctor merge part-*.json
    """
    from nandoctor import verdict as verdicts
    from nandoctor.cli.emit import emit_scan
    from nandoctor.engine.parts import merge_parts, read_part

    try:
        gate = verdicts.parse_fail_on(fail_on)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--fail-on") from None
    loaded = [(p, read_part(p)) for p in parts]
    report = merge_parts(loaded)
    if not report.tensors and not report.errors:
        fail("the merged parts hold no tensors", "check that the parts come from a scan of a checkpoint")
    sys.exit(emit_scan(report, as_json, quiet, show_all, gate))
