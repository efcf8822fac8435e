"""The Lightning callback and a later ``nandoctor scan`` judge the same bytes alike (checkpoint/callbacklog.py).

A real-training trial: a tiny language model at lr 1e2 (loss 4.9 at step 0, about 1e6 at step 5, every weight
finite; eval loss 6,804 where an untrained model scores 4.85). The callback stopped the run as DIVERGED, and the run
scan afterwards said PASS CLEAN (Lightning's default TensorBoard logger, or a CSVLogger writing elsewhere: no
metrics.csv beside the checkpoints, and the losses the callback judged with were never kept). And the first save,
alone in its folder, was judged CLEAN with no run context, while the ``last.ckpt`` written right after it, the same
weights, was DIVERGED; without ``save_last`` the run went on to the next save.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")

import nandoctor  # noqa: E402
from nandoctor.integrations.lightning import REPORT_NAME, NanDoctorCallback  # noqa: E402
from tests.realruns import lightning_lm_run  # noqa: E402

pytestmark = pytest.mark.integration


def _verdicts(folder: Path) -> dict:
    return json.loads((folder / REPORT_NAME).read_text())


def _tensorboard() -> bool:
    """Whether Lightning's default logger is a TensorBoardLogger here (else a CSVLogger)."""
    from importlib.util import find_spec

    return find_spec("tensorboard") is not None or find_spec("tensorboardX") is not None


@pytest.mark.parametrize("save_last", [False, True])
def test_the_first_save_is_judged_in_its_run_and_every_file_of_a_save_alike(tmp_path, save_last):
    doctor = NanDoctorCallback(stop_on_nonfinite=True)
    trainer, folder = lightning_lm_run(tmp_path / "run", 1e2, steps=30, save_last=save_last, callbacks=(doctor,))
    assert trainer.global_step == 10 and doctor.stopped_at == 10  # (it went on to step 20: the first save CLEAN)
    data = _verdicts(folder)
    entries = data["checkpoints"]
    assert set(entries) == {"epoch=0-step=10.ckpt", *(["last.ckpt"] if save_last else [])}
    assert {e["summary"]["verdict"] for e in entries.values()} == {"DIVERGED"}  # (the step file was CLEAN)
    assert data["last_clean"] is None and data["first_bad"] == "epoch=0-step=10.ckpt"
    # a scan afterwards of the folder, one step file alone in it without save_last, and of each file alike
    run = nandoctor.scan_run(folder)
    assert run.exit_code() == 1 and run.last_healthy is None and run.first_bad.name == "epoch=0-step=10.ckpt"
    for name in entries:
        assert nandoctor.scan(folder / name).health == "diverged"


def test_a_tied_model_keeps_its_initial_weights_as_the_baseline(tmp_path):
    """A new user's trial: a GPT-2 (head tied to the embedding) under Lightning at lr 3, loss 190-540 from step 1 where
    an untrained model scores 4.85, passed the callback and the scan CLEAN, its untied twin DIVERGED: the module's scan
    names a tied tensor once, the saved state_dict under both names, so the initial weights were never kept (they
    lacked a saved name) and growth was measured from the already blown-up first save."""
    doctor = NanDoctorCallback(stop_on_nonfinite=True)
    trainer, folder = lightning_lm_run(tmp_path / "run", 1e2, steps=30, tied=True, callbacks=(doctor,))
    saved = torch.load(next(folder.glob("*.ckpt")), weights_only=True)["state_dict"]
    assert saved["head.weight"].data_ptr() == saved["embed.weight"].data_ptr()  # (tied: one storage, two names)
    assert trainer.global_step == 10 and doctor.stopped_at == 10
    assert json.loads((folder / "nandoctor-baseline.json").read_text())["checkpoint"] == "initial weights"
    run = nandoctor.scan_run(folder)
    assert run.exit_code() == 1 and run.last_healthy is None


