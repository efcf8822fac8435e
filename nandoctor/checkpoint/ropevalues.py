"""Rope settings in config.json that make the model's rotary embedding raise or compute NaN, read as transformers 5.25
reads them (modeling_rope_utils: validate_rope as AutoConfig reads the config, the ROPE_INIT_FUNCTIONS as the model is
built, the attention scaling at every forward pass).

Each finding is a (what, what to do) pair, judged in ``rope_parameters`` (or the older ``rope_scaling``, and their
per-layer-type entries) and at the top level of a config without them:

- a rotary base (``rope_theta``) of 0 or less: the frequencies 1/theta^(2i/d) are Inf or NaN; a linear, yarn or llama3
  ``factor`` below 2^-100 (the frequencies are divided by it); llama3's ``low_freq_factor``/``high_freq_factor`` of 0
  (ZeroDivisionError as the model is built); a longrope factor of 0 or less, or a list of another length than a head's
  rotary dimensions / 2.
- the keys a rope type requires missing (linear and dynamic: ``factor``; yarn: ``factor``; longrope: ``short_factor``
  and ``long_factor``; llama3: ``factor``, ``low_freq_factor``, ``high_freq_factor``): AutoConfig raises KeyError.
- a setting the model computes with that is no number (``"factor": "4"``, a longrope factor list holding a string, a
  required one null): TypeError as the model is built (or AutoConfig's rope validation raises).
- yarn's ``beta_fast``/``beta_slow`` below 0 (a logarithm of a negative number: "math domain error"), a ``rope_theta``
  of 1 (its logarithm divides: ZeroDivisionError), mscales whose ratio divides by 0.
- the attention scaling yarn and longrope multiply cos and sin by (``attention_factor``, or the one they derive from
  ``factor``, ``mscale`` and ``mscale_all_dim``) above 2^64: queries and keys both carry it, so every attention score of
  1 or more overflows float32 (an adversarial round's 1e25: eager attention's softmax NaN).

Only the checks transformers makes while reading the config (required keys, Phi-3's list checks) apply to a config
class without rope parameters (configfields.uses_rope): another model never computes a rotary embedding from them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, TypeGuard

from nandoctor.checkpoint import configfields
from nandoctor.wording import setting_shown as _shown

Finding = tuple[str, str]  # (what is wrong, what to do)
_TINY_FACTOR = 2.0**-100  # (a factor below it divides as 0 does in float32: an adversarial round's 1e-40, NaN)
# the attention scaling yarn and longrope put on cos and sin: squared in every score, so above 2^64 a score of 1
# overflows float32 (and bf16, of the same range)
MAX_ATTENTION_SCALING = 2.0**64
# the keys validate_rope requires of each rope type beyond those standardize_rope_params fills in (rope_theta,
# original_max_position_embeddings): missing, AutoConfig raises KeyError
_REQUIRED = {"linear": ("factor",), "dynamic": ("factor",), "yarn": ("factor",),
             "longrope": ("short_factor", "long_factor"), "llama3": ("factor", "low_freq_factor", "high_freq_factor")}
# the settings each rope type's frequencies are computed from as the model is built (a string or a list there:
# TypeError), and which of them may be null (the type derives them, or takes a default)
_NUMBERS = {"default": ("rope_theta",), "linear": ("rope_theta", "factor"), "dynamic": ("rope_theta", "factor"),
            "yarn": ("rope_theta", "factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
                     "attention_factor", "mscale", "mscale_all_dim"),
            "longrope": ("rope_theta", "factor", "original_max_position_embeddings", "attention_factor"),
            "llama3": ("rope_theta", "factor", "low_freq_factor", "high_freq_factor",
                       "original_max_position_embeddings")}
_NULLABLE = frozenset({"factor", "beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim"})
_NULL_REQUIRED = {"linear": {"factor"}, "dynamic": {"factor"}, "llama3": {"factor"}}  # (null divides: TypeError)
# model types whose own validate_rope checks longrope's lists (AutoConfig raises); elsewhere a list of one factor
# broadcasts over every frequency, and loads
_LISTS_VALIDATED = ("phi3", "phimoe", "phi4_multimodal")
_ROPE_KEYS = ("rope_parameters", "rope_scaling")


def findings(prefix: str, config: dict[str, Any], head_dim: int | None) -> list[Finding]:
    """What in one (sub-)config's rope settings makes its model raise or compute NaN; ``head_dim``: a head's
    dimensions as config.json gives them (None where it does not)."""
    found: list[Finding] = []
    rope = configfields.uses_rope(config.get("model_type"))
    for where, values in _places(config):
        kind = values.get("rope_type", values.get("type", "default"))
        found += _theta(prefix + where, values, kind)
        found += _lists(prefix + where, config, values, kind, head_dim)
        if not rope or not isinstance(kind, str):  # (another model computes no rotary embedding from them)
            continue
        found += [(f"{prefix}{where}{key} is missing for {kind} rope scaling (AutoConfig raises KeyError \"Missing "
                   "required keys in `rope_parameters`\")", f"{prefix}{where}{key}: the base model's")
                  for key in _REQUIRED.get(kind, ()) if key not in values]
        found += _computed(prefix + where, config, values, kind)
    return found


def _places(config: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key path, settings) of each rope settings object of a (sub-)config: ``rope_parameters`` and ``rope_scaling``,
    each per-layer-type entry of theirs, and the config's top level where it has neither (transformers 5 reads a
    top-level ``rope_theta`` into them)."""
    if not any(isinstance(config.get(key), dict) for key in _ROPE_KEYS):
        yield "", config
    for key in _ROPE_KEYS:
        value = config.get(key)
        if isinstance(value, dict):
            yield f"{key}.", value
            yield from ((f"{key}.{k}.", v) for k, v in value.items() if isinstance(v, dict))


