"""Checkpoints that training scripts outside Hugging Face write (a zoo trial, each loaded with torch as the oracle):
mmengine's Runner, a loop's own scalars beside its model, a pickle protocol torch's default load refuses, a view
whose storage holds bytes it never shows."""

from __future__ import annotations

import math
import shlex
import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import nandoctor  # noqa: E402
from tests.conftest import run_cli  # noqa: E402


class HistoryBuffer:  # (mmengine.logging.HistoryBuffer's pickled shape: its logged values in a numpy array)
    def __init__(self, values: list[float]) -> None:
        self._log_history = np.array(values)
        self._count_history = np.ones(len(values))
        self.max_length = 1000000


def _model_and_optimizer() -> tuple[dict, dict]:
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    return model.state_dict(), optimizer.state_dict()


def test_an_mmengine_checkpoint_with_an_inf_logged_grad_norm_is_clean_and_numpy_values_can_be_excluded(tmp_path):
    """An AMP run logs grad_norm = inf on its skipped steps into message_hub: that trainer state failed the file
    (every such mmengine checkpoint), --exclude could not leave a numpy value out, and a repair refused."""
    weights, optimizer = _model_and_optimizer()
    saved = {"meta": {"epoch": 12, "iter": 3000, "seed": 0}, "state_dict": weights, "optimizer": optimizer,
             "message_hub": {"log_scalars": {"train/grad_norm": HistoryBuffer([1.5, math.inf, 2.0])}},
             "param_schedulers": [{"base_values": [0.1], "last_step": 12}]}
    torch.save(saved, tmp_path / "epoch_12.pth")
    report = nandoctor.scan(str(tmp_path / "epoch_12.pth"), device="cpu")
    assert report.exit_code == 0, report.verdict
    assert any("numpy value(s) of trainer state" in n and "message_hub.log_scalars.train/grad_norm" in n
               for n in report.notes)
    # a numpy value outside trainer state still fails, and is selected by its name as a tensor is
    saved["stats"] = {"mean": np.array([0.0, math.nan])}
    torch.save(saved, tmp_path / "with_stats.pth")
    assert nandoctor.scan(str(tmp_path / "with_stats.pth"), device="cpu").exit_code == 1
    assert run_cli("scan", tmp_path / "with_stats.pth", "--exclude", "stats.*", "-q").exit_code == 0


def test_a_nan_in_an_mmengine_parameter_schedulers_state_fails(tmp_path):
    """mmengine's ParamScheduler state (base_values, _last_value; no torch _last_lr): a NaN eta_min there is the
    learning rate of a resumed run, as in a torch scheduler's state (a review: read as trainer state, never judged)."""
    weights, optimizer = _model_and_optimizer()
    schedulers = [{"param_name": "lr", "base_values": [0.1], "last_step": 3, "eta_min": math.nan, "_last_value": [0.05]}]
    torch.save({"meta": {"epoch": 3}, "state_dict": weights, "optimizer": optimizer, "param_schedulers": schedulers},
               tmp_path / "epoch_3.pth")
    report = nandoctor.scan(str(tmp_path / "epoch_3.pth"), device="cpu")
    assert report.exit_code == 1
    assert {t.ref.name: t.ref.role for t in report.tensors if t.findings} == {"param_schedulers.0.eta_min": "optimizer"}
    schedulers[0]["eta_min"] = 0.0
    torch.save({"meta": {"epoch": 3}, "state_dict": weights, "optimizer": optimizer, "param_schedulers": schedulers},
               tmp_path / "epoch_3.pth")
    assert nandoctor.scan(str(tmp_path / "epoch_3.pth"), device="cpu").exit_code == 0


def test_a_loops_scalars_beside_its_model_are_trainer_state_whatever_else_is_there(tmp_path):
    """{"model": …, "best_val_loss": tensor(inf)} was clean, and failed once a "loss_history" tensor sat beside it."""
    weights, _ = _model_and_optimizer()
    torch.save({"model": weights, "best_val_loss": torch.tensor(math.inf), "loss_history": torch.tensor([2.0, 1.0])},
               tmp_path / "ckpt.pt")
    report = nandoctor.scan(str(tmp_path / "ckpt.pt"), device="cpu")
    assert report.exit_code == 0
    assert {t.ref.name: t.ref.role for t in report.tensors}["best_val_loss"] == "trainer"
    # an early-stopping callback's state nested beside the model: one-element tensors alone, the loop's too; an
    # entry holding a larger tensor (an EMA of the weights) is still judged as weights
    ema = {k: v.clone() for k, v in weights.items()}
    ema["weight"][0, 0] = math.nan
    torch.save({"model": weights, "early_stopping": {"best_score": torch.tensor(math.inf), "counter": 3}},
               tmp_path / "nested.pt")
    nested = nandoctor.scan(str(tmp_path / "nested.pt"), device="cpu")
    assert nested.exit_code == 0 and nested.tensors.refs.roles[nested.tensors.refs.names.index(
        "early_stopping.best_score")] == "trainer"
    torch.save({"model": weights, "ema": {"decay": torch.tensor(0.999), "shadow": ema}}, tmp_path / "ema.pt")
    assert nandoctor.scan(str(tmp_path / "ema.pt"), device="cpu").exit_code == 1


def test_a_pickle_protocol_torchs_default_load_refuses_is_said(tmp_path):
    weights, _ = _model_and_optimizer()
    torch.save(weights, tmp_path / "p4.pt", pickle_protocol=4)
    with pytest.raises(Exception, match="Unsupported operand"):  # the oracle: torch.load's default
        torch.load(tmp_path / "p4.pt")
    report = nandoctor.scan(str(tmp_path / "p4.pt"), device="cpu")
    assert report.exit_code == 0 and any("pickled with protocol 4" in n for n in report.notes)
    torch.save(weights, tmp_path / "p2.pt")
    assert not any("protocol" in n for n in nandoctor.scan(str(tmp_path / "p2.pt"), device="cpu").notes)


def test_the_re_save_a_repair_refusal_gives_for_unviewed_bytes_works_verbatim(tmp_path):
    """The hint said torch.save(model.state_dict()) writes only the viewed bytes: it writes the whole storage, and
    the re-saved file failed the same way. The hint's own command now makes a file that passes."""
    history = torch.full((1000,), math.nan)
    history[:3] = torch.tensor([3.0, 2.0, 1.0])
    weights, _ = _model_and_optimizer()
    torch.save({"model": weights, "val_loss_history": history[:3]}, tmp_path / "prefilled.pt")
    torch.save({"model": weights, "val_loss_history": torch.tensor([3.0, 2.0, 1.0])}, tmp_path / "donor.pt")
    assert nandoctor.scan(str(tmp_path / "prefilled.pt"), device="cpu").exit_code == 1
    refused = run_cli("repair", tmp_path / "prefilled.pt", "--from", tmp_path / "donor.pt", "--out", tmp_path / "out")
    assert refused.exit_code == 3
    command = " ".join(refused.output.split()).split("of a view writes its whole storage): ", 1)[1].split(
        "; then scan", 1)[0]
    subprocess.run(shlex.split(command), check=True)
    resaved = tmp_path / "prefilled-resaved.pt"
    assert nandoctor.scan(str(resaved), device="cpu").exit_code == 0
    assert torch.equal(torch.load(resaved, weights_only=True)["val_loss_history"], torch.tensor([3.0, 2.0, 1.0]))
