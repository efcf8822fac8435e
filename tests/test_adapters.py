"""PEFT LoRA adapters whose ranks adapter_config.json contradicts (checkpoint/adapters.py), held to the real peft:
an adapter saved by PEFT, and one with a rank_pattern, scan CLEAN and load; the same tensors under a config whose
r (or rank_pattern) says another rank are NOT LOADABLE, as PeftModel.from_pretrained refuses them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import nandoctor

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
pytest.importorskip("transformers")
from tests.trainer_checkpoints import tiny_llama  # noqa: E402  (needs torch and transformers)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("base") / "model"
    tiny_llama().save_pretrained(folder)
    return folder


def _adapter(base: Path, folder: Path, **lora) -> Path:
    from transformers import AutoModelForCausalLM

    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                                peft.LoraConfig(target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", **lora))
    model.save_pretrained(folder)
    return folder


def _loads(base: Path, adapter: Path) -> bool:
    from transformers import AutoModelForCausalLM

    try:
        model = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    except RuntimeError as exc:
        assert "size mismatch" in str(exc)
        return False
    ids = torch.tensor([[1, 5, 9]])
    assert torch.isfinite(model(input_ids=ids).logits).all()
    return True


def _edit(folder: Path, **values) -> None:
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


@pytest.mark.parametrize("lora, edit, said", [
    ({"r": 8}, {"r": 16}, "has rank 8, adapter_config.json gives its module 16"),
    ({"r": 8}, {"r": 4}, "has rank 8, adapter_config.json gives its module 4"),
    ({"r": 8, "rank_pattern": {"v_proj": 4}}, {"rank_pattern": {}}, "v_proj.lora_A.weight has rank 4, adapter_config.json gives its module 8"),
    ({"r": 8, "rank_pattern": {"v_proj": 4}}, {"rank_pattern": {"v_proj": 2}}, "has rank 4, adapter_config.json gives its module 2"),
])
def test_an_adapter_whose_config_says_another_rank_is_not_loadable(base, tmp_path, lora, edit, said):
    adapter = _adapter(base, tmp_path / "adapter", **lora)
    assert _loads(base, adapter) and nandoctor.scan(adapter).exit_code == 0
    edited = shutil.copytree(adapter, tmp_path / "edited")
    _edit(edited, **edit)
    assert not _loads(base, edited)
    report = nandoctor.scan(edited)
    assert report.exit_code == 3 and [e.kind for e in report.errors] == ["unloadable"], report.errors
    assert said in report.errors[0].message and "PEFT" in report.errors[0].message


def test_adapters_peft_loads_stay_clean(base, tmp_path):
    for i, lora in enumerate([{"r": 4}, {"r": 8, "rank_pattern": {"model.layers.1.self_attn.q_proj": 2}},
                              {"r": 8, "rank_pattern": {r"layers\.\d+\.self_attn\.v_proj": 16}},
                              {"r": 4, "use_dora": True}]):
        adapter = _adapter(base, tmp_path / f"a{i}", **lora)
        assert _loads(base, adapter), lora
        report = nandoctor.scan(adapter)
        assert report.exit_code == 0 and not report.errors, (lora, report.errors)
