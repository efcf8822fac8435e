"""A run whose learning rate was far too high blows up within its first steps: every checkpoint it saved is already
broken, so none is a healthy baseline for growth, and without a training callback's step-0 weights each read CLEAN
(a real-training trial: Trainer at lr 1e2, loss 631,389 at its first log; every weight matrix at 512 to 1,024;
eval loss 6.3e6 where an untrained model scores 4.85). The start the model's own config implies stands for those
weights (checkpoint/initscales.py: transformers' normal(0, initializer_range), PEFT's LoRA init), and the loss an
untrained model scores (ln of the vocabulary) says whether a loss that "came down" ever trained. The oracles: the
model's own eval loss (from_pretrained; PEFT for the adapter) against an untrained model's, and the healthy twins.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import nandoctor  # noqa: E402
from nandoctor.checkpoint import initscales  # noqa: E402
from tests.realruns import LM_VOCAB as VOCAB  # noqa: E402
from tests.realruns import Sequences, lightning_lm_run  # noqa: E402

pytestmark = pytest.mark.integration


def _config():
    return transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def _train(out, lr: float, model=None, steps: int = 30):
    torch.manual_seed(0)
    model = model if model is not None else transformers.LlamaForCausalLM(_config())
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=8, learning_rate=lr, save_steps=10,
        logging_steps=5, report_to=[], use_cpu=True, lr_scheduler_type="constant", seed=0, disable_tqdm=True)
    transformers.Trainer(model=model, args=args, train_dataset=Sequences()).train()
    return out


def _eval_loss(model) -> float:
    batch = Sequences(n=32)[:]
    with torch.no_grad():
        return float(model(input_ids=batch["input_ids"], labels=batch["labels"]).loss)


def test_a_trainer_run_blown_up_before_its_first_save_is_diverged(tmp_path):
    blown = _train(tmp_path / "blown", 1e2)
    untrained = math.log(VOCAB)
    newest = blown / "checkpoint-30"
    assert _eval_loss(transformers.LlamaForCausalLM.from_pretrained(newest)) > 100 * untrained  # the oracle
    assert initscales.untrained_loss(newest) == pytest.approx(untrained)
    run = nandoctor.scan_run(blown)
    assert run.last_healthy is None and run.exit_code() == 1
    assert [c.status for c in run.checkpoints] == ["diverged"] * 3
    assert any("as config.json's initializer_range draws them" in note for note in run.notes)
    report = nandoctor.scan(newest)  # (alone, judged in its run: the same answer)
    assert report.health == "diverged" and report.exit_code == 1
    assert "since the weights the run started from" in nandoctor.verdict.one_line(report)

    healthy = _train(tmp_path / "healthy", 1e-3)  # (its loss falls below the untrained one: every save CLEAN)
    assert _eval_loss(transformers.LlamaForCausalLM.from_pretrained(healthy / "checkpoint-30")) < untrained
    assert nandoctor.scan_run(healthy).exit_code() == 0
    assert nandoctor.scan(healthy / "checkpoint-30").exit_code == 0


def test_a_lora_adapter_blown_up_before_its_first_save_is_diverged(tmp_path):
    peft = pytest.importorskip("peft")
    base = transformers.LlamaForCausalLM(_config())

    def adapter(lr: float, out):
        torch.manual_seed(0)
        model = peft.get_peft_model(transformers.LlamaForCausalLM(_config()).eval(),
                                    peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        model.base_model.model.load_state_dict(base.state_dict(), strict=False)
        return _train(out, lr, model)

    blown = adapter(1e2, tmp_path / "blown")
    scale = initscales.implied_start(blown / "checkpoint-30", nandoctor.scan(blown / "checkpoint-30"))
    assert scale is not None and set(scale.scales.values()) == {0.0, 1 / math.sqrt(64)}  # (lora_B 0, lora_A ±1/√in)
    run = nandoctor.scan_run(blown)
    assert run.last_healthy is None and run.exit_code() == 1, [c.why for c in run.checkpoints]
    assert any("as PEFT's default LoRA init draws them" in note for note in run.notes), run.notes  # (not a config's)
    healthy = adapter(1e-3, tmp_path / "healthy")
    assert nandoctor.scan_run(healthy).exit_code() == 0


def test_a_loss_that_came_down_but_never_trained_is_no_healthy_run():
    """A run at lr 10 went from 3,158 to 2,110 (it fell by a third, nearly): 435 times what a uniform guess over its 128 tokens
    scores. It never trained, and growth since the start judges it; a loss that came down below that is trained."""
    from nandoctor.checkpoint.trainlog import MetricsTable

    fell = MetricsTable("t", {5: {"loss": 3158.0}, 10: {"loss": 1980.0}}, "loss", None).train_log()
    assert fell is not None and fell.loss_fell
    assert not fell.came_down(math.log(128)) and fell.came_down(None)
    trained = MetricsTable("t", {5: {"loss": 4.9}, 10: {"loss": 3.1}}, "loss", None).train_log()
    assert trained is not None and trained.came_down(math.log(128))


def test_the_lightning_callback_judges_with_the_losses_it_saw_and_the_initial_loss(tmp_path):
    """A real Lightning run at lr 1e2 whose CSVLogger writes in a folder of its own (no metrics.csv beside the
    checkpoints): its loss went 4.9 at step 0 to 2.4e6 at step 5, and every save passed the callback CLEAN, the
    trainer log unread. The callback judges with the losses it saw itself, and keeps step 0's loss in the baseline;
    it stops the run. The healthy twin runs to the end."""
    pytest.importorskip("lightning")
    from nandoctor.checkpoint.baseline import read_baseline
    from nandoctor.integrations.lightning import NanDoctorCallback

    def fit(lr: float, folder):
        return lightning_lm_run(folder, lr, callbacks=(NanDoctorCallback(stop_on_nonfinite=True),))[0]

    blown = fit(1e2, tmp_path / "blown")
    assert blown.global_step < 40  # stopped at a save that failed
    kept = read_baseline(tmp_path / "blown")
    assert kept is not None and kept.start_loss == pytest.approx(math.log(VOCAB), rel=0.2)
    healthy = fit(1e-3, tmp_path / "healthy")
    assert healthy.global_step == 40


def test_a_healthy_fine_tune_of_large_pretrained_weights_is_no_divergence(tmp_path):
    """A review: a fine-tune starts from pretrained weights, which may lie far above what initializer_range draws (here
    an exact reparametrisation: the residual stream scaled by 1000, every RMSNorm undoing it), its loss flat and far
    below an untrained model's. It read DIVERGED against the guessed start; only a loss still above 4x the untrained
    one uses that guess."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(_config())
    _train(tmp_path / "pretraining", 3e-3, model, steps=60)
    with torch.no_grad():
        model.model.embed_tokens.weight *= 1000
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight *= 1000
            layer.mlp.down_proj.weight *= 1000
    assert _eval_loss(model) < math.log(VOCAB)  # (the same function: trained)
    model.save_pretrained(tmp_path / "pretrained")
    tuned = _train(tmp_path / "fine-tune", 1e-4, transformers.LlamaForCausalLM.from_pretrained(tmp_path / "pretrained"))
    assert _eval_loss(transformers.LlamaForCausalLM.from_pretrained(tuned / "checkpoint-30")) < math.log(VOCAB)
    assert nandoctor.scan_run(tuned).exit_code() == 0
    assert nandoctor.scan(tuned / "checkpoint-30").exit_code == 0


