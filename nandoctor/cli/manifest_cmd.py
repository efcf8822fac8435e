"""`nandoctor manifest PATH`: sha256 of every weight file and storage span, as JSON, for --verify-hashes."""

from __future__ import annotations

import click

from nandoctor.cli.common import USER_PATH, debug_option, echo_json, handles_errors


@click.command()
@click.argument("path", type=USER_PATH)
@debug_option
@handles_errors
def manifest(path: str) -> None:
    """Print a manifest of the checkpoint at PATH: the sha256 of every weight file and of each
    distinct storage span (so a later check names the tensor that changed).

    \b
    Examples:
      nandoctor manifest ckpt/ > manifest.json
      nandoctor scan ckpt/ --verify-hashes --manifest manifest.json
    """
    from nandoctor import api_compare
    from nandoctor.cli.pipes import result_on_stdout

    result_on_stdout()  # (a manifest cut short by a full disk is no manifest: exit 3)
    echo_json(api_compare.manifest(path))
