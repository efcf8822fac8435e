"""``zeroed`` beyond siblings: a zero normalization gain, token embedding or LM head alone, and a tensor that an
earlier checkpoint of the run held not all zero (verdict._zeroed, checkpoint/runs.py's zeroed_since).

A new-user trial: zeroing ``lm_head.weight``, ``model.norm.weight`` or ``model.embed_tokens.weight`` of a real
Trainer checkpoint put its eval loss back at uniform (ln 96 = 4.56, from 0.17) and nandoctor reported nothing,
even with ``--fail-on zeroed``: the finding needed siblings in other layers. The oracle here is the model's eval
loss after ``from_pretrained``; the controls are real models whose zeros are by design (GPT-2's biases, a fresh
Gemma's ``1 + w`` norm gains, LoRA's ``lora_B``).
"""

from __future__ import annotations

import shutil

import pytest

from nandoctor.layers import zero_breaks

pytest.importorskip("transformers")

import nandoctor  # noqa: E402
from nandoctor import verdict  # noqa: E402
from tests.pattern_runs import UNIFORM_LOSS, eval_loss, pattern_run  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return pattern_run(tmp_path_factory.mktemp("zeroed"))  # a real Trainer run: checkpoint-10, -20, -30


def _zero(path, *names):
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    for name in names:
        tensors[name].zero_()
    save_file(tensors, path, metadata={"format": "pt"})


def _zeroed(report) -> list[str]:
    return sorted(t.name for t in report.tensors if "zeroed" in t.findings)


@pytest.mark.parametrize("name", ["lm_head.weight", "model.norm.weight", "model.embed_tokens.weight"])
def test_a_zeroed_head_norm_or_embedding_is_zeroed_on_its_own(trained, tmp_path, name):
    copy = tmp_path / "checkpoint-30"
    shutil.copytree(trained / "checkpoint-30", copy)
    assert eval_loss(copy) < 0.5
    _zero(copy / "model.safetensors", name)
    assert eval_loss(copy) == pytest.approx(UNIFORM_LOSS, abs=1e-3)  # the oracle: back at chance
    report = nandoctor.scan(str(copy), device="cpu")
    assert _zeroed(report) == [name]
    assert report.exit_code == 1 and report.verdict == "ZEROED"  # (the default gate fails it: the model is broken)
    assert verdict.exit_code(report, verdict.parse_fail_on("nonfinite,exploded,outlier")) == 0  # (left out: reported)
    assert f"1 tensor all zero ({name})" in verdict.one_line(report)
    from nandoctor.report.summary import next_steps

    said = f"{name} all zero: the model loads and generates, but its output no longer depends on the input tokens"
    assert next_steps(report)[0].startswith(said) == (name != "model.norm.weight")  # (a gain: Gemma's 1 + w works)


