"""Tensor name → (layer, component), and bad layers as ranges such as ``transformer.h.21–23``.

Knows the layer-stack conventions seen in the wild (GPT-2/Qwen-1
``transformer.h.N``, LLaMA ``model.layers.N``, OPT ``model.decoder.layers.N``,
BERT ``encoder.layer.N``, NeoX, MPT, T5 …) whatever prefix wraps them
(``module.``, ``state_dict.``, ``base_model.model.``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from nandoctor.model import LayerRange, LayerSummary, TensorResult, TensorResults

# Wrappers that training code puts around the same module: DDP, torch.compile, PEFT, Lightning, PyTorch's tutorial
# checkpoint ({"model_state_dict": …}), a loop's
# {"model": state_dict} (repair's donors, diff's pairs and a run's growth match names through them).
PREFIXES = ("module.", "_orig_mod.", "base_model.model.", "model_state_dict.", "state_dict.", "model.")


def normalise(name: str) -> str:
    """Strip wrapper prefixes, repeatedly: ``module._orig_mod.model.x`` → ``x``."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in PREFIXES:
            if name.startswith(prefix) and len(name) > len(prefix):
                name = name[len(prefix):]
                stripped = True
    return name

# "state": an optimizer state_dict's per-parameter moments (optimizer.state.N.exp_avg), grouped like layers.
# "blk": GGUF's layers (blk.21.attn_q.weight).
_STACK = re.compile(r"(?:^|\.)(?:h|layers|layer|blocks|block|blk|decoder_layers|encoder_layers|state)\.(\d+)(?=\.|$)")
_PARAM_SUFFIXES = ("weight", "bias", "scale", "scales", "qweight", "qzeros", "g_idx", "inv_freq")

COMPONENTS = ("attention", "mlp", "norm", "embedding", "head", "other")

_COMPONENT_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("norm", re.compile(r"(^|[._])(ln|ln_\w+|\w*norm\w*|layernorm|LayerNorm)(\.|$)", re.IGNORECASE)),
    ("attention", re.compile(r"attn|attention|(^|\.)(q|k|v|o|qkv|query|key|value|c_attn)(_proj)?(\.|$)", re.IGNORECASE)),
    ("mlp", re.compile(r"mlp|ffn|feed_forward|(^|\.)(fc\d?|w\d|gate_proj|up_proj|down_proj|dense_h_to_4h|dense_4h_to_h|intermediate|output|wi|wo)(\.|$)", re.IGNORECASE)),
    ("embedding", re.compile(r"wte|wpe|embed|embd|embeddings|tok_embeddings|word_embeddings|shared", re.IGNORECASE)),
    ("head", re.compile(r"lm_head|(^|\.)(head|classifier|score|output|pooler)(\.|$)", re.IGNORECASE)),
)


@dataclass(frozen=True)
class LayerKey:
    group: str  # "transformer.h.21" or "transformer.wte"
    stack: str | None  # "transformer.h"
    index: int | None


