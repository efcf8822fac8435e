"""--target-dtype: values that overflow when cast, checked against torch's own casts."""

from __future__ import annotations

import numpy as np
import pytest

from fixtures.builders import SPECIALS, RawTensor, bf16_bits, write_safetensors
from nandoctor.dtypes import DTYPES
from nandoctor.kernels.cpu import DENSE_BYTES, CpuKernel
from nandoctor.kernels.targets import TARGETS, decode_magnitude, target, threshold_bits
from nandoctor.engine import scan

torch = pytest.importorskip("torch")
from nandoctor.kernels import live  # noqa: E402
from nandoctor.kernels.torch_kernel import TorchKernel  # noqa: E402

CPU, TORCH = CpuKernel(), TorchKernel("cpu")
SOURCE_TORCH = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                "F8_E5M2": torch.float8_e5m2, "F8_E4M3": torch.float8_e4m3fn, "F8_E8M0": torch.float8_e8m0fnu}
NP_BITS = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}


def test_thresholds_are_half_an_ulp_above_the_largest_finite_value():
    f32 = DTYPES["F32"]
    assert decode_magnitude(f32, threshold_bits(f32, TARGETS["fp16"])) == 65520.0
    assert decode_magnitude(f32, threshold_bits(f32, TARGETS["fp8_e5m2"])) == 61440.0
    assert decode_magnitude(f32, threshold_bits(f32, TARGETS["bf16"])) == pytest.approx(3.3961e38, rel=1e-4)
    e4m3 = decode_magnitude(f32, threshold_bits(f32, TARGETS["fp8_e4m3"]))
    assert e4m3 == float(np.nextafter(np.float32(464), np.float32(1e9)))  # 464 itself rounds down to 448
    # a source that cannot reach the limit never overflows: fp16's largest value is 65504
    f16 = DTYPES["F16"]
    assert threshold_bits(f16, TARGETS["fp16"]) == f16.exp_mask
    assert decode_magnitude(DTYPES["BF16"], threshold_bits(DTYPES["BF16"], TARGETS["fp16"])) == 65536.0
    assert target("float16") is target("FP16") is TARGETS["fp16"]
    with pytest.raises(ValueError, match="fp16"):
        target("int4")


def interesting_values(dtype: str, rng: np.random.Generator) -> np.ndarray:
    """Raw bits of ``dtype``: both sides of every target's threshold, wide random magnitudes, NaN/Inf."""
    spec = DTYPES[dtype]
    lane = spec.lane_bits
    if lane == 8:
        return np.arange(256, dtype=np.uint8)  # every code
    if lane == 16:
        return np.arange(1 << 16, dtype=np.uint16)  # every code
    ftype = {32: np.float32, 64: np.float64}[lane]
    edges = []
    for tgt in TARGETS.values():
        for value in (tgt.limit, tgt.max_finite):
            v = ftype(value) if np.isfinite(ftype(value)) else np.finfo(ftype).max
            for x in (np.nextafter(v, ftype(0)), v, np.nextafter(v, ftype(np.inf))):
                edges += [x, -x]
    magnitudes = 10.0 ** rng.uniform(-3, 38.5, 20000)
    signs = rng.choice([-1.0, 1.0], magnitudes.size)
    values = np.concatenate([np.array(edges, ftype), (magnitudes * signs).astype(ftype)])
    if lane == 64:
        values = values.astype(np.float32).astype(np.float64)  # see test docstring below
    bits = values.view(NP_BITS[lane]).copy()
    specials = [c for k, c in SPECIALS[dtype].items() if c is not None and k != "max"]
    bits[rng.choice(bits.size, 40, replace=False)] = rng.choice(np.array(specials, bits.dtype), 40)
    return bits


