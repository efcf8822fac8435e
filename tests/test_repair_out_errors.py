"""What a repair says when --out's folder will not take it: the file system's reason, the fix that fits it (a full
disk is no folder the user may not write to), the JSON error's ``path`` the --out it is about, and the Python API's
words for a missing ``out``.

Tester's findings: ENOSPC creating the lock file read "choose an --out in a folder you can write to"; with --json a
read-only --out's error named the target as its ``path``; ``nandoctor.repair(t, [d])`` said "add --out <new folder>".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nandoctor
from nandoctor.errors import RepairRefusedError
from tests.conftest import DEMO_RUN, ROOT
from tests.permissions import mode, need_permissions, run_nandoctor

TARGET, DONOR = DEMO_RUN / "checkpoint-300", DEMO_RUN / "checkpoint-200"


def _json_error(result: subprocess.CompletedProcess[str]) -> dict:
    assert result.returncode == 3, result.stdout + result.stderr
    errors = json.loads(result.stdout)["errors"]
    assert len(errors) == 1, errors
    return errors[0]


def test_a_disk_out_of_room_for_the_lock_file_says_so_and_names_out(tmp_path: Path) -> None:
    """A tmpfs with no inode left: the space check passes (bytes are free), creating the lock file fails ENOSPC."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    full = tmp_path / "full"
    full.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m,nr_inodes=2", "tmpfs", str(full)],
                          capture_output=True, text=True, timeout=60)
    if made.returncode != 0:
        pytest.skip(f"mount -t tmpfs refused here: {made.stderr.strip()}")
    try:
        (full / "filler").touch()  # (the root folder and this: every inode taken)
        with pytest.raises(OSError):
            (full / "one-more").touch()
        out = full / "fixed"
        error = _json_error(subprocess.run(
            [sys.executable, "-m", "nandoctor", "repair", str(TARGET), "--from", str(DONOR), "--out", str(out), "--json",
             "--no-progress"], capture_output=True, text=True, cwd=ROOT, timeout=300))
        assert error["path"] == str(out)
        assert error["message"].startswith("No space left on device while creating the repair's temporary folder")
        assert error["hint"] == "free some space or choose an --out on another disk"
        assert sorted(os.listdir(full)) == ["filler"]
    finally:
        subprocess.run(["umount", str(full)], check=True, timeout=60)


def test_a_read_only_out_folder_s_json_error_names_out(tmp_path: Path) -> None:
    need_permissions()
    locked = tmp_path / "locked"
    locked.mkdir()
    out = locked / "fixed"
    with mode(locked, 0o555):
        error = _json_error(run_nandoctor("repair", TARGET, "--from", DONOR, "--out", out, "--json"))
    assert error["path"] == str(out), error
    assert error["message"].startswith("Permission denied while creating the repair's temporary folder")
    assert error["hint"] == "choose an --out in a folder you can write to"


def test_every_refused_out_s_json_error_names_the_path_its_message_is_about(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    source = shutil.copytree(TARGET, tmp_path / "checkpoint-300")
    (tmp_path / "a-file").write_text("x")
    for out, about, said in ((source / "fixed", source / "fixed", "--out lies inside the checkpoint being repaired"),
                             (tmp_path / "no" / "fixed", tmp_path / "no", "the folder that should hold --out does not "
                              "exist"),
                             (tmp_path / "a-file" / "fixed", tmp_path / "a-file", "is a file, not a folder"),
                             (DONOR / "fixed", DONOR / "fixed", "--out lies inside the donor checkpoint")):
        result = run_cli("repair", source, "--from", DONOR, "--out", out, "--json", "--no-progress")
        error = json.loads(result.stdout)["errors"][0]
        assert result.exit_code == 3 and error["path"] == str(about) and error["message"].startswith(said), error


def test_the_api_without_out_says_out_not_the_cli_s_option() -> None:
    with pytest.raises(RepairRefusedError) as raised:
        nandoctor.repair(TARGET, [DONOR])
    assert raised.value.hint == "pass out=<new folder> (the CLI's --out), or dry_run=True to see the plan"
