"""Shared test set-up: the repository root on sys.path (for fixtures.builders) and common paths."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FIXTURES = ROOT / "fixtures"
DEMO_RUN = FIXTURES / "demo-run"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop at once, saying how to restore it, where the shipped example was changed: the README's quick start ends
    with next steps that repair it in place (a fresh user followed them, then five tests failed with no word why)."""
    import subprocess

    try:
        changed = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "fixtures"],
                                 capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return  # (no git, or not a checkout: nothing to compare with)
    if changed.returncode == 0 and changed.stdout.strip():
        pytest.exit("fixtures/ differs from the committed example (the quick start's repair and mv change it): "
                    "restore it with `git checkout fixtures && git clean -fd fixtures`, then run the tests again:\n"
                    + changed.stdout, returncode=4)


@pytest.fixture(scope="session", autouse=True)
def _subprocess_temp_dir(tmp_path_factory: pytest.TempPathFactory):
    """Child processes (torchrun's agents above all) make their temp folders under pytest's, which pytest prunes:
    torchrun leaves a torchelastic_* folder in the temp dir at every start."""
    previous = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp_path_factory.mktemp("subprocess-tmp"))
    yield
    if previous is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = previous


@pytest.fixture
def demo_run() -> Path:
    return DEMO_RUN


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A writable copy of the demo run (without its expected answers)."""
    import shutil

    out = tmp_path / "output"
    shutil.copytree(DEMO_RUN, out)
    (out / "expected.json").unlink()
    return out


def require_gloo():
    """torch.distributed, or skip the calling test module where it cannot run a gloo process group here."""
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)
    return dist


def run_cli(*args: object):
    """The one way tests run the ``nandoctor`` command in-process: every argument as a string,
    exceptions not swallowed (an internal error fails the test with its traceback)."""
    from click.testing import CliRunner

    from nandoctor.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def same_report(merged, single) -> None:
    """A merged (split) scan equals the single-process scan: tensor for tensor, verdict and problems."""
    assert merged.tensors == single.tensors  # counts, first index, census, findings
    assert (merged.exit_code, merged.verdict, merged.errors) == (single.exit_code, single.verdict, single.errors)

