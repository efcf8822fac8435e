"""A learned scalar the model exponentiates (CLIP's logit_scale) whose exp() overflows its float type: the logits are
Inf and their softmax NaN, though the value is finite, has no bulk to stand out from and lies far under every
ceiling. The oracle: transformers' CLIPModel forward."""

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


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clip") / "clean"
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, projection_dim=16),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, projection_dim=16), projection_dim=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.CLIPModel(config).save_pretrained(folder)
    return folder


def _logits_finite(folder: Path) -> bool:
    model = transformers.CLIPModel.from_pretrained(folder).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[1, 5, 6, 2], [1, 7, 8, 2]]), pixel_values=torch.randn(2, 3, 32, 32))
    return bool(torch.isfinite(out.logits_per_image.softmax(-1)).all())


@pytest.mark.parametrize("value, broken", [(4.6052 * 32, True), (50.0, False)])
def test_a_logit_scale_whose_exp_overflows_float32_is_exploded(clip, tmp_path, value, broken):
    """A trial flipped one exponent bit of the trained logit_scale (ln 100 = 4.6052 → 147.4): logits_per_image all Inf,
    the softmax NaN, and the scan said CLEAN. 50 (exp: 5e21) stays finite, and CLEAN."""
    folder = Path(shutil.copytree(clip, tmp_path / "model"))
    state = load_file(folder / "model.safetensors")
    state["logit_scale"] = torch.tensor(value)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    assert _logits_finite(folder) is not broken  # the oracle
    report = nandoctor.scan(folder)
    if not broken:
        assert report.exit_code == 0, verdict.one_line(report)
        return
    assert report.exit_code == 1 and [t.name for t in report.tensors if "exploded" in t.findings] == ["logit_scale"]
    assert "the model takes its exp()" in verdict.one_line(report)
    assert report.extra[verdict.EXP_OVERFLOW][0]["name"] == "logit_scale"
    fixed = tmp_path / "fixed"
    nandoctor.repair(folder, [clip], fixed)
    assert nandoctor.scan(fixed).exit_code == 0 and _logits_finite(fixed)


def test_claps_two_logit_scales_are_judged_alike(tmp_path):
    """A review: CLAP multiplies by exp(logit_scale_a) and exp(logit_scale_t), neither of which the rule's name took;
    one at 147 gave logits_per_text Inf and read CLEAN."""
    torch.manual_seed(0)
    layers = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = transformers.ClapConfig(
        text_config=dict(layers, vocab_size=100), projection_dim=16,
        audio_config=dict(hidden_size=32, depths=[1, 1], num_attention_heads=[2, 2], patch_embeds_hidden_size=16,
                          spec_size=64, window_size=4, num_mel_bins=16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.ClapModel(config)
        model.save_pretrained(tmp_path / "clean")
        with torch.no_grad():
            model.logit_scale_t.fill_(147.0)
        model.save_pretrained(tmp_path / "broken")
    assert nandoctor.scan(tmp_path / "clean").exit_code == 0
    report = nandoctor.scan(tmp_path / "broken")
    assert [t.name for t in report.tensors if "exploded" in t.findings] == ["logit_scale_t"], verdict.one_line(report)
