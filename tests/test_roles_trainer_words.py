"""A model parameter named like trainer state (``scaler``, ``scheduler``, ``hparams`` …) at the top of a plain
state dict is a weight: its NaN fails the scan as it does in safetensors (torch's load_state_dict puts it into the
model). Only a trainer checkpoint's trainer containers, beside its model or optimizer, are trainer state."""

from __future__ import annotations

import json

import pytest

from nandoctor.checkpoint.roles import TRAINER_KEYS
from nandoctor.engine import scan
from tests.conftest import run_cli

torch = pytest.importorskip("torch")

WORDS = sorted(TRAINER_KEYS)


def _model(word: str) -> torch.nn.Module:
    """A module whose top-level parameter is called ``word``, two of its values NaN, one +Inf."""
    module = torch.nn.Module()
    module.linear = torch.nn.Linear(4, 4)
    module.register_parameter(word, torch.nn.Parameter(torch.ones(6)))
    with torch.no_grad():
        getattr(module, word)[[1, 4]] = float("nan")
        getattr(module, word)[2] = float("inf")
    return module


@pytest.mark.parametrize("file_name", ["pytorch_model.bin", "weights.pt"])
@pytest.mark.parametrize("word", WORDS)
def test_a_parameter_named_like_trainer_state_is_a_weight_in_a_pickled_state_dict(tmp_path, word, file_name):
    from safetensors.torch import save_file

    model = _model(word)
    path = tmp_path / file_name
    torch.save(model.state_dict(), path)
    fresh = _model(word)
    fresh.load_state_dict(torch.load(path, weights_only=True))  # the oracle: the NaN reaches the model
    loaded = getattr(fresh, word).detach()
    nan, posinf = int(torch.isnan(loaded).sum()), int(torch.isposinf(loaded).sum())
    assert (nan, posinf) == (2, 1)

    report = scan(path, device="cpu")
    assert {t.name: t.role for t in report.tensors}[word] == "weight"
    assert report.exit_code == 1 and (report.nan, report.posinf) == (nan, posinf)
    assert [t.name for t in report.bad_tensors] == [word]
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "model.safetensors")
    same = scan(tmp_path / "model.safetensors", device="cpu")
    assert (same.exit_code, same.nan, same.posinf) == (report.exit_code, report.nan, report.posinf)
    quiet = run_cli("scan", "-q", path)
    assert quiet.exit_code == 1 and "not a finding" not in quiet.output


@pytest.mark.parametrize("beside", ["state_dict", "optimizer_states", "model", "module", "model_state_dict"])
def test_trainer_containers_beside_the_model_stay_trainer_state(tmp_path, beside):
    """A trainer checkpoint (the model or optimizer kept in a container) keeps its top-level trainer keys as
    trainer state: NaN there is counted, named, and no finding."""
    model = torch.nn.Linear(4, 4)
    torch.save({beside: model.state_dict(), "scheduler": {"best": torch.tensor([float("nan"), 1.0])},
                "callbacks": {"Tracker": {"kth_value": torch.tensor(float("inf"))}}}, tmp_path / "trainer.ckpt")
    report = scan(tmp_path / "trainer.ckpt", device="cpu")
    roles = {t.name: t.role for t in report.tensors}
    assert roles["scheduler.best"] == roles["callbacks.Tracker.kth_value"] == "trainer"
    assert {role for name, role in roles.items() if name.startswith(beside)} == {"weight"}
    assert report.exit_code == 0 and report.bad_tensors == ()
    summary = json.loads(run_cli("scan", "--json", tmp_path / "trainer.ckpt").output)["summary"]
    assert sorted(summary["trainer_nonfinite"]) == ["callbacks.Tracker.kth_value", "scheduler.best"]


def test_a_model_weight_file_holds_weights_whatever_its_keys(tmp_path):
    """``pytorch_model.bin`` is what transformers loads as the model: a trainer word there names weights,
    even in the layout of a trainer checkpoint."""
    nan = torch.tensor([float("nan"), 1.0])
    torch.save({"state_dict": torch.nn.Linear(2, 2).state_dict(), "callbacks": {"best": nan}},
               tmp_path / "pytorch_model.bin")
    report = scan(tmp_path / "pytorch_model.bin", device="cpu")
    assert {t.name: t.role for t in report.tensors}["callbacks.best"] == "weight"
    assert report.exit_code == 1 and report.nan == 1


def test_a_tensor_beside_a_tensor_named_model_is_no_trainer_checkpoint(tmp_path):
    """Only containers make a trainer checkpoint: a state dict whose parameters are called ``model`` and
    ``scaler`` is a plain state dict."""
    torch.save({"model": torch.ones(2), "scaler": torch.tensor([float("nan"), 2.0])}, tmp_path / "w.pt")
    report = scan(tmp_path / "w.pt", device="cpu")
    assert {t.role for t in report.tensors} == {"weight"} and report.exit_code == 1 and report.nan == 1
