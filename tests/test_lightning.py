"""Lightning, for real: .ckpt files written by a real ``lightning.Trainer`` (tests/realruns.lightning_run).

A clean run passes (the ``kth_value = inf`` sentinel in callback state is no finding); a poisoned file
fails with the model layer as the worst, Adam's NaN moments reported as optimizer state; it is repaired
from a clean file; the folder of ``…step=N….ckpt`` files is a run with a timeline; ``--only/--exclude``;
and the Lightning ``NanDoctorCallback`` scanning each file as it is written, stopping, keeping the last
clean file through ``save_top_k`` rotation.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")


import nandoctor  # noqa: E402
from nandoctor.integrations.lightning import NanDoctorCallback  # noqa: E402
from tests.realruns import POISONED_PARAMETER, lightning_run  # noqa: E402

pytestmark = pytest.mark.integration


from tests.conftest import run_cli as run  # noqa: E402


def by_step(files: list[Path]) -> dict[int, Path]:
    return {int(p.name.split("step=")[1].split(".")[0].split("-")[0]): p for p in files}


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> list[Path]:
    return lightning_run(tmp_path_factory.mktemp("clean"), optimizer="adam", learning_rate=0.01)


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory) -> list[Path]:
    # NaN planted after step 6: files 2 and 4 clean, 6 holds the one NaN, 8-12 NaN throughout (moments too)
    return lightning_run(tmp_path_factory.mktemp("poisoned"), optimizer="adam", learning_rate=0.01, poison_at=6)


def test_clean_lightning_checkpoints_pass_despite_the_inf_sentinel(clean):
    for file in clean:
        result = run("scan", str(file), "--json")
        data = json.loads(result.output)
        assert result.exit_code == 0, result.output[-2000:]
        sentinels = [t for t in data["tensors"] if t["posinf"] and t["role"] == "trainer"]
        assert sentinels, "the unmonitored ModelCheckpoint's kth_value = inf should be in every file"
        assert all(not t["findings"] for t in sentinels)
    assert run("scan", str(clean[-1].parent), "-q").exit_code == 0


def test_poisoned_file_names_the_layer_and_the_optimizer_moments(poisoned):
    files = by_step(poisoned)
    one = run("scan", str(files[6]), "-q")
    assert one.exit_code == 1 and "worst state_dict.net.2" in one.output
    result = run("scan", str(files[8]), "--json")
    assert result.exit_code == 1
    data = json.loads(result.output)
    bad = {t["name"]: t for t in data["tensors"] if "nonfinite" in t["findings"]}
    moments = [n for n, t in bad.items() if t["role"] == "optimizer"]
    assert any(n.endswith("exp_avg") for n in moments) and any(n.endswith("exp_avg_sq") for n in moments)
    assert f"state_dict.{POISONED_PARAMETER}" in bad
    # the one line's "worst" is a model layer, never the optimizer state holding more NaN
    line = run("scan", str(files[8]), "-q").output
    assert "worst state_dict.net." in line and "optimizer_states" not in line.split("worst")[1]


def test_poisoned_lightning_file_repairs_from_a_clean_one(poisoned, tmp_path):
    files = by_step(poisoned)
    out = tmp_path / "repaired"
    result = run("repair", str(files[6]), "--from", str(files[4]), "--out", str(out))
    assert result.exit_code == 0, result.output[-3000:]
    repaired = out / files[6].name
    assert run("scan", str(repaired), "-q").exit_code == 0
    state = torch.load(repaired, weights_only=True)
    weights = state["state_dict"][POISONED_PARAMETER]
    assert torch.isfinite(weights).all()
    donor = torch.load(files[4], weights_only=True)["state_dict"][POISONED_PARAMETER]
    assert weights[0, 0] == donor[0, 0]  # the whole tensor came from the donor, bit for bit
    assert torch.equal(weights, donor)


def test_folder_of_step_files_is_a_run_with_a_timeline(poisoned, clean):
    folder = poisoned[0].parent
    timeline = nandoctor.scan_run(str(folder))
    assert [c.step for c in timeline.checkpoints] == [2, 4, 6, 8, 10, 12]
    assert timeline.last_healthy.name == "epoch=0-step=4.ckpt"
    assert timeline.first_bad.name == "epoch=0-step=6.ckpt"
    result = run("scan", str(folder))
    assert result.exit_code == 1
    assert "last healthy: epoch=0-step=4.ckpt · first bad: epoch=0-step=6.ckpt" in result.output
    # the newest file is NaN throughout (diverged since the rule counts NaN tensors too): resume, not repair
    assert f"resume training from the last healthy checkpoint, {folder}/epoch=0-step=4.ckpt" in result.output
    assert "nandoctor repair " not in result.output
    assert nandoctor.scan_run(str(clean[0].parent)).exit_code() == 0


def test_narrow_terminal_timeline_keeps_checkpoint_names_whole(poisoned):
    from rich.console import Console

    from nandoctor.report.run_report import render

    console = Console(width=80, record=True, force_terminal=True, color_system=None)
    render(nandoctor.scan_run(str(poisoned[0].parent)), console)
    text = console.export_text()
    for file in poisoned:
        assert file.name in text
    assert "epoch=0-step=6.ckpt: bad layers state_dict.net.2" in text
    assert max(len(line) for line in text.splitlines() if "│" in line) <= 80


def test_only_and_exclude_are_counted_never_silent(poisoned):
    file = str(by_step(poisoned)[8])
    result = run("scan", file, "--exclude", "optimizer_states.*", "--json")
    data = json.loads(result.output)
    assert data["excluded"]["exclude"] == ["optimizer_states.*"] and data["excluded"]["tensors"] > 0
    assert not any(t["name"].startswith("optimizer_states.") for t in data["tensors"])
    assert any("left out by --exclude" in n for n in data["notes"])
    line = run("scan", file, "--exclude", "optimizer_states.*", "-q").output
    assert f"{data['excluded']['tensors']} tensors excluded" in line
    only = json.loads(run("scan", file, "--only", "state_dict.net.4.*", "--json").output)
    assert sorted(t["name"] for t in only["tensors"]) == ["state_dict.net.4.bias", "state_dict.net.4.weight"]
    nothing = run("scan", file, "--only", "no.such.*", "-q")
    assert nothing.exit_code == 3 and "leaves none of its" in nothing.output
    # a run honours it for every checkpoint: without the model weights the poisoned files pass
    assert run("scan", str(poisoned[0].parent), "--only", "callbacks.*", "-q").exit_code == 0


def test_diff_against_exported_weights_with_exclude(clean, tmp_path):
    """A .ckpt against the weights exported from it differs only by optimizer and callback state; --exclude
    leaves those out on both sides, counted in a note, and the weights are the same."""
    from safetensors.torch import save_file

    from nandoctor.checkpoint.opener import open_checkpoint

    file = by_step(clean)[12]
    weights = torch.load(file, weights_only=True)["state_dict"]
    save_file({k: v.contiguous() for k, v in weights.items()}, tmp_path / "model.safetensors")
    names = [r.name for r in open_checkpoint(file).refs]
    state = [n for n in names if n.startswith(("optimizer_states.", "callbacks."))]
    assert state and len(names) == len(state) + len(weights)
    whole = nandoctor.diff(file, tmp_path / "model.safetensors")
    assert (whole.verdict, whole.exit_code, whole.counts["only_a"]) == ("DIFFERENT", 1, len(state))
    args = ("diff", str(file), str(tmp_path / "model.safetensors"), "--exclude", "optimizer_states.*",
            "--exclude", "callbacks.*")
    data = json.loads(run(*args, "--json").output)
    assert (data["summary"]["verdict"], data["summary"]["exit_code"]) == ("SAME", 0)
    assert data["summary"]["tensors"] == data["summary"]["counts"]["identical"] == len(weights)
    assert data["notes"].count(f"A: {len(state)} of {len(names)} tensors left out by --exclude 'optimizer_states.*' "
                               "--exclude 'callbacks.*'; not read") == 1
    assert not any(n.startswith("B:") and "left out" in n for n in data["notes"])
    assert run(*args).exit_code == 0
    nothing = run("diff", str(file), str(tmp_path / "model.safetensors"), "--only", "state_dict.*")
    assert nothing.exit_code == 3 and "leaves none of its" in nothing.output  # B has no such name: never SAME
    assert run("diff", str(file), str(file), "--only", "").exit_code == 2


# --------------------------------------------------------------------------- the callback


def test_callback_stops_at_the_first_bad_file_and_keeps_the_verdicts(tmp_path, caplog):
    doctor = NanDoctorCallback(stop_on_nonfinite=True)
    with caplog.at_level(logging.INFO, logger="nandoctor"):
        files = lightning_run(tmp_path, poison_at=6, callbacks=(doctor,), steps=12)
    assert doctor.stopped_at == 6
    assert [p.name for p in files] == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "epoch=0-step=6.ckpt"]
    # both ModelCheckpoints' files are scanned (the second one writes last-step=N.ckpt)
    assert sorted(Path(k).name for k in doctor.reports) == sorted(
        [p.name for p in files] + ["last-step=2.ckpt", "last-step=4.ckpt", "last-step=6.ckpt"])
    assert doctor.last_clean.endswith("step=4.ckpt") and doctor.first_bad.endswith("epoch=0-step=6.ckpt")
    gate = json.loads((files[0].parent / "nandoctor.json").read_text())
    assert gate["last_clean"] == "epoch=0-step=4.ckpt" and gate["first_bad"] == "epoch=0-step=6.ckpt"
    assert gate["checkpoints"]["epoch=0-step=6.ckpt"]["gate"]["passed"] is False
    assert gate["checkpoints"]["epoch=0-step=2.ckpt"]["summary"]["verdict"] == "CLEAN"
    assert sum("stopping training at step 6" in r.getMessage() for r in caplog.records) == 1
    clean_lines = [r for r in caplog.records if "PASS CLEAN" in r.getMessage()]
    assert clean_lines and all(r.levelno == logging.INFO for r in clean_lines)
    assert not any(r.levelno >= logging.WARNING for r in caplog.records if "step=2" in r.getMessage())


def test_callback_keeps_the_last_clean_file_through_rotation(tmp_path):
    # save_top_k=1 with no monitor keeps only the newest file: without the doctor, step=12 alone (NaN)
    doctor = NanDoctorCallback()
    lightning_run(tmp_path, poison_at=6, callbacks=(doctor,), steps=12, save_top_k=1, monitor=None,
                  keep_last=False)
    left = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert left == ["epoch=0-step=12.ckpt", "epoch=0-step=4.ckpt"]
    assert len(doctor.reports) == 6
    gate = json.loads((tmp_path / "checkpoints" / "nandoctor.json").read_text())
    assert sorted(gate["checkpoints"]) == left  # entries of deleted files dropped
    assert run("scan", str(tmp_path / "checkpoints" / "epoch=0-step=4.ckpt"), "-q").exit_code == 0


@pytest.mark.parametrize("save_last", [True, "link", False])
def test_callback_never_keeps_last_ckpt_as_the_clean_file(tmp_path, save_last):
    """``save_last=True`` rewrites ``last.ckpt`` at every save: were it "the newest clean file", the clean
    step file would be rotated away and ``last.ckpt`` overwritten with the NaN state a moment later."""
    doctor = NanDoctorCallback(stop_on_nonfinite=True)
    lightning_run(tmp_path, poison_at=6, callbacks=(doctor,), steps=12, save_top_k=1, monitor=None,
                  keep_last=False, save_last=save_last)
    folder = tmp_path / "checkpoints"
    left = sorted(p.name for p in folder.glob("*.ckpt"))
    assert left == ["epoch=0-step=4.ckpt", "epoch=0-step=6.ckpt"] + (["last.ckpt"] if save_last else [])
    assert doctor.stopped_at == 6
    assert doctor.last_clean == str(folder / "epoch=0-step=4.ckpt")
    assert run("scan", doctor.last_clean, "-q").exit_code == 0
    gate = json.loads((folder / "nandoctor.json").read_text())
    assert gate["last_clean"] == "epoch=0-step=4.ckpt"
    if save_last:  # a real file rewritten at each save (True), or a symlink to the newest file: poisoned either way
        assert run("scan", str(folder / "last.ckpt"), "-q").exit_code == 1
    if save_last is True:
        assert gate["checkpoints"]["last.ckpt"]["rewritten"] is True
        assert gate["checkpoints"]["last.ckpt"]["gate"]["passed"] is False


def test_resuming_from_a_file_that_failed_is_refused_naming_the_last_clean_one(tmp_path):
    """A trial: fit(ckpt_path="last") after the callback stopped the run resumed the NaN last.ckpt and trained
    on from it until the next save, saying nothing."""
    lightning_run(tmp_path, poison_at=6, callbacks=(NanDoctorCallback(stop_on_nonfinite=True),), steps=12,
                  save_top_k=1, monitor=None, keep_last=False, save_last=True)
    folder = tmp_path / "checkpoints"
    with pytest.raises(nandoctor.NonFiniteWeightsError) as caught:
        lightning_run(tmp_path, callbacks=(NanDoctorCallback(stop_on_nonfinite=True),), steps=16, save_top_k=1,
                      monitor=None, keep_last=False, save_last=True, ckpt_path="last")
    assert str(folder / "last.ckpt") in caught.value.message
    assert f"fit(ckpt_path={str(folder / 'epoch=0-step=4.ckpt')!r})" in caught.value.message


def test_resuming_a_nan_file_of_a_run_saved_without_the_callback_is_refused(tmp_path):
    """A run saved without the callback (no nandoctor.json), its step-8 file NaN, resumed with it: the transformers
    trial trained on from NaN weights; the file about to be loaded is scanned, and the newest earlier step file that
    passes is named (step 6 holds the planted NaN too, so step 4)."""
    lightning_run(tmp_path, poison_at=6, steps=8, keep_last=False)
    folder = tmp_path / "checkpoints"
    assert not (folder / "nandoctor.json").exists()
    bad = folder / "epoch=0-step=8.ckpt"
    with pytest.raises(nandoctor.NonFiniteWeightsError) as caught:
        lightning_run(tmp_path, callbacks=(NanDoctorCallback(stop_on_nonfinite=True),), steps=10, keep_last=False,
                      ckpt_path=str(bad))
    assert f"resuming from {bad}, which fails nandoctor's check (FAIL NON-FINITE" in caught.value.message
    assert f"fit(ckpt_path={str(folder / 'epoch=0-step=4.ckpt')!r})" in caught.value.message
    assert not (folder / "epoch=0-step=10.ckpt").exists()  # not one step trained from it
    # a clean file of such a run resumes without a word
    lightning_run(tmp_path, callbacks=(NanDoctorCallback(stop_on_nonfinite=True),), steps=6, keep_last=False,
                  ckpt_path=str(folder / "epoch=0-step=4.ckpt"))


def test_a_failed_file_replaced_by_a_healthy_one_is_resumed(tmp_path):
    """A review: last.ckpt repaired and copied back over the NaN one was still refused by its old verdict."""
    import shutil

    lightning_run(tmp_path, poison_at=6, callbacks=(NanDoctorCallback(stop_on_nonfinite=True),), steps=12,
                  save_top_k=1, monitor=None, keep_last=False, save_last=True)
    folder = tmp_path / "checkpoints"
    (folder / "last.ckpt").unlink()
    shutil.copy(folder / "epoch=0-step=4.ckpt", folder / "last.ckpt")
    lightning_run(tmp_path, callbacks=(NanDoctorCallback(stop_on_nonfinite=True),), steps=8, save_top_k=1,
                  monitor=None, keep_last=False, save_last=True, ckpt_path="last")


def test_callback_without_protection_names_no_deleted_file_as_last_clean(tmp_path):
    doctor = NanDoctorCallback(stop_on_nonfinite=True, protect_last_clean=False)
    lightning_run(tmp_path, poison_at=6, callbacks=(doctor,), steps=12, save_top_k=1, monitor=None,
                  keep_last=False, save_last=True)
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["epoch=0-step=6.ckpt", "last.ckpt"]
    assert doctor.last_clean is None  # step=4 was rotated away, last.ckpt holds step 6
    assert json.loads((folder / "nandoctor.json").read_text())["last_clean"] is None


def test_callback_releases_the_held_file_once_a_newer_one_is_clean(tmp_path):
    doctor = NanDoctorCallback()
    lightning_run(tmp_path, callbacks=(doctor,), steps=8, save_top_k=1, monitor=None, keep_last=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt")) == ["epoch=0-step=8.ckpt"]
    assert doctor.held_back == set()


def test_callback_logs_health_figures_to_the_trainers_loggers(tmp_path):
    """The figures of every scanned file reach Lightning's own CSVLogger file, at the save's step."""
    import csv

    from nandoctor import verdict

    doctor = NanDoctorCallback()
    lightning_run(tmp_path, poison_at=6, callbacks=(doctor,), steps=8)
    rows = list(csv.DictReader((tmp_path / "logs" / "version_0" / "metrics.csv").open()))
    logged = {int(r["step"]): r for r in rows if r.get("nandoctor/nonfinite")}
    assert set(logged) == {2, 4, 6, 8}
    for path, report in doctor.reports.items():
        step = int(Path(path).stem.rsplit("step=", 1)[1])
        want = verdict.metrics(report)
        if "last" in Path(path).name:
            continue  # both ModelCheckpoints save at one step; the CSV keeps one row per step
        assert float(logged[step]["nandoctor/nonfinite"]) == want["nandoctor/nonfinite"]
        assert float(logged[step]["nandoctor/bad_tensors"]) == want["nandoctor/bad_tensors"]
    assert float(logged[2]["nandoctor/nonfinite"]) == 0 and float(logged[6]["nandoctor/nonfinite"]) >= 1


def _logged_losses(run_dir: Path) -> dict[int, float]:
    """train_loss by step from Lightning's own CSVLogger file: the loss of the weights saved at that step."""
    import csv

    rows = csv.DictReader((run_dir / "logs" / "version_0" / "metrics.csv").open())
    return {int(r["step"]): float(r["train_loss"]) for r in rows if r.get("train_loss")}


