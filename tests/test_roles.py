"""Tensor roles (checkpoint/roles.py) on real files: trainer state is where a trainer keeps it (a trainer
file, a top-level key of a pickled trainer checkpoint), never a word in a parameter name."""

from __future__ import annotations

import numpy as np
import pytest

from fixtures.builders import RawTensor, finite_bits, write_safetensors
from nandoctor.engine import scan

torch = pytest.importorskip("torch")

TRAINER_WORDS = ["scaler", "scheduler", "callbacks", "loops", "hparams", "lr_scheduler", "rng_state"]


def _weights(n: int, seed: int) -> RawTensor:
    return RawTensor("F32", (n,), finite_bits("F32", n, np.random.default_rng(seed)).astype(np.uint32).tobytes())


def _nan(n: int) -> RawTensor:
    return RawTensor("F32", (n,), np.full(n, np.nan, np.float32).tobytes())


@pytest.mark.parametrize("word", TRAINER_WORDS)
def test_a_safetensors_module_named_like_trainer_state_is_a_weight_and_its_nan_fails(tmp_path, word):
    write_safetensors(tmp_path / "m.safetensors", {
        "encoder.weight": _weights(64, 1), f"{word}.weight": _nan(64), f"{word}.bias": _weights(8, 2),
        f"model.{word}.0.ModelCheckpoint.kth_value": RawTensor("F32", (), np.float32(np.inf).tobytes()),
    })
    report = scan(tmp_path / "m.safetensors", device="cpu")
    roles = {t.name: t.role for t in report.tensors}
    assert set(roles.values()) == {"weight"}, roles
    assert report.exit_code == 1 and report.verdict == "NON-FINITE" and report.nan == 64 and report.posinf == 1
    assert sorted(t.name for t in report.bad_tensors) == sorted([f"model.{word}.0.ModelCheckpoint.kth_value", f"{word}.weight"])


def test_names_still_mark_optimizer_state_and_buffers(tmp_path):
    write_safetensors(tmp_path / "m.safetensors", {
        "optimizer.state.0.step": RawTensor("F32", (), np.float32(2e5).tobytes()),
        "transformer.h.0.attn.masked_bias": RawTensor("F32", (), np.float32(-1e9).tobytes()),
        "transformer.h.0.attn.c_attn.weight": _weights(4096, 4),
    })
    report = scan(tmp_path / "m.safetensors", device="cpu")
    assert {t.name: t.role for t in report.tensors} == {
        "optimizer.state.0.step": "optimizer", "transformer.h.0.attn.masked_bias": "buffer",
        "transformer.h.0.attn.c_attn.weight": "weight"}
    assert all(t.findings == () for t in report.tensors) and report.exit_code == 0


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.scaler, self.scheduler = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 2)


def _poisoned_net() -> Net:
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        net.scaler.weight.fill_(float("nan"))
    return net


def test_a_pickled_trainer_checkpoint_keeps_its_top_level_trainer_keys_as_trainer_state(tmp_path):
    """Lightning's layout: the model's ``scaler.weight`` is one key of ``state_dict`` (a weight); the
    ``callbacks`` and ``loops`` beside it are trainer state (kth_value = inf is no finding)."""
    sd = _poisoned_net().state_dict()
    torch.save({"epoch": 3, "state_dict": sd,
                "callbacks": {"ModelCheckpoint{'monitor': None}": {"kth_value": torch.tensor(float("inf"))}},
                "loops": {"fit_loop": {"state_dict": {"scaler.weight": torch.tensor([float("nan")])}}}},
               tmp_path / "last.ckpt")
    torch.save(sd, tmp_path / "bare.pt")  # a bare state dict: its keys are the model's names
    ckpt = scan(tmp_path / "last.ckpt", device="cpu")
    roles = {t.name: t.role for t in ckpt.tensors}
    assert roles["callbacks.ModelCheckpoint{'monitor': None}.kth_value"] == "trainer"
    assert roles["loops.fit_loop.state_dict.scaler.weight"] == "trainer"
    assert roles["state_dict.scaler.weight"] == "weight" and roles["state_dict.scheduler.bias"] == "weight"
    assert [t.name for t in ckpt.bad_tensors] == ["state_dict.scaler.weight"] and ckpt.nan == 64
    bare = scan(tmp_path / "bare.pt", device="cpu")
    assert {t.role for t in bare.tensors} == {"weight"}
    assert [t.name for t in bare.bad_tensors] == ["scaler.weight"] and bare.exit_code == 1


