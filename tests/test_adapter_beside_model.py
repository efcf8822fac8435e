"""adapter_config.json left beside a whole model (checkpoint/adapterbeside.py), held to transformers 5.25 with
peft 0.21 installed: from_pretrained(folder) loads the folder's model, then the adapter onto it. An adversarial
round's merged model saved into its adapter's folder got the LoRA update twice (logits 0.15 off), and without the
adapter's weights did not load at all (FileNotFoundError); both read CLEAN with no note. A base model shipped with
its adapter loads as meant and stays CLEAN."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import nandoctor

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
from tests.trainer_checkpoints import tiny_llama  # noqa: E402  (needs torch and transformers)

IDS = torch.tensor([[1, 5, 9, 17]])


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """A base model, a trained LoRA adapter of it, and the model merged from them saved into the adapter's folder
    (merge_and_unload, then save_pretrained into the same output folder: the trap)."""
    root = tmp_path_factory.mktemp("beside")
    tiny_llama().save_pretrained(root / "base")
    torch.manual_seed(0)
    adapted = peft.get_peft_model(transformers.AutoModelForCausalLM.from_pretrained(root / "base"),
                                  peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapted.save_pretrained(root / "adapter")
    shutil.copytree(root / "adapter", root / "merged-into-adapter")
    adapted.merge_and_unload().save_pretrained(root / "merged-into-adapter")
    return {"base": root / "base", "adapter": root / "adapter", "merged": root / "merged-into-adapter"}


def _logits(folder: Path) -> torch.Tensor:
    with torch.no_grad():
        return transformers.AutoModelForCausalLM.from_pretrained(folder)(input_ids=IDS).logits


def _merged_alone(saved: dict[str, Path], tmp_path: Path) -> Path:
    alone = shutil.copytree(saved["merged"], tmp_path / "merged")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (alone / name).unlink()
    return alone


@pytest.mark.parametrize("base_named, said", [
    (None, "; the model here is not its base model"),  # (the local base it names: compared, and it differs)
    # (a base not here to compare with: nothing tells a merged model from a base shipped with its adapter, which
    # loads; a review's shipped base read NOT LOADABLE, so it is no finding)
    ("nobody/not-in-any-cache", None),
])
def test_a_merged_model_saved_into_its_adapters_folder_gets_the_update_twice(saved, tmp_path, base_named, said):
    folder = shutil.copytree(saved["merged"], tmp_path / "folder")
    if base_named is not None:
        config = folder / "adapter_config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": base_named}))
    merged = _merged_alone(saved, tmp_path)
    assert nandoctor.scan(merged).exit_code == 0  # the healthy twin: the merged model in a folder of its own
    assert not torch.allclose(_logits(folder), _logits(merged), atol=1e-4)  # the oracle: the adapter applied twice
    report = nandoctor.scan(folder)
    if said is None:
        assert report.exit_code == 0, report.errors
        return
    assert report.exit_code == 3 and [e.kind for e in report.errors] == ["unloadable"], report.errors
    assert said in report.errors[0].message and "load_adapter" in report.errors[0].message
    assert report.errors[0].path.endswith("adapter_config.json") and "move adapter_config.json" in report.errors[0].hint


@pytest.mark.parametrize("config_text, said", [
    (None, "FileNotFoundError"),  # the adapter's weights deleted, its config left
    ('{"peft_type": "LORA", ', "it is no JSON object"),  # a config cut short
])
def test_adapter_config_beside_a_model_without_the_adapter_does_not_load(saved, tmp_path, config_text, said):
    folder = shutil.copytree(saved["merged"], tmp_path / "folder")
    (folder / "adapter_model.safetensors").unlink()
    if config_text is not None:
        (folder / "adapter_config.json").write_text(config_text)
    with pytest.raises((OSError, ValueError)):  # the oracle: FileNotFoundError, JSONDecodeError
        transformers.AutoModelForCausalLM.from_pretrained(folder)
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and [e.kind for e in report.errors] == ["unloadable"], report.errors
    assert said in report.errors[0].message and "remove adapter_config.json" in report.errors[0].hint


def test_a_base_model_shipped_with_its_adapter_stays_clean(saved, tmp_path):
    """The layout transformers means by "a complete model with an embedded adapter": the base model's own files and
    its adapter in one folder load as the adapted model."""
    folder = shutil.copytree(saved["base"], tmp_path / "shipped")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(saved["adapter"] / name, folder / name)
    with torch.no_grad():
        adapted = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(saved["base"]),
                                                 saved["adapter"])(input_ids=IDS).logits
    assert torch.allclose(_logits(folder), adapted, atol=1e-5)  # the oracle
    report = nandoctor.scan(folder)
    assert report.exit_code == 0 and not report.errors, report.errors
