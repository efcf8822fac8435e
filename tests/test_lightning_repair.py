"""Repairing real Lightning runs (tests/realruns.lightning_run): ``--from auto`` among step files,
``--exclude`` of optimizer state, and the run's CSVLogger ``metrics.csv`` as its trainer log."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")


import nandoctor  # noqa: E402
from tests.realruns import POISONED_PARAMETER, lightning_run  # noqa: E402

pytestmark = pytest.mark.integration


from tests.conftest import run_cli as run  # noqa: E402


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory) -> dict[int, Path]:
    # NaN planted after step 6: files 2 and 4 clean, 6 holds the one NaN, 8-12 NaN throughout (Adam moments too)
    files = lightning_run(tmp_path_factory.mktemp("poisoned"), optimizer="adam", learning_rate=0.01, poison_at=6)
    return {int(p.name.split("step=")[1].split(".")[0]): p for p in files}


def _flat(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a loaded .ckpt by its dotted name (as nandoctor names them)."""
    out = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            out[name] = value
        elif isinstance(value, dict):
            out.update(_flat(value, name + "."))
        elif isinstance(value, (list, tuple)):
            out.update(_flat(dict(enumerate(value)), name + "."))
    return out


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().numpy().tobytes()


def test_from_auto_takes_the_healthy_step_files_before_the_first_bad_one(poisoned, tmp_path):
    target, out = poisoned[6], tmp_path / "fixed"
    result = run("repair", target, "--from", "auto", "--out", out, "--json")
    assert result.exit_code == 0, result.output[-3000:]
    proof = json.loads((out / "nandoctor-repair.json").read_text())
    assert [d["step"] for d in proof["donors"]] == [4, 2]  # newest first, never the target's own step
    assert [(r["tensor"], r["donor_step"]) for r in proof["restored"]] == [(f"state_dict.{POISONED_PARAMETER}", 4)]

    repaired = _flat(torch.load(out / target.name, weights_only=True))
    before, donor = (_flat(torch.load(p, weights_only=True)) for p in (target, poisoned[4]))
    assert repaired.keys() == before.keys()
    restored = f"state_dict.{POISONED_PARAMETER}"
    assert torch.isnan(before[restored]).sum() == 1 and _bits(repaired[restored]) == _bits(donor[restored])
    for name, tensor in before.items():  # the rest is the target's, bit for bit (the moments differ from step 4's)
        if name != restored:
            assert _bits(repaired[name]) == _bits(tensor), name
    assert any(_bits(before[n]) != _bits(donor[n]) for n in before if n.startswith("optimizer_states."))


def test_from_auto_never_takes_a_poisoned_file_and_the_clean_first_file_is_already_clean(poisoned, tmp_path):
    # step 12 is NaN throughout (diverged: refused without --allow-diverged); the donors auto picks are the point here
    plan = json.loads(run("repair", poisoned[12], "--from", "auto", "--allow-diverged", "--dry-run", "--json").stdout)
    assert [d["step"] for d in plan["donors"]] == [4, 2] and plan["complete"] is True
    # nothing earlier, nothing to restore: an unchanged verified copy, as with any named donor (it was a refusal)
    first = run("repair", poisoned[2], "--from", "auto", "--out", tmp_path / "x")
    assert first.exit_code == 0 and "ALREADY CLEAN" in first.output, first.output
    assert (tmp_path / "x" / poisoned[2].name).read_bytes() == poisoned[2].read_bytes()


def test_the_run_hint_resumes_from_the_last_healthy_file_when_the_newest_is_nan_throughout(poisoned, tmp_path):
    """The planted NaN spreads through every weight from step 8 on: those files are diverged (docs/health.md),
    so the hint is a resume from step 4, never a repair that would hand back step 4's weights as step 12's."""
    folder = poisoned[2].parent
    text = run("scan", folder).output
    # (consecutive files diverged for one reason are one line: "diverged: epoch=0-step=8.ckpt to epoch=0-step=12.ckpt …")
    assert any(line.startswith("diverged: ") and "epoch=0-step=12.ckpt" in line for line in text.splitlines()), text
    assert f"resume training from the last healthy checkpoint, {poisoned[4]}" in text
    assert "nandoctor repair " not in text
    refused = run("repair", poisoned[12], "--from", "auto", "--out", tmp_path / "fixed")
    assert refused.exit_code == 3 and "diverged" in refused.output and not (tmp_path / "fixed").exists()
    alone = json.loads(run("scan", poisoned[12], "--json").output)
    assert alone["summary"]["health"] == "diverged"


