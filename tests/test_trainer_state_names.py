"""A Lightning callback's state key in a verdict line: `callbacks.ModelCheckpoint{…}.kth_value`, not the callback's
every argument (the tester's gate line); the JSON keeps the whole key."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from nandoctor.integrations.gate import CheckpointGate
from tests.conftest import run_cli

pytest.importorskip("lightning")


@pytest.fixture
def ckpt(tmp_path):
    """A Lightning checkpoint whose ModelCheckpoint holds its `kth_value = inf` sentinel, as Lightning saves it."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    callback = ModelCheckpoint(monitor="val_loss", save_top_k=2)
    assert "'train_time_interval': None" in callback.state_key  # the key the tester saw in the line
    path = tmp_path / "epoch=0-step=10.ckpt"
    torch.save({"state_dict": torch.nn.Linear(4, 4).state_dict(), "global_step": 10,
                "callbacks": {callback.state_key: callback.state_dict()}}, path)
    return path, f"callbacks.{callback.state_key}.kth_value"


SHORT = "1 +Inf in trainer state (callbacks.ModelCheckpoint{…}.kth_value), not a finding"


def test_the_gate_line_names_the_callback_without_its_arguments(ckpt, caplog):
    path, _ = ckpt
    with caplog.at_level(logging.INFO, logger="nandoctor.integrations"):
        passed, report = CheckpointGate().check(path, 10)
    assert passed is True and report is not None
    assert caplog.messages == [f"nandoctor: PASS CLEAN {path}: no finding in 3 tensors; {SHORT}"]


def test_console_quiet_markdown_and_html_shorten_it_and_json_keeps_it_whole(ckpt, tmp_path):
    path, full = ckpt
    quiet = run_cli("scan", path, "-q")
    assert quiet.exit_code == 0 and quiet.output == f"PASS CLEAN {path}: no finding in 3 tensors; {SHORT}\n"
    assert "monitor" not in run_cli("scan", path, "--no-progress").output
    assert "ModelCheckpoint\\{…\\}.kth\\_value" in run_cli("scan", path, "--markdown").output
    run_cli("scan", path, "-q", "--html", tmp_path / "r.html")
    assert f"no finding in 3 tensors; {SHORT}" in (tmp_path / "r.html").read_text()  # the verdict box's line
    data = json.loads(run_cli("scan", path, "--json").output)
    assert data["summary"]["trainer_nonfinite"] == [full]
    assert full in {t["name"] for t in data["tensors"]}


def test_a_runs_console_report_and_markdown_heading_say_what_quiet_says(tmp_path):
    """A reports trial on a Lightning run: --quiet, Markdown and HTML said "1 +Inf in trainer state …, not a finding",
    the console run report never did; Markdown's heading said "FAIL NON-FINITE (training run)" where its own first
    line and --quiet said "(POISONED)"."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    callback = ModelCheckpoint(monitor="val_loss", save_top_k=2)
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.manual_seed(0)
    for step in (10, 20, 30):
        weights = torch.nn.Linear(16, 16).state_dict()
        if step == 30:
            weights["weight"][0, 0] = float("nan")
        torch.save({"state_dict": weights, "global_step": step, "callbacks": {callback.state_key: callback.state_dict()}},
                   folder / f"epoch=0-step={step}.ckpt")
    quiet = run_cli("scan", folder, "-q").output
    assert quiet.startswith("FAIL NON-FINITE (POISONED)") and SHORT in quiet, quiet
    console = run_cli("scan", folder, "--no-progress").output
    assert SHORT in " ".join(console.split()), console
    assert run_cli("scan", folder, "--markdown").output.startswith("## nandoctor: ❌ FAIL NON-FINITE (POISONED) (training run)")
