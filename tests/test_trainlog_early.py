"""The trainer log's loss-jump rule from the second logged loss on (checkpoint/trainlog.py).

A new-user trial: a real Trainer run at lr 40 logged 4.58, 13.2, 4150, 4.4e6, NaN; the rule only started after
five logged losses, so nandoctor named checkpoint-2 the last healthy one, whose weights made the 4150 (eval loss
4109, one token generated over and over). Within the first five the early loss is the lowest logged so far (a
jump never raises it), and a loss above that must also stand above the first one (early losses fall fast).
"""

from __future__ import annotations

import json
import math

import pytest

from nandoctor.checkpoint.trainlog import MetricsTable, read_train_log


def _log(tmp_path, losses: dict[int, float]):
    history = [{"step": s, "loss": v, "grad_norm": 1.0} for s, v in sorted(losses.items())]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    return read_train_log(tmp_path / "trainer_state.json")


@pytest.mark.parametrize(("losses", "jump", "weights_from"), [
    ({1: 4.6, 2: 20.0, 3: 900.0}, (2, (20.0, 4.6)), 1),  # the second logged loss
    ({1: 4.58, 2: 13.2, 3: 4150.0, 4: 4.4e6}, (3, (4150.0, 8.89)), 2),  # the trial's run
    # the median of the losses so far (12 here): 45 is under 4x it, 200 is not
    ({1: 5.0, 2: 19.0, 3: 45.0, 4: 200.0, 5: 9000.0}, (4, (200.0, 19.0)), 3),
    ({10: 6.0, 20: 3.0, 30: 2.0, 40: 30.0}, (40, (30.0, 3.0)), 30),  # logging_steps 10: the interval before it
])
def test_a_jump_within_the_first_five_logged_losses_is_found(tmp_path, losses, jump, weights_from):
    log = _log(tmp_path, losses)
    assert ((log.loss_jump_step, log.loss_jump), log.broken_weights_from) == (jump, weights_from)


@pytest.mark.parametrize("losses", [
    {1: 10.4, 2: 9.5, 3: 4.0, 4: 6.0, 5: 6.0, 6: 4.5},  # a real fine-tune's fast drop and bounce (below)
    {1: 10.0, 2: 2.0, 3: 0.4, 4: 1.9, 5: 1.0},  # a bounce to 4.75x the lowest, still far under the start
    {1: 5.0, 2: 5.6, 3: 4.0, 4: 12.0, 5: 11.0, 6: 19.9},  # under 4x: the later rule's median (11) too
])
def test_a_fast_noisy_early_drop_is_no_jump(tmp_path, losses):
    assert _log(tmp_path, losses).loss_jump_step is None


@pytest.mark.parametrize("losses", [
    # a healthy fine-tune, batch size 1: one odd example, back down at the next log (a trial's run)
    {**{s: 0.006 for s in range(1, 100)}, 25: 8.8},
    # a random-init regression, batch 4: one lucky batch at 1.0 among its first losses
    {1: 5.7, 2: 6.2, 3: 1.0, 4: 13.7, 5: 11.3, 6: 10.8, 7: 9.0},
    # a lucky first batch (a trial's diverging run with its first loss edited): the run's own level follows
    {1: 1.2, 2: 4.87, 3: 4.9, 4: 4.86, 5: 4.95, 6: 5.06, 7: 5.07},
])
def test_a_spike_that_passes_or_a_lucky_low_batch_is_no_jump(tmp_path, losses):
    assert _log(tmp_path, losses).loss_jump_step is None


def test_a_spike_then_a_real_divergence_finds_the_divergence(tmp_path):
    losses = {**{s: 1.0 for s in range(1, 20)}, 8: 9.0, 15: 40.0, 16: 900.0, 17: float("nan")}
    log = _log(tmp_path, losses)
    assert (log.loss_jump_step, log.broken_weights_from) == (15, 14)
    assert _log(tmp_path, {1: 1.0, 2: 1.1, 3: 9.0}).loss_jump_step == 3  # the last log's jump stands


def test_a_lightning_metrics_table_follows_the_same_rule():
    rows = {0: {"train_loss": 4.6}, 1: {"train_loss": 30.0}, 2: {"train_loss": 9000.0}}
    log = MetricsTable("metrics.csv", rows, "train_loss", None).train_log()
    assert log is not None and (log.loss_jump_step, log.broken_weights_from) == (1, 1)


# ---------------------------------------------------------------------------------------------
# Real Trainer runs: the oracle is the eval loss and generate() of the checkpoint nandoctor names


transformers = pytest.importorskip("transformers")

import nandoctor  # noqa: E402
from tests.pattern_runs import PatternTokens, eval_loss, tiny_llama, train  # noqa: E402
from tests.realruns import generate_ok  # noqa: E402


