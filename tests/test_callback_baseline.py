"""What a training run needs survives checkpoint rotation: the growth baseline (checkpoint/baseline.py) and the
checkpoint to resume from (the transformers callback's own rotation).

A diverging real transformers.Trainer run (tests/realruns.py: a tiny Qwen2's head under SGD with no
clipping, |w| x20-50 a step from step ~12) is trained twice, identically: once keeping every checkpoint,
once with save_total_limit=2. With rotation the first healthy checkpoint is deleted early; measured
against the oldest checkpoint left, every save of a geometric blow-up grows only a little, and the
callback used to pass (and protect) checkpoints the full run calls diverged. The callback now keeps the
first healthy checkpoint's scales in nandoctor-baseline.json, so rotation must not change a verdict.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import nandoctor  # noqa: E402
from nandoctor.checkpoint.baseline import BASELINE_NAME, INITIAL_WEIGHTS, first_loss, read_baseline  # noqa: E402
from nandoctor.integrations.transformers import NanDoctorCallback  # noqa: E402
from tests.realruns import diverging_trainer_run  # noqa: E402

STEPS = 22


def _run(out, limit):
    doctor = NanDoctorCallback(stop_on_nonfinite=False)
    truth = diverging_trainer_run(out, steps=STEPS, callbacks=(doctor,), save_total_limit=limit)
    verdicts = {step: doctor.gate.reports[step].judgement.exit_code == 0 for step in sorted(doctor.gate.reports)}
    return doctor, verdicts, truth


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline")
    return _run(root / "all", None)[:2], _run(root / "rotated", 2)[:2], root


@pytest.mark.parametrize("limit", [None, 2, 1])
def test_the_checkpoint_to_resume_from_survives_rotation(tmp_path, limit):
    """The run's loss jumps one step before its weights fail (the oracle: the loss the next step computed on each
    checkpoint's weights, realruns.py). The newest checkpoint that passed the weight checks is then no resume point,
    and rotation must not have deleted the one before it: the callback protects it while the newest clean one is
    the newest save, and moves last_clean back to it once a checkpoint failed, as the run scan names it."""
    doctor, _, truth = _run(tmp_path / "run", limit)
    run = nandoctor.scan_run(str(tmp_path / "run"))
    oracle = f"checkpoint-{truth['last_healthy']}"
    assert doctor.last_clean is not None and doctor.last_clean.endswith("/" + oracle)
    assert (tmp_path / "run" / oracle).is_dir()
    assert run.last_healthy is not None and run.last_healthy.name == oracle
    kept = sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*"))
    # (the checkpoints that passed after the resume point say they are none: a trial's resumed callback took one)
    after = [json.loads((folder / "nandoctor.json").read_text()) for folder in (tmp_path / "run").glob("checkpoint-*")
             if int(folder.name.split("-")[1]) > truth["last_healthy"]]
    passed_after = [data for data in after if data["gate"]["passed"]]
    assert all(data.get("resume_point") is False and "loss jumped" in data["resume_point_why"] for data in passed_after)
    if limit is None:
        assert passed_after  # (the run does pass weights after its loss jumped: the check means something)
    again = NanDoctorCallback()
    assert again._previous_clean(type("Args", (), {"output_dir": str(tmp_path / "run")})()) == doctor.last_clean
    if limit in (1, 2):  # (limit 1: Trainer's end-of-training clean-up keeps the resume point, and the failed newest
        # is kept beside it, the record that the run broke)
        assert kept == [oracle, f"checkpoint-{STEPS}"]


def test_rotation_changes_no_verdict_of_the_callback(runs):
    (full, full_verdicts), (rotated, rotated_verdicts), _ = runs
    assert len(full_verdicts) == STEPS and full_verdicts == rotated_verdicts
    assert not all(full_verdicts.values())  # the run does go bad: the comparison means something
    # the newest checkpoint that passed is the same one, and it is still on disk in the rotated run
    assert rotated.last_clean is not None and full.last_clean is not None
    assert rotated.last_clean.rsplit("/", 1)[1] == full.last_clean.rsplit("/", 1)[1]
    assert (json.loads(open(rotated.last_clean + "/nandoctor.json").read())["gate"]["passed"])


def test_the_baseline_is_the_initial_weights_and_the_run_scan_uses_it(runs):
    """The callback keeps the weights training starts from (step 0) as the baseline: rotation cannot take them, and
    a run that blows up before its first save grows past the rule against them (the first save was the baseline
    before, and a trial's run, loss 7 to 640 at lr 3, passed every save)."""
    _, _, root = runs
    kept = read_baseline(root / "rotated")
    assert kept is not None and kept.step == 0 and kept.checkpoint == INITIAL_WEIGHTS
    assert kept.first_loss == first_loss(root / "rotated" / f"checkpoint-{STEPS}")  # filled in at the first save
    assert not (root / "rotated" / "checkpoint-1").exists()  # rotation took the first save
    assert "lm_head.weight" in kept.scales
    full_run, rotated_run = nandoctor.scan_run(str(root / "all")), nandoctor.scan_run(str(root / "rotated"))
    full_status = {c.step: c.status for c in full_run.checkpoints}
    for c in rotated_run.checkpoints:  # the checkpoints left are judged as in the full run
        assert c.status == full_status[c.step], (c.step, c.status, full_status[c.step])
    assert any(BASELINE_NAME in note for note in rotated_run.notes)


def test_a_kept_baseline_is_not_used_while_its_checkpoint_or_an_earlier_one_is_on_disk(runs, tmp_path):
    from nandoctor.checkpoint.baseline import RunBaseline, kept_before, write_baseline

    write_baseline(tmp_path, RunBaseline(5, "checkpoint-5", 1.0, {"w": 1.0}))
    assert kept_before(tmp_path, [6, 7]) is not None
    assert kept_before(tmp_path, [5, 6]) is None and kept_before(tmp_path, [3, 9]) is None
    (tmp_path / BASELINE_NAME).write_text('{"format": "nandoctor-baseline/1", "step": "x"}')
    assert read_baseline(tmp_path) is None  # not one this module wrote: ignored, never an error


def test_a_fresh_run_replaces_an_earlier_runs_baseline(tmp_path):
    """A run started again from scratch in the same folder (an earlier run's checkpoints deleted, its baseline left)
    is measured against its own first healthy checkpoint: the callback removes the earlier baseline when training
    starts from step 0 (it kept it when the new run's first save came at a later step, and judged the new run
    against another run's weights)."""
    from nandoctor.checkpoint.baseline import RunBaseline, write_baseline

    out = tmp_path / "run"
    out.mkdir()
    stale = RunBaseline(1, "checkpoint-1", 1.0, {"lm_head.weight": 1e-3, "model.norm.weight": 1e-3}, (1, 123.0))
    write_baseline(out, stale)
    doctor = NanDoctorCallback(stop_on_nonfinite=False)
    diverging_trainer_run(out, steps=4, save_steps=2, learning_rate=1.0, callbacks=(doctor,))
    kept = read_baseline(out)
    assert kept is not None and kept != stale
    assert kept.checkpoint == INITIAL_WEIGHTS and kept.first_loss == first_loss(out / "checkpoint-2")
    assert all(doctor.gate.reports[s].judgement.exit_code == 0 for s in (2, 4))


def test_a_baseline_from_another_run_is_not_used_by_a_scan(tmp_path):
    """Without the callback in the new run nothing replaces the file: the scan tells the runs apart by their first
    logged loss, which every checkpoint's trainer_state.json of one run repeats."""
    from nandoctor.checkpoint.baseline import RunBaseline, first_loss, kept_before, write_baseline

    out = tmp_path / "run"
    diverging_trainer_run(out, steps=4, save_steps=2, learning_rate=1.0)
    ours = first_loss(out / "checkpoint-4")
    assert ours is not None and ours == first_loss(out / "checkpoint-2")
    write_baseline(out, RunBaseline(1, "checkpoint-1", 1.0, {"lm_head.weight": 0.07}, (ours[0], ours[1] + 1.0)))
    assert kept_before(out, [2, 4], out / "checkpoint-4") is None  # another run's
    write_baseline(out, RunBaseline(1, "checkpoint-1", 1.0, {"lm_head.weight": 0.07}, ours))
    assert kept_before(out, [2, 4], out / "checkpoint-4") is not None  # this run's, its checkpoint-1 rotated away


@pytest.fixture(scope="module")
def slow_jump(tmp_path_factory):
    """At lr 14 the loss jumps at step 23 while the weights pass every check until step 24: three clean
    checkpoints are saved from weights that already made the jump. The oracle: the full run (no rotation),
    whose last healthy checkpoint is the last one whose next-step loss did not jump."""
    root = tmp_path_factory.mktemp("slowjump")
    truth = diverging_trainer_run(root / "all", steps=26, learning_rate=14.0)
    return root, truth


@pytest.mark.parametrize("limit", [1, 2])
def test_rotation_keeps_the_checkpoint_before_a_loss_jump_several_saves_back(slow_jump, limit):
    root, truth = slow_jump
    oracle = f"checkpoint-{truth['last_healthy']}"
    healthy_after = [c["step"] for c in truth["checkpoints"] if c["step"] > truth["last_healthy"] and not c["nonfinite"]]
    assert len(healthy_after) >= 2  # clean saves after the resume point: what rotation used to keep instead
    doctor = NanDoctorCallback(stop_on_nonfinite=False)
    diverging_trainer_run(root / f"rotated{limit}", steps=26, learning_rate=14.0, callbacks=(doctor,),
                          save_total_limit=limit)
    assert doctor.first_bad is not None
    assert doctor.last_clean is not None and Path(doctor.last_clean).name == oracle
    assert (root / f"rotated{limit}" / oracle).is_dir()


def _random_tokens() -> torch.utils.data.Dataset:
    class Tokens(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 256

        def __getitem__(self, i: int) -> dict:
            ids = torch.randint(0, 1000, (32,), generator=torch.Generator().manual_seed(i))
            return {"input_ids": ids, "labels": ids.clone()}

    return Tokens()


def test_a_run_whose_loss_rose_is_diverged_against_its_initial_weights(tmp_path):
    """A trial: a tiny Llama at lr 3 (warmed up over 50 steps) without clipping; its loss went from 7 to 640 while every
    weight stayed finite and modest (max |w| 2.9 at the first save, x2-4 a save after), so measured against the first
    save nothing grew past the rule and every gate passed. The callback keeps the weights training starts from, and
    where the trainer log's loss rose, growth since them calls the save diverged. The oracle: each checkpoint's
    loss. (A healthy run's weights may grow as far with a falling loss: a regression head fitting targets in pixels;
    test_a_healthy_run_that_grew_far_from_its_initialisation_passes.)"""
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=1000, max_position_embeddings=128)
    start = LlamaForCausalLM(config)
    data = _random_tokens()
    batch = {key: torch.stack([data[i][key] for i in range(8)]) for key in ("input_ids", "labels")}
    with torch.no_grad():
        initial_loss = start(**batch).loss.item()
    doctor = NanDoctorCallback(stop_on_nonfinite=True)
    args = TrainingArguments(str(tmp_path / "run"), per_device_train_batch_size=8, max_steps=60, save_steps=10,
                             logging_steps=5, learning_rate=3.0, lr_scheduler_type="constant_with_warmup",
                             warmup_steps=50, max_grad_norm=0.0, report_to=[], use_cpu=True, disable_tqdm=True)
    Trainer(model=start, args=args, train_dataset=data, callbacks=[doctor]).train()
    stopped = tmp_path / "run" / f"checkpoint-{doctor.stopped_at}"
    with torch.no_grad():
        loss = LlamaForCausalLM.from_pretrained(stopped)(**batch).loss.item()
    # the oracle: the model scores worse than the untrained one (initial ~6.9; ~13 at checkpoint-20, where its log's
    # loss stood at 1.95x the untrained one and never came below it: baseline.untrained_jump stops it there, it
    # waited for a later save at 5x before)
    assert loss > 1.5 * initial_loss
    assert doctor.stopped_at is not None and doctor.stopped_at < 60 and doctor.first_bad == str(stopped)
    kept = read_baseline(tmp_path / "run")
    assert kept is not None and kept.checkpoint == INITIAL_WEIGHTS and kept.step == 0
    report = nandoctor.scan(stopped)
    assert report.verdict == "DIVERGED" and "since the weights the run started from" in nandoctor.verdict.one_line(report)
    run = nandoctor.scan_run(str(tmp_path / "run"))
    assert run.first_bad is not None and run.first_bad.path == str(stopped)
    assert any("growth is measured against the weights the run started from (step 0)" in note for note in run.notes)
    # without the baseline (a run saved without the callback) the first save is the yardstick: it passes
    (tmp_path / "run" / BASELINE_NAME).unlink()
    assert nandoctor.scan(stopped).verdict == "CLEAN"


def test_a_run_broken_before_its_first_log_is_diverged_against_its_initial_weights(tmp_path):
    """A review: at a constant lr 10 the first logged loss is already ~2,700 (against 6.9 untrained) and wanders
    there, so the log shows no jump; every save passed while the baseline needed one. A loss that never came down to
    half its first value leaves the initial weights the baseline."""
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=1000, max_position_embeddings=128)
    doctor = NanDoctorCallback(stop_on_nonfinite=True)
    args = TrainingArguments(str(tmp_path / "run"), per_device_train_batch_size=8, max_steps=20, save_steps=10,
                             logging_steps=5, learning_rate=10.0, lr_scheduler_type="constant", max_grad_norm=0.0,
                             report_to=[], use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=LlamaForCausalLM(config), args=args, train_dataset=_random_tokens(), callbacks=[doctor])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[0] > 100 and losses[-1] > losses[0] / 2  # (no jump to see, and no fall)
    assert doctor.stopped_at == 10 and doctor.last_clean is None
    assert "since the weights the run started from" in nandoctor.verdict.one_line(nandoctor.scan(tmp_path / "run" / "checkpoint-10"))