def test_exclude_carries_nan_optimizer_moments_over_byte_identical(poisoned, tmp_path):
    """A donor without optimizer state (the weights of step 4, saved alone): the moments have no donor, so
    only --exclude lets the weights be repaired; the NaN moments come through untouched."""
    target = poisoned[8]
    weights_only = tmp_path / "step4-weights.pt"
    torch.save(torch.load(poisoned[4], weights_only=True)["state_dict"], weights_only)
    refused = run("repair", target, "--from", weights_only, "--allow-diverged", "--dry-run", "--json")
    assert refused.exit_code == 3
    assert {u["tensor"].split(".")[0] for u in json.loads(refused.stdout)["unrestorable"]} == {"optimizer_states"}
    hint = run("repair", target, "--from", weights_only, "--allow-diverged", "--out", tmp_path / "no").output
    assert ("hint: --exclude 'optimizer_states.*' (the optimizer state, carried over as it is; resume with a fresh "
            "optimizer state); or add an earlier clean checkpoint with --from") in " ".join(hint.split())

    out = tmp_path / "fixed"
    result = run("repair", target, "--from", weights_only, "--exclude", "optimizer_states.*", "--allow-diverged",
                 "--out", out)
    assert result.exit_code == 0, result.output[-3000:]
    proof = json.loads((out / "nandoctor-repair.json").read_text())
    moments = [n for n in _flat(torch.load(target, weights_only=True)) if n.startswith("optimizer_states.")]
    assert proof["excluded"] == {"tensors": len(moments), "only": [], "exclude": ["optimizer_states.*"]}
    repaired, before = (_flat(torch.load(p, weights_only=True)) for p in (out / target.name, target))
    donor = torch.load(weights_only, weights_only=True)
    for name in moments:
        assert _bits(repaired[name]) == _bits(before[name]), name
    assert any(torch.isnan(repaired[n]).any() for n in moments)
    for name, tensor in donor.items():
        assert _bits(repaired[f"state_dict.{name}"]) == _bits(tensor), name
    assert proof["diff"]["source"]["only_restored_differ"] is True


def test_metrics_csv_is_the_runs_trainer_log(poisoned):
    timeline = nandoctor.scan_run(str(poisoned[2].parent))
    log = timeline.log
    assert log is not None and log.source.endswith("logs/version_0/metrics.csv")
    assert (log.first_nonfinite_step, log.first_nonfinite_keys, log.last_step) == (6, ("train_loss",), 11)
    by_step = {c.step: c.log for c in timeline.checkpoints}
    # each file gets the rows logged before its save: the loss of step 6 is logged after the step-6 save
    assert by_step[6].last_step == 5 and by_step[6].first_nonfinite_step is None
    assert by_step[8].first_nonfinite_step == 6
    text = run("scan", poisoned[2].parent).output
    assert "trainer log: train_loss NaN/Inf first at step 6 (between epoch=0-step=6.ckpt and epoch=0-step=8.ckpt)" in text
    assert "trainer log broke at step 6" in run("scan", poisoned[2].parent, "-q").output


@pytest.mark.parametrize("last", ["copy", "link"])
def test_repair_of_a_run_folder_whose_last_ckpt_decides_repairs_that_file(tmp_path, last):
    """A Lightning run folder without a final model: its last.ckpt (what ckpt_path="last" resumes) decides, so
    `repair RUN --from auto` repairs it (it refused: "a training run folder, not one checkpoint"); a link's
    step file is what gets repaired. The bad element gets the healthy step file's value, the rest stays."""
    import os
    import shutil

    torch.manual_seed(0)
    base = {f"model.layers.{i}.w": torch.randn(16, 16) * 0.05 for i in range(3)}
    run_dir = tmp_path / "ckpts"
    run_dir.mkdir()
    for step in (100, 200, 300):
        state = {k: v.clone() for k, v in base.items()}
        if step == 300:
            state["model.layers.1.w"][2, 3] = float("nan")
        torch.save({"state_dict": state, "global_step": step, "epoch": 0}, run_dir / f"epoch=0-step={step}.ckpt")
    if last == "copy":
        shutil.copy(run_dir / "epoch=0-step=300.ckpt", run_dir / "last.ckpt")
    else:
        os.symlink("epoch=0-step=300.ckpt", run_dir / "last.ckpt")
    out = tmp_path / "fixed"
    result = run("repair", str(run_dir), "--from", "auto", "--out", str(out))
    assert result.exit_code == 0, result.output
    repaired = out / ("last.ckpt" if last == "copy" else "epoch=0-step=300.ckpt")
    fixed = torch.load(repaired, weights_only=True)["state_dict"]
    assert torch.equal(fixed["model.layers.1.w"], base["model.layers.1.w"])
    assert all(torch.equal(fixed[k], base[k]) for k in base)
    assert nandoctor.scan(str(repaired)).ok


def test_a_failing_runs_next_steps_name_its_other_poisoned_saves(tmp_path):
    """A new user's Lightning run: last.ckpt and epoch=0-step=300.ckpt both poisoned; the next steps said to repair
    last.ckpt, and the step file was named only once that repair was in place. Now both are named at once."""
    from nandoctor.report.run_report import next_steps

    torch.manual_seed(0)
    base = {f"model.layers.{i}.w": torch.randn(16, 16) * 0.05 for i in range(3)}
    run_dir = tmp_path / "ckpts"
    run_dir.mkdir()
    for name, bad in (("epoch=0-step=100.ckpt", None), ("epoch=0-step=200.ckpt", None),
                      ("epoch=0-step=300.ckpt", (2, 3)), ("last.ckpt", (4, 5))):
        state = {k: v.clone() for k, v in base.items()}
        if bad is not None:
            state["model.layers.1.w"][bad] = float("nan")
        torch.save({"state_dict": state, "global_step": int(name.split("=")[-1].split(".")[0]) if "step" in name
                    else 300, "epoch": 0}, run_dir / name)
    report = nandoctor.scan_run(run_dir)
    assert report.exit_code() == 1
    steps = " ".join(next_steps(report))
    assert "last.ckpt" in steps and "also: epoch=0-step=300.ckpt is poisoned: do not load or resume from it" in steps