def _theta(where: str, values: dict[str, Any], kind: Any) -> list[Finding]:
    """A rotary base of 0 or less, a factor that divides the frequencies as 0 does, a llama3 frequency factor of 0."""
    found = []
    theta = values.get("rope_theta")
    if _number(theta) and theta <= 0:
        found.append((f"{where}rope_theta is {theta} (the rotary frequencies 1/theta^(2i/d) are Inf or NaN: every "
                      "query and key past the first position NaN)", f"{where}rope_theta: the base model's (10000.0 "
                      "for most)"))
    factor = values.get("factor")
    if kind in ("linear", "yarn", "llama3") and _number(factor) and 0 <= factor < _TINY_FACTOR:
        found.append((f"{where}factor is {factor} for {kind} rope scaling (the frequencies are divided by it: every "
                      "query and key NaN)", f"{where}factor: the context extension the model was trained with (≥ 1)"))
    if kind == "llama3":
        found += [(f"{where}{key} is {values[key]} for llama3 rope scaling (the model's build divides by it: "
                   "from_pretrained raises ZeroDivisionError)", f"{where}{key}: the base model's (1.0 and 4.0 for Llama 3.1)")
                  for key in ("low_freq_factor", "high_freq_factor") if _number(values.get(key)) and values[key] == 0]
    return found


def _lists(where: str, config: dict[str, Any], values: dict[str, Any], kind: str,
           head_dim: int | None) -> list[Finding]:
    """longrope's ``short_factor``/``long_factor``: lists of positive numbers, one per pair of a head's rotary
    dimensions (a factor of 0 or less: every query and key NaN; another type or length: the build, or Phi-3's
    validate_rope, raises)."""
    if kind != "longrope":
        return []
    found = []
    share = values.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    rotary = int(head_dim * share) if head_dim is not None and _number(share) and 0 < share <= 1 else None
    validated = str(config.get("model_type", "")).startswith(_LISTS_VALIDATED)
    for key in ("short_factor", "long_factor"):
        factors = values.get(key)
        if key not in values:
            continue
        if not isinstance(factors, list) or not all(_number(v) for v in factors):
            found.append((f"{where}{key} is {_shown(factors)}, not a list of numbers (from_pretrained raises as it "
                          "computes the frequencies)", f"{where}{key}: the base model's list of numbers"))
            continue
        bad = next((v for v in factors if v <= 0), None)
        if bad is not None:
            found.append((f"{where}{key} holds {bad} (longrope divides each frequency by its factor: every query and "
                          "key NaN)", f"{where}{key}: the base model's factors (each > 0)"))
        if rotary and len(factors) != rotary // 2 and (validated or len(factors) != 1):
            found.append((f"{where}{key} holds {len(factors)} factors, where a head's {rotary} rotary dimensions take "
                          f"{rotary // 2} (transformers' rope validation refuses it as the model loads)",
                          f"{where}{key}: {rotary // 2} factors, the base model's"))
    return found


def _computed(where: str, config: dict[str, Any], values: dict[str, Any], kind: str) -> list[Finding]:
    """What the rope type computes its frequencies and attention scaling from, as transformers computes them: a
    setting that is no number, a logarithm of 0 or less, a division by 0, a scaling that overflows the scores."""
    found: list[Finding] = []
    typed = []
    for key in _NUMBERS.get(kind, ()):
        value = values.get(key)
        if (key in values and not _number(value) and value is not None and not isinstance(value, bool)) or (
                value is None and key in values and key in _NULL_REQUIRED.get(kind, ())):
            typed.append(key)
            found.append((f"{where}{key} is {_shown(value)} for {_named(kind)}, not a number (transformers raises "
                          "TypeError as it computes the rotary embedding from it)",
                          f"{where}{key}: a number, as the base model's config.json writes it"))
    if typed:
        return found
    if kind == "yarn":
        found += _yarn(where, config, values)
    elif kind == "longrope":
        found += _longrope(where, config, values)
    return found


