"""LoRA tensors PEFT does not load as stored (checkpoint/adapterkeys.py, checkpoint/peftload.py), held to peft 0.21:
an adversarial round's adapters without the ``base_model.model.`` prefix, with one half of each module, or without
one layer's module loaded with no error (PEFT only warns "Found missing adapter keys") as the bare base model or
with random halves, and read CLEAN. Real PEFT saves of several families and configurations stay CLEAN."""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

import nandoctor

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
from tests.trainer_checkpoints import tiny_llama  # noqa: E402  (needs torch and transformers)

IDS = torch.tensor([[1, 5, 9, 17]])
Names = dict[str, "torch.Tensor"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("base") / "llama"
    tiny_llama().save_pretrained(folder)
    return folder


def _save(model, folder: Path, **lora) -> Path:
    """``model`` with a LoRA saved by PEFT into ``folder``, "trained": every LoRA parameter moved off its start (lora_B
    off zero, DoRA's magnitudes off the base weights' norms)."""
    torch.manual_seed(0)
    adapted = peft.get_peft_model(model, peft.LoraConfig(r=4, **lora))
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    adapted.save_pretrained(folder)
    return folder


def _peft(base: Path, adapter: Path) -> tuple[torch.Tensor, list[str]]:
    """The oracle: PeftModel.from_pretrained's logits, and its warnings of missing adapter keys."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base), adapter)
    with torch.no_grad():
        logits = model(input_ids=IDS).logits
    return logits, [str(w.message) for w in caught if "missing adapter keys" in str(w.message)]


def _rewrite(adapter: Path, change: Callable[[Names], Names], **config) -> None:
    from safetensors.torch import load_file, save_file

    path = adapter / "adapter_model.safetensors"
    save_file(change(load_file(path)), path)
    if config:
        path = adapter / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **config}))


def _without(part: str) -> Callable[[Names], Names]:
    return lambda tensors: {name: t for name, t in tensors.items() if part not in name}


@pytest.mark.parametrize("lora, change, config, said", [
    ({}, lambda ts: {n.removeprefix("base_model.model."): t for n, t in ts.items()}, {},
     "its LoRA tensors are not named under 'base_model.model.'"),
    ({}, lambda ts: {n if "q_proj" in n else n.removeprefix("base_model.model."): t for n, t in ts.items()}, {},
     "4 of its 8 LoRA tensors are not named under 'base_model.model.'"),
    ({}, _without(".lora_B."), {}, "q_proj holds lora_A without lora_B (and 3 more module(s))"),
    ({}, _without(".lora_A."), {}, "q_proj holds lora_B without lora_A (and 3 more module(s))"),
    ({}, _without("layers.1.self_attn.v_proj.lora_B"), {}, "layers.1.self_attn.v_proj holds lora_A without lora_B:"),
    ({"use_dora": True}, _without("lora_magnitude_vector"), {}, "holds lora_A and lora_B without lora_magnitude_vector"),
    ({"use_dora": True}, lambda ts: ts, {"use_dora": False}, "holds DoRA's lora_magnitude_vector where"),
    # (a module of target_modules gone from one layer, or from every layer: the base model built says so)
    ({}, _without("layers.1.self_attn.v_proj."), {}, "1 module(s) of the base model"),
    ({}, _without("v_proj."), {}, "2 module(s) of the base model"),
    ({"target_modules": "all-linear"}, _without("layers.0.mlp.up_proj."), {}, "(model.layers.0.mlp.up_proj)"),
])
def test_lora_tensors_peft_does_not_load_are_not_loadable(base, tmp_path, lora, change, config, said):
    lora = {"target_modules": ["q_proj", "v_proj"], **lora}
    adapter = _save(transformers.AutoModelForCausalLM.from_pretrained(base), tmp_path / "adapter", **lora)
    trained, missing = _peft(base, adapter)
    assert not missing and nandoctor.scan(adapter).exit_code == 0  # the healthy twin
    _rewrite(adapter, change, **config)
    logits, missing = _peft(base, adapter)  # the oracle: it loads, and is not the trained adapter
    assert not torch.allclose(logits, trained, atol=1e-4)
    report = nandoctor.scan(adapter)
    assert report.exit_code == 3 and [e.kind for e in report.errors] == ["unloadable"], report.errors
    assert said in report.errors[0].message and "peft" in report.errors[0].message.lower(), report.errors[0].message


def test_default_init_drops_a_half_to_the_bare_base_model(base, tmp_path):
    """An adversarial round's: with PEFT's default init (lora_B zero), an adapter saved without its lora_B tensors
    loads as the bare base model exactly; a transformers-only twin keeps the adapter's name inside its tensors'
    names, which transformers' from_pretrained of the folder loads none of."""
    adapter = _save(transformers.AutoModelForCausalLM.from_pretrained(base), tmp_path / "adapter",
                    target_modules=["q_proj", "v_proj"])
    trained, _ = _peft(base, adapter)
    named = shutil.copytree(adapter, tmp_path / "named")
    _rewrite(adapter, _without(".lora_B."), init_lora_weights=True)
    with torch.no_grad():
        bare = transformers.AutoModelForCausalLM.from_pretrained(base)(input_ids=IDS).logits
    assert torch.equal(_peft(base, adapter)[0], bare)
    assert nandoctor.scan(adapter).exit_code == 3

    _rewrite(named, lambda ts: {n.replace(".weight", ".default.weight"): t for n, t in ts.items()})
    with torch.no_grad():  # (transformers' own path to the adapter: it reads base_model_name_or_path)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(named)(input_ids=IDS).logits
    assert not torch.allclose(loaded, trained, atol=1e-4)
    report = nandoctor.scan(named)
    assert report.exit_code == 3 and "hold the adapter's name 'default'" in report.errors[0].message


def test_a_module_gone_is_judged_with_a_base_in_the_cache_only(base, tmp_path, monkeypatch):
    """Which modules PEFT adapts only the base model says (Gemma 3n's KV-sharing layers have no k_proj): a base
    named by a repo id is read from the Hugging Face cache, and one in no cache is not judged on them (nothing is
    ever downloaded)."""
    adapter = _save(transformers.AutoModelForCausalLM.from_pretrained(base), tmp_path / "adapter",
                    target_modules=["q_proj", "v_proj"])
    _rewrite(adapter, _without("layers.1.self_attn.v_proj."), base_model_name_or_path="someone/tiny-llama")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert nandoctor.scan(adapter).exit_code == 0
    repo = tmp_path / "hub" / "models--someone--tiny-llama"
    shutil.copytree(base, repo / "snapshots" / ("a" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    report = nandoctor.scan(adapter)
    assert report.exit_code == 3 and "(model.layers.1.self_attn.v_proj)" in report.errors[0].message, report.errors


def _families() -> list[tuple[str, Callable[[], object], list[dict]]]:
    """Tiny models of several families, each with LoRA configurations PEFT saves them with."""
    T = transformers
    qv = {"target_modules": ["q_proj", "v_proj"]}
    llama = [qv, {"target_modules": "all-linear"}, {**qv, "modules_to_save": ["lm_head"]},
             {"target_modules": ["embed_tokens", "q_proj"], "use_dora": True}, {**qv, "use_dora": True},
             {**qv, "lora_bias": True}, {**qv, "layers_to_transform": [0]},
             {**qv, "exclude_modules": ["model.layers.1.self_attn.v_proj"]},
             {"target_modules": r".*layers\.0\..*(q_proj|v_proj)"}, {"target_modules": ["q_proj"],
                                                                       "trainable_token_indices": [1, 2]},
             {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "c_attn"]}]
    return [
        ("llama", tiny_llama, llama),
        ("gpt2", lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=64, n_embd=16, n_layer=3, n_head=2, n_positions=32,
                                                        bos_token_id=0, eos_token_id=0)),
         [{"target_modules": ["c_attn"]}, {"target_modules": "all-linear"},
          {"target_modules": ["c_attn", "c_fc"], "use_dora": True}, {"target_modules": ["c_attn"],
                                                                     "layers_to_transform": [1]}]),
        ("bert", lambda: T.BertForSequenceClassification(T.BertConfig(
            vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            num_labels=3)),
         [{"target_modules": ["query", "value"], "task_type": "SEQ_CLS"},
          {"target_modules": ["query", "word_embeddings"], "task_type": "SEQ_CLS"}]),
        ("t5", lambda: T.T5ForConditionalGeneration(T.T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=2,
                                                               num_heads=2, decoder_start_token_id=0)),
         [{"target_modules": ["q", "v"], "task_type": "SEQ_2_SEQ_LM"},
          {"target_modules": ["q", "v", "relative_attention_bias"]},  # (T5's first block alone has it)
          {"target_modules": "all-linear", "task_type": "SEQ_2_SEQ_LM"}]),
        # (its last two layers share the earlier layers' keys and values: no k_proj or v_proj there)
        ("gemma3n", lambda: T.Gemma3nForCausalLM(T.Gemma3nTextConfig(
            vocab_size=64, vocab_size_per_layer_input=64, hidden_size=32, hidden_size_per_layer_input=8,
            intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
            num_kv_shared_layers=2, laurel_rank=4, altup_num_inputs=2, activation_sparsity_pattern=[0.0] * 4,
            layer_types=["sliding_attention", "full_attention"] * 2)),
         [{"target_modules": "all-linear"}, {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}]),
    ]


