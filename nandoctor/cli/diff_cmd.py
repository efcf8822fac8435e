"""`nandoctor diff A B`: compare a checkpoint with a reference, tensor by tensor, as a rich report or JSON."""

from __future__ import annotations

import sys

import click

from nandoctor.cli.common import USER_PATH, debug_option, echo_json, fail, handles_errors, known_error
from nandoctor.cli.progress import byte_progress
from nandoctor.errors import NandoctorError


@click.command()
@click.argument("a", type=USER_PATH)
@click.argument("b", type=USER_PATH)
@click.option("--json", "as_json", is_flag=True, help="Print the diff as JSON on stdout (schema in docs/diff.md).")
@click.option("--all", "show_all", is_flag=True, help="List every differing tensor (and, with --json, identical ones).")
@click.option("--both-formats", is_flag=True, help="In a folder with safetensors and .bin weights, read both.")
@click.option("--only", "only", multiple=True, metavar="GLOB",
              help="Compare only tensors whose full name matches GLOB, on both sides (repeatable; e.g. 'state_dict.*').")
@click.option("--exclude", "exclude", multiple=True, metavar="GLOB",
              help="Leave out tensors whose full name matches GLOB, on both sides (repeatable; e.g. "
              "'optimizer_states*'); they are counted in a note per side.")
@click.option("--no-progress", is_flag=True, help="Never draw a progress bar.")
@debug_option
@handles_errors
def diff(a: str, b: str, as_json: bool, show_all: bool, both_formats: bool, only: tuple[str, ...],
         exclude: tuple[str, ...], no_progress: bool) -> None:
    """Compare checkpoint A with reference B, tensor by tensor, without loading either.

    A and B may be in any formats nandoctor reads (a .safetensors file against
    a .bin, a sharded folder against one file, a merged model against its
    base). Tensors are matched by name (wrapper prefixes such as module. or
    model. stripped, as repair does). Same dtype: bytes are compared, values
    only where bytes differ; another dtype: a tensor whose values are the
    rounding of the other side's is reported as a cast, not a corruption.

    Exit code 0: every common tensor holds the same values and none is missing
    on either side; 1: something differs (a dtype cast counts); 3: something
    could not be read.

    \b
    Examples:
      nandoctor diff model.safetensors pytorch_model.bin
      nandoctor diff merged/ base/ --json > diff.json
      nandoctor diff ckpt/ Qwen/Qwen-1_8B          # against the copy in the local HF cache
      nandoctor diff last.ckpt export/ --exclude 'optimizer_states*' --exclude 'callbacks*'
    """
    from nandoctor import api_compare
    from nandoctor.checkpoint.selection import selection

    try:
        selection(only, exclude)  # an empty glob is a usage error, before anything is read
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        with byte_progress(enabled=not no_progress, description="comparing") as progress:
            report = api_compare.diff(a, b, progress=progress, both_formats=both_formats, only=only, exclude=exclude)
    except (NandoctorError, OSError) as raised:
        error = known_error(raised)
        if error is None or not as_json:
            raise
        from nandoctor.report.diff_json import diff_error_to_json

        side = next((side for side in (a, b) if error.message.startswith(f"{side}: ")), "")
        echo_json(diff_error_to_json(a, b, error.message, error.hint, error.exit_code,  # (never an empty --json file)
                                     error.verdict_word, side))
        fail(error.message, error.hint, error.exit_code)
    if as_json:
        from nandoctor.report.diff_json import diff_to_json

        echo_json(diff_to_json(report, everything=show_all))
    else:
        from nandoctor.cli.progress import stdout_console
        from nandoctor.report.diff_report import render

        render(report, stdout_console(), show_all=show_all)
    sys.exit(report.exit_code)
