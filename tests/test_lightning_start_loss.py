"""A Lightning run is judged from the loss its callback kept at step 0, not from metrics.csv's first row alone
(checkpoint/callbacklog.py: with_start_loss).

A new user's trial: a tiny Llama under a real ``lightning.Trainer`` (16-mixed, bf16 on a CPU, lr 2 warmed up over 5 steps). Its
CSVLogger logs every 2 steps from step 1, by when the warmup had already lifted the loss from 4.85 to 10.7 (17.5 at
step 3). The callback, judging from step 0, named no clean checkpoint; the run scan measured the jump to 53.7 at the
first save against an early loss of 17.5, let it pass, and advised resuming from ``epoch=0-step=5.ckpt`` (eval loss
61.9 where an untrained model scores 4.85), which a scan of it alone passed CLEAN.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")
transformers = pytest.importorskip("transformers")

import nandoctor  # noqa: E402
from nandoctor.integrations.lightning import REPORT_NAME, NanDoctorCallback  # noqa: E402
from tests.realruns import _quiet_lightning  # noqa: E402

pytestmark = pytest.mark.integration

VOCAB = 128  # an untrained model scores ln(128) = 4.85


def _data() -> list:
    generator = torch.Generator().manual_seed(1)
    return [(torch.arange(32) * int(torch.randint(1, 3, (1,), generator=generator))
             + int(torch.randint(0, VOCAB, (1,), generator=generator))) % VOCAB for _ in range(256)]


def _config():
    return transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                    num_attention_heads=4, num_key_value_heads=2)


def _run(out: Path, learning_rate: float, doctor: NanDoctorCallback) -> Path:
    """The trial's run: saves every 5 steps into ``out/ckpt``, a CSVLogger in ``out`` (metrics.csv found beside)."""
    import lightning
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    class _Llama(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.m = transformers.LlamaForCausalLM(_config())

        def training_step(self, batch, _):
            loss = self.m(input_ids=batch, labels=batch).loss
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            optimizer = torch.optim.AdamW(self.parameters(), lr=learning_rate)
            warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 5))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}

    torch.manual_seed(0)
    with _quiet_lightning():
        trainer = lightning.Trainer(
            max_steps=30, precision="bf16-mixed", accelerator="cpu", log_every_n_steps=2, logger=CSVLogger(str(out)),
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(out),
            callbacks=[ModelCheckpoint(dirpath=str(out / "ckpt"), filename="{epoch}-{step}", every_n_train_steps=5,
                                       save_top_k=-1), doctor])
        trainer.fit(_Llama(), torch.utils.data.DataLoader(_data(), batch_size=8, shuffle=True))
    return out / "ckpt"


def _eval_loss(ckpt: Path | None) -> float:
    """The oracle: the saved (or an untrained) model's loss on the run's own sequences."""
    model = transformers.LlamaForCausalLM(_config())
    if ckpt is not None:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict({k.removeprefix("m."): v for k, v in state.items()})
    batch = torch.stack(_data()[:64])
    with torch.no_grad():
        return float(model.eval()(input_ids=batch, labels=batch).loss)


def test_the_run_scan_measures_the_jump_from_the_start_loss_the_callback_kept(tmp_path):
    doctor = NanDoctorCallback()
    folder = _run(tmp_path / "lit", 2.0, doctor)
    first = folder / "epoch=0-step=5.ckpt"
    untrained = _eval_loss(None)
    assert math.isclose(untrained, math.log(VOCAB), rel_tol=0.05)
    assert _eval_loss(first) > 4 * untrained  # the oracle: the first save never was a trained model
    assert doctor.last_clean is None and json.loads((folder / REPORT_NAME).read_text())["last_clean"] is None
    run = nandoctor.scan_run(folder)
    assert run.last_healthy is None, run.last_healthy.name  # (was epoch=0-step=5.ckpt, measured from 17.5)
    assert run.log is not None and run.log.loss_jump is not None and run.log.loss_jump[1] < 12  # (from 4.85 at step 0)
    alone = nandoctor.scan(first)
    assert alone.exit_code != 0 and alone.health == "diverged"  # as its row in the run (it passed CLEAN alone)
    assert next(c for c in run.checkpoints if c.name == first.name).status == "diverged"


def test_a_healthy_warmed_up_run_keeps_its_newest_save_as_the_resume_point(tmp_path):
    """The healthy neighbour: the same run at lr 3e-3 trains (eval loss far under the untrained one); the start loss
    the callback kept moves nothing, and the callback and the scan agree on the newest save."""
    doctor = NanDoctorCallback()
    folder = _run(tmp_path / "lit", 3e-3, doctor)
    newest = folder / "epoch=0-step=30.ckpt"
    assert _eval_loss(newest) < 0.8 * _eval_loss(None)
    run = nandoctor.scan_run(folder)
    assert run.exit_code() == 0 and not run.reported_only() and run.last_healthy.name == newest.name
    assert doctor.last_clean is not None and Path(doctor.last_clean).name == newest.name
    assert nandoctor.scan(newest).exit_code == 0
