"""`nandoctor scan`: count NaN/Inf per tensor and per layer, as a rich report, one line (--quiet) or JSON.

Also the gate options (--target-dtype, --fail-on), run folders as a timeline, and repo ids
resolved in the local Hugging Face / ModelScope cache.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from nandoctor.cli.common import echo_json, handles_errors
from nandoctor.cli.progress import byte_progress

if TYPE_CHECKING:
    from nandoctor.checkpoint.runs import RunReport


def _fail_on(ctx: click.Context, param: click.Parameter, value: str | None) -> frozenset[str]:
    from nandoctor import verdict as verdicts

    try:
        return verdicts.parse_fail_on(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@click.argument("path", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout (schema in docs/json.md).")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where to count: auto uses a CUDA GPU when torch sees one.",
)
@click.option("--all", "show_all", is_flag=True, help="List every bad tensor, not only the worst 40.")
@click.option("--both-formats", is_flag=True, help="In a folder with safetensors and .bin weights, scan both.")
@click.option("--no-progress", is_flag=True, help="Never draw a progress bar.")
@click.option("-q", "--quiet", is_flag=True, help="Print one line: verdict, counts, worst layer range (for gates).")
@click.option(
    "--target-dtype",
    type=click.Choice(["fp16", "bf16", "fp8_e4m3", "fp8_e5m2"]),
    default=None,
    help="Also count finite weights that become Inf/NaN when cast to this dtype (overflow risk).",
)
@click.option(
    "--fail-on",
    "fail_on",
    default="nonfinite,exploded,outlier,overflow",
    show_default=True,
    callback=_fail_on,
    help="What fails the gate (exit 1): any of nonfinite, exploded, outlier, zeroed, overflow. "
    "Unreadable parts always exit 3.",
)
@click.option("--max-abs", type=float, default=None,
              help="Exploded ceiling: a weight above it is 'exploded' (default 1e5; docs/health.md).")
@click.option("--outlier-factor", type=float, default=None,
              help="How far above its tensor's bulk a value is an 'outlier' (default 1024 = 2^10).")
@handles_errors
def scan(
    path: str,
    as_json: bool,
    device: str,
    show_all: bool,
    both_formats: bool,
    no_progress: bool,
    quiet: bool,
    target_dtype: str | None,
    fail_on: frozenset[str],
    max_abs: float | None,
    outlier_factor: float | None,
) -> None:
    """Scan the checkpoint at PATH for NaN / +Inf / -Inf and unhealthy weights, without loading the model.

    Besides NaN/Inf it finds exploded weights (finite, above --max-abs), outliers
    (a few values 2^10 times above their tensor's bulk: bit flips, silent
    corruption) and all-zero tensors (reported, not failed by default).

    PATH is a .safetensors or PyTorch file, a checkpoint folder (sharded with
    its *.index.json, or weight files), a training run folder of checkpoint-N
    folders (scanned as a timeline, with trainer_state.json's loss/grad_norm),
    or a repo id already in the local Hugging Face / ModelScope cache (never
    downloaded; a local path of the same name wins).

    Exit code 0 means every tensor was read and passes; 1 means non-finite
    values (or, with --target-dtype, overflow risk) were found; 3 means
    something could not be read, so nothing is called clean. For a run folder
    the newest checkpoint decides.

    \b
    Examples:
      nandoctor scan model.safetensors
      nandoctor scan output/checkpoint-300
      nandoctor scan output/                      # a run: timeline, last healthy, first bad
      nandoctor scan ckpt/ --quiet && python serve.py
      nandoctor scan ckpt/ --target-dtype fp16     # will it overflow when served in fp16?
      nandoctor scan Qwen/Qwen-1_8B                # from the local HF / ModelScope cache
      nandoctor scan ckpt/ --json > report.json
    """
    from nandoctor import api
    from nandoctor import verdict as verdicts
    from nandoctor.checkpoint import hubcache, runs

    try:
        verdicts.require_target_for_overflow(fail_on, target_dtype)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        api.health_limits(max_abs, outlier_factor)  # refuse bad limits before any reading
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    resolved, _ = hubcache.resolve(path)
    with byte_progress(enabled=not (no_progress or quiet), description="scanning") as progress:
        if runs.is_run_folder(resolved):
            run = api.scan_run(
                resolved, device=device, target_dtype=target_dtype, progress=progress, both_formats=both_formats,
                max_abs=max_abs, outlier_factor=outlier_factor,
            )
            _emit_run(run, as_json, quiet, fail_on)
            sys.exit(run.exit_code(fail_on))
        report = api.scan(
            path, device=device, target_dtype=target_dtype, progress=progress, both_formats=both_formats,
            max_abs=max_abs, outlier_factor=outlier_factor,
        )
    code = verdicts.exit_code(report, fail_on)
    if as_json:
        from nandoctor.report.json_report import report_to_json

        data = report_to_json(report, fail_on, lazy=True)  # tensors encoded one by one, never all held
        data["gate"] = {"fail_on": sorted(fail_on), "exit_code": code, "passed": code == 0}
        echo_json(data)
    elif quiet:
        from nandoctor.report.rich_report import safe

        click.echo(safe(verdicts.one_line(report, fail_on)))
    else:
        from nandoctor.cli.progress import stdout_console
        from nandoctor.report.overflow_report import render_overflow
        from nandoctor.report.rich_report import render

        console = stdout_console()
        render(report, console, show_all=show_all)
        render_overflow(report, console, show_all=show_all)
    sys.exit(code)


def _emit_run(run: RunReport, as_json: bool, quiet: bool, fail_on: frozenset[str]) -> None:
    from nandoctor import api

    if as_json:
        echo_json(api.to_json(run, fail_on))
    elif quiet:
        from nandoctor.report.rich_report import safe
        from nandoctor.report.run_report import one_line

        click.echo(safe(one_line(run, fail_on)))
    else:
        from nandoctor.cli.progress import stdout_console
        from nandoctor.report.run_report import render

        render(run, stdout_console(), fail_on)