def test_a_healthy_run_that_grew_far_from_its_initialisation_passes(tmp_path):
    """A false-alarm hunt: a regression head fitting targets in the hundreds grows its bias thousands of times from
    its initialisation while the loss falls; growth since the initial weights with no loss jump in the log diverges
    nothing (it stopped a healthy Trainer run at its first save, "last clean checkpoint: none")."""
    from transformers import Trainer, TrainingArguments

    class Regression(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Linear(8, 32)

        def forward(self, x, labels=None):
            out = self.head(x)
            return {"loss": torch.nn.functional.mse_loss(out, labels), "logits": out}

    class Points(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 256

        def __getitem__(self, i: int) -> dict:
            x = torch.randn(8, generator=torch.Generator().manual_seed(i))
            return {"x": x, "labels": 500 + 40 * x.repeat(4)}  # (coordinates in pixels)

    torch.manual_seed(0)
    doctor = NanDoctorCallback(stop_on_nonfinite=True)
    args = TrainingArguments(str(tmp_path / "run"), per_device_train_batch_size=16, max_steps=60, save_steps=20,
                             logging_steps=5, learning_rate=1.0, optim="sgd", max_grad_norm=0.0, report_to=[],
                             use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=Regression(), args=args, train_dataset=Points(), callbacks=[doctor])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0] / 10  # the oracle: it learned
    assert trainer.model.head.bias.abs().max() > 16 * 256 * 0.0625  # (grown past the rule from its initialisation)
    assert doctor.stopped_at is None and doctor.first_bad is None
    assert nandoctor.scan_run(str(tmp_path / "run")).exit_code() == 0


def test_the_initial_weights_are_kept_only_where_they_name_every_saved_weight(tmp_path):
    """A PEFT model's parameters are `…lora_A.default.weight` where its adapter file stores `…lora_A.weight`: a
    step-0 baseline of those names compared nothing and hid a LoRA grown 728x (a review). The first save decides:
    the initial weights are the baseline only when they name every floating weight it holds."""
    from safetensors.torch import save_file

    from nandoctor.integrations.gate import CheckpointGate

    for names, kept in ((["weight", "bias"], True), (["lora_A.weight", "bias"], False)):
        run = tmp_path / f"run-{kept}"
        gate = CheckpointGate()
        module = torch.nn.Linear(4, 4)
        gate.keep_initial_baseline([run], module)
        folder = run / "checkpoint-1"
        folder.mkdir(parents=True)
        save_file({name: torch.randn(4, 4) if name != "bias" else torch.randn(4) for name in names},
                  folder / "model.safetensors")
        gate.check(folder, 1)
        found = read_baseline(run)
        assert (found is not None and found.checkpoint == INITIAL_WEIGHTS) == kept, names


def test_a_loss_at_its_noise_floor_fell_and_a_wandering_one_did_not(tmp_path):
    """A false-alarm hunt: a linear probe on noisy targets (mean 150, sd 150) went from 38,748 to 21,136, its noise floor
    (~22,500) above half its first loss: the initial weights became the baseline, and its healthy head, grown 256x to
    predict the mean, was DIVERGED (the callback stopped training). Two thirds counts; a run at lr 10 that wandered
    from 2,711 to 2,434, every checkpoint broken, still did not come down."""
    import json

    from nandoctor.checkpoint.trainlog import read_train_log

    def log(losses):
        path = tmp_path / f"trainer_state_{len(losses)}_{losses[0]}.json"
        path.write_text(json.dumps({"log_history": [{"step": 10 * (i + 1), "loss": v} for i, v in enumerate(losses)]}))
        return read_train_log(path)

    assert log([38748.0, 30000.0, 25000.0, 22000.0, 20183.0, 21136.0]).loss_fell
    assert not log([2711.0, 2883.0, 2600.0, 2750.0, 2500.0, 2434.0]).loss_fell
