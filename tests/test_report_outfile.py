"""Report files a user names (`--html FILE`): what FILE is decides how it is written (report/outfile.py).

A FIFO or a character device is written as it is (never replaced by a regular file), a symlink's target is
replaced and the link kept, /dev/stdout is this process's stdout, the temporary file is created exclusively
(a planted symlink at its name is never followed) and a new file has the umask's mode, not 0600."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from nandoctor.report import outfile
from tests.conftest import DEMO_RUN, ROOT, run_cli

BAD = DEMO_RUN / "checkpoint-300"
PAGE = "<html>é report</html>\n"


def char_device(path: Path, minor: int) -> Path:
    """A character device node of the mem driver (1, minor: 3 null, 7 full) in a temporary folder, or skip."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    except OSError as exc:
        pytest.skip(f"cannot make a device node here ({exc.strerror})")
    return path


def only(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def read_fifo(path: Path) -> tuple[threading.Thread, list[bytes]]:
    got: list[bytes] = []

    def reader() -> None:
        with open(path, "rb") as fh:
            got.append(fh.read())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    return thread, got


def test_a_new_file_gets_the_umask_mode_and_no_temporary_file_is_left(tmp_path):
    old = os.umask(0o027)
    try:
        outfile.write_text(tmp_path / "new.html", PAGE)
    finally:
        os.umask(old)
    assert (tmp_path / "new.html").read_text(encoding="utf-8") == PAGE
    assert stat.S_IMODE(os.stat(tmp_path / "new.html").st_mode) == 0o640  # 0o666 & ~0o027, not mkstemp's 0o600
    assert only(tmp_path) == ["new.html"]


def test_a_regular_file_is_replaced_atomically(tmp_path, monkeypatch):
    out = tmp_path / "r.html"
    out.write_text("previous")
    before = os.stat(out).st_ino
    outfile.write_text(out, PAGE)
    assert out.read_text(encoding="utf-8") == PAGE and os.stat(out).st_ino != before  # a new file renamed over it

    def no_space(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outfile.os, "replace", no_space)
    with pytest.raises(OSError, match="No space left"):
        outfile.write_text(out, "other")
    assert out.read_text(encoding="utf-8") == PAGE and only(tmp_path) == ["r.html"]  # the temporary file removed


def test_a_symlink_keeps_being_a_link_and_its_target_is_replaced(tmp_path):
    (tmp_path / "d").mkdir()
    target = tmp_path / "d" / "real.html"
    target.write_text("previous")
    (tmp_path / "link.html").symlink_to(target)
    outfile.write_text(tmp_path / "link.html", PAGE)
    assert (tmp_path / "link.html").is_symlink() and target.read_text(encoding="utf-8") == PAGE
    assert only(tmp_path / "d") == ["real.html"]
    (tmp_path / "dangling.html").symlink_to(tmp_path / "d" / "made.html")  # as `>` does: the target is created
    outfile.write_text(tmp_path / "dangling.html", PAGE)
    assert (tmp_path / "dangling.html").is_symlink()
    assert (tmp_path / "d" / "made.html").read_text(encoding="utf-8") == PAGE


def test_a_fifo_is_written_into_never_replaced(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    thread, got = read_fifo(fifo)
    outfile.write_text(fifo, PAGE)
    thread.join(10)
    assert got == [PAGE.encode()] and stat.S_ISFIFO(os.lstat(fifo).st_mode) and only(tmp_path) == ["fifo"]


def test_character_devices_are_written_into_never_replaced(tmp_path):
    null = char_device(tmp_path / "null", 3)
    full = char_device(tmp_path / "full", 7)
    outfile.write_text(null, PAGE)
    with pytest.raises(OSError) as raised:
        outfile.write_text(full, PAGE)  # /dev/full refuses every write: the error, and the node stays
    assert raised.value.errno == errno.ENOSPC
    for node in (null, full):
        assert stat.S_ISCHR(os.lstat(node).st_mode)
    assert only(tmp_path) == ["full", "null"]


def test_a_symlink_planted_at_the_temporary_name_is_never_followed(tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / ".r.html.nandoctor-planted.tmp").symlink_to(victim)
    names = iter(["planted", "fresh"])
    monkeypatch.setattr(outfile.secrets, "token_hex", lambda n: next(names))
    outfile.write_text(tmp_path / "r.html", PAGE)
    assert victim.read_text() == "keep me" and (tmp_path / "r.html").read_text(encoding="utf-8") == PAGE
    assert (tmp_path / ".r.html.nandoctor-planted.tmp").is_symlink()
    assert only(tmp_path) == [".r.html.nandoctor-planted.tmp", "r.html", "victim"]


def scan_to(out: Path, html: str) -> subprocess.CompletedProcess[bytes]:
    """`nandoctor scan BAD --quiet --html HTML >> out`, in a process of its own (its own stdout)."""
    with open(out, "ab") as fh:
        return subprocess.run([sys.executable, "-m", "nandoctor", "scan", str(BAD), "--quiet", "--no-progress",
                               "--html", html], stdout=fh, stderr=subprocess.PIPE, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)


def test_a_link_to_proc_self_fd_1_is_the_commands_stdout_in_order(tmp_path):
    """`--html LINK >> log`, LINK -> /proc/self/fd/1 as /dev/stdout is (and a link through a linked fd folder, as
    /dev/fd/1 is): the page then the one line are appended; the log is neither replaced nor overwritten. (The
    links are made here: a test never writes to /dev.)"""
    log = tmp_path / "log"
    log.write_text("earlier line\n")
    inode = os.stat(log).st_ino
    (tmp_path / "stdout").symlink_to("/proc/self/fd/1")
    (tmp_path / "fd").symlink_to("/proc/self/fd")
    (tmp_path / "fd1").symlink_to(tmp_path / "fd" / "1")
    for html in ("stdout", "fd1"):
        done = scan_to(log, str(tmp_path / html))
        assert done.returncode == 1, done.stderr
    text = log.read_text(encoding="utf-8")
    first, second, third = text.split("</html>\n")  # page, line + page, line
    assert first.startswith("earlier line\n<!DOCTYPE html>")
    line = third.splitlines()
    assert len(line) == 1 and line[0].startswith("FAIL NON-FINITE") and second.startswith(line[0] + "\n<!DOCTYPE html>")
    assert os.stat(log).st_ino == inode and (tmp_path / "stdout").is_symlink() and (tmp_path / "fd1").is_symlink()


def test_scan_and_merge_html_into_a_fifo_and_a_full_device(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    thread, got = read_fifo(fifo)
    assert run_cli("scan", BAD, "--no-progress", "-q", "--html", fifo).exit_code == 1
    thread.join(10)
    assert got[0].startswith(b"<!DOCTYPE html>") and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    parts = []
    for i in range(2):
        parts.append(tmp_path / f"p{i}.json")
        parts[-1].write_text(run_cli("scan", BAD, "--part", f"{i}/2", "--json").stdout)
    full = char_device(tmp_path / "full", 7)
    merged = run_cli("merge", *parts, "-q", "--html", full)
    assert merged.exit_code == 3 and f"{full}: cannot write the HTML report (No space left on device)" in merged.stderr
    assert merged.stdout.startswith("FAIL NON-FINITE") and stat.S_ISCHR(os.lstat(full).st_mode)