def natural_key(text: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def layer_of(name: str) -> LayerKey:
    return LayerKey(*_layer(name))


def _layer(name: str) -> tuple[str, str | None, int | None]:
    """(group, stack, index) of ``name``: layer_of's fields, without an object per tensor."""
    match = _STACK.search(name)
    if match:
        end = match.end()
        group = name[: end].lstrip(".")
        stack = name[: match.start(1) - 1].lstrip(".")
        return group, stack, int(match.group(1))
    parts = name.split(".")
    if len(parts) > 1 and parts[-1] in _PARAM_SUFFIXES:
        parts = parts[:-1]
    return ".".join(parts), None, None


# Outside any layer, "output" is the language-model head (GGUF's output.weight, Meta's LLaMA checkpoints),
# not the "output" sublayer the mlp rule means inside a BERT layer.
_TOP_HEAD = re.compile(r"^output(\.|$)")


def component_of(name: str) -> str:
    match = _STACK.search(name)
    rest = name[match.end() + 1 :] if match else name
    if not match and _TOP_HEAD.match(name):
        return "head"
    for component, pattern in _COMPONENT_RULES:
        if pattern.search(rest):
            if component in ("embedding", "head") and match:
                continue  # inside a layer these words mean something else
            return component
    return "other"


# Tensors a model cannot work with all zero that have no sibling in other layers to be compared with
# (verdict._zeroed): a normalization gain (RMSNorm/LayerNorm multiply the normalized state by it: zero
# zeroes it), the token embedding and the LM head (a zero head gives uniform logits). Judged by the module
# that holds the weight (the segment before ``.weight``), so a LoRA ``lm_head.lora_B.weight`` (zero until
# trained), a norm's ``bias`` and an adaLN-Zero modulation ``norm1.linear.weight`` (zero at init) are not
# among them; PEFT's wrappers (``lm_head.base_layer.weight``, ``modules_to_save.<adapter>``) are looked through.
_GAIN_MODULE = re.compile(r"^(?:ln|ln_\w+|\w*norm\w*)$", re.IGNORECASE)
_TOKEN_MATRICES = frozenset({"embed_tokens", "wte", "word_embeddings", "tok_embeddings", "token_embd", "embed_in",
                             "shared", "lm_head", "embed_out"})
_PEFT_WRAPPERS = frozenset({"base_layer", "original_module", "modules_to_save"})


def zero_breaks(name: str, ndim: int) -> str | None:
    """``"norm"`` for a normalization gain (1-D), ``"token matrix"`` for a token embedding or LM head (2-D) by
    ``name``: tensors all zero only by damage (except the gains of a model whose norm scales by ``1 + w``, as
    Gemma's: verdict._zeroed asks for another gain that is not zero); None for anything else (LoRA and
    adapter weights included)."""
    parts = name.split(".")
    if len(parts) < 2 or parts[-1] != "weight" or any(p.lower().startswith("lora_") for p in parts):
        return None
    module = parts[:-1]
    wrapped = next((i for i, part in enumerate(module) if part in _PEFT_WRAPPERS), None)
    if wrapped is not None:
        module = module[:wrapped]
    if not module:
        return None
    if ndim == 1 and _GAIN_MODULE.match(module[-1]):
        return "norm"
    if ndim == 2 and (module[-1] in _TOKEN_MATRICES or name == "output.weight"):  # (GGUF's head: output.weight)
        return "token matrix"
    return None


def _severity(t: TensorResult) -> tuple[int, int, int]:
    """Which tensor of a layer is its worst: weights before optimizer state, then the most damage."""
    outliers = t.outliers.count if t.outliers is not None else 0
    return (t.ref.role == "weight", t.nonfinite, t.exploded + outliers)


# _STACK's first match in every line of names joined by line breaks, as one findall: the name up to the
# end of the layer number, or "" where no stack matches (one C pass over a million names).
_STACK_PREFIX = re.compile(
    r"^(?:(.*?" + _STACK.pattern.replace(r"(\d+)", r"\d+") + r"))?.*$", re.MULTILINE
)


def layer_groups(names: list[str]) -> tuple[list[str], dict[str, tuple[str | None, int | None]]]:
    """Each name's group (``layer_of(name).group``), and each group's (stack, index): ``_layer`` of every
    name, the layer numbers found by one search over all names."""
    if not names:
        return [], {}
    joined = "\n".join(names)
    if joined.count("\n") != len(names) - 1:  # a name with a line break of its own
        found = [_layer(name) for name in names]
        return [group for group, _, _ in found], {group: (stack, index) for group, stack, index in reversed(found)}
    groups = _STACK_PREFIX.findall(joined)
    if joined.startswith(".") or "\n." in joined:
        groups = [prefix.lstrip(".") for prefix in groups]
    keys: dict[str, tuple[str | None, int | None]] = {}
    if "" in groups:  # names outside any stack: named by their parts
        for i in [i for i, prefix in enumerate(groups) if not prefix]:
            groups[i], stack, index = _layer(names[i])
            keys.setdefault(groups[i], (stack, index))
    for group in dict.fromkeys(groups):
        if group not in keys:  # a stack's group ends with ".<number>"
            stack, _, number = group.rpartition(".")
            keys[group] = (stack, int(number))
    return groups, keys


def _natural_order(groups: Iterable[str], keys: dict[str, tuple[str | None, int | None]]) -> list[str]:
    """``groups`` sorted by natural_key: a stack's group is its stack's key and then its number (``natural_key``
    of ``stack.N`` is that of ``stack.`` followed by N), worked out once per stack."""
    stacks: dict[str, tuple] = {}

    def key(group: str) -> tuple:
        stack, index = keys[group]
        if stack is None or index is None:
            return natural_key(group)
        base = stacks.get(stack)
        if base is None:
            base = stacks[stack] = natural_key(stack + ".")
        return (*base, index, "")

    return sorted(groups, key=key)


def summarize(results: Iterable[TensorResult]) -> tuple[LayerSummary, ...]:
    """The tensors grouped by layer (in natural order): how many, the unhealthy ones, their NaN/Inf."""
    tensors = TensorResults.of(results)
    groups, keys = layer_groups(tensors.refs.names)
    counts = Counter(groups)  # (in order of first appearance, like the groups)
    bad: dict[str, list[TensorResult]] = {}
    for i in tensors.unhealthy_rows():
        bad.setdefault(groups[i], []).append(tensors[i])
    summaries = []
    for group in _natural_order(counts, keys):
        stack, index = keys[group]
        members = bad.get(group)
        if members is None:  # (most layers: nothing to add up)
            summaries.append(LayerSummary(group, stack, index, counts[group], 0, 0, 0, 0, None, ()))
            continue
        counted = [t for t in members if "nonfinite" in t.findings]  # (a nonfinite finding is unhealthy)
        components = sorted({component_of(t.name) for t in members}, key=COMPONENTS.index)
        summaries.append(
            LayerSummary(
                layer=group,
                stack=stack,
                index=index,
                tensors=counts[group],
                bad_tensors=len(members),
                nan=sum(t.nan for t in counted),
                posinf=sum(t.posinf for t in counted),
                neginf=sum(t.neginf for t in counted),
                worst=max(members, key=_severity).name,
                bad_components=tuple(components),
            )
        )
    return tuple(summaries)



def bad_ranges(layers: Iterable[LayerSummary]) -> tuple[LayerRange, ...]:
    """Merge consecutive bad layers of one stack: h.21, h.22, h.23 → ``transformer.h.21–23``."""
    ranges: list[LayerRange] = []
    run: list[LayerSummary] = []

    def flush() -> None:
        if not run:
            return
        first, last = run[0], run[-1]
        if first.index is None:
            label = first.layer
        elif first.index == last.index:
            label = f"{first.stack}.{first.index}"
        else:
            label = f"{first.stack}.{first.index}–{last.index}"
        ranges.append(
            LayerRange(
                stack=first.stack,
                first=first.index,
                last=last.index,
                label=label,
                tensors=sum(s.tensors for s in run),
                bad_tensors=sum(s.bad_tensors for s in run),
                nonfinite=sum(s.nonfinite for s in run),
            )
        )
        run.clear()

    for summary in layers:
        if not summary.bad:
            if summary.index is not None:
                flush()  # a clean layer of a stack breaks the run
            continue
        if (
            run
            and summary.index is not None
            and run[-1].index is not None
            and summary.stack == run[-1].stack
            and summary.index == run[-1].index + 1
        ):
            run.append(summary)
            continue
        flush()
        run.append(summary)
    flush()
    return tuple(ranges)