@pytest.mark.parametrize("save_top_k", [1, -1])
def test_callback_moves_last_clean_before_the_loss_jump_and_keeps_that_file(tmp_path, save_top_k):
    """SGD at lr 0.9 diverges geometrically: the loss of the weights at step 2 is already 8x the first one, while
    the weights pass every check until step 5. The file to resume from is the last one saved before the weights
    that made the loss jump (the oracle: Lightning's own logged losses), as the run scan names it; rotation keeps
    it although three clean files were saved after it."""
    doctor = NanDoctorCallback(stop_on_nonfinite=True)
    lightning_run(tmp_path, callbacks=(doctor,), steps=24, every_n_train_steps=1, learning_rate=0.9,
                  keep_last=False, monitor=None, save_top_k=save_top_k)
    folder = tmp_path / "checkpoints"
    losses = _logged_losses(tmp_path)
    jumped = min(s for s, loss in losses.items() if loss >= 4 * losses[0])
    passed = sorted(int(Path(p).stem.rsplit("step=", 1)[1]) for p, r in doctor.reports.items()
                    if r.judgement.exit_code == 0)
    assert doctor.first_bad is not None and passed[-1] > jumped  # clean files were saved after the jump
    oracle = folder / f"epoch=0-step={max(s for s in passed if s < jumped)}.ckpt"
    assert doctor.last_clean == str(oracle) and oracle.is_file()
    assert json.loads((folder / "nandoctor.json").read_text())["last_clean"] == oracle.name
    assert nandoctor.scan_run(str(folder)).last_healthy.path == str(oracle)
    if save_top_k == 1:  # the file before the jump and the newest clean one held back, the failing newest
        newest_clean = folder / f"epoch=0-step={passed[-1]}.ckpt"
        assert sorted(folder.glob("*.ckpt")) == sorted({oracle, newest_clean, folder / Path(doctor.first_bad).name})


