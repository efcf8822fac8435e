"""PEFT LoRA adapters whose ranks adapter_config.json contradicts (checkpoint/adapters.py), held to the real peft:
an adapter saved by PEFT, and one with a rank_pattern, scan CLEAN and load; the same tensors under a config whose
r (or rank_pattern) says another rank are NOT LOADABLE, as PeftModel.from_pretrained refuses them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import nandoctor

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
pytest.importorskip("transformers")
from tests.conftest import run_cli  # noqa: E402
from tests.trainer_checkpoints import tiny_llama  # noqa: E402  (needs torch and transformers)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("base") / "model"
    tiny_llama().save_pretrained(folder)
    return folder


def _adapter(base: Path, folder: Path, **lora) -> Path:
    from transformers import AutoModelForCausalLM

    lora = {"target_modules": ["q_proj", "v_proj"], **lora}
    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(base), peft.LoraConfig(task_type="CAUSAL_LM", **lora))
    model.save_pretrained(folder)
    return folder


def _loads(base: Path, adapter: Path) -> bool:
    from transformers import AutoModelForCausalLM

    try:
        model = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    except RuntimeError as exc:
        assert "size mismatch" in str(exc)
        return False
    ids = torch.tensor([[1, 5, 9]])
    assert torch.isfinite(model(input_ids=ids).logits).all()
    return True


def _edit(folder: Path, **values) -> None:
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


@pytest.mark.parametrize("lora, edit, said", [
    ({"r": 8}, {"r": 16}, "has rank 8, adapter_config.json gives its module 16"),
    ({"r": 8}, {"r": 4}, "has rank 8, adapter_config.json gives its module 4"),
    ({"r": 8, "rank_pattern": {"v_proj": 4}}, {"rank_pattern": {}}, "v_proj.lora_A.weight has rank 4, adapter_config.json gives its module 8"),
    ({"r": 8, "rank_pattern": {"v_proj": 4}}, {"rank_pattern": {"v_proj": 2}}, "has rank 4, adapter_config.json gives its module 2"),
])
def test_an_adapter_whose_config_says_another_rank_is_not_loadable(base, tmp_path, lora, edit, said):
    adapter = _adapter(base, tmp_path / "adapter", **lora)
    assert _loads(base, adapter) and nandoctor.scan(adapter).exit_code == 0
    edited = shutil.copytree(adapter, tmp_path / "edited")
    _edit(edited, **edit)
    assert not _loads(base, edited)
    report = nandoctor.scan(edited)
    assert report.exit_code == 3 and [e.kind for e in report.errors] == ["unloadable"], report.errors
    assert said in report.errors[0].message and "PEFT" in report.errors[0].message


@pytest.mark.parametrize("change, said", [
    # ZeRO-3 saving without gathering: every LoRA tensor torch.Size([0]) (a well-known failure of real runs)
    (lambda name, t: torch.empty(0), "weight(s) stored empty"),
    (lambda name, t: torch.empty(0) if name.endswith("layers.0.self_attn.v_proj.lora_B.weight") else t,
     "1 weight(s) stored empty"),
    (lambda name, t: t.t().contiguous() if ".lora_B." in name else t, "q_proj.lora_B.weight has rank 16, adapter_config.json gives its module 8"),  # B transposed
])
def test_an_adapter_stored_empty_or_transposed_is_not_loadable(base, tmp_path, change, said):
    """A trial: all three CLEAN, while PeftModel.from_pretrained refuses them ("size mismatch")."""
    from safetensors.torch import load_file, save_file

    adapter = _adapter(base, tmp_path / "adapter", r=8)
    path = adapter / "adapter_model.safetensors"
    save_file({name: change(name, t).contiguous() for name, t in load_file(path).items()}, path)
    assert not _loads(base, adapter)  # the oracle
    report = nandoctor.scan(adapter)
    assert report.exit_code == 3 and [e.kind for e in report.errors] == ["unloadable"], report.errors
    assert said in report.errors[0].message and "PEFT" in report.errors[0].message


@pytest.mark.parametrize("edit, kind, said", [
    ({"target_modules": ["k_proj"]}, "unloadable", "match none of the modules the stored LoRA weights belong to"),
    ({"target_modules": ["q_proj"]}, "unloadable", "match 2 of the 4 modules the stored LoRA weights belong to"),
    ({"target_modules": r".*\.k_proj"}, "unloadable", "match none of the modules"),
    ({"lora_alpha": 0}, "config", "its lora_alpha is 0"),
])
def test_an_adapter_config_that_drops_the_stored_adapter_is_not_this_adapter(base, tmp_path, edit, kind, said):
    """A trial: target_modules edited to modules the weights do not belong to; PEFT loads without an error and drops
    every stored tensor: the logits are the bare base model's exactly. lora_alpha 0 scales every update to nothing."""
    from transformers import AutoModelForCausalLM

    adapter = _adapter(base, tmp_path / "adapter", r=4, init_lora_weights=False)  # (B not zero: a trained adapter)
    ids = torch.tensor([[1, 5, 9]])

    def logits() -> torch.Tensor:
        return peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)(input_ids=ids).logits

    trained = logits()
    _edit(adapter, **edit, init_lora_weights=True)  # (what PEFT makes of modules it adds: zero updates)
    bare = AutoModelForCausalLM.from_pretrained(base)(input_ids=ids).logits
    adapted = logits()  # the oracle: it loads, and is not the trained adapter
    assert not torch.allclose(adapted, trained, atol=1e-4)
    if "2 of the 4" not in said:
        assert torch.equal(adapted, bare)  # (the stored adapter is gone altogether)
    report = nandoctor.scan(adapter)
    assert report.exit_code == 3 and [e.kind for e in report.errors] == [kind], report.errors
    assert said in report.errors[0].message


