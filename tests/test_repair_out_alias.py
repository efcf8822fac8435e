"""An --out inside the checkpoint being repaired (or inside a donor) is refused however either path reaches it.

A tester's: the source reached through a bind mount (`mount --bind src alias; repair alias --out src/fixed`) was
accepted, and the repair wrote its folder inside the checkpoint it read: the two paths resolve() to different
places. The bind-mount tests need root (and a kernel that lets this container mount); the symlink ones run anywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import DEMO_RUN
from tests.conftest import run_cli as run


@contextmanager
def bind_mounted(folder: Path, alias: Path) -> Iterator[None]:
    """``folder`` also shown at ``alias`` by a bind mount for the block's time; the test skips where none can be made."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a bind mount needs root")
    alias.mkdir()
    made = subprocess.run(["mount", "--bind", str(folder), str(alias)], capture_output=True, text=True, timeout=60)
    if made.returncode != 0:
        pytest.skip(f"mount --bind refused here: {made.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(alias)], check=True, timeout=60)


def copy_run(tmp_path: Path) -> Path:
    shutil.copytree(DEMO_RUN, tmp_path / "run", ignore=shutil.ignore_patterns("expected.json"))
    return tmp_path / "run"


def test_an_out_inside_the_source_reached_through_a_bind_mount_is_refused(tmp_path):
    run_folder = copy_run(tmp_path)
    source, alias = run_folder / "checkpoint-300", tmp_path / "alias"
    with bind_mounted(source, alias):
        before = sorted(os.listdir(source))
        for target, out in ((alias, source / "fixed"), (source, alias / "fixed")):
            refused = run("repair", target, "--from", run_folder / "checkpoint-200", "--out", out, "--no-progress")
            assert refused.exit_code == 3, refused.output
            assert "--out lies inside the checkpoint being repaired" in refused.output
            assert sorted(os.listdir(source)) == before  # nothing written into the checkpoint read


def test_an_out_inside_a_donor_reached_through_a_bind_mount_is_refused(tmp_path):
    run_folder = copy_run(tmp_path)
    donor, alias = run_folder / "checkpoint-200", tmp_path / "alias"
    with bind_mounted(donor, alias):
        refused = run("repair", run_folder / "checkpoint-300", "--from", alias, "--out", donor / "fixed", "--no-progress")
        assert refused.exit_code == 3, refused.output
        assert f"--out lies inside the donor checkpoint {alias}" in " ".join(refused.output.split())
        assert not (donor / "fixed").exists()


def test_an_out_inside_the_source_or_a_donor_reached_through_a_symlink_is_refused(tmp_path):
    run_folder = copy_run(tmp_path)
    (tmp_path / "source-link").symlink_to(run_folder / "checkpoint-300")
    (tmp_path / "donor-link").symlink_to(run_folder / "checkpoint-200")
    refused = run("repair", tmp_path / "source-link", "--from", run_folder / "checkpoint-200",
                  "--out", run_folder / "checkpoint-300" / "fixed", "--no-progress")
    assert refused.exit_code == 3 and "--out lies inside the checkpoint being repaired" in refused.output
    refused = run("repair", run_folder / "checkpoint-300", "--from", run_folder / "checkpoint-200",
                  "--out", tmp_path / "donor-link" / "fixed", "--no-progress")
    assert refused.exit_code == 3 and "--out lies inside the donor checkpoint" in refused.output
