"""Model weights stored as integers, which from_pretrained casts to the model's float dtype.

An I32 ``up_proj.weight`` holding 100000 in a float16 model scanned CLEAN (integers cannot be NaN), while
``from_pretrained`` loaded it as Inf and the forward pass gave NaN logits; int8 weights of a quantized checkpoint
without its quantization_config gave NaN logits too. Such a folder is NOT LOADABLE, and each such tensor is
judged as the float it becomes (checkpoint/loadability.cast_to_float, engine/intcast.py); transformers is the
oracle.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import nandoctor  # noqa: E402
from tests.conftest import run_cli  # noqa: E402

UP = "model.layers.0.mlp.up_proj.weight"  # 64x32


def _model(folder: Path, dtype: str = "float16", change=None, **config_extra) -> Path:
    """A tiny Llama saved by save_pretrained in ``dtype``, its safetensors rewritten with ``change``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=128)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(folder)
    if change is not None:
        tensors = load_file(str(folder / "model.safetensors"))
        change(tensors)
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if config_extra:
        data = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**data, **config_extra}))
    return folder


def _as_int(value: int, dtype=torch.int32, name: str = UP):
    def change(tensors):
        ints = (tensors[name].float() * 1000).to(dtype)  # a float weight stored as integers: a broken conversion
        ints[3, 5] = value
        tensors[name] = ints

    return change


def _oracle_finite(folder: Path) -> bool:
    """Whether from_pretrained loads every weight finite and a forward pass gives finite logits."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    weights_finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    return weights_finite and bool(torch.isfinite(logits).all())


def test_an_integer_weight_that_overflows_float16_once_cast_fails(tmp_path):
    folder = _model(tmp_path / "m", change=_as_int(100_000))
    assert not _oracle_finite(folder)  # transformers: the I32 100000 loads as Inf in float16
    report = nandoctor.scan(folder)
    up = next(t for t in report.tensors if t.name == UP)
    assert (up.ref.dtype, up.overflow, up.max_abs, "overflow" in up.findings) == ("I32", 1, 100_000.0, True)
    assert not report.ok and report.exit_code == 3
    assert [p.kind for p in report.errors] == ["unloadable"] and "stored as integers (I32" in report.errors[0].message
    result = run_cli("scan", str(folder), "--json")
    row = next(t for t in json.loads(result.output)["tensors"] if t["name"] == UP)
    assert result.exit_code == 3 and (row["overflow"], row["max_abs"], row["findings"]) == (1, 100_000.0, ["overflow"])


def test_an_integer_weight_above_the_fp16_ceiling_is_exploded(tmp_path):
    """20000 fits fp16 (the oracle loads it finite) but is past the 2^14 ceiling of fp16 arithmetic: exploded,
    as the same value stored as F32 would be under a float16 config."""
    folder = _model(tmp_path / "m", change=_as_int(20_000))
    from transformers import AutoModelForCausalLM

    loaded = dict(AutoModelForCausalLM.from_pretrained(folder).named_parameters())[UP]
    assert loaded.dtype == torch.float16 and loaded[3, 5].item() == 20_000
    report = nandoctor.scan(folder)
    up = next(t for t in report.tensors if t.name == UP)
    assert (up.exploded, up.overflow, up.findings, report.exit_code) == (1, 0, ("exploded",), 3)


def test_an_integer_weight_in_a_bf16_model_is_held_to_the_default_ceiling(tmp_path):
    folder = _model(tmp_path / "m", "bfloat16", change=_as_int(-300_000, torch.int64))
    up = next(t for t in nandoctor.scan(folder).tensors if t.name == UP)
    assert (up.ref.dtype, up.exploded, up.max_abs, up.findings) == ("I64", 1, 300_000.0, ("exploded",))


@pytest.mark.parametrize("dtype", [torch.int8, torch.int32])
def test_small_integer_weights_are_not_loadable_too(tmp_path, dtype):
    """Values that fit every float still make the model compute with whole numbers: an int8 up_proj (a quantized
    checkpoint that lost its quantization_config) gave NaN logits in a trial; it is NOT LOADABLE, not CLEAN."""
    def as_int8(tensors):
        tensors[UP] = (tensors[UP].float() * 127 / tensors[UP].float().abs().max()).round().to(dtype)

    folder = _model(tmp_path / "m", change=as_int8)
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and next(t for t in report.tensors if t.name == UP).max_abs is not None
    assert "model weight(s) stored as integers" in report.errors[0].message
    (folder / "quantize_config.json").write_text('{"bits": 8}')  # AutoGPTQ's: a quantizer loads them
    assert nandoctor.scan(folder).ok


def test_integer_buffers_quantized_folders_and_bare_files_are_not_cast(tmp_path):
    """position_ids keeps its dtype (a buffer); a quantizer loads stored integers its own way; a file without
    config.json has no known loader: none of them is judged as a cast float."""
    def with_buffer(tensors):
        tensors["model.position_ids"] = torch.arange(131_072, dtype=torch.int64)[None]

    assert nandoctor.scan(_model(tmp_path / "buffer", change=with_buffer)).ok
    quantized = _model(tmp_path / "q", change=_as_int(100_000), quantization_config={"quant_method": "bitsandbytes"})
    assert not any(t.overflow or t.exploded for t in nandoctor.scan(quantized).tensors)
    bare = tmp_path / "bare.safetensors"
    save_file({UP: torch.full((4, 4), 100_000, dtype=torch.int32)}, str(bare))
    assert nandoctor.scan(bare).ok


def test_a_weight_stored_as_bool_is_not_loadable_as_an_integer_one_is(tmp_path):
    """A mask saved in place of a weight (`t > 0`): from_pretrained casts it to 0.0/1.0 and the model computes with
    it (a trial: CLEAN, where the same weight as U8 was NOT LOADABLE)."""
    from transformers import AutoModelForCausalLM

    def to_bool(tensors):
        tensors[UP] = tensors[UP] > 0

    folder = _model(tmp_path / "m", change=to_bool)
    loaded = AutoModelForCausalLM.from_pretrained(folder).get_parameter(UP)
    assert loaded.is_floating_point() and set(loaded.flatten().tolist()) == {0.0, 1.0}  # the oracle
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and [p.kind for p in report.errors] == ["unloadable"]
    assert "stored as integers (BOOL" in report.errors[0].message
