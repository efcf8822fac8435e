"""An optimizer state dict is optimizer state by its shape (``state`` + ``param_groups``), under whatever key a
training script keeps it (fairseq's ``last_optimizer_state``, a GAN's ``optimizer_G``, pix2pix's ``optimizerG``,
``opt``): its step counters and moments are never weights.

A zoo trial: Adam's ``step`` of 200,000 under those keys was an EXPLODED weight (a healthy checkpoint, exit 1), and
the repair of such a file restored the healthy step counters from the older donor (90,000, beside moments of
200,000 steps: Adam's bias correction wrong on resume), saying REPAIRED. torch.load is the oracle.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

import nandoctor  # noqa: E402
from tests.conftest import run_cli  # noqa: E402


def _trained(steps: float) -> tuple[dict, dict]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 8)).sum().backward()
    optimizer.step()
    state = optimizer.state_dict()
    for moments in state["state"].values():
        moments["step"] = torch.tensor(float(steps))
    return model.state_dict(), state


@pytest.mark.parametrize("key", ["last_optimizer_state", "optimizer_G", "optimizerG", "opt", "opt_state"])
def test_a_step_counter_under_any_key_is_optimizer_state(tmp_path, key):
    weights, state = _trained(200_000)
    torch.save({"model": weights, key: state, "epoch": 12}, tmp_path / "ckpt.pt")
    report = nandoctor.scan(str(tmp_path / "ckpt.pt"), device="cpu")
    assert report.exit_code == 0, report.verdict
    roles = {t.ref.name: t.ref.role for t in report.tensors}
    assert roles[f"{key}.state.0.step"] == roles[f"{key}.state.0.exp_avg_sq"] == "optimizer"
    assert roles["model.0.weight"] == "weight"
    live = nandoctor.scan_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    assert live.exit_code == 0 and {t.ref.name: t.ref.role for t in live.tensors} == roles
    bare = nandoctor.scan_state_dict(state)  # (a bare optimizer.state_dict(), its keys at the top)
    assert bare.exit_code == 0 and {t.ref.role for t in bare.tensors} == {"optimizer"}
    # a NaN moment there alone: the serving gate the error names works for this layout (a review: optimizer* did not)
    state["state"][0]["exp_avg"][0, 0] = math.nan
    torch.save({"model": weights, key: state, "epoch": 12}, tmp_path / "ckpt.pt")
    with pytest.raises(nandoctor.NonFiniteWeightsError) as caught:
        nandoctor.assert_finite(tmp_path / "ckpt.pt")
    assert "only optimizer state holds NaN/Inf" in caught.value.message
    assert nandoctor.assert_finite(tmp_path / "ckpt.pt", exclude=[f"{key}.*"]).verdict == "CLEAN"
    assert f"exclude=['{key}.*']" in caught.value.hint


def test_nan_moments_under_any_key_fail_as_optimizer_state_and_the_repair_keeps_healthy_counters(tmp_path):
    weights, donor_state = _trained(90_000)
    torch.save({"model": weights, "last_optimizer_state": donor_state}, tmp_path / "donor.pt")
    weights, state = _trained(200_000)
    state["state"][2]["exp_avg"][0, 0] = math.nan
    torch.save({"model": weights, "last_optimizer_state": state}, tmp_path / "bad.pt")
    report = nandoctor.scan(str(tmp_path / "bad.pt"), device="cpu")
    assert report.exit_code == 1
    assert {t.ref.name: t.ref.role for t in report.tensors if t.findings} == {
        "last_optimizer_state.state.2.exp_avg": "optimizer"}
    done = run_cli("repair", tmp_path / "bad.pt", "--from", tmp_path / "donor.pt", "--out", tmp_path / "fixed")
    assert done.exit_code == 0, done.output
    fixed = torch.load(tmp_path / "fixed" / "bad.pt", weights_only=True)["last_optimizer_state"]["state"]
    assert [float(m["step"]) for m in fixed.values()] == [200_000.0] * 4  # (not the donor's 90,000)
    assert torch.equal(fixed[2]["exp_avg"], donor_state["state"][2]["exp_avg"])
    assert torch.equal(fixed[0]["exp_avg"], state["state"][0]["exp_avg"])


def test_a_model_saved_beside_an_optimizers_state_keeps_its_weights_role(tmp_path):
    """An adversary: torch.save({**optimizer.state_dict(), "model": model.state_dict()}) made the model's NaN weight
    "optimizer state only", and the serving gate the error printed passed it. Only the optimizer's own state and
    param_groups are optimizer state; a model's state dict stored under "state" is no optimizer's (its values are
    tensors, not per-parameter dicts)."""
    weights, state = _trained(10)
    weights["0.weight"][0, 0] = math.nan
    torch.save({**state, "model": weights}, tmp_path / "merged.pt")
    report = nandoctor.scan(str(tmp_path / "merged.pt"), device="cpu")
    roles = {t.ref.name: t.ref.role for t in report.tensors}
    assert roles["model.0.weight"] == "weight" and roles["state.0.exp_avg"] == "optimizer"
    with pytest.raises(nandoctor.NonFiniteWeightsError) as caught:
        nandoctor.assert_finite(tmp_path / "merged.pt")
    assert "only optimizer state" not in caught.value.message
    torch.save({"state": weights, "param_groups": state["param_groups"]}, tmp_path / "state.pt")
    assert {t.ref.role for t in nandoctor.scan(str(tmp_path / "state.pt"), device="cpu").tensors} == {"weight"}
    assert {t.ref.role for t in nandoctor.scan_state_dict({**state, "model": weights}).tensors
            if t.ref.name.startswith("model.")} == {"weight"}