def test_a_live_module_named_like_trainer_state_fails_scan_module_and_assert_finite(tmp_path):
    from safetensors.torch import save_file

    import nandoctor

    net = _poisoned_net()
    live = nandoctor.scan_module(net)
    assert {t.role for t in live.tensors} == {"weight"}
    assert live.exit_code == 1 and [t.name for t in live.bad_tensors] == ["scaler.weight"]
    assert nandoctor.scan_state_dict(net.state_dict()).exit_code == 1
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "m.safetensors")
    with pytest.raises(nandoctor.NonFiniteWeightsError, match=r"1 of 6 tensors hold NaN/Inf \(64 NaN, 0 \+Inf, 0 -Inf\) in scaler "):
        nandoctor.assert_finite(tmp_path / "m.safetensors")


def test_nonfinite_trainer_state_is_no_finding_but_is_never_called_finite(tmp_path):
    import json

    from tests.conftest import run_cli

    torch.save({"state_dict": torch.nn.Linear(4, 4).state_dict(),
                "callbacks": {"ModelCheckpoint{'monitor': None}": {"kth_value": torch.tensor(float("inf"))},
                              "Tracker": {"best": torch.full((3,), float("nan"))}}}, tmp_path / "a.ckpt")
    fact = "3 NaN, 1 +Inf in trainer state (callbacks.ModelCheckpoint{…}.kth_value, callbacks.Tracker.best), not a finding"
    quiet = run_cli("scan", str(tmp_path / "a.ckpt"), "-q")
    assert quiet.exit_code == 0 and quiet.output == f"PASS CLEAN {tmp_path / 'a.ckpt'}: no finding in 4 tensors; {fact}\n"
    console = run_cli("scan", str(tmp_path / "a.ckpt"))
    assert f"✓ CLEAN: no finding in 4 tensors; {fact}" in console.output and "finite and healthy" not in console.output
    summary = json.loads(run_cli("scan", str(tmp_path / "a.ckpt"), "--json").output)["summary"]
    assert summary["verdict"] == "CLEAN" and summary["nan"] == 0
    assert summary["trainer_nonfinite"] == ["callbacks.ModelCheckpoint{'monitor': None}.kth_value", "callbacks.Tracker.best"]
    markdown = run_cli("scan", str(tmp_path / "a.ckpt"), "--markdown").output
    assert "in trainer state (callbacks.ModelCheckpoint\\{…\\}.kth\\_value, callbacks.Tracker.best), not a finding" in markdown


def test_averaged_weights_kept_by_stochastic_weight_averaging_are_judged_as_weights(tmp_path):
    """Lightning's StochasticWeightAveraging swaps ``average_model_state`` into the model when training
    ends: NaN there is NaN in the model that ships, a finding, though it sits in callback state."""
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    model = torch.nn.Linear(8, 8)
    swa = StochasticWeightAveraging(swa_lrs=0.01)
    swa._average_model = torch.optim.swa_utils.AveragedModel(model)
    with torch.no_grad():
        swa._average_model.module.weight.fill_(float("nan"))
    state = swa.state_dict()
    assert "average_model_state" in state
    torch.save({"state_dict": model.state_dict(), "callbacks": {"StochasticWeightAveraging": state}}, tmp_path / "swa.ckpt")
    report = scan(tmp_path / "swa.ckpt", device="cpu")
    roles = {t.name: t.role for t in report.tensors}
    assert roles["callbacks.StochasticWeightAveraging.average_model_state.module.weight"] == "weight"
    assert [t.name for t in report.bad_tensors] == ["callbacks.StochasticWeightAveraging.average_model_state.module.weight"]
    assert report.exit_code == 1 and report.nan == 64


