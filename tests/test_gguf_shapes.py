"""A GGUF file's hyperparameters against its tensors' shapes (readers/gguf_shapes.py).

Files written by gguf's own GGUFWriter at a small Llama's real shapes (grouped-query attention: 4 query heads, 2 key/value
heads of 8); each contradiction is one the adversarial round found CLEAN. transformers' GGUF loader is the oracle: it
fails (a size mismatch, a ZeroDivisionError) or builds layers it initialises at random; llama.cpp refuses each file
("tensor has wrong shape", "invalid n_rot", "key not found in model").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
gguf = pytest.importorskip("gguf")

from tests.gguf_files import finish  # noqa: E402

import nandoctor  # noqa: E402
from nandoctor.model import UNLOADABLE_KIND  # noqa: E402
from nandoctor.readers import gguf_shapes  # noqa: E402

EMBD, HEADS, KV_HEADS, HEAD, FFN, VOCAB, BLOCKS = 32, 4, 2, 8, 64, 128, 2


def _write(path: Path, *, arch: str = "llama", keys: dict[str, int] | None = None, drop: tuple[str, ...] = (),
           head: int = HEAD, tied: bool = False, qtype: object = None,
           tensors: Callable[[], dict[str, tuple[int, ...]]] | None = None) -> Path:
    """A Llama of real shapes (numpy shapes, the reverse of ne) whose metadata is ``keys`` over the true values, less
    ``drop``; ``head``: the head size (key_length/value_length written when it is not EMBD / HEADS)."""
    meta = {"context_length": 64, "embedding_length": EMBD, "block_count": BLOCKS, "feed_forward_length": FFN,
            "attention.head_count": HEADS, "attention.head_count_kv": KV_HEADS, "rope.dimension_count": head,
            "vocab_size": VOCAB}
    if head != EMBD // HEADS:
        meta.update({"attention.key_length": head, "attention.value_length": head})
    meta.update(keys or {})
    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in meta.items():
        if key not in drop:
            writer.add_uint32(f"{arch}.{key}", value)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
    writer.add_tokenizer_model("llama")
    writer.add_token_list([f"<t{i}>" for i in range(VOCAB)])
    writer.add_token_scores([0.0] * VOCAB)
    writer.add_token_types([1] * VOCAB)
    if tensors is not None:
        shapes = tensors()
    else:
        shapes = {"token_embd.weight": (VOCAB, EMBD), "output_norm.weight": (EMBD,)}
        if not tied:
            shapes["output.weight"] = (VOCAB, EMBD)
        for b in range(BLOCKS):
            shapes.update({
                f"blk.{b}.attn_norm.weight": (EMBD,), f"blk.{b}.attn_q.weight": (HEADS * head, EMBD),
                f"blk.{b}.attn_k.weight": (KV_HEADS * head, EMBD), f"blk.{b}.attn_v.weight": (KV_HEADS * head, EMBD),
                f"blk.{b}.attn_output.weight": (EMBD, HEADS * head), f"blk.{b}.ffn_norm.weight": (EMBD,),
                f"blk.{b}.ffn_gate.weight": (FFN, EMBD), f"blk.{b}.ffn_up.weight": (FFN, EMBD),
                f"blk.{b}.ffn_down.weight": (EMBD, FFN)})
    rng = np.random.default_rng(0)
    for name, shape in shapes.items():
        values = (np.ones(shape) if name.endswith("norm.weight") else rng.standard_normal(shape) * 0.02).astype(np.float32)
        if qtype is not None and values.ndim == 2:
            raw = gguf.quants.quantize(values, qtype)
            writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtype)
        else:
            writer.add_tensor(name, values)
    finish(writer)
    return path


def _transformers(path: Path) -> str:
    """What transformers' GGUF loader makes of the file: "loads", "fails: …" or "random: …" (weights it initialised)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    try:
        _, info = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                                    output_loading_info=True)
    except Exception as e:  # noqa: BLE001 - any refusal is the oracle's "not loadable"
        return f"fails: {type(e).__name__}: {e}"
    if info.get("missing_keys") or info.get("mismatched_keys"):
        return f"random: {sorted(info.get('missing_keys') or info.get('mismatched_keys'))[:3]}"
    return "loads"


