"""Weight-normalized layers whose direction holds a slice of zeros (checkpoint/weightnorm.py): g·v/‖v‖ divides 0 by 0
in every forward pass. The oracle: the real model's forward pass (transformers' Wav2Vec2, torch's weight_norm)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest

import nandoctor
from nandoctor import verdict

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

DIRECTION = "encoder.pos_conv_embed.conv.parametrizations.weight.original1"


@pytest.fixture(scope="module")
def wav2vec2(tmp_path_factory) -> Path:
    """A fresh tiny Wav2Vec2: its positional convolution is weight-normalized along the kernel (dim=2)."""
    folder = tmp_path_factory.mktemp("w2v") / "clean"
    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16),
        conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        vocab_size=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.Wav2Vec2Model(config).save_pretrained(folder)
    return folder


def _nonfinite_outputs(folder: Path) -> int:
    model = transformers.Wav2Vec2Model.from_pretrained(folder).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        return int((~torch.isfinite(model(torch.randn(1, 4000)).last_hidden_state)).sum())


def _zero(clean: Path, folder: Path, where) -> Path:
    shutil.copytree(clean, folder)
    state = load_file(folder / "model.safetensors")
    v = state[DIRECTION].clone()
    v[where] = 0.0
    state[DIRECTION] = v
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("where, words", [((slice(None), slice(None), 5), "1 slice of zeros along dim 2 (of 16: 5)"),
                                          ((Ellipsis,), "original1 is all zero")], ids=["slice", "whole"])
def test_a_zero_slice_of_a_weight_norm_direction_is_zeroed(wav2vec2, tmp_path, where, words):
    """A kernel position of wav2vec2's positional convolution zeroed: every output NaN; an adversarial round read CLEAN
    (the whole direction zeroed too: it has no siblings, and is no norm gain or embedding)."""
    assert _nonfinite_outputs(wav2vec2) == 0 and nandoctor.scan(wav2vec2).exit_code == 0
    broken = _zero(wav2vec2, tmp_path / "broken", where)
    assert _nonfinite_outputs(broken) > 0  # the oracle
    report = nandoctor.scan(broken)
    assert report.exit_code == 1 and [t.name for t in report.tensors if "zeroed" in t.findings] == [DIRECTION]
    assert words in verdict.one_line(report) and "NaN in every forward pass" in verdict.one_line(report)
    fixed = tmp_path / "fixed"
    nandoctor.repair(broken, [wav2vec2], fixed)
    assert nandoctor.scan(fixed).exit_code == 0 and _nonfinite_outputs(fixed) == 0


def test_torchs_own_weight_norm_along_dim_0_in_a_torch_file(tmp_path):
    """torch.nn.utils.weight_norm (weight_g, weight_v; dim=0): one output channel's direction zeroed is NaN there."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = torch.nn.utils.weight_norm(torch.nn.Conv1d(4, 6, 3))  # (the old API, as HiFi-GANs use)
    with torch.no_grad():
        layer.weight_v[2] = 0.0
        out = layer(torch.randn(1, 4, 10))
    assert torch.isnan(out[0, 2]).all() and torch.isfinite(out[0, :2]).all()  # the oracle: channel 2 only
    torch.save(layer.state_dict(), tmp_path / "vocoder.pt")
    report = nandoctor.scan(tmp_path / "vocoder.pt")
    assert report.exit_code == 1
    assert report.extra[verdict.WEIGHT_NORM_ZERO] == [
        {"name": "weight_v", "dim": 0, "slices": [2], "of": 6, "count": 1}]
    with torch.no_grad():
        layer.weight_v[2] = 0.5  # (a healthy one reads nothing more)
    torch.save(layer.state_dict(), tmp_path / "healthy.pt")
    assert nandoctor.scan(tmp_path / "healthy.pt").exit_code == 0
