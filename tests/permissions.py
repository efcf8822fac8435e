"""Running the real ``nandoctor`` command where file permissions apply.

Root reads everything (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so as root the command runs under
``setpriv --bounding-set=-dac_override,-dac_read_search``, which drops both for it and its children; as
any other user ``chmod`` alone applies. :func:`permissions_apply` checks, by really trying, that a mode
000 file cannot be read that way; the tests skip where it can (no setpriv, a container without the
capability to drop).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _prefix() -> list[str] | None:
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return None if setpriv is None else [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]


@functools.cache
def permissions_apply() -> bool:
    """Whether a mode 000 file is unreadable to a command run through :func:`run_nandoctor`."""
    prefix = _prefix()
    if prefix is None:
        return False
    with tempfile.TemporaryDirectory() as folder:
        secret = Path(folder) / "secret"
        secret.write_text("x")
        secret.chmod(0)
        try:
            probe = subprocess.run([*prefix, sys.executable, "-c", f"open({str(secret)!r}).read()"],
                                   capture_output=True, timeout=60)
        except OSError:
            return False
        finally:
            secret.chmod(0o600)
        return probe.returncode != 0 and b"PermissionError" in probe.stderr


def need_permissions() -> None:
    if not permissions_apply():
        pytest.skip("file permissions do not apply here (root without setpriv, or the capability cannot be dropped)")


def run_nandoctor(*args: object, cwd: Path | None = None, module: str = "nandoctor") -> subprocess.CompletedProcess[str]:
    """``python -m nandoctor ARGS`` (this checkout's) where permissions apply; stdout and stderr as text."""
    prefix = _prefix()
    assert prefix is not None
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NANDOCTOR_NO_PROGRESS": "1"}
    return subprocess.run([*prefix, sys.executable, "-m", module, *(str(a) for a in args)],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=300, stdin=subprocess.DEVNULL)


@contextmanager
def mode(path: Path, bits: int) -> Iterator[Path]:
    """``path`` with permission ``bits`` inside the block, its own mode again after (so tmp_path cleans up)."""
    before = path.stat().st_mode & 0o7777
    path.chmod(bits)
    try:
        yield path
    finally:
        path.chmod(before)


def permission_hint(path: Path | str) -> str:
    """The hint nandoctor gives for ``path`` when the file system denies access to it."""
    import shlex

    return (f"check its permissions and those of the folders above it (ls -ld {shlex.quote(str(path))}), "
            "or run nandoctor as a user who can read it")
