"""Scanning GGUF files: NaN/Inf in float tensors and in the scale fields of quantized blocks, counted exactly."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import nandoctor
from nandoctor.engine import scan
from nandoctor.model import ScanReport, TensorResult
from nandoctor.report.json_report import report_to_json
from tests.gguf_files import LAYOUTS, blocks, gguf, write

NAN, INF = float("nan"), float("inf")


def _by_name(report: ScanReport) -> dict[str, TensorResult]:
    return {t.name: t for t in report.tensors}


def _planted(path: Path, *, big_endian: bool = False, seed: int = 0) -> Path:
    e = ">" if big_endian else "<"
    f16 = np.full((8, 32), 0.5, np.float16)  # ne = (32, 8): element (i0, i1) is f16[i1, i0]
    f16[2, 5], f16[6, 1], f16[7, 31] = NAN, INF, -INF
    f32 = np.ones(64, np.float32)
    f32[[3, 9]] = NAN
    return write(
        path,
        [
            ("token_embd.weight", f32, None),
            ("blk.0.attn_q.weight", f16, None),
            ("blk.0.attn_k.weight", blocks("Q8_0", 64, seed=seed, bad={(3, 0): NAN, (17, 0): NAN, (40, 0): INF}, endian=e), "Q8_0"),
            ("blk.1.ffn_up.weight", blocks("Q4_0", 32, seed=seed + 1, bad={(9, 0): -INF}, endian=e), "Q4_0"),
            # Q4_K: d and dmin both NaN in block 2 (two fields), dmin -Inf in block 5.
            ("blk.1.ffn_down.weight", blocks("Q4_K", 8, seed=seed + 2, bad={(2, 0): NAN, (2, 1): NAN, (5, 1): -INF}, endian=e), "Q4_K"),
            ("blk.2.ffn_gate.weight", blocks("Q6_K", 8, seed=seed + 3, bad={(7, 0): INF}, endian=e), "Q6_K"),
            ("blk.2.attn_v.weight", blocks("Q8_0", 64, seed=seed + 4, endian=e), "Q8_0"),  # clean
        ],
        block_count=3,
        big_endian=big_endian,
        shapes={
            "blk.0.attn_k.weight": (256, 8),
            "blk.1.ffn_up.weight": (128, 8),
            "blk.1.ffn_down.weight": (512, 4),
            "blk.2.ffn_gate.weight": (1024, 2),
            "blk.2.attn_v.weight": (64, 32),
        },
    )


def test_planted_counts_are_exact(tmp_path: Path) -> None:
    report = scan(_planted(tmp_path / "m.gguf"), device="cpu")
    t = _by_name(report)
    assert report.exit_code == 1 and report.complete
    assert (t["token_embd.weight"].nan, t["token_embd.weight"].first_bad) == (2, 3)
    q = t["blk.0.attn_q.weight"]
    assert q.counts.nan == 1 and q.posinf == 1 and q.neginf == 1
    assert q.first_bad == 2 * 32 + 5 and q.first_bad_coords == (5, 2)  # ne0 first: (i0, i1)
    k = t["blk.0.attn_k.weight"]  # a Q8_0 block with a NaN scale counts 1, not 32
    assert (k.nan, k.posinf, k.neginf) == (2, 1, 0)
    assert k.first_bad_block == 3 and k.first_bad == 3 * 32 and k.first_bad_coords == (96, 0)
    assert k.fraction == pytest.approx(3 / 64)
    assert (t["blk.1.ffn_up.weight"].neginf, t["blk.1.ffn_up.weight"].first_bad_block) == (1, 9)
    down = t["blk.1.ffn_down.weight"]
    assert (down.nan, down.posinf, down.neginf) == (2, 0, 1)
    assert down.first_bad_block == 2 and down.first_bad_coords == (0, 1)  # block 2 of rows of 2 blocks
    assert down.fraction == pytest.approx(3 / 16)
    gate = t["blk.2.ffn_gate.weight"]
    assert (gate.posinf, gate.first_bad_block, gate.first_bad_coords) == (1, 7, (768, 1))
    assert t["blk.2.attn_v.weight"].nonfinite == 0 and not t["blk.2.attn_v.weight"].findings
    layers = {s.layer: s for s in report.layers}
    assert (layers["blk.1"].nan, layers["blk.1"].neginf) == (2, 2)
    assert (report.nan, report.posinf, report.neginf) == (2 + 1 + 2 + 2, 1 + 1 + 1, 1 + 1 + 1)


def test_payload_bits_are_never_counted(tmp_path: Path) -> None:
    """The random payload holds many fp16-NaN-shaped lanes; only the scale fields may be counted."""
    raw = blocks("Q8_0", 64, seed=4)
    lanes = raw[:, 2:].copy().view(np.uint16)
    assert np.count_nonzero((lanes & 0x7C00) == 0x7C00) > 10  # the precondition that makes this test bite
    report = scan(_planted(tmp_path / "m.gguf"), device="cpu")
    assert _by_name(report)["blk.2.attn_v.weight"].nonfinite == 0


@pytest.mark.parametrize("name", ["blk.0.attn_k.weight", "blk.1.ffn_up.weight", "blk.1.ffn_down.weight", "blk.2.ffn_gate.weight"])
def test_counts_match_gguf_py_blocks(tmp_path: Path, name: str) -> None:
    """llama.cpp's reader hands out the raw blocks: their scale fields, decoded by numpy, give the same counts."""
    path = _planted(tmp_path / "m.gguf", seed=5)
    oracle = {t.name: t for t in gguf.GGUFReader(str(path), "r").tensors}[name]
    _, size, offset, count, dtype = LAYOUTS[oracle.tensor_type.name]
    rows = np.asarray(oracle.data).reshape(-1, size)
    scales = rows[:, offset : offset + 2 * count].copy().view("<f2").astype(np.float32)
    got = _by_name(scan(path, device="cpu"))[name]
    assert got.nan == int(np.isnan(scales).sum())
    assert got.posinf == int(np.isposinf(scales).sum()) and got.neginf == int(np.isneginf(scales).sum())


