"""Shape errors made the same way in every layer (checkpoint/tensorkinds.py), with transformers' from_pretrained as
the oracle on tiny Llama and GPT-2 saves: every layer's MLP or v_proj transposed, GPT-2's c_attn or c_fc in
nn.Linear's orientation (nanoGPT's conversion without .t()), norms and a bias saved [1, H], an embedding [1, V, H].
An adversarial round read each CLEAN (no layer odd among its siblings, no dimension config.json does not give), while
from_pretrained refused it (size mismatch). And fresh saves of the common families raise no such suspicion: no model
is built for them (a build costs every scan seconds)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import nandoctor  # noqa: E402
from nandoctor.checkpoint import architecture  # noqa: E402

Edit = Callable[[dict[str, torch.Tensor]], None]


def _every(suffix: str, change: Callable[[torch.Tensor], torch.Tensor]) -> Edit:
    """An edit of every stored tensor whose name ends with ``suffix``."""
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        for name in [n for n in tensors if n.endswith(suffix)]:
            tensors[name] = change(tensors[name]).contiguous()
    return edit


def _transposed(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.t()


def _row(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(1, *tensor.shape)


def _saved(folder: Path, model_type: str, edits: tuple[Edit, ...] = ()) -> Path:
    """A tiny Llama (grouped-query attention: v_proj is not square) or GPT-2 as save_pretrained writes it, with
    ``edits`` made to its weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    sizes = (dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
             if model_type == "llama" else dict(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **sizes)).save_pretrained(folder)
    if edits:
        tensors = load_file(str(folder / "model.safetensors"))
        for edit in edits:
            edit(tensors)
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def _refused(folder: Path) -> bool:
    """The oracle: whether AutoModelForCausalLM.from_pretrained refuses the folder."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        AutoModelForCausalLM.from_pretrained(folder)
    except Exception:  # noqa: BLE001 - any refusal is the oracle's answer
        return True
    return False


_LLAMA_MLP_T = tuple(_every(f"mlp.{p}.weight", _transposed) for p in ("gate_proj", "up_proj", "down_proj"))


@pytest.mark.parametrize(("model_type", "edits", "said", "hint"), [
    ("llama", _LLAMA_MLP_T, "down_proj writes the hidden state", "transpose those weights"),
    ("llama", (_every("mlp.gate_proj.weight", _transposed),), "gate_proj reads the hidden state", "transpose"),
    ("llama", (_every("v_proj.weight", _transposed),), "model.layers.0.self_attn.v_proj.weight holds shape [32, 16]",
     "transpose"),
    ("llama", (_every("input_layernorm.weight", _row),), "a norm's weight has one dimension", "reshape"),
    ("llama", (_every("norm.weight", _row),), "and 4 more tensor(s)", "reshape"),
    ("llama", (_every("model.norm.weight", lambda t: t.reshape(-1, 1)),), "model.norm.weight holds shape [32, 1]",
     "reshape those weights to the model's shape ([32]"),
    ("llama", (_every("embed_tokens.weight", _row),), "an embedding or LM head has two dimensions", "reshape"),
    ("gpt2", (_every("attn.c_attn.weight", _transposed),), "in Conv1D's [in, out] dimension 0 is 32", "nanoGPT"),
    ("gpt2", (_every("mlp.c_fc.weight", _transposed),), "transformer.h.0.mlp.c_fc.weight holds shape [128, 32]",
     "transpose"),
    ("gpt2", (_every("ln_f.weight", _row),), "transformer.ln_f.weight holds shape [1, 32]", "reshape"),
    ("gpt2", (_every("ln_1.weight", _row),), "a norm's weight has one dimension", "reshape"),
    ("gpt2", (_every("mlp.c_fc.bias", _row),), "a linear layer's bias has 1 dimension(s)", "reshape"),
])
def test_a_shape_error_made_in_every_layer_is_not_loadable(tmp_path, model_type, edits, said, hint):
    folder = _saved(tmp_path / "m", model_type, edits)
    assert _refused(folder)
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and [e.kind for e in report.errors] == ["unloadable"], report.errors
    assert said in report.errors[0].message, report.errors[0].message
    assert hint in report.errors[0].hint, report.errors[0].hint


def test_a_repair_of_weights_transposed_in_every_layer_is_refused(tmp_path):
    """repair re-scans with the same checks: a NaN restored from a donor leaves the transposition, so no output
    is written and nothing is called verified CLEAN (the adversarial round's repair printed "verified CLEAN")."""
    donor = _saved(tmp_path / "donor", "llama")

    def nan(tensors: dict[str, torch.Tensor]) -> None:
        tensors["model.layers.0.self_attn.k_proj.weight"].view(-1)[0] = float("nan")

    target = _saved(tmp_path / "target", "llama", (*_LLAMA_MLP_T, nan))
    with pytest.raises(nandoctor.NandoctorError, match="from_pretrained refuses the checkpoint"):
        nandoctor.repair(target, donor, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


_TINY = dict(vocab_size=128, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=64)
_FAMILIES = {  # model_type: (Auto class, its sizes beyond _TINY, or in place of them where its config names them so)
    "llama": ("AutoModelForCausalLM", dict(num_key_value_heads=2)),
    "mistral": ("AutoModelForCausalLM", dict(num_key_value_heads=2)),
    "qwen2": ("AutoModelForCausalLM", dict(num_key_value_heads=2)),
    "qwen3": ("AutoModelForCausalLM", dict(num_key_value_heads=2, head_dim=8)),
    "gemma": ("AutoModelForCausalLM", dict(num_key_value_heads=1, head_dim=16)),
    "phi3": ("AutoModelForCausalLM", dict(num_key_value_heads=2, pad_token_id=0)),
    "gpt_neox": ("AutoModelForCausalLM", {}),
    "opt": ("AutoModelForCausalLM", dict(ffn_dim=64, word_embed_proj_dim=32)),
    "bloom": ("AutoModelForCausalLM", {}),
    "falcon": ("AutoModelForCausalLM", {}),
    "phi": ("AutoModelForCausalLM", {}),
    "gpt_bigcode": ("AutoModelForCausalLM", {}),  # (c_attn and c_fc as nn.Linear: [out, in], unlike GPT-2's)
    "cohere": ("AutoModelForCausalLM", dict(use_qk_norm=True)),  # (q_norm over [heads, head_dim]: 2-D by design)
    "qwen2_moe": ("AutoModelForCausalLM", dict(num_experts=3, num_experts_per_tok=2, moe_intermediate_size=24,
                                               shared_expert_intermediate_size=40, num_key_value_heads=2)),
    "qwen3_moe": ("AutoModelForCausalLM", dict(num_experts=3, num_experts_per_tok=2, moe_intermediate_size=24,
                                               num_key_value_heads=2)),
    "bert": ("AutoModelForMaskedLM", {}),
    "roberta": ("AutoModelForMaskedLM", dict(max_position_embeddings=66)),
    "bart": ("AutoModelForSeq2SeqLM", dict(encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_layers=2, decoder_layers=2,
                                           encoder_attention_heads=4, decoder_attention_heads=4)),
    "gpt2": ("AutoModelForCausalLM", dict(vocab_size=128, n_embd=32, n_layer=3, n_head=4, n_positions=64)),
    "t5": ("AutoModelForSeq2SeqLM", dict(vocab_size=128, d_model=32, num_layers=3, d_ff=64, d_kv=8, num_heads=4)),
    "vit": ("AutoModel", dict(image_size=32, patch_size=8)),
}


@pytest.mark.parametrize("model_type", sorted(_FAMILIES))
def test_fresh_saves_raise_no_suspicion_of_their_tensors_kinds(tmp_path, monkeypatch, model_type):
    """A fresh save_pretrained of each family stays CLEAN without the model being built: no norm, linear layer or
    projection of theirs looks stored in another kind's shape."""
    import transformers

    auto, sizes = _FAMILIES[model_type]
    if "vocab_size" not in sizes:
        sizes = {**_TINY, **sizes}
    torch.manual_seed(0)
    model = getattr(transformers, auto).from_config(transformers.AutoConfig.for_model(model_type, **sizes))
    model.save_pretrained(tmp_path / "m")
    monkeypatch.setattr(architecture, "_built_by_transformers", lambda root: pytest.fail("built for nothing"))
    report = nandoctor.scan(tmp_path / "m")
    assert report.exit_code == 0 and not report.errors, report.errors


def test_qwen1_s_w2_reads_the_hidden_state_and_a_guess_no_build_confirms_says_nothing(tmp_path, monkeypatch):
    """Qwen-1's MLP reads the hidden state with w1 and w2 ([intermediate/2, hidden]), its c_proj writes it: the README's
    own Qwen-shaped example read "w2 writes the hidden state … stored transposed?", tried a build (importing torch
    for a scan) and, transformers building no remote-code model, said it as a note. The orientation is a guess by
    names: where no build can confirm it, nothing is said."""
    import shutil

    from tests.conftest import DEMO_RUN

    monkeypatch.setattr(architecture, "_built_by_transformers", lambda root: pytest.fail("built for nothing"))
    report = nandoctor.scan(DEMO_RUN / "checkpoint-200")
    assert report.exit_code == 0 and not [n for n in report.notes if "transposed" in n], report.notes

    folder = tmp_path / "model"
    shutil.copytree(DEMO_RUN / "checkpoint-200", folder)
    config = (folder / "config.json").read_text()
    (folder / "config.json").write_text(config.replace('"qwen"', '"my_own_llama"'))  # (w2 now read as Llama's)
    monkeypatch.setattr(architecture, "_built_by_transformers", lambda root: None)  # (a model transformers lacks)
    report = nandoctor.scan(folder)
    assert report.exit_code == 0 and not [n for n in report.notes if "transposed" in n], report.notes


def test_convolution_kernels_cross_attention_and_other_layouts_raise_no_suspicion():
    """A review's sweep of every model transformers ships: SqueezeBERT's projections are 1-wide convolutions
    ([out, in, 1]), BLIP-2's Q-Former cross-attention reads the encoder's width, RWKV's feed_forward.value writes the
    hidden state: each raised a suspicion, and a healthy save was built on the meta device on every scan. An
    unsqueezed linear weight ([1, out, in]) still does."""
    from nandoctor.checkpoint import tensorkinds

    base = {"model_type": "llama", "hidden_size": 32}
    conv = {f"encoder.layers.{i}.attention.query.weight": (32, 32, 1) for i in range(3)}
    assert not list(tensorkinds.suspicions({**base, "model_type": "squeezebert"}, conv))
    cross = {f"qformer.layer.{i}.crossattention.attention.key.weight": (32, 48) for i in range(3)}
    assert not list(tensorkinds.suspicions(base, cross))
    rwkv = {f"rwkv.blocks.{i}.feed_forward.value.weight": (32, 128) for i in range(3)}
    assert not list(tensorkinds.suspicions({**base, "model_type": "rwkv"}, rwkv))
    unsqueezed = {f"model.layers.{i}.self_attn.q_proj.weight": (1, 32, 32) for i in range(3)}
    assert len(list(tensorkinds.suspicions(base, unsqueezed))) == 3
    transposed = {f"model.layers.{i}.mlp.up_proj.weight": (32, 64) for i in range(3)}  # [hidden, inter]: up reads
    assert len(list(tensorkinds.suspicions(base, transposed))) == 3