def test_a_run_whose_loss_never_came_near_an_untrained_models_is_diverged_from_a_smaller_growth(tmp_path):
    """A real run at lr 3: its loss stayed at 250-340 (an untrained model scores 4.85: it never trained), its weights
    grew 228x the initializer's, under 2^8, and each save read CLEAN. A loss still 4x the untrained one stands as a
    loss jump from the start does: a growth of 2^5 is diverged with it, alone and in the run."""
    run = _train(tmp_path / "run", 3.0)
    assert _eval_loss(transformers.LlamaForCausalLM.from_pretrained(run / "checkpoint-30")) > 20 * math.log(VOCAB)
    report = nandoctor.scan_run(run)
    assert report.exit_code() == 1 and report.last_healthy is None
    assert "what an untrained model scores" in report.checkpoints[-1].why and "it never trained" in report.checkpoints[-1].why
    for step in (10, 30):
        alone = nandoctor.scan(run / f"checkpoint-{step}")
        assert alone.health == "diverged" and alone.exit_code == 1, nandoctor.verdict.one_line(alone)


def test_t5s_initializer_factor_implies_its_start(tmp_path):
    """T5 gives no initializer_range: its initializer_factor draws the shared embedding from normal(0, factor), the
    widest of its matrices (a real Seq2SeqTrainer run at lr 1e2, loss 26,478, read CLEAN without it)."""
    folder = tmp_path / "t5"
    transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0,
        initializer_factor=0.5)).save_pretrained(folder)
    start = initscales.implied_start(folder, nandoctor.scan(folder))
    assert start is not None and start.guessed and set(start.scales.values()) == {3.5}  # (7 × 0.5)
    assert initscales.untrained_loss(folder) == pytest.approx(math.log(VOCAB))


class _Labelled(Sequences):
    """The sequences, labelled by whether they step by 1: a binary task."""

    def __getitem__(self, i: int) -> dict:
        x = self.x[i]
        return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": int((x[1] - x[0]) % VOCAB == 1)}


