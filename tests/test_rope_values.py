"""Rope settings that make the rotary embedding raise or compute NaN (checkpoint/ropevalues.py), held to the real model:
a tiny Llama, Qwen2 or Phi-3 built from the config by from_pretrained, its eager attention's logits and a generate()
on the CPU. Each setting transformers refuses or computes NaN from scans BAD CONFIG naming config.json and the key;
each one it takes (a finite, if odd, scaling included) and every fresh config of a model type with rope scans CLEAN.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import nandoctor
from tests.config_edits import config_refused, edited, saved_tiny_models
from tests.conftest import run_cli

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

_YARN = {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32, "rope_theta": 10000.0}
_LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": 32, "rope_theta": 10000.0}
_LONGROPE = {"rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [1.5] * 4,
             "original_max_position_embeddings": 32, "rope_theta": 10000.0}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    return saved_tiny_models(tmp_path_factory, ("llama", "qwen2", "phi3"))


def _roped(saved: Path, folder: Path, rope: dict, **top) -> Path:
    """A copy of ``saved`` at ``folder``, its rope_parameters replaced by ``rope`` (and top-level ``top`` values)."""
    return edited(Path(shutil.copytree(saved, folder)), {"rope_parameters": rope, **top})


def _oracle(folder: Path) -> str:
    """"ok", or how transformers fails: "config" (AutoConfig raises), "load" (the model's build), "nan" (eager
    attention's logits not finite over 64 positions), "generate"."""
    if config_refused(folder):
        return "config"
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
    except Exception:  # noqa: BLE001
        return "load"
    ids = torch.tensor([[1, 5, 9, 3] * 16])
    with torch.no_grad():
        try:
            if not torch.isfinite(model(ids).logits).all():
                return "nan"
            model.generate(ids[:, :4], attention_mask=torch.ones_like(ids[:, :4]), max_new_tokens=3)
        except Exception:  # noqa: BLE001
            return "generate"
    return "ok"


# (model, rope_parameters, top-level values, what transformers does, what the scan says)
BROKEN = [
    ("llama", {**_YARN, "attention_factor": 1e25}, {}, "nan", "rope_parameters.attention_factor makes yarn's attention "
                                                             "scaling 1e+25"),
    ("qwen2", {**_YARN, "attention_factor": 1e25}, {}, "nan", "rope_parameters.attention_factor"),
    ("phi3", {**_LONGROPE, "attention_factor": 1e25}, {"original_max_position_embeddings": 32}, "nan",
     "longrope's attention scaling 1e+25"),
    ("llama", {**_YARN, "mscale": 1e30, "mscale_all_dim": 1.0}, {}, "nan", "rope_parameters.mscale makes yarn's"),
    ("llama", {**_YARN, "attention_factor": "1.2"}, {}, "generate", 'rope_parameters.attention_factor is "1.2"'),
    ("llama", {**_YARN, "factor": "4"}, {}, "load", 'rope_parameters.factor is "4" for yarn rope scaling, not a number'),
    ("llama", {"rope_type": "linear", "factor": "2", "rope_theta": 1e4}, {}, "load", 'factor is "2" for linear'),
    ("llama", {"rope_type": "linear", "factor": None, "rope_theta": 1e4}, {}, "load", "factor is null for linear"),
    ("llama", {"rope_type": "dynamic", "factor": "2", "rope_theta": 1e4}, {}, "load", 'factor is "2" for dynamic'),
    ("llama", {**_LLAMA3, "factor": "8"}, {}, "load", 'factor is "8" for llama3'),
    ("llama", {k: v for k, v in _LLAMA3.items() if k != "low_freq_factor"}, {}, "config",
     "rope_parameters.low_freq_factor is missing for llama3 rope scaling"),
    ("phi3", {k: v for k, v in _LONGROPE.items() if k != "short_factor"}, {"original_max_position_embeddings": 32},
     "config", "rope_parameters.short_factor is missing"),
    ("phi3", {**_LONGROPE, "short_factor": ["1"] * 4}, {"original_max_position_embeddings": 32}, "config",
     "short_factor is [\"1\", \"1\", \"1\", \"1\"], not a list of numbers"),
    ("llama", {**_YARN, "beta_fast": -1.0}, {}, "load", "rope_parameters.beta_fast is -1.0 for yarn"),
    ("llama", {**_YARN, "beta_slow": -1.0}, {}, "load", "rope_parameters.beta_slow is -1.0"),
    ("llama", {**_YARN, "rope_theta": 1.0}, {}, "load", "rope_parameters.rope_theta is 1 for yarn"),
]


@pytest.mark.parametrize(("model", "rope", "top", "fails", "said"), BROKEN)
def test_rope_settings_the_model_refuses_or_computes_nan_from_are_bad_config(saved, tmp_path, model, rope, top, fails,
                                                                             said):
    """An adversarial round's yarn attention_factor of 1e25 (eager attention's softmax NaN), factors written as
    strings, a llama3 scaling without its low_freq_factor, negative yarn betas: each read CLEAN."""
    folder = _roped(saved[model], tmp_path / "m", rope, **top)
    assert _oracle(folder) == fails
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and [e.kind for e in report.errors] == ["config"], report.errors
    assert report.errors[0].path == str(folder / "config.json")
    assert said in report.errors[0].message, report.errors[0].message
    assert "rope_parameters." in report.errors[0].hint


HEALTHY = [
    ("llama", _YARN, {}), ("llama", {**_YARN, "attention_factor": 1e10}, {}),  # (finite: 1e20 times a small score)
    ("llama", {**_YARN, "attention_factor": -2.0}, {}),  # (q and k both flip sign: the scores do not)
    ("llama", {**_YARN, "factor": None}, {}), ("llama", {**_YARN, "factor": -2.0}, {}),
    ("llama", {**_YARN, "mscale": 1.0, "mscale_all_dim": 1.0}, {}), ("llama", {**_YARN, "beta_fast": None}, {}),
    ("llama", {"rope_type": "linear", "factor": -2.0, "rope_theta": 1e4}, {}),
    ("llama", {"rope_type": "dynamic", "factor": 0.0, "rope_theta": 1e4}, {}), ("llama", _LLAMA3, {}),
    ("llama", {**_LLAMA3, "high_freq_factor": 1.0}, {}), ("llama", {"type": "linear", "factor": 2.0, "rope_theta": 1e4}, {}),
    ("qwen2", {**_YARN, "truncate": False}, {}),
    ("phi3", _LONGROPE, {"original_max_position_embeddings": 32}),
    ("phi3", {**_LONGROPE, "factor": -2.0}, {"original_max_position_embeddings": 32}),
    ("phi3", {**_LONGROPE, "attention_factor": 1.0}, {"original_max_position_embeddings": 32}),
]


@pytest.mark.parametrize(("model", "rope", "top"), HEALTHY)
def test_rope_settings_the_model_takes_stay_clean(saved, tmp_path, model, rope, top):
    folder = _roped(saved[model], tmp_path / "m", rope, **top)
    assert _oracle(folder) == "ok"
    report = nandoctor.scan(folder)
    assert report.exit_code == 0, report.errors


def test_no_fresh_config_of_a_model_type_with_rope_is_a_finding():
    """The false-alarm guard: every config class of transformers 5.25 with rope parameters, as its defaults and with
    each rope type's settings a hub config writes (DeepSeek-V3's yarn with mscale, Llama 3.1's llama3, Phi-3.5's
    longrope), raises no rope finding."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.utils import logging as hf_logging

    from nandoctor.checkpoint import configfields, configvalues

    hf_logging.set_verbosity_error()
    hub = [{"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "beta_fast": 32,
            "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0, "rope_theta": 10000.0},
           {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192, "rope_theta": 500000.0},
           {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
           {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}]
    found, checked = {}, 0
    for model_type in sorted(CONFIG_MAPPING_NAMES):
        if not configfields.uses_rope(model_type):
            continue
        try:
            fresh = json.loads(transformers.AutoConfig.for_model(model_type).to_json_string(use_diff=False))
        except Exception:  # noqa: BLE001 - (a config that needs arguments)
            continue
        for rope in [None, *hub]:
            data = fresh if rope is None else {**fresh, "rope_parameters": rope}
            checked += 1
            said = [p.message for p in configvalues.model_problems(Path("config.json"), data)
                    if "computes the rotary embedding" in p.message]
            if said:
                found[(model_type, rope and rope["rope_type"])] = said
    assert checked > 1000 and not found, found


@pytest.mark.parametrize("rope", [{"rope_type": "yarn", "rope_theta": 10000.0, "original_max_position_embeddings": 1},
                                  {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 4,
                                   "long_factor": [1.0] * 4, "original_max_position_embeddings": 3}])
def test_a_context_too_long_for_a_float_is_no_internal_error(saved, tmp_path, rope):
    """A review: a 401-digit max_position_embeddings over the original context made Python's integer division raise
    OverflowError: an internal error, exit 3 with a traceback hint, where a message belongs."""
    folder = _roped(saved["llama"], tmp_path / "model", rope, max_position_embeddings=10**400)
    result = run_cli("scan", folder, "-q")
    assert "internal error" not in result.output and result.exit_code in (0, 3), result.output
