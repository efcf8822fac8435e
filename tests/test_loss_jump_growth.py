"""One bad update: a real ``transformers.Trainer`` run whose loss is multiplied 3e4 times for one step (one bad
batch, SGD, no clipping). The weights stay finite and modest (bulk x80, below the x256 that diverges a
checkpoint on growth alone), the logged loss jumps 13,000x and stays up, and the model after it is broken: its eval
loss is hundreds of times the checkpoint's before it. A trial's run passed CLEAN; growth of x32 with that loss jump
is diverged (verdict.GROWTH_WITH_LOSS_JUMP), in the run scan, a scan of the checkpoint alone and a repair's refusal.
"""

from __future__ import annotations

from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

import nandoctor  # noqa: E402

pytestmark = pytest.mark.integration
VOCAB = 128


def _batch(i: int) -> dict:
    start = 3 + i % 57
    ids = (torch.arange(16) * 3 + start) % (VOCAB - 3) + 3
    return {"input_ids": ids, "labels": ids.clone()}


class _Data(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 10_000

    def __getitem__(self, i: int) -> dict:
        return _batch(i)


def _run(out: Path, bad_step: int, factor: float = 1e4, logging_steps: int = 2) -> Path:
    """30 steps, saved every 10 and at the end; the loss of step ``bad_step`` multiplied ``factor`` times."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      pad_token_id=0)
    model = transformers.LlamaForCausalLM(config)

    class OneBadBatch(transformers.Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
            loss = super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
            return loss * factor if self.state.global_step == bad_step else loss

    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=30, per_device_train_batch_size=4, learning_rate=0.1, optim="sgd",
        max_grad_norm=0.0, logging_steps=logging_steps, save_steps=10, report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    trainer = OneBadBatch(model=model, args=args, train_dataset=_Data())
    trainer.train()
    trainer.save_model()
    return out


def _eval_loss(folder: Path) -> float:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    batch = {k: torch.stack([_batch(i)[k] for i in range(8)]) for k in ("input_ids", "labels")}
    with torch.no_grad():
        return float(model(**batch).loss)


@pytest.fixture(scope="module")
def jumped(tmp_path_factory) -> Path:
    return _run(tmp_path_factory.mktemp("jump") / "run", bad_step=25)


def test_a_bad_update_whose_loss_stayed_up_is_diverged(jumped, tmp_path):
    before, after = _eval_loss(jumped / "checkpoint-20"), _eval_loss(jumped / "checkpoint-30")
    assert after > 20 * before  # the oracle: the model after the bad update is broken
    run = nandoctor.scan_run(jumped, device="cpu")
    by_name = {c.name: c for c in run.checkpoints}
    assert by_name["checkpoint-20"].status == "clean" and by_name["checkpoint-30"].status == "diverged"
    assert 32 <= (by_name["checkpoint-30"].baseline_growth or 0) < 256  # (below the growth rule alone)
    assert run.exit_code() == 1 and run.last_healthy is not None and run.last_healthy.name == "checkpoint-20"
    alone = nandoctor.scan(jumped / "checkpoint-30", device="cpu")
    assert alone.health == "diverged" and alone.exit_code == 1
    from nandoctor import verdict

    assert "the trainer log's loss jumped to" in verdict.one_line(alone)
    with pytest.raises(nandoctor.RepairRefusedError) as refused:
        nandoctor.repair(jumped / "checkpoint-30", ["auto"], tmp_path / "fixed")
    assert f"({jumped / 'checkpoint-20'})" in refused.value.hint
    # (the run clipped nothing, max_grad_norm=0 in its training_args.bin: the advice says so, where a trial's run
    # at 1e9 was told "the Trainer's is 1.0 by default")
    assert "training_args.bin sets 0, which clips nothing" in refused.value.hint, refused.value.hint
    assert nandoctor.scan(jumped / "checkpoint-20", device="cpu").exit_code == 0


def test_the_same_run_without_the_bad_update_stays_clean(tmp_path):
    healthy = _run(tmp_path / "run", bad_step=-1)
    run = nandoctor.scan_run(healthy, device="cpu")
    assert run.exit_code() == 0 and {c.status for c in run.checkpoints} == {"clean"}
    assert nandoctor.scan(healthy / "checkpoint-30", device="cpu").exit_code == 0