@pytest.mark.parametrize("callbacks, bad", [
    ({"EMACallback": {"initted": torch.tensor(True), "step": torch.tensor(7),  # ema-pytorch's flat state dict
                      "ema_model.layer.weight": "NAN", "ema_model.layer.bias": torch.zeros(4)}},
     "callbacks.EMACallback.ema_model.layer.weight"),
    ({"EMA": {"ema_weights": {"layer": "NAN"}}}, "callbacks.EMA.ema_weights.layer"),
    ({"EMACallback": {"ema_params": ["NAN"]}}, "callbacks.EMACallback.ema_params.0"),
    ({"WeightAveraging": {"averaged_model_state": {"layer": "NAN"}}}, "callbacks.WeightAveraging.averaged_model_state.layer"),
    ({"EMA": {"ema": ["NAN"]}}, "callbacks.EMA.ema.0"),
])
def test_averaged_copies_of_the_model_in_callback_state_are_weights_by_their_names(tmp_path, callbacks, bad):
    """An adversarial round: EMA weights under common callback keys (``ema_model.…``, ``ema_weights``, ``ema_params``,
    ``averaged_model_state``, ``ema``) passed as trainer state ("1 NaN in trainer state, not a finding"), while
    whoever loads the EMA copy for inference gets NaN. A key whose words name an averaged copy of a model is model
    state; an ``ema_decay`` beside it, or an early-stopping score, stays trainer state."""
    def filled(value):
        if value == "NAN":
            return torch.full((4, 4), float("nan"))
        if isinstance(value, dict):
            return {k: filled(v) for k, v in value.items()}
        return [filled(v) for v in value] if isinstance(value, list) else value

    state = {k: {**filled(v), "ema_decay": torch.tensor(float("inf"))} for k, v in callbacks.items()}
    state["EarlyStopping"] = {"best_score": torch.tensor(float("inf"))}
    # (a trial: a callback's own per-task loss EMA named ema_weights, one tensor itself, not a model's averaged copy)
    state["TaskWeights"] = {"ema_weights": torch.tensor([2.3e5, 1.7e5, 0.02]),
                            "ema_state": {"best": torch.tensor([float("inf")] * 3)}}
    torch.save({"state_dict": torch.nn.Linear(4, 4).state_dict(), "callbacks": state}, tmp_path / "e.ckpt")
    report = scan(tmp_path / "e.ckpt", device="cpu")
    assert [t.name for t in report.bad_tensors] == [bad] and report.exit_code == 1 and report.nan == 16
    roles = {t.name: t.role for t in report.tensors}
    assert roles[bad] == "weight" and roles["callbacks.EarlyStopping.best_score"] == "trainer"
    assert roles["callbacks.TaskWeights.ema_weights"] == roles["callbacks.TaskWeights.ema_state.best"] == "trainer"
    assert next(r for n, r in roles.items() if n.endswith(".ema_decay")) == "trainer"


@pytest.mark.parametrize("key", ["ema_module", "ema_net", "ema_teacher", "teacher", "avg_model"])
def test_a_copy_of_the_model_in_callback_state_is_weights_by_more_key_words(tmp_path, key):
    """An adversarial round: a callback keeping a full copy of the model's state dict under ema_module, ema_net,
    ema_teacher, teacher or avg_model passed its NaN as trainer state. (A review then showed that matching the model's
    weight names instead also took a callback's per-parameter statistics, a gradient max at -Inf for a frozen weight,
    for the model: the key's words decide, an ``ema_state`` stays the callback's.)"""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    copy = {name: value.clone() for name, value in model.state_dict().items()}
    copy["2.weight"][0, 0] = float("nan")
    stats = {name: torch.full_like(value, float("-inf")) for name, value in model.state_dict().items()}
    torch.save({"state_dict": model.state_dict(), "callbacks": {"EMA": {key: copy, "decay": torch.tensor(0.99)},
                                                                "GradMax": {"grad_max": stats}}}, tmp_path / "e.ckpt")
    report = scan(tmp_path / "e.ckpt", device="cpu")
    assert [t.name for t in report.bad_tensors] == [f"callbacks.EMA.{key}.2.weight"] and report.exit_code == 1
    roles = {t.name: t.role for t in report.tensors}
    assert roles["callbacks.EMA.decay"] == roles["callbacks.GradMax.grad_max.2.weight"] == "trainer"


def test_a_model_part_called_optimizer_is_judged_as_weights(tmp_path):
    """`optimizer.weight` of a submodule named `optimizer` is a weight (1e30 there is exploded), in a
    safetensors file and a live module; optimizer state dicts nested under such a word stay optimizer state."""
    import numpy as np
    from safetensors.numpy import save_file

    import nandoctor
    from nandoctor.checkpoint.roles import OPTIMIZER, WEIGHT, role_of

    assert role_of("optimizer.weight") == role_of("model.optimizer.bias") == WEIGHT
    assert role_of("optimizer.state.3.exp_avg") == role_of("optimizer_states.0.state.1.exp_avg_sq") == OPTIMIZER
    assert role_of("optimizer_state_dict.fp32_flat_groups.0") == OPTIMIZER
    weights = {"encoder.weight": np.full((16, 16), 0.02, np.float32), "optimizer.weight": np.full((16, 16), 0.02, np.float32)}
    weights["optimizer.weight"][3, 3] = 1e30
    save_file(weights, tmp_path / "model.safetensors")
    report = nandoctor.scan(tmp_path / "model.safetensors")
    found = next(t for t in report.tensors if t.ref.name == "optimizer.weight")
    assert report.exit_code == 1 and "exploded" in found.findings and found.ref.role == WEIGHT
