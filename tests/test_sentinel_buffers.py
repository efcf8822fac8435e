"""Buffers that hold ±Inf or large values by design are no findings; the same values in weights still are.

A false-positive trial built healthy checkpoints with their own libraries, reloaded them, and nandoctor failed
them: a fresh Gemma4 with an audio tower (ClippableLinear's input_min = -Inf … output_max = +Inf buffers), a
torch.ao QAT checkpoint (observers' min_val = +Inf / max_val = -Inf for a module no batch reached), an old
GPT-J fp16 .bin (masked_bias = -1e9 is -Inf in fp16), RL observation normalisers (a float64 sample count of
1.3e7, a Welford sum), fp8 delayed-scaling state (57344 / amax), an NVFP4 global scale (448 * 6 / amax) and a
``best_val_loss = tensor(inf)`` beside the model. Each is built here with the real library where there is one.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import nandoctor  # noqa: E402
from nandoctor.verdict import one_line  # noqa: E402
from tests.conftest import run_cli  # noqa: E402


def _scan(path):
    report = nandoctor.scan(str(path), device="cpu")
    return report, {t.name: t for t in report.tensors}


def test_a_fresh_gemma4_with_an_audio_tower_is_clean_and_its_inf_bounds_are_said(tmp_path):
    transformers = pytest.importorskip("transformers")
    from transformers.models.gemma4 import configuration_gemma4 as C

    torch.manual_seed(0)
    text = C.Gemma4TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=8, vocab_size=256, global_head_dim=8,
                              hidden_size_per_layer_input=8, vocab_size_per_layer_input=256)
    audio = C.Gemma4AudioConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, output_proj_dims=32)
    vision = C.Gemma4VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=4, head_dim=8)
    model = transformers.Gemma4ForConditionalGeneration(C.Gemma4Config(text_config=text, audio_config=audio,
                                                                       vision_config=vision))
    model.save_pretrained(tmp_path / "g")
    state = model.state_dict()
    bounds = {k: v for k, v in state.items() if k.rsplit(".", 1)[1] in ("input_min", "input_max", "output_min", "output_max")}
    assert bounds and all(torch.isinf(v).all() for v in bounds.values())  # the library's own ±Inf defaults
    report, by_name = _scan(tmp_path / "g")
    assert report.exit_code == 0 and report.verdict == "CLEAN"
    assert sum(by_name[k].posinf + by_name[k].neginf for k in bounds) == sum(v.numel() for v in bounds.values())
    assert "in mask/bound buffers by design" in one_line(report, None)
    console = run_cli("scan", tmp_path / "g", "--no-progress").output
    assert "✓ CLEAN" in console and "finite and healthy" not in console  # ±Inf there: never "all finite"
    assert nandoctor.scan_module(model).exit_code == 0  # the live model too (a training callback's view)
    # the same ±Inf in a weight is still a finding
    weight = next(k for k in state if k.endswith("ffw_layer_1.linear.weight"))
    bad = dict(state)
    bad[weight] = state[weight].clone()
    bad[weight][0, 0] = float("inf")
    assert nandoctor.scan_state_dict(bad).exit_code == 1


def test_observers_of_a_qat_module_no_batch_reached_are_not_nonfinite(tmp_path):
    import torch.ao.quantization as tq

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
            self.fc1, self.fc2, self.aux_head = torch.nn.Linear(16, 32), torch.nn.Linear(32, 4), torch.nn.Linear(32, 4)

        def forward(self, x):
            return self.dequant(self.fc2(torch.relu(self.fc1(self.quant(x)))))  # aux_head: never reached

    torch.manual_seed(0)
    model = Net().train()
    model.qconfig = tq.get_default_qat_qconfig("fbgemm")
    model = tq.prepare_qat(model)
    model(torch.randn(8, 16)).sum().backward()
    path = tmp_path / "qat.pt"
    torch.save({"model": model.state_dict(), "epoch": 1}, path)
    loaded = torch.load(path, weights_only=True)["model"]
    sentinels = {k for k, v in loaded.items() if v.is_floating_point() and torch.isinf(v).any()}
    assert sentinels and all(k.endswith(("min_val", "max_val")) for k in sentinels)
    report, by_name = _scan(path)
    assert report.exit_code == 0 and all(by_name[f"model.{k}"].findings == () for k in sentinels)
    # a NaN in an observer is no sentinel: still a finding
    loaded[next(iter(sentinels))].fill_(float("nan"))
    torch.save({"model": loaded, "epoch": 1}, path)
    assert nandoctor.scan(str(path)).exit_code == 1


def test_an_fp16_gpt_j_masked_bias_of_minus_inf_is_a_mask(tmp_path):
    state = {"transformer.h.0.attn.masked_bias": torch.tensor(-1e9).half(),
             "transformer.h.0.attn.bias": torch.tril(torch.ones(1, 1, 8, 8, dtype=torch.bool)),
             "transformer.h.0.attn.q_proj.weight": torch.randn(8, 8).half()}
    assert torch.isinf(state["transformer.h.0.attn.masked_bias"])
    torch.save(state, tmp_path / "pytorch_model.bin")
    report, by_name = _scan(tmp_path / "pytorch_model.bin")
    assert report.exit_code == 0 and by_name["transformer.h.0.attn.masked_bias"].neginf == 1
    # fp32 -1e9 under a float16 target: what a cast makes of a mask value is no overflow risk either
    state["transformer.h.0.attn.masked_bias"] = torch.tensor(-1e9)
    torch.save(state, tmp_path / "pytorch_model.bin")
    assert nandoctor.scan(str(tmp_path / "pytorch_model.bin"), target_dtype="fp16").exit_code == 0
    # the same -Inf in a running statistic is damage
    torch.save({"bn.running_var": torch.tensor([1.0, float("inf")]), "bn.weight": torch.ones(2)}, tmp_path / "bn.pt")
    assert nandoctor.scan(str(tmp_path / "bn.pt")).exit_code == 1


def test_counters_running_sums_and_scales_are_not_exploded_weights(tmp_path):
    state = {
        "running_mean_std.running_mean": torch.zeros(8, dtype=torch.float64),
        "running_mean_std.running_var": torch.ones(8, dtype=torch.float64),
        "running_mean_std.count": torch.tensor(1.3e7, dtype=torch.float64),  # rl_games: samples seen
        "normalizer.running_variance": torch.full((8,), 2e6),  # ML-Agents: Welford's running sum
        "normalizer.normalization_steps": torch.tensor(2e6),
        "layers.0.fp8_amax_history_weight": torch.full((16,), 3.0),
        "layers.0.fp8_scale_grad_output": torch.tensor(5.7e8),  # 57344 / amax of the gradients
        "layers.0.weight_global_scale": torch.tensor([1.36e5]),  # NVFP4: 448 * 6 / amax(W)
        "layers.0.weight": torch.randn(8, 8),
    }
    torch.save({"model": state, "step": 400}, tmp_path / "run.pt")
    report, by_name = _scan(tmp_path / "run.pt")
    assert report.exit_code == 0, one_line(report, None)
    assert {by_name[f"model.{k}"].ref.role for k in state if k != "layers.0.weight"} == {"buffer"}
    # magnitude is still judged on the weights beside them
    state["layers.0.weight"] = torch.full((8, 8), 1e30)
    torch.save({"model": state, "step": 400}, tmp_path / "run.pt")
    assert nandoctor.scan(str(tmp_path / "run.pt")).exit_code == 1


def test_a_scalar_beside_the_model_is_trainer_state_but_not_in_a_plain_state_dict(tmp_path):
    model = {"weight": torch.randn(4, 4), "bias": torch.zeros(4)}
    torch.save({"model_state_dict": model, "best_val_loss": torch.tensor(float("inf"))}, tmp_path / "ckpt.pt")
    report, by_name = _scan(tmp_path / "ckpt.pt")
    assert report.exit_code == 0 and by_name["best_val_loss"].ref.role == "trainer"
    assert "in trainer state (best_val_loss)" in one_line(report, None)
    # a plain state dict has no model beside its tensors: a scalar there is a model's own (a temperature)
    torch.save({**model, "temperature": torch.tensor(float("inf"))}, tmp_path / "plain.pt")
    assert nandoctor.scan(str(tmp_path / "plain.pt")).exit_code == 1
    # nor a learned scalar saved as an nn.Parameter (a CLIP-like logit_scale kept beside the model's state)
    torch.save({"model_state_dict": model, "logit_scale": torch.nn.Parameter(torch.tensor(float("nan")))},
               tmp_path / "param.pt")
    assert nandoctor.scan(str(tmp_path / "param.pt")).exit_code == 1
    # nor a scalar among model weights spread at the top beside an optimizer (state_dict() holds plain tensors)
    flat = {"optimizer": {"state": {}, "param_groups": []}, **model, "logit_scale": torch.tensor(float("nan"))}
    torch.save(flat, tmp_path / "flat.pt")
    assert nandoctor.scan(str(tmp_path / "flat.pt")).exit_code == 1
    # nor is a tensor of more than one element beside the model
    torch.save({"model_state_dict": model, "codebook": torch.tensor([1.0, float("inf")])}, tmp_path / "two.pt")
    assert nandoctor.scan(str(tmp_path / "two.pt")).exit_code == 1
    assert run_cli("scan", tmp_path / "ckpt.pt", "--quiet").exit_code == 0
