"""fp16 weights can be exploded: the ceiling is 2^14 for fp16 (1e5 is above anything fp16 holds).

A new-user trial scaled every MLP matrix of a real fp16 model to a largest value of 5e4: the scan said
PASS CLEAN (outliers are relative to their tensor, and 1e5 is out of fp16's reach), and ``generate`` then
died with ``probability tensor contains either inf, nan or element < 0``.
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import nandoctor  # noqa: E402
from nandoctor import verdict  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.realruns import generate_ok  # noqa: E402

pytestmark = pytest.mark.integration

CEILING = 2.0**14
MLP = ("mlp.down_proj.weight", "mlp.up_proj.weight", "mlp.gate_proj.weight")


def _llama(folder, scale_mlp_to: float | None = None):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config).to(torch.float16)
    if scale_mlp_to is not None:
        with torch.no_grad():
            for layer in model.model.layers:
                for w in (layer.mlp.down_proj.weight, layer.mlp.up_proj.weight, layer.mlp.gate_proj.weight):
                    w.copy_((w.float() * (scale_mlp_to / w.float().abs().max())).half())
    model.save_pretrained(folder)
    return model


def _config(kind: str):
    import transformers as t

    small = {"vocab_size": 256, "max_position_embeddings": 64}
    return {
        "gpt2": lambda: t.GPT2LMHeadModel(t.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=256)),
        "bert": lambda: t.BertForMaskedLM(t.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                       intermediate_size=128, **small)),
        "qwen2": lambda: t.Qwen2ForCausalLM(t.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                          num_attention_heads=4, num_key_value_heads=2, **small)),
        "t5": lambda: t.T5ForConditionalGeneration(t.T5Config(vocab_size=256, d_model=64, d_kv=16, d_ff=128,
                                                               num_layers=2, num_heads=4)),
    }[kind]()


def test_a_blown_up_fp16_model_is_exploded_and_really_cannot_generate(tmp_path):
    clean, scaled = tmp_path / "clean", tmp_path / "scaled"
    _llama(clean)
    _llama(scaled, scale_mlp_to=5e4)

    ok = nandoctor.scan(str(clean), device="cpu")
    assert ok.ok and all(t.findings == () for t in ok.tensors)
    assert generate_ok(clean, dtype=torch.float16)

    report = nandoctor.scan(str(scaled), device="cpu")
    assert report.exit_code == 1 and report.nonfinite == 0
    exploded = {t.name: t.exploded for t in report.tensors if "exploded" in t.findings}
    values = load_file(str(scaled / "model.safetensors"))
    expected = {f"model.layers.{i}.{m}": int((values[f"model.layers.{i}.{m}"].float().abs() > CEILING).sum())
                for i in range(2) for m in MLP}
    assert exploded == expected and all(expected.values())
    assert not generate_ok(scaled, dtype=torch.float16)  # what the finding is about

    quiet = run_cli("scan", scaled, "--quiet")
    assert quiet.exit_code == 1 and quiet.output.startswith(f"FAIL EXPLODED (DIVERGED) {scaled}: 6 weight tensors exploded")
    assert run_cli("scan", scaled, "--quiet", "--max-abs", "1e5").exit_code == 0  # --max-abs overrides every dtype

    # the live census (scan_module) uses the same per-dtype ceiling
    model = _llama(tmp_path / "again", scale_mlp_to=5e4)
    live = nandoctor.scan_module(model)
    assert {t.name: t.exploded for t in live.tensors if "exploded" in t.findings} == expected


@pytest.mark.parametrize("kind", ["gpt2", "bert", "qwen2", "t5"])
def test_clean_fp16_models_trip_no_finding(tmp_path, kind):
    torch.manual_seed(0)
    _config(kind).to(torch.float16).save_pretrained(tmp_path)
    report = nandoctor.scan(str(tmp_path), device="cpu")
    assert report.ok and report.health == "healthy"
    assert all(t.findings == () for t in report.tensors), [(t.name, t.findings) for t in report.tensors if t.findings]


def test_the_fp16_ceiling_is_where_fp16_arithmetic_overflows():
    """A weight of 2^14 times an activation of 4 is past fp16's largest value (65504): the product
    alone overflows; at half the ceiling it does not."""
    x = torch.tensor([[4.0]], dtype=torch.float16)
    assert torch.isinf(torch.nn.functional.linear(x, torch.tensor([[CEILING]], dtype=torch.float16))).all()
    assert torch.isfinite(torch.nn.functional.linear(x, torch.tensor([[CEILING / 2]], dtype=torch.float16))).all()
    from nandoctor.kernels.census import HealthLimits

    assert HealthLimits().ceiling("F16") == CEILING and HealthLimits().ceiling("BF16") == 1e5
    assert HealthLimits().ceiling("F8_E4M3") == 1e5  # fp8 weights are stored scaled: never "exploded"
    assert HealthLimits(max_abs=1e3).ceiling("F16") == 1e3


# ---------------------------------------------------------------------------------------------
# One tensor far above its siblings: every value under the ceiling, fp16 arithmetic broken all the same

NORM = "model.layers.1.input_layernorm.weight"


def _three_layers(folder, dtype=torch.float16, gains: dict[str, float] | None = None, config_dtype=None):
    """A tiny 3-layer Llama saved in ``dtype`` with the named norm gains set to a constant."""
    import json

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config).to(dtype)
    with torch.no_grad():
        for name, value in (gains or {}).items():
            dict(model.named_parameters())[name].fill_(value)
    model.save_pretrained(folder)
    if config_dtype is not None:
        data = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**data, "dtype": config_dtype}))
    return folder


def _eager_logits_finite(folder) -> bool:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
    with torch.no_grad():
        return bool(torch.isfinite(model(torch.arange(1, 9)[None]).logits).all())


@pytest.mark.parametrize(("stored", "config_dtype"), [(torch.float16, None), (torch.bfloat16, "float16")])
def test_a_norm_gain_far_above_its_siblings_is_exploded_where_it_loads_as_fp16(tmp_path, stored, config_dtype):
    """A trial set one layer's norm gain to 1000-2000 (every value under 2^14): 14 architectures gave Inf logits
    in fp16 while the scan said CLEAN. Its bulk against the same norm of the other layers now makes it exploded."""
    folder = _three_layers(tmp_path / "m", stored, {NORM: 2000.0}, config_dtype)
    assert not _eager_logits_finite(folder)  # the oracle: transformers' fp16 forward overflows
    report = nandoctor.scan(folder)
    bad = [t for t in report.tensors if t.findings]
    assert [(t.name, t.findings) for t in bad] == [(NORM, ("exploded",))] and report.exit_code == 1
    assert report.extra["outgrown_siblings"] == [{"name": NORM, "scale": 1024.0, "siblings": 1.0}]
    assert "1,024x its siblings' in the other layers, too large for fp16 arithmetic" in verdict.one_line(report)


def test_a_family_large_together_a_gain_of_300_and_bf16_loads_are_not_judged_by_their_siblings(tmp_path):
    """Controls: every layer's gain at 2000 (no single broken tensor), one gain of 200 (bulk under 2^8; fp16
    still computes: the oracle's logits are finite) and a bf16 model loaded as bf16 are left to the other rules."""
    together = _three_layers(tmp_path / "all", gains={f"model.layers.{i}.input_layernorm.weight": 2000.0 for i in range(3)})
    assert "outgrown_siblings" not in nandoctor.scan(together).extra
    small = _three_layers(tmp_path / "small", gains={NORM: 200.0})
    assert _eager_logits_finite(small) and nandoctor.scan(small).ok
    bf16 = _three_layers(tmp_path / "bf16", torch.bfloat16, {NORM: 2000.0})
    assert nandoctor.scan(bf16).ok


