"""Layer and component naming across model families, and bad-layer ranges."""

from __future__ import annotations

import dataclasses

from nandoctor.verdict import tensor_findings

import pytest

from nandoctor.layers import bad_ranges, component_of, layer_of, summarize
from nandoctor.model import Region, TensorRef, TensorResult


@pytest.mark.parametrize(
    "name, group, index, component",
    [
        ("transformer.h.21.attn.c_attn.weight", "transformer.h.21", 21, "attention"),
        ("transformer.h.3.mlp.w1.weight", "transformer.h.3", 3, "mlp"),
        ("transformer.h.3.ln_2.weight", "transformer.h.3", 3, "norm"),
        ("model.layers.7.self_attn.q_proj.weight", "model.layers.7", 7, "attention"),
        ("model.layers.7.mlp.down_proj.weight", "model.layers.7", 7, "mlp"),
        ("model.layers.7.post_attention_layernorm.weight", "model.layers.7", 7, "norm"),
        ("model.decoder.layers.2.fc1.weight", "model.decoder.layers.2", 2, "mlp"),
        ("encoder.layer.11.attention.self.query.weight", "encoder.layer.11", 11, "attention"),
        ("encoder.layer.11.intermediate.dense.weight", "encoder.layer.11", 11, "mlp"),
        ("encoder.layer.11.output.LayerNorm.weight", "encoder.layer.11", 11, "norm"),
        ("gpt_neox.layers.5.mlp.dense_h_to_4h.weight", "gpt_neox.layers.5", 5, "mlp"),
        ("transformer.blocks.1.ffn.up_proj.weight", "transformer.blocks.1", 1, "mlp"),
        ("blocks.0.attn.qkv.weight", "blocks.0", 0, "attention"),
        ("layers.4.feed_forward.w2.weight", "layers.4", 4, "mlp"),
        ("module.model.layers.9.self_attn.o_proj.weight", "module.model.layers.9", 9, "attention"),
        ("transformer.wte.weight", "transformer.wte", None, "embedding"),
        ("model.embed_tokens.weight", "model.embed_tokens", None, "embedding"),
        ("lm_head.weight", "lm_head", None, "head"),
        ("transformer.ln_f.weight", "transformer.ln_f", None, "norm"),
        ("model.norm.weight", "model.norm", None, "norm"),
        ("optimizer.state.12.exp_avg", "optimizer.state.12", 12, "other"),  # moments of parameter 12
        ("optimizer.state.model.layers.3.mlp.up_proj.weight.exp_avg_sq", "optimizer.state.model.layers.3", 3, "mlp"),
    ],
)
def test_layer_and_component(name, group, index, component):
    key = layer_of(name)
    assert (key.group, key.index) == (group, index)
    assert component_of(name) == component


def result(name, nan=0):
    region = Region("f", 0, 4, "F32", name)
    t = TensorResult(TensorRef(name, "F32", (1,), region), nan=nan, first_bad=0 if nan else None)
    return dataclasses.replace(t, findings=tensor_findings(t))


def test_ranges_merge_consecutive_layers_only():
    results = [result(f"transformer.h.{i}.attn.c_attn.weight", nan=int(i in (2, 3, 4, 7, 10, 11)))
               for i in range(12)]
    results += [result("lm_head.weight", nan=1), result("transformer.wte.weight")]
    labels = [r.label for r in bad_ranges(summarize(results))]
    assert labels == ["lm_head", "transformer.h.2–4", "transformer.h.7", "transformer.h.10–11"]


def test_summary_sorts_layers_naturally_and_picks_worst():
    results = [result("transformer.h.10.mlp.w1.weight", 5), result("transformer.h.10.attn.c_proj.weight", 9),
               result("transformer.h.2.mlp.w1.weight")]
    layers = summarize(results)
    assert [s.layer for s in layers] == ["transformer.h.2", "transformer.h.10"]
    assert layers[1].worst == "transformer.h.10.attn.c_proj.weight"
    assert layers[1].bad_components == ("attention", "mlp") and layers[1].nan == 14


def test_optimizer_moments_group_into_ranges_like_layers():
    results = [result(f"optimizer.state.{i}.{m}", nan=int(5 <= i <= 34 and m == "exp_avg"))
               for i in range(40) for m in ("exp_avg", "exp_avg_sq", "step")]
    assert [r.label for r in bad_ranges(summarize(results))] == ["optimizer.state.5–34"]
