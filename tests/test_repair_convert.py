"""Donor bytes that need converting: another byte order (issue 14, item 8) and ``--allow-cast``
(issue 13, item 4). torch and safetensors are the oracles: every repaired output is loaded with
``torch.load(weights_only=True)`` or ``safetensors`` and compared bit for bit."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nandoctor.cli import cli
from nandoctor.errors import UnrestorableError
from nandoctor.restore import repair
from nandoctor.restore.convert import cast_bytes, nonfinite
from tests.torch_helpers import write_zip

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

NAN = float("nan")
TORCH = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(t) -> np.ndarray:
    """A tensor's raw little-endian bytes, as unsigned integers of its width."""
    return t.contiguous().view(INT[t.element_size()]).numpy().view(f"<u{t.element_size()}")


# ---------------------------------------------------------------------------
# The cast itself, bit for bit against torch.
# ---------------------------------------------------------------------------


def hard_float32_values() -> np.ndarray:
    """Random bit patterns plus the cases rounding gets wrong: exact ties for bf16 and fp16 (normal and
    subnormal), values one ulp either side of them, fp16/bf16 limits, fp32 subnormals, signed zeros."""
    rng = np.random.default_rng(14)
    random = rng.integers(0, 2**32, 20_000, dtype=np.uint64).astype(np.uint32)
    bf16_ties = (rng.integers(0, 2**16, 4_000).astype(np.uint32) << 16) | 0x8000
    halves = rng.integers(0, 0x7BFF, 4_000).astype(np.uint16).view(np.float16)  # every fp16 class incl. subnormals
    upper = np.nextafter(halves, np.float16(np.inf))
    fp16_ties = ((halves.astype(np.float64) + upper.astype(np.float64)) / 2).astype(np.float32)
    near = np.concatenate([fp16_ties, bf16_ties.view(np.float32)])
    near = near[np.isfinite(near)]
    limits = np.array([65504, 65519.996, 65520, 65536, 2.0**-24, 2.0**-25, 2.0**-25 * 1.0000001, 2.0**-26,
                       1e-45, 1.17549435e-38, 3.3895314e38, 3.3961776e38, 3.3961778e38, 3.4028235e38, 0.0, -0.0],
                      np.float32)
    out = np.concatenate([random.view(np.float32), near, np.nextafter(near, np.float32(0)),
                          np.nextafter(near, np.float32(np.inf)), limits])
    out = np.concatenate([out, -out])
    return out[np.isfinite(out)]


@pytest.mark.parametrize("target", ["BF16", "F16", "F64"])
def test_fp32_casts_round_exactly_as_torch(target: str) -> None:
    values = hard_float32_values()
    ours = cast_bytes(values.view(np.uint8), "F32", target)
    oracle = torch.from_numpy(values.copy()).to(TORCH[target])
    assert np.array_equal(ours.view(bits(oracle).dtype), bits(oracle))


@pytest.mark.parametrize("target", ["BF16", "F16", "F32"])
def test_fp64_casts_round_twice_as_torch_does(target: str) -> None:
    """c10's Half and BFloat16 are built from a float: torch rounds an fp64 to fp32 first, then again."""
    rng = np.random.default_rng(5)
    wide = hard_float32_values().astype(np.float64)
    # Just above a tie once in fp32 rounding, where rounding fp64 straight to the target would differ.
    values = np.concatenate([wide, wide * (1 + 2.0**-40), rng.standard_normal(20_000) * 10.0 ** rng.integers(-45, 39, 20_000)])
    ours = cast_bytes(values.view(np.uint8), "F64", target)
    oracle = torch.from_numpy(values.copy()).to(TORCH[target])
    assert np.array_equal(ours.view(bits(oracle).dtype), bits(oracle))


@pytest.mark.parametrize("source", ["F16", "BF16"])
def test_every_half_precision_value_casts_as_torch(source: str) -> None:
    every = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(TORCH[source])
    every = every[torch.isfinite(every)]
    raw = bits(every).view(np.uint8)
    for target in ("F64", "F32", "F16", "BF16"):
        if target != source:
            oracle = every.to(TORCH[target])
            assert np.array_equal(cast_bytes(raw, source, target).view(bits(oracle).dtype), bits(oracle)), target


def test_values_out_of_the_targets_range_are_counted_not_finite() -> None:
    values = np.array([65504, 65519, 65520, 1e5, -7e4, 3.4e38], np.float32)
    assert nonfinite(cast_bytes(values.view(np.uint8), "F32", "F16"), "F16") == 4
    assert nonfinite(cast_bytes(values.view(np.uint8), "F32", "BF16"), "BF16") == 1  # 3.4e38 > bf16's max
    assert torch.isinf(torch.from_numpy(values).to(torch.float16)).sum() == 4  # the oracle agrees


# ---------------------------------------------------------------------------
# Byte order: big-endian torch files as donor and as target.
# ---------------------------------------------------------------------------


