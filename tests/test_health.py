"""The health census on real bytes: planted exploded values, outliers and zeroed tensors, exact counts,
in every float dtype, large (chunked) and small (batched) tensors; and no finding on real weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures.builders import RawTensor, finite_bits, write_safetensors
from nandoctor.engine import scan

DEMO_RUN = Path(__file__).resolve().parent.parent / "fixtures" / "demo-run"
LEGACY = Path(__file__).resolve().parent / "data" / "legacy" / "lpips-v0.1-alex.pth"
BIG = 3 << 20  # elements: several 4 MiB chunks for every dtype below
SMALL = 4096

# A value that is exploded (above 1e5; fp16: above 2^14) and, among weights of ~0.02, an outlier, as each dtype's bits.
HUGE = {"F32": np.float32(3e30).view(np.uint32), "F64": np.float64(3e30).view(np.uint64),
        "F16": np.float16(6e4).view(np.uint16), "BF16": np.uint16(0x7182)}  # bf16 0x7182 ~ 1.3e30
NP = {"F32": np.uint32, "F64": np.uint64, "F16": np.uint16, "BF16": np.uint16}
_FLOAT = {"F32": np.float32, "F64": np.float64, "F16": np.float16}
PLANTED_VALUE = {"F32": 3e30, "F64": 3e30, "F16": float(np.float16(6e4)),
                 "BF16": float(np.array([0x71820000], np.uint32).view(np.float32)[0])}


def _tensor(dtype: str, n: int, seed: int, planted: dict[int, int] | None = None) -> RawTensor:
    bits = finite_bits(dtype, n, np.random.default_rng(seed)).astype(NP[dtype])
    for index, value in (planted or {}).items():
        bits[index] = value
    return RawTensor(dtype, (n,), bits.tobytes())


@pytest.mark.parametrize("dtype", ["F32", "F64", "F16", "BF16"])
@pytest.mark.parametrize("n", [BIG, SMALL])
def test_planted_spikes_are_outliers_with_exact_counts_and_coordinates(tmp_path, dtype, n):
    """Spikes below the ceiling are outliers; above it they are exploded, and only that: one bad value is one
    finding (a review: one 1e30 read EXPLODED + OUTLIERS, on two rows of the layer table)."""
    positions = [n // 3, n // 3 + 7, n - 5]
    spike = int(np.array([100.0]).astype(_FLOAT[dtype]).view(NP[dtype])[0]) if dtype != "BF16" else 0x42C8  # 100.0
    write_safetensors(tmp_path / "m.safetensors", {
        "model.layers.0.mlp.down_proj.weight": _tensor(dtype, n, 1, {p: spike for p in positions}),
        "model.layers.1.mlp.down_proj.weight": _tensor(dtype, n, 2),
        "model.layers.2.mlp.down_proj.weight": _tensor(dtype, n, 4, {p: int(HUGE[dtype]) for p in positions}),
        # both in one tensor: each value counted once, where it belongs
        "model.layers.3.mlp.down_proj.weight": _tensor(dtype, n, 5, {positions[0]: spike, positions[2]: int(HUGE[dtype])}),
    })
    report = scan(tmp_path / "m.safetensors", device="cpu")
    spiked, good, huge, both = report.tensors
    assert spiked.outliers is not None and spiked.outliers.count == 3 and spiked.outliers.first == positions[0]
    assert spiked.findings == ("outlier",) and spiked.exploded == 0 and spiked.max_abs == pytest.approx(100.0)
    assert spiked.outliers.worst == pytest.approx(100.0)
    # fp16's ceiling is 2^14 (1e5 is above anything fp16 holds): its 6e4 spikes are exploded
    assert huge.exploded == 3 and huge.findings == ("exploded",) and huge.outliers is None
    assert huge.first_bad == positions[0]  # (located all the same: where the first bad element is)
    assert huge.max_abs == pytest.approx(PLANTED_VALUE[dtype])
    assert both.findings == ("exploded", "outlier") and both.exploded == 1 and both.outliers.count == 1
    assert both.outliers.first == positions[0]
    assert good.findings == () and good.outliers is None and good.exploded == 0
    assert report.exit_code == 1 and report.health == "poisoned"


@pytest.mark.parametrize("n", [BIG, SMALL])
def test_a_zeroed_tensor_fails_the_default_gate_and_is_reported_where_fail_on_leaves_it_out(tmp_path, n):
    """A weight all zero beside siblings that are not breaks the model (a review: the gate passed a model whose
    every output was token 0): the default gate fails it; a --fail-on without zeroed reports it."""
    write_safetensors(tmp_path / "m.safetensors", {
        "model.layers.0.self_attn.q_proj.weight": RawTensor("BF16", (n,), bytes(2 * n)),
        "model.layers.1.self_attn.q_proj.weight": _tensor("BF16", n, 3),
        "lm_head.bias": RawTensor("BF16", (8,), bytes(16)),  # no sibling: not judged
    })
    report = scan(tmp_path / "m.safetensors", device="cpu")
    zero, other, bias = report.tensors
    assert zero.findings == ("zeroed",) and zero.zeros == n and zero.max_abs == 0.0
    assert other.findings == () and bias.findings == ()
    assert report.exit_code == 1 and "zeroed" in report.judgement.failing
    from nandoctor import verdict

    assert verdict.exit_code(report, verdict.parse_fail_on("zeroed")) == 1
    assert verdict.exit_code(report, verdict.parse_fail_on("nonfinite,exploded")) == 0


def test_biases_and_lora_tensors_left_at_zero_in_one_layer_are_not_zeroed(tmp_path):
    """A false-alarm hunt, once zeroed failed the gate: a layer no gradient reaches keeps what starts at zero while the
    other layers' train (LLaVA's unused last vision layer under an all-linear LoRA: its lora_B; trained whole: its
    biases). Biases and LoRA tensors are no siblings; a weight matrix zeroed among trained siblings still is damage."""
    tensors = {}
    for layer in range(4):
        trained = layer != 3
        prefix = f"base_model.model.model.layers.{layer}.mlp.fc1"
        tensors[f"{prefix}.lora_A.weight"] = _tensor("F32", 64, 10 + layer)
        tensors[f"{prefix}.lora_B.weight"] = _tensor("F32", 64, 20 + layer) if trained else RawTensor("F32", (64,), bytes(256))
        tensors[f"model.layers.{layer}.norm.bias"] = _tensor("F32", 64, 30 + layer) if trained else RawTensor("F32", (64,), bytes(256))
        tensors[f"model.layers.{layer}.mlp.fc2.weight"] = _tensor("F32", 64, 40 + layer)
    write_safetensors(tmp_path / "m.safetensors", tensors)
    report = scan(tmp_path / "m.safetensors", device="cpu")
    assert report.exit_code == 0 and not any("zeroed" in t.findings for t in report.tensors), report.verdict
    tensors["model.layers.3.mlp.fc2.weight"] = RawTensor("F32", (64,), bytes(256))  # (a weight: judged by its siblings)
    write_safetensors(tmp_path / "m.safetensors", tensors)
    zeroed = scan(tmp_path / "m.safetensors", device="cpu")
    assert [t.name for t in zeroed.tensors if "zeroed" in t.findings] == ["model.layers.3.mlp.fc2.weight"]


def test_a_super_weight_is_not_an_outlier(tmp_path):
    bits = np.random.default_rng(5).standard_normal(BIG).astype(np.float32) * 0.02
    bits[1234] = 0.02 * 120  # ~100x the tensor's std, as LLaMA's super weights
    write_safetensors(tmp_path / "m.safetensors", {"model.layers.2.mlp.down_proj.weight":
                                                   RawTensor("F32", (BIG,), bits.tobytes())})
    report = scan(tmp_path / "m.safetensors", device="cpu")
    assert report.tensors[0].findings == () and report.ok


@pytest.mark.parametrize("path", [DEMO_RUN / "checkpoint-200", LEGACY])
def test_real_and_shipped_clean_weights_trip_no_finding(path):
    report = scan(path, device="cpu")
    assert report.ok and report.health == "healthy"
    assert all(t.findings == () for t in report.tensors), [t.name for t in report.tensors if t.findings]


@pytest.mark.parametrize("dtype, torch_name, spike", [("F8_E4M3", "float8_e4m3fn", 448.0), ("F8_E5M2", "float8_e5m2", 57344.0)])
@pytest.mark.parametrize("n", [BIG, SMALL])
def test_fp8_spikes_are_outliers_and_their_bulk_is_not(tmp_path, dtype, torch_name, spike, n):
    """fp8 weights (bits made by torch's own cast): the dtype's largest finite value among weights of
    ~0.02 is an outlier (fp8 cannot reach the 1e5 ceiling, so never "exploded"); its siblings are clean."""
    torch = pytest.importorskip("torch")
    fp8 = getattr(torch, torch_name)
    generator = torch.Generator().manual_seed(7)

    def weights(planted: list[int]) -> RawTensor:
        values = torch.randn(n, generator=generator) * 0.02
        values[planted] = spike
        return RawTensor(dtype, (n,), values.to(fp8).view(torch.uint8).numpy().tobytes())

    positions = [5, n // 2, n - 1]
    write_safetensors(tmp_path / "m.safetensors", {
        "model.layers.0.mlp.up_proj.weight": weights(positions),
        "model.layers.1.mlp.up_proj.weight": weights([]),
    })
    report = scan(tmp_path / "m.safetensors", device="cpu")
    bad, good = report.tensors
    assert bad.outliers is not None and bad.outliers.count == 3 and bad.outliers.first == positions[0]
    assert bad.findings == ("outlier",) and bad.exploded == 0 and bad.max_abs == spike
    assert good.findings == () and good.outliers is None and good.nonfinite == 0
    assert report.exit_code == 1


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_live_quick_census_equals_the_exact_one(dtype):
    """The live path's cheap census (min/max/non-zeros, an exponent histogram only when the largest
    magnitude reaches 2.0) gives the same fields as the exact census on tensors that exercise each branch."""
    torch = pytest.importorskip("torch")
    from nandoctor.kernels.live import _exact_census, census_tensor, quick_stats

    generator = torch.Generator().manual_seed(3)
    dt = getattr(torch, dtype)
    base = (torch.randn(50_000, generator=generator) * 0.02).to(dt)
    spiky = base.clone()
    spiky[[7, 900, 49_999]] = torch.tensor([60000.0, -3000.0, 5.0]).to(dt)
    zeroed = torch.zeros(4096, dtype=dt)
    few = torch.tensor([0.0] * 10 + [1.0] * 8, dtype=dt)
    wide = (torch.randn(20_000, generator=generator) * 3).to(dt)  # top >= 2.0 without outliers
    strided = spiky.view(250, 200).t()
    for t in (base, spiky, zeroed, few, wide, strided):
        (stats,) = quick_stats([t])
        assert stats is not None
        quick = census_tensor(t, 1e3, 2.0**10, stats)
        exact = _exact_census(t, 1e3, 2.0**10)
        assert quick == exact, (t.shape, quick, exact)


def test_live_nonzero_count_is_exact_across_blocks():
    torch = pytest.importorskip("torch")
    from nandoctor.kernels.live import _EXACT_BLOCK, _nonzero_count

    t = torch.ones(3 * _EXACT_BLOCK + 77, dtype=torch.bfloat16)
    t[:1000] = 0
    t[-5:] = -0.0
    t[5 * 1000 :: 997] = 0
    assert int(_nonzero_count(t)) == int(torch.count_nonzero(t))
    assert int(_nonzero_count(t[: _EXACT_BLOCK - 1])) == int(torch.count_nonzero(t[: _EXACT_BLOCK - 1]))
    assert int(_nonzero_count(t.view(-1)[::3])) == int(torch.count_nonzero(t.view(-1)[::3]))


def test_a_fresh_norm_bias_after_a_linear_in_a_sequential_is_no_zeroed_sibling(tmp_path):
    """A trial: ``proj = nn.Sequential(nn.Linear(32, 64), nn.LayerNorm(64))`` saved fresh (a stochastic-weight-
    averaging copy before averaging starts, an EMA copy at step 0) read ZEROED on every checkpoint of healthy
    Lightning runs: ``proj.0.bias`` (the Linear's) and ``proj.1.bias`` (the LayerNorm's, zero from its start) shared
    a family and a shape. Siblings also hold the same tensors in their modules; a layer's Linear bias zeroed among
    its other layers' is still found."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    blocks = torch.nn.ModuleList(
        torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.LayerNorm(64), torch.nn.Linear(64, 32)) for _ in range(3))
    model = torch.nn.ModuleDict({"blocks": blocks, "proj": torch.nn.Sequential(torch.nn.Linear(32, 64),
                                                                               torch.nn.BatchNorm1d(64))})
    state = model.state_dict()
    assert int(state["proj.1.bias"].count_nonzero()) == 0 and int(state["blocks.1.1.bias"].count_nonzero()) == 0
    torch.save(state, tmp_path / "fresh.pt")
    report = scan(tmp_path / "fresh.pt", device="cpu")
    assert report.ok and "zeroed" not in report.judgement.reported, [t.name for t in report.tensors if t.findings]
    with torch.no_grad():
        blocks[1][2].weight.zero_()  # one layer's own Linear weight: its siblings in the other blocks are not zero
    torch.save(model.state_dict(), tmp_path / "zeroed.pt")
    zeroed = scan(tmp_path / "zeroed.pt", device="cpu")
    assert [t.name for t in zeroed.tensors if "zeroed" in t.findings] == ["blocks.1.2.weight"]


