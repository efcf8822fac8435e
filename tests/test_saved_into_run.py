"""A model saved into a folder of a run (``trainer.save_model(out + "/final")``, ``best_model/``) is one of the run's
rows and decides its exit code, as the final model at the run's top does (checkpoint/runs.py, models_saved_into).

A trial on real Trainer runs: NaN in every value of one weight of ``final/`` passed the run CLEAN (its two
checkpoints were read, ``final/`` never, and nothing said so) while ``from_pretrained("final")`` + ``generate``
died with "probability tensor contains either inf, nan or element < 0". The oracle is from_pretrained itself.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

import nandoctor  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.pattern_runs import load, tiny_llama, train  # noqa: E402

pytestmark = pytest.mark.integration

POISONED = "model.layers.1.mlp.up_proj.weight"


def test_a_model_saved_into_the_run_decides_and_its_repair_put_in_place_passes(tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import Trainer, TrainingArguments

    run = tmp_path / "out"
    model = tiny_llama()
    train(run, model=model, steps=20, save_steps=10, learning_rate=1e-2, optim="adamw_torch")
    Trainer(model=model, args=TrainingArguments(output_dir=str(run), report_to="none", use_cpu=True)).save_model(
        str(run / "final"))  # (the Trainer's own save of the final model into a folder of the run)
    assert nandoctor.scan_run(str(run), device="cpu").exit_code() == 0  # a healthy final/ passes
    names = [c.name for c in nandoctor.scan_run(str(run), device="cpu").checkpoints]
    assert names == ["checkpoint-10", "checkpoint-20", "final/"]

    weights = run / "final" / "model.safetensors"
    tensors = load_file(weights)
    tensors[POISONED] = torch.full_like(tensors[POISONED], float("nan"))
    save_file(tensors, weights, metadata={"format": "pt"})
    loaded, _ = load(run / "final")  # the oracle: every value of the weight NaN as loaded
    assert bool(torch.isnan(loaded.get_parameter(POISONED)).all())
    # (an adversarial round: final/ older than the checkpoints by its file times, as a copy in name order, a rotation
    # or an optimizer.pt deleted to free disk leave it, was taken for a model the run started from and passed) it
    # decides whatever the times, beside the run's own newest checkpoint, and is no resume point
    import os

    for file in (run / "final").iterdir():
        os.utime(file, (1e9, 1e9))
    os.utime(run / "final", (1e9, 1e9))
    aged = nandoctor.scan_run(str(run), device="cpu")
    assert aged.exit_code() == 1 and aged.decider().name == "final/" and aged.last_healthy.name == "checkpoint-20"

    result = run_cli("scan", str(run), "--json")
    data = json.loads(result.output)
    assert result.exit_code == 1 and data["summary"]["decided_by"] == "final/"
    assert data["run"]["first_bad"] == "final/" and data["run"]["last_healthy"] == "checkpoint-20"
    final = data["run"]["checkpoints"][-1]
    assert final["final"] is True and final["status"] == "poisoned"
    said = run_cli("scan", str(run)).output
    # (a review: the closing line said "saved after the final model … the run went on past what would be loaded")
    assert "final/, a model saved into the run, decides the exit code beside its checkpoints" in " ".join(said.split())
    command = next(line.strip() for line in said.splitlines() if line.strip().startswith("nandoctor repair"))
    assert command == f"nandoctor repair {run / 'final'} --from auto --out {run / 'final-repaired'}"
    done = subprocess.run([sys.executable, "-m", "nandoctor", *command.split()[1:]], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # the repair not yet in place is no row of the run: the bad final/ still decides, and the run says to use it
    pending = run_cli("scan", str(run))
    assert pending.exit_code == 1 and "final-repaired is a verified repair of final/" in " ".join(pending.output.split())
    move = next(line.strip() for line in done.stdout.splitlines() if line.strip().startswith("mv "))
    assert subprocess.run(["bash", "-c", move]).returncode == 0
    loaded, _ = load(run / "final")
    assert all(bool(torch.isfinite(p).all()) for p in loaded.parameters())
    after = run_cli("scan", str(run))
    assert after.exit_code == 0 and "not part of the timeline: final-bad/" in " ".join(after.output.split())


def test_only_a_model_saved_into_a_run_decides_and_a_merged_model_is_not_told_to_take_adapter_donors(tmp_path):
    """A trial: eval/predictions.pt (a regression's outputs in dollars) and eval/metrics.pt (a NaN F1) decided a
    healthy run, a sweep_cfg/ holding training_args.bin and an opt_backup/ holding optimizer.pt made it INCOMPLETE;
    a merged LoRA model in merged/ of a run of adapter checkpoints was told `repair --from auto`, which found no donor.
    A folder is a model where a loader would read one (a config, weight files named as loaders name them); a run's
    checkpoints are donors only where they hold the bad tensors."""
    from safetensors.torch import save_file

    run = tmp_path / "out"
    model = tiny_llama()
    train(run, model=model, steps=10, save_steps=5, learning_rate=1e-2, optim="adamw_torch")
    (run / "eval").mkdir()
    torch.save({"preds": torch.full((8,), 3e5), "labels": torch.full((8,), 2.9e5)}, run / "eval" / "predictions.pt")
    torch.save({"f1": torch.tensor([0.9, float("nan")])}, run / "eval" / "metrics.pt")
    (run / "opt_backup").mkdir()
    torch.save({"state": {0: {"exp_avg": torch.zeros(4)}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
               run / "opt_backup" / "optimizer.pt")
    assert nandoctor.scan_run(str(run), device="cpu").exit_code() == 0
    assert [c.name for c in nandoctor.scan_run(str(run), device="cpu").checkpoints] == ["checkpoint-5", "checkpoint-10"]

    adapters = tmp_path / "lora"
    for step in (5, 10):  # (a PEFT run's checkpoints: adapter weights only)
        folder = adapters / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        save_file({"base_model.model.model.layers.0.mlp.down_proj.lora_A.weight": torch.randn(4, 32) * 0.02,
                   "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight": torch.zeros(32, 4)},
                  folder / "adapter_model.safetensors")
    merged = adapters / "merged"
    model.save_pretrained(merged)
    from safetensors.torch import load_file

    tensors = load_file(merged / "model.safetensors")
    tensors["model.layers.0.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(tensors, merged / "model.safetensors", metadata={"format": "pt"})
    said = " ".join(run_cli("scan", str(adapters)).output.split())
    assert "FAIL" in said and "merged/" in said and "--from auto" not in said, said[-800:]


def test_a_model_saved_into_a_lightning_run_decides_too(tmp_path):
    """An adversarial round: a Lightning run's checkpoints/ folder holding an HF model saved beside the step files
    (checkpoints/hf_final/ with NaN) passed CLEAN, never read: a Lightning run's saved models are rows too."""
    from safetensors.torch import load_file, save_file

    L = pytest.importorskip("lightning")

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def training_step(self, batch, _):
            return self.lin(batch).square().mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    from lightning.pytorch.callbacks import ModelCheckpoint

    folder = tmp_path / "checkpoints"
    trainer = L.Trainer(max_steps=4, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[ModelCheckpoint(dirpath=folder, every_n_train_steps=2, save_top_k=-1)])
    trainer.fit(Tiny(), torch.utils.data.DataLoader(torch.randn(16, 4), batch_size=4))
    assert nandoctor.scan_run(str(folder), device="cpu").exit_code() == 0
    model = tiny_llama()
    model.save_pretrained(folder / "hf_final")
    tensors = load_file(folder / "hf_final" / "model.safetensors")
    tensors[POISONED][0, 0] = float("nan")
    save_file(tensors, folder / "hf_final" / "model.safetensors", metadata={"format": "pt"})
    run = nandoctor.scan_run(str(folder), device="cpu")
    assert run.exit_code() == 1 and run.decider().name == "hf_final/"