@pytest.mark.integration
@pytest.mark.parametrize("logging_steps", [1, 2])
def test_a_real_run_diverging_in_its_first_logs_resumes_from_before_the_jump(tmp_path, logging_steps):
    """SGD at lr 40 without clipping (the trial's run): every checkpoint saved; the loss jumps in the first
    three logged losses, the weights grow past the run's first ones at step 3, go NaN at step 4. The last healthy checkpoint nandoctor names evaluates
    within a few x of the untrained model and generates; the one it named before evaluated in the thousands."""
    out = tmp_path / "run"
    losses = train(out, steps=6, save_steps=1, logging_steps=logging_steps, learning_rate=40.0, optim="sgd",
                   max_grad_norm=0.0)
    logged = [losses[s] for s in sorted(losses)]
    assert any(v >= 100 * logged[0] for v in logged[1:3] if math.isfinite(v)), logged  # the jump, within 3 logs
    initial = eval_loss(tiny_llama(0))
    run = nandoctor.scan_run(str(out), device="cpu")
    statuses = [(c.step, c.status) for c in run.checkpoints]
    # (checkpoint-2's weights made the jump: the later log confirms it, the run scan reads it diverged as a scan of it
    # alone does; it read clean in the run beside a standalone DIVERGED before)
    assert statuses[:2] == [(1, "clean"), (2, "diverged")] and run.first_bad is not None, statuses
    assert nandoctor.scan(out / "checkpoint-2", device="cpu").health == "diverged"
    assert eval_loss(out / "checkpoint-2") > 100 * initial  # weights that made the jump
    healthy = run.last_healthy
    assert healthy is not None and healthy.step == 1 and run.broken_weights_from == 2
    assert eval_loss(healthy.path) < 4 * initial
    assert generate_ok(healthy.path)


@pytest.mark.integration
def test_the_callback_names_no_resume_point_when_every_save_came_after_the_jump(tmp_path, caplog):
    """The same diverging run saved every 2 steps: the loss jumps before the first save, so no checkpoint is a
    resume point. The run scan said so while the transformers callback kept naming checkpoint-2 (a trial's
    find). Its weights have grown past the rule since the weights the run started from (the callback keeps them as
    the baseline, and the log's loss jumped), so every save is diverged, and nothing is named to resume."""
    import logging

    from nandoctor.integrations.transformers import NanDoctorCallback

    callback = NanDoctorCallback(stop_on_nonfinite=True)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="nandoctor"):
        train(out, steps=6, save_steps=2, learning_rate=40.0, optim="sgd", max_grad_norm=0.0, callbacks=[callback])
    run = nandoctor.scan_run(str(out), device="cpu")
    assert run.first_bad is not None and run.last_healthy is None
    assert all(c.status == "diverged" for c in run.checkpoints)  # (grown since the weights the run started from)
    assert callback.first_bad is not None and callback.last_clean is None
    assert any("last clean checkpoint: none" in r.getMessage() for r in caplog.records)


@pytest.mark.integration
def test_a_real_fine_tune_with_a_fast_noisy_start_is_not_flagged(tmp_path):
    """A tiny Llama trained on one pattern, fine-tuned by a real Trainer on another (AdamW at 3e-2, batches of 2):
    the loss drops from ~10 to ~4 within three steps and bounces by half. Its newest checkpoint is then
    poisoned (one NaN), so the run has a bad checkpoint and the log could move the last healthy one back: it
    must not, and that checkpoint evaluates below the start."""
    import torch
    from safetensors.torch import load_file, save_file

    model = tiny_llama(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    rows = PatternTokens(256, seed=3).ids
    generator = torch.Generator().manual_seed(0)
    for _ in range(120):  # pre-training on next = previous + 1: the loss falls to ~0.004
        batch = rows[torch.randint(0, len(rows), (16,), generator=generator)]
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    out = tmp_path / "run"
    losses = train(out, model=model, dataset=PatternTokens(seed=0, shift=2), steps=8, save_steps=1,
                   learning_rate=3e-2, per_device_train_batch_size=2)
    logged = [losses[s] for s in sorted(losses)]
    assert min(logged[:3]) < 0.6 * logged[0]  # a fast drop ...
    assert any(logged[i] > 1.2 * min(logged[:i]) for i in range(2, 5)), logged  # ... and a bounce after it
    newest = out / "checkpoint-8" / "model.safetensors"
    tensors = load_file(newest)
    tensors["model.layers.1.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(tensors, newest, metadata={"format": "pt"})

    run = nandoctor.scan_run(str(out), device="cpu")
    assert run.log is not None and run.log.loss_jump_step is None
    assert run.first_bad is not None and run.first_bad.step == 8
    assert run.last_healthy is not None and run.last_healthy.step == 7
    assert eval_loss(run.last_healthy.path, shift=2) < 0.5 * logged[0]
    assert generate_ok(run.last_healthy.path)


@pytest.mark.parametrize(("losses", "step"), [
    ({10: 2.0, 20: 2.1, 30: 11.0, 40: 10.9, 50: 10.8, 60: 10.8}, 30),  # a jump that stays up, dated where it came
    ({10: 5.0, 20: 30.0, 30: 59.0, 40: 118.0, 50: 236.0}, 20),  # growing from the second log: found there
])
def test_a_lasting_jump_is_dated_where_it_came(tmp_path, losses, step):
    """A review: a jump after two early losses that then stayed level was cleared and found one log late, and a
    run doubling from its second log was found three logs late; each named a broken checkpoint as a resume point."""
    assert _log(tmp_path, losses).loss_jump_step == step