def test_an_adapter_config_whose_r_is_not_positive_is_bad_config(base, tmp_path):
    adapter = _adapter(base, tmp_path / "adapter", r=4)
    _edit(adapter, r=0)
    with pytest.raises(ValueError):  # the oracle: PEFT refuses the config
        _loads(base, adapter)
    report = nandoctor.scan(adapter)
    assert report.exit_code == 3 and [e.kind for e in report.errors] == ["config"]
    assert "its r is 0: PEFT needs a positive integer" in report.errors[0].message


def test_an_adapter_config_of_a_type_peft_does_not_know_is_bad_config(base, tmp_path, monkeypatch):
    """An adversarial round: peft_type "LORAX" (PEFT raises KeyError as it loads) read CLEAN. A type outside the list
    nandoctor keeps is asked of the installed PEFT: one it knows stays clean."""
    from nandoctor.checkpoint import adapters

    adapter = _adapter(base, tmp_path / "adapter", r=4)
    _edit(adapter, peft_type="LORAX")
    with pytest.raises(KeyError):  # the oracle
        _loads(base, adapter)
    report = nandoctor.scan(adapter)
    assert report.exit_code == 3 and [e.kind for e in report.errors] == ["config"], report.errors
    assert 'its peft_type is "LORAX", which PEFT does not know' in report.errors[0].message
    _edit(adapter, peft_type="LORA")
    monkeypatch.setattr(adapters, "_PEFT_TYPES", frozenset())  # (as if a newer PEFT's type: the installed one says)
    assert nandoctor.scan(adapter).exit_code == 0


@pytest.mark.parametrize("alpha, use_rslora, nan", [(1e40, False, True), (1e39, True, True), (1e30, False, False)])
def test_an_adapter_alpha_that_scales_updates_past_float32_is_bad_config(base, tmp_path, alpha, use_rslora, nan):
    """An adversarial round: lora_alpha 1e40 (finite JSON) with r 4: PEFT scales every update by 2.5e39, beyond
    float32: Inf activations, NaN logits, and generate raises; the adapter read CLEAN. A scale within float32 is
    left alone (its logits stay finite here)."""
    message = _scaled_adapter_judged(base, tmp_path, nan, lora_alpha=alpha, use_rslora=use_rslora)
    assert message is None or "beyond float32's largest value" in message


def _scaled_adapter_judged(base, tmp_path, nan: bool, **config) -> str | None:
    """An adapter with ``config`` edited into its adapter_config.json: the oracle (PEFT's logits) finite unless ``nan``,
    and the scan CLEAN then, else BAD CONFIG; the first problem's message (None when CLEAN)."""
    from transformers import AutoModelForCausalLM

    adapter = _adapter(base, tmp_path / "adapter", r=4, init_lora_weights=False)
    _edit(adapter, **config)
    model = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    with torch.no_grad():
        finite = bool(torch.isfinite(model(input_ids=torch.tensor([[1, 5, 9]])).logits).all())
    assert finite is not nan  # the oracle
    report = nandoctor.scan(adapter)
    if not nan:
        assert not report.errors, report.errors
        return None
    assert report.exit_code == 3 and [e.kind for e in report.errors] == ["config"]
    return report.errors[0].message


