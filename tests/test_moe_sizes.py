"""Mixture-of-experts sizes config.json does not give (checkpoint/architecture.py, checkpoint/dryload.py), with
transformers' from_pretrained (and generate) as the oracle on tiny models built here with from_config and saved
with save_pretrained.

transformers 5 builds the experts fused (``mlp.experts.gate_up_proj``: [experts, 2 x width, hidden]) and
save_pretrained writes them back per expert (Mixtral's ``block_sparse_moe.experts.0.w1.weight``, Qwen-MoE's
``mlp.experts.0.gate_proj.weight``): no stored name is a name of the built model, so a comparison by name compared
nothing. A helper's trial: config.json without num_local_experts (Mixtral), moe_intermediate_size or
shared_expert_intermediate_size (Qwen2-MoE) read CLEAN while from_pretrained refused each ("size mismatch"); one
without num_experts_per_tok over 3 experts loaded and generate raised ("selected index k out of range")."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import nandoctor  # noqa: E402
from nandoctor.checkpoint import architecture  # noqa: E402
from tests.config_edits import GONE, edited  # noqa: E402

_SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=128)
_MOE = {  # (widths no other size shares: a deleted one is no coincidence of another key's value)
    "mixtral": dict(num_local_experts=3, num_experts_per_tok=2),
    "qwen2_moe": dict(num_experts=3, num_experts_per_tok=2, moe_intermediate_size=24, shared_expert_intermediate_size=40),
    "qwen3_moe": dict(num_experts=3, num_experts_per_tok=2, moe_intermediate_size=24),
    "phimoe": dict(num_local_experts=3, num_experts_per_tok=2),
}


def _saved(folder: Path, model_type: str, *, fused: bool = False) -> Path:
    """A tiny model of ``model_type`` as save_pretrained writes it; ``fused``: its state dict saved as it is in
    memory (transformers 5's fused experts), as a training script's own save_file does."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **{**_SIZES, **_MOE[model_type]}))
    model.save_pretrained(folder)
    if fused:
        state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder




def _oracle(folder: Path) -> str:
    """"loads" where from_pretrained loads every weight and generate runs; what failed else."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    except Exception as exc:  # noqa: BLE001 - any refusal is the oracle's answer
        return f"refused: {exc}"
    if info["missing_keys"] or info["mismatched_keys"]:
        return f"random: {sorted(info['missing_keys'])[:2]}"
    try:
        model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2, do_sample=False)
    except Exception as exc:  # noqa: BLE001
        return f"generate raises: {exc}"
    return "loads"


@pytest.mark.parametrize(("model_type", "fused", "edits", "kind", "said"), [
    ("mixtral", False, {"num_local_experts": GONE}, "unloadable",
     "model.layers.0.mlp.experts.down_proj (made of the stored model.layers.0.block_sparse_moe.experts.0.w2.weight and "
     "2 more) holds shape [3, 32, 64] where the model built from config.json has [8, 32, 64]"),
    ("mixtral", False, {"intermediate_size": GONE}, "unloadable", "config.json gives no intermediate_size"),
    ("phimoe", False, {"num_local_experts": GONE}, "unloadable", "config.json gives no num_local_experts"),
    ("qwen2_moe", False, {"moe_intermediate_size": GONE}, "unloadable", "no size config.json gives is 24"),
    ("qwen2_moe", True, {"moe_intermediate_size": GONE}, "unloadable",
     "model.layers.0.mlp.experts.down_proj holds shape [3, 32, 24] where the model built from config.json has "
     "[3, 32, 1408]"),
    ("qwen2_moe", False, {"shared_expert_intermediate_size": GONE}, "unloadable", "no size config.json gives is 40"),
    ("qwen3_moe", False, {"moe_intermediate_size": GONE}, "unloadable", "[3, 32, 768]"),
    ("qwen3_moe", False, {"num_experts_per_tok": GONE}, "config",
     "config.json gives no num_experts_per_tok, so the class's default is built: num_experts_per_tok is 8, more than "
     "the 3 experts"),
    ("qwen2_moe", True, {"num_experts_per_tok": GONE}, "config", "num_experts_per_tok is 4, more than the 3 experts"),
])
def test_an_moe_size_config_json_does_not_give_is_judged_as_from_pretrained_loads_it(
        tmp_path, model_type, fused, edits, kind, said):
    folder = edited(_saved(tmp_path / "m", model_type, fused=fused), edits)
    assert _oracle(folder) != "loads"  # the oracle: refused, or generate raises
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and [e.kind for e in report.errors] == [kind], report.errors
    assert said in report.errors[0].message, report.errors[0].message


@pytest.mark.parametrize(("model_type", "fused", "edits"), [
    ("mixtral", False, {}), ("mixtral", True, {}), ("qwen2_moe", False, {}), ("qwen2_moe", True, {}),
    ("qwen3_moe", False, {}), ("phimoe", False, {}),
    # (Qwen2-MoE builds no dense MLP where every layer has experts: intermediate_size sizes nothing)
    ("qwen2_moe", False, {"intermediate_size": GONE}),
    # (PhiMoE's sparsemixer routes to two experts whatever num_experts_per_tok says: 5 over 3 loads and generates)
    ("phimoe", False, {"num_experts_per_tok": 5}),
])
def test_moe_models_that_load_and_generate_stay_clean(tmp_path, model_type, fused, edits):
    folder = edited(_saved(tmp_path / "m", model_type, fused=fused), edits)
    assert _oracle(folder) == "loads"
    report = nandoctor.scan(folder)
    assert report.exit_code == 0 and not report.errors, report.errors


def test_fresh_moe_saves_build_no_model(tmp_path, monkeypatch):
    """No suspicion in a fresh save of Qwen-MoE: its expert widths are sizes config.json gives (a build costs
    seconds); nor in Mixtral's, whose save_pretrained writes "head_dim": null itself."""
    monkeypatch.setattr(architecture, "_built_by_transformers", lambda root: pytest.fail("built for nothing"))
    for model_type in ("qwen2_moe", "qwen3_moe", "phimoe", "mixtral"):
        assert nandoctor.scan(_saved(tmp_path / model_type, model_type)).exit_code == 0


def test_one_expert_in_another_shape_than_its_siblings_is_not_loadable(tmp_path):
    """One expert's w2 transposed: from_pretrained cannot stack the layer's experts into one tensor ("We encountered
    some issues during automatic conversion"); compared by name, no built name matched a stored one."""
    from safetensors.torch import load_file

    folder = _saved(tmp_path / "m", "mixtral")
    tensors = load_file(str(folder / "model.safetensors"))
    name = "model.layers.1.block_sparse_moe.experts.2.w2.weight"
    tensors[name] = tensors[name].t().contiguous()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    assert _oracle(folder).startswith("refused")
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and [e.kind for e in report.errors] == ["unloadable"], report.errors
    assert "from_pretrained cannot make model.layers.1.mlp.experts.down_proj" in report.errors[0].message
