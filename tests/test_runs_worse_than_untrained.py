"""A run whose loss stands above what an untrained model scores names no checkpoint its last healthy one
(baseline.untrained_jump).

A new user's trial: a tiny Llama under a real transformers ``Trainer`` at lr 1, warmed up over 10 steps, no clipping.
Its loss rose from 4.84 to 19.7 with no jump (never 4x its early losses), every weight finite; the saves' eval losses
were 8.8, 12.6, 17.2 and 17.3 where an untrained model scores 4.85. Only checkpoint-20, at 4.05x the untrained loss,
read DIVERGED; checkpoint-15 (eval 17.2) was named the last healthy checkpoint and the resume point.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import nandoctor  # noqa: E402
from nandoctor.integrations.transformers import NanDoctorCallback  # noqa: E402
from tests.realruns import _quiet_transformers  # noqa: E402

pytestmark = pytest.mark.integration

VOCAB = 128  # an untrained model scores ln(128) = 4.85


class _Sequences(torch.utils.data.Dataset):
    def __init__(self):
        generator = torch.Generator().manual_seed(1)
        self.x = [(torch.arange(32) * int(torch.randint(1, 3, (1,), generator=generator))
                   + int(torch.randint(0, VOCAB, (1,), generator=generator))) % VOCAB for _ in range(256)]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.x[i], "labels": self.x[i]}


def _train(out: Path, learning_rate: float, steps: int, model=None, **args) -> Path:
    torch.manual_seed(0)
    if model is None:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128))
    settings = dict(output_dir=str(out), max_steps=steps, per_device_train_batch_size=8, learning_rate=learning_rate,
                    save_steps=5, logging_steps=2, report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
    with _quiet_transformers():
        transformers.Trainer(model=model, args=transformers.TrainingArguments(**{**settings, **args}),
                             train_dataset=_Sequences(), callbacks=[NanDoctorCallback()]).train()
    return out


def _eval_loss(path: Path | None) -> float:
    """The oracle: the saved model's loss on the run's own sequences (an untrained one without ``path``)."""
    data = _Sequences()
    batch = torch.stack(data.x[:64])
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128)) if path is None else \
        transformers.AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        return float(model.float().eval()(input_ids=batch, labels=batch).loss)


def test_a_run_that_rose_above_the_untrained_loss_names_no_resume_point(tmp_path):
    run_dir = _train(tmp_path / "spike", 1.0, 20, warmup_steps=10, lr_scheduler_type="constant_with_warmup",
                     max_grad_norm=1e9)
    untrained = _eval_loss(None)
    assert math.isclose(untrained, math.log(VOCAB), rel_tol=0.05)
    saves = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert all(_eval_loss(p) > 1.5 * untrained for p in saves)  # the oracle: every save worse than an untrained model
    run = nandoctor.scan_run(run_dir)
    assert run.last_healthy is None, run.last_healthy.name  # (was checkpoint-15, eval ~17)
    assert all(c.status == "diverged" or c.worse_than_untrained is not None for c in run.checkpoints)
    assert run.exit_code() != 0
    for save in saves:  # each alone agrees: diverged, or cautioned as worse than an untrained model
        alone = nandoctor.scan(save)
        assert alone.health == "diverged" or "worse than a model that guesses" in nandoctor.verdict.one_line(alone)


@pytest.mark.parametrize("learning_rate, warmup", [(1e-3, 0), (3e-3, 10), (1e-2, 0)])
def test_a_healthy_run_from_scratch_keeps_its_resume_point(tmp_path, learning_rate, warmup):
    """The healthy neighbours: a fresh tiny Llama at sane learning rates, with and without warmup; its first saves
    may stand near the untrained loss, and none is taken for worse than it."""
    run_dir = _train(tmp_path / "ok", learning_rate, 20, warmup_steps=warmup)
    run = nandoctor.scan_run(run_dir)
    assert _eval_loss(run_dir / "checkpoint-20") < _eval_loss(None)
    assert run.exit_code() == 0 and not run.reported_only() and run.last_healthy.name == "checkpoint-20"
    assert all(c.worse_than_untrained is None for c in run.checkpoints)


def test_a_fine_tune_from_trained_weights_keeps_its_resume_point(tmp_path):
    """A fine-tune starts far below the untrained loss: its saves are trained models, as the oracle says."""
    base = _train(tmp_path / "base", 3e-3, 20, save_steps=20)
    tuned = _train(tmp_path / "tune", 1e-3, 20, model=transformers.AutoModelForCausalLM.from_pretrained(
        base / "checkpoint-20"))
    run = nandoctor.scan_run(tuned)
    assert _eval_loss(tuned / "checkpoint-20") < 0.8 * _eval_loss(None)
    assert run.exit_code() == 0 and not run.reported_only() and run.last_healthy.name == "checkpoint-20"


def test_a_multiple_choice_head_gives_no_untrained_loss(tmp_path: Path) -> None:
    """A review: a 4-choice BertForMultipleChoice run was told its loss of 1.37 was "1.97x what an untrained model
    scores (0.693)": ln num_labels (2 by default), where its cross-entropy is over each example's choices (chance:
    ln 4), which config.json does not give. A sequence classifier's stays ln num_labels."""
    from nandoctor.checkpoint import initscales

    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32)
    torch.manual_seed(0)
    choice = transformers.BertForMultipleChoice(config)
    choice.save_pretrained(tmp_path / "choice")
    with torch.no_grad():  # the oracle: an untrained model's loss over 4 choices is ln 4, not ln 2
        ids = torch.randint(0, 64, (64, 4, 8))
        loss = float(choice(input_ids=ids, labels=torch.randint(0, 4, (64,))).loss)
    assert abs(loss - math.log(4)) < 0.1
    assert initscales.untrained_loss(tmp_path / "choice") is None
    transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        num_labels=5)).save_pretrained(tmp_path / "labels")
    assert initscales.untrained_loss(tmp_path / "labels") == pytest.approx(math.log(5))
