"""Every hostile input through the real CLI process: verdict, exit code, a clear reason naming the file,
no traceback, bounded time and memory, no payload run (marker file) and nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.corpus import MARKER, all_cases

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


def snapshot(folder) -> dict[str, tuple[int, int, int]]:
    """Every path under ``folder`` with its mode, size and mtime (links and FIFOs not followed)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            out[os.path.relpath(path, folder)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def names_file(line: str, target) -> bool:
    """The line names the target, or a file inside it, by its full path."""
    return str(target) in line


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input(tmp_path, name):
    case = CASES[name]
    target = case.build(tmp_path)
    before = snapshot(tmp_path)
    code, out, err, seconds, rss = run_cli(["scan", str(target)])
    assert not (tmp_path / MARKER).exists(), "a payload in the file ran"
    assert snapshot(tmp_path) == before, "scanning wrote to, created or removed a file"
    assert code == case.exit_code, (out, err)
    assert "Traceback" not in out + err
    assert seconds < MAX_SECONDS + 1.0  # + interpreter start; the bound is on our work, not Python's
    assert rss < MAX_RSS_MB, f"peak RSS {rss:.0f} MB"
    if err.startswith("error:"):  # a whole-target failure: exactly one error line and one hint
        lines = err.strip().splitlines()
        assert len(lines) <= 2 and case.reason in lines[0]
        assert names_file(lines[0], target), lines[0]
    else:  # a per-file problem inside a report: one line with the file and the reason
        assert "UNREADABLE" in out
        assert any(case.reason in line and names_file(line, target) for line in out.splitlines()), out


def test_corpus_size():
    """Issue 7's floor: at least 30 safetensors cases and 20 torch cases."""
    assert sum(n.startswith("st_") for n in CASES) >= 30
    assert sum(n.startswith("pt_") for n in CASES) >= 20
    assert sum(CASES[n].payload for n in CASES) >= 15


CONTROL = """
import sys, warnings
import torch
warnings.simplefilter("ignore")
for path in sys.argv[1:]:
    try:
        torch.load(path, weights_only=False)
    except Exception:
        pass
"""


def test_payloads_run_when_loaded_unsafely(tmp_path):
    """The control for the marker checks: torch.load(weights_only=False) does run every payload case's code
    (so the marker's absence after a nandoctor scan means something)."""
    pytest.importorskip("torch")
    folders = {}
    for name in sorted(n for n in CASES if CASES[n].payload):
        folder = tmp_path / name
        folder.mkdir()
        folders[name] = (folder, CASES[name].build(folder))
    subprocess.run([sys.executable, "-c", CONTROL, *(str(t) for _, t in folders.values())],
                   capture_output=True, timeout=300, stdin=subprocess.DEVNULL)
    ran = {name: (folder / MARKER).exists() for name, (folder, _) in folders.items()}
    assert ran == {name: True for name in folders}


@pytest.mark.parametrize("name", ["st_overlap", "missing_shard", "fifo_shard"])
def test_hostile_input_json(tmp_path, name):
    case = CASES[name]
    target = case.build(tmp_path)
    code, out, err, _, _ = run_cli(["scan", str(target), "--json"])
    assert code == 3
    data = json.loads(out)
    assert data["summary"]["ok"] is False and data["errors"]
    assert any(case.reason in e["message"] for e in data["errors"])
