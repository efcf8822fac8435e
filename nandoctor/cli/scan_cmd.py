"""`nandoctor scan`: count NaN/Inf per tensor and per layer, as a rich report or JSON."""

from __future__ import annotations

import json
import os
import sys

import click

from nandoctor.cli import cli, handles_errors
from nandoctor.cli.progress import byte_progress


@cli.command()
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
@handles_errors
def scan(path: str, as_json: bool, device: str, show_all: bool, both_formats: bool, no_progress: bool) -> None:
    """Scan the checkpoint at PATH for NaN / +Inf / -Inf, without loading the model.

    PATH is a .safetensors file, a sharded folder with its *.index.json, or a
    folder of weight files. Exit code 0 means every tensor was read and is
    finite; 1 means non-finite values were found; 3 means something could not
    be read (and so the checkpoint is not called clean).

    \b
    Examples:
      nandoctor scan model.safetensors
      nandoctor scan output/checkpoint-300
      nandoctor scan ckpt/ --json > report.json
    """
    from nandoctor.report.rich_report import render
    from nandoctor.scan import scan as run_scan

    with byte_progress(enabled=not no_progress, description="scanning") as progress:
        report = run_scan(path, device=device, progress=progress, both_formats=both_formats)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        from nandoctor.cli.progress import stdout_console

        render(report, stdout_console(), show_all=show_all)
    sys.exit(report.exit_code)
