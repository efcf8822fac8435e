"""NanDoctorCallback with a real transformers Trainer on a tiny GPT-2 built from a config (no download).

A second callback of the test plants a NaN into a parameter mid-run; the doctor must
catch the checkpoint saved after it, write its verdict, stop (when asked), and keep
the newest clean checkpoint through save_total_limit rotation.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

import nandoctor  # noqa: E402
from nandoctor.integrations.transformers import NanDoctorCallback  # noqa: E402

PLANT_AT = 5  # after optimizer step 5: checkpoint-2 and -4 are clean, checkpoint-6 is not


class PlantNaN(TrainerCallback):
    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == PLANT_AT:
            with torch.no_grad():
                model.transformer.h[1].mlp.c_fc.weight[0, 0] = float("nan")


class Tokens(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict:
        ids = torch.arange(16) % 7 + i % 3
        return {"input_ids": ids, "labels": ids.clone()}


def make_trainer(tmp_path: Path, doctor: NanDoctorCallback, **overrides) -> Trainer:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    options = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=6,
        save_steps=2,
        save_total_limit=2,
        logging_steps=1,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    options.update(overrides)
    return Trainer(
        model=GPT2LMHeadModel(config),
        args=TrainingArguments(**options),
        train_dataset=Tokens(),
        eval_dataset=Tokens() if options.get("eval_strategy", "no") != "no" else None,
        callbacks=[PlantNaN(), doctor],
    )


def verdict(folder: Path) -> dict:
    return json.loads((folder / "nandoctor.json").read_text())


def test_stops_at_the_first_bad_checkpoint_and_keeps_the_last_clean(tmp_path, caplog):
    doctor = NanDoctorCallback(stop_on_nonfinite=True)
    trainer = make_trainer(tmp_path, doctor, max_steps=20)
    with caplog.at_level(logging.INFO, logger="nandoctor"):
        trainer.train()
    out = tmp_path / "out"
    assert trainer.state.global_step == 6 and doctor.stopped_at == 6  # not 20
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    clean, bad = verdict(out / "checkpoint-4"), verdict(out / "checkpoint-6")
    assert clean["gate"]["passed"] and clean["summary"]["verdict"] == "CLEAN"
    assert not bad["gate"]["passed"] and bad["summary"]["exit_code"] == 1
    # The planted NaN is found (the next optimizer step spreads it: at least this tensor is bad).
    bad_names = {t["name"] for t in bad["tensors"] if t["nan"] + t["posinf"] + t["neginf"]}
    assert "transformer.h.1.mlp.c_fc.weight" in bad_names
    assert doctor.last_clean == str(out / "checkpoint-4") and doctor.first_bad == str(out / "checkpoint-6")
    assert any("stopping training at step 6" in r.getMessage() for r in caplog.records)
    assert any("PASS CLEAN" in r.getMessage() and "checkpoint-2" in r.getMessage() for r in caplog.records)
    # The saved run reads as a timeline, too.
    run = nandoctor.scan_run(str(out))
    assert run.last_clean.name == "checkpoint-4" and run.first_bad.name == "checkpoint-6"
    assert run.log is not None and run.log.suspicious_step is not None and run.log.suspicious_step <= 6


def test_rotation_never_deletes_the_newest_clean_checkpoint(tmp_path):
    # Without stopping, bad checkpoints 6, 8, 10, 12 follow; save_total_limit=2 alone would keep only 10 and 12.
    doctor = NanDoctorCallback(stop_on_nonfinite=False)
    trainer = make_trainer(tmp_path, doctor, max_steps=12)
    trainer.train()
    out = tmp_path / "out"
    assert trainer.state.global_step == 12
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-4"]
    assert verdict(out / "checkpoint-4")["gate"]["passed"]
    assert sorted(doctor.reports) == [2, 4, 6, 8, 10, 12]
    assert all(doctor.reports[s].nonfinite for s in (6, 8, 10, 12))


def test_save_total_limit_one_keeps_the_clean_checkpoint_and_the_failed_newest(tmp_path):
    """Trainer's end-of-training clean-up keeps only best_model_checkpoint (the clean one). A trial: the failed
    newest went with it, and the run's scan, a gate after training, then passed a run the callback had stopped
    (PASS CLEAN, first bad: none). It is kept beside the resume point, the record that the run broke."""
    doctor = NanDoctorCallback(stop_on_nonfinite=True)
    make_trainer(tmp_path, doctor, max_steps=20, save_total_limit=1).train()
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    run = nandoctor.scan_run(str(out))
    assert run.exit_code() == 1 and run.last_healthy.name == "checkpoint-4" and run.first_bad.name == "checkpoint-6"


@pytest.mark.parametrize("stop", [True, False])
def test_resuming_from_a_checkpoint_that_failed_is_refused_or_said(tmp_path, caplog, stop):
    """A trial: resume_from_checkpoint=True after the callback stopped the run takes the newest checkpoint, the one
    that failed, and trained on from its NaN weights until the next save, saying nothing."""
    make_trainer(tmp_path, NanDoctorCallback(stop_on_nonfinite=True), max_steps=20).train()
    out = tmp_path / "out"
    assert not verdict(out / "checkpoint-6")["gate"]["passed"]
    trainer = make_trainer(tmp_path, NanDoctorCallback(stop_on_nonfinite=stop), max_steps=8)
    trainer.callback_handler.callbacks = [c for c in trainer.callback_handler.callbacks if not isinstance(c, PlantNaN)]
    said = f"resume from the last clean one instead: trainer.train(resume_from_checkpoint={str(out / 'checkpoint-4')!r})"
    if stop:
        with pytest.raises(nandoctor.NonFiniteWeightsError) as caught:
            trainer.train(resume_from_checkpoint=True)
        assert str(out / "checkpoint-6") in caught.value.message and said in caught.value.message
        assert trainer.state.global_step == 6  # (not one step from the bad weights)
    else:
        with caplog.at_level(logging.ERROR, logger="nandoctor"):
            trainer.train(resume_from_checkpoint=True)
        assert any(said in r.getMessage() for r in caplog.records)


def test_rotation_with_a_tracked_best_metric_keeps_both(tmp_path):
    # The user's best (by a metric that favours an early checkpoint) owns best_model_checkpoint;
    # the doctor then raises save_total_limit just enough, and restores it at the end.
    doctor = NanDoctorCallback(stop_on_nonfinite=False)
    trainer = make_trainer(
        tmp_path, doctor, max_steps=10, eval_strategy="steps", eval_steps=2,
        metric_for_best_model="eval_loss", greater_is_better=True,  # the highest loss: checkpoint-2
    )
    trainer.train()
    out = tmp_path / "out"
    names = sorted(p.name for p in out.glob("checkpoint-*"))
    assert Path(trainer.state.best_model_checkpoint).name == "checkpoint-2"
    assert "checkpoint-2" in names and "checkpoint-4" in names and "checkpoint-10" in names
    assert trainer.args.save_total_limit == 2


def test_a_scan_error_is_logged_and_training_goes_on(tmp_path, caplog, monkeypatch):
    doctor = NanDoctorCallback(stop_on_nonfinite=True)

    def broken(folder):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(doctor, "_scan", broken)
    trainer = make_trainer(tmp_path, doctor, max_steps=4)
    with caplog.at_level(logging.ERROR, logger="nandoctor"):
        trainer.train()
    assert trainer.state.global_step == 4
    assert any("disk on fire" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "out" / "checkpoint-4" / "nandoctor.json").exists()


def test_resumed_run_finds_the_last_clean_checkpoint_from_disk(tmp_path):
    first = NanDoctorCallback()
    make_trainer(tmp_path, first, max_steps=4).train()
    again = NanDoctorCallback()
    trainer = make_trainer(tmp_path, again, max_steps=4)
    again.on_train_begin(trainer.args, trainer.state, trainer.control)
    assert again.last_clean == str(tmp_path / "out" / "checkpoint-4")
    assert trainer.state.best_model_checkpoint == str(tmp_path / "out" / "checkpoint-4")


def test_attribute_access_from_the_top_package():
    assert nandoctor.integrations.transformers.NanDoctorCallback is NanDoctorCallback


def test_a_long_bad_streak_with_a_tracked_best_keeps_at_most_one_more(tmp_path, caplog):
    # metric_for_best_model: the user's best owns best_model_checkpoint. Bad saves 6..16 must not grow
    # the kept set (it once went 2 -> 8, five of seven kept checkpoints NaN): newest + best + last clean.
    doctor = NanDoctorCallback(stop_on_nonfinite=False)
    trainer = make_trainer(
        tmp_path, doctor, max_steps=16, eval_strategy="steps", eval_steps=2,
        metric_for_best_model="eval_loss", greater_is_better=False,
    )
    with caplog.at_level(logging.INFO, logger="nandoctor"):
        trainer.train()
    out = tmp_path / "out"
    names = sorted(p.name for p in out.glob("checkpoint-*"))
    assert "checkpoint-4" in names and "checkpoint-16" in names and len(names) <= 3, names
    assert verdict(out / "checkpoint-4")["gate"]["passed"]
    assert trainer.args.save_total_limit == 2
    # clean saves say nothing alarming: no warning before the first bad checkpoint
    first_bad = next(i for i, r in enumerate(caplog.records)  # (or the live weights' check at the NaN logged)
                     if "checkpoint-6" in r.getMessage() or "weights hold NaN/Inf" in r.getMessage())
    assert not [r.getMessage() for r in caplog.records[:first_bad] if r.levelno >= logging.WARNING]


def _failed_run_and_a_resumer(tmp_path: Path, stop: bool = True) -> tuple[Path, Trainer]:
    make_trainer(tmp_path, NanDoctorCallback(stop_on_nonfinite=True), max_steps=20).train()
    trainer = make_trainer(tmp_path, NanDoctorCallback(stop_on_nonfinite=stop), max_steps=8)
    trainer.callback_handler.callbacks = [c for c in trainer.callback_handler.callbacks if not isinstance(c, PlantNaN)]
    return tmp_path / "out", trainer


def test_resuming_from_a_repaired_copy_at_the_failed_step_is_not_refused(tmp_path, caplog):
    """A review: the refusal read output_dir/checkpoint-<step>'s verdict whatever folder Trainer loaded, and refused
    a repaired copy resumed by its own path. What was loaded decides."""
    out, trainer = _failed_run_and_a_resumer(tmp_path)
    fixed = tmp_path / "checkpoint-6-fixed"
    result = nandoctor.repair(out / "checkpoint-6", out / "checkpoint-4", fixed, allow_diverged=True)
    assert result.verification is not None and result.verification.verdict == "CLEAN" and (fixed / "optimizer.pt").exists()
    with caplog.at_level(logging.WARNING, logger="nandoctor"):
        trainer.train(resume_from_checkpoint=str(fixed))
    assert trainer.state.global_step == 8
    assert any("the weights and optimizer state loaded pass it" in r.getMessage() for r in caplog.records)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # (the oracle: trained on, finite)


def test_resuming_healthy_weights_with_the_failed_optimizer_state_is_refused(tmp_path):
    """A copy of the failed save with only its weights replaced keeps optimizer.pt, whose moments the NaN step
    filled: one step from it makes the weights NaN again (it passed with a warning, the weights loaded being
    healthy)."""
    import shutil

    out, trainer = _failed_run_and_a_resumer(tmp_path)
    copy = tmp_path / "checkpoint-6-weights-only"
    shutil.copytree(out / "checkpoint-6", copy)
    (copy / "nandoctor.json").unlink()
    shutil.copy(out / "checkpoint-4" / "model.safetensors", copy / "model.safetensors")
    with pytest.raises(nandoctor.NonFiniteWeightsError) as caught:
        trainer.train(resume_from_checkpoint=str(copy))
    assert "optimizer or scheduler state holding NaN/Inf (optimizer.state." in caught.value.message
    assert trainer.state.global_step == 6
    # the oracle: what refusing spares (one step from that state, without the callback)
    again = make_trainer(tmp_path, NanDoctorCallback(), max_steps=7)
    again.callback_handler.callbacks = [c for c in again.callback_handler.callbacks
                                        if not isinstance(c, (PlantNaN, NanDoctorCallback))]
    again.train(resume_from_checkpoint=str(copy))
    assert not all(torch.isfinite(p).all() for p in again.model.parameters())


def test_resuming_nan_weights_saved_without_the_callback_is_refused_naming_the_last_passing_one(tmp_path):
    """A run saved without the callback (no nandoctor.json: adding nandoctor later), its newest checkpoint holding
    NaN weights, resumed with it: a trial trained on from the NaN weights (only the optimizer was checked), then
    stopped saying "last clean checkpoint: none" while checkpoint-4 passes. Refused before the first step, naming
    the newest earlier checkpoint that passes a scan now."""
    plain = make_trainer(tmp_path, NanDoctorCallback(), max_steps=6, save_total_limit=None)
    plain.callback_handler.callbacks = [c for c in plain.callback_handler.callbacks if not isinstance(c, NanDoctorCallback)]
    plain.train()  # PlantNaN makes step 6's weights NaN
    out = tmp_path / "out"
    assert not list(out.glob("checkpoint-*/nandoctor.json"))
    assert nandoctor.scan(out / "checkpoint-6").exit_code == 1 and nandoctor.scan(out / "checkpoint-4").exit_code == 0
    trainer = make_trainer(tmp_path, NanDoctorCallback(stop_on_nonfinite=True), max_steps=8, save_total_limit=None)
    trainer.callback_handler.callbacks = [c for c in trainer.callback_handler.callbacks if not isinstance(c, PlantNaN)]
    with pytest.raises(nandoctor.NonFiniteWeightsError) as caught:
        trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 6  # not one step trained from them
    assert "resuming at step 6 with weights that fail nandoctor's check (transformer.wte.weight, " in caught.value.message
    assert f"trainer.train(resume_from_checkpoint={str(out / 'checkpoint-4')!r})" in caught.value.message
    # the oracle: that resume works and trains on to finite weights
    again = make_trainer(tmp_path, NanDoctorCallback(stop_on_nonfinite=True), max_steps=8, save_total_limit=None)
    again.callback_handler.callbacks = [c for c in again.callback_handler.callbacks if not isinstance(c, PlantNaN)]
    again.train(resume_from_checkpoint=str(out / "checkpoint-4"))
    assert again.state.global_step == 8 and all(torch.isfinite(p).all() for p in again.model.parameters())


@pytest.mark.parametrize("stop", [True, False])
def test_resuming_a_nan_learning_rate_is_refused_whatever_the_folder(tmp_path, caplog, stop):
    """A checkpoint whose only fault is a NaN learning rate in optimizer.pt (its weights healthy), saved by a run
    without the callback (no nandoctor.json), resumed with it: the first step would make every weight NaN."""
    clean = make_trainer(tmp_path, NanDoctorCallback(), max_steps=4)
    clean.callback_handler.callbacks = [c for c in clean.callback_handler.callbacks
                                        if not isinstance(c, (PlantNaN, NanDoctorCallback))]
    clean.train()
    folder = tmp_path / "out" / "checkpoint-4"
    assert not (folder / "nandoctor.json").exists()
    saved = torch.load(folder / "optimizer.pt", weights_only=True)
    for group in saved["param_groups"]:
        group["lr"] = float("nan")
    torch.save(saved, folder / "optimizer.pt")
    scheduler = torch.load(folder / "scheduler.pt", weights_only=True)
    scheduler["_last_lr"] = [float("nan")] * len(scheduler["_last_lr"])
    torch.save(scheduler, folder / "scheduler.pt")
    assert nandoctor.scan(str(folder)).verdict != "CLEAN"  # (the file scan's verdict, which the live check matches)
    trainer = make_trainer(tmp_path, NanDoctorCallback(stop_on_nonfinite=stop), max_steps=6)
    trainer.callback_handler.callbacks = [c for c in trainer.callback_handler.callbacks if not isinstance(c, PlantNaN)]
    if stop:
        with pytest.raises(nandoctor.NonFiniteWeightsError) as caught:
            trainer.train(resume_from_checkpoint=str(folder))
        assert "optimizer.param_groups.0.lr" in caught.value.message
        assert trainer.state.global_step == 4
    else:
        with caplog.at_level(logging.ERROR, logger="nandoctor"):
            trainer.train(resume_from_checkpoint=str(folder))
        said = [r.getMessage() for r in caplog.records if "optimizer or scheduler state holding NaN/Inf" in r.getMessage()]
        assert said and "optimizer.param_groups.0.lr" in said[0]


def test_resuming_from_a_checkpoint_that_is_no_resume_point_is_said(tmp_path, caplog):
    """A review: a checkpoint the callback marked resume_point: false (saved from a loss jump's weights) was resumed
    silently by resume_from_checkpoint=True."""
    trainer = make_trainer(tmp_path, NanDoctorCallback(), max_steps=4)
    trainer.callback_handler.callbacks = [c for c in trainer.callback_handler.callbacks if not isinstance(c, PlantNaN)]
    trainer.train()
    report = tmp_path / "out" / "checkpoint-4" / "nandoctor.json"
    report.write_text(json.dumps({**verdict(report.parent), "resume_point": False, "resume_point_why": "a loss jump"}))
    again = make_trainer(tmp_path, NanDoctorCallback(), max_steps=6)
    again.callback_handler.callbacks = [c for c in again.callback_handler.callbacks if not isinstance(c, PlantNaN)]
    with caplog.at_level(logging.ERROR, logger="nandoctor"):
        again.train(resume_from_checkpoint=True)
    assert any("which is no resume point (a loss jump)" in r.getMessage() for r in caplog.records)


def test_a_live_stop_whose_save_the_save_strategy_skipped_is_said_at_the_end(tmp_path, caplog):
    """A review: with save_strategy="best" Trainer decides the save itself (a NaN eval loss is no best), so the
    stop's save is lost and the run would look finished on its last clean checkpoint: said at train end."""
    doctor = NanDoctorCallback(stop_on_nonfinite=True)
    trainer = make_trainer(tmp_path, doctor, max_steps=12, save_strategy="best", eval_strategy="steps", eval_steps=1,
                           metric_for_best_model="eval_loss", save_total_limit=None)
    with caplog.at_level(logging.ERROR, logger="nandoctor"):
        trainer.train()
    assert doctor.stopped_at is not None and doctor.stopped_at == doctor.nonfinite_weights_at
    assert not (tmp_path / "out" / f"checkpoint-{doctor.stopped_at}").exists()
    assert any("no checkpoint of that state was saved (save_strategy best)" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("stop", [True, False])
def test_a_nan_logged_before_any_save_is_checked_on_the_live_weights(tmp_path, caplog, stop):
    """A trial: grad_norm was NaN in the log from the step after the planted NaN, and with a save interval of 100
    the run trained on NaN weights until the next save. The live weights are checked at the first NaN logged, as
    the Lightning callback does; with stop_on_nonfinite the run stops there."""
    doctor = NanDoctorCallback(stop_on_nonfinite=stop)
    trainer = make_trainer(tmp_path, doctor, max_steps=12, save_steps=100)
    with caplog.at_level(logging.WARNING, logger="nandoctor"):
        trainer.train()
    logged = [h["step"] for h in trainer.state.log_history
              if any(isinstance(h.get(k), float) and h[k] != h[k] for k in ("loss", "grad_norm"))]
    assert logged and doctor.nonfinite_weights_at == logged[0]
    assert trainer.state.global_step == (logged[0] if stop else 12)
    assert any("the model's weights hold NaN/Inf" in r.getMessage() for r in caplog.records)
    if stop:  # the broken state saved and failed: the run's scan (a gate after training) fails as the callback did
        out = tmp_path / "out"
        assert not verdict(out / f"checkpoint-{logged[0]}")["gate"]["passed"]
        assert nandoctor.scan_run(str(out)).exit_code() == 1


class BlowUp(TrainerCallback):
    """After optimizer step 5, every weight scaled by 1,000: finite, and far past the run's first checkpoints."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == PLANT_AT:
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.mul_(1000.0)


def test_resuming_diverged_finite_weights_is_refused(tmp_path):
    """A helper's real run: a checkpoint whose weights grew 128x (finite) was resumed with
    resume_from_checkpoint=True, the callback checking the weights alone, without the run: it trained on at a loss
    of 32 and stopped again, "last clean checkpoint: none". The weights loaded are judged within the run now."""
    plain = make_trainer(tmp_path, NanDoctorCallback(), max_steps=6, save_total_limit=None)
    plain.callback_handler.callbacks = [BlowUp()] + [c for c in plain.callback_handler.callbacks
                                                     if not isinstance(c, (NanDoctorCallback, PlantNaN))]
    plain.train()
    out = tmp_path / "out"
    assert nandoctor.scan(out / "checkpoint-6").health == "diverged"  # (within its run)
    trainer = make_trainer(tmp_path, NanDoctorCallback(stop_on_nonfinite=True), max_steps=8, save_total_limit=None)
    trainer.callback_handler.callbacks = [c for c in trainer.callback_handler.callbacks if not isinstance(c, PlantNaN)]
    with pytest.raises(nandoctor.NonFiniteWeightsError) as caught:
        trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 6
    assert "every weight, diverged: the bulk of" in caught.value.message
    assert f"trainer.train(resume_from_checkpoint={str(out / 'checkpoint-4')!r})" in caught.value.message
