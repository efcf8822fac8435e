"""A DeepSpeed ZeRO-3 Trainer run whose final model is only ZeRO partitions: NOT LOADABLE, with the command that fixes it.

ZeRO-3 leaves ``stage3_gather_16bit_weights_on_model_save`` off by default; ``Trainer.save_model(out)`` then writes
config.json beside ``global_stepN/`` and no ``model.safetensors``, and ``from_pretrained(out)`` fails. Its checkpoints
are resume points (Trainer resumes from the partitions): CLEAN, with a note. A real Trainer under DeepSpeed, started
by torchrun, saves the run; from_pretrained is the oracle for both the failure and the hint's fix.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import nandoctor
from nandoctor.cli import cli

pytestmark = pytest.mark.integration

_TRAIN = textwrap.dedent("""
    import os, sys, torch, transformers as T
    cfg = T.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = T.LlamaForCausalLM(cfg)
    rows = torch.randint(3, 250, (16, 8), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": r, "labels": r} for r in rows]
    ds = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
          "zero_optimization": {"stage": 3}, "optimizer": {"type": "AdamW", "params": {"lr": "auto"}},
          "zero_allow_untested_optimizer": True}
    args = T.TrainingArguments(output_dir=sys.argv[1], max_steps=2, save_steps=2, per_device_train_batch_size=2,
                               report_to=[], deepspeed=ds, use_cpu=True)
    trainer = T.Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    trainer.save_model(sys.argv[1])
    # (ZeRO-3's threads sometimes abort at interpreter teardown after the save is complete: tests/test_zero.py)
    torch.distributed.barrier()
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(0)
""")


def _loads(folder: Path) -> tuple[bool, str]:
    """(whether from_pretrained loads ``folder`` and a greedy generate gives tokens, the error's last line)."""
    code = ("import sys, torch, transformers as T; m = T.AutoModelForCausalLM.from_pretrained(sys.argv[1]); "
            "out = m.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False); print(out.shape[1])")
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=300)
    return done.returncode == 0 and done.stdout.strip().endswith("6"), (done.stderr.strip().splitlines() or [""])[-1]


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory) -> Path:
    pytest.importorskip("deepspeed")
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("zero3")
    script = root / "train.py"
    script.write_text(_TRAIN)
    out = root / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", str(script), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_a_final_model_saved_as_zero_partitions_only_is_not_loadable(zero3_run: Path, capsys) -> None:
    assert not list(zero3_run.glob("model*.safetensors")) and (zero3_run / "config.json").is_file()
    loaded, error = _loads(zero3_run)
    assert not loaded and "model.safetensors" in error  # the oracle: from_pretrained finds no weights file

    report = nandoctor.scan(zero3_run, device="cpu")
    assert report.exit_code == 3
    [problem] = [p for p in report.errors if p.kind == "unloadable"]
    assert "DeepSpeed ZeRO partitions (global_step2/" in problem.message
    assert "zero_to_fp32.py" in problem.hint and "stage3_gather_16bit_weights_on_model_save" in problem.hint

    with pytest.raises(SystemExit) as done:
        cli(["scan", str(zero3_run)], prog_name="nandoctor")
    shown = capsys.readouterr().out
    assert done.value.code == 3
    assert "✗ not loadable" in shown and "NOT LOADABLE" in shown  # the final row, and the run's verdict
    assert "checkpoint-2 │ ✓ healthy" in shown


def test_its_checkpoints_are_resume_points_with_a_note(zero3_run: Path) -> None:
    checkpoint = zero3_run / "checkpoint-2"
    report = nandoctor.scan(checkpoint, device="cpu")
    assert report.exit_code == 0, [p.message for p in report.errors]
    assert any(n.startswith("global_step2/ holds the model as DeepSpeed ZeRO partitions (scanned): Trainer resumes")
               and "zero_to_fp32.py" in n for n in report.notes)


def test_the_hinted_command_makes_the_folder_load_and_pass(zero3_run: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(zero3_run, tmp_path / "out")
    [problem] = [p for p in nandoctor.scan(folder, device="cpu").errors if p.kind == "unloadable"]
    command = problem.hint.split(": ", 1)[1].split(";", 1)[0]
    assert command.startswith("python ") and command.endswith(" --safe_serialization")
    done = subprocess.run([sys.executable, *shlex.split(command)[1:]], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _loads(folder)[0]  # the oracle: it loads and generates now
    assert nandoctor.scan(folder, device="cpu").exit_code == 0
