"""A PEFT adapter alone scanned with its local base model (nandoctor/basescan.py), held to transformers 5.25 with
peft 0.21: AutoModelForCausalLM.from_pretrained(adapter_folder) loads the base adapter_config.json names and puts
the adapter on it. An adversarial round's adapter on a local base holding NaN gave NaN logits and scanned CLEAN
(with a note); the same adapter on a healthy base stays CLEAN, its line saying the base's verdict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import nandoctor

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
from tests.conftest import run_cli  # noqa: E402
from tests.trainer_checkpoints import tiny_llama  # noqa: E402  (needs torch and transformers)


@pytest.fixture
def adapted(tmp_path) -> tuple[Path, Path]:
    """(a base model folder, a LoRA adapter folder whose adapter_config.json names that folder)."""
    tiny_llama().save_pretrained(tmp_path / "base")
    model = peft.get_peft_model(transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
                                peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tmp_path / "base")
    return tmp_path / "base", tmp_path / "adapter"


def _finite(adapter: Path) -> bool:
    with torch.no_grad():
        logits = transformers.AutoModelForCausalLM.from_pretrained(adapter)(input_ids=torch.tensor([[1, 5, 9]])).logits
    return bool(torch.isfinite(logits).all())


def test_an_adapter_on_a_local_base_holding_nan_fails_naming_the_base(adapted):
    from safetensors.torch import load_file, save_file

    base, adapter = adapted
    assert _finite(adapter)  # the healthy twin
    report = nandoctor.scan(adapter)
    assert report.exit_code == 0 and not report.errors, report.errors
    assert nandoctor.to_json(report)["adapter_base_scan"] == "CLEAN"
    assert not any("nandoctor scan" in note for note in report.notes)  # (scanned here: nothing left to ask)
    quiet = run_cli("scan", adapter, "-q")
    assert quiet.exit_code == 0 and f"an adapter alone: its base model {str(base)!r} scans CLEAN" in quiet.output

    tensors = load_file(base / "model.safetensors")
    tensors["model.norm.weight"][:] = float("nan")
    save_file(tensors, base / "model.safetensors", metadata={"format": "pt"})
    assert not _finite(adapter)  # the oracle
    report = nandoctor.scan(adapter)
    assert report.exit_code == 3 and [e.kind for e in report.errors] == ["base"], report.errors
    assert report.verdict == "BASE MODEL FAILS" and report.errors[0].path == str(base)
    assert "scans FAIL NON-FINITE (POISONED): 1 of" in report.errors[0].message
    assert f"nandoctor scan {base}" in report.errors[0].hint
    quiet = run_cli("scan", adapter, "-q")
    assert quiet.exit_code == 3 and quiet.output.startswith("FAIL BASE MODEL FAILS ")


def test_the_base_is_scanned_without_the_adapters_selection(adapted, tmp_path):
    """--only names the adapter's tensors: the base, which holds none of them, is scanned whole all the same; a base
    that is the adapter's own folder, or one holding no model, is not scanned."""
    base, adapter = adapted
    assert nandoctor.scan(adapter, only=["*lora_A*"]).exit_code == 0
    config = adapter / "adapter_config.json"
    for named in (str(adapter), str(shutil.copytree(adapter, tmp_path / "another-adapter"))):
        config.write_text(json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": named}))
        report = nandoctor.scan(adapter)
        assert report.exit_code == 0 and "adapter_base_scan" not in nandoctor.to_json(report), named