@pytest.mark.parametrize("pattern, nan", [({"v_proj": 1e40}, True), ({"not_a_module": 1e40}, False),
                                          ({"v_proj": 16}, False),
                                          # (PEFT takes the first key that matches: a review's false BAD CONFIG)
                                          ({"v_proj": 16, "layers.0.self_attn.v_proj": 1e40}, False)])
def test_an_alpha_pattern_that_scales_a_module_past_float32_is_bad_config(base, tmp_path, pattern, nan):
    """An adversarial round: alpha_pattern {"v_proj": 1e40} (lora_alpha 8 elsewhere) read CLEAN; the v_proj updates
    are Inf, the logits NaN. A pattern that names no stored module, or a sane alpha, is left alone."""
    message = _scaled_adapter_judged(base, tmp_path, nan, alpha_pattern=pattern)
    assert message is None or ("its alpha_pattern scales the LoRA update of" in message and "v_proj" in message)


def test_an_alpha_pattern_key_that_backtracks_for_minutes_is_not_tried(base, tmp_path):
    """A review: alpha_pattern {"(.*)*(.*)*(.*)*Z": 1e40} kept the scan matching for minutes (rank_pattern's guard
    against such keys was not applied to it); both go through one lookup now."""
    import time

    adapter = _adapter(base, tmp_path / "adapter", r=4, init_lora_weights=False)
    _edit(adapter, alpha_pattern={"(.*)*(.*)*(.*)*Z": 1e40})
    started = time.perf_counter()
    report = nandoctor.scan(adapter)
    assert time.perf_counter() - started < 30 and not report.errors


def _bdlora() -> list[dict]:
    """BD-LoRA (peft 0.21): its block-diagonal lora_B holds rank / blocks columns (a review: NOT LOADABLE)."""
    try:
        from peft.tuners.lora.config import BdLoraConfig
    except ImportError:
        return []
    return [{"r": 8, "target_modules": ["q_proj", "o_proj"], "init_lora_weights": False,
             "use_bdlora": BdLoraConfig(target_modules_bd_a=["o_proj"], target_modules_bd_b=["q_proj"], nblocks=2)}]


def test_adapters_peft_loads_stay_clean(base, tmp_path):
    for i, lora in enumerate([{"r": 4}, {"r": 8, "rank_pattern": {"model.layers.1.self_attn.q_proj": 2}},
                              {"r": 4, "target_modules": r".*\.(q_proj|v_proj)"},
                              {"r": 8, "rank_pattern": {r"layers\.\d+\.self_attn\.v_proj": 16}},
                              {"r": 4, "use_dora": True}, *_bdlora(),
                              # (an alpha_pattern gives every module its alpha; DoRA's magnitudes act whatever alpha is)
                              {"r": 4, "lora_alpha": 0, "alpha_pattern": {"q_proj": 8, "v_proj": 8},
                               "init_lora_weights": False},
                              {"r": 4, "lora_alpha": 0, "use_dora": True, "init_lora_weights": False}]):
        adapter = _adapter(base, tmp_path / f"a{i}", **lora)
        assert _loads(base, adapter), lora
        report = nandoctor.scan(adapter)
        assert report.exit_code == 0 and not report.errors, (lora, report.errors)


def test_lora_on_a_moes_fused_expert_parameters_and_on_a_grouped_convolution(tmp_path):
    """PEFT's target_parameters (a MoE's fused experts) stores the rank once per expert, and a grouped
    convolution's lora_B holds rank / groups columns: both load, and were NOT LOADABLE; an r edited on such an
    adapter is still caught on its ordinary modules."""
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2,
                           max_position_embeddings=32, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    MixtralForCausalLM(config).save_pretrained(tmp_path / "base")
    lora = peft.LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM",
                           target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])
    peft.get_peft_model(MixtralForCausalLM.from_pretrained(tmp_path / "base"), lora).save_pretrained(tmp_path / "moe")
    assert _loads(tmp_path / "base", tmp_path / "moe")
    assert nandoctor.scan(tmp_path / "moe").exit_code == 0
    edited = shutil.copytree(tmp_path / "moe", tmp_path / "edited")
    _edit(edited, r=2)
    assert not _loads(tmp_path / "base", edited)
    report = nandoctor.scan(edited)
    assert report.exit_code == 3 and "q_proj.lora_A.weight has rank 4" in report.errors[0].message

    class Convs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(8, 16, 3, groups=2)

        def forward(self, x):
            return self.conv(x)

    grouped = peft.get_peft_model(Convs(), peft.LoraConfig(r=8, target_modules=["conv"]))
    grouped.save_pretrained(tmp_path / "conv")
    again = peft.PeftModel.from_pretrained(Convs(), tmp_path / "conv")
    assert torch.isfinite(again(torch.randn(1, 8, 6, 6))).all()
    assert nandoctor.scan(tmp_path / "conv").exit_code == 0


