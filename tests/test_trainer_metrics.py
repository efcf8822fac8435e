"""Health metrics of NanDoctorCallback in a real Trainer run: in ``log_history`` and in TensorBoard's event file.

The TensorBoard reporter is transformers' own ``TensorBoardCallback`` (``report_to="tensorboard"``,
writing through tensorboardX); the test reads its event file back record by record.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from nandoctor import verdict  # noqa: E402
from nandoctor.integrations.transformers import NanDoctorCallback, attach  # noqa: E402

pytestmark = pytest.mark.integration
KEYS = ("nandoctor/nonfinite", "nandoctor/max_abs", "nandoctor/outliers", "nandoctor/bad_tensors")


class PlantNaN(TrainerCallback):
    """Three NaN in one weight at the end of step 4, just before it is saved: checkpoint-2 is clean,
    checkpoint-4 holds exactly those three (no optimizer step has spread them)."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 4:
            with torch.no_grad():
                model.transformer.h[0].mlp.c_fc.weight[0, :3] = float("nan")


class Tokens(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int) -> dict:
        ids = torch.arange(8) % 5 + i % 3
        return {"input_ids": ids, "labels": ids.clone()}


def make_trainer(out: Path, report_to: list[str]) -> Trainer:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=16, n_positions=8, n_embd=8, n_layer=1, n_head=1, bos_token_id=0, eos_token_id=0)
    args = TrainingArguments(
        output_dir=str(out), max_steps=4, save_steps=2, logging_steps=1, per_device_train_batch_size=4,
        learning_rate=1e-3, report_to=report_to, use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
    )
    return Trainer(model=GPT2LMHeadModel(config), args=args, train_dataset=Tokens(), callbacks=[PlantNaN()])


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files under ``folder``: tag → [(step, value)]."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list[tuple[int, float]]] = {}
    for path in folder.rglob("events.out.tfevents.*"):
        data = path.read_bytes()
        at = 0
        while at < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
            (length,) = struct.unpack_from("<Q", data, at)
            event = Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_metrics_reach_log_history_and_tensorboard(tmp_path, monkeypatch):
    pytest.importorskip("tensorboardX")
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    trainer = make_trainer(tmp_path / "out", ["tensorboard"])
    doctor = attach(trainer, NanDoctorCallback())
    trainer.train()

    # log_history: one entry per save, at the checkpoint's step, equal to what the verdict module computes
    saved = {e["step"]: e for e in trainer.state.log_history if "nandoctor/nonfinite" in e}
    assert sorted(saved) == [2, 4]
    for step, entry in saved.items():
        assert {k: entry[k] for k in KEYS} == verdict.metrics(doctor.reports[step])
    assert saved[2]["nandoctor/nonfinite"] == 0 and saved[2]["nandoctor/bad_tensors"] == 0
    assert saved[4]["nandoctor/nonfinite"] == 3 and saved[4]["nandoctor/bad_tensors"] == 1
    assert 0 < saved[2]["nandoctor/max_abs"] < 10

    # TensorBoard (through transformers' TensorBoardCallback): the figures of each save, logged at the next log
    scalars = read_scalars(tmp_path / "tb")
    nonfinite = scalars["train/nandoctor/nonfinite"]
    assert [v for _, v in nonfinite] == [0.0, 3.0]
    assert nonfinite[0][0] >= 2  # logged after checkpoint-2 was saved
    for key in KEYS:
        assert f"train/{key}" in scalars, key


def test_without_attach_log_history_still_has_them_and_a_warning_says_why_reporters_may_not(tmp_path, caplog):
    trainer = make_trainer(tmp_path / "out", [])
    trainer.add_callback(NanDoctorCallback())  # after the reporters: the plain way
    trainer.args.report_to = ["tensorboard"]  # (no reporter is really there; the warning reads the arguments)
    trainer.train()
    assert [e["step"] for e in trainer.state.log_history if "nandoctor/bad_tensors" in e] == [2, 4]
    assert "attach(trainer, callback)" in caplog.text


def test_attach_moves_an_added_callback_ahead_of_the_reporters_without_doubling_it(tmp_path):
    pytest.importorskip("tensorboardX")
    trainer = make_trainer(tmp_path / "out", ["tensorboard"])
    doctor = NanDoctorCallback()
    trainer.add_callback(doctor)
    attach(trainer, doctor)
    names = [type(c).__name__ for c in trainer.callback_handler.callbacks]
    assert names.count("NanDoctorCallback") == 1
    assert names.index("NanDoctorCallback") < names.index("TensorBoardCallback")
    assert names[0] == "DefaultFlowCallback"
