"""config.json values transformers may not build a model from, and counts too large to build at all.

architecture.py builds the model config.json describes on the meta device only when something looks wrong,
since importing transformers and torch costs seconds. These are the cheap looks, from the JSON alone: a
``pad_token_id`` outside the vocabulary (``save_pretrained`` writes it after a pad token is added to the
tokenizer without ``resize_token_embeddings``), a head count of 0 or less, an activation, rope type or layer
type transformers 5.25 does not name. Each comes with what to build instead, so that architecture.py can tell
a value transformers refuses (the model builds without it) from a build that fails for a reason of its own. A
name missing from these lists costs a build, never a verdict. What configfields.py and ropevalues.py decide from
data without a build (a field's type where config_fields.txt holds its class, an activation its model looks up in
ACT2FN, the rope settings of a model type with rope) is not suspected here: said once, without importing transformers.

:func:`too_big` answers the other question: a config describing more layers or experts than any model has (a
one-byte edit of ``num_hidden_layers`` to 20,000 took 25 s and 1.3 GB to build) is never built.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from functools import partial
from typing import Any

from nandoctor.checkpoint import configfields
from nandoctor.checkpoint.configvalues import EXPERT_KEYS, positive, sized
from nandoctor.wording import first_few

# transformers 5.25's names (modeling_rope_utils, configuration_utils.ALLOWED_LAYER_TYPES; ACT2FN's are
# config_fields.txt's: configfields.activations)
_ACTIVATION_KEYS = ("hidden_act", "hidden_activation", "activation_function")
ROPE_TYPES = frozenset({"default", "dynamic", "linear", "llama3", "longrope", "proportional", "yarn", "axial",
                        "mrope"})  # (mrope: Qwen2-VL's hub configs, which transformers reads as default)
_ROPE_SCALED = frozenset({"dynamic", "linear", "llama3", "yarn"})  # (transformers requires their "factor")
_ROPE_KEYS = ("rope_scaling", "rope_parameters")
_ROPE_DEPTH = 3  # (settings per layer type nest one level; deeper is no rope transformers has)
LAYER_TYPES = frozenset({
    "full_attention", "sliding_attention", "chunked_attention", "window_attention", "indexed_attention",
    "compressed_sparse_attention", "heavily_compressed_attention", "minimax_m3_sparse", "conv", "moe", "hybrid",
    "hybrid_sliding", "reference_sliding_attention", "linear_attention", "sparse", "dense",
    "mlp", "basic", "bottleneck"})  # (the last three: default configs of models that do not validate them)
_HEAD_COUNTS = ("num_attention_heads", "num_key_value_heads")
# every spelling of a layer count (MPT's n_layers, a vision tower's depth, an encoder-decoder's own)
LAYER_KEYS = ("num_hidden_layers", "num_layers", "n_layer", "n_layers", "depth", "encoder_layers", "decoder_layers",
               "num_decoder_layers")
# Beyond these a config.json describes no model there is (405B Llama: 126 layers; Kimi K2: 384 experts x 61
# layers): building it on the meta device would take minutes and gigabytes for one edited number
MAX_BUILT_LAYERS = 1024
MAX_BUILT_EXPERT_LAYERS = 200_000

DROP = object()  # (a suspected value replaced by nothing: the key is removed, the class's default applies)
Suspicion = tuple[dict[str, Any], str, str, Any]  # (the (sub-)config holding it, key, why, what to build with instead)


def sub_configs(config: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """config.json's object and the objects in it that configure a model of their own (``text_config``, a
    ``vision_config`` that leaves its ``model_type`` to transformers), with their key prefix."""
    yield "", config
    for key, value in config.items():
        if isinstance(value, dict) and ("model_type" in value or str(key).endswith("_config") or key in ("encoder", "decoder")):
            yield f"{key}.", value


def suspicions(config: dict[str, Any]) -> Iterator[Suspicion]:
    """Each config value transformers may not build a model from, with what to build instead."""
    for where, sub in sub_configs(config):
        vocab = positive(sub.get("vocab_size"))
        pad = sub.get("pad_token_id")
        judged = partial(configfields.judges, sub)  # (a field whose type configfields decides: said without a build)
        if vocab and isinstance(pad, int) and not isinstance(pad, bool) and not -vocab <= pad < vocab:
            yield sub, "pad_token_id", (f"config.json's {where}pad_token_id is {pad:,}, outside the vocabulary of "
                                        f"{vocab:,} (a pad token added without resize_token_embeddings?)"), None
        elif ("pad_token_id" in sub and pad is not None and (not isinstance(pad, int) or isinstance(pad, bool))
              and not judged("pad_token_id")):
            yield sub, "pad_token_id", f"config.json's {where}pad_token_id is {json.dumps(pad)[:40]}, not a token id", None
        if "vocab_size" in sub and not vocab and (sub["vocab_size"] is not None or not where) and not (
                judged("vocab_size") and not isinstance(sub["vocab_size"], int)):
            # (a string, null, 0: transformers' field validation or a size mismatch; null in a sub-config is a codec's
            # semantic model's default, NeuCodec's: a sweep's build for nothing)
            yield sub, "vocab_size", f"config.json's {where}vocab_size is {json.dumps(sub['vocab_size'])[:40]}", DROP
        yield from _head_counts(where, sub)
        yield from _typed(where, sub)
        for key in _ACTIVATION_KEYS:
            if (isinstance(sub.get(key), str) and sub[key] not in configfields.activations()
                    and not configfields.is_activation(sub, key)):
                yield sub, key, f"config.json's {where}{key} is {sub[key][:40]!r}", "gelu"
        for key in _ROPE_KEYS:
            rope = sub.get(key)
            if isinstance(rope, dict) and not _known_rope(rope, direct=configfields.uses_rope(sub.get("model_type"))):
                yield sub, key, f"config.json's {where}{key} is {json.dumps(rope)[:80]}", DROP
        types = sub.get("layer_types")
        layers = positive(sub.get("num_hidden_layers"))
        if isinstance(types, list) and (any(not isinstance(t, str) or t not in LAYER_TYPES for t in types)
                                        or (layers and len(types) != layers)):
            shown = first_few(sorted({t if isinstance(t, str) else json.dumps(t)[:20] for t in types}), 3)
            yield sub, "layer_types", (f"config.json's {where}layer_types lists {len(types)} layer(s) ({shown})"
                                       + (f" for num_hidden_layers {layers}" if layers else "")), DROP


# Field types transformers 5.25 validates as it reads config.json (its configs are strict dataclasses: "Field
# 'num_hidden_layers' expected int, got float"), for the fields most models share: a value of another JSON type fails
# from_pretrained before it reads a weight (an adversarial round: 2.0 layers, "false" as tie_word_embeddings, a rope
# theta of "10000" each read CLEAN). A float field takes an integer (hub configs write rope_theta 10000).
_INT_FIELDS = frozenset({
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
    "max_position_embeddings", "head_dim", "n_embd", "n_layer", "n_head", "n_positions", "n_inner", "n_ctx",
    "type_vocab_size", "num_layers", "num_heads", "d_model", "d_ff", "d_kv", "moe_intermediate_size",
    "num_experts_per_tok", "num_local_experts", "num_experts", "sliding_window", "max_window_layers", "ffn_dim",
    "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads", "encoder_ffn_dim",
    "decoder_ffn_dim"})
_BOOL_FIELDS = frozenset({
    "tie_word_embeddings", "attention_bias", "mlp_bias", "use_cache", "is_encoder_decoder", "is_decoder",
    "scale_attn_weights", "use_sliding_window", "tie_encoder_decoder", "add_cross_attention"})
_FLOAT_FIELDS = frozenset({
    "rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "initializer_range", "rope_theta", "attention_dropout",
    "hidden_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob", "resid_pdrop", "embd_pdrop", "attn_pdrop",
    "partial_rotary_factor"})
# Float fields most configs type as plain ``float``, which refuses a JSON integer ("Field 'rms_norm_eps' expected float,
# got int": an adversarial round's rms_norm_eps 1, a softcap of 30 read CLEAN); where a class types one ``float | int``
# the build it asks for clears it
_STRICT_FLOAT_FIELDS = frozenset({
    "rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_epsilon", "initializer_range", "initializer_factor",
    "init_std", "final_logit_softcapping", "attn_logit_softcapping", "router_aux_loss_coef", "logit_scale"})
_DICT_FIELDS = frozenset(_ROPE_KEYS)
_NEVER_NULL = frozenset({"hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings",
                         "head_dim"})  # (GPT-Neo's intermediate_size is)
# Sizes no model is built with at 0: a 0 is no "not given" (that is null, or no key), but a layer 0 wide (the model's
# [0, 64] projections refuse the stored weights) or a division by it as the model is built (head_dim: the rotary
# frequencies' 0 ** -x). An adversarial round's intermediate_size, hidden_size, head_dim, GPT-2's n_inner, n_positions
# and n_embd of 0 each read CLEAN where from_pretrained raised: 0 had been read as "not given"
_NEVER_ZERO = frozenset({
    "hidden_size", "intermediate_size", "head_dim", "n_embd", "n_inner", "n_positions", "n_ctx",
    "max_position_embeddings", "d_model", "d_ff", "d_kv", "moe_intermediate_size", "ffn_dim", "encoder_ffn_dim",
    "decoder_ffn_dim"})
# (model types whose save_pretrained writes a null there itself, their model computing it: every healthy Mixtral save
# was built on the meta device for its "head_dim": null, seconds a scan, a sweep of 43 families found; MiniMax's too, a
# later sweep. The model types whose config class defaults head_dim to None in transformers 5.25, every one)
_NULL_SAVED = frozenset(("head_dim", model_type) for model_type in (
    "hunyuan_v1_dense", "hunyuan_v1_moe", "hunyuan_vl_text", "minimax", "ministral", "mixtral"))


def _typed(where: str, config: dict[str, Any]) -> Iterator[Suspicion]:
    """A shared field holding a value of another JSON type than transformers reads it as (null aside: many fields
    take it), to be built with the value it meant (2.0 as 2, "1e-6" as 1e-6) or without it; not a field of a config
    class config_fields.txt holds, whose type configfields.py decides without a build (these sets guess for the
    others: a model type of a newer transformers, a key that is no field of its class)."""
    model_type = str(config.get("model_type"))
    for key, value in config.items():
        judged = configfields.judges(config, key)
        if value is None and (key not in _NEVER_NULL or (key, model_type) in _NULL_SAVED) and key not in _BOOL_FIELDS:
            continue  # (a shared flag written null: most classes refuse it, "expected bool, got NoneType"; the build decides)
        if key == "vocab_size":  # (suspected above)
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key in _INT_FIELDS and number and isinstance(value, int) and (
                value < 0 or (value == 0 and (key in LAYER_KEYS or key in _NEVER_ZERO))):
            # (-1 layers: every stored layer unused, generate raises; 0 where layer_types are validated: load fails)
            types = config.get("layer_types")  # (a count its layer_types give, which transformers validates it by)
            meant = len(types) if key in LAYER_KEYS and isinstance(types, list) and types else DROP
            want = ("a positive count" if key in LAYER_KEYS else "a positive size" if key in _NEVER_ZERO
                    else "a count of 0 or more")
        elif judged:
            continue  # (its type: configfields.problems; its value above, where it is the type the class reads)
        elif key in _INT_FIELDS and not (number and isinstance(value, int)) and not isinstance(value, (list, dict)):
            # (a list or an object is a model's own per-stage or per-part sizes: Swin's num_heads, LXMERT's layers)
            meant = _meant(value, int)
            want = "an integer"
        elif key.endswith("_token_id") and key != "pad_token_id" and value is not None and not _token_ids(value):
            # (every model's special token ids are integers, or lists of them: eos_token_id 2.0 failed from_pretrained
            # and AutoTokenizer, an adversarial round's read CLEAN; the build decides)
            meant, want = (_meant(value, int) if not isinstance(value, list) else DROP), "a token id (an integer)"
        elif (key in _BOOL_FIELDS or key.startswith("use_")) and not isinstance(value, bool) and (
                key in _BOOL_FIELDS or value in (0, 1)):
            # (use_* flags are booleans: Cohere's use_qk_norm written 0 failed the same way; a use_* key of another
            # value is a model's own setting, left alone)
            meant = ({"true": True, "false": False}.get(value.lower(), DROP) if isinstance(value, str)
                     else bool(value) if number and value in (0, 1) else DROP)
            want = "true or false"
        elif key in _FLOAT_FIELDS and not number:
            meant, want = _meant(value, float), "a number"
        elif key in _STRICT_FLOAT_FIELDS and number and isinstance(value, int):
            meant = float(value) if abs(value) < 1 << 1000 else DROP  # (a 400-digit integer is no float: OverflowError)
            want = "a float (written with a decimal point)"
        elif key in _DICT_FIELDS and not isinstance(value, dict):
            meant, want = DROP, "an object"
        else:
            continue
        yield config, key, f"config.json's {where}{key} is {json.dumps(value)[:40]}, where transformers reads {want}", meant


def _token_ids(value: Any) -> bool:
    """Whether ``value`` is a token id as transformers types one: an integer, or a list of them (bools aside)."""
    if isinstance(value, list):
        return all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return isinstance(value, int) and not isinstance(value, bool)


def _meant(value: Any, kind: type) -> Any:
    """What a number written as another type meant (2.0 or "2" as the integer 2, "1e-6" as a float), else DROP."""
    try:
        number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
    except ValueError:
        return DROP
    if number is None or not math.isfinite(number):
        return DROP
    if kind is int:
        return int(number) if number.is_integer() else DROP
    return number


# keys that give a head's size where it is not width / heads (T5's d_kv, Megatron-style kv_channels, DeepSeek's latent
# attention): the heads need not divide the width (a sweep: mT5's 6 heads of 64 in a width of 512 cost a build)
_HEAD_SIZES = ("d_kv", "kv_channels", "qk_nope_head_dim", "v_head_dim", "attention_head_dim", "head_size")


def _head_counts(where: str, config: dict[str, Any]) -> Iterator[Suspicion]:
    """A head count of 0 or less, to be built with a count that divides the model's width: the other count, or
    hidden_size / head_dim (a class's default of 32 heads would not divide a small model and blame nothing)."""
    heads, kv = positive(config.get("num_attention_heads")), positive(config.get("num_key_value_heads"))
    hidden, head_dim = positive(config.get("hidden_size")), positive(config.get("head_dim"))
    from_width = hidden // head_dim if hidden and head_dim and hidden % head_dim == 0 else None
    for key, other in (("num_attention_heads", kv or from_width), ("num_key_value_heads", heads or from_width)):
        count = config.get(key)
        if isinstance(count, (int, float)) and not isinstance(count, bool) and count <= 0:
            yield config, key, f"config.json's {where}{key} is {count}", other if other else 1  # (1 divides any width)
    # a head count that does not divide the width, where no head_dim is given (attention splits the width by it:
    # transformers raises "must be divisible"; an adversarial round's GPT-2 n_head 3 with n_embd 32 read CLEAN)
    heads_key, count = sized(config, "num_attention_heads")
    width_key, width = sized(config, "hidden_size")
    if count and width and not head_dim and width % count and not any(config.get(k) for k in _HEAD_SIZES):
        fits = max(d for d in range(1, count + 1) if width % d == 0)
        yield config, heads_key, (f"config.json's {where}{heads_key} is {count}, which does not divide its "
                                  f"{width_key} of {width:,}"), fits


def _known_rope(rope: dict[str, Any], depth: int = 0, *, direct: bool = False) -> bool:
    """Whether rope settings name a rope type transformers 5.25 has, with the factor it requires; settings per
    layer type (Gemma3's ``{"sliding_attention": {…}, "full_attention": {…}}``) each. ``direct``: a model type
    whose rope settings ropevalues.py judges without a build (the keys each type requires, a theta that is no
    number): only the type's name and the original length are suspected here."""
    if "rope_type" not in rope and "type" not in rope and rope and all(isinstance(v, dict) for v in rope.values()):
        return depth < _ROPE_DEPTH and all(_known_rope(v, depth + 1, direct=direct) for v in rope.values())
    kind = rope.get("rope_type", rope.get("type"))
    original = rope.get("original_max_position_embeddings")
    if isinstance(original, (int, float)) and not isinstance(original, bool) and original <= 0:
        return False  # (yarn and longrope divide by it: ZeroDivisionError as the model is built, an adversarial round)
    theta = rope.get("rope_theta")
    if not direct and theta is not None and not (isinstance(theta, (int, float)) and not isinstance(theta, bool)):
        return False  # (a theta of "10000": TypeError as the rotary frequencies are computed)
    return isinstance(kind, str) and kind in ROPE_TYPES and (direct or kind not in _ROPE_SCALED or "factor" in rope)


def too_big(config: dict[str, Any]) -> tuple[int, int] | None:
    """(layers, experts) where config.json describes more than any model has (never built), else None."""
    subs = [sub for _, sub in sub_configs(config)]
    layers = max((positive(sub.get(k)) or 0 for sub in subs for k in LAYER_KEYS), default=0)
    experts = max((positive(sub.get(k)) or 0 for sub in subs for k in EXPERT_KEYS), default=0)
    if layers > MAX_BUILT_LAYERS or layers * max(1, experts) > MAX_BUILT_EXPERT_LAYERS:
        return layers, experts
    return None


__all__ = ["DROP", "LAYER_KEYS", "MAX_BUILT_EXPERT_LAYERS", "MAX_BUILT_LAYERS", "sub_configs", "suspicions", "too_big"]
