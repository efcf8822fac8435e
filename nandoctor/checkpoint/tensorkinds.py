"""Shapes a tensor's kind gives it, whatever its model: a norm's weight and bias have one dimension, a linear
layer's weight two and its bias one; and a layer's projection that reads (or writes) the hidden state has
config.json's hidden size on the side its layer stores inputs (outputs) on: ``[out, in]`` for ``nn.Linear``,
``[in, out]`` for GPT-2's ``Conv1D``.

The same mistake made in every layer (``gate_proj`` transposed in each, every norm saved ``[1, H]``, nanoGPT's
``Linear`` weights written as GPT-2's ``Conv1D`` without ``.t()``) keeps the set of dimensions and leaves no layer
odd among its siblings, so architecture.py's other suspicions missed it, while from_pretrained refuses the weights
(size mismatch; an adversarial round read each CLEAN). These rules go by names, and a model may name its modules
otherwise (MobileBERT's layers are narrower than its hidden_size, a norm over one head is [1, head_dim]): they only
suspect, and the model architecture.py then builds from config.json decides. A wrong guess costs a build (seconds),
never a false alarm; a healthy save of the common families raises none (tests/test_tensor_kinds.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from nandoctor.checkpoint import buildvalues
from nandoctor.checkpoint.configvalues import sized
from nandoctor.verdict import family_of

# a norm module's weight or bias: norm, input_layernorm, LayerNorm, q_norm, norm_f, GPT-2's ln_1 and ln_f
NORM = re.compile(r"(?:norm[a-z_0-9]*|(?:^|\.)ln(?:_[a-z0-9]+)?)\.(?:weight|bias)$", re.IGNORECASE)
# the linear layers of attention and MLP blocks whose input is the hidden state ...
_READS = ("q_proj", "k_proj", "v_proj", "qkv_proj", "gate_proj", "up_proj", "gate_up_proj", "query", "key", "value",
          "query_key_value", "W_pack", "dense_h_to_4h", "fc1", "fc_in", "w1", "w3", "wi", "wi_0", "wi_1", "c_attn",
          "c_fc", "intermediate.dense")
# ... and whose output is (BERT's attention.output.dense and output.dense, GPT-NeoX's attention.dense; T5's wo)
_WRITES = ("o_proj", "down_proj", "out_proj", "dense_4h_to_h", "fc2", "fc_out", "w2", "wo", "c_proj", "output.dense",
           "attention.dense", "attn.dense", "self_attention.dense")
_LINEAR = re.compile(r"(?:^|\.)(?P<module>" + "|".join(re.escape(m) for m in _READS + _WRITES)
                     + r")\.(?P<part>weight|bias)$")
# the models whose c_attn, c_fc and c_proj are transformers' Conv1D, stored [in, out] (GPT-BigCode's are nn.Linear)
_CONV1D_MODELS = ("gpt2", "openai-gpt", "imagegpt", "decision_transformer", "clvp")
# names a family uses the other way round: Qwen-1's MLP reads the hidden state with both w1 and w2 (its c_proj writes
# it), where Llama's and Mixtral's w2 writes it (the README's own Qwen-shaped example read "stored transposed?")
_READS_IN: dict[str, frozenset[str]] = {"qwen": frozenset({"w2"})}
# models whose projections are named for another layout: RWKV's feed_forward.value writes the hidden state, its
# attention's value reads it; MobileBERT's and PatchTSMixer's layers are narrower than hidden_size; Zaya's MLP gate has
# a down_proj of its own (a review's sweep of every model transformers ships: each was built on every scan)
_NO_ORIENTATION = frozenset({"rwkv", "mobilebert", "patchtsmixer", "zaya"})
# attention over another stack's states: its key and value read the encoder's width, not hidden_size (BLIP-2's Q-Former)
_CROSS = re.compile(r"(?:^|\.)(?:crossattention|cross_attention|cross_attn|encoder_attn)\.")
GUESS = "stored transposed?"  # (how an orientation suspicion ends: a guess by names, only a build can confirm it)


def suspicions(config: dict[str, Any], stored: dict[str, tuple[int, ...]]) -> Iterator[tuple[str, str]]:
    """(tensor name, why) for each stored tensor whose shape its kind contradicts (the module docstring's rules)."""
    conv1d = str(config.get("model_type")) in _CONV1D_MODELS
    hidden_key, hidden = sized(config, "hidden_size")
    # (a composite model's top-level size is one of its parts': a vision tower's projections are another width)
    oriented = hidden is not None and len(list(buildvalues.sub_configs(config))) == 1
    wrong_side: dict[str, str] = {}
    for name, shape in stored.items():
        if 0 in shape:
            continue  # (stored empty: architecture.py suspects it already, as a save that did not gather it)
        # (a dimension of 1 added: [1, H]; a norm over [heads, head_dim] is two-dimensional by design, Cohere's
        # q_norm; 0-d is architecture.py's "stored with no dimension" already)
        if NORM.search(name) and len(shape) > 1 and 1 in shape:
            yield name, (f"a norm's {name.rpartition('.')[2]} has one dimension, this one is stored with "
                         f"{len(shape)} ({list(shape)})")
        match = _LINEAR.search(name)
        if match is None:
            continue
        want = 2 if match["part"] == "weight" else 1
        # (more dimensions with a leading 1 are a linear layer's unsqueezed; [out, in, k …] is a convolution's kernel,
        # a projection of SqueezeBERT, DAC, SwiftFormer)
        if shape and (len(shape) < want or (len(shape) > want and (want == 1 or shape[0] == 1))):
            yield name, f"a linear layer's {match['part']} has {want} dimension(s), this one is stored with {len(shape)}"
        elif (oriented and want == 2 and len(shape) == 2 and family_of(name) != name  # (a head's out_proj has labels)
              and str(config.get("model_type")) not in _NO_ORIENTATION and not _CROSS.search(name)):
            reads = match["module"] in _READS or match["module"] in _READS_IN.get(str(config.get("model_type")), ())
            why = _orientation(match["module"], reads, shape, hidden_key, hidden,
                               conv1d=conv1d and match["module"][:2] == "c_")
            if why:
                wrong_side[name] = why
    yield from _every_layer_alike(wrong_side, stored)


def _orientation(module: str, reads: bool, shape: tuple[int, ...], hidden_key: str, hidden: int | None, *,
                 conv1d: bool) -> str:
    """Words for a projection's weight holding the hidden size only on the side its layer does not take it on
    (``gate_proj`` stored ``[hidden, intermediate]``; ``reads``: the module's input is the hidden state), else ""."""
    side = (0 if reads else 1) if conv1d else (1 if reads else 0)  # (the dimension of the hidden state)
    if shape[side] == hidden or shape[1 - side] != hidden:
        return ""  # (square, or another width: a layer narrower than the model's, which the built model says)
    layout = "Conv1D's [in, out]" if conv1d else "nn.Linear's [out, in]"
    return (f"config.json's {hidden_key} is {hidden:,} and {module} {'reads' if reads else 'writes'} the hidden "
            f"state, so in {layout} dimension {side} is {hidden:,}: {GUESS}")


def _every_layer_alike(wrong_side: dict[str, str], stored: dict[str, tuple[int, ...]]) -> Iterator[tuple[str, str]]:
    """The entries of ``wrong_side`` whose tensor has one shape in every layer: a model whose layers differ in
    width by design (Swin's stages, OpenELM's per-layer sizes) holds the hidden size on either side in some of them,
    and one layer out of shape is architecture.py's odd-sibling suspicion already."""
    if not wrong_side:
        return
    shapes: dict[str, set[tuple[int, ...]]] = {}
    for name in wrong_side:
        shapes.setdefault(family_of(name), set())
    for name, shape in stored.items():
        family = family_of(name)
        if family in shapes:
            shapes[family].add(shape)
    for name, why in wrong_side.items():
        if len(shapes[family_of(name)]) == 1:
            yield name, why


def rearranged_hint(shape: tuple[int, ...], want: tuple[int, ...]) -> str:
    """What to do with a weight stored as ``shape`` where the model has ``want``, where the values are all there in
    another arrangement (transposed, or a dimension of 1 added or dropped), else "" (config.json's sizes are
    the ones to question)."""
    if len(shape) == 2 and shape == want[::-1]:
        return ("transpose those weights (tensor.t()) and save them again: nn.Linear stores [out, in], GPT-2's Conv1D "
                "[in, out] (a conversion from nanoGPT transposes c_attn, c_fc and c_proj)")
    if [d for d in shape if d != 1] == [d for d in want if d != 1]:
        return (f"reshape those weights to the model's shape ({list(want)}: the values are all there) and save them "
                "again")
    return ""


__all__ = ["GUESS", "NORM", "rearranged_hint", "suspicions"]
