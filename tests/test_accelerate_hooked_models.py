"""``accelerator.save_state`` checkpoints whose save hook writes each model into a subfolder of its own, as
diffusers' training scripts do (``checkpoint-N/unet/`` with config.json and the weights, beside
``optimizer.bin``, ``scheduler.bin``, ``random_states_0.pkl``): the model is scanned with the checkpoint, and
neither the checkpoint nor its run is "trainer state without model weights" (a tester found every diffusers
fine-tune's checkpoints FAIL NOT LOADABLE and its run without a healthy checkpoint)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")
pytest.importorskip("transformers")

import nandoctor  # noqa: E402

pytestmark = pytest.mark.integration


def _run(out, poison_at=None):
    from accelerate import Accelerator
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)

    def save_hook(models, weights, output_dir):  # what diffusers' train_text_to_image.py registers
        for model in models:
            accelerator.unwrap_model(model).save_pretrained(os.path.join(output_dir, "unet"))
            weights.pop()

    accelerator.register_save_state_pre_hook(save_hook)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, vocab_size=128, max_position_embeddings=64))
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 2)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    for step in range(1, 7):
        ids = torch.randint(0, 128, (4, 16))
        accelerator.backward(model(input_ids=ids, labels=ids).loss)
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        if step == poison_at:
            with torch.no_grad():
                accelerator.unwrap_model(model).model.layers[1].mlp.up_proj.weight[2, :3] = float("nan")
        if step % 3 == 0:
            accelerator.save_state(os.path.join(out, f"checkpoint-{step}"))
    return out


def test_the_hooked_model_is_scanned_with_its_checkpoint(tmp_path):
    from safetensors.torch import load_file

    run = _run(tmp_path / "run", poison_at=6)  # after the update, before the save: the model alone holds it
    checkpoint = tmp_path / "run" / "checkpoint-6"
    assert sorted(p.name for p in checkpoint.iterdir()) == ["optimizer.bin", "random_states_0.pkl", "scheduler.bin", "unet"]
    report = nandoctor.scan(checkpoint, device="cpu")
    assert not report.errors, report.errors
    oracle = load_file(checkpoint / "unet" / "model.safetensors")
    assert report.nan == sum(int(torch.isnan(t).sum()) for t in oracle.values()) == 3
    assert "model.layers.1.mlp.up_proj.weight" in {t.name for t in report.unhealthy_tensors}
    scanned = nandoctor.scan_run(str(run), device="cpu")
    assert [(c.name, c.status) for c in scanned.checkpoints] == [("checkpoint-3", "clean"), ("checkpoint-6", "poisoned")]
    assert scanned.last_healthy is not None and scanned.last_healthy.name == "checkpoint-3"


def test_a_clean_hooked_run_passes(tmp_path):
    run = _run(tmp_path / "run")
    assert nandoctor.scan(tmp_path / "run" / "checkpoint-3", device="cpu").exit_code == 0
    assert nandoctor.scan_run(str(run), device="cpu").exit_code() == 0


def test_accelerates_automatic_checkpoint_naming_is_a_run(tmp_path):
    """``ProjectConfiguration(automatic_checkpoint_naming=True)`` saves ``checkpoints/checkpoint_N``: a run (a trial
    found it "scan one of them", its --from auto refused, the project folder "no checkpoint files found")."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from safetensors.torch import load_file, save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    project = tmp_path / "project"
    accelerator = Accelerator(cpu=True, project_config=ProjectConfiguration(project_dir=str(project),
                                                                            automatic_checkpoint_naming=True))
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, vocab_size=128, max_position_embeddings=64))
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    ids = torch.randint(0, 128, (2, 8))
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        accelerator.save_state()
    run = project / "checkpoints"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_0", "checkpoint_1"]
    weights = run / "checkpoint_1" / "model.safetensors"
    tensors = load_file(weights)
    tensors["model.layers.0.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(tensors, weights, metadata={"format": "pt"})

    report = nandoctor.scan_run(run)
    assert [(Path(c.path).name, c.status) for c in report.checkpoints] == [("checkpoint_0", "clean"),
                                                                           ("checkpoint_1", "poisoned")]
    assert Path(report.last_healthy.path).name == "checkpoint_0"
    result = nandoctor.repair(run / "checkpoint_1", "auto", tmp_path / "fixed")
    assert result.ok and [Path(d.path).name for d in result.plan.donors] == ["checkpoint_0"]
    with pytest.raises(nandoctor.NandoctorError, match="a training run folder"):  # (the project is the run)
        nandoctor.scan(project)
    assert [Path(c.path).name for c in nandoctor.scan_run(project).checkpoints] == ["checkpoint_0", "checkpoint_1"]
