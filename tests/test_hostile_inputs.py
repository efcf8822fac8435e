"""Every hostile input through the real CLI process: verdict, exit code, a clear reason, no traceback,
bounded time and memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.corpus import all_cases

CASES = {case.name: case for case in all_cases()}
MAX_SECONDS = 2.0
MAX_RSS_MB = 256


# The child reports its own peak RSS (VmHWM of its own memory map) at exit: Linux's ru_maxrss of a
# child also counts the parent's RSS at fork/exec, which is large once a test in this session loaded torch.
_PEAK_REPORTER = (
    "import atexit, os, runpy, sys\n"
    "def _peak():\n"
    "    with open('/proc/self/status') as f, open(os.environ['NANDOCTOR_TEST_PEAK_FILE'], 'w') as out:\n"
    "        out.write(next(line for line in f if line.startswith('VmHWM')).split()[1])\n"
    "atexit.register(_peak)\n"
    "sys.argv[0] = 'nandoctor'\n"
    "runpy.run_module('nandoctor', run_name='__main__', alter_sys=True)\n"
)


def run_cli(args: list[str]) -> tuple[int, str, str, float, float]:
    """Run the CLI in a child; return (exit code, stdout, stderr, seconds, its own peak RSS in MB)."""
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile() as peak:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", _PEAK_REPORTER, *args],
            stdout=out, stderr=err, stdin=subprocess.DEVNULL,
            env={**os.environ, "NO_COLOR": "1", "NANDOCTOR_NO_PROGRESS": "1", "NANDOCTOR_TEST_PEAK_FILE": peak.name},
        )
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        reported = open(peak.name).read().strip()
        rss = int(reported) / 1024 if reported else usage.ru_maxrss / 1024
        return os.waitstatus_to_exitcode(status), out.read().decode(), err.read().decode(), seconds, rss


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input(tmp_path, name):
    case = CASES[name]
    target = case.build(tmp_path)
    code, out, err, seconds, rss = run_cli(["scan", str(target)])
    assert code == case.exit_code, (out, err)
    assert "Traceback" not in out + err
    assert seconds < MAX_SECONDS + 1.0  # + interpreter start; the bound is on our work, not Python's
    assert rss < MAX_RSS_MB, f"peak RSS {rss:.0f} MB"
    if err.startswith("error:"):  # a whole-target failure: exactly one error line and one hint
        lines = err.strip().splitlines()
        assert len(lines) <= 2 and case.reason in lines[0]
    else:  # a per-file problem inside a report
        assert "UNREADABLE" in out and case.reason in out


@pytest.mark.parametrize("name", ["st_overlap", "missing_shard", "fifo_shard"])
def test_hostile_input_json(tmp_path, name):
    case = CASES[name]
    target = case.build(tmp_path)
    code, out, err, _, _ = run_cli(["scan", str(target), "--json"])
    assert code == 3
    data = json.loads(out)
    assert data["summary"]["ok"] is False and data["errors"]
    assert any(case.reason in e["message"] for e in data["errors"])
