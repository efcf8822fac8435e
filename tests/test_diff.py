"""nandoctor diff on real files, with torch as the oracle: bit flips, cross-format, casts, a merged LoRA."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import nandoctor
from nandoctor.cli import cli
from nandoctor.readers import read_file
from nandoctor.report.diff_report import detail, verdict_text


def _model(layers: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {"model.embed_tokens.weight": torch.randn(50, 16, generator=g)}
    for i in range(layers):
        sd[f"model.layers.{i}.self_attn.q_proj.weight"] = torch.randn(16, 16, generator=g)
        sd[f"model.layers.{i}.mlp.up_proj.weight"] = torch.randn(32, 16, generator=g).to(torch.bfloat16)
    sd["model.norm.weight"] = torch.ones(16)
    return sd


def _torch_changed(a: torch.Tensor, b: torch.Tensor) -> int:
    a, b = a.double(), b.double()
    return int(((a != b) & ~(a.isnan() & b.isnan())).sum())


def _flip(path: Path, name: str, flips: list[tuple[int, int]]) -> None:
    """Flip bit ``bit`` of element ``index`` of tensor ``name`` in place (little-endian element bytes)."""
    ref = next(r for r in read_file(path).refs if r.name == name)
    item = {"F32": 4, "BF16": 2, "F16": 2}[ref.dtype]
    data = bytearray(path.read_bytes())
    for index, bit in flips:
        data[ref.region.offset + index * item + bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(data))


def test_planted_bit_flips_counted_exactly(tmp_path: Path) -> None:
    sd = _model()
    save_file(sd, tmp_path / "a.safetensors")
    shutil.copy(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    q3, up4 = "model.layers.3.self_attn.q_proj.weight", "model.layers.4.mlp.up_proj.weight"
    # fp32: an exponent bit (huge value), a sign bit, a mantissa bit; bf16: exponent bits → Inf/NaN, a sign bit.
    _flip(tmp_path / "b.safetensors", q3, [(17, 30), (200, 31), (255, 0)])
    sd_b = load_file(tmp_path / "b.safetensors")
    sd_b[up4].view(torch.int16).view(-1)[[3, 9, 100]] = torch.tensor([0x7F80, 0x7FC1, -0x8000], dtype=torch.int16)
    save_file(sd_b, tmp_path / "b.safetensors")
    sd_b = load_file(tmp_path / "b.safetensors")

    report = nandoctor.diff(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    by = {t.name: t for t in report.tensors}
    assert report.exit_code == 1 and report.verdict == "DIFFERENT"
    assert {t.name for t in report.tensors if t.status == "changed"} == {q3, up4}
    assert all(t.status == "identical" and t.compared_bytes for n, t in by.items() if n not in (q3, up4))
    q = by[q3]
    assert q.changed == _torch_changed(sd[q3], sd_b[q3]) == 3
    delta = (sd[q3].double() - sd_b[q3].double()).abs()
    assert q.max_abs is not None and q.max_abs.index == int(delta.argmax()) == 17
    assert q.max_abs.coords == (1, 1) and q.max_abs.amount == pytest.approx(float(delta.max()))
    u = by[up4]
    assert u.changed == _torch_changed(sd[up4], sd_b[up4])
    finite_a = sd[up4].float().isfinite()
    assert u.nonfinite_b_only == int((finite_a & ~sd_b[up4].float().isfinite()).sum()) == 2
    assert u.first_nonfinite_b_only == 3 and u.nonfinite_a_only == 0
    assert [r.label for r in report.changed_ranges] == ["model.layers.3–4"]


def test_cross_format_same_values_and_tied_head(tmp_path: Path) -> None:
    sd = _model()
    save_file(sd, tmp_path / "model.safetensors")
    on_disk = dict(sd)
    on_disk["lm_head.weight"] = on_disk["model.embed_tokens.weight"]  # tied: one storage in the .bin
    on_disk["model.layers.0.self_attn.q_proj.weight"] = sd["model.layers.0.self_attn.q_proj.weight"].t().contiguous().t()
    torch.save(on_disk, tmp_path / "pytorch_model.bin")
    report = nandoctor.diff(tmp_path / "model.safetensors", tmp_path / "pytorch_model.bin")
    assert report.exit_code == 0, [(t.name, t.status) for t in report.tensors if not t.same]
    by = {t.name: t for t in report.tensors}
    assert by["lm_head.weight"].status == "tied" and by["lm_head.weight"].tied_to == "model.embed_tokens.weight"
    assert by["model.layers.0.self_attn.q_proj.weight"].status == "identical"  # a transposed view, read by tiles
    assert report.counts["identical"] == len(sd)


def test_untied_head_missing_is_only_a(tmp_path: Path) -> None:
    sd = _model(layers=1)
    b = dict(sd)
    sd = dict(sd, **{"lm_head.weight": torch.randn(50, 16)})  # not a copy of the embeddings: really missing
    save_file(sd, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    report = nandoctor.diff(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert report.exit_code == 1 and report.with_status("only_a")[0].name == "lm_head.weight"
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()  # an equal copy saved separately: tied
    save_file(sd, tmp_path / "a.safetensors")
    report = nandoctor.diff(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert report.exit_code == 0 and report.with_status("tied")[0].tied_to == "model.embed_tokens.weight"


@pytest.mark.parametrize("target", [torch.bfloat16, torch.float16])
def test_dtype_conversion_is_a_cast(tmp_path: Path, target: torch.dtype) -> None:
    sd = _model(layers=2)
    sd = {k: v.float() for k, v in sd.items()}
    sd["model.layers.1.self_attn.q_proj.weight"][0, 0] = 1e-9  # underflows to a subnormal/zero in fp16
    save_file(sd, tmp_path / "fp32.safetensors")
    low = {k: v.to(target) for k, v in sd.items()}
    save_file(low, tmp_path / "low.safetensors")
    report = nandoctor.diff(tmp_path / "fp32.safetensors", tmp_path / "low.safetensors")
    assert report.exit_code == 1 and report.verdict == "CAST"
    assert sum(t.status == "cast" for t in report.tensors) >= 3  # (the random weights: rounded)
    for t in report.tensors:
        name = t.name
        oracle = float((sd[name].double() - low[name].double()).abs().max())
        # (a tensor every value of which the narrower dtype holds exactly, a norm's ones: the same values)
        assert t.status == ("cast" if oracle else "equal"), (name, t)
        assert t.rounding == (pytest.approx(oracle) if oracle else None)
    # One value moved beyond its rounding, one overflowed: changes, not casts.
    low["model.norm.weight"][3] = 1.5
    sd["model.layers.0.self_attn.q_proj.weight"][2, 5] = 1e6 if target == torch.float16 else 3.0  # fp16 overflows; bf16 holds both
    save_file(sd, tmp_path / "fp32.safetensors")
    low["model.layers.0.self_attn.q_proj.weight"] = sd["model.layers.0.self_attn.q_proj.weight"].to(target)
    save_file(low, tmp_path / "low.safetensors")
    report = nandoctor.diff(tmp_path / "fp32.safetensors", tmp_path / "low.safetensors")
    by = {t.name: t for t in report.tensors}
    assert by["model.norm.weight"].status == "changed" and by["model.norm.weight"].changed == 1
    q0 = by["model.layers.0.self_attn.q_proj.weight"]
    if target == torch.float16:
        assert q0.status == "changed" and q0.changed == 1 and q0.nonfinite_b_only == 1
        assert q0.first_nonfinite_b_only == 2 * 16 + 5
    else:
        assert q0.status == "cast"
    assert report.verdict == "DIFFERENT"


def test_a_lossless_widening_is_the_same_values(tmp_path: Path) -> None:
    """bf16 weights exported as fp32 (``v.float()``): every value exactly the same, nothing rounded: SAME, exit 0,
    each tensor ``equal`` with its dtypes said; one value changed makes it DIFFERENT."""
    sd = {k: v.to(torch.bfloat16) for k, v in _model(layers=2).items()}
    save_file(sd, tmp_path / "bf16.safetensors")
    wide = {k: v.float() for k, v in sd.items()}
    save_file(wide, tmp_path / "fp32.safetensors")
    report = nandoctor.diff(tmp_path / "fp32.safetensors", tmp_path / "bf16.safetensors")
    assert (report.exit_code, report.verdict) == (0, "SAME")
    assert {(t.status, t.dtype_a, t.dtype_b, t.rounding) for t in report.tensors} == {("equal", "F32", "BF16", None)}
    shown = verdict_text(report).plain
    assert shown == f"✓ SAME: all {len(sd)} tensors hold the same values ({len(sd)} tensors in another dtype)"
    assert detail(report.tensors[0]) == "F32 → BF16, every value exactly the same (nothing rounded)"
    wide["model.norm.weight"][1] += 2.0 ** -12  # below bf16's step at 1.0: a value bf16 cannot hold
    save_file(wide, tmp_path / "fp32.safetensors")
    report = nandoctor.diff(tmp_path / "fp32.safetensors", tmp_path / "bf16.safetensors")
    assert report.exit_code == 1 and {t.name for t in report.tensors if not t.same} == {"model.norm.weight"}


def test_largest_difference_across_a_cast_is_not_understated(tmp_path: Path) -> None:
    """bf16 made by double rounding (fp32 → fp16 → bf16) against its fp32 original: the elements counted as
    changed are those beyond bf16's half-ulp, and the largest of them (``max_abs``) can be smaller than an
    element rounded in a higher binade. The overall largest |a - b| is given too (``max_abs_all``), in the
    text and the JSON, so nothing says a smaller number than the rounding it reports."""
    g = torch.Generator().manual_seed(3)
    ref = torch.randn(64, 96, generator=g) * 0.05
    ref[0, 0] = 1.0 + 0.0039  # rounds to 1.0 in bf16: |Δ| 0.0039, under the half-ulp 0.0039063 at 1.0
    ref[0, 1] = 0.01
    low = ref.to(torch.float16).to(torch.bfloat16)
    low[0, 1] = 0.0107  # a real change of 0.0007, far beyond bf16's half-ulp at 0.01, but below 0.0039
    save_file({"w": low}, tmp_path / "bf16.safetensors")
    save_file({"w": ref}, tmp_path / "fp32.safetensors")
    a, b = low.double(), ref.double()
    delta = (a - b).abs()
    _, exponent = torch.frexp(torch.maximum(a.abs(), torch.tensor(2.0 ** -126)))
    beyond = delta > torch.ldexp(torch.ones_like(a), exponent - 1 - 7 - 1)  # bf16's half-ulp

    (t,) = nandoctor.diff(tmp_path / "bf16.safetensors", tmp_path / "fp32.safetensors").tensors
    assert t.status == "changed" and t.changed == int(beyond.sum())
    assert t.max_abs is not None and t.max_abs.amount == pytest.approx(float(delta[beyond].max()))
    assert t.max_abs_all is not None and t.max_abs_all.amount == pytest.approx(float(delta.max()))
    assert t.max_abs_all.coords == (0, 0) and t.max_abs_all.amount > t.max_abs.amount
    assert t.rounding is not None and t.rounding <= t.max_abs_all.amount

    args = ["diff", str(tmp_path / "bf16.safetensors"), str(tmp_path / "fp32.safetensors")]
    text = " ".join(CliRunner().invoke(cli, args, terminal_width=400).output.split())
    assert f"{t.changed:,} of 6,144 elements beyond rounding" in text
    assert f"max |Δ| beyond rounding {t.max_abs.amount:.4g}" in text
    assert f"largest |Δ| overall {t.max_abs_all.amount:.4g} at [0, 0]" in text and "within rounding" in text
    (row,) = json.loads(CliRunner().invoke(cli, [*args, "--json"]).output)["tensors"]
    assert row["max_abs_all"]["amount"] == pytest.approx(float(delta.max())) and row["max_abs_all"]["coords"] == [0, 0]
    assert row["rounding"] <= row["max_abs_all"]["amount"]
    assert row["max_abs_change"]["amount"] == pytest.approx(float(delta[beyond].max()))


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_tensors_of_a_truncated_file_are_unreadable_not_missing(tmp_path: Path, fmt: str) -> None:
    """A file cut short (its header intact) cannot be read: its tensors are ``unreadable`` (exit 3), never
    ``only_b`` as if A lacked them, on either side."""
    sd = _model(layers=2)
    (tmp_path / "ref").mkdir()
    (tmp_path / "cut").mkdir()
    save_file(sd, tmp_path / "ref" / "model.safetensors")
    name = "model.safetensors" if fmt == "safetensors" else "pytorch_model.bin"
    if fmt == "safetensors":
        save_file(sd, tmp_path / "cut" / name)
    else:
        torch.save(sd, tmp_path / "cut" / name)
    data = (tmp_path / "cut" / name).read_bytes()
    (tmp_path / "cut" / name).write_bytes(data[: len(data) // 2])
    for a, b in (("cut", "ref"), ("ref", "cut")):
        report = nandoctor.diff(tmp_path / a, tmp_path / b)
        assert report.exit_code == 3 and report.verdict == "INCOMPLETE"
        assert report.counts["unreadable"] == len(sd) and report.counts["only_a"] == report.counts["only_b"] == 0
        assert all(f"{'A' if a == 'cut' else 'B'}'s {name} could not be read" in (t.message or "")
                   for t in report.tensors)
    data = json.loads(CliRunner().invoke(cli, ["diff", str(tmp_path / "cut"), str(tmp_path / "ref"), "--json"]).output)
    assert data["summary"]["counts"]["unreadable"] == len(sd) and data["summary"]["counts"]["only_b"] == 0
    assert data["changed_layer_ranges"] == []  # not read is not changed


def test_an_unread_shard_makes_its_indexed_tensors_unreadable_others_still_compared(tmp_path: Path) -> None:
    """A sharded checkpoint with one shard cut short: the tensors its index maps to that shard are unreadable,
    the other shards are compared, and a tensor A really lacks (in no shard, not in its index) stays only_b."""
    sd = _model(layers=2)
    first = {k: v for k, v in sd.items() if ".layers.0." in k}
    rest = {k: v for k, v in sd.items() if k not in first}
    (tmp_path / "a").mkdir()
    save_file(first, tmp_path / "a" / "model-00001-of-00002.safetensors")
    save_file(rest, tmp_path / "a" / "model-00002-of-00002.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" for k in first} | {
        k: "model-00002-of-00002.safetensors" for k in rest}
    (tmp_path / "a" / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    save_file({**sd, "extra.weight": torch.ones(4)}, tmp_path / "b.safetensors")
    shard = tmp_path / "a" / "model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-40])

    report = nandoctor.diff(tmp_path / "a", tmp_path / "b.safetensors")
    by = {t.name: t for t in report.tensors}
    assert report.exit_code == 3
    assert {n for n, t in by.items() if t.status == "unreadable"} == set(first)
    assert {n for n, t in by.items() if t.status == "identical"} == set(rest)
    assert by["extra.weight"].status == "only_b"
    assert "index maps it to model-00001-of-00002.safetensors" in (by[next(iter(first))].message or "")


def test_merged_lora_against_its_base(tmp_path: Path) -> None:
    base = _model(layers=6)
    save_file(base, tmp_path / "base.safetensors")
    g = torch.Generator().manual_seed(1)
    merged = {}
    for name, w in base.items():
        if "q_proj" in name and any(f"layers.{i}." in name for i in (2, 3)):
            lora_b, lora_a = torch.randn(16, 4, generator=g), torch.randn(4, 16, generator=g)
            lora_b[:8] = 0  # half the rows untouched: the exact count matters
            w = w + 0.5 * lora_b @ lora_a
        merged["base_model.model." + name] = w  # PEFT's prefix: matched as repair matches donors
    save_file(merged, tmp_path / "merged.safetensors")
    report = nandoctor.diff(tmp_path / "merged.safetensors", tmp_path / "base.safetensors")
    changed = report.with_status("changed")
    assert sorted(t.name_b for t in changed) == [f"model.layers.{i}.self_attn.q_proj.weight" for i in (2, 3)]
    for t in changed:
        assert t.changed == _torch_changed(merged[t.name], base[t.name_b]) == 8 * 16
        rel = ((merged[t.name].double() - base[t.name_b].double()).abs() / base[t.name_b].double().abs())
        assert t.max_rel is not None and t.max_rel.amount == pytest.approx(float(rel.max()))
    assert [r.label for r in report.changed_ranges] == ["base_model.model.model.layers.2–3"]  # A's names
    assert report.counts["only_a"] == report.counts["only_b"] == 0


def test_sharded_folder_against_one_file_and_shape_changes(tmp_path: Path) -> None:
    sd = _model(layers=4)
    names = list(sd)
    folder = tmp_path / "sharded"
    folder.mkdir()
    halves = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map = {}
    for i, part in enumerate(halves, 1):
        shard = f"model-0000{i}-of-00002.safetensors"
        save_file({n: sd[n] for n in part}, folder / shard)
        weight_map.update({n: shard for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    other = dict(sd)
    other["model.norm.weight"] = torch.ones(2, 8)
    del other["model.layers.0.mlp.up_proj.weight"]
    other["extra.bias"] = torch.zeros(3)
    save_file(other, tmp_path / "one.safetensors")
    report = nandoctor.diff(folder, tmp_path / "one.safetensors")
    assert {(t.name, t.status) for t in report.tensors if not t.same} == {
        ("model.norm.weight", "shape"), ("model.layers.0.mlp.up_proj.weight", "only_a"), ("extra.bias", "only_b")}
    assert report.exit_code == 1


def test_cli_exit_codes_and_json(tmp_path: Path) -> None:
    sd = _model(layers=2)
    save_file(sd, tmp_path / "a.safetensors")
    torch.save(sd, tmp_path / "a.bin")
    runner = CliRunner()
    same = runner.invoke(cli, ["diff", str(tmp_path / "a.safetensors"), str(tmp_path / "a.bin"), "--json", "--all"])
    assert same.exit_code == 0, same.output
    data = json.loads(same.output)
    assert data["nandoctor_diff"] == 1 and data["summary"]["verdict"] == "SAME"
    assert {t["status"] for t in data["tensors"]} == {"identical"} and len(data["tensors"]) == len(sd)
    sd["model.norm.weight"][0] = float("nan")
    save_file(sd, tmp_path / "b.safetensors")
    differ = runner.invoke(cli, ["diff", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--json"])
    assert differ.exit_code == 1
    (row,) = json.loads(differ.output)["tensors"]
    assert row["name"] == "model.norm.weight" and row["nonfinite_b_only"] == 1 and row["changed"] == 1
    text = runner.invoke(cli, ["diff", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")])
    assert text.exit_code == 1 and "model.norm.weight" in text.output and "1 NaN/Inf only in B" in text.output
    data = (tmp_path / "b.safetensors").read_bytes()
    (tmp_path / "b.safetensors").write_bytes(data[: len(data) - 100])  # truncated: unreadable, never "same"
    broken = runner.invoke(cli, ["diff", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")])
    assert broken.exit_code == 3, broken.output
    missing = runner.invoke(cli, ["diff", str(tmp_path / "a.safetensors"), str(tmp_path / "nope")])
    assert missing.exit_code == 3 and missing.output.startswith("error:") and "Traceback" not in missing.output


def test_same_bytes_other_values_words(tmp_path: Path) -> None:
    """-0 against +0: other bytes, the same values (equal, exit 0), never 'identical'."""
    a = {"w": torch.zeros(8)}
    b = {"w": -torch.zeros(8)}
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    report = nandoctor.diff(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert [t.status for t in report.tensors] == ["equal"] and report.exit_code == 0
    assert np.signbit(load_file(tmp_path / "b.safetensors")["w"].numpy()).all()


def test_cli_stays_torch_free(tmp_path: Path) -> None:
    import subprocess
    import sys

    save_file({"w": torch.ones(4)}, tmp_path / "a.safetensors")
    code = ("import sys; from nandoctor.cli import main; sys.argv=['nandoctor','diff',sys.argv[1],sys.argv[1]];\n"
            "try: main()\nexcept SystemExit as e: assert 'torch' not in sys.modules, 'torch imported'; raise")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.safetensors")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_nan_on_one_side_is_located_by_coordinates_like_the_largest_change(tmp_path: Path) -> None:
    """The console gives the first NaN/Inf only in B in coordinates, as it gives max |Δ| (not a flat index);
    JSON has both."""
    sd = _model(layers=1)
    save_file(sd, tmp_path / "a.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"  # 16 × 16 fp32
    changed = dict(sd)
    changed[name] = sd[name].clone()
    changed[name].view(-1)[197] = float("nan")  # row 12, column 5
    changed[name][9, 3] += 100.0  # the largest change, elsewhere
    save_file(changed, tmp_path / "b.safetensors")
    result = CliRunner().invoke(cli, ["diff", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")])
    assert result.exit_code == 1
    line = " ".join(result.output.split())
    assert "1 NaN/Inf only in B (first at [12, 5])" in line and "max |Δ| 100 at [9, 3]" in line
    assert "first at 197" not in line
    data = json.loads(CliRunner().invoke(cli, ["diff", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                                               "--json"]).output)
    (entry,) = [t for t in data["tensors"] if t["name"] == name]
    assert entry["first_nonfinite_b_only"] == 197 and entry["first_nonfinite_b_only_coords"] == [12, 5]
    assert entry["first_nonfinite_a_only"] is None and entry["first_nonfinite_a_only_coords"] is None


@pytest.mark.parametrize("shape", [(64, 32), (8, 8)])
def test_gguf_positions_are_in_ne_order_as_scan_gives_them(tmp_path: Path, shape: tuple[int, int]) -> None:
    """A GGUF tensor's positions are in ne order (ne0 first), as scan and docs/gguf.md give them: the NaN
    at numpy [r, c] of the written array is at [c, r], for the first NaN/Inf and the largest change alike."""
    gguf = pytest.importorskip("gguf")

    def write(path: Path, nan_at: tuple[int, int] | None, far_at: tuple[int, int] | None) -> None:
        a = np.full(shape, 0.5, np.float16)
        if nan_at:
            a[nan_at] = np.nan
        if far_at:
            a[far_at] = 1000.0
        w = gguf.GGUFWriter(str(path), "llama")
        w.add_tensor("token_embd.weight", a)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    nan_at, far_at = ((50, 3), (10, 20)) if shape == (64, 32) else ((4, 3), (1, 6))
    write(tmp_path / "bad.gguf", nan_at, far_at)
    write(tmp_path / "good.gguf", None, None)
    (scanned,) = nandoctor.scan(tmp_path / "bad.gguf").tensors
    report = nandoctor.diff(tmp_path / "bad.gguf", tmp_path / "good.gguf")
    (t,) = report.tensors
    assert (t.status, t.changed, t.nonfinite_a_only, t.shape_a) == ("changed", 2, 1, shape[::-1])
    assert t.first_nonfinite_a_only_coords == scanned.first_bad_coords == nan_at[::-1]
    assert t.max_abs is not None and t.max_abs.coords == far_at[::-1] and t.max_abs.a == 1000.0
    out = CliRunner().invoke(cli, ["diff", str(tmp_path / "bad.gguf"), str(tmp_path / "good.gguf")]).output
    assert f"first at [{nan_at[1]}, {nan_at[0]}]" in out and f"at [{far_at[1]}, {far_at[0]}] (A: 1000" in out


@pytest.mark.parametrize(("a", "b"), [
    (np.array([2**53 + 1, 3], np.int64), np.array([2.0**53, 3.0], np.float64)),
    (np.array([2**63 + 1], np.uint64), np.array([2.0**63], np.float64)),
    (np.array([-(2**63) + 1], np.int64), np.array([-(2.0**63)], np.float64)),
    (np.array([2**53 + 1], np.int64), np.array([2**53], np.uint64)),
])
def test_64_bit_integers_compare_exactly_across_a_dtype_change(tmp_path: Path, a, b) -> None:
    """An adversarial trial: numpy compares an int64 (or uint64) with a float64 as float64, so 2**53 + 1 and 2**53
    were "the same values in another dtype", exit 0. Python's own integers are the oracle."""
    from safetensors.numpy import save_file as save_numpy

    assert [int(x) for x in a] != [int(y) for y in b]  # the oracle: other values
    save_numpy({"w": a}, str(tmp_path / "a.safetensors"))
    save_numpy({"w": b}, str(tmp_path / "b.safetensors"))
    report = nandoctor.diff(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert report.exit_code == 1 and report.tensors[0].status in ("cast", "changed"), report.tensors[0]
    save_numpy({"w": b.astype(a.dtype) if b.dtype.kind == "f" else a}, str(tmp_path / "c.safetensors"))
    same = nandoctor.diff(tmp_path / "a.safetensors", tmp_path / "c.safetensors")
    assert same.tensors[0].status in ("identical", "changed")  # (the same dtype: bytes decide)


def test_a_side_that_cannot_be_read_is_said_first_not_under_a_row_per_tensor(tmp_path):
    """A new user's trial: `nandoctor diff notes.txt run/checkpoint-200` printed 195 'not compared' rows, then the one
    line saying why. The cause comes first; the rows are counted (--all lists them)."""
    from tests.conftest import DEMO_RUN, run_cli

    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    shown = run_cli("diff", tmp_path / "notes.txt", DEMO_RUN / "checkpoint-200")
    assert shown.exit_code == 3
    lines = shown.output.splitlines()
    cause = next(i for i, line in enumerate(lines) if "not a checkpoint format nandoctor knows" in line)
    assert cause < 6 and "195 tensors not compared (--all lists them)" in shown.output
    assert not any("transformer.h.0.ln_1.weight" in line for line in lines)
    every = run_cli("diff", tmp_path / "notes.txt", DEMO_RUN / "checkpoint-200", "--all")
    assert sum("not compared: A's" in line for line in every.output.splitlines()) == 195


def test_a_diff_that_cannot_start_still_prints_one_json_object(tmp_path: Path) -> None:
    """`diff --json > d.json` of a missing side (or a run folder) left an empty file where `scan --json` and
    `repair --json` always print one object (a review's CI step): the diff schema with the problem, and exit 3."""
    from tests.conftest import DEMO_RUN, run_cli

    for a in (tmp_path / "missing", DEMO_RUN):
        result = run_cli("diff", a, tmp_path / "other", "--json")
        assert result.exit_code == 3
        data = json.loads(result.stdout)
        assert data["summary"]["exit_code"] == 3 and data["tensors"] == [] and data["problems"][0]["message"]


def test_tensors_paired_across_a_wrappers_prefix_are_said(tmp_path: Path) -> None:
    """A DataParallel save (``module.``) against a torch.compile'd model's (``_orig_mod.``): the values pair up and
    compare SAME, but load_state_dict of one into the other's model fails; a trial's diff said SAME and nothing else."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    wrapped, compiled = torch.nn.DataParallel(model), torch.compile(model)
    torch.save(wrapped.state_dict(), tmp_path / "ddp.pt")
    torch.save(compiled.state_dict(), tmp_path / "compiled.pt")
    with pytest.raises(RuntimeError, match="Missing key"):  # the oracle
        compiled.load_state_dict(torch.load(tmp_path / "ddp.pt"))
    report = nandoctor.diff(tmp_path / "ddp.pt", tmp_path / "compiled.pt")
    assert report.counts["identical"] == 4 and report.exit_code == 0
    said = [n for n in report.notes if "paired across names" in n]
    assert len(said) == 1 and "4 tensors" in said[0] and "module.0.weight ↔ _orig_mod.0.weight" in said[0], report.notes
    assert not any("paired across names" in n for n in nandoctor.diff(tmp_path / "ddp.pt", tmp_path / "ddp.pt").notes)


@pytest.mark.parametrize("wide, narrow_dtype", [(1.00390625, torch.bfloat16), (65520.0, torch.float16),
                                                (1.0 + 2.0**-11, torch.float16), (2.0**-9 * (1 + 2.0**-8), torch.bfloat16)])
def test_a_tie_is_a_rounding_only_to_its_even_neighbour(tmp_path: Path, wide: float, narrow_dtype) -> None:
    """Exactly half an ulp between the two neighbours: torch's cast takes the even one (1.00390625 → BF16 1.0, 65520 →
    F16 Inf). An adversarial round's diff called the odd neighbour "its rounding" too; now only torch's own cast is."""
    wide_t = torch.tensor([wide])
    cast = wide_t.to(narrow_dtype)  # the oracle: torch's rounding
    ulp = torch.finfo(narrow_dtype).eps * 2.0 ** (int(np.floor(np.log2(wide))))
    odd = torch.tensor([wide + ulp / 2 if float(cast) < wide else wide - ulp / 2]).to(narrow_dtype)
    save_file({"w": wide_t}, str(tmp_path / "wide.safetensors"))
    for name, narrow, expected in (("even", cast, "cast"), ("odd", odd, "changed")):
        if not torch.isfinite(narrow).all():
            continue  # (65520's even neighbour is Inf: a value that overflowed is a change, counted elsewhere)
        save_file({"w": narrow}, str(tmp_path / f"{name}.safetensors"))
        report = nandoctor.diff(tmp_path / f"{name}.safetensors", tmp_path / "wide.safetensors")
        assert report.tensors[0].status == expected, (name, float(narrow), report.tensors[0].status)