def test_a_whole_family_zeroed_in_a_run_is_zeroed_by_the_checkpoint_before_it(trained, tmp_path):
    """Every layer's up_proj zeroed in the newest checkpoint: no sibling is left to tell, no name says it must not
    be zero; checkpoint-20 held them not zero, so the run scan, and a scan of that checkpoint alone, say zeroed."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    family = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(3)]
    before = eval_loss(run / "checkpoint-30")
    _zero(run / "checkpoint-30" / "model.safetensors", *family)
    assert eval_loss(run / "checkpoint-30") > 1.5 * before  # the oracle: the model lost some of what it learned
    scanned = nandoctor.scan_run(str(run), device="cpu")
    newest = scanned.newest
    assert newest is not None and _zeroed(newest.report) == family
    assert verdict.run_context(newest.report)["zeroed_since"] == {"names": family, "checkpoint": "checkpoint-20"}
    assert [_zeroed(c.report) for c in scanned.checkpoints[:2]] == [[], []]
    alone = nandoctor.scan(str(run / "checkpoint-30"), device="cpu")
    assert _zeroed(alone) == family and "not all zero in checkpoint-20" in verdict.one_line(alone)
    assert nandoctor.scan(str(trained / "checkpoint-30"), device="cpu").verdict == "CLEAN"


def test_a_checkpoint_zeroed_since_an_earlier_one_is_no_resume_point(trained, tmp_path):
    """An adversarial round: checkpoint-20's model.norm.weight zeroed by a broken copy, checkpoint-30 poisoned; the run
    named checkpoint-20 "✓ healthy · last healthy" and told to resume from it, and it generated token 0 alone. Its
    all-zero weight that checkpoint-10 held is certain damage: the row reads ⚠ zeroed, the run's last healthy and
    --from auto's donor are checkpoint-10, and the line under the table says what to restore it with."""
    import json

    from tests.conftest import run_cli

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    _zero(run / "checkpoint-20" / "model.safetensors", "model.norm.weight")
    assert eval_loss(run / "checkpoint-20") == pytest.approx(UNIFORM_LOSS, abs=1e-3)  # the oracle: back at chance
    from safetensors.torch import load_file, save_file

    tensors = load_file(run / "checkpoint-30" / "model.safetensors")
    tensors["lm_head.weight"][0, 0] = float("nan")
    save_file(tensors, run / "checkpoint-30" / "model.safetensors", metadata={"format": "pt"})

    scanned = nandoctor.scan_run(str(run), device="cpu")
    assert [c.zeroed for c in scanned.checkpoints] == [(), ("model.norm.weight",), ()]
    assert scanned.last_healthy is not None and scanned.last_healthy.name == "checkpoint-10"
    out = run_cli("scan", run, "--no-progress").output
    row = next(line for line in out.splitlines() if "checkpoint-20" in line and "│" in line)
    assert "⚠ zeroed" in row, out
    assert "last healthy: checkpoint-10" in out and "resume from" in out and f"{run}/checkpoint-10" in " ".join(out.split())
    assert "zeroed: checkpoint-20: model.norm.weight all zero, not all zero in checkpoint-10" in out, out
    data = json.loads(run_cli("scan", run, "--json").output)
    assert data["run"]["last_healthy"] == "checkpoint-10"
    assert [c["zeroed"] for c in data["run"]["checkpoints"]] == [[], ["model.norm.weight"], []]
    assert [c["status_words"] for c in data["run"]["checkpoints"]] == ["clean", "zeroed", "poisoned"]
    # every report says it alike (a review: Markdown and HTML called it clean beside the console's ⚠ zeroed)
    markdown = run_cli("scan", run, "--markdown").output
    assert "| 20 | checkpoint-20 | zeroed |" in markdown, markdown
    run_cli("scan", run, "--html", tmp_path / "r.html")
    assert '>zeroed</span>' in (tmp_path / "r.html").read_text()
    # the hinted repair restores it from checkpoint-10, and the model is back
    fixed = nandoctor.repair(run / "checkpoint-20", "auto", run / "repaired-checkpoint-20")
    assert [r.name for r in fixed.plan.restorations] == ["model.norm.weight"] and fixed.ok
    assert eval_loss(run / "repaired-checkpoint-20") < 1.5
    # once done, the line says how to put it in place, not the same repair again into a "-2" folder (a review)
    again = " ".join(run_cli("scan", run, "--no-progress").output.split())
    assert "repaired-checkpoint-20 is a verified repair of checkpoint-20" in again and "-20-2" not in again, again