@pytest.mark.parametrize("values", [{"lora_alpha": float("nan")}, {"lora_alpha": float("inf")},
                                    {"alpha_pattern": {"q_proj": float("inf")}}])
def test_nan_or_infinity_in_adapter_config_is_bad_config(base, tmp_path, values):
    """A sweep script's lora_alpha of NaN/Infinity (JSON round-trips it): PEFT scales every update by it and
    generate dies on NaN probabilities; it scanned CLEAN."""
    from transformers import AutoModelForCausalLM

    adapter = _adapter(base, tmp_path / "adapter", r=4)
    _edit(adapter, **values)
    model = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, attn_implementation="eager"), adapter)
    assert not torch.isfinite(model(input_ids=torch.tensor([[1, 5, 9]])).logits).all()
    report = nandoctor.scan(adapter)
    assert report.exit_code == 3 and [e.kind for e in report.errors] == ["config"], report.errors
    assert "adapter_config.json" in report.errors[0].path and next(iter(values)) in report.errors[0].message


def test_an_adapter_scan_names_the_base_model_it_does_not_read(base, tmp_path, monkeypatch):
    """A trial: NaN in the base model fails generate of the adapted model while the adapter scans CLEAN. A base named
    by a repo id in no local cache is never downloaded: the scan says which base adapter_config.json names, and how to
    scan it; a local base is scanned with it (tests/test_adapter_base_scan.py)."""
    adapter = _adapter(base, tmp_path / "adapter", r=4)
    named = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert named == str(base)
    assert f"its base model {str(base)!r} scanned too: 21 tensors healthy" in run_cli("scan", adapter, "-q").output
    _edit(adapter, base_model_name_or_path="someone/tiny-llama")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    report = nandoctor.scan(adapter)
    assert report.exit_code == 0
    assert any("base model 'someone/tiny-llama'" in note and "nandoctor scan" in note for note in report.notes), report.notes
    # said on the one line too (a trial: `scan --quiet && serve` dropped the note and passed an adapter on a NaN base)
    quiet = run_cli("scan", adapter, "-q")
    assert quiet.exit_code == 0 and "an adapter alone: its base model 'someone/tiny-llama' is not scanned here" in quiet.output
    assert nandoctor.to_json(report)["adapter_base"] == "someone/tiny-llama"


def test_lora_on_a_transformers_5_moe_with_all_linear_and_on_multihead_attention_stays_clean(tmp_path):
    """A false-alarm hunt: peft 0.21 rewrites an all-linear config of a transformers 5 MoE into bare
    target_parameters (['down_proj', 'gate_up_proj', …]) whose module only the model knows, storing the rank once
    per expert; LoRA on an nn.MultiheadAttention stores its out_proj's under `mha.base_layer.out_proj`. Both were
    NOT LOADABLE; PEFT reloads both to the trained model's logits."""
    import transformers

    torch.manual_seed(0)
    moe = transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, moe_intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, head_dim=8))
    moe.save_pretrained(tmp_path / "base")
    adapted = peft.get_peft_model(moe, peft.LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    adapted.save_pretrained(tmp_path / "moe-adapter")
    saved = json.loads((tmp_path / "moe-adapter" / "adapter_config.json").read_text())
    report = nandoctor.scan(tmp_path / "moe-adapter")
    assert report.exit_code == 0 and not report.errors, (saved.get("target_parameters"), report.errors)

    class Attending(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = torch.nn.MultiheadAttention(16, 2, batch_first=True)

    attending = peft.get_peft_model(Attending(), peft.LoraConfig(r=4, target_modules=["mha"]))
    attending.save_pretrained(tmp_path / "mha-adapter")
    stored = set(json.loads((tmp_path / "mha-adapter" / "adapter_config.json").read_text())["target_modules"])
    assert stored == {"mha"}
    report = nandoctor.scan(tmp_path / "mha-adapter")
    assert report.exit_code == 0 and not report.errors, report.errors