def test_a_loss_jump_alone_moves_no_last_clean_but_keeps_the_file_before_it(tmp_path):
    """No file failed: the newest clean file is last_clean (a jump fails nothing), but the one saved before the
    weights that made the jump is held back from rotation in case a later file fails."""
    doctor = NanDoctorCallback()
    lightning_run(tmp_path, callbacks=(doctor,), steps=4, every_n_train_steps=1, learning_rate=0.9,
                  keep_last=False, monitor=None, save_top_k=1)
    folder = tmp_path / "checkpoints"
    assert doctor.first_bad is None and doctor.last_clean == str(folder / "epoch=0-step=4.ckpt")
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["epoch=0-step=1.ckpt", "epoch=0-step=4.ckpt"]


@pytest.mark.parametrize("stop", [True, False])
def test_nan_weights_that_a_loss_monitoring_checkpoint_never_writes_are_caught_live(tmp_path, caplog, stop):
    """ModelCheckpoint(monitor="train_loss", save_top_k=2) ranks a NaN loss worst: once the weights go NaN (after
    step 7) no file is written for the gate to check, and a trial's run trained on NaN weights to its end with
    nothing said. The first non-finite training loss makes the callback check the live weights: NaN there is
    logged as an error and, with stop_on_nonfinite, stops training as a failing file would."""
    doctor = NanDoctorCallback(stop_on_nonfinite=stop)
    with caplog.at_level(logging.INFO, logger="nandoctor"):
        files = lightning_run(tmp_path, poison_at=7, callbacks=(doctor,), steps=16, every_n_train_steps=2,
                              keep_last=False, monitor="train_loss", save_top_k=2)
    stopped = tmp_path / "checkpoints" / f"nandoctor-stopped-step={doctor.nonfinite_weights_at}.ckpt"
    if stop:  # the broken state saved beside the step files and failed: the run's scan fails as the callback did
        assert doctor.first_bad == str(stopped) and nandoctor.scan_run(str(tmp_path / "checkpoints")).exit_code() == 1
        files = [f for f in files if f != stopped]
    else:
        assert doctor.first_bad is None and not stopped.exists()
    assert all(r.judgement.exit_code == 0 for k, r in doctor.reports.items() if k != str(stopped))
    nan_losses = [s for s, loss in _logged_losses(tmp_path).items() if loss != loss]
    assert doctor.nonfinite_loss_at == doctor.nonfinite_weights_at == min(nan_losses)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("model's weights hold NaN/Inf" in m for m in errors)
    assert doctor.last_clean is not None and Path(doctor.last_clean).is_file()
    if stop:
        assert doctor.stopped_at == doctor.nonfinite_weights_at and max(_logged_losses(tmp_path)) <= doctor.stopped_at + 1
    else:
        assert doctor.stopped_at is None and max(_logged_losses(tmp_path)) == 15
    assert files  # the clean files ModelCheckpoint kept