@pytest.mark.parametrize("tgt", list(TARGETS))
@pytest.mark.parametrize("dtype", list(SOURCE_TORCH))
def test_overflow_matches_torch_casts(dtype, tgt):
    """Counted overflow == finite values that torch's ``.to(target)`` turns into Inf/NaN.

    F64 sources use values exactly representable in float32: torch casts double
    to half/bf16 through float (two roundings), so a double a hair under the
    threshold can still overflow there; nandoctor's exact threshold would miss
    that one-ulp sliver.
    """
    spec = DTYPES[dtype]
    bits = interesting_values(dtype, np.random.default_rng(5))
    raw = bits.view(np.uint8)
    src = torch.frombuffer(bytearray(raw.tobytes()), dtype=SOURCE_TORCH[dtype])
    wide = src.to(torch.float64) if dtype == "F64" else src.float()
    cast = src.to(getattr(torch, TARGETS[tgt].torch_name)).float()
    finite = torch.isfinite(wide)
    if tgt == "fp8_e4m3":
        # torch 2.13 saturates this cast: out-of-range values become ±448, not NaN (see targets.py).
        # Overflow is then "beyond 464", and torch must have clamped exactly those values.
        over = finite & (wide.abs() > 464)
        assert (cast[over].abs() == 448).all()
        assert torch.isfinite(cast[finite]).all()
        want_overflow = int(over.sum())
    else:
        want_overflow = int((finite & ~torch.isfinite(cast)).sum())
    want_max = float(wide[finite].abs().max())
    threshold = threshold_bits(spec, TARGETS[tgt])
    for kernel in (CPU, TORCH):
        got = kernel.overflow(raw, spec, threshold)
        assert got.overflow == want_overflow, kernel.name
        assert decode_magnitude(spec, got.max_bits) == want_max, kernel.name
    assert live.overflow_tensor(src, tgt) == (want_overflow, want_max)


def plain_max(report, name):
    return next(t.max_abs for t in report.tensors if t.name == name)


def test_scan_fills_overflow_and_max_abs_per_tensor(tmp_path):
    rng = np.random.default_rng(2)
    n = 3 * DENSE_BYTES  # bf16: 6 MB, six 1 MiB overflow blocks, two 4 MiB chunks
    big = rng.standard_normal(n).astype(np.float32) * 0.02
    big[[5, DENSE_BYTES, n - 1]] = [70000.0, -1e6, 65536.0]
    big[[7, 2 * DENSE_BYTES + 3]] = [65000.0, -60000.0]  # large but castable (bf16 rounds 65504 up to 65536)
    big_bits = bf16_bits(big)
    big_bits[11] = SPECIALS["BF16"]["nan"]  # non-finite values are neither overflow nor max
    near = np.array([65519.0, 65520.0, -65520.0, 1e38, 3.0, np.inf, np.nan], np.float32)
    all_nan = np.full(16, SPECIALS["F32"]["nan"], np.uint32)
    write_safetensors(tmp_path / "m.safetensors", {
        "big": RawTensor("BF16", (n,), big_bits.tobytes()),
        "near": RawTensor("F32", (near.size,), near.tobytes()),
        "ids": RawTensor("I64", (4,), np.array([1, 10**9, 70000, -5], np.int64).tobytes()),
        "all_nan": RawTensor("F32", (16,), all_nan.tobytes()),
        "empty": RawTensor("F16", (0,), b""),
    })
    report = scan(tmp_path / "m.safetensors", device="cpu", target_dtype="fp16")
    got = {t.name: t for t in report.tensors}
    for name, values in (("big", torch.frombuffer(bytearray(big_bits.tobytes()), dtype=torch.bfloat16).float()),
                         ("near", torch.from_numpy(near))):
        finite = torch.isfinite(values)
        assert got[name].overflow == int((finite & ~torch.isfinite(values.half())).sum())
        assert got[name].max_abs == float(values[finite].abs().max())
    assert got["big"].overflow == 3 and got["big"].nan == 1
    assert got["near"].overflow == 3  # 65519 rounds to 65504; 65520 is the tie that rounds up
    assert (got["ids"].overflow, got["ids"].max_abs) == (0, None)  # integers are not cast by .half()
    assert (got["all_nan"].overflow, got["all_nan"].max_abs, got["all_nan"].nan) == (0, None, 16)
    assert (got["empty"].overflow, got["empty"].max_abs) == (0, None)
    assert report.extra["target_dtype"] == "fp16"
    plain = scan(tmp_path / "m.safetensors", device="cpu")
    assert all(t.overflow == 0 for t in plain.tensors)  # overflow is only counted when asked
    assert got["big"].max_abs == plain_max(plain, "big")  # the census's largest magnitude agrees with the cast pass
    torch_report = scan(tmp_path / "m.safetensors", kernel=TORCH, target_dtype="fp16")
    assert [(t.overflow, t.max_abs) for t in torch_report.tensors] == [(t.overflow, t.max_abs) for t in report.tensors]
    with pytest.raises(ValueError):
        scan(tmp_path / "m.safetensors", device="cpu", target_dtype="fp12")