@pytest.mark.parametrize("kind", ["gqa", "tied", "q8_0", "head_dim"])
def test_healthy_files_are_clean_and_load(tmp_path: Path, kind: str) -> None:
    """Grouped-query attention, output tied to token_embd, Q8_0 (ne in elements), a head size that is not
    embedding_length / head_count (attention.key_length 16 over 32 / 4): all load, all CLEAN."""
    path = _write(tmp_path / "model.gguf", tied=kind == "tied", head=16 if kind == "head_dim" else HEAD,
                  qtype=gguf.GGMLQuantizationType.Q8_0 if kind == "q8_0" else None)
    assert _transformers(path) == "loads"  # the oracle
    report = nandoctor.scan(path)
    assert report.exit_code == 0 and report.errors == (), [p.message for p in report.errors]


CONTRADICTIONS = [  # (case, metadata over the true values, keys dropped, what the message names)
    ("head_count_kv", {"attention.head_count_kv": 4}, (),
     "blk.0.attn_k.weight is [32, 16], but its ne1 must be 32: llama.attention.head_count_kv 4 × head size 8"),
    ("head_count_kv absent", {}, ("attention.head_count_kv",),
     "llama.attention.head_count 4 (head_count_kv is absent: it defaults to it) × head size 8"),
    ("feed_forward_length", {"feed_forward_length": 128}, (),
     "blk.0.ffn_gate.weight is [32, 64], but its ne1 must be 128: llama.feed_forward_length 128 (and so in 1 more "
     "block)"),
    ("embedding_length", {"embedding_length": 64}, (),
     "token_embd.weight is [32, 128], but its ne0 must be 64: llama.embedding_length 64"),
    ("head_count", {"attention.head_count": 8}, (),
     "blk.0.attn_k.weight is [32, 16], but its ne1 must be 8: llama.attention.head_count_kv 2 × head size 4 "
     "(llama.embedding_length 32 / head_count 8)"),
    ("vocab_size", {"vocab_size": 256}, (), "token_embd.weight is [32, 128], but its ne1 must be 256: llama.vocab_size 256"),
    ("rope.dimension_count", {"rope.dimension_count": 0}, (),
     "llama.rope.dimension_count is 0, but the head size is 8 (llama.embedding_length 32 / head_count 4)"),
    ("block_count absent", {}, ("block_count",), "its metadata lacks llama.block_count"),
    ("head_count absent", {}, ("attention.head_count", "attention.head_count_kv"),
     "its metadata lacks llama.attention.head_count"),
    ("feed_forward_length absent", {}, ("feed_forward_length",), "its metadata lacks llama.feed_forward_length"),
]


@pytest.mark.parametrize("case, keys, drop, said", CONTRADICTIONS, ids=[c[0] for c in CONTRADICTIONS])
def test_hyperparameters_contradicting_the_tensors_are_not_loadable(tmp_path: Path, case: str, keys: dict[str, int],
                                                                      drop: tuple[str, ...], said: str) -> None:
    """Each read CLEAN in an adversarial round; transformers fails or initialises layers at random (the oracle)."""
    path = _write(tmp_path / "model.gguf", keys=keys, drop=drop)
    assert _transformers(path) != "loads"  # the oracle
    report = nandoctor.scan(path)
    assert report.exit_code == 3 and [p.kind for p in report.errors] == [UNLOADABLE_KIND]
    message = report.errors[0].message
    assert message.startswith("its ") and said in message, message
    assert "gguf_" in report.errors[0].hint and "convert it again" in report.errors[0].hint


def test_a_quantized_file_is_judged_in_elements(tmp_path: Path) -> None:
    """Q8_0 rows of 32 elements are 34 bytes: the shape compared is ne, in elements, as the reader keeps it."""
    path = _write(tmp_path / "model.gguf", keys={"attention.head_count_kv": 4}, qtype=gguf.GGMLQuantizationType.Q8_0)
    report = nandoctor.scan(path)
    assert report.exit_code == 3 and "blk.0.attn_k.weight is [32, 16], but its ne1 must be 32" in report.errors[0].message


def test_another_layout_under_the_same_names_is_not_judged(tmp_path: Path) -> None:
    """phi3's ffn_up holds the gate and up halves ([n_embd, 2 * n_ff]) and its attention is one attn_qkv: an
    architecture outside LLAMA_LAYOUT has its required keys checked, not its shapes."""
    def phi3() -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (VOCAB, EMBD), "output_norm.weight": (EMBD,),
                                              "output.weight": (VOCAB, EMBD)}
        for b in range(BLOCKS):
            shapes.update({f"blk.{b}.attn_norm.weight": (EMBD,), f"blk.{b}.attn_qkv.weight": (3 * EMBD, EMBD),
                           f"blk.{b}.attn_output.weight": (EMBD, EMBD), f"blk.{b}.ffn_norm.weight": (EMBD,),
                           f"blk.{b}.ffn_up.weight": (2 * FFN, EMBD), f"blk.{b}.ffn_down.weight": (EMBD, FFN)})
        return shapes

    assert "phi3" not in gguf_shapes.LLAMA_LAYOUT
    path = _write(tmp_path / "model.gguf", arch="phi3", tensors=phi3)
    assert nandoctor.scan(path).exit_code == 0
    missing = _write(tmp_path / "missing.gguf", arch="phi3", tensors=phi3, drop=("embedding_length",))
    report = nandoctor.scan(missing)
    assert report.exit_code == 3 and "its metadata lacks phi3.embedding_length" in report.errors[0].message