@pytest.mark.parametrize("logger", ["csv_apart", "default"])
def test_a_scan_after_training_reaches_the_callbacks_verdicts(tmp_path, logger):
    if logger == "default" and not _tensorboard():
        pytest.skip("Lightning's default logger is a CSVLogger without tensorboard: metrics.csv is beside the saves")
    doctor = NanDoctorCallback(stop_on_nonfinite=True)
    _, folder = lightning_lm_run(tmp_path / "run", 1e2, logger=logger, save_last=True, save_top_k=2,
                                 monitor="train_loss", callbacks=(doctor,))
    assert not list(folder.parent.glob("metrics.csv")) and not list(folder.glob("*.csv"))
    data = _verdicts(folder)
    scanned = folder.parent if logger == "default" else folder  # (lightning_logs/version_0, as the trial scanned it)
    run = nandoctor.scan_run(scanned)
    assert run.exit_code() == 1, [(c.name, c.status) for c in run.checkpoints]  # (was PASS CLEAN, last.ckpt healthy)
    assert run.last_healthy is None and data["last_clean"] is None
    # (what it judged with: the step-0 loss, an untrained model's, and the jump after it)
    assert data["losses"]["0"] == pytest.approx(4.85, rel=0.1) and float(data["losses"]["5"]) > 1e4
    assert run.first_bad.name == data["first_bad"]
    assert {c.name: c.clean for c in run.checkpoints} == {
        name: entry["gate"]["passed"] for name, entry in data["checkpoints"].items()}

    healthy = NanDoctorCallback(stop_on_nonfinite=True)  # the twin: both CLEAN, the same files
    _, folder = lightning_lm_run(tmp_path / "healthy", 1e-3, logger=logger, steps=20, save_last=True,
                                 callbacks=(healthy,))
    data = _verdicts(folder)
    assert healthy.stopped_at is None and all(e["gate"]["passed"] for e in data["checkpoints"].values())
    assert nandoctor.scan_run(folder.parent if logger == "default" else folder).exit_code() == 0


def test_a_resumed_fit_keeps_the_losses_before_its_step(tmp_path):
    """The losses an earlier fit kept, of the weights before the step resumed from, stay the run's (a resumed fit
    that wrote only its own would leave a later scan a log whose early loss is the resumed one's)."""
    _, folder = lightning_lm_run(tmp_path / "run", 1e-3, steps=20, callbacks=(NanDoctorCallback(),))
    first = _verdicts(folder)["losses"]
    assert sorted(map(int, first)) == [0, 5, 10, 15]
    lightning_lm_run(tmp_path / "run", 1e-3, steps=30, callbacks=(NanDoctorCallback(),),
                     ckpt_path=str(folder / "epoch=0-step=10.ckpt"))
    resumed = _verdicts(folder)["losses"]
    assert sorted(map(int, resumed)) == [0, 5, 10, 15, 20, 25]
    assert resumed["0"] == first["0"] and resumed["5"] == first["5"]  # (kept: before the resumed step)


def test_kept_losses_read_back_with_their_nan_and_nothing_else(tmp_path):
    """NaN/Inf (which JSON cannot hold) come back as they were; a key that is no step or a value that is no loss is
    left out; a link at the file's name is not followed (nandoctor's own file)."""
    from nandoctor.checkpoint.callbacklog import losses_json, read_losses

    losses = {0: {"loss": 4.8}, 5: {"loss": float("nan")}, 10: {"loss": float("inf")}}
    kept = {**losses_json(losses), "x": 1.0, "-3": 2.0, "15": "NaN", "20": True, "25": [1]}
    (tmp_path / "nandoctor.json").write_text(json.dumps({"losses": kept}))
    read = read_losses(tmp_path)
    assert sorted(read) == [0, 5, 10] and read[0]["loss"] == 4.8 and read[10]["loss"] == float("inf")
    assert read[5]["loss"] != read[5]["loss"]  # NaN
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "nandoctor.json").symlink_to(tmp_path / "nandoctor.json")
    assert read_losses(tmp_path / "elsewhere") == {}
