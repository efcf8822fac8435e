"""A donor that is another model, told where a restored tensor has none of its own values left to compare.

An adversarial round: ``llama_b`` with ``layers.1.o_proj`` and ``model.norm`` entirely NaN, repaired ``--from`` a
fresh initialisation of the same config, read "REPAIRED … verified CLEAN" with ``donor_doubts: []`` (the likeness
check compared a donor's copy only with the target's surviving values, and an all-NaN tensor has none). The donor
is now judged by the tensors both hold that the repair does not take. The oracle of no false alarm is a real
``transformers.Trainer`` run: its checkpoint-2 restoring checkpoint-6, at a learning rate high enough to move every
weight far from where it started.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import nandoctor  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.pattern_runs import tiny_llama, train  # noqa: E402

O_PROJ = "model.layers.1.self_attn.o_proj.weight"
NORM = "model.norm.weight"
DOUBT = "with too little of the target's own values left to compare the copy with"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[float, Path]:
    """Real Trainer runs of the tiny Llama (checkpoint-2, -4, -6), at a gentle and at a very high learning rate."""
    made = {}
    for lr in (1e-3, 0.2):
        out = tmp_path_factory.mktemp(f"run_lr{lr}")
        train(out, steps=6, save_steps=2, learning_rate=lr, optim="adamw_torch")
        made[lr] = out
    return made


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """A fresh initialisation of the runs' config: another model, every name and shape alike."""
    out = tmp_path_factory.mktemp("fresh") / "fresh"
    tiny_llama(seed=1).save_pretrained(out)
    return out


def _damaged(run: Path, into: Path, damage: str) -> Path:
    """checkpoint-6 of ``run`` copied to ``into`` with its o_proj (and for "all_nan", model.norm) damaged."""
    import shutil

    shutil.copytree(run / "checkpoint-6", into)
    path = into / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    if damage == "all_nan":
        tensors[O_PROJ][:] = float("nan")
        tensors[NORM][:] = float("nan")
    elif damage == "zeroed":
        tensors[O_PROJ][:] = 0
    else:  # one NaN: the target's other values are compared with the copy itself
        tensors[O_PROJ][0, 0] = float("nan")
    save_file(tensors, str(path), metadata=metadata)
    return into


@pytest.mark.parametrize("damage", ["all_nan", "zeroed"])
def test_a_tensor_with_no_values_left_restored_from_another_model_is_doubted(runs, fresh, tmp_path, damage):
    target = _damaged(runs[0.2], tmp_path / "checkpoint-6", damage)
    result = nandoctor.repair(target, [fresh], tmp_path / "fixed")
    assert result.ok and O_PROJ in {r.name for r in result.plan.restorations}
    said = [d for d in result.plan.doubts if DOUBT in d]
    assert len(said) == 1 and said[0].startswith(O_PROJ) and f"restored from {fresh}" in said[0], result.plan.doubts
    assert "looks like another model" in said[0] and "restore from an earlier checkpoint of this model" in said[0]
    if damage == "all_nan":
        assert NORM in said[0].split(":")[0]
    proof = json.loads((tmp_path / "fixed" / "nandoctor-repair.json").read_text())
    assert proof["donor_doubts"] == list(result.plan.doubts)
    console = run_cli("repair", target, "--from", fresh, "--out", tmp_path / "fixed2", "--no-progress")
    out = " ".join(console.output.split())
    assert console.exit_code == 0 and "⚠ REPAIRED" in out and "✓ REPAIRED" not in out, console.output


def test_one_nan_restored_from_another_model_is_still_doubted_by_its_own_values(runs, fresh, tmp_path):
    """The tensor's own surviving values decide (the check as it was), and no second doubt of the donor is added."""
    target = _damaged(runs[0.2], tmp_path / "checkpoint-6", "one_nan")
    result = nandoctor.repair(target, [fresh], tmp_path / "fixed")
    assert [d for d in result.plan.doubts if "is unlike the target's own values" in d]
    assert not [d for d in result.plan.doubts if DOUBT in d]


@pytest.mark.parametrize("lr", [1e-3, 0.2])
@pytest.mark.parametrize("donor", ["checkpoint-2", "checkpoint-4"])
@pytest.mark.parametrize("damage", ["all_nan", "zeroed", "one_nan"])
def test_an_earlier_checkpoint_of_the_same_trainer_run_raises_no_doubt(runs, tmp_path, lr, donor, damage):
    """The no-false-alarm oracle: a real Trainer run's own earlier checkpoint, even at learning rate 0.2."""
    target = _damaged(runs[lr], tmp_path / "checkpoint-6", damage)
    result = nandoctor.repair(target, [runs[lr] / donor], tmp_path / "fixed")
    assert result.ok and result.plan.restorations and not result.plan.doubts, result.plan.doubts
    fixed = load_file(str(tmp_path / "fixed" / "model.safetensors"))
    assert torch.equal(fixed[O_PROJ], load_file(str(runs[lr] / donor / "model.safetensors"))[O_PROJ])
