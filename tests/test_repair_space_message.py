"""A repair refused for space names the sizes in units that fit them: a small checkpoint on a nearly full disk
said `needs 0.00 GB but only 0.00 GB are free`."""

from __future__ import annotations

import shutil

import pytest

from nandoctor.errors import RepairRefusedError
from nandoctor.restore import repair, writer
from tests.test_repair_write import make_run


@pytest.mark.parametrize(("free", "shown"), [(700, "700 B"), (5_300, "5.3 KB"), (40_000_000, "40.0 MB")])
def test_the_sizes_in_the_free_space_refusal_never_read_zero(tmp_path, monkeypatch, free, shown):
    target, donor, _, _ = make_run(tmp_path)
    needed = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    assert 1_000 < needed < 1_000_000  # a few KB: 0.00 GB in the old message
    monkeypatch.setattr(writer.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, free))
    with pytest.raises(RepairRefusedError) as refused:
        repair(target, [donor], tmp_path / "out")
    assert refused.value.message == (f"{tmp_path}: the repaired checkpoint needs {needed / 1000:.1f} KB and "
                                     f"67.1 MB to spare, but only {shown} are free")
    assert not (tmp_path / "out").exists()
