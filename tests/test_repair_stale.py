"""Stale temporary folders: only a repair that is gone loses its folder, whatever pid namespace it ran in.

A trial ran two repairs into one parent folder, the second in another pid namespace (another container, or a
node on a shared file system): the second's clean-up asked ``os.kill(pid, 0)`` about the first's folder, saw no
such process, and deleted the folder of a repair still being written; the first then failed with "No such file
or directory while writing the repair" and the hint "fix the cause above". Liveness is now the builder's
``flock`` (restore/atomic.py, restore/stale.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nandoctor.errors import RepairFailedError
from nandoctor.restore import atomic, repair, stale
from tests.test_repair_write import make_run, sha_tree

ROOT = Path(__file__).resolve().parent.parent

# Holds an exclusive flock on argv[1] (after writing who holds it, as a builder does), says so, then sleeps.
HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b"holder\\n")
print("locked", flush=True)
time.sleep(600)
"""


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def temps(parent: Path) -> list[Path]:
    """Temporary folders, their lock files and trash: what a repair may leave beside --out."""
    return [p for p in parent.iterdir() if atomic.is_temp(p.name)]


def fake_temp(parent: Path, out_name: str, pid: int) -> Path:
    folder = parent / f".{out_name}.nandoctor-tmp-{pid}-0badc0de"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(os.urandom(4096))
    return folder


def hold(lock: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_a_locked_folder_whose_pid_looks_dead_is_kept_and_removed_once_its_lock_is_free(tmp_path):
    """A builder in another pid namespace: its recorded pid is no process here, but it holds its lock."""
    target, donor, _, _ = make_run(tmp_path / "r")
    other = fake_temp(tmp_path, "fixedA", dead_pid())
    holder = hold(atomic.lock_of(other))
    try:
        before = sha_tree(other)
        result = repair(target, [donor], tmp_path / "fixedB")
        assert result.ok and other.exists() and sha_tree(other) == before  # (was: deleted by pid)
    finally:
        holder.kill()
        holder.wait()
    repair(target, [donor], tmp_path / "fixedC")  # the holder is gone: its lock is free, its folder stale
    assert not other.exists() and temps(tmp_path) == []


def test_a_locked_folder_whose_pid_is_alive_but_not_its_builder_is_judged_by_the_lock(tmp_path):
    """The recorded pid names a live process here (pid reuse, another namespace's numbers) that holds no lock:
    the lock decides, not the pid."""
    target, donor, _, _ = make_run(tmp_path / "r")
    folder = fake_temp(tmp_path, "fixedA", os.getppid())  # alive, and no repair
    atomic.lock_of(folder).write_text("12345 elsewhere\n")  # a builder that is gone: nobody holds it
    repair(target, [donor], tmp_path / "fixedB")
    assert not folder.exists() and temps(tmp_path) == []


def test_lockless_folders_are_removed_only_when_their_pid_is_gone_and_they_have_been_quiet(tmp_path, monkeypatch):
    target, donor, _, _ = make_run(tmp_path / "r")
    recent = fake_temp(tmp_path, "a", dead_pid())  # an earlier version's, written a moment ago
    running = fake_temp(tmp_path, "b", os.getppid())
    repair(target, [donor], tmp_path / "o1")
    assert recent.exists() and running.exists()
    monkeypatch.setattr(stale, "LOCKLESS_QUIET_S", -1.0)  # as if an hour passed
    repair(target, [donor], tmp_path / "o2")
    assert not recent.exists() and running.exists()


def test_clean_up_never_touches_a_folder_renamed_onto_out_meanwhile(tmp_path, monkeypatch):
    """The builder renames its folder onto --out between the clean-up's look and its removal: the clean-up
    only ever removes what it took away from the temporary name itself (a rename to a trash name)."""
    target, donor, _, _ = make_run(tmp_path / "r")
    repair(target, [donor], tmp_path / "done")
    folder = tmp_path / f".done2.nandoctor-tmp-{dead_pid()}-0badc0de"
    shutil.copytree(tmp_path / "done", folder)
    expected = sha_tree(folder)

    def renamed_meanwhile(path: Path) -> bool:
        os.rename(path, tmp_path / "done2")  # the builder's rename onto --out, at the worst moment
        return True  # and the clean-up judges the temporary name stale all the same

    monkeypatch.setattr(stale, "_lockless_stale", renamed_meanwhile)
    assert stale.clean_stale(tmp_path) == []
    assert sha_tree(tmp_path / "done2") == expected and temps(tmp_path) == []


def test_a_temp_folder_removed_under_a_running_repair_is_said_so(tmp_path):
    target, donor, _, _ = make_run(tmp_path / "r")

    def removed(phase: str) -> None:
        if phase == "copied":
            (folder,) = [p for p in temps(tmp_path) if p.is_dir()]
            shutil.rmtree(folder)  # another process's clean-up (an older nandoctor in another container)

    with pytest.raises(RepairFailedError) as raised:
        repair(target, [donor], tmp_path / "out", on_phase=removed)
    assert "temporary folder was removed by another process" in raised.value.message
    assert "nothing was left at" in raised.value.message and "repair again" in (raised.value.hint or "")
    assert not (tmp_path / "out").exists() and temps(tmp_path) == []


def test_a_repair_leaves_no_lock_file_in_its_output_nor_beside_it(tmp_path):
    target, donor, _, _ = make_run(tmp_path / "r")
    out = tmp_path / "out"
    seen = []
    repair(target, [donor], out, on_phase=lambda phase: seen.append(sorted(p.name for p in temps(tmp_path))))
    assert all(len(names) == 2 for names in seen[:-1])  # the folder and its lock, up to the rename
    assert sorted(os.listdir(out)) == sorted([*os.listdir(target), "nandoctor-repair.json"])
    assert temps(tmp_path) == []


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "-p", "-f", "--mount-proc", "true"], capture_output=True)
    return done.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="unshare -p (a new pid namespace) is not permitted here")
def test_a_repair_in_another_pid_namespace_leaves_a_running_repair_alone(tmp_path):
    """The trial's case for real: repair A is paused while writing (slow storage), repair B runs in another
    pid namespace into the same parent folder; A then finishes, verified."""
    target, donor, _, _ = make_run(tmp_path / "r")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "nandoctor", "repair", str(target), "--from", str(donor), "--no-progress"]
    a = subprocess.Popen([*command, "--out", str(tmp_path / "fixedA")], env=env, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not any(p.is_dir() and any(p.iterdir()) for p in temps(tmp_path)):
            assert a.poll() is None and time.monotonic() < deadline, a.communicate()
            time.sleep(0.002)
        os.kill(a.pid, signal.SIGSTOP)
        (building,) = [p for p in temps(tmp_path) if p.is_dir()]
        b = subprocess.run(["unshare", "-p", "-f", "--mount-proc", *command, "--out", str(tmp_path / "fixedB")],
                           env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert b.returncode == 0, b.stdout + b.stderr
        assert building.exists()  # (was: deleted by B, whose namespace does not see A's pid)
    finally:
        os.kill(a.pid, signal.SIGCONT)
    out, err = a.communicate(timeout=120)
    assert a.returncode == 0, out + err
    assert sha_tree(tmp_path / "fixedA").keys() == sha_tree(tmp_path / "fixedB").keys()
    assert temps(tmp_path) == []
