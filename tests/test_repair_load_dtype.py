"""A repair judges its target, its donors' tensors and its output as `nandoctor scan` does: in the dtype config.json
makes from_pretrained load the weights in. An adversarial round: fp32 weights under a `"dtype": "float16"` config,
repaired from a donor whose tensor holds 3e4 (finite in fp32, past fp16's 2^14 ceiling), read "verified CLEAN"
while `nandoctor scan` of the output failed and from_pretrained's logits were NaN; a target of 7e4 read "ALREADY
CLEAN". transformers' from_pretrained + a forward pass is the oracle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

import nandoctor  # noqa: E402
from nandoctor.errors import UnrestorableError  # noqa: E402

Q = "model.layers.0.self_attn.q_proj.weight"


def _llama(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    data = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**data, "dtype": "float16"}))  # fp32 weights, loaded as fp16
    return folder


def _set(folder: Path, name: str, value: float | None = None, scale_to: float | None = None) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(path)
    w = tensors[name]
    if scale_to is not None:
        w = w / w.abs().max() * scale_to
    if value is not None:
        w = w.clone()
        w.view(-1)[7] = value
    tensors[name] = w.contiguous()
    save_file(tensors, path, metadata={"format": "pt"})


def _loads_finite(folder: Path) -> bool:
    """Whether the weights from_pretrained loads (in the config's fp16) and the logits they give are finite."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    assert model.dtype == torch.float16  # (the config's dtype is what loads)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    return all(bool(torch.isfinite(p).all()) for p in model.parameters()) and bool(torch.isfinite(logits).all())


def test_a_donor_above_the_load_dtype_s_ceiling_is_passed_over(tmp_path) -> None:
    target = _llama(tmp_path / "target", 1)
    _set(target, Q, value=float("nan"))
    loud = _llama(tmp_path / "loud", 2)
    _set(loud, Q, scale_to=9e4)  # finite in fp32, Inf once loaded as fp16
    assert not _loads_finite(loud)  # the oracle: that copy breaks the model
    with pytest.raises(UnrestorableError):
        nandoctor.repair(target, [loud], tmp_path / "out1")
    assert not (tmp_path / "out1").exists()
    good = _llama(tmp_path / "good", 3)
    result = nandoctor.repair(target, [loud, good], tmp_path / "out2")  # the next donor is taken instead
    assert result.ok
    [restored] = result.plan.restorations
    assert Path(result.plan.donors[restored.donor].path) == good
    assert nandoctor.scan(tmp_path / "out2").ok
    assert _loads_finite(tmp_path / "out2")


def test_a_target_that_overflows_its_load_dtype_is_no_clean_copy(tmp_path) -> None:
    target = _llama(tmp_path / "target", 1)
    _set(target, Q, scale_to=7e4)  # no NaN: finite fp32 values fp16 cannot hold
    assert not _loads_finite(target)
    assert not nandoctor.scan(target).ok
    result = nandoctor.repair(target, [_llama(tmp_path / "donor", 1)], tmp_path / "out")
    assert result.ok and [r.name for r in result.plan.restorations] == [Q]  # restored, not "already clean"
    assert nandoctor.scan(tmp_path / "out").ok
    assert _loads_finite(tmp_path / "out")
