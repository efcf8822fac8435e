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

    result = run_cli("scan", str(run), "--json")
    data = json.loads(result.output)
    assert result.exit_code == 1 and data["summary"]["decided_by"] == "final/"
    assert data["run"]["first_bad"] == "final/" and data["run"]["last_healthy"] == "checkpoint-20"
    final = data["run"]["checkpoints"][-1]
    assert final["final"] is True and final["status"] == "poisoned"
    said = run_cli("scan", str(run)).output
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