def test_zeros_by_design_stay_clean(tmp_path):
    """GPT-2's biases and LayerNorm biases start at zero, a fresh Gemma's norm gains too (it scales by 1 + w):
    saved by transformers itself, they are clean; so are zero LoRA B matrices (peft's names)."""
    import torch
    from safetensors.torch import save_file
    from transformers import GemmaConfig, GemmaForCausalLM, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    gemma = GemmaForCausalLM(GemmaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=8))
    assert all(not p.detach().any() for n, p in gemma.named_parameters() if "norm" in n)
    for name, model in (("gpt2", gpt2), ("gemma", gemma)):
        model.save_pretrained(tmp_path / name)
        report = nandoctor.scan(str(tmp_path / name), device="cpu")
        zeros = [t.name for t in report.tensors if t.max_abs == 0.0]
        assert zeros and report.verdict == "CLEAN", (name, zeros[:3], _zeroed(report))
    # Qwen3-Next: its (1 + w) gains start at zero while the gated linear_attn.norm starts at one
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("qwen3_next")
    for key, value in dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=128, head_dim=8, moe_intermediate_size=32,
                           shared_expert_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                           linear_num_key_heads=2, linear_num_value_heads=2, linear_key_head_dim=8,
                           linear_value_head_dim=8).items():
        setattr(config, key, value)
    config.layer_types = ["linear_attention", "linear_attention", "linear_attention", "full_attention"]
    qwen3_next = AutoModelForCausalLM.from_config(config)
    gains = {n: bool(p.detach().any()) for n, p in qwen3_next.named_parameters() if n.endswith("norm.weight")}
    assert not gains["model.norm.weight"] and gains["model.layers.0.linear_attn.norm.weight"]
    qwen3_next.save_pretrained(tmp_path / "qwen3_next")
    report = nandoctor.scan(str(tmp_path / "qwen3_next"), device="cpu")
    assert report.verdict == "CLEAN", _zeroed(report)
    # ... while a model whose gains all start at one, its final norm zeroed, is zeroed
    for name, p in qwen3_next.named_parameters():
        if name.endswith("norm.weight"):
            p.data.fill_(1.0)
    qwen3_next.model.norm.weight.data.zero_()
    qwen3_next.save_pretrained(tmp_path / "plain_gains")
    assert _zeroed(nandoctor.scan(str(tmp_path / "plain_gains"), device="cpu")) == ["model.norm.weight"]
    lora = {}
    for i in range(2):
        prefix = f"base_model.model.model.layers.{i}.self_attn.q_proj"
        lora[f"{prefix}.lora_A.weight"] = torch.randn(4, 32)
        lora[f"{prefix}.lora_B.weight"] = torch.zeros(32, 4)
    lora["base_model.model.lm_head.lora_A.weight"] = torch.randn(4, 32)
    lora["base_model.model.lm_head.lora_B.weight"] = torch.zeros(96, 4)
    lora["base_model.model.model.embed_tokens.lora_embedding_B"] = torch.zeros(32, 4)
    save_file(lora, tmp_path / "adapter_model.safetensors")
    assert nandoctor.scan(str(tmp_path / "adapter_model.safetensors"), device="cpu").verdict == "CLEAN"


@pytest.mark.parametrize(("name", "ndim", "kind"), [
    ("model.layers.0.input_layernorm.weight", 1, "norm"),
    ("transformer.ln_f.weight", 1, "norm"),
    ("bert.embeddings.LayerNorm.weight", 1, "norm"),
    ("output_norm.weight", 1, "norm"),  # GGUF
    ("transformer.wte.weight", 2, "token matrix"),
    ("token_embd.weight", 2, "token matrix"),
    ("output.weight", 2, "token matrix"),
    ("base_model.model.lm_head.base_layer.weight", 2, "token matrix"),
    ("model.norm.bias", 1, None),
    ("base_model.model.lm_head.lora_B.weight", 2, None),
    ("transformer_blocks.0.norm1.linear.weight", 2, None),  # adaLN-Zero modulation: zero at init
    ("layer1.0.bn3.weight", 1, None),  # ResNet's zero-init residual BatchNorm
    ("encoder.layer.0.attention.output.dense.weight", 2, None),
])
def test_which_names_may_not_be_zero(name, ndim, kind):
    assert zero_breaks(name, ndim) == kind



def test_numbered_entries_of_a_sequential_are_not_siblings_unless_they_match(tmp_path):
    """A false-positive trial: a fresh HF Encodec reported ``decoder.layers.3.conv.bias`` zeroed, because the
    numbered entries of an ``nn.Sequential`` (a conv, an activation, another conv of other channels) were taken
    for repeated layers. Siblings now share a shape too; repeated layers' zeroed weight is still found."""
    import torch

    torch.manual_seed(0)
    decoder = torch.nn.Sequential(torch.nn.Conv1d(4, 8, 3), torch.nn.ELU(), torch.nn.Conv1d(8, 8, 3),
                                  torch.nn.Conv1d(8, 1, 3))
    torch.nn.init.zeros_(decoder[3].bias)  # the zero-initialised last layer of a fresh model
    model = torch.nn.Module()
    model.decoder = decoder
    fresh = nandoctor.scan_module(model)
    assert not verdict.with_finding(fresh, verdict.ZEROED)
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(3))
    with torch.no_grad():
        model.layers[1].weight.zero_()
    damaged = nandoctor.scan_module(model)
    assert [t.name for t in verdict.with_finding(damaged, verdict.ZEROED)] == ["layers.1.weight"]


