"""config.json values transformers' strict config classes refuse (checkpoint/configfields.py, config_fields.txt), held to
the real AutoConfig / from_pretrained of transformers 5.25: each refused value scans BAD CONFIG naming config.json and
the key, without importing transformers; every value the class takes, and every fresh config of every model type,
raises nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nandoctor
from nandoctor.checkpoint import architecture, configfields
from tests.config_edits import config_refused, edited, saved_tiny_models

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")



@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama and a tiny Qwen2 (which has layer_types and a sliding window), saved by save_pretrained."""
    return saved_tiny_models(tmp_path_factory, ("llama", "qwen2"))


def _edited(saved: Path, folder: Path, values: dict) -> Path:
    """A copy of ``saved`` at ``folder``, its config.json's keys set to ``values``."""
    return edited(Path(shutil.copytree(saved, folder)), values)


def _oracle(folder: Path) -> str:
    """"ok" where from_pretrained loads ``folder`` and generate runs, else what raised: "config" (AutoConfig) or
    "load" (the model's build)."""
    if config_refused(folder):
        return "config"
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(folder)
        ids = torch.tensor([[1, 5, 9, 3]])
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2)
    except Exception:  # noqa: BLE001
        return "load"
    return "ok"


# (model, config.json values, what transformers does, what the scan says): an adversarial round's each read CLEAN, or
# was said only after building the model (seconds: importing transformers)
REFUSED = [
    ("llama", {"num_attention_heads": 4.0}, "config", "num_attention_heads is 4.0 (the llama config takes an integer"),
    ("llama", {"hidden_size": "32"}, "config", 'hidden_size is "32" (the llama config takes an integer'),
    ("qwen2", {"layer_types": "full_attention"}, "config", 'layer_types is "full_attention" (the qwen2 config'),
    ("llama", {"layer_types": "full_attention"}, "config", 'layer_types is "full_attention" (the llama config'),
    ("llama", {"hidden_act": None}, "config", "hidden_act is null (the llama config takes a string"),
    ("llama", {"hidden_act": 5}, "config", "hidden_act is 5 (the llama config takes a string"),
    ("llama", {"initializer_range": 2.0}, "config", "initializer_range is 2.0 (the llama config takes a number in"),
    ("llama", {"initializer_range": -0.1}, "config", "initializer_range is -0.1"),
    ("llama", {"tie_word_embeddings": "false"}, "config", 'tie_word_embeddings is "false" (the llama config takes '
                                                          "true or false"),
    ("llama", {"pretraining_tp": 1.0}, "config", "pretraining_tp is 1.0"),  # (a field no shared list knew)
    ("qwen2", {"use_sliding_window": "no"}, "config", 'use_sliding_window is "no"'),
    ("llama", {"eos_token_id": [2.0]}, "config", "eos_token_id is [2.0]"),
    ("llama", {"id2label": {"neg": 0, "pos": 1}}, "config", 'id2label is {"neg": 0, "pos": 1}'),  # (label2id's, swapped)
    ("llama", {"hidden_act": "swiglu"}, "load", 'hidden_act is "swiglu", an activation transformers'),
    ("qwen2", {"hidden_act": "SiLU"}, "load", 'hidden_act is "SiLU", an activation transformers'),
]


@pytest.mark.parametrize(("model", "values", "raised", "said"), REFUSED)
def test_a_value_the_config_class_refuses_is_bad_config_without_a_build(saved, tmp_path, monkeypatch, model, values,
                                                                         raised, said):
    folder = _edited(saved[model], tmp_path / "m", values)
    assert _oracle(folder) == raised
    monkeypatch.setattr(architecture, "_built_by_transformers", lambda root: pytest.fail("built for nothing"))
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and [e.kind for e in report.errors] == ["config"], report.errors
    assert report.errors[0].path == str(folder / "config.json")
    assert said in report.errors[0].message, report.errors[0].message
    assert next(iter(values)) in report.errors[0].hint


