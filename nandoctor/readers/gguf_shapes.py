"""A GGUF file's architecture hyperparameters against the shapes of the tensors they describe.

llama.cpp builds the model from ``<arch>.embedding_length``, ``attention.head_count``/``head_count_kv``,
``feed_forward_length``, the vocabulary and the head size, creates each tensor at the shape they give and refuses the
file when a stored tensor differs ("tensor 'blk.0.attn_k.weight' has wrong shape"); transformers' GGUF loader turns
the same keys into a config.json and fails with a size mismatch. So a key that contradicts the tensors (a flipped bit,
metadata edited by hand, a converter's bug) leaves every value finite and the file unloadable: an adversarial round
found such files CLEAN (head_count_kv 4 over two heads' attn_k, feed_forward_length 128 over ffn_up of 64,
embedding_length 64 over a token_embd 32 wide, vocab_size 256 over 128 rows, rope.dimension_count 0, block_count
missing).

Two checks, both NOT LOADABLE:

- the keys llama.cpp's generic loader requires of every architecture it builds (``context_length``,
  ``embedding_length``, ``block_count``: "key not found in model");
- for the architectures whose llama.cpp loader creates the llama layout (:data:`LLAMA_LAYOUT`, each read in
  llama.cpp's ``src/models``), every ``token_embd``/``output``/``blk.N.attn_q/k/v/output``/``ffn_up/gate/down``
  weight against the shape llama.cpp creates it at, and ``rope.dimension_count`` against the head size (llama.cpp:
  "invalid n_rot"; qwen2/qwen3 assert it). Other architectures build tensors of the same names at other shapes
  (qwen3next's ``attn_q`` holds a gate too, phi3's ``ffn_up`` the gate and up halves): left alone rather than
  falsely accused.

Expert counts, as llama.cpp reads them: its load_hparams asserts for every architecture that ``expert_used_count``
is at most ``expert_count`` and above 0 where there are experts (GGML_ASSERT aborts); its llama loader (Mixtral
converts to arch llama) creates ``ffn_gate_inp`` and ``ffn_*_exps`` where ``expert_count`` is above 0 and the dense
``ffn_gate/up/down`` only where it is 0. So an ``expert_count`` set on a dense llama file is NOT LOADABLE, though
transformers' GGUF loader ignores the key for llama and loads it: llama.cpp refuses it ("missing tensor
'blk.0.ffn_gate_inp.weight'"). qwen2 and qwen3 are dense to llama.cpp whatever the key says (their MoE are other
architectures): only the counts' asserts apply there.

Shapes are ``ne`` (ne0 first, fastest), as the reader keeps them: ``attn_k`` is ``[n_embd, n_head_kv * head_dim]``,
in elements whatever the type. A per-layer array (``head_count`` of Deci, OpenELM) is not judged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from nandoctor.model import CONFIG_KIND, UNLOADABLE_KIND, ScanProblem, TensorRef
from nandoctor.readers.gguf_names import one_apart
from nandoctor.wording import first_few, plural

# Architectures whose llama.cpp loader creates token_embd, output, attn_q/k/v/output and ffn_up/gate/down at the
# llama shapes below, with n_rot equal to the head size (llama: "invalid n_rot"; qwen2, qwen3: GGML_ASSERT).
LLAMA_LAYOUT = frozenset({"llama", "qwen2", "qwen3"})
# llama.cpp's load_hparams reads these of every architecture but CLIP (a vision projector) without a default
REQUIRED = ("context_length", "embedding_length", "block_count")
TOKENS = "tokenizer.ggml.tokens"
# a file stating none of these is not judged (problems() says why)
_STATED = ("context_length", "embedding_length", "feed_forward_length", "attention.head_count")
# the keys the reader keeps for this module (gguf.py's _KEPT_KEYS)
KEYS = re.compile(r"\.(block_count|context_length|embedding_length|feed_forward_length|vocab_size|attention\.head_count(_kv)?|"
                  r"attention\.(key|value)_length|rope\.dimension_count|expert_count|expert_used_count)$"
                  r"|^tokenizer\.ggml\.(tokens|model)$")
# llama.cpp's tokenizer models (llama-vocab.cpp: any other is "unknown tokenizer", the file refused; transformers'
# GGUF loader cannot build a tokenizer from one either)
TOKENIZER_MODELS = frozenset({"no_vocab", "none", "llama", "gpt2", "bert", "t5", "rwkv", "plamo2"})
_BLOCK = re.compile(r"^blk\.\d+\.(attn_q|attn_k|attn_v|attn_output|ffn_up|ffn_gate|ffn_down|ffn_gate_inp|ffn_(?:gate|up|down)_exps)"
                    r"\.weight$")
# the tensors llama.cpp loads without TENSOR_NOT_REQUIRED for these architectures (output.weight may be tied to
# token_embd; biases are optional): in every block, and once for the model
_BLOCK_TENSORS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
# llama's blocks where expert_count is above 0 (Mixtral converts to arch llama): a router and experts in place of the
# MLP (llama.cpp's llama loader: ffn_gate_exps is not required; a newer converter fuses gate and up, ffn_gate_up_exps)
_EXPERT_TENSORS = ("ffn_gate_inp", "ffn_up_exps", "ffn_down_exps")
_DENSE_FFN = ("ffn_gate", "ffn_up", "ffn_down")
_FUSED_INSTEAD = {"ffn_up_exps": "ffn_gate_up_exps"}
_MODEL_TENSORS = ("token_embd", "output_norm")
_MISSING_TENSOR_HINT = ("the file lost tensors (a tool that drops or renames tensors, a cut copy): convert it again "
                        "from its source model with a current llama.cpp (convert_hf_to_gguf.py)")
_HINT = ("its metadata contradicts its tensors (a flipped bit, a key edited by hand, a converter's bug): write the "
         "values the tensors were converted with (the source model's config.json has them), e.g. with gguf-py's "
         "gguf_set_metadata.py, or convert it again from its source model")
_MISSING_HINT = ("convert it again from its source model with a current llama.cpp (convert_hf_to_gguf.py), or add the "
                 "key with gguf-py's gguf_new_metadata.py")


@dataclass(frozen=True)
class ArrayOf:
    """A key/value that is an array of more than one item: its item type and length (a token list's length is the
    vocabulary llama.cpp builds ``token_embd`` for; a per-layer array is not judged)."""

    item: int
    count: int


@dataclass(frozen=True)
class _Size:
    """One dimension the loaders build a tensor at, and the keys it comes from (as the message says it)."""

    value: int
    said: str


def problems(path: str, arch: str | None, metadata: Mapping[str, object], refs: Iterable[TensorRef],
             adapter: bool = False, first_split: bool = True) -> list[ScanProblem]:
    """NOT LOADABLE where a GGUF file lacks a key llama.cpp requires, or its hyperparameters contradict its tensors'
    shapes. ``metadata``: key → value of the keys :data:`KEYS` matches (an :class:`ArrayOf` for a longer array);
    ``adapter``: a LoRA adapter (its shapes are the adapter's); ``first_split``: the file holds the metadata (a
    gguf-split set's later files hold tensors only)."""
    if arch is None or arch == "clip" or adapter or not first_split:
        return []
    shapes = {ref.name: tuple(ref.shape) for ref in refs}
    if not any(name.startswith("blk.") for name in shapes):  # (a vocabulary-only file: nothing is built)
        return []
    if not any(f"{arch}.{key}" in metadata for key in _STATED):
        # (no dimension at all: a container of tensors, not a converted model, whose loss of one key is this
        # module's concern; a damaged header loses a key, not all of them)
        return []
    found: list[ScanProblem] = [*_heads(path, arch, metadata), *_tokenizer_model(path, metadata)]
    typed = [key for key, value in metadata.items() if key.startswith(f"{arch}.") and KEYS.search(key)
             and (isinstance(value, (bool, float, str)) or (isinstance(value, list) and len(value) == 1
                                                            and isinstance(value[0], (bool, float, str))))]
    if typed:
        # (an adversarial round: embedding_length stored as the F32 32.0, or the string "32", read CLEAN)
        found.append(ScanProblem(
            path, f"{first_few(typed, 4)} hold{'s' if len(typed) == 1 else ''} "
            f"{first_few([repr(metadata[k]) for k in typed], 4)}, not an integer: llama.cpp refuses it (\"key has wrong "
            "type\") and transformers' GGUF loader fails on it", _HINT, kind=UNLOADABLE_KIND))
    counts = _expert_counts(arch, metadata)
    if counts:
        found.append(ScanProblem(
            path, f"{counts}: llama.cpp aborts as it reads the hyperparameters (GGML_ASSERT: every architecture's "
            "experts used must be at most its experts, and above 0 where there are experts)", _HINT,
            kind=UNLOADABLE_KIND))
    missing = [f"{arch}.{key}" for key in REQUIRED if f"{arch}.{key}" not in metadata]
    if arch in LLAMA_LAYOUT:
        names = {m.group(1) for name in shapes if (m := _BLOCK.match(name))}
        if names & {"attn_q", "attn_k", "attn_v", "attn_output"} and f"{arch}.attention.head_count" not in metadata:
            missing.append(f"{arch}.attention.head_count")
        if names & {"ffn_up", "ffn_gate", "ffn_down"} and f"{arch}.feed_forward_length" not in metadata:
            missing.append(f"{arch}.feed_forward_length")
    if missing:
        found.append(ScanProblem(
            path, f"its metadata lacks {first_few(missing, 4)}, which llama.cpp builds the {arch} model "
            "from (\"key not found in model\"; transformers' GGUF loader falls back to defaults that contradict the "
            "tensors, e.g. 32 layers for a missing block_count, the rest at random)", _MISSING_HINT,
            kind=UNLOADABLE_KIND))
    if arch in LLAMA_LAYOUT:
        parts = {name.split(".")[2] for name in shapes if name.startswith("blk.") and name.count(".") >= 3}
        experts = _int(metadata, f"{arch}.expert_count") or 0
        layout = _ffn_layout(path, arch, experts, parts)
        if layout is not None:
            found.append(layout)
            parts |= set(_BLOCK_TENSORS + _EXPERT_TENSORS)  # (said: not said again as lacking)
        needed = _BLOCK_TENSORS if arch != "llama" or experts == 0 else (
            *(t for t in _BLOCK_TENSORS if t not in _DENSE_FFN), *_EXPERT_TENSORS)
        # (one stored under a name one character from it is the names check's: a flipped bit, said there)
        lacking = [f"blk.#.{part}.weight" for part in needed if part not in parts
                   and _FUSED_INSTEAD.get(part) not in parts
                   and not any(one_apart(part, other) for other in parts - set(needed))]
        known = {f"{name}.weight" for name in (*_MODEL_TENSORS, "output")}
        lacking += [f"{name}.weight" for name in _MODEL_TENSORS if f"{name}.weight" not in shapes
                    and not any(one_apart(f"{name}.weight", other) for other in set(shapes) - known)]
        if lacking:
            # (one missing from every block alike, which the names check cannot see: no block holds it to compare;
            # an adversarial round's file without attn_q or output_norm read CLEAN)
            found.append(ScanProblem(
                path, f"lacks {first_few(lacking, 4)}, which llama.cpp requires for a {arch} model (\"missing tensor\"); "
                "transformers' GGUF loader initializes it at random", _MISSING_TENSOR_HINT, kind=UNLOADABLE_KIND))
        wrong = _contradictions(arch, metadata, shapes)
        if wrong:
            found.append(ScanProblem(
                path, f"its hyperparameters contradict its tensors' shapes (ne order): "
                f"{_listed(wrong)}; llama.cpp refuses it ('tensor has wrong shape', 'invalid n_rot') and "
                "transformers' GGUF loader fails with a size mismatch", _HINT, kind=UNLOADABLE_KIND))
    return found


def _heads(path: str, arch: str, metadata: Mapping[str, object]) -> list[ScanProblem]:
    """BAD CONFIG where ``head_count_kv`` does not divide ``head_count`` (as config.json's num_key_value_heads): the
    shapes may agree, but grouped-query attention shares each key/value head among head_count / head_count_kv query
    heads (a review: 4 heads over 3, CLEAN; transformers' generate raised "size 4 vs 3"). Per-layer arrays not judged."""
    heads, kv = _int(metadata, f"{arch}.attention.head_count"), _int(metadata, f"{arch}.attention.head_count_kv")
    if not heads or not kv or (kv <= heads and heads % kv == 0):
        return []
    return [ScanProblem(
        path, f"{arch}.attention.head_count_kv is {kv}, which does not divide {arch}.attention.head_count {heads}: "
        "grouped-query attention shares each key/value head among head_count / head_count_kv query heads, so "
        "llama.cpp's attention cannot broadcast them and transformers' generate raises (a size mismatch)", _HINT,
        kind=CONFIG_KIND)]


def _tokenizer_model(path: str, metadata: Mapping[str, object]) -> list[ScanProblem]:
    """NOT LOADABLE where ``tokenizer.ggml.model`` names no tokenizer llama.cpp has (a review's "lama": CLEAN, while
    AutoTokenizer could not build it and llama.cpp refuses "unknown tokenizer")."""
    model = metadata.get("tokenizer.ggml.model")
    if not isinstance(model, str) or model in TOKENIZER_MODELS:
        return []
    return [ScanProblem(
        path, f"tokenizer.ggml.model is {model!r}, no tokenizer llama.cpp knows ({', '.join(sorted(TOKENIZER_MODELS))}): "
        "llama.cpp refuses the file (\"unknown tokenizer\") and transformers cannot build its tokenizer", _HINT,
        kind=UNLOADABLE_KIND)]


def _expert_counts(arch: str, metadata: Mapping[str, object]) -> str:
    """Words for expert counts llama.cpp's load_hparams asserts against for every architecture (n_expert_used <=
    n_expert; n_expert_used > 0 where n_expert > 0), else "". transformers' GGUF loader reads them only for the
    architectures it maps them for (qwen2_moe's num_experts_per_tok above its experts: generate raises)."""
    count_key, used_key = f"{arch}.expert_count", f"{arch}.expert_used_count"
    experts, used = _int(metadata, count_key), _int(metadata, used_key)
    if used is not None and used > (experts or 0):
        return f"{used_key} is {used}, more than the {experts or 0} experts of {count_key}" + (
            "" if count_key in metadata else " (absent: 0)")
    if experts and not used:
        return f"{count_key} is {experts}, and {used_key} is {'0' if used_key in metadata else 'absent'}"
    return ""


def _ffn_layout(path: str, arch: str, experts: int, parts: set[str]) -> ScanProblem | None:
    """NOT LOADABLE where a llama file's expert_count says the other MLP layout than its blocks hold: experts over
    dense blocks (a key set by hand or copied from another model), or experts stored with no expert_count. llama.cpp
    builds the layout the count says and refuses the file ("missing tensor"); transformers' GGUF loader ignores
    expert_count for llama (a dense file with it loads there, and not in llama.cpp)."""
    if arch != "llama":
        return None  # (qwen2 and qwen3 are dense in llama.cpp whatever expert_count says: their MoE are other archs)
    dense = any(part in parts for part in _DENSE_FFN)
    moe = any(part in parts for part in (*_EXPERT_TENSORS, "ffn_gate_exps", "ffn_gate_up_exps"))
    if experts and dense and not moe:
        return ScanProblem(
            path, f"{arch}.expert_count is {experts}, but its blocks hold a dense MLP (ffn_gate, ffn_up, ffn_down) and no "
            f"experts: llama.cpp builds a mixture-of-experts {arch} from it and refuses the file (\"missing tensor "
            "'blk.0.ffn_gate_inp.weight'\"); transformers' GGUF loader ignores the key and loads the dense model",
            f"remove {arch}.expert_count and {arch}.expert_used_count from the metadata (gguf-py's gguf_new_metadata.py "
            "--remove-metadata), or convert it again from its source model", kind=UNLOADABLE_KIND)
    if not experts and moe and not dense:
        return ScanProblem(
            path, f"its blocks hold experts (ffn_gate_inp, ffn_*_exps), but its metadata gives no {arch}.expert_count: "
            f"llama.cpp builds a dense {arch} from it and refuses the file (\"missing tensor 'blk.0.ffn_gate.weight'\")",
            f"write {arch}.expert_count and {arch}.expert_used_count (the source model's num_local_experts and "
            "num_experts_per_tok) with gguf-py's gguf_new_metadata.py, or convert it again from its source model",
            kind=UNLOADABLE_KIND)
    return None


def _int(metadata: Mapping[str, object], key: str) -> int | None:
    value = metadata.get(key)
    if isinstance(value, list) and len(value) == 1:  # (one number in an array: the loaders unwrap it)
        value = value[0]
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _contradictions(arch: str, metadata: Mapping[str, object], shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Each tensor kind (token_embd, attn_k of every block, …) whose stored ne differs from the shape llama.cpp
    creates it at, worded with the keys that shape comes from; and a rotary dimension other than the head size."""
    def key(name: str) -> str:
        return f"{arch}.{name}"

    embd = _int(metadata, key("embedding_length"))
    if embd is None:  # (required: said above when missing; a per-layer or non-integer value is not judged)
        return []
    e = _Size(embd, f"{key('embedding_length')} {embd}")
    sizes: dict[str, _Size] = {}
    heads = _int(metadata, key("attention.head_count"))
    kv_heads = _int(metadata, key("attention.head_count_kv"))
    kv_said = f"{key('attention.head_count_kv')} {kv_heads}"
    if kv_heads is None and key("attention.head_count_kv") not in metadata and heads is not None:
        kv_heads, kv_said = heads, f"{key('attention.head_count')} {heads} (head_count_kv is absent: it defaults to it)"
    head_k = head_v = None
    if heads == 0:  # (llama.cpp's head size is then 0: every attention tensor is [n_embd, 0] to it)
        zero = _Size(0, f"{key('attention.head_count')} 0")
        sizes.update(q=zero, o=zero, k=zero, v=zero)
    if heads:
        head_k = _head_size(metadata, key("attention.key_length"), embd, heads, e.said)
        head_v = _head_size(metadata, key("attention.value_length"), embd, heads, e.said)
    if heads and head_k is not None and head_v is not None:
        sizes["q"] = _Size(heads * head_k.value, f"{key('attention.head_count')} {heads} × head size {head_k.said}")
        sizes["o"] = _Size(heads * head_v.value, f"{key('attention.head_count')} {heads} × head size {head_v.said}")
        if kv_heads is not None:
            sizes["k"] = _Size(kv_heads * head_k.value, f"{kv_said} × head size {head_k.said}")
            sizes["v"] = _Size(kv_heads * head_v.value, f"{kv_said} × head size {head_v.said}")
    ff = _int(metadata, key("feed_forward_length"))
    if ff is not None:
        sizes["ff"] = _Size(ff, f"{key('feed_forward_length')} {ff}")
    vocab = _int(metadata, key("vocab_size"))
    tokens = metadata.get(TOKENS)
    n_tokens = tokens.count if isinstance(tokens, ArrayOf) else len(tokens) if isinstance(tokens, list) else None
    expected: dict[str, tuple[_Size | None, ...]] = {
        "attn_q": (e, sizes.get("q")), "attn_k": (e, sizes.get("k")), "attn_v": (e, sizes.get("v")),
        "attn_output": (sizes.get("o"), e), "ffn_up": (e, sizes.get("ff")), "ffn_gate": (e, sizes.get("ff")),
        "ffn_down": (sizes.get("ff"), e)}
    experts = _int(metadata, key("expert_count"))
    if arch == "llama" and experts:  # (llama.cpp's llama experts: [n_embd, n_ff, n_expert], its router [n_embd, n_expert])
        n = _Size(experts, f"{key('expert_count')} {experts}")
        width = sizes.get("ff")
        expected.update({"ffn_gate_inp": (e, n), "ffn_gate_exps": (e, width, n), "ffn_up_exps": (e, width, n),
                         "ffn_down_exps": (width, e, n)})
    wrong: list[str] = []
    by_kind: dict[str, list[str]] = {}
    for name, ne in shapes.items():
        m = _BLOCK.match(name)
        if m is not None and m.group(1) in expected:
            why = _differs(ne, *expected[m.group(1)])
            if why is not None:
                by_kind.setdefault(m.group(1), []).append(f"{name} is {list(ne)}, but {why}")
        elif name in ("token_embd.weight", "output.weight"):
            # (transformers builds the vocabulary from vocab_size, llama.cpp from the token list: each must fit)
            vocabs = [_Size(n, said) for n, said in ((vocab, f"{key('vocab_size')} {vocab}"),
                                                     (n_tokens, f"the {n_tokens}-token {TOKENS}")) if n is not None]
            why = next((w for v in vocabs if (w := _differs(ne, e, v)) is not None), _differs(ne, e, None))
            if why is not None:
                wrong.append(f"{name} is {list(ne)}, but {why}")
    for said in by_kind.values():  # (one per kind: a wrong key makes every block's tensor wrong alike)
        more = f" (and so in {plural(len(said) - 1, 'more block')})" if len(said) > 1 else ""
        wrong.append(said[0] + more)
    rot = _int(metadata, key("rope.dimension_count"))
    if rot is not None and head_k is not None and rot != head_k.value:
        wrong.append(f"{key('rope.dimension_count')} is {rot}, but the head size is {head_k.said} and llama.cpp's "
                     f"{arch} rotates whole heads")
    return wrong


def _head_size(metadata: Mapping[str, object], length_key: str, embd: int, heads: int, embd_said: str) -> _Size | None:
    """The head size llama.cpp uses: ``length_key`` (attention.key_length / value_length) when present, else
    n_embd / n_head (integer division, as llama.cpp's). None for a value that is not one integer."""
    if length_key in metadata:
        length = _int(metadata, length_key)
        return _Size(length, f"{length} ({length_key})") if length is not None else None
    return _Size(embd // heads, f"{embd // heads} ({embd_said} / head_count {heads})")


def _listed(items: list[str], shown: int = 3) -> str:
    """The first ``shown`` of ``items`` joined by semicolons (each holds commas), then how many more."""
    more = len(items) - shown
    return "; ".join(items[:shown]) + (f"; and {more} more" if more > 0 else "")


def _differs(ne: tuple[int, ...], *sizes: _Size | None) -> str | None:
    """Why ``ne`` is not the ``[rows, cols]`` (``[rows, cols, experts]``) llama.cpp creates (None when it is, or a
    side is not known)."""
    padded = (*ne, *(1,) * len(sizes))
    if len(ne) > len(sizes) and any(d != 1 for d in ne[len(sizes):]):
        return f"llama.cpp creates it with {len(sizes)} dimensions, not {len(ne)}"
    for i, size in enumerate(sizes):
        if size is not None and padded[i] != size.value:
            return f"its ne{i} must be {size.value}: {size.said}"
    return None