def test_views_of_one_storage_get_their_own_overflow(tmp_path):
    """Tied weights, slices and transposes (torch files) count only the elements each view sees."""
    pytest.importorskip("nandoctor.readers.torch.file")
    base = torch.randn(300, 50) * 30000
    base[3, 4] = float("nan")
    state = {"a.weight": base, "b.weight": base[:, 2:5], "c.weight": base.T, "d.weight": base[10:20], "tied": base}
    torch.save(state, tmp_path / "views.pt")
    for tgt in ("fp16", "fp8_e5m2"):
        report = scan(tmp_path / "views.pt", device="cpu", target_dtype=tgt)
        assert report.complete, report.errors
        for t in report.tensors:
            view = state[t.name]
            finite = torch.isfinite(view)
            cast = view.to(getattr(torch, TARGETS[tgt].torch_name)).float()  # e5m2 and fp16 give Inf
            assert t.overflow == int((finite & ~torch.isfinite(cast)).sum()), (tgt, t.name)
            assert t.max_abs == float(view[finite].abs().max()), (tgt, t.name)


def _outlier_that_overflows(tmp_path):
    """Among fp32 weights of ~0.02, one of 500 (an outlier) and one of 70000 (an fp16 overflow, above fp16's exploded
    ceiling, and standing out of its bulk: exploded as well, a corruption to repair, not only too wide for fp16)."""
    values = np.random.default_rng(5).standard_normal(256).astype(np.float32) * 0.02
    values[17] = 70000.0
    values[40] = 500.0
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"model.layers.0.mlp.up_proj.weight": RawTensor("F32", (16, 16), values.tobytes())})
    return path


@pytest.mark.parametrize(("fail_on", "code", "words", "repair", "cast", "case"), [
    ("nonfinite,exploded,outlier,overflow", 1, "EXPLODED + OUTLIERS + OVERFLOW RISK (fp16)", True, True, " (POISONED)"),
    ("overflow", 1, "OVERFLOW RISK (fp16) (also reported: EXPLODED, OUTLIERS)", False, True, ""),
    ("nonfinite", 0, "EXPLODED + OUTLIERS + OVERFLOW RISK (fp16) (reported only)", False, False, ""),
])
def test_target_dtype_gives_one_verdict_naming_what_fails_first(tmp_path, fail_on, code, words, repair, cast, case):
    """One verdict line per report, the same words in rich, quiet, Markdown and JSON: what fails the gate,
    then what is only reported, marked so; next: repairs only what fails and a repair fixes (an outlier),
    and gives the cast advice when overflow fails."""
    import json

    from tests.conftest import run_cli as run

    path = _outlier_that_overflows(tmp_path)
    args = ("scan", path, "--target-dtype", "fp16", "--fail-on", fail_on, "--no-progress")
    rich = run(*args)
    assert rich.exit_code == code
    verdicts = [line for line in rich.output.splitlines() if line.startswith(("✗", "✓", "⚠"))]
    assert verdicts == [f"{'✗ FAIL' if code else '⚠ PASS'} {words}{case}: 1 weight tensor exploded (max |x| 7e+04); "
                        "1 outlier value in 1 tensor; worst model.layers.0; "
                        "1 value in 1 tensor overflow fp16 (max |x| 7e+04), worst model.layers.0"]
    assert rich.output.index("Overflow risk when cast to fp16") < rich.output.index(verdicts[0])
    assert rich.output.count("next:") == (1 if repair or cast else 0)
    assert ("nandoctor repair" in rich.output) is repair
    cast_advice = "some finite weights overflow fp16: serve in a wider dtype (bf16 or fp32), or clamp/rescale model.layers.0"
    assert (cast_advice in rich.output) is cast
    quiet = run(*args, "-q")
    # the quiet line adds the health case where a health finding fails (an outlier: repair it), not for overflow
    assert quiet.output.startswith(f"{'FAIL' if code else 'PASS'} {words}{case} {path}: ") and quiet.exit_code == code
    markdown = run(*args, "--markdown")
    mark = "❌ FAIL" if code else "⚠️ PASS" if "(reported only)" in words else "✅ PASS"  # (findings only reported: ⚠)
    assert markdown.output.startswith(f"## nandoctor: {mark} {words}{case}\n")
    assert ("nandoctor repair" in markdown.output) is repair and (cast_advice in markdown.output) is cast
    data = json.loads(run(*args, "--json").output)
    assert data["summary"]["verdict"] == words and data["gate"]["exit_code"] == code


