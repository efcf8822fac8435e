"""A GGUF file's architecture and tensor names, held to gguf-py's tables (readers/gguf_names.py).

Files written by gguf's own GGUFWriter, named as convert_hf_to_gguf names a Llama's tensors; transformers' GGUF loader
is the oracle where it runs (it reports a lost tensor as missing and initialises it at random, and refuses an
unknown architecture); llama.cpp's loader refuses all three ("missing tensor", "wrong number of tensors", "unknown
model architecture").
"""

from __future__ import annotations

from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
gguf = pytest.importorskip("gguf")

from tests.gguf_files import finish  # noqa: E402

import nandoctor  # noqa: E402
from nandoctor.readers import gguf_names  # noqa: E402

VOCAB, HIDDEN, FFN, BLOCKS = 64, 64, 128, 5


def _write(path: Path, *, arch: str = "llama", rename: dict[str, str] | None = None, drop: tuple[str, ...] = (),
           extra: dict[str, tuple[int, ...]] | None = None, split_count: int | None = None,
           rope_base: float | None = None, kv=None) -> Path:
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), arch)
    if kv is not None:  # (key/values of other types, written first: the writer keeps them in order)
        kv(writer)
    if split_count is not None:  # (as gguf-split writes it into each of its files)
        writer.add_uint16("split.no", 0)
        writer.add_uint16("split.count", split_count)
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(BLOCKS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(4)
    writer.add_head_count_kv(4)
    if kv is None:
        writer.add_layer_norm_rms_eps(1e-5)
    if rope_base is not None:
        writer.add_rope_freq_base(rope_base)
    writer.add_rope_dimension_count(HIDDEN // 4)
    writer.add_vocab_size(VOCAB)
    writer.add_tokenizer_model("llama")
    writer.add_token_list([f"<t{i}>" for i in range(VOCAB)])
    writer.add_token_scores([0.0] * VOCAB)
    writer.add_token_types([1] * VOCAB)
    shapes = {"token_embd.weight": (VOCAB, HIDDEN), "output_norm.weight": (HIDDEN,), "output.weight": (VOCAB, HIDDEN)}
    for b in range(BLOCKS):
        shapes.update({f"blk.{b}.attn_norm.weight": (HIDDEN,), f"blk.{b}.attn_q.weight": (HIDDEN, HIDDEN),
                       f"blk.{b}.attn_k.weight": (HIDDEN, HIDDEN), f"blk.{b}.attn_v.weight": (HIDDEN, HIDDEN),
                       f"blk.{b}.attn_output.weight": (HIDDEN, HIDDEN), f"blk.{b}.ffn_norm.weight": (HIDDEN,),
                       f"blk.{b}.ffn_gate.weight": (FFN, HIDDEN), f"blk.{b}.ffn_up.weight": (FFN, HIDDEN),
                       f"blk.{b}.ffn_down.weight": (HIDDEN, FFN)})
    shapes.update(extra or {})
    for name, shape in shapes.items():
        if name in drop:
            continue
        values = np.ones(shape) if name.endswith("norm.weight") else rng.standard_normal(shape) * 0.02
        writer.add_tensor((rename or {}).get(name, name), values.astype(np.float32))
    finish(writer)
    return path


def _transformers_loads(path: Path) -> dict:
    transformers = pytest.importorskip("transformers")
    _, info = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                                output_loading_info=True)
    return info


def test_a_healthy_file_has_no_name_problem_and_loads(tmp_path):
    path = _write(tmp_path / "model.gguf")
    assert _transformers_loads(path)["missing_keys"] == set()
    report = nandoctor.scan(path)
    assert report.exit_code == 0 and report.errors == () and not any("tensor name" in n for n in report.notes)


@pytest.mark.parametrize("was, now, lost", [
    ("blk.1.attn_q.weight", "blk.1.attn_a.weight", "model.layers.1.self_attn.q_proj.weight"),  # q ^ 0x10
    ("token_embd.weight", "token_ambd.weight", "model.embed_tokens.weight"),  # e ^ 0x04
])
def test_a_name_one_flipped_bit_from_a_lost_tensor_is_a_names_problem(tmp_path, was, now, lost):
    """A trial: both were CLEAN, while transformers initialised the lost tensor at random."""
    path = _write(tmp_path / "model.gguf", rename={was: now})
    assert lost in _transformers_loads(path)["missing_keys"]  # the oracle
    report = nandoctor.scan(path)
    assert report.exit_code == 3 and [p.kind for p in report.errors] == ["names"]
    assert (f"1 tensor name(s) one character from a tensor llama needs that the file lacks: {now!r} (where {was!r} is "
            "missing)") in report.errors[0].message


def test_a_block_number_past_the_block_count_is_not_loadable(tmp_path):
    """blk.1.ffn_down stored as blk.3 (1 ^ 2) in a three-block model: a note before, exit 0."""
    path = _write(tmp_path / "model.gguf", rename={"blk.1.ffn_down.weight": "blk.5.ffn_down.weight"})
    report = nandoctor.scan(path)
    assert report.exit_code == 3 and [p.kind for p in report.errors] == ["unloadable", "unloadable"]
    assert "holds tensors of blk.5, but its llama.block_count is 5" in report.errors[0].message
    assert "missing: 'blk.1.ffn_down.weight'" in report.errors[1].message  # (where it was)


def test_a_tensor_the_other_blocks_hold_missing_from_one_is_not_loadable(tmp_path):
    """A trial: blk.1 without its attn_q.weight was CLEAN, while transformers initialised it at random."""
    path = _write(tmp_path / "model.gguf", drop=("blk.1.attn_q.weight",))
    assert "model.layers.1.self_attn.q_proj.weight" in _transformers_loads(path)["missing_keys"]  # the oracle
    report = nandoctor.scan(path)
    assert report.exit_code == 3 and [p.kind for p in report.errors] == ["unloadable"]
    assert report.errors[0].message.startswith("1 tensor the other blocks hold is missing: 'blk.1.attn_q.weight';")


def test_a_block_holding_no_tensor_is_not_loadable(tmp_path):
    """An adversarial trial: block_count 4 with blk.3 absent was CLEAN, while transformers initialised every tensor
    of that layer at random."""
    layer = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
    path = _write(tmp_path / "model.gguf", drop=tuple(f"blk.4.{t}.weight" for t in layer))
    assert {k for k in _transformers_loads(path)["missing_keys"] if k.startswith("model.layers.4.")}  # the oracle
    report = nandoctor.scan(path)
    assert report.exit_code == 3 and [p.kind for p in report.errors] == ["unloadable"]
    assert report.errors[0].message.startswith("blk.4 holds no tensor, but its llama.block_count is 5")


def test_blocks_that_lack_a_tensor_by_design_are_no_loss(tmp_path):
    """False-alarm trials: ModernBERT's block 0 has no attention norm (transformers: nn.Identity); Gemma 4's
    full-attention layers have no attn_v with attention_k_eq_v, MiMo-V2's no attention sinks (every sixth layer:
    several blocks alike); llama.cpp loads each."""
    first = _write(tmp_path / "first.gguf", drop=("blk.0.attn_norm.weight",))
    assert nandoctor.scan(first).errors == ()
    pattern = _write(tmp_path / "pattern.gguf", drop=("blk.1.attn_v.weight", "blk.3.attn_v.weight"))
    assert nandoctor.scan(pattern).errors == ()


def _second_split(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    """The second file of a two-file gguf-split set, as gguf-split writes it (split.no 1, no model keys)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint16("split.no", 1)
    writer.add_uint16("split.count", 2)
    for name, values in tensors.items():
        writer.add_tensor(name, values.astype(np.float32))
    finish(writer)
    return path


def test_a_gguf_split_set_is_scanned_whole_from_any_of_its_files(tmp_path):
    """llama.cpp is given a set's first file and loads every file its name counts: an adversarial round's first file
    passed CLEAN while the NaN lay in the second. A file of a set is scanned as the set (gguf-split cuts the tensors
    in order, so a block may end in the next file: no loss), a missing file is exit 3."""
    first = _write(tmp_path / "model-00001-of-00002.gguf", drop=("blk.1.attn_q.weight", "output.weight"), split_count=2)
    output = np.random.default_rng(1).standard_normal((VOCAB, HIDDEN)) * 0.02
    output[3, :5] = np.nan
    second = _second_split(tmp_path / "model-00002-of-00002.gguf", {
        "blk.1.attn_q.weight": np.random.default_rng(2).standard_normal((HIDDEN, HIDDEN)) * 0.02, "output.weight": output})
    loaded = {t.name: np.asarray(t.data) for f in (first, second) for t in gguf.GGUFReader(str(f)).tensors}
    assert sum(int(np.isnan(v).sum()) for v in loaded.values()) == 5  # the oracle: gguf's own reader over the set
    for path in (first, second):
        report = nandoctor.scan(path)
        assert report.exit_code == 1 and report.nan == 5 and report.errors == ()
        assert len(report.tensors) == len(loaded) and "shard_of" not in report.extra
    from nandoctor.hints import repair_command_for

    assert repair_command_for(str(first)).startswith(f"nandoctor repair {tmp_path} ")  # (the set's folder)
    with pytest.raises(nandoctor.RepairRefusedError, match="repair the folder that holds the set"):
        nandoctor.repair(first, tmp_path, tmp_path.parent / "out")
    assert not (tmp_path.parent / "out").exists()
    second.unlink()
    lost = nandoctor.scan(first)
    assert lost.exit_code == 3 and "model-00002-of-00002.gguf" in lost.errors[0].path


def test_a_split_file_not_named_as_its_set_is_not_loadable(tmp_path):
    """split.count > 1 in a file not named <prefix>-0000K-of-0000N.gguf for its split.no: llama.cpp refuses it
    ("invalid split file name"), whatever its tensors hold."""
    path = _write(tmp_path / "model.gguf", split_count=2)
    report = nandoctor.scan(path)
    assert report.exit_code == 3 and report.errors[0].kind == "unloadable"
    assert "-00001-of-00002.gguf" in report.errors[0].message


def test_blocks_that_differ_by_design_are_no_loss(tmp_path):
    """T5's first block holds one tensor more than the others (its relative attention bias); DeepSeek's first layers
    are dense where the rest are MoE (several tensors apart): neither is a missing tensor."""
    path = _write(tmp_path / "t5like.gguf", extra={"blk.0.attn_rel_b.weight": (4, 32)})
    assert nandoctor.scan(path).errors == ()
    dense_first = ("blk.0.ffn_gate.weight", "blk.0.ffn_up.weight", "blk.0.ffn_down.weight")
    moe = {f"blk.0.{n}": (4, HIDDEN) for n in ("ffn_gate_inp.weight", "ffn_gate_shexp.weight")}
    path = _write(tmp_path / "mixed.gguf", drop=dense_first, extra=moe)
    assert nandoctor.scan(path).errors == ()
    full = [f"blk.{n}.{t}" for n in range(5) for t in "ab"]
    assert gguf_names._lost_in_blocks(gguf_names._blocks([n for n in full if n != "blk.2.b"], ""), "") == ["blk.2.b"]
    assert gguf_names._lost_in_blocks(gguf_names._blocks([n for n in full if n != "blk.4.b"], ""), "") == []  # (the last block: by design?)
    assert gguf_names._lost_in_blocks(gguf_names._blocks(["blk.0.a", "blk.0.b", "blk.1.a"], ""), "") == []  # one against one: no majority


def test_an_architecture_one_character_from_a_known_one_is_not_loadable_and_an_unknown_one_a_note(tmp_path):
    path = _write(tmp_path / "model.gguf", arch="lmama")
    with pytest.raises(ValueError, match="lmama"):  # the oracle: transformers refuses it
        _transformers_loads(path)
    report = nandoctor.scan(path)
    assert report.exit_code == 3 and [p.kind for p in report.errors] == ["unloadable"]
    assert "its general.architecture is 'lmama', which is no architecture llama.cpp knows" in report.errors[0].message
    assert "'llama' is one character away" in report.errors[0].message
    novel = nandoctor.scan(_write(tmp_path / "novel.gguf", arch="zebrallm9"))
    assert novel.exit_code == 0 and any("architecture 'zebrallm9' is not in gguf" in n for n in novel.notes)


def test_the_table_is_gguf_pys_own():
    """gguf_tensor_names.json is what `python -m nandoctor.readers.gguf_names` writes from the installed gguf: every
    architecture's templates as gguf.constants has them (a newer gguf adds some: regenerate)."""
    from importlib.metadata import version as installed

    from gguf import constants

    version, archs = gguf_names._tables()
    for arch, tensors in constants.MODEL_TENSORS.items():
        name = constants.MODEL_ARCH_NAMES.get(arch)
        if name in archs:
            assert {constants.TENSOR_NAMES[t] for t in tensors} <= archs[name], name
    assert {"blk.{bid}.attn_q", "token_embd", "output"} <= archs["llama"]
    if version == installed("gguf"):  # (the very gguf the table was written from: every architecture is in it)
        assert set(archs) == {constants.MODEL_ARCH_NAMES[a] for a in constants.MODEL_TENSORS
                              if a in constants.MODEL_ARCH_NAMES}


def test_a_newer_architecture_a_digit_away_is_a_note_and_decoder_blocks_have_their_own_count():
    """A review: a newer llama.cpp's architecture one digit from a known one (deepseek4, qwen4) must not be NOT
    LOADABLE; a T5's decoder deeper than its encoder is counted by decoder_block_count; a LoRA adapter's names
    (`blk.0.attn_q.weight.lora_a`) are llama.cpp's own."""
    problems, notes = gguf_names.checked("m.gguf", "llama9", {"": 2}, ["blk.0.attn_q.weight"], whole=False)
    assert problems == [] and any("'llama9' is not in gguf" in n for n in notes)
    problems, _ = gguf_names.checked("m.gguf", "t5", {"": 2, "enc.": 2, "dec.": 3},
                                     ["enc.blk.1.attn_q.weight", "dec.blk.2.attn_q.weight"], whole=False)
    assert problems == []
    problems, _ = gguf_names.checked("m.gguf", "t5", {"": 2, "enc.": 2, "dec.": 3}, ["dec.blk.3.attn_q.weight"],
                                     whole=False)
    assert [p.kind for p in problems] == ["unloadable"] and "dec.blk.3, but its t5.decoder_block_count (or block_count) is 3" in \
        problems[0].message
    problems, notes = gguf_names.checked("lora.gguf", "llama", {"": 2}, ["blk.0.attn_q.weight.lora_a"], adapter=True)
    assert problems == [] and notes == []


def test_a_decoder_without_its_own_count_is_counted_by_block_count():
    """llama.cpp takes block_count for a T5 decoder when decoder_block_count is missing (older files): a decoder
    block past it is refused (a review: skipped, CLEAN, where an earlier version said NOT LOADABLE)."""
    from nandoctor.readers.gguf import _block_counts

    counts = _block_counts({"general.architecture": (8, "t5"), "t5.block_count": (4, 2)})
    assert counts == {"": 2, "enc.": 2, "dec.": 2}
    problems, _ = gguf_names.checked("m.gguf", "t5", counts, ["dec.blk.2.attn_q.weight"], whole=False)
    assert [p.kind for p in problems] == ["unloadable"]


def test_a_crafted_block_count_or_block_layout_costs_no_walk():
    """A review: a block_count of 2**40 beside one tensor was walked name by name (10**12 strings); a million blocks
    of distinct kinds compared pairwise. Both are counted now."""
    import time

    started = time.perf_counter()
    problems, _ = gguf_names.checked("m.gguf", "llama", {"": 2**40}, ["blk.0.attn_q.weight"])
    assert any(p.message.startswith("blk.1, blk.2, blk.3 and 1,099,511,627,772 more hold no tensor")
               for p in problems), [p.message for p in problems]
    assert gguf_names._lost_in_blocks(gguf_names._blocks([f"blk.{n}.t{n}" for n in range(200_000)], ""), "") == []
    assert time.perf_counter() - started < 10  # (generous: quadratic was hours)


@pytest.mark.parametrize("key, value, nan", [
    ("llama.attention.layer_norm_rms_epsilon", float("nan"), True), ("llama.rope.freq_base", 0.0, True),
    ("llama.attention.layer_norm_rms_epsilon", -1.0, True), ("llama.rope.freq_base", float("inf"), False),
    ("llama.attention.layer_norm_rms_epsilon", 1e-6, False), ("llama.rope.freq_base", 500000.0, False),
])
def test_float_hyperparameters_that_make_the_model_nan_are_bad_config(tmp_path, key, value, nan):
    """An adversarial round: an RMS epsilon of NaN or -1, a rotary base of NaN or 0 read CLEAN; transformers' GGUF
    loader (the oracle) builds the model from them and its logits are NaN."""
    import struct

    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    path = _write(tmp_path / "model.gguf", rope_base=10000.0)
    data = bytearray(path.read_bytes())
    name = key.encode()
    at = data.find(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    assert struct.unpack_from("<I", data, at)[0] == 6  # (a float32 key/value: its value follows its type)
    struct.pack_into("<f", data, at + 4, value)
    path.write_bytes(bytes(data))
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name,
                                                              attn_implementation="eager")  # (CPU SDPA hides NaN keys)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 9, 3]])).logits
    assert bool(torch.isnan(logits).any()) is nan  # the oracle
    report = nandoctor.scan(path)
    if nan:
        assert report.exit_code == 3 and [p.kind for p in report.errors] == ["config"], report.errors
        assert key in report.errors[0].message
    else:
        assert report.exit_code == 0 and not report.errors


def test_a_split_set_is_the_files_llama_cpp_names(tmp_path):
    """An adversarial round: beside model-00001-of-00002.gguf and model-00002-of-00002.gguf (NaN in it), a stray clean
    model-2-of-00002.gguf took the second file's place and the scan passed; llama.cpp opens
    <prefix>-%05d-of-%05d.gguf. A later file's split.count is not checked by llama.cpp (no false alarm); a split file
    without split.no is refused by it ("key not found")."""
    import shutil

    first = _write(tmp_path / "model-00001-of-00002.gguf", drop=("output.weight",), split_count=2)
    output = np.random.default_rng(1).standard_normal((VOCAB, HIDDEN)) * 0.02
    clean = _second_split(tmp_path / "clean.gguf", {"output.weight": output})
    output[0, 0] = np.nan
    _second_split(tmp_path / "model-00002-of-00002.gguf", {"output.weight": output})
    shutil.copy(clean, tmp_path / "model-2-of-00002.gguf")
    clean.unlink()
    report = nandoctor.scan(first)
    assert report.exit_code == 1 and report.nan == 1
    assert sorted(Path(f).name for f in report.files) == ["model-00001-of-00002.gguf", "model-00002-of-00002.gguf"]

    later = tmp_path / "later"
    later.mkdir()
    shutil.copy(first, later / first.name)
    writer = gguf.GGUFWriter(str(later / "model-00002-of-00002.gguf"), "llama")
    writer.add_uint16("split.no", 1)
    writer.add_uint16("split.count", 3)  # (llama.cpp reads the count of the first file only)
    writer.add_tensor("output.weight", (np.random.default_rng(1).standard_normal((VOCAB, HIDDEN)) * 0.02).astype(np.float32))
    finish(writer)
    assert nandoctor.scan(later / first.name).exit_code == 0

    unnumbered = tmp_path / "unnumbered"
    unnumbered.mkdir()
    writer = gguf.GGUFWriter(str(unnumbered / "model-00001-of-00002.gguf"), "llama")
    writer.add_uint16("split.count", 2)
    writer.add_tensor("token_embd.weight", np.ones((4, 8), np.float32))
    finish(writer)
    shutil.copy(tmp_path / "model-00002-of-00002.gguf", unnumbered)
    missing_no = nandoctor.scan(unnumbered / "model-00001-of-00002.gguf")
    assert missing_no.exit_code == 3 and any("no split.no" in p.message for p in missing_no.errors)


@pytest.mark.parametrize("name, kv", [
    ("int rope base 0", lambda w: (w.add_int32("llama.rope.freq_base", 0), w.add_layer_norm_rms_eps(1e-5))),
    ("uint rope base 0", lambda w: (w.add_uint32("llama.rope.freq_base", 0), w.add_layer_norm_rms_eps(1e-5))),
    ("array eps -0.5", lambda w: w.add_array("llama.attention.layer_norm_rms_epsilon", [-0.5])),
    ("array rope base 0", lambda w: (w.add_array("llama.rope.freq_base", [0.0]), w.add_layer_norm_rms_eps(1e-5))),
])
def test_a_hyperparameter_of_another_type_is_judged_as_transformers_reads_it(tmp_path, name, kv):
    """An adversarial round: an integer rotary base of 0, or one number in an array (transformers' GGUF loader unwraps
    it) read CLEAN; the model's logits are NaN (eager attention)."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    path = _write(tmp_path / "model.gguf", kv=kv)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, attn_implementation="eager")
    with torch.no_grad():
        assert bool(torch.isnan(model(torch.tensor([[1, 5, 9, 3]])).logits).any())  # the oracle
    report = nandoctor.scan(path)
    assert report.exit_code == 3 and [p.kind for p in report.errors] == ["config"], report.errors


def test_a_whole_model_under_a_split_name_is_no_set(tmp_path):
    """A review: a GGUF without split keys named model-00001-of-00002.gguf was exit 3, "1 of the 2 files of its
    gguf-split set missing"; llama.cpp reads its split.count (none) and loads it alone. A NaN in a general.* float is
    nobody's arithmetic."""
    path = _write(tmp_path / "model-00001-of-00002.gguf")
    report = nandoctor.scan(path)
    assert report.exit_code == 0 and not report.errors and "shard_of" not in report.extra
    from nandoctor.hints import repair_command_for

    assert repair_command_for(str(path)).startswith(f"nandoctor repair {path} ")
    assert nandoctor.scan(tmp_path).exit_code == 0  # (the folder too: no "numbered shards missing")
    general = _write(tmp_path / "general.gguf", kv=lambda w: (w.add_float32("general.some_score", float("nan")),
                                                             w.add_layer_norm_rms_eps(1e-5)))
    assert nandoctor.scan(general).exit_code == 0