@pytest.mark.parametrize("family, make, loras", _families(), ids=[f[0] for f in _families()])
def test_real_peft_saves_stay_clean(tmp_path, family, make, loras):
    """A false-alarm hunt over PEFT's own saves: Conv1D (GPT-2's c_attn), a classifier's modules_to_save, an
    embedding's lora_embedding_A/B, DoRA's magnitudes, lora_bias, layers_to_transform, exclude_modules, a regex,
    trainable tokens, a target list naming modules the model lacks, T5's relative_attention_bias in its first
    block only, and Gemma 3n's KV-sharing layers without k_proj and v_proj (the last ones: the base model built)."""
    torch.manual_seed(0)
    make().save_pretrained(tmp_path / "base")
    cls = getattr(transformers, json.loads((tmp_path / "base" / "config.json").read_text())["architectures"][0])
    for i, lora in enumerate(loras):
        adapter = _save(cls.from_pretrained(tmp_path / "base"), tmp_path / f"a{i}", **lora)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            peft.PeftModel.from_pretrained(cls.from_pretrained(tmp_path / "base"), adapter)
        assert not [w for w in caught if "missing adapter keys" in str(w.message)], lora  # the oracle
        report = nandoctor.scan(adapter)
        assert report.exit_code == 0 and not report.errors, (lora, report.errors)