def test_big_endian_file_counts_the_same(tmp_path: Path) -> None:
    little = scan(_planted(tmp_path / "le.gguf"), device="cpu")
    big = scan(_planted(tmp_path / "be.gguf", big_endian=True), device="cpu")
    assert any("big-endian" in n for n in big.notes)
    key = [(t.name, t.nan, t.posinf, t.neginf, t.first_bad) for t in little.tensors]
    assert [(t.name, t.nan, t.posinf, t.neginf, t.first_bad) for t in big.tensors] == key


def test_json_says_counts_are_of_scale_fields(tmp_path: Path) -> None:
    report = scan(_planted(tmp_path / "m.gguf"), device="cpu")
    out = json.loads(json.dumps(report_to_json(report)))
    tensors = {t["name"]: t for t in out["tensors"]}
    down = tensors["blk.1.ffn_down.weight"]
    assert down["counts_of"] == "scale_fields" and down["order"] == "F" and down["dtype"] == "Q4_K"
    assert down["quantization"] == {
        "type": "Q4_K", "block_elements": 256, "block_bytes": 144, "blocks": 8, "scale_fields": 16,
        "scale_dtype": "F16", "fraction": 3 / 16,
    }
    assert down["first_bad"] == {"index": 512, "coords": [0, 1], "block": 2}
    assert tensors["blk.0.attn_q.weight"]["counts_of"] == "elements" and tensors["blk.0.attn_q.weight"]["quantization"] is None


def test_moe_counted_per_expert(tmp_path: Path) -> None:
    # ne = (64, 8, 4): 4 experts of 8 rows of 2 Q8_0 blocks, 16 blocks each.
    bad = {(16 + 3, 0): NAN, (16 + 9, 0): INF, (48 + 15, 0): NAN}
    path = write(
        tmp_path / "moe.gguf",
        [("blk.5.ffn_down_exps.weight", blocks("Q8_0", 64, bad=bad), "Q8_0"),
         ("blk.5.ffn_up_exps.weight", blocks("Q8_0", 64, seed=3), "Q8_0")],
        arch="qwen3moe", block_count=6, expert_count=4,
        shapes={"blk.5.ffn_down_exps.weight": (64, 8, 4), "blk.5.ffn_up_exps.weight": (64, 8, 4)},
    )
    report = scan(path, device="cpu")
    t = _by_name(report)["blk.5.ffn_down_exps.weight"]
    assert t.ref.experts == 4 and t.experts == (0, 2, 0, 1)
    assert t.first_bad_block == 19 and t.first_bad_coords == (32, 1, 1)  # expert 1, row 1, second block
    assert _by_name(report)["blk.5.ffn_up_exps.weight"].experts == ()
    assert report_to_json(report)["tensors"][0]["experts"] == [0, 2, 0, 1]