def test_a_file_stating_no_dimension_is_not_judged(tmp_path: Path) -> None:
    """A container of tensors under llama's names with none of the model's dimensions (not a conversion that lost a
    key) is left alone."""
    path = _write(tmp_path / "model.gguf", drop=("context_length", "embedding_length", "feed_forward_length",
                                                 "attention.head_count", "attention.head_count_kv"))
    assert nandoctor.scan(path).exit_code == 0


@pytest.mark.parametrize("lost", ["attn_q", "ffn_norm", "output_norm"])
def test_a_tensor_every_block_lacks_or_the_model_lacks_is_not_loadable(tmp_path: Path, lost: str) -> None:
    """An adversarial round: attn_q missing from every block (nothing left to compare with), or output_norm, read
    CLEAN; llama.cpp requires them ("missing tensor") and transformers' GGUF loader initialises them at random."""
    def shapes() -> dict[str, tuple[int, ...]]:
        found = {"token_embd.weight": (VOCAB, EMBD), "output_norm.weight": (EMBD,), "output.weight": (VOCAB, EMBD)}
        for b in range(BLOCKS):
            found.update({
                f"blk.{b}.attn_norm.weight": (EMBD,), f"blk.{b}.attn_q.weight": (EMBD, EMBD),
                f"blk.{b}.attn_k.weight": (KV_HEADS * HEAD, EMBD), f"blk.{b}.attn_v.weight": (KV_HEADS * HEAD, EMBD),
                f"blk.{b}.attn_output.weight": (EMBD, EMBD), f"blk.{b}.ffn_norm.weight": (EMBD,),
                f"blk.{b}.ffn_gate.weight": (FFN, EMBD), f"blk.{b}.ffn_up.weight": (FFN, EMBD),
                f"blk.{b}.ffn_down.weight": (EMBD, FFN)})
        return {name: shape for name, shape in found.items() if f"{lost}.weight" not in name}

    path = _write(tmp_path / "m.gguf", tensors=shapes)
    assert _transformers(path) != "loads"  # the oracle
    report = nandoctor.scan(path)
    assert report.exit_code == 3 and any(f"{lost}.weight, which llama.cpp requires" in e.message for e in report.errors), \
        report.errors


@pytest.mark.parametrize("kind", ["float", "string"])
def test_a_size_key_stored_as_another_type_is_not_loadable(tmp_path: Path, kind: str) -> None:
    """An adversarial round: embedding_length stored as F32 32.0 or as the string "32" read CLEAN; llama.cpp refuses
    a key of the wrong type and transformers' GGUF loader fails on it."""
    path = _write(tmp_path / "m.gguf", drop=("embedding_length",))
    writer_path = tmp_path / "typed.gguf"
    reader = gguf.GGUFReader(str(path))
    writer = gguf.GGUFWriter(str(writer_path), "llama")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = field.contents()
        kind_of = field.types[0]
        if kind_of == gguf.GGUFValueType.ARRAY:
            writer.add_array(field.name, value)
        else:
            writer.add_key_value(field.name, value, kind_of)
    if kind == "float":
        writer.add_float32("llama.embedding_length", float(EMBD))
    else:
        writer.add_string("llama.embedding_length", str(EMBD))
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.asarray(tensor.data).reshape([int(n) for n in reversed(tensor.shape)]))
    finish(writer)
    assert _transformers(writer_path) != "loads"  # the oracle
    report = nandoctor.scan(writer_path)
    assert report.exit_code == 3 and any("llama.embedding_length holds" in e.message and "not an integer" in e.message
                                         for e in report.errors), report.errors


EXPERTS = 4


