"""The pre-commit hook (``.pre-commit-hooks.yaml``): ``python -m nandoctor.cli.precommit [ARGS…] FILE…``.

pre-commit runs a hook's entry with the config's ``args:`` first and the staged file names after them,
all as plain arguments. They are told apart here by `nandoctor scan`'s own options: an option that takes
a value takes the next argument with it (``--manifest manifest.json`` stays an option, though
``manifest.json`` is a file too), a flag takes none, and every other argument is a file to scan. A staged
file whose name starts with ``-`` (pre-commit passes root-level names bare: ``-nan.safetensors``,
``--exclude=x.safetensors``) is a file, not an option: an argument that names a file on disk with a
checkpoint's suffix is always one. Each file is scanned on its own with ``scan --quiet --no-progress`` and
the options; the exit code is the worst of them (1: findings; 2: a usage error in the options, or no file
to scan at all; 3: unreadable or refused).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click


def split_arguments(argv: Sequence[str], command: click.Command) -> tuple[list[str], list[str]]:
    """(options with their values, file names) of ``argv``, by ``command``'s options. An unknown ``-x``
    is kept as an option (the scan then says it is no option: exit 2); ``--`` ends the options."""
    takes_value: dict[str, bool] = {}
    for param in command.params:
        if isinstance(param, click.Option):
            for name in (*param.opts, *param.secondary_opts):
                takes_value[name] = not (param.is_flag or param.count)
    options: list[str] = []
    files: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--":
            files += list(args)
        elif arg.startswith("-") and len(arg) > 1 and not _staged_file(arg):
            options.append(arg)
            if "=" not in arg and takes_value.get(arg, False):
                value = next(args, None)
                if value is not None:
                    options.append(value)
        else:
            files.append(arg)
    return options, files


def _staged_file(arg: str) -> bool:
    """Whether ``arg`` names a checkpoint file on disk (what pre-commit passes), whatever it starts with."""
    from nandoctor.checkpoint.layout import weight_suffixes

    return arg.lower().endswith(weight_suffixes()) and os.path.lexists(arg)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as `nandoctor` itself does (nandoctor.cli.main)
    from nandoctor.cli import cli
    from nandoctor.cli.pipes import finished, tolerate_early_close
    from nandoctor.cli.scan_cmd import scan

    tolerate_early_close()  # (as `nandoctor` itself: a full disk or closed pipe never turns a verdict into a bug)

    options, files = split_arguments(sys.argv[1:] if argv is None else argv, scan)
    if not files:  # pre-commit runs the hook only with staged files: none found means none was scanned
        print("nandoctor pre-commit: no file to scan among the arguments "
              f"({' '.join(options) or 'none'}); nothing was checked", file=sys.stderr)
        return 2
    worst = 0
    for file in files:
        try:
            cli.main(["scan", "--quiet", "--no-progress", *options, "--", file], prog_name="nandoctor",
                     standalone_mode=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        worst = max(worst, code)
    return finished(worst)


if __name__ == "__main__":
    sys.exit(main())
