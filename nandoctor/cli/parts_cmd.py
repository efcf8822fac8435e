"""A scan split across processes: `nandoctor scan --part I/N`, `--distributed` (torchrun/srun), `nandoctor merge`.

The work is engine/parts.py (plan, scan a part, merge: torch-free) and, for
--distributed only, engine/ranks.py (torch.distributed's store as transport).
The merged report prints exactly as `nandoctor scan` prints a report.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import click

from nandoctor.cli.common import USER_PATH, debug_option, echo_json, fail, handles_errors

if TYPE_CHECKING:
    from nandoctor.engine.parts import Options
    from nandoctor.model import ScanReport


def scan_split(
    path: str, part: str | None, distributed: bool, rank_timeout: float, device: str, as_json: bool, quiet: bool,
    show_all: bool, fail_on: frozenset[str], both_formats: bool, target_dtype: str | None,
    max_abs: float | None, outlier_factor: float | None, verify_hashes: bool = False, manifest: str | None = None,
    *, html_path: str | None = None, markdown: bool = False,
) -> None:
    """`scan --part` or `scan --distributed` of the checkpoint ``path`` names (as given); exits."""
    from nandoctor import api
    from nandoctor.cli.emit import emit_scan_and_html
    from nandoctor.engine.parts import Options, PartSpec, scan_part

    options = Options(both_formats, target_dtype, max_abs, outlier_factor)
    if part is not None and distributed:
        raise click.UsageError("--part and --distributed split the scan two ways; pick one")
    if part is not None and (verify_hashes or manifest):
        raise click.UsageError("--verify-hashes checks whole files, not parts: run `nandoctor scan PATH "
                               "--verify-hashes` once, or use --distributed, whose rank 0 checks them")
    if part is not None:
        if not as_json:
            raise click.UsageError("--part prints a part for `nandoctor merge`: add --json (and redirect it to a file)")
        try:
            spec = PartSpec.parse(part)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--part") from None
    from nandoctor.errors import NandoctorError

    try:  # what a single scan reads: a run cannot be split
        resolved, _ = api.one_checkpoint(path, split="--distributed" if distributed else "--part I/N --json",
                                         launcher="torchrun --nproc_per_node N -m " if distributed else "")
    except NandoctorError:
        from nandoctor.engine.ranks import launcher_rank

        if distributed and launcher_rank() not in (None, 0):
            # rank 0 says why, once, and exits with the code (torchrun: any rank's failure fails the job); another
            # rank failing first would have torchrun stop rank 0 before it said anything
            sys.exit(0)
        raise
    if part is not None:
        data = scan_part(str(resolved), spec, options, device=device)
        data["given"] = path  # merge judges the report as `scan` judges this path (its cache note)
        from nandoctor.cli.pipes import result_on_stdout

        result_on_stdout()  # (a part file cut short by a full disk is no part: exit 3, not merge's error later)
        echo_json(data)
        # exit 3 when this part could not read something (a retry may help), or the checkpoint holds something
        # no part can read (merge will refuse to call it clean too); the verdict is merge's
        unread = data["problems"] or data["checkpoint_problems"]
        if unread:
            first = unread[0]
            from nandoctor.report.text import safe

            click.echo(safe(f"error: part {spec.index}/{spec.count} found {len(unread)} problem(s) (listed in its "
                            f"JSON); the first: {first['path']}: {first['message']}"), err=True)
        sys.exit(3 if unread else 0)
    from nandoctor.engine.ranks import distributed_scan

    def emit(merged: ScanReport) -> int:  # rank 0 judges and prints the one report, before any rank leaves
        report = _as_scan(merged, path, options, device, verify_hashes, manifest)
        code = emit_scan_and_html(report, as_json, quiet, show_all, fail_on, markdown=markdown, html_path=html_path)
        sys.stdout.flush()
        return 3 if report.errors and code != 3 else code

    _leave(distributed_scan(str(resolved), options, device=device, rank_timeout=rank_timeout, emit=emit).exit_code)


def _leave(code: int) -> NoReturn:
    """Exit a rank of a distributed scan once its output is written: flushed, then ``os._exit``. At interpreter
    teardown gloo's C++ threads sometimes abort the process (SIGABRT, "terminate called without an active
    exception"), and a rank whose stdout is a pipe then lost the report it had printed (a test saw torchrun's
    exit 1 and no output). os._exit runs no C++ static destructors; every file the scan wrote is closed by now."""
    from nandoctor.cli.pipes import finished

    sys.stdout.flush()
    code = finished(code)  # (os._exit skips main's ending: what stdout could not take is said here)
    sys.stderr.flush()
    os._exit(code)


def _as_scan(report: ScanReport, path: str, options: Options, device: str = "auto", verify_hashes: bool = False,
             manifest: str | None = None) -> ScanReport:
    """The merged ``report`` finished as `nandoctor scan` finishes the engine's (api.in_context: judged within
    its run, hashes, cache note), so that merge and --distributed give the single scan's report."""
    from nandoctor import api

    how = api.ScanOptions(device, options.both_formats, options.target_dtype, options.max_abs, options.outlier_factor,
                          verify_hashes=verify_hashes, manifest=manifest)
    return api.in_context(report, path, how)