def _scaled_fp16(folder, model_type: str, name: str, factor: str):
    """A fresh tiny fp16 model whose tensor ``name`` is scaled: "none", "x10", or whole to a largest value of
    16,000; (whether its logits are finite, as transformers computes them in fp16; nandoctor's report)."""
    import transformers
    from safetensors.torch import load_file, save_file

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(
        model_type, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    transformers.AutoModelForCausalLM.from_config(config).to(torch.float16).save_pretrained(folder)
    tensors = load_file(str(folder / "model.safetensors"))
    weight = tensors[name].float()
    if factor != "none":
        weight = weight * (16000.0 / weight.abs().max() if factor == "16000" else 10.0)
    tensors[name] = weight.half()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        finite = bool(torch.isfinite(model(torch.tensor([[1, 10, 11, 12, 13, 14, 15, 16]])).logits).all())
    return finite, nandoctor.scan(folder)


def test_an_fp16_lm_head_whose_logits_overflow_is_exploded(tmp_path):
    """An LM head scaled as a whole to a largest value of 16,000: under fp16's ceiling, no siblings, no outlier,
    and every logit an fp16 dot product past 65,504 (an oracle sweep: CLEAN while generate(do_sample=True) raised).
    The same head at its trained scale, and scaled x10, stay clean."""
    pytest.importorskip("transformers")
    outcomes = {}
    for factor in ("x10", "16000", "none"):
        finite, report = _scaled_fp16(tmp_path / factor, "llama", "lm_head.weight", factor)
        outcomes[factor] = (finite, report.exit_code)
        if factor == "16000":
            assert report.extra["fp16_dot_overflow"][0]["name"] == "lm_head.weight"
            assert "lm_head.weight" in [t.ref.name for t in report.tensors.with_finding("exploded")]
    assert outcomes == {"none": (True, 0), "x10": (True, 0), "16000": (False, 1)}, outcomes


def test_a_tied_fp16_embedding_with_a_zero_padding_row_scaled_whole_is_exploded(tmp_path):
    """Gemma ties its embedding and zeroes the padding row, which was all a 64 KiB tensor's sample held: it had no
    bulk scale, so neither outliers nor its fp16 logits were judged (CLEAN; generate raised). A region of at most
    1 MiB is now its own sample."""
    pytest.importorskip("transformers")
    from safetensors.torch import load_file

    _, fresh = _scaled_fp16(tmp_path / "fresh", "gemma", "model.embed_tokens.weight", "none")
    assert fresh.exit_code == 0
    assert not load_file(str(tmp_path / "fresh" / "model.safetensors"))["model.embed_tokens.weight"][0].any()  # (pad)
    finite, report = _scaled_fp16(tmp_path / "gemma", "gemma", "model.embed_tokens.weight", "16000")
    assert not finite
    assert report.exit_code == 1 and report.extra["fp16_dot_overflow"][0]["name"] == "model.embed_tokens.weight"