def test_a_nan_among_zeros_makes_its_zero_siblings_no_damage(tmp_path):
    """A reports trial: GPT-2's c_attn biases all start at zero; one NaN in layer 0's made the untouched biases of
    the other layers ``zeroed`` (their only sibling not all zero was the poisoned one, whose finite values are all
    zero). The NaN is the finding; zeros beside it are evidence of nothing."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=96, n_embd=32, n_layer=3, n_head=4, n_positions=64)).save_pretrained(folder)
    tensors = load_file(folder / "model.safetensors")
    assert all(not tensors[f"transformer.h.{i}.attn.c_attn.bias"].any() for i in range(3))
    tensors["transformer.h.0.attn.c_attn.bias"][5] = float("nan")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    report = nandoctor.scan(str(folder), device="cpu")
    assert report.verdict == "NON-FINITE" and report.exit_code == 1
    assert not _zeroed(report)
    # (a bias is judged by no sibling at all: one with a real value beside a zero one is a layer no gradient reached,
    # a false-alarm hunt's LLaVA, once zeroed failed the gate)
    tensors["transformer.h.1.attn.c_attn.bias"][7] = 0.5
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    assert _zeroed(nandoctor.scan(str(folder), device="cpu")) == []


@pytest.mark.parametrize("how", ["tiny", "all_but_one"])
def test_a_weight_as_good_as_zero_is_zeroed_too(trained, tmp_path, how):
    """An adversarial round: the LM head filled with 1e-45, or zeroed but for one element, got round the all-zero rule:
    ✓ healthy, last healthy, PASS CLEAN, and the model repeated one token. As good as zero is zeroed."""
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    path = run / "checkpoint-30" / "model.safetensors"
    tensors = load_file(path)
    head = tensors["lm_head.weight"]
    if how == "tiny":
        head.fill_(1e-45)
    else:
        kept = float(head[3, 5])
        head.zero_()
        head[3, 5] = kept
    save_file(tensors, path, metadata={"format": "pt"})
    assert eval_loss(run / "checkpoint-30") == pytest.approx(UNIFORM_LOSS, abs=0.05)  # the oracle: back at chance
    scanned = nandoctor.scan_run(str(run), device="cpu")
    assert scanned.checkpoints[-1].zeroed == ("lm_head.weight",)
    assert scanned.last_healthy is not None and scanned.last_healthy.name == "checkpoint-20"
    alone = nandoctor.scan(str(run / "checkpoint-30"), device="cpu")
    assert _zeroed(alone) == ["lm_head.weight"] and alone.verdict == "ZEROED" and alone.exit_code == 1


def test_a_tensor_zero_only_at_the_sampled_lanes_is_not_zeroed(tmp_path):
    """A review: an LM head 99.6 % non-zero, zero exactly at the lanes the census samples (the first 64 of each 64 KiB
    segment), read "all zero" (its sampled largest magnitude 0 taken as tiny), and repair planned to overwrite it."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    head = (rng.standard_normal((1024, 4096)) * 0.02).astype(np.float32)
    flat = head.reshape(-1)
    for start in range(0, flat.size, 16384):
        flat[start:start + 64] = 0
    path = tmp_path / "model.safetensors"
    save_file({"lm_head.weight": head, "model.norm.weight": np.ones(4096, np.float32)}, str(path))
    report = nandoctor.scan(str(path), device="cpu")
    assert not _zeroed(report) and report.verdict == "CLEAN", report.verdict


def test_a_run_zeroed_from_its_first_save_has_no_healthy_checkpoint(trained, tmp_path):
    """A real-training trial: a run whose LM head was zeroed in every save (a dead run) read ✓ healthy on every row,
    "last healthy: checkpoint-40 · first bad: none", and its next step was a repair --from auto that finds no donor.
    Every row is zeroed now, none a resume point; the first is the first bad; the repair named takes the base model."""
    from nandoctor.report.run_report import next_steps, one_line

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    for step in (10, 20, 30):
        _zero(run / f"checkpoint-{step}" / "model.safetensors", "lm_head.weight")
    scanned = nandoctor.scan_run(str(run), device="cpu")
    assert scanned.exit_code() == 1 and scanned.last_healthy is None
    assert scanned.first_bad is not None and scanned.first_bad.name == "checkpoint-10"
    assert "last healthy: none · first bad: checkpoint-10" in one_line(scanned)
    steps = " ".join(next_steps(scanned))
    assert "--from auto" not in steps and "the base model" in steps, steps