def test_a_stopped_run_fails_its_gate_though_last_ckpt_is_clean(tmp_path):
    """A new-user trial: with save_last=True, last.ckpt (a clean save before the weights broke) decided the run's
    exit code and the gate after training passed a run the callback had stopped. A save newer than last.ckpt
    decides too: the run went on past what a resume loads."""
    doctor = NanDoctorCallback(stop_on_nonfinite=True)
    lightning_run(tmp_path, poison_at=9, callbacks=(doctor,), steps=20, every_n_train_steps=4, keep_last=False,
                  monitor=None, save_top_k=-1, save_last=True)
    folder = tmp_path / "checkpoints"
    stopped = folder / f"nandoctor-stopped-step={doctor.nonfinite_weights_at}.ckpt"
    assert stopped.is_file() and (folder / "last.ckpt").is_file()
    assert nandoctor.scan(str(folder / "last.ckpt")).exit_code == 0  # last.ckpt alone is clean
    scanned = nandoctor.scan_run(str(folder))
    assert scanned.exit_code() == 1 and scanned.decider().name == stopped.name
    quiet = run("scan", "--quiet", folder)
    assert quiet.exit_code == 1 and quiet.output.startswith("FAIL") and stopped.name in quiet.output, quiet.output


def test_saves_after_last_ckpt_decide_only_when_written_after_it(tmp_path):
    """A review: a run resumed from last.ckpt (step 8) into the same folder keeps the abandoned attempt's step 10 and
    12 files, NaN and all; they were written before the last.ckpt a resume loads, and decide nothing (the stopped
    file of the test above was written after it, and decides)."""
    import os

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.manual_seed(0)
    for step in (4, 8, 10, 12):
        weights = torch.nn.Linear(8, 8).state_dict()
        if step > 8:
            weights["weight"][0, 0] = float("nan")
        torch.save({"state_dict": weights, "global_step": step}, folder / f"epoch=0-step={step}.ckpt")
        os.utime(folder / f"epoch=0-step={step}.ckpt", (1_000_000 + step, 1_000_000 + step))
    (folder / "last.ckpt").write_bytes((folder / "epoch=0-step=8.ckpt").read_bytes())
    os.utime(folder / "last.ckpt", (1_000_100, 1_000_100))  # the resumed run's newest save
    assert nandoctor.scan_run(str(folder)).exit_code() == 0
    os.utime(folder / "epoch=0-step=12.ckpt", (1_000_200, 1_000_200))  # written after last.ckpt: the run went on
    assert nandoctor.scan_run(str(folder)).exit_code() == 1