def save_big_endian(tensors: dict, path: Path) -> None:
    """``torch.save`` as a big-endian machine writes it: every storage's lanes swapped, byteorder "big"."""
    little = path.with_suffix(".little")
    torch.save(tensors, little)
    items = []
    with zipfile.ZipFile(little) as z:
        for info in z.infolist():
            data = z.read(info.filename)
            tail = info.filename.split("/", 1)[1]
            if tail == "byteorder":
                data = b"big"
            elif tail.startswith("data/"):
                data = np.frombuffer(data, "<u4").byteswap().tobytes()  # every tensor here is fp32
            items.append((info.filename, data))
    little.unlink()
    write_zip(path, items)


def finite_but_nan_when_read_little_endian() -> torch.Tensor:
    # 0x3F80FF7F is 1.0078…; its bytes read in the wrong order are 0x7FFF803F, a NaN.
    return torch.tensor(np.array([0x3F80FF7F, 0x3F800000, 0x40490FDB, 0x3F80FF7F], np.uint32).view(np.float32))


def bad_and_clean() -> tuple[dict, dict]:
    clean = {"w": finite_but_nan_when_read_little_endian(), "b": torch.arange(3, dtype=torch.float32)}
    bad = {"w": clean["w"].clone(), "b": clean["b"].clone()}
    bad["w"][2] = NAN
    return bad, clean


def test_a_big_endian_donor_is_judged_in_its_own_order_and_swapped_into_the_target(tmp_path: Path) -> None:
    bad, clean = bad_and_clean()
    torch.save(bad, tmp_path / "target.bin")
    save_big_endian(clean, tmp_path / "donor.bin")
    assert torch.equal(torch.load(tmp_path / "donor.bin", weights_only=True)["w"], clean["w"])  # the oracle
    result = repair(tmp_path / "target.bin", [tmp_path / "donor.bin"], tmp_path / "fixed")
    assert result.ok and [r.name for r in result.plan.restorations] == ["w"]
    fixed = torch.load(tmp_path / "fixed" / "target.bin", weights_only=True)
    assert np.array_equal(bits(fixed["w"]), bits(clean["w"])) and torch.equal(fixed["b"], clean["b"])


def test_a_big_endian_target_gets_its_donor_in_big_endian_order(tmp_path: Path) -> None:
    bad, clean = bad_and_clean()
    save_big_endian(bad, tmp_path / "target.bin")
    torch.save(clean, tmp_path / "donor.bin")
    result = repair(tmp_path / "target.bin", [tmp_path / "donor.bin"], tmp_path / "fixed")
    assert result.ok and result.verification.nonfinite == 0
    fixed = torch.load(tmp_path / "fixed" / "target.bin", weights_only=True)
    assert np.array_equal(bits(fixed["w"]), bits(clean["w"]))
    with zipfile.ZipFile(tmp_path / "fixed" / "target.bin") as z:  # still a big-endian file
        assert z.read(next(n for n in z.namelist() if n.endswith("/byteorder"))) == b"big"


def test_a_big_endian_donor_that_holds_nan_is_refused(tmp_path: Path) -> None:
    bad, _ = bad_and_clean()
    torch.save(bad, tmp_path / "target.bin")
    save_big_endian(bad, tmp_path / "donor.bin")
    with pytest.raises(UnrestorableError) as caught:
        repair(tmp_path / "target.bin", [tmp_path / "donor.bin"], tmp_path / "fixed")
    assert "holds 1 NaN/Inf values itself" in caught.value.plan.unrestorable[0].reasons[0]
    assert not (tmp_path / "fixed").exists()


# ---------------------------------------------------------------------------
# --allow-cast: an fp32 master copy as donor for a bf16 (or fp16) checkpoint.
# ---------------------------------------------------------------------------


def master_and_bf16(tmp_path: Path, *, master_edit=None) -> tuple[Path, Path, dict]:
    g = torch.Generator().manual_seed(3)
    master = {"layers.0.w": torch.randn(64, 48, generator=g) * 3, "layers.1.w": torch.randn(48, generator=g),
              "norm": torch.ones(48)}
    # a bf16 subnormal, ties to even that go down and up, one just past a tie
    master["layers.0.w"][0, :4] = torch.tensor([2.0**-130, 1.00390625, 1.01171875, 1.0039063])
    if master_edit:
        master_edit(master)
    bf16 = {k: v.to(torch.bfloat16) for k, v in master.items()}
    bf16["layers.0.w"][5, 7] = NAN
    bf16["layers.1.w"][3] = float("inf")
    safetensors_torch.save_file(master, tmp_path / "master.safetensors")
    (tmp_path / "ckpt").mkdir()
    safetensors_torch.save_file(bf16, tmp_path / "ckpt" / "model.safetensors")
    return tmp_path / "ckpt", tmp_path / "master.safetensors", master


