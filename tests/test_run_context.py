"""A checkpoint of a run judged within its run: the `next:` line never suggests a repair that must fail.

Findings of a new-user trial: `--from auto` suggested where auto finds no donor (a run with no healthy
checkpoint; a lone step-N folder), a logged step at a checkpoint's own step placed "between" it and the
one before, and a repaired Lightning step file never mentioned by the run view.
"""

from __future__ import annotations

import shutil

import pytest

import nandoctor
from nandoctor.checkpoint import runs
from nandoctor.hints import NO_AUTO_DONOR, repair_command
from nandoctor.report.run_report import _where, next_steps

from .conftest import DEMO_RUN
from .conftest import run_cli as run


def test_a_run_without_a_healthy_checkpoint_never_suggests_from_auto(run_dir):
    for name in ("checkpoint-100", "checkpoint-200"):
        shutil.rmtree(run_dir / name)
        shutil.copytree(run_dir / "checkpoint-300", run_dir / name)
    timeline = nandoctor.scan_run(str(run_dir))
    assert timeline.last_healthy is None
    assert not any("--from auto" in line for line in next_steps(timeline))
    assert any(NO_AUTO_DONOR in line for line in next_steps(timeline))
    alone = nandoctor.scan(str(run_dir / "checkpoint-300"))
    assert alone.extra["run"]["auto"] is False and "--from auto" not in repair_command(alone)
    refused = run("repair", str(run_dir / "checkpoint-300"), "--from", "auto", "--out", str(run_dir / "x"))
    assert refused.exit_code == 3 and "found no healthy checkpoint before step 300" in refused.output


def test_a_lone_step_folder_names_its_own_naming_and_no_auto(tmp_path):
    lone = tmp_path / "step-100"
    shutil.copytree(DEMO_RUN / "checkpoint-300", lone)
    report = nandoctor.scan(str(lone))
    assert report.health == "poisoned" and report.extra["run"]["auto"] is False
    assert "--from auto" not in repair_command(report) and NO_AUTO_DONOR in repair_command(report)
    refused = run("repair", str(lone), "--from", "auto", "--out", str(tmp_path / "x"))
    assert refused.exit_code == 3 and "found no step-N before step 100" in refused.output
    assert "checkpoint-N" not in refused.output


def test_a_healthy_earlier_checkpoint_keeps_from_auto(run_dir):
    report = nandoctor.scan(str(run_dir / "checkpoint-300"))
    assert report.extra["run"]["auto"] is True and report.extra["run"]["baseline"].endswith("checkpoint-100")
    assert "--from auto" in repair_command(report) and report.health == "poisoned"


def test_a_logged_step_at_a_checkpoints_own_step_is_at_it():
    timeline = nandoctor.scan_run(str(DEMO_RUN))
    assert _where(timeline, 300) == " (at checkpoint-300)"
    assert _where(timeline, 260) == " (between checkpoint-200 and checkpoint-300)"


def test_a_verified_repair_of_a_lightning_step_file_is_named_by_the_run_view(tmp_path):
    torch = pytest.importorskip("torch")
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for step in (8, 16, 24, 32):
        weights = {f"layers.{i}.weight": torch.ones(64, 64) * (1 + i) for i in range(8)}
        if step == 32:
            weights["layers.3.weight"][0, 0] = float("nan")  # one bad tensor of eight: poisoned, repairable
        torch.save({"state_dict": weights, "global_step": step}, folder / f"epoch=0-step={step}.ckpt")
    target = folder / "epoch=0-step=32.ckpt"
    hint = next_steps(nandoctor.scan_run(str(folder)))
    line = next(x.strip() for x in hint if x.strip().startswith("nandoctor repair"))
    assert "--from auto" in line and f"--out {folder}/epoch=0-step=32-repaired" in line
    assert run("repair", str(target), "--from", "auto", "--out", str(folder / "epoch=0-step=32-repaired")).exit_code == 0
    assert runs.is_run_folder(folder)
    hint = next_steps(nandoctor.scan_run(str(folder)))
    assert any("epoch=0-step=32-repaired is a verified repair of epoch=0-step=32.ckpt" in x for x in hint), hint
    assert any(f"mv {folder}/epoch=0-step=32-repaired/epoch=0-step=32.ckpt {target}" in x for x in hint), hint