@click.command()
@click.argument("parts", nargs=-1, required=True, type=USER_PATH)
@click.option("--json", "as_json", is_flag=True, help="Print the merged report as JSON (as `scan --json`).")
@click.option("-q", "--quiet", is_flag=True, help="Print one line: verdict, counts, worst layer range.")
@click.option("--all", "show_all", is_flag=True, help="List every bad tensor, not only the worst 40.")
@click.option("--fail-on", "fail_on", default="nonfinite,exploded,outlier,zeroed,overflow", show_default=True, metavar="NAMES",
              help="What fails the gate (exit 1), as for `nandoctor scan` (+NAME adds to the default).")
@click.option("--html", "html_path", type=click.Path(path_type=str), default=None,
              help="Also write a self-contained HTML report to this file (as `scan --html`).")
@click.option("--markdown", is_flag=True,
              help="Print a GitHub-flavoured Markdown summary instead of the console report (as `scan --markdown`).")
@debug_option
@handles_errors
def merge(parts: tuple[str, ...], as_json: bool, quiet: bool, show_all: bool, fail_on: str,
          html_path: str | None = None, markdown: bool = False) -> None:
    """Join the parts of a split scan (`nandoctor scan PATH --part I/N --json > part-I.json`) into one report.

    The report is the one `nandoctor scan PATH` prints, tensor for tensor. Refused
    (exit 3, naming the part): a missing or duplicated part, a part of another
    checkpoint or of another N, or a checkpoint whose files changed since.

    \b
    Example (a Slurm job array of 8):
      nandoctor scan /ckpt/step-1000 --part $SLURM_ARRAY_TASK_ID/8 --json \\
          > part-$SLURM_ARRAY_TASK_ID.json
      nandoctor merge part-*.json
    """
    from nandoctor import verdict as verdicts
    from nandoctor.cli.emit import check_markdown, emit_scan_and_html
    from nandoctor.engine.parts import Options, merge_parts, read_part

    check_markdown(markdown, as_json, quiet)
    try:
        gate = verdicts.parse_fail_on(fail_on)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--fail-on") from None
    from nandoctor.cli.emit import report_on_error

    with report_on_error(" ".join(parts), quiet, as_json, markdown, gate):  # (-q: a FAIL line, as scan's)
        loaded = [(p, read_part(p)) for p in parts]
        report = merge_parts(loaded)
    if not report.tensors and not report.errors:
        fail("the merged parts hold no tensors", "check that the parts come from a scan of a checkpoint")
    first = loaded[0][1]
    report = _as_scan(report, _given(first), Options(**first["options"]))
    sys.exit(emit_scan_and_html(report, as_json, quiet, show_all, gate, markdown=markdown, html_path=html_path))


def _given(part: dict[str, Any]) -> str:
    """The path the part's scan was given (a repo id: its cache note), when it still names the checkpoint scanned."""
    from pathlib import Path

    from nandoctor import api
    from nandoctor.errors import NandoctorError

    given = part.get("given")
    if isinstance(given, str):
        try:
            if api.one_checkpoint(given)[0] == Path(part["target"]):
                return given
        except NandoctorError:
            pass
    return str(part["target"])