def _yarn(where: str, config: dict[str, Any], values: dict[str, Any]) -> list[Finding]:
    """yarn's correction range (log(original / (beta * 2 pi)) / (2 log theta)) and attention scaling, as
    _compute_yarn_parameters computes them."""
    found = []
    for key in ("beta_fast", "beta_slow"):
        beta = values.get(key)
        if _number(beta) and beta < 0:
            found.append((f"{where}{key} is {beta} for yarn rope scaling (the log of a negative number: from_pretrained "
                          "raises \"math domain error\" as it builds the model)",
                          f"{where}{key}: the base model's (32 and 1 by default, or null)"))
    theta = _theta_of(config, values)
    if theta == 1:
        found.append((f"{where}rope_theta is 1 for yarn rope scaling (its logarithm, 0, divides: from_pretrained raises "
                      "ZeroDivisionError as it builds the model)", f"{where}rope_theta: the base model's (10000.0 for most)"))
    factor = values.get("factor")
    if factor is None:
        original, longest = _original(config, values), config.get("max_position_embeddings")
        factor = _ratio(longest, original) if _number(longest) and _number(original) and original > 0 else None
    scaling = values.get("attention_factor")
    if scaling is None and _number(factor):
        mscale, mscale_all = values.get("mscale"), values.get("mscale_all_dim")
        if mscale and mscale_all and _number(mscale) and _number(mscale_all):
            below = _mscale(factor, mscale_all)
            if below == 0:
                return [*found, (f"{where}mscale_all_dim is {mscale_all} for yarn rope scaling (the attention "
                                 "scaling divides by 0.1 * mscale_all_dim * log(factor) + 1, here 0: from_pretrained "
                                 "raises ZeroDivisionError)", f"{where}mscale_all_dim: the base model's")]
            scaling = _mscale(factor, mscale) / below
        else:
            scaling = _mscale(factor, 1)
    return found + _overflows(where, "yarn", values, scaling)


def _ratio(longest: float, original: float) -> float:
    """``longest / original`` as transformers derives a context extension's factor; inf where two integers too large
    for a float make Python's division raise OverflowError (a review's 401-digit max_position_embeddings: internal
    error)."""
    try:
        return longest / original
    except OverflowError:
        return math.inf


def _longrope(where: str, config: dict[str, Any], values: dict[str, Any]) -> list[Finding]:
    """longrope's attention scaling, as _compute_longrope_parameters derives it from ``factor`` (or the context
    extension) where ``attention_factor`` is not given: sqrt(1 + log(factor) / log(original))."""
    scaling = values.get("attention_factor")
    if scaling is None:
        original, longest = _original(config, values), config.get("max_position_embeddings")
        factor = values.get("factor")
        if factor is None and _number(longest) and _number(original) and original > 0:
            factor = _ratio(longest, original)
        if _number(factor) and factor > 1 and original == 1:
            return [(f"{where}original_max_position_embeddings is 1 for longrope scaling (its logarithm, 0, divides "
                     "the attention scaling: from_pretrained raises ZeroDivisionError)",
                     f"{where}original_max_position_embeddings: the context the model was pretrained with")]
    return _overflows(where, "longrope", values, scaling)


def _overflows(where: str, kind: str, values: dict[str, Any], scaling: Any) -> list[Finding]:
    """An attention scaling whose square overflows float32 in every score of 1 or more."""
    if not _number(scaling) or abs(scaling) <= MAX_ATTENTION_SCALING:
        return []
    key = "attention_factor" if values.get("attention_factor") is not None else (
        "mscale" if values.get("mscale") else "factor")
    return [(f"{where}{key} makes {kind}'s attention scaling {scaling:.3g} (cos and sin are multiplied by it, so every "
             "attention score by its square: above 2^64 a score of 1 overflows float32, and the softmax is NaN)",
             f"{where}attention_factor: null (transformers derives it from factor), or the base model's (about 1)")]


def _named(kind: str) -> str:
    return "the default rope" if kind == "default" else f"{kind} rope scaling"


def _mscale(scale: float, mscale: float) -> float:
    """transformers' yarn_get_mscale."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _theta_of(config: dict[str, Any], values: dict[str, Any]) -> Any:
    return values.get("rope_theta", config.get("rope_theta", 10000.0))


def _original(config: dict[str, Any], values: dict[str, Any]) -> Any:
    """The pretraining context yarn and longrope scale from: a config's own ``original_max_position_embeddings``
    field first (Phi-3's), else the settings', else ``max_position_embeddings`` (standardize_rope_params)."""
    for holder in (config, values):
        if "original_max_position_embeddings" in holder:
            return holder["original_max_position_embeddings"]
    return config.get("max_position_embeddings")


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)



__all__ = ["MAX_ATTENTION_SCALING", "Finding", "findings"]