def test_a_different_dtype_is_refused_by_default_and_the_note_offers_allow_cast(tmp_path: Path) -> None:
    target, donor, _ = master_and_bf16(tmp_path)
    with pytest.raises(UnrestorableError) as caught:
        repair(target, [donor], tmp_path / "fixed", allow_diverged=True)
    plan = caught.value.plan
    assert all("dtype F32, the target's is BF16" in u.reasons[0] for u in plan.unrestorable)
    assert any("--allow-cast" in n for n in plan.notes)
    # the last line, the hint, offers it too (first), not only the note further up
    # (the note's own words: repair -q prints no note to see "above", a new user's trial)
    assert caught.value.hint.startswith("add --allow-cast (") and "--allow-cast takes it, rounded as torch's" in caught.value.hint
    assert caught.value.hint.endswith("); or add an earlier clean checkpoint with --from; --dry-run shows why each "
                                      "donor failed") and "note above" not in caught.value.hint


def test_allow_cast_rounds_the_master_copy_as_torch_does(tmp_path: Path) -> None:
    from safetensors import safe_open

    target, donor, master = master_and_bf16(tmp_path)
    result = repair(target, [donor], tmp_path / "fixed", allow_cast=True, allow_diverged=True)
    assert result.ok and sorted(r.name for r in result.plan.restorations) == ["layers.0.w", "layers.1.w"]
    with safe_open(tmp_path / "fixed" / "model.safetensors", framework="pt") as f:
        for name in ("layers.0.w", "layers.1.w"):
            assert np.array_equal(bits(f.get_tensor(name)), bits(master[name].to(torch.bfloat16))), name
        assert np.array_equal(bits(f.get_tensor("norm")), bits(master["norm"].to(torch.bfloat16)))
    # Only the restored tensors' bytes changed: the header and the untouched tensor are the source's.
    source, fixed = (p.read_bytes() for p in (target / "model.safetensors", tmp_path / "fixed" / "model.safetensors"))
    assert len(source) == len(fixed) and source[:8 + int.from_bytes(source[:8], "little")] == fixed[:8 + int.from_bytes(fixed[:8], "little")]
    proof = json.loads((tmp_path / "fixed" / "nandoctor-repair.json").read_text())
    assert proof["allow_cast"] is True
    assert {(r["tensor"], r["dtype"], r["donor_dtype"]) for r in proof["restored"]} == {
        ("layers.0.w", "BF16", "F32"), ("layers.1.w", "BF16", "F32")}


def test_allow_cast_refuses_a_donor_whose_values_overflow_the_target(tmp_path: Path) -> None:
    master = {"w": torch.linspace(60000, 70000, 48)}  # finite in fp32, and healthy; from 65520 on Inf as fp16
    fp16 = {"w": torch.ones(48, dtype=torch.float16)}
    fp16["w"][3] = NAN
    (tmp_path / "ckpt").mkdir()
    safetensors_torch.save_file(fp16, tmp_path / "ckpt" / "model.safetensors")
    safetensors_torch.save_file(master, tmp_path / "master.safetensors")
    safetensors_torch.save_file({"w": torch.linspace(-1, 1, 48)}, tmp_path / "older.safetensors")
    overflow = int(torch.isinf(master["w"].to(torch.float16)).sum())  # the oracle: 22
    with pytest.raises(UnrestorableError) as caught:
        repair(tmp_path / "ckpt", [tmp_path / "master.safetensors"], tmp_path / "fixed", allow_cast=True)
    assert caught.value.plan.unrestorable[0].reasons == (
        f"{tmp_path / 'master.safetensors'}: {overflow} of its F32 values are not finite as F16",)
    assert not (tmp_path / "fixed").exists()
    # The next donor is tried: the overflow is a reason to pass this one over, not to stop.
    result = repair(tmp_path / "ckpt", [tmp_path / "master.safetensors", tmp_path / "older.safetensors"],
                    tmp_path / "fixed", allow_cast=True)
    assert result.ok and result.plan.restorations[0].donor == 1


def test_allow_cast_into_a_transposed_view_of_a_torch_file(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(8)
    master = {"w": torch.randn(40, 24, generator=g)}
    target = {"w": master["w"].to(torch.float16).t()}  # a transposed view: written element by element
    target["w"][2, 5] = NAN
    torch.save(target, tmp_path / "target.bin")
    torch.save({"w": master["w"].t().contiguous()}, tmp_path / "master.bin")
    with pytest.raises(UnrestorableError):
        repair(tmp_path / "target.bin", [tmp_path / "master.bin"], tmp_path / "refused")
    result = CliRunner().invoke(cli, ["repair", str(tmp_path / "target.bin"), "--from", str(tmp_path / "master.bin"),
                                      "--out", str(tmp_path / "fixed"), "--allow-cast", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["restored"][0]["donor_dtype"] == "F32"
    fixed = torch.load(tmp_path / "fixed" / "target.bin", weights_only=True)["w"]
    assert fixed.stride() == (1, 24) and np.array_equal(bits(fixed), bits(master["w"].t().to(torch.float16)))