def _experts() -> dict[str, tuple[int, ...]]:
    """A Mixtral as convert_hf_to_gguf.py writes it (arch llama): a router and stacked experts in place of the MLP."""
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (VOCAB, EMBD), "output_norm.weight": (EMBD,),
                                          "output.weight": (VOCAB, EMBD)}
    for b in range(BLOCKS):
        shapes.update({
            f"blk.{b}.attn_norm.weight": (EMBD,), f"blk.{b}.attn_q.weight": (HEADS * HEAD, EMBD),
            f"blk.{b}.attn_k.weight": (KV_HEADS * HEAD, EMBD), f"blk.{b}.attn_v.weight": (KV_HEADS * HEAD, EMBD),
            f"blk.{b}.attn_output.weight": (EMBD, HEADS * HEAD), f"blk.{b}.ffn_norm.weight": (EMBD,),
            f"blk.{b}.ffn_gate_inp.weight": (EXPERTS, EMBD), f"blk.{b}.ffn_gate_exps.weight": (EXPERTS, FFN, EMBD),
            f"blk.{b}.ffn_up_exps.weight": (EXPERTS, FFN, EMBD), f"blk.{b}.ffn_down_exps.weight": (EXPERTS, EMBD, FFN)})
    return shapes


_MOE_KEYS = {"expert_count": EXPERTS, "expert_used_count": 2}


def test_a_mixture_of_experts_llama_is_clean(tmp_path: Path) -> None:
    """A helper's false-alarm find: a Mixtral GGUF (arch llama, expert_count 4, ffn_gate_inp and ffn_*_exps in place of
    ffn_gate/up/down) read NOT LOADABLE, "lacks blk.#.ffn_gate.weight": llama.cpp's llama loader builds the experts
    where expert_count is above 0 and the dense MLP only where it is 0."""
    path = _write(tmp_path / "model.gguf", keys=_MOE_KEYS, tensors=_experts)
    report = nandoctor.scan(path)
    assert report.exit_code == 0 and report.errors == (), [p.message for p in report.errors]


MOE_CASES = [  # (case, metadata over a dense llama's true values, keys dropped, tensors, what the message names)
    # (transformers' GGUF loader ignores expert_count for llama and loads the dense model; llama.cpp builds experts)
    ("expert_count on a dense llama", _MOE_KEYS, (), None,
     "llama.expert_count is 4, but its blocks hold a dense MLP (ffn_gate, ffn_up, ffn_down) and no experts"),
    ("expert_count alone", {"expert_count": EXPERTS}, (), None,
     "llama.expert_count is 4, and llama.expert_used_count is absent: llama.cpp aborts"),
    ("experts without expert_count", {"expert_used_count": 2}, (), _experts,
     "its blocks hold experts (ffn_gate_inp, ffn_*_exps), but its metadata gives no llama.expert_count"),
    ("expert_used_count above expert_count", {**_MOE_KEYS, "expert_used_count": 5}, (), _experts,
     "llama.expert_used_count is 5, more than the 4 experts of llama.expert_count"),
    ("expert_count over the router's rows", {**_MOE_KEYS, "expert_count": 8}, (), _experts,
     "blk.0.ffn_gate_inp.weight is [32, 4], but its ne1 must be 8: llama.expert_count 8"),
    ("experts lacking their router", _MOE_KEYS, (), lambda: {n: s for n, s in _experts().items() if "gate_inp" not in n},
     "lacks blk.#.ffn_gate_inp.weight"),
]


@pytest.mark.parametrize("case, keys, drop, tensors, said", MOE_CASES, ids=[c[0] for c in MOE_CASES])
def test_expert_counts_llama_cpp_refuses_are_not_loadable(tmp_path: Path, case: str, keys: dict[str, int],
                                                          drop: tuple[str, ...], tensors, said: str) -> None:
    """llama.cpp's rules (src/llama-model.cpp): load_hparams asserts n_expert_used <= n_expert and n_expert_used > 0
    where n_expert > 0 for every architecture (GGML_ASSERT aborts); the llama loader creates ffn_gate_inp
    [n_embd, n_expert] and ffn_*_exps [.., .., n_expert] where n_expert > 0, ffn_gate/up/down where it is 0."""
    path = _write(tmp_path / "model.gguf", keys=keys, drop=drop, tensors=tensors)
    if case == "expert_count on a dense llama":
        assert _transformers(path) == "loads"  # (transformers' loader ignores the key: llama.cpp is the one refusing)
    report = nandoctor.scan(path)
    assert report.exit_code == 3 and {p.kind for p in report.errors} == {UNLOADABLE_KIND}
    assert any(said in p.message for p in report.errors), [p.message for p in report.errors]