# values the same classes take: from_pretrained loads them and generate runs
TAKEN = [
    ("llama", {"attention_dropout": 0}), ("llama", {"initializer_range": 1.0}), ("llama", {"initializer_range": 0.0}),
    ("llama", {"hidden_act": "gelu_pytorch_tanh"}), ("llama", {"pretraining_tp": None}), ("llama", {"head_dim": None}),
    ("llama", {"id2label": {"0": "neg", "1": "pos"}}), ("llama", {"eos_token_id": [2, 3]}),
    ("llama", {"mlp_bias": False}), ("llama", {"architectures": "LlamaForCausalLM"}),
    ("llama", {"n_embd": "not a field of Llama's"}), ("qwen2", {"layer_types": ["full_attention", "sliding_attention"], "sliding_window": 16, "use_sliding_window": True}),
    ("qwen2", {"sliding_window": None}), ("qwen2", {"rope_parameters": None}),
]


@pytest.mark.parametrize(("model", "values"), TAKEN)
def test_a_value_the_config_class_takes_stays_clean(saved, tmp_path, model, values):
    folder = _edited(saved[model], tmp_path / "m", values)
    assert _oracle(folder) == "ok"
    report = nandoctor.scan(folder)
    assert report.exit_code == 0, report.errors


def test_a_refused_type_is_said_without_importing_transformers(saved, tmp_path):
    """The point of config_fields.txt: the scan reads the type from data, importing neither transformers nor torch."""
    folder = _edited(saved["llama"], tmp_path / "m", {"num_hidden_layers": 2.0})
    code = ("import sys, nandoctor; r = nandoctor.scan(sys.argv[1]); "
            "print(r.exit_code, 'transformers' in sys.modules, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.stdout.split() == ["3", "False", "False"], done.stdout + done.stderr


# Model types whose fields are held to the real class probe by probe (a sample of the families a fine-tune comes from)
_TYPES = ["llama", "qwen2", "qwen3", "qwen3_moe", "mistral", "mixtral", "phi3", "gemma2", "gemma3_text", "gpt2", "gpt_neox",
          "opt", "falcon", "bert", "roberta", "t5", "bart", "whisper", "deepseek_v3", "llava", "qwen2_vl", "clip"]
_PROBES = [2, 0, -3, 2.0, 0.5, 1e30, "2", "", True, False, None, [1], ["full_attention"], {"a": 1}, {}]


@pytest.mark.parametrize("model_type", _TYPES)
def test_the_fields_are_judged_as_the_config_class_judges_them(model_type):
    """Every field config_fields.txt holds for the type, set to each probe value in the type's fresh config: where
    configfields refuses it, the real class raises; where the class refuses it field by field ("Validation error for
    field"), configfields refuses it too."""
    from huggingface_hub.errors import StrictDataclassFieldValidationError
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    fresh = json.loads(transformers.AutoConfig.for_model(model_type).to_json_string(use_diff=False))
    cls = transformers.CONFIG_MAPPING[model_type]
    fields = configfields.fields(model_type)
    assert fields, model_type
    wrong = []
    for key in fields:
        for probe in _PROBES:
            config = {**fresh, key: probe}
            judged = [r for r in configfields.refusals(config) if not r.built]
            try:
                cls.from_dict(json.loads(json.dumps(config)))
                raised: Exception | None = None
            except Exception as exc:  # noqa: BLE001 - the oracle
                raised = exc
            own = isinstance(raised, StrictDataclassFieldValidationError) and f"field '{key}'" in str(raised)
            if (judged and raised is None) or (own and not any(r.key == key for r in judged)):
                wrong.append((key, probe, [r.wanted for r in judged], str(raised)[:80]))
    assert not wrong, wrong


def test_every_fresh_config_of_every_model_type_is_refused_nothing(tmp_path):
    """The false-alarm guard: each model type of transformers 5.25 (its config class's defaults, as to_dict and as
    save_pretrained writes them) raises nothing, nor any finding of config.json's values (EfficientLoFTR's rotary share
    of 4.0, its default, read BAD CONFIG)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.utils import logging as hf_logging

    from nandoctor.checkpoint import configvalues

    hf_logging.set_verbosity_error()
    found = {}
    checked = 0
    for model_type in sorted(CONFIG_MAPPING_NAMES):
        try:
            config = transformers.AutoConfig.for_model(model_type)
            full = json.loads(config.to_json_string(use_diff=False))
            config.save_pretrained(tmp_path / model_type)
        except Exception:  # noqa: BLE001 - (a config that needs arguments, or refuses its own defaults on save)
            continue
        saved = json.loads((tmp_path / model_type / "config.json").read_text())
        for data in (full, saved):
            checked += 1
            said = [p.message for p in configfields.problems(tmp_path / "config.json", data)]
            said += [p.message for p in configvalues.model_problems(tmp_path / "config.json", data)]
            if said:
                found[model_type] = said
    assert checked > 1200 and not found, found


def test_the_file_is_this_transformers_own():
    """config_fields.txt was written from the installed transformers (`python -m nandoctor.checkpoint.configfields`
    writes it again when transformers changes): its version, ACT2FN's names, every config class's validated fields."""
    import dataclasses

    from transformers.activations import ACT2FN
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    assert configfields.version() == transformers.__version__
    assert configfields.activations() == frozenset(ACT2FN)
    for model_type in sorted(CONFIG_MAPPING_NAMES):
        typed = {f.name for f in dataclasses.fields(transformers.CONFIG_MAPPING[model_type])
                 if not isinstance(f.type, str)}
        assert set(configfields.fields(model_type)) <= typed, model_type
    assert "~build-act" in configfields.fields("llama")["hidden_act"]
    assert "~build-act" in configfields.fields("gpt2")["activation_function"]
    assert "~build-act" not in configfields.fields("t5")["feed_forward_proj"]  # ("gated-gelu": T5 parses it)


@pytest.mark.parametrize(("values", "refused"), [({"model_type": "Llama"}, True), ({"model_type": "LLAMA"}, True),
                                                 ({"model_type": 5}, True), ({"model_type": ["llama"]}, True),
                                                 ({"model_type": "qwen"}, False), ({"model_type": ""}, False),
                                                 ({"model_type": "llama"}, False)])
def test_a_model_type_in_other_letters_or_no_string_is_bad_config(saved, tmp_path, values, refused):
    """An adversarial round: `"model_type": "Llama"` read CLEAN, and AutoConfig raises ("does not recognize this
    architecture"). A type unknown here (remote code's `qwen` without its auto_map, or a type newer than the data) and
    an empty one (a user's own config class saves "") load through the class named directly: not judged (the oracle
    still refuses them through AutoConfig)."""
    folder = _edited(saved["llama"], tmp_path / "model", values)
    assert (_oracle(folder) == "config") == (refused or values["model_type"] in ("qwen", ""))
    report = nandoctor.scan(folder)
    if not refused:
        assert report.exit_code == 0, report.errors
        return
    assert report.exit_code == 3 and [p.kind for p in report.errors] == ["config"], report.errors
    assert "model_type" in report.errors[0].message and "does not recognize" in report.errors[0].message


def test_a_remote_code_config_is_read_by_its_own_class_not_judged_by_the_built_in_one(saved, tmp_path):
    """A review: configs whose auto_map names their own AutoConfig are read by that class (trust_remote_code), not by
    transformers' strict one; the model_type check already passed them over, the field types did not."""
    values = {"num_attention_heads": 4.0, "auto_map": {"AutoConfig": "configuration_mine.MineConfig"}}
    folder = _edited(saved["llama"], tmp_path / "model", values)
    assert not configfields.problems(folder / "config.json", json.loads((folder / "config.json").read_text()))
    plain = _edited(saved["llama"], tmp_path / "plain", {"num_attention_heads": 4.0})
    assert configfields.problems(plain / "config.json", json.loads((plain / "config.json").read_text()))


def test_types_are_not_judged_where_the_installed_transformers_takes_any_value(saved, tmp_path, monkeypatch):
    """transformers 4 read config.json without type checks (16.0 heads loaded): the types are judged only where the
    installed transformers is 5 or later (its metadata read, nothing imported)."""
    import importlib.metadata

    folder = _edited(saved["llama"], tmp_path / "model", {"num_attention_heads": 4.0})
    config = json.loads((folder / "config.json").read_text())
    assert configfields.problems(folder / "config.json", config)  # (5.25 here)
    configfields._validates_fields.cache_clear()
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "4.46.3")
    try:
        assert not configfields.problems(folder / "config.json", config)
    finally:
        configfields._validates_fields.cache_clear()
