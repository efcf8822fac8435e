"""A loss jump no bad checkpoint confirms moves nothing (docs/health.md), but is said: a run whose loss rose ~60x and
stayed up with every weight finite and modest (a trial, lr 3) scanned CLEAN without a word. One spike at the last
logged step, which no later log confirms, is not said: a healthy run's odd batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

import nandoctor  # noqa: E402
from nandoctor.report.run_report import one_line  # noqa: E402


def _run(root: Path, losses: list[float]) -> Path:
    """Checkpoints at steps 2, 4, … holding the same healthy weights, each trainer_state.json logging ``losses`` up to
    its step (a loss per step)."""
    torch.manual_seed(0)
    weights = {"model.layers.0.mlp.weight": torch.randn(8, 8) * 0.02, "lm_head.weight": torch.randn(16, 8) * 0.02}
    for step in range(2, len(losses) + 1, 2):
        folder = root / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        save_file(weights, folder / "model.safetensors")
        history = [{"step": s, "loss": losses[s - 1]} for s in range(1, step + 1)]
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": history}))
    return root


def test_a_loss_that_rose_and_stayed_up_is_said_and_a_last_spike_is_not(tmp_path: Path) -> None:
    risen = nandoctor.scan_run(str(_run(tmp_path / "risen", [7.0, 7.2, 6.9, 7.1, 40.0, 90.0, 200.0, 640.0])))
    assert risen.exit_code() == 0  # (the rule never fails a checkpoint on its own)
    assert one_line(risen).endswith("trainer log: loss 40 at step 5, 5.67x its early 7.05")  # (median of 4)
    spike = nandoctor.scan_run(str(_run(tmp_path / "spike", [7.0, 7.2, 6.9, 7.1, 6.8, 6.7, 6.9, 40.0])))
    assert spike.exit_code() == 0 and "trainer log" not in one_line(spike)
    jumps = [nandoctor.to_json(r)["run"]["train_log"]["loss_jump"] for r in (risen, spike)]
    assert [(j["step"], j["confirmed"]) for j in jumps] == [(5, True), (8, False)]  # (JSON says which)
