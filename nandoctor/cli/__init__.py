"""The ``nandoctor`` command: a thin click layer over the Python API.

It parses options, draws progress, turns known errors into one ``error:`` line
plus a hint, and maps outcomes to exit codes (0 clean, 1 non-finite,
2 usage, 3 unreadable/refused). Each command lives in its own module, named in
``COMMANDS``: the group knows every command as soon as this module is imported,
and imports a command's module only when that command runs (or ``--help`` lists it),
so ``nandoctor --help`` stays light.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import os
import sys
from typing import Any

import click

from nandoctor import __version__

# command name -> "module:attribute"; a new command is one line here
COMMANDS: dict[str, str] = {
    "scan": "nandoctor.cli.scan_cmd:scan",
    "repair": "nandoctor.cli.repair_cmd:repair",
    "diff": "nandoctor.cli.diff_cmd:diff",
    "manifest": "nandoctor.cli.manifest_cmd:manifest",
    "merge": "nandoctor.cli.parts_cmd:merge",
}


# The line ``nandoctor --help`` shows for each command, so that listing them imports none of them
# (a test holds each line to the command's own docstring).
SUMMARIES: dict[str, str] = {
    "scan": "Scan a checkpoint, sharded folder, run folder or cached repo id for NaN/Inf and unhealthy weights.",
    "repair": "Restore a checkpoint's bad tensors from earlier, healthy checkpoints into a new folder.",
    "diff": "Compare checkpoint A with reference B, tensor by tensor, without loading either.",
    "merge": "Join the parts of a split scan (scan --part I/N --json) into the one report of the whole scan.",
    "manifest": "Print a manifest of a checkpoint: the sha256 of every weight file and tensor storage.",
}


GATE_WORDS = ("gate", "check", "verify")  # commands a user may try for the yes/no gate: said where it is


class LazyGroup(click.Group):
    """A group whose commands are imported from ``COMMANDS`` when first asked for."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            summary = SUMMARIES.get(name)
            if summary is None:
                command = self.get_command(ctx, name)
                summary = command.get_short_help_str(limit=formatter.width) if command else ""
            rows.append((name, summary))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def invoke(self, ctx: click.Context) -> Any:
        # Ctrl-C while a command is imported or starts, before its own handler (cli.common.handles_errors) is in
        # place: click's standalone mode would print "Aborted!" and exit 1, a scan's "findings fail the gate"
        given = list(ctx.args)  # (the command's own arguments, its name apart: click empties the list as it parses)
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except click.UsageError as exc:
            if "--json" in given:
                _usage_json(exc)
            raise  # (click prints the usage and the error on stderr, exit 2)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        # (the brief's and the README's "gate" is a scan's exit code: a user who types it is told the command)
        if args and args[0] in GATE_WORDS and args[0] not in COMMANDS:
            ctx.fail(f"No such command {args[0]!r}: the gate is a scan's exit code (0: safe to load), e.g. "
                     f"`nandoctor scan PATH --quiet && python serve.py`; in Python, nandoctor.assert_finite(PATH)")
        if args and not args[0].startswith("-") and args[0] not in COMMANDS and args[0] not in self.commands:
            import difflib

            close = difflib.get_close_matches(args[0], list(COMMANDS), n=1)
            if close:
                ctx.fail(f"No such command {args[0]!r}. Did you mean {close[0]!r}?")
        return super().resolve_command(ctx, args)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        self.commands[cmd_name] = command
        return command


def _usage_json(exc: click.UsageError) -> None:
    """The JSON report of a command given --json that stopped at its options (exit 2): ``--json > r.json`` never
    leaves an empty file (an adversarial round's ``scan --json --fail-on bogus`` did)."""
    import json

    from nandoctor.report.json_report import error_to_json
    from nandoctor.verdict import DEFAULT_FAIL_ON, USAGE_WORDS

    # (no target: which argument is the path, an option's value or the path, is what the options did not settle)
    command = exc.ctx.command_path if exc.ctx is not None else "nandoctor"
    hint = f"see {command} --help"
    if exc.ctx is not None and exc.ctx.command.name == "repair":  # (repair's JSON is its plan's shape: docs/repair.md)
        from nandoctor.errors import NandoctorError
        from nandoctor.restore.proof import refusal_json

        error = NandoctorError(exc.format_message(), hint)
        error.exit_code = exc.exit_code
        click.echo(json.dumps({**refusal_json("", (), "tensor", False, error), "source": None}, indent=2))
        return
    click.echo(json.dumps(error_to_json("", exc.format_message(), hint, exc.exit_code, DEFAULT_FAIL_ON,
                                        word=USAGE_WORDS), indent=2))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="nandoctor")
@click.option("--debug", is_flag=True, help="Show tracebacks (also NANDOCTOR_DEBUG=1).")
def cli(debug: bool) -> None:
    """Find, localise and repair NaN/Inf weights in model checkpoints, without loading the model.

    \b
    Exit codes:
      0  every tensor was read and passes (diff: the same values)
      1  findings that fail the gate (--fail-on): NaN/Inf, exploded, outlier
         or zeroed weights, a run's diverged growth, overflow of the dtype
         the model loads in (diff: something differs)
      2  usage error
      3  something could not be read, was corrupt or was refused, or the
         checkpoint would not load (NOT LOADABLE, BAD CONFIG, HASH MISMATCH)
    """


def main() -> None:
    # nandoctor does no linear algebra: without this, numpy's import starts an OpenBLAS thread per core
    # (~50 ms of CPU on every command, measured here). A user's own setting wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # The collector's youngest generation is collected every 700 new objects by default: ~50 times while a
    # command imports its modules, which make almost no garbage (~4 ms of the demo scan, measured). Every
    # 50,000 instead (mypy does likewise); reference counting frees everything else as before, and the
    # scan pauses the collector anyway (engine.gc_paused).
    gc.set_threshold(50_000)
    # At exit, the interpreter's final garbage collections walk and free, one by one, every object the
    # imports made (numpy's, click's, ours), only for the process to return the memory anyway: ~13 ms of
    # the demo scan's ~135, measured. Frozen once the other exit handlers have run (threads joined, logs
    # flushed: atexit runs the later-registered first), they are left alone.
    atexit.register(gc.freeze)
    from nandoctor.cli.pipes import finished, tolerate_early_close

    tolerate_early_close()  # `nandoctor scan CKPT | head`, `> /dev/full`: the exit code stays the verdict's
    try:
        cli(prog_name="nandoctor")
    except KeyboardInterrupt:  # Ctrl-C before a command's own handler is in place (imports, option parsing)
        click.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit as exc:  # (every command ends here: click's standalone mode exits even on success)
        if exc.code is None or isinstance(exc.code, int):
            sys.exit(finished(exc.code or 0))
        raise