def test_fail_on_overflow_without_a_target_dtype_says_what_to_do(tmp_path):
    from tests.conftest import run_cli as run

    result = run("scan", _outlier_that_overflows(tmp_path), "--fail-on", "overflow")
    assert result.exit_code == 2
    assert "has nothing to check: no target dtype is given" in " ".join(result.output.split())
    assert "or gate on other findings (e.g. --fail-on nonfinite,exploded,outlier)" in " ".join(result.output.split())
    assert "keep nonfinite" not in result.output


def test_the_fits_line_quotes_what_the_cast_reaches_not_optimizer_state(tmp_path):
    """A checkpoint whose optimizer moments reach 3e5 (a long run's exp_avg_sq) fits fp16: the line said "fits fp16
    (max |x| 3e+05)", the optimizer's value, which no cast of the model touches."""
    import torch
    from safetensors.torch import save_file

    import nandoctor
    from nandoctor import verdict

    folder = tmp_path / "checkpoint-8"
    folder.mkdir()
    save_file({"model.layers.0.mlp.up_proj.weight": torch.full((8, 8), 0.5)}, folder / "model.safetensors")
    torch.save({"state": {0: {"step": torch.tensor(2e5), "exp_avg": torch.zeros(8, 8),
                              "exp_avg_sq": torch.full((8, 8), 3e5)}}, "param_groups": [{"params": [0]}]},
               folder / "optimizer.pt")
    report = nandoctor.scan(folder, device="cpu", target_dtype="fp16")
    assert report.exit_code == 0
    assert "fits fp16 (max |x| 0.5)" in verdict.one_line(report)


@pytest.mark.parametrize(("target", "fail_on", "code"), [
    ("fp16", "nonfinite,exploded,outlier", 1),  # 70,000 is above fp16's exploded ceiling as 30,000 is: it fails
    ("fp16", "nonfinite,outlier", 0),
    ("bf16", "nonfinite,exploded", 0),  # (fits bf16)
    ("fp8_e4m3", "nonfinite,exploded", 0),  # (fp8 weights are scaled to fill the format: overflow alone there)
])
@pytest.mark.parametrize("bulk", [0.02, 200.0])
def test_a_gate_on_exploded_weights_fails_on_values_beyond_fp16(tmp_path, target, fail_on, code, bulk):
    """A new user's trial: under a float16 config.json and --fail-on nonfinite,exploded,outlier, a weight of 30,000
    failed EXPLODED while one of 70,000 (Inf once loaded: from_pretrained's logits non-finite) passed, 'overflow risk'
    only, its tensor among '28 tensors healthy'. A value beyond fp16 lies above fp16's exploded ceiling too.

    Where it stands out of its tensor's bulk (weights of ~0.02: a corruption) it is exploded as well: the tensor is
    poisoned and the next step a repair (another new user's trial: one 70,000 among weights of 0.02 read "healthy,
    serve it wider" under --target-dtype fp16, and OUTLIERS, repair it, without). Where the bulk is large too
    (weights of ~200: the model's own scale) the tensor is healthy as weights, only too wide for fp16."""
    import json

    from tests.conftest import run_cli as run

    values = np.random.default_rng(3).standard_normal(256).astype(np.float32) * bulk
    values[9] = 70000.0
    tensors = {f"model.layers.{i}.mlp.up_proj.weight": RawTensor("F32", (16, 16), (values if i == 0 else values * 0 + 0.02).tobytes())
               for i in range(2)}
    path = tmp_path / "m.safetensors"
    write_safetensors(path, tensors)
    quiet = run("scan", path, "--target-dtype", target, "--fail-on", fail_on, "-q")
    assert quiet.exit_code == code, quiet.output
    health = json.loads(run("scan", path, "--target-dtype", target, "--json").output)["summary"]["health"]
    if target != "fp16":
        return
    if bulk > 1:
        assert "1 of 2 tensors healthy; 1 value in 1 tensor overflow fp16" in quiet.output, quiet.output
        assert health == "healthy"
    else:
        assert ": 1 weight tensor exploded (max |x| 7e+04); worst model.layers.0; 1 value in 1 tensor overflow fp16" in quiet.output
        assert health == "poisoned" and ("(POISONED)" in quiet.output) is bool(code)