def test_iq1m_packed_scale_and_mxfp4_e8m0(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    iq1m = rng.integers(0, 256, (4, 56), dtype=np.uint8)
    sc = iq1m[:, 48:56].copy().view("<u2")
    scale = np.array([0.01, NAN, 0.02, -INF], np.float16).view(np.uint16)
    for k in range(4):  # the fp16 scale lives in the top nibble of each of the four sub-scales
        sc[:, k] = (sc[:, k] & 0x0FFF) | (((scale >> (4 * k)) & 0xF) << 12)
    iq1m[:, 48:56] = sc.view(np.uint8)
    mxfp4 = blocks("MXFP4", 8, bad={(6, 0): 0xFF})
    path = write(tmp_path / "iq.gguf", [("blk.0.attn_q.weight", iq1m, "IQ1_M"), ("blk.0.attn_k.weight", mxfp4, "MXFP4")],
                 shapes={"blk.0.attn_q.weight": (256, 4), "blk.0.attn_k.weight": (64, 4)})
    t = _by_name(scan(path, device="cpu"))
    assert (t["blk.0.attn_q.weight"].nan, t["blk.0.attn_q.weight"].neginf, t["blk.0.attn_q.weight"].first_bad_block) == (1, 1, 1)
    assert (t["blk.0.attn_k.weight"].nan, t["blk.0.attn_k.weight"].first_bad_block) == (1, 6)


def test_outlier_scale_is_a_health_finding(tmp_path: Path) -> None:
    """A bit flip that makes one fp16 scale 100 among scales of ~0.01: finite, but an outlier (a scale of 60000
    makes weights past the 1e5 ceiling: exploded, and only that)."""
    huge = blocks("Q8_0", 4096, bad={(3000, 0): 60000.0})
    path = write(tmp_path / "e.gguf", [("blk.0.ffn_down.weight", huge, "Q8_0")], shapes={"blk.0.ffn_down.weight": (4096, 32)})
    assert scan(path, device="cpu").tensors[0].findings == ("exploded",)
    raw = blocks("Q8_0", 4096, bad={(3000, 0): 100.0})
    path = write(tmp_path / "o.gguf", [("blk.0.ffn_down.weight", raw, "Q8_0")], shapes={"blk.0.ffn_down.weight": (4096, 32)})
    report = scan(path, device="cpu")
    (t,) = report.tensors
    assert t.nonfinite == 0 and "outlier" in t.findings and report.exit_code == 1
    assert t.outliers is not None and t.outliers.count == 1 and t.outliers.first == 3000 * 32
    assert t.outliers.worst == 100.0 and t.findings == ("outlier",)


# ---------------------------------------------------------------------------------------------
# Repair


def test_repair_patches_exactly_the_bad_tensors(tmp_path: Path) -> None:
    target = _planted(tmp_path / "bad.gguf")
    donor = write(
        tmp_path / "donor.gguf",
        [
            ("token_embd.weight", np.full(64, 2.0, np.float32), None),
            ("blk.0.attn_q.weight", np.full((8, 32), 0.25, np.float16), None),
            ("blk.0.attn_k.weight", blocks("Q8_0", 64, seed=11), "Q8_0"),
            ("blk.1.ffn_up.weight", blocks("Q4_0", 32, seed=12), "Q4_0"),
            ("blk.1.ffn_down.weight", blocks("Q4_K", 8, seed=13), "Q4_K"),
            ("blk.2.ffn_gate.weight", blocks("Q6_K", 8, seed=14), "Q6_K"),
            ("blk.2.attn_v.weight", blocks("Q8_0", 64, seed=15), "Q8_0"),  # differs, but the target's is clean
        ],
        block_count=3,
        shapes={"blk.0.attn_k.weight": (256, 8), "blk.1.ffn_up.weight": (128, 8), "blk.1.ffn_down.weight": (512, 4),
                "blk.2.ffn_gate.weight": (1024, 2), "blk.2.attn_v.weight": (64, 32)},
    )
    result = nandoctor.repair(target, donor, out=tmp_path / "fixed", allow_diverged=True)
    fixed = tmp_path / "fixed" / "bad.gguf"
    before, after, source = target.read_bytes(), fixed.read_bytes(), donor.read_bytes()
    refs = {t.name: t.ref for t in scan(target, device="cpu").tensors}
    restored = {r.name for r in result.plan.restorations}
    assert restored == set(refs) - {"blk.2.attn_v.weight"}
    expected = bytearray(before)
    for name in restored:
        r = refs[name].region
        expected[r.offset : r.offset + r.nbytes] = source[r.offset : r.offset + r.nbytes]
    assert after == bytes(expected)  # header, padding and the clean tensor untouched; the rest the donor's
    assert scan(fixed, device="cpu").exit_code == 0
    assert (tmp_path / "fixed" / "nandoctor-repair.json").is_file()


def test_repair_refuses_a_donor_of_another_type(tmp_path: Path) -> None:
    target = write(tmp_path / "t.gguf", [("blk.0.attn_q.weight", blocks("Q8_0", 8, bad={(1, 0): NAN}), "Q8_0")],
                   shapes={"blk.0.attn_q.weight": (256, 1)})
    donor = write(tmp_path / "d.gguf", [("blk.0.attn_q.weight", blocks("Q4_0", 8), "Q4_0")],
                  shapes={"blk.0.attn_q.weight": (256, 1)})
    with pytest.raises(nandoctor.errors.UnrestorableError, match="1 tensor"):
        nandoctor.repair(target, donor, out=tmp_path / "out")
    assert not os.path.exists(tmp_path / "out")
    plan = nandoctor.repair(target, donor, dry_run=True).plan
    assert "dtype Q4_0, the target's is Q8_0" in plan.unrestorable[0].reasons[0]


def test_repair_refuses_a_donor_with_nan_scales(tmp_path: Path) -> None:
    shapes = {"blk.0.attn_q.weight": (256, 1)}
    target = write(tmp_path / "t.gguf", [("blk.0.attn_q.weight", blocks("Q4_K", 1, bad={(0, 1): NAN}), "Q4_K")], shapes=shapes)
    donor = write(tmp_path / "d.gguf", [("blk.0.attn_q.weight", blocks("Q4_K", 1, seed=2, bad={(0, 0): INF}), "Q4_K")], shapes=shapes)
    plan = nandoctor.repair(target, donor, dry_run=True).plan
    assert "holds 1 NaN/Inf values itself" in plan.unrestorable[0].reasons[0]


@pytest.mark.parametrize(("old", "new", "refused"), [
    (b"general.name", b"general.n\xffme", True),  # a key gguf's reader cannot decode
    (b"tiny", b"ti\xff\xfe", False),  # a string value: gguf's reader keeps its bytes
])
def test_a_key_name_that_is_not_utf8_is_refused_as_ggufs_reader_refuses_it(tmp_path, old, new, refused):
    """A fuzzer's find: gguf.GGUFReader raises UnicodeDecodeError on a key name that is not UTF-8 while the
    scan said CLEAN; a damaged key name is a key the loader cannot find."""
    gguf_module = pytest.importorskip("gguf")
    path = tmp_path / "m.gguf"
    writer = gguf_module.GGUFWriter(str(path), "llama")
    writer.add_string("general.name", "tiny")
    writer.add_tensor("token_embd.weight", np.ones((4, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = path.read_bytes()
    assert data.count(old) == 1
    path.write_bytes(data.replace(old, new))
    try:
        gguf_module.GGUFReader(str(path))
        reader_refuses = False
    except UnicodeDecodeError:
        reader_refuses = True
    assert reader_refuses == refused
    report = scan(path)
    assert bool(report.errors) == refused and report.exit_code == (3 if refused else 0)
    if refused:
        assert "is not UTF-8" in report.errors[0].message


def test_repair_across_gguf_and_safetensors_lines_up_the_dimension_orders(tmp_path: Path) -> None:
    """A review: GGUF lists ne fastest first, safetensors last; compared as written, a safetensors donor holding the
    transposed matrix ([8, 4] against ne [8, 4]) was copied byte for byte into the GGUF target and read "verified
    CLEAN", while the right one ([4, 8]) was refused. Now the C-order shapes must agree, both ways round."""
    from safetensors.numpy import load_file, save_file

    true = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    poisoned = true.copy()
    poisoned[1, 2] = np.nan
    target = write(tmp_path / "m.gguf", [("w.weight", poisoned, None)])  # ne [8, 4]
    (tmp_path / "right").mkdir()
    (tmp_path / "transposed").mkdir()
    save_file({"w.weight": true}, str(tmp_path / "right" / "model.safetensors"))
    save_file({"w.weight": np.ascontiguousarray(true.T)}, str(tmp_path / "transposed" / "model.safetensors"))
    with pytest.raises(nandoctor.errors.UnrestorableError):
        nandoctor.repair(target, tmp_path / "transposed", out=tmp_path / "out-t")
    plan = nandoctor.repair(target, tmp_path / "transposed", dry_run=True).plan
    assert "shape [8, 4], the target's is ne [8, 4]" in plan.unrestorable[0].reasons[0]
    nandoctor.repair(target, tmp_path / "right", out=tmp_path / "out")
    restored = [t for t in gguf.GGUFReader(str(tmp_path / "out" / "m.gguf")).tensors if t.name == "w.weight"][0]
    assert np.array_equal(np.asarray(restored.data).reshape(4, 8), true)  # the oracle: gguf's own reader
    # the other way round: a GGUF donor into a safetensors target
    (tmp_path / "st").mkdir()
    save_file({"w.weight": poisoned}, str(tmp_path / "st" / "model.safetensors"))
    donor = write(tmp_path / "donor.gguf", [("w.weight", true, None)])
    nandoctor.repair(tmp_path / "st", donor, out=tmp_path / "st-out")
    assert np.array_equal(load_file(str(tmp_path / "st-out" / "model.safetensors"))["w.weight"], true)


def test_a_big_endian_block_quantized_donor_is_refused_with_its_reason(tmp_path: Path) -> None:
    """A review: a little-endian Q8_0 target repaired from a big-endian GGUF donor (its fp16 scales swapped) was an
    internal error (KeyError 'Q8_0'): blocks mix fields of several widths, which nandoctor does not convert."""
    shapes = {"blk.0.attn_q.weight": (256, 1)}
    target = write(tmp_path / "t.gguf", [("blk.0.attn_q.weight", blocks("Q8_0", 8, bad={(1, 0): NAN}), "Q8_0")],
                   shapes=shapes)
    donor = write(tmp_path / "d.gguf", [("blk.0.attn_q.weight", blocks("Q8_0", 8, endian=">"), "Q8_0")],
                  shapes=shapes, big_endian=True)
    assert scan(donor, device="cpu").exit_code == 0
    with pytest.raises(nandoctor.errors.UnrestorableError):
        nandoctor.repair(target, donor, out=tmp_path / "out", allow_diverged=True)
    assert not os.path.exists(tmp_path / "out")
    plan = nandoctor.repair(target, donor, dry_run=True, allow_diverged=True).plan
    assert "stored big-endian, the target little-endian: its blocks are not converted" in plan.unrestorable[0].reasons[0]


def _llama_gguf(path: Path, *, heads: int = 2, kv: int = 2, tokenizer: str = "llama") -> Path:
    """A tiny llama GGUF written by gguf's own writer, its tensors at the shapes its keys give."""
    embed, ff, vocab, head = 32, 64, 16, 32 // heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(embed)
    writer.add_block_count(1)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head)
    writer.add_tokenizer_model(tokenizer)
    writer.add_token_list([f"t{i}".encode() for i in range(vocab)])
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_types([1] * vocab)
    rng = np.random.default_rng(0)
    for name, ne in [("token_embd.weight", [embed, vocab]), ("output_norm.weight", [embed]),
                     ("output.weight", [embed, vocab]), ("blk.0.attn_norm.weight", [embed]),
                     ("blk.0.ffn_norm.weight", [embed]), ("blk.0.attn_q.weight", [embed, heads * head]),
                     ("blk.0.attn_k.weight", [embed, kv * head]), ("blk.0.attn_v.weight", [embed, kv * head]),
                     ("blk.0.attn_output.weight", [heads * head, embed]), ("blk.0.ffn_gate.weight", [embed, ff]),
                     ("blk.0.ffn_up.weight", [embed, ff]), ("blk.0.ffn_down.weight", [ff, embed])]:
        writer.add_tensor(name, (rng.standard_normal(tuple(reversed(ne))) * 0.02).astype(np.float32))
    from tests.gguf_files import finish

    finish(writer)
    return path


@pytest.mark.parametrize("heads, kv, tokenizer, expected", [
    (2, 2, "llama", None), (4, 2, "gpt2", None), (4, 1, "llama", None),
    (4, 3, "llama", "config"),  # (a review: generate raised "size 4 vs 3"; CLEAN before)
    (2, 4, "llama", "config"),
    (2, 2, "lama", "unloadable"),  # (AutoTokenizer cannot build it; llama.cpp: "unknown tokenizer")
])
def test_gguf_heads_and_tokenizer_model_that_the_loaders_refuse(tmp_path, heads, kv, tokenizer, expected):
    path = _llama_gguf(tmp_path / "m.gguf", heads=heads, kv=kv, tokenizer=tokenizer)
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    try:  # the oracle: transformers' GGUF loader, its tokenizer and a generate
        tok = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
        model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf")
        model.generate(torch.tensor([[1, 3, 5]]), max_new_tokens=2, do_sample=False)
        del tok
        works = True
    except Exception:  # noqa: BLE001  (whatever it raises: it does not work)
        works = False
    assert works is (expected is None)
    report = scan(path, device="cpu")
    assert [p.kind for p in report.errors] == ([] if expected is None else [expected]), [p.message for p in report.errors]