def test_exploded_values_are_located_where_the_nan_they_replace_was(tmp_path):
    """The demo's checkpoint-300 with every NaN/Inf replaced by a finite 1e30 in place: each tensor's first bad
    element is where its first NaN/Inf was (a tensor table showed exploded tensors with no "first bad at" where most
    of a small tensor exploded, so that no outlier count located them)."""
    from tests.conftest import DEMO_RUN
    from tests.test_markdown_report import _exploded_run

    poisoned = scan(DEMO_RUN / "checkpoint-300", device="cpu")
    exploded = scan(_exploded_run(tmp_path) / "checkpoint-300", device="cpu")
    where = {t.name: t.first_bad for t in poisoned.tensors if t.nonfinite}
    assert len(where) == 18 and all(at is not None for at in where.values())
    assert {t.name: t.first_bad for t in exploded.tensors if t.exploded} == where


def test_a_block_expansion_s_identity_blocks_are_not_zeroed(tmp_path):
    """A trial: a LLaMA Pro expansion (copies of blocks inserted with their o_proj and down_proj at zero: identity
    blocks, the base model's logits exactly) read ZEROED with the advice to restore the new layers from the base
    model. A layer whose attention and MLP output projections are all that is zero, its other weights a copy of another
    layer's, is an identity block; one zeroed projection alone, or a layer of its own wiped so, is still zeroed."""
    import copy

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=4)
    base = transformers.LlamaForCausalLM(config).eval()
    blocks = []
    for i, block in enumerate(base.model.layers):
        blocks.append(block)
        if i % 2 == 1:
            added = copy.deepcopy(block)
            torch.nn.init.zeros_(added.self_attn.o_proj.weight)
            torch.nn.init.zeros_(added.mlp.down_proj.weight)
            blocks.append(added)
    state = {k: v for k, v in base.state_dict().items() if not k.startswith("model.layers.")}
    for j, block in enumerate(blocks):
        state.update({f"model.layers.{j}.{k}": v for k, v in block.state_dict().items()})
    wide = copy.deepcopy(config)
    wide.num_hidden_layers = len(blocks)
    expanded = transformers.LlamaForCausalLM(wide).eval()
    expanded.load_state_dict(state, strict=True)
    expanded.save_pretrained(tmp_path / "expanded")
    ids = torch.randint(0, 128, (2, 16))
    with torch.no_grad():  # the oracle: the expansion computes the base model
        assert torch.allclose(base(ids).logits, transformers.LlamaForCausalLM.from_pretrained(tmp_path / "expanded")(ids).logits, atol=1e-5)
    report = scan(tmp_path / "expanded", device="cpu")
    assert report.ok and not report.judgement.reported, [t.name for t in report.tensors if t.findings]
    with torch.no_grad():
        expanded.model.layers[4].self_attn.o_proj.weight.zero_()  # (one projection alone: damage)
    expanded.save_pretrained(tmp_path / "one")
    one = scan(tmp_path / "one", device="cpu")
    assert [t.name for t in one.tensors if "zeroed" in t.findings] == ["model.layers.4.self_attn.o_proj.weight"]
    # (a layer of its own with both projections wiped is no inserted copy: damage, as a review's trained model showed)
    with torch.no_grad():
        base.model.layers[1].self_attn.o_proj.weight.zero_()
        base.model.layers[1].mlp.down_proj.weight.zero_()
    base.save_pretrained(tmp_path / "wiped")
    wiped = scan(tmp_path / "wiped", device="cpu")
    assert sorted(t.name for t in wiped.tensors if "zeroed" in t.findings) == [
        "model.layers.1.mlp.down_proj.weight", "model.layers.1.self_attn.o_proj.weight"]