def test_a_bad_batch_first_does_not_hide_nan_weights_later(tmp_path, caplog):
    """A trial's find: after one NaN loss from a bad batch (weights finite: no stop, a warning), weights that went
    NaN later were never checked again and training ran to its end."""
    import lightning

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            if self.global_step == 2:  # a bad batch: the loss is NaN, its gradient is not (weights stay finite)
                loss = loss + float("nan") * loss.detach()
            if self.global_step == 6:  # then the weights go NaN for real
                with torch.no_grad():
                    self.net.weight[0, 0] = float("nan")
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(160, 4), torch.randn(160, 1))
    doctor = NanDoctorCallback(stop_on_nonfinite=True)
    trainer = lightning.Trainer(accelerator="cpu", max_steps=20, callbacks=[doctor], logger=False,
                                enable_checkpointing=False, log_every_n_steps=1, enable_progress_bar=False,
                                enable_model_summary=False)
    with caplog.at_level(logging.INFO, logger="nandoctor"):
        trainer.fit(Module(), torch.utils.data.DataLoader(data, batch_size=8))
    # (planted after step 6's loss was computed: step 7's loss is the first the NaN weights give)
    assert doctor.nonfinite_loss_at == 2 and doctor.nonfinite_weights_at == 7 and doctor.stopped_at == 7
    assert trainer.global_step <= 8  # stopped, not run to step 20
    assert any("while the model's weights are finite" in r.getMessage() for r in caplog.records)