def test_a_binary_classifier_whose_config_json_leaves_its_labels_out_is_judged_by_two_labels(tmp_path):
    """A real-training trial: transformers 5 leaves id2label and num_labels out of config.json at their default, 2
    labels, so no untrained loss was known and a binary classifier at lr 1e2 (eval loss ~1e3 where ln 2 is 0.69)
    read CLEAN. The default's two labels give it."""

    def classifier(lr: float, out):
        torch.manual_seed(0)
        config = _config()
        config.pad_token_id = 0
        model = transformers.LlamaForSequenceClassification(config)
        args = transformers.TrainingArguments(
            output_dir=str(out), max_steps=30, per_device_train_batch_size=8, learning_rate=lr, save_steps=10,
            logging_steps=5, report_to=[], use_cpu=True, lr_scheduler_type="constant", seed=0, disable_tqdm=True)
        transformers.Trainer(model=model, args=args, train_dataset=_Labelled()).train()
        return out

    def eval_loss(folder) -> float:
        model = transformers.LlamaForSequenceClassification.from_pretrained(folder)
        batch = [_Labelled(n=32)[i] for i in range(32)]
        with torch.no_grad():
            return float(model(input_ids=torch.stack([b["input_ids"] for b in batch]),
                               labels=torch.tensor([b["labels"] for b in batch])).loss)

    blown = classifier(1e2, tmp_path / "blown")
    newest = blown / "checkpoint-30"
    assert "id2label" not in (newest / "config.json").read_text()  # (the cause)
    assert eval_loss(newest) > 100 * math.log(2)  # the oracle
    assert initscales.untrained_loss(newest) == pytest.approx(math.log(2))
    run = nandoctor.scan_run(blown)
    assert run.exit_code() == 1 and nandoctor.scan(newest).health == "diverged"
    from nandoctor.report.run_report import next_steps  # (what to change, as the checkpoint's own scan says it)

    assert "restart from the base model with a lower learning rate or gradient clipping" in " ".join(next_steps(run))
    assert "a max_grad_norm below this run's 1)" in " ".join(next_steps(run))  # (the Trainer's default, its args')
    healthy = classifier(1e-3, tmp_path / "healthy")
    assert eval_loss(healthy / "checkpoint-30") < 4 * math.log(2)
    assert nandoctor.scan_run(healthy).exit_code() == 0 and nandoctor.scan(healthy / "checkpoint-30").exit_code == 0


def test_a_run_whose_loss_never_came_near_a_trained_models_warns_as_its_checkpoint_alone_does(tmp_path):
    """A real-training trial: a fine-tune at lr 1 from a trained base, its loss 35 where an untrained model scores
    4.85 (its generate repeats one token), its growth under the limit: the newest checkpoint scanned alone cautioned
    ("the trainer log's loss … never trained"), the run read ✓ CLEAN without a word. The run warns now (⚠ PASS,
    exit 0: its weights fail nothing), in every report; a healthy fine-tune of the same base says nothing."""
    import json

    from nandoctor.report.json_report import run_to_json
    from nandoctor.report.run_report import one_line

    base = transformers.LlamaForCausalLM.from_pretrained(_train(tmp_path / "base", 3e-3) / "checkpoint-30")
    blown = _train(tmp_path / "blown", 1.0, base)
    newest = blown / "checkpoint-30"
    assert _eval_loss(transformers.LlamaForCausalLM.from_pretrained(newest)) > 4 * math.log(VOCAB)  # the oracle
    alone = nandoctor.scan(newest)
    run = nandoctor.scan_run(blown)
    if alone.health == "diverged":  # (grown past the limit on this machine's arithmetic: failed, the stronger answer)
        assert run.exit_code() == 1
        return
    assert nandoctor.verdict.loss_jump_caution(alone) is not None and alone.exit_code == 0
    assert run.exit_code() == 0 and run.never_trained is not None and run.reported_only()
    assert "it never trained" in one_line(run)
    assert json.loads(json.dumps(run_to_json(run)))["run"]["never_trained"]["untrained"] is True

    healthy = _train(tmp_path / "healthy", 1e-4, transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base" / "checkpoint-30"))
    quiet = nandoctor.scan_run(healthy)
    assert quiet.exit_code() == 0 and quiet.never_trained is None and not quiet.reported_only()


def test_a_pretraining_heads_loss_is_no_vocabulary_guess(tmp_path):
    """A false-alarm hunt: Wav2Vec2ForPreTraining's loss is contrastive, summed over frames, and its vocab_size is a
    CTC vocabulary's: its healthy pretraining was told it "never trained" against ln(vocab_size). A *ForPreTraining
    head has no untrained loss; a causal LM's and a classifier's do."""
    import json

    for head, expected in (("Wav2Vec2ForPreTraining", None), ("BertForPreTraining", None),
                           ("LlamaForCausalLM", math.log(VOCAB))):
        folder = tmp_path / head
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"architectures": [head], "vocab_size": VOCAB}))
        assert initscales.untrained_loss(folder) == (pytest.approx(expected) if expected else None)
