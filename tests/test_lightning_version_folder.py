"""Lightning's default layout, for real: a ``ModelCheckpoint`` without a ``dirpath`` saves into the logger's version
folder (``lightning_logs/version_N/checkpoints/``, beside ``metrics.csv`` and ``hparams.yaml``). The version folder
is the run of those files, its ``metrics.csv`` the trainer log (a trial: it exited 3, ``FAIL UNREADABLE … 1
subfolder(s) hold weights: checkpoints/``, its files healthy); the folders above it name the version folders and
exit 3 as ``NO CHECKPOINT``, never ``UNREADABLE``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("lightning")

import nandoctor  # noqa: E402
from nandoctor.errors import NonFiniteWeightsError  # noqa: E402
from tests.conftest import run_cli as run  # noqa: E402
from tests.realruns import lightning_run  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """Two runs into one project: version_0 clean, one step file kept (Lightning's default save_top_k=1, no
    last.ckpt); version_1 with NaN planted after step 6 (4 clean, 6 holds the one NaN, 8 on NaN throughout) and
    last.ckpt."""
    out = tmp_path_factory.mktemp("project")
    lightning_run(out, logger_folder=True, keep_last=False, save_top_k=1, monitor=None)
    lightning_run(out, logger_folder=True, keep_last=False, poison_at=6, save_last=True, optimizer="adam",
                  learning_rate=0.01)
    return out


def test_a_version_folder_is_the_run_of_its_checkpoints(project):
    version = project / "logs" / "version_1"
    saves = version / "checkpoints"
    run_report = nandoctor.scan_run(version)
    assert [Path(c.path).parent for c in run_report.checkpoints] == [saves] * len(run_report.checkpoints)
    assert [c.step for c in run_report.checkpoints if not c.last] == [2, 4, 6, 8, 10, 12]
    assert run_report.last_healthy.name == "epoch=0-step=4.ckpt"
    assert run_report.first_bad.name == "epoch=0-step=6.ckpt"
    assert any(c.log is not None for c in run_report.checkpoints)  # (metrics.csv beside checkpoints/)
    result = run("scan", version)
    said = " ".join(result.output.split())
    assert result.exit_code == 1, said
    assert f"resume training from the last healthy checkpoint, {saves / 'epoch=0-step=4.ckpt'}" in said, said
    assert "trainer log: train_loss NaN/Inf first at step" in said, said
    data = json.loads(run("scan", version, "--json").stdout)
    assert data["summary"]["exit_code"] == 1 and data["summary"]["checkpoints"] == 7
    assert all(Path(c["path"]).exists() for c in data["run"]["checkpoints"]), data["run"]["checkpoints"]
    with pytest.raises(NonFiniteWeightsError):
        nandoctor.assert_finite(version)


def test_a_version_folders_poisoned_file_repairs_from_auto(project, tmp_path):
    saves = project / "logs" / "version_1" / "checkpoints"
    hinted = " ".join(run("scan", saves / "epoch=0-step=6.ckpt").output.split())
    assert f"nandoctor repair {saves / 'epoch=0-step=6.ckpt'} --from auto" in hinted, hinted
    result = nandoctor.repair(saves / "epoch=0-step=6.ckpt", "auto", tmp_path / "fixed")
    assert result.ok and [Path(d.path).name for d in result.plan.donors][0] == "epoch=0-step=4.ckpt"


def test_a_version_folder_with_one_step_file_is_a_run_of_one(project):
    version = project / "logs" / "version_0"
    files = sorted((version / "checkpoints").iterdir())
    assert [f.name for f in files] == ["epoch=0-step=12.ckpt"]
    assert [c.name for c in nandoctor.scan_run(version).checkpoints] == ["epoch=0-step=12.ckpt"]
    assert run("scan", version, "-q").exit_code == 0
    nandoctor.assert_finite(version)


def test_the_folders_above_name_the_version_folders_not_unreadable(project):
    for where in (project, project / "logs"):
        result = run("scan", where, "-q")
        said = " ".join(result.output.split())
        assert result.exit_code == 3 and said.startswith(f"FAIL NO CHECKPOINT {where}: no checkpoint here"), said
        assert "version_0/, " in said and "are Lightning runs" in said, said
        assert f"nandoctor scan {project / 'logs' / 'version_1'}" in said, said
        data = json.loads(run("scan", where, "--json").stdout)
        assert data["summary"]["verdict"] == "NO CHECKPOINT" and data["summary"]["exit_code"] == 3
