"""A poisoned checkpoint saved after its run's loss broke (the trainer log's jump): every report says that a repair
keeps its other tensors from after the break, beside the resume point before it."""

from __future__ import annotations

import json

import numpy as np
from safetensors.numpy import save_file

import nandoctor
from tests.conftest import run_cli


def test_a_checkpoint_saved_after_the_loss_broke_gets_a_caution_with_its_repair(tmp_path):
    """A report review: the run scan said no checkpoint saved from the loss jump on is a resume point, then offered
    `repair --from auto` of such a checkpoint without a word. The run scan, a standalone scan and the repair's
    notes now say the repair keeps its other tensors from after the break."""
    rng = np.random.default_rng(0)
    weights = {f"model.layers.{i}.mlp.up_proj.weight": (rng.standard_normal((64, 32)) * 0.02).astype(np.float32)
               for i in range(4)}
    losses = [(s, 4.0 - s / 100) for s in range(10, 210, 10)] + [(s, 5.0 * (s - 200) / 10) for s in range(210, 280, 10)]
    for step in (100, 200, 300):
        folder = tmp_path / "run" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        saved = {k: v.copy() for k, v in weights.items()}
        if step == 300:
            saved["model.layers.2.mlp.up_proj.weight"][0, :3] = np.nan
        save_file(saved, str(folder / "model.safetensors"))
        history = [{"step": s, "loss": loss} for s, loss in losses if s <= step]
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": history}))
    run, target = tmp_path / "run", tmp_path / "run" / "checkpoint-300"
    said = " ".join(run_cli("scan", run).output.split())
    assert "saved after the trainer log's loss broke" in said and "nandoctor repair" in said, said
    alone = " ".join(run_cli("scan", target).output.split())
    assert "saved after the trainer log's loss broke" in alone, alone
    result = nandoctor.repair(target, "auto", tmp_path / "fixed")
    assert result.ok and any("saved after the trainer log's loss broke" in n for n in result.plan.notes)
    early = " ".join(run_cli("scan", tmp_path / "run" / "checkpoint-200").output.split())
    assert "loss broke" not in early
