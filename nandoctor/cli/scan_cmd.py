"""`nandoctor scan`: count NaN/Inf per tensor and per layer, as a rich report, one line (--quiet) or JSON.

Also the gate options (--target-dtype, --fail-on), run folders as a timeline, and repo ids
resolved in the local Hugging Face / ModelScope cache.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from nandoctor.checkpoint.selection import Selection, selection
from nandoctor.cli.common import (
    USER_PATH,
    checked_limits,
    debug_option,
    echo_json,
    handles_errors,
    health_limit_options,
)
from nandoctor.cli.emit import check_markdown, emit_scan_and_html, report_on_error, write_html
from nandoctor.cli.progress import byte_progress
from nandoctor.dtypes import TARGET_DTYPE_NAMES, target_dtype_name

if TYPE_CHECKING:
    from nandoctor.checkpoint.runs import RunReport
    from nandoctor.errors import ReportWriteError


def _fail_on(ctx: click.Context, param: click.Parameter, value: str | None) -> frozenset[str]:
    from nandoctor import verdict as verdicts

    try:
        return verdicts.parse_fail_on(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc).removeprefix("fail_on (--fail-on) ")) from None  # click names the option


def _target_dtype(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """fp16, bf16, fp8_e4m3, fp8_e5m2 or none, also as torch and config.json spell them (float16, bfloat16 …)."""
    if value is None or value.strip().lower() == "none":
        return None if value is None else "none"
    name = target_dtype_name(value)
    if name is None:
        raise click.BadParameter(f"{value!r} is not one of {', '.join(TARGET_DTYPE_NAMES)}, none (or float16, "
                                 "bfloat16, float8_e4m3fn, float8_e5m2 as torch spells them)")
    return name


@click.command()
@click.argument("path", type=USER_PATH)
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
    metavar="[" + "|".join((*TARGET_DTYPE_NAMES, "none")) + "]",
    callback=_target_dtype,
    default=None,
    help="Also count finite weights that become Inf/NaN when cast to this dtype (overflow risk). Default: the "
    "dtype config.json makes from_pretrained load the weights in (its dtype/torch_dtype), where they can overflow "
    "it; none: no overflow check. torch's and config.json's spellings are taken too (float16, torch.float16, half).",
)
@click.option(
    "--fail-on",
    "fail_on",
    default="nonfinite,exploded,outlier,zeroed,overflow",
    show_default=True,
    callback=_fail_on,
    metavar="NAMES",
    help="What fails the gate (exit 1): any of nonfinite, exploded, outlier, zeroed, overflow (default: all); a list "
    "replaces it, and what it leaves out is reported, not failed (--fail-on nonfinite,exploded). NaN/Inf fails under any "
    "list; unreadable parts always exit 3.",
)
@health_limit_options
@click.option("--only", "only", multiple=True, metavar="GLOB",
              help="Scan only tensors whose full name matches GLOB (repeatable; e.g. 'state_dict.*').")
@click.option("--exclude", "exclude", multiple=True, metavar="GLOB",
              help="Leave out tensors whose full name matches GLOB (repeatable; e.g. 'callbacks.*'); "
              "they are counted as excluded in the report.")
@click.option("--part", "part", default=None, metavar="I/N",
              help="Scan only part I of N (0-based) and print it as JSON for `nandoctor merge` (Slurm arrays; needs --json).")
@click.option("--distributed", is_flag=True,
              help="Under torchrun or srun: each rank scans its share, rank 0 prints the one report.")
@click.option("--rank-timeout", type=click.FloatRange(min=1), default=300.0, show_default=True, metavar="SECONDS",
              help="With --distributed: seconds to wait for a rank before calling it hung (exit 3).")
@click.option("--verify-hashes", is_flag=True,
              help="Also check weight files against their sha256 known offline (HF cache blob names, "
              "nandoctor-repair.json, --manifest); a mismatch exits 3, and so does a checkpoint with no "
              "recorded sha256 at all (nothing verified).")
@click.option("--manifest", type=USER_PATH, default=None,
              help="A manifest from `nandoctor manifest` to verify against (implies --verify-hashes).")
@click.option("--html", "html_path", type=click.Path(path_type=str), default=None,
              help="Also write a self-contained HTML report to this file (docs/reports.md).")
@click.option("--markdown", is_flag=True,
              help="Print a GitHub-flavoured Markdown summary instead of the console report (for CI summaries).")
@debug_option
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
    only: tuple[str, ...],
    exclude: tuple[str, ...],
    part: str | None,
    distributed: bool,
    rank_timeout: float,
    verify_hashes: bool = False,
    manifest: str | None = None,
    html_path: str | None = None,
    markdown: bool = False,
) -> None:
    """Scan the checkpoint at PATH for NaN / +Inf / -Inf and unhealthy weights, without loading the model.

    Besides NaN/Inf it finds exploded weights (finite, above --max-abs), outliers
    (a few values 2^10 times above their tensor's bulk: bit flips, silent
    corruption) and all-zero weights where they break the model.

    PATH is a .safetensors, PyTorch or GGUF file, a checkpoint folder (sharded
    with its *.index.json, or weight files; a torch.distributed.checkpoint or
    DeepSpeed folder too), a training run folder of checkpoint-N
    folders, Lightning ...step=N....ckpt files or a loop's step_N.pt saves
    (scanned as a timeline, with
    trainer_state.json's or metrics.csv's loss/grad_norm),
    or a repo id already in the local Hugging Face / ModelScope cache (never
    downloaded; a local path of the same name wins).

    Exit code 0 means every tensor was read and passes; 1 means a finding that
    fails the gate (--fail-on): NaN/Inf, exploded, outlier or zeroed weights, or
    overflow risk (--target-dtype, by default the dtype config.json loads the
    weights in); 3 means something could not be read, so
    nothing is called clean, or the folder would not load (NOT LOADABLE, BAD
    CONFIG, HASH MISMATCH). For a run folder the newest checkpoint decides,
    or the final model and a Lightning last.ckpt where the run has them.

    \b
    Examples:
      nandoctor scan model.safetensors
      nandoctor scan output/checkpoint-300
      nandoctor scan output/                      # a run: timeline, last healthy, first bad
      nandoctor scan ckpt/ --quiet && python serve.py
      nandoctor scan ckpt/ --target-dtype fp16     # will it overflow when served in fp16?
      nandoctor scan Qwen/Qwen-1_8B                # from the local HF / ModelScope cache
      nandoctor scan ckpt/ --json > report.json
      nandoctor scan output/ --markdown --html report.html >> "$GITHUB_STEP_SUMMARY"
    """
    from nandoctor import api
    from nandoctor.errors import NandoctorError

    check_markdown(markdown, as_json, quiet)
    try:  # (config.json's dtype is a target too: checked against the path, which exists by now)
        api.require_some_target(path, fail_on, target_dtype)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    except (NandoctorError, OSError):
        pass  # the path's own problem: the scan below reports it
    checked_limits(max_abs, outlier_factor)  # refuse bad limits before any reading
    try:
        chosen = selection(only, exclude)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    options = ScanOptions(device, target_dtype, both_formats, max_abs, outlier_factor, chosen)
    with report_on_error(path, quiet, as_json, markdown, fail_on):
        _scan(path, options, as_json=as_json, show_all=show_all, no_progress=no_progress, quiet=quiet, fail_on=fail_on,
              verify_hashes=verify_hashes, manifest=manifest, html_path=html_path, markdown=markdown,
              part=part, distributed=distributed, rank_timeout=rank_timeout)


@dataclass(frozen=True)
class ScanOptions:
    """What decides how each checkpoint is read and judged (the rest only chooses the output)."""

    device: str
    target_dtype: str | None
    both_formats: bool
    max_abs: float | None
    outlier_factor: float | None
    selection: Selection | None

    def kwargs(self) -> dict[str, Any]:
        chosen = self.selection
        return {
            "device": self.device, "target_dtype": self.target_dtype, "both_formats": self.both_formats,
            "max_abs": self.max_abs, "outlier_factor": self.outlier_factor,
            "only": chosen.only if chosen else None, "exclude": chosen.exclude if chosen else None,
        }


def _scan(
    path: str, options: ScanOptions, *, as_json: bool, show_all: bool, no_progress: bool, quiet: bool,
    fail_on: frozenset[str], verify_hashes: bool = False, manifest: str | None = None,
    html_path: str | None = None, markdown: bool = False,
    part: str | None = None, distributed: bool = False, rank_timeout: float = 300.0,
) -> None:
    from nandoctor import api
    from nandoctor.checkpoint import hubcache, runs

    resolved, _ = hubcache.resolve(path)
    if part is not None or distributed:
        if options.selection is not None:
            raise click.UsageError("--only/--exclude do not combine with --part or --distributed yet")
        if part is not None and (html_path or markdown):
            raise click.UsageError("--part prints a part for `nandoctor merge`: give --html/--markdown to merge")
        from nandoctor.cli.parts_cmd import scan_split

        # every part counts overflow for the same dtype: the one given, or the one config.json implies
        scan_split(path, part, distributed, rank_timeout, options.device, as_json, quiet, show_all, fail_on,
                   options.both_formats, api.scan_target(resolved, options.target_dtype), options.max_abs,
                   options.outlier_factor,
                   verify_hashes, manifest, html_path=html_path, markdown=markdown)
    is_run = runs.is_run_folder(resolved)
    if is_run and (verify_hashes or manifest):
        raise click.UsageError("--verify-hashes takes one checkpoint, not a run folder")
    # The bar is closed (and erased) before anything is printed: a report drawn while it is live
    # gets the bar's lines glued into it on a terminal.
    with byte_progress(enabled=not (no_progress or quiet), description="scanning") as progress:
        if is_run:
            run = api.scan_run(resolved, progress=progress, **options.kwargs())
        else:
            report = api.scan(path, progress=progress, verify_hashes=verify_hashes, manifest=manifest,
                              **options.kwargs())
    if not is_run:
        sys.exit(emit_scan_and_html(report, as_json, quiet, show_all, fail_on, markdown=markdown, html_path=html_path))
    # A report file that cannot be written is an error of the output, not of the checkpoint: the run's own
    # report is still printed (saying the file was not written), then one `error:` line, and the exit is 3.
    not_written = write_html(run, html_path, fail_on)
    _emit_run(run, as_json, quiet, markdown, fail_on, not_written)
    if not_written is not None:
        from nandoctor.cli.common import fail

        fail(not_written.message, not_written.hint, not_written.exit_code)
    sys.exit(run.exit_code(fail_on))


def _emit_run(run: RunReport, as_json: bool, quiet: bool, markdown: bool, fail_on: frozenset[str],
              not_written: ReportWriteError | None = None) -> None:
    from nandoctor import api

    if markdown:
        from nandoctor.report.markdown_report import not_written_section, render_run

        click.echo(render_run(run, fail_on, not_written) + not_written_section(not_written), nl=False)
    elif as_json:
        from nandoctor.report.json_report import with_gate

        echo_json(with_gate(api.to_json(run, fail_on), fail_on, run.exit_code(fail_on), not_written))
    elif quiet:
        from nandoctor.cli.emit import quiet_line
        from nandoctor.report.run_report import one_line
        from nandoctor.report.text import safe

        click.echo(safe(quiet_line(one_line(run, fail_on), not_written)))
    else:
        from nandoctor.cli.progress import stdout_console
        from nandoctor.report.run_report import render

        render(run, stdout_console(), fail_on)
