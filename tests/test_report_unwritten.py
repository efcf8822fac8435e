"""A report that stdout (or stderr) cannot take, `> /dev/full`: no nandoctor bug, and the exit code stays the command's.

A repair complete and verified at --out exited 3 with "internal error … report it as a nandoctor bug" when its
one quiet line met a full disk (a tester's), and `scan --json > /dev/full` said the same: exit 3 reads "nothing
left at --out" to a script, and "unreadable" to a gate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import DEMO_RUN, ROOT

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")


def nandoctor(*args: object, stderr_full: bool = False) -> subprocess.CompletedProcess[str]:
    """The real command, its stdout (and with ``stderr_full`` its stderr) on /dev/full: every write fails, ENOSPC."""
    with open("/dev/full", "w") as full:
        return subprocess.run([sys.executable, "-m", "nandoctor", *map(str, args), "--no-progress"], cwd=ROOT,
                              stdout=full, stderr=full if stderr_full else subprocess.PIPE, text=True, timeout=300)


@pytest.mark.parametrize("output", ["-q", "--json", "--all"])
def test_a_complete_repair_whose_report_cannot_be_written_exits_0_saying_where_it_is(tmp_path, output):
    out = tmp_path / "fixed"
    done = nandoctor("repair", DEMO_RUN / "checkpoint-300", "--from", DEMO_RUN / "checkpoint-200", "--out", out, output)
    assert done.returncode == 0, done.stderr
    assert "bug" not in done.stderr and "internal error" not in done.stderr
    assert done.stderr.strip() == (f"the repair is complete: {out} holds it, verified (its nandoctor-repair.json says "
                                   "what was restored); its report could not be written to stdout: No space left on "
                                   "device (ENOSPC)")
    assert json.loads((out / "nandoctor-repair.json").read_text())["verification"]["verdict"] == "CLEAN"
    scanned = subprocess.run([sys.executable, "-m", "nandoctor", "scan", str(out), "-q"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert scanned.returncode == 0, scanned.stdout


def test_a_refused_repair_whose_report_cannot_be_written_still_exits_3(tmp_path):
    out = tmp_path / "fixed"
    out.mkdir()
    refused = nandoctor("repair", DEMO_RUN / "checkpoint-300", "--from", DEMO_RUN / "checkpoint-200", "--out", out,
                        "--json")
    assert refused.returncode == 3
    assert "already exists" in refused.stderr and "the repair is complete" not in refused.stderr
    assert "could not write the report to stdout: No space left on device (ENOSPC)" in refused.stderr


@pytest.mark.parametrize("output", ["--json", "-q", "--all"])
def test_a_scan_whose_report_cannot_be_written_keeps_the_verdict_s_exit_code(output):
    for checkpoint, verdict in (("checkpoint-200", 0), ("checkpoint-300", 1)):
        scanned = nandoctor("scan", DEMO_RUN / checkpoint, output)
        assert scanned.returncode == verdict, scanned.stderr
        assert "bug" not in scanned.stderr and "internal error" not in scanned.stderr
        assert scanned.stderr.startswith("error: could not write the report to stdout: No space left on device "
                                         "(ENOSPC)\nhint: the exit code is still the command's own"), scanned.stderr


def test_a_scan_whose_stderr_is_full_too_keeps_the_verdict_s_exit_code():
    assert nandoctor("scan", DEMO_RUN / "checkpoint-300", "--json", stderr_full=True).returncode == 1
    assert nandoctor("scan", DEMO_RUN / "checkpoint-200", "-q", stderr_full=True).returncode == 0


def test_a_manifest_that_cannot_be_written_is_no_manifest():
    """A manifest is the command's result, not a report of a verdict: cut short, it exits 3, never 0."""
    with open("/dev/full", "w") as full:
        written = subprocess.run([sys.executable, "-m", "nandoctor", "manifest", str(DEMO_RUN / "checkpoint-200")],
                                 cwd=ROOT, stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert written.returncode == 3
    assert written.stderr.startswith("error: could not write the report to stdout: No space left on device")
    assert "the command's result is its output, so this is exit 3" in written.stderr  # (a review: "still its own")
    assert "the exit code is still the command's own" not in written.stderr
