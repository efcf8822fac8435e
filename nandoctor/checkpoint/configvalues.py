"""Finite values in config.json and generation_config.json that make ``generate`` raise or the model compute NaN.

A NaN in a config file is found by loadconfig.py; these are numbers that are valid JSON and wrong all the same,
each a check transformers itself makes when it uses the value (its logits processors' ValueErrors), held to
transformers 5.25 by tests/test_config_values.py:

- generation_config.json, which ``generate`` reads for every call without arguments: with ``do_sample`` true a
  ``temperature`` ≤ 0 (written by people who meant greedy decoding) or below 2^-123 (the float32 logits divided by it
  overflow to Inf from 32 on: "probability tensor contains either inf, nan or element < 0"), a ``top_k`` < 0 or a ``min_p`` outside
  [0, 1]; in any mode a ``repetition_penalty`` or ``encoder_repetition_penalty`` ≤ 0, ``num_beams`` 0, a
  ``bad_words_ids`` token outside the vocabulary, an encoder-decoder's ``decoder_start_token_id`` outside it.
  The model loads: BAD CONFIG (``verdict.CONFIG_KIND``). Settings ``from_pretrained`` itself validates and
  refuses (a ``max_new_tokens`` ≤ 0, an unknown ``cache_implementation``, any ``compile_config``, a
  ``watermarking_config`` its class refuses) are BAD CONFIG too: the weights are intact. A setting of another JSON
  type than transformers compares or makes a tensor of (``_TYPES``: a string ``top_k``, a list
  ``repetition_penalty``) is judged where transformers reads it; so are the structures its processors check
  (``bad_words_ids``, ``sequence_bias``, ``suppress_tokens``) and the decoding modes transformers 5 moved to the
  Hub (contrastive, group beam, DoLa, constrained beam search: generate raises without trust_remote_code).
  ``stop_strings`` and ``token_healing`` (they need ``generate(tokenizer=…)``, which their author asks for) and a
  ``"quantized"`` cache (optimum-quanto not installed: the environment) are left alone.
- config.json: a negative normalisation epsilon (``rms_norm_eps``, ``layer_norm_epsilon``: the square root of
  a negative variance is NaN) or a ``final_logit_softcapping``/``attn_logit_softcapping`` of 0
  (``tanh(x / cap) * cap`` divides by zero; null is off), Granite's ``logits_scaling`` of 0 (the logits are
  divided by it): every forward pass NaN (rope settings that do: ropevalues.py, a finding of their own); more experts
  routed to than the model has, a ``sliding_window`` of 0 or less, or key/value heads that do not divide the heads:
  every forward pass raises. BAD CONFIG.

Values that transformers tolerates (a ``top_p`` of 1.5, a ``temperature`` of 0 without sampling, an
``eos_token_id`` outside the vocabulary) are left alone: they are no reason to call a model broken. A
``pad_token_id`` outside the vocabulary is BAD CONFIG where an ``eos_token_id`` can end a sequence: a batched
``generate`` pads a sequence that ended early with it (IndexError).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeGuard

from nandoctor.checkpoint import ropevalues
from nandoctor.model import EPS_HARMFUL, FLOAT32_MAX, ScanProblem
from nandoctor.verdict import CONFIG_KIND
from nandoctor.wording import first_few
from nandoctor.wording import setting_shown as _shown

_SHOWN = 3
# A sampling temperature below this makes every logit above 32 Inf (float32's largest value is 2^128): a language
# model's largest logits are 15-40, so below it generate raises (a review: logits of 20 at 5e-38 did)
TEMPERATURE_FLOOR = 2.0**-123


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def norm_epsilon(key: str) -> bool:
    """Whether config.json's ``key`` is a norm's epsilon (``rms_norm_eps``, ``layer_norm_epsilon``, ``norm_eps``)."""
    words = key.lower().split("_")
    return words[-1] in ("eps", "epsilon") and ("norm" in words or "rms" in words)


def positive(value: Any) -> int | None:
    """A positive integer from a config file, else None."""
    return value if _int(value) and value > 0 else None


# Older spellings of the sizes that a config class maps onto transformers' names (its attribute_map: GPT-2's n_embd
# and n_layer, BART's d_model, BLOOM's n_head): read where the canonical key is absent (a helper's trial: GPT-2's
# n_embd 32 -> 64 and n_layer 2 -> 3 read CLEAN, from_pretrained refused one and filled a layer at random in the other)
ALIASES = {
    "hidden_size": ("n_embd", "d_model", "embed_dim", "emb_dim"),  # (not hidden_dim: DistilBERT's is its FFN's width)
    "num_hidden_layers": ("n_layer", "n_layers", "num_layers"),
    "num_attention_heads": ("n_head", "n_heads", "num_heads"),
}


def sized(config: dict[str, Any], key: str) -> tuple[str, int | None]:
    """(the config.json key that gives ``key``'s size, the size): ``key`` itself, else the first of its older
    spellings present (ALIASES); the size None where it is no positive integer."""
    if key not in config:
        key = next((alias for alias in ALIASES.get(key, ()) if alias in config), key)
    return key, positive(config.get(key))


def vocab_size(config: dict[str, Any] | None) -> int | None:
    """The vocabulary size config.json gives (top level, else its text model's), if any."""
    if not isinstance(config, dict):
        return None
    for where in (config, config.get("text_config")):  # (not a decoder's own: MusicGen's has a token beyond it)
        if isinstance(where, dict) and positive(where.get("vocab_size")):
            return int(where["vocab_size"])
    return None


def embeds_token_ids(config: dict[str, Any]) -> bool:
    """Whether config.json's model looks token ids up in an embedding: not a speech model's CTC head or feature
    encoder (Wav2Vec2, HuBERT, WavLM: its vocab_size sizes the output, it embeds no token)."""
    architectures = config.get("architectures")
    ctc = isinstance(architectures, list) and any(isinstance(a, str) and "CTC" in a for a in architectures)
    return not ctc and "conv_dim" not in config


def _not_a_float(value: Any) -> bool:
    """An integer other than 1 where a logits processor checks ``isinstance(value, float)`` (1 adds no processor)."""
    return _int(value) and value != 1


# (key, applies only when sampling, is it wrong, what transformers raises, what to write)
_Rule = tuple[str, bool, Callable[[Any], bool], str, str]
_GENERATE_RULES: tuple[_Rule, ...] = (
    ("temperature", True, lambda v: _number(v) and (v <= 0 or _not_a_float(v)), "has to be a strictly positive float",
     "for greedy decoding set do_sample to false; to sample, a float > 0 (1.0 leaves the logits as they are)"),
    # (the logits, float32 in generate, are divided by it: below TEMPERATURE_FLOOR every logit above 32 becomes Inf
    # and sampling raises "probability tensor contains either inf, nan or element < 0", this tool's first symptom)
    ("temperature", True, lambda v: _number(v) and 0 < v < TEMPERATURE_FLOOR,
     "the logits divided by it overflow float32 to Inf: \"probability tensor contains either inf, nan or element < 0\"",
     "for greedy decoding set do_sample to false; to sample, a float such as 0.7 (1.0 leaves the logits as they are)"),
    ("top_k", True, lambda v: _number(v) and (v < 0 or (isinstance(v, float) and v != 0)),
     "has to be a strictly positive integer", "top_k 0 (or null) turns it off; else a positive integer"),
    ("top_p", True, lambda v: _number(v) and v < 0, "has to be a float > 0 and < 1", "1.0 (or null) turns it off"),
    ("typical_p", True, lambda v: _number(v) and v <= 0, "has to be a float > 0 and < 1", "1.0 (or null) turns it off"),
    ("min_p", True, lambda v: _number(v) and not 0 <= v <= 1, "has to be a float in the [0, 1] interval",
     "min_p null turns it off; else a value in [0, 1]"),
    ("repetition_penalty", False, lambda v: _number(v) and (v <= 0 or _not_a_float(v)),
     "has to be a strictly positive float", "1.0 is no penalty; else a float > 0"),
    ("encoder_repetition_penalty", False, lambda v: _number(v) and (v <= 0 or _not_a_float(v)),
     "has to be a strictly positive float", "1.0 is no penalty; else a float > 0"),
    ("num_beams", False, lambda v: _number(v) and (v <= 0 or (isinstance(v, float) and v != 1)),
     "ZeroDivisionError, a negative dimension or repeat_interleave() given a float",
     "1 is greedy or sampling, no beams; else an integer > 1"),
    ("prefill_chunk_size", False, lambda v: _int(v) and v <= 0, "torch.split raises on a chunk of no tokens",
     "null prefills the prompt at once; else a positive integer"),
    # (a second adversarial round's, each raised by a plain generate(): the length bound, the processors' own checks)
    ("no_repeat_ngram_size", False, lambda v: _number(v) and v > 0 and not _int(v),
     "has to be a strictly positive integer (NoRepeatNGramLogitsProcessor raises)", "an integer, or 0 (off)"),
    ("top_k", True, lambda v: isinstance(v, bool), "has to be an integer (torch.topk raises on a bool)",
     "top_k 0 (or null) turns it off; else a positive integer"),
    ("repetition_penalty", True, lambda v: _number(v) and 0 < v < TEMPERATURE_FLOOR,
     "the logits divided by it overflow float32 to Inf: \"probability tensor contains either inf, nan or element < 0\"",
     "1.0 is no penalty; else a float such as 1.1"),
    ("exponential_decay_length_penalty", False,
     lambda v: isinstance(v, list) and (len(v) != 2 or not all(_number(x) for x in v)),
     "has to be a [start index, decay factor] pair (IndexError)", "[start, factor], or null"),
    # (a third adversarial round's: TopHLogitsWarper's own check, max_length below any prompt's length)
    ("top_h", True, lambda v: _number(v) and not 0 < v <= 1, "has to be in the range (0, 1]",
     "top_h null turns it off; else a float in (0, 1]"),
)


def generation_problems(path: Path, generation: dict[str, Any], config: dict[str, Any] | None) -> list[ScanProblem]:
    """What in generation_config.json (``generation``, read from ``path``) makes ``generate`` or
    ``from_pretrained`` raise; ``config``: config.json's object, for the vocabulary size."""
    found: list[ScanProblem] = []
    new_tokens = generation.get("max_new_tokens")
    if _number(new_tokens) and new_tokens <= 0:
        found.append(ScanProblem(
            str(path), f"max_new_tokens is {new_tokens}: from_pretrained raises (\"`max_new_tokens` must be greater "
            "than 0\") and the model does not load",
            "remove max_new_tokens (generate's default applies) or set it to the number of tokens to generate",
            kind=CONFIG_KIND,
        ))
    found += _load_refusals(path, generation, [(k, e) for k, e, load in _wrong_types(generation, config) if load])
    sampling = bool(generation.get("do_sample"))  # (generate asks `if do_sample`: "true", even "false", samples)
    wrong: list[str] = []
    fixes: list[str] = []
    typed = _wrong_types(generation, config)
    for key, expected, load in typed:
        if not load:
            wrong.append(f"{key} is {_shown(generation[key])}, where transformers expects {expected} (TypeError)")
            fixes.append(f"{key}: {expected}")
    wrong_typed = {key for key, _, _ in typed}
    for key, sampling_only, bad, raised, fix in _GENERATE_RULES:
        value = generation.get(key)
        if key not in wrong_typed and bad(value) and (sampling or not sampling_only):
            wrong.append(f"{key} is {json.dumps(value)}{' with do_sample true' if sampling_only else ''} ({raised})")
            fixes.append(f"{key}: {fix}")
    beams, top_k, alpha = generation.get("num_beams"), generation.get("top_k"), generation.get("penalty_alpha")
    if (not sampling and not (_number(beams) and beams > 1) and _number(alpha) and alpha > 0 and _number(top_k)
            and top_k > 1):
        wrong.append(f"penalty_alpha is {alpha} with top_k {top_k}: contrastive search, which transformers 5 keeps on the "
                     "Hub (generate raises: it needs trust_remote_code)")
        fixes.append("penalty_alpha: null (greedy decoding), or do_sample true to sample")
    groups = generation.get("num_beam_groups")
    if _number(groups) and groups > 1:
        wrong.append(f"num_beam_groups is {groups}: group beam search, which transformers 5 keeps on the Hub (generate "
                     "raises: it needs trust_remote_code)")
        fixes.append("num_beam_groups: 1 (plain beam search)")
    hub, fix = _hub_mode(generation)
    if hub:
        wrong.append(hub)
        fixes.append(fix)
    more, more_fixes = _generate_refusals(generation, config)
    wrong += more
    fixes += more_fixes
    vocab = vocab_size(config)
    if vocab is not None:
        biased = generation.get("sequence_bias")  # ([[token ids], bias] pairs, as GenerationConfig saves them)
        biased_ids = [pair[0] for pair in biased if isinstance(pair, list) and pair] if isinstance(biased, list) else []
        outside = sorted({t for t in _token_ids(biased_ids) if not 0 <= t < vocab})
        if outside:
            wrong.append(f"sequence_bias holds token(s) {first_few([str(t) for t in outside], _SHOWN)} outside the "
                         f"vocabulary of {vocab:,} (\"the following tokens were being biased\")")
            fixes.append("sequence_bias: ids below vocab_size (the tokenizer's)")
        outside = sorted({t for t in _token_ids(generation.get("bad_words_ids")) if not 0 <= t < vocab})
        if outside:
            wrong.append(f"bad_words_ids holds token(s) {first_few([str(t) for t in outside], _SHOWN)} outside the "
                         f"vocabulary of {vocab:,} (\"the following tokens were being biased\")")
            fixes.append("bad_words_ids: ids below vocab_size (the tokenizer's)")
        pad, eos = generation.get("pad_token_id"), generation.get("eos_token_id")
        eos_ids = eos if isinstance(eos, list) else [eos]
        if _int(pad) and not 0 <= pad < vocab and any(_int(t) and 0 <= t < vocab for t in eos_ids):
            # (an added [PAD] without resize_token_embeddings: a sequence that ends before the others of a batch is
            # padded with it, and the embedding lookup raises; an eos outside the vocabulary is never generated)
            wrong.append(f"pad_token_id is {pad}, outside the vocabulary of {vocab:,} (a batched generate() pads a "
                         "sequence that ends before the others with it: IndexError)")
            fixes.append("pad_token_id: an id below vocab_size (the eos_token_id), or resize the embeddings to the "
                         "tokenizer")
        forced = generation.get("forced_eos_token_id")
        forced_ids = forced if isinstance(forced, list) else [forced]
        if any(_int(t) and not 0 <= t < vocab for t in forced_ids):
            wrong.append(f"forced_eos_token_id is {json.dumps(forced)}, outside the vocabulary of {vocab:,} (IndexError)")
            fixes.append("forced_eos_token_id: the model's eos_token_id, or null")
        start = generation.get("decoder_start_token_id")
        if (isinstance(config, dict) and config.get("is_encoder_decoder") is True and isinstance(start, int)
                and not isinstance(start, bool) and not 0 <= start < vocab):
            wrong.append(f"decoder_start_token_id is {start}, outside the vocabulary of {vocab:,} (the decoder's "
                         "first embedding lookup raises IndexError)")
            fixes.append("decoder_start_token_id: the id the model was trained with (the base model's)")
    if wrong:
        found.append(ScanProblem(
            str(path), f"{first_few(wrong, _SHOWN)}: generate() without arguments raises, as it reads these values",
            "; ".join(dict.fromkeys(fixes)) + f" (or copy {path.name} from the base model)",
            kind=CONFIG_KIND,
        ))
    return found


def _load_refusals(path: Path, generation: dict[str, Any], typed: list[tuple[str, str]]) -> list[ScanProblem]:
    """Settings ``GenerationConfig.validate`` refuses while ``from_pretrained`` loads the model: it does not load.
    ``typed``: the (key, what transformers expects) of the settings it compares that hold another JSON type."""
    wrong = [f"{key} is {_shown(generation[key])}, where transformers expects {expected} (TypeError)"
             for key, expected in typed]
    returned, beams = generation.get("num_return_sequences"), generation.get("num_beams")
    beams = beams if _number(beams) and beams > 0 else 1  # (4.0 loads as 4 beams)
    if _number(returned) and returned > 1 and generation.get("do_sample") is not True:
        if beams == 1:
            wrong.append(f"num_return_sequences is {returned} without sampling or beams (\"Greedy methods without "
                         "beam search do not support num_return_sequences different than 1\")")
        elif returned > beams:
            wrong.append(f"num_return_sequences is {returned}, more than num_beams {beams} (\"num_return_sequences has to "
                         "be smaller or equal to num_beams\")")
    stopping = generation.get("early_stopping")
    if "early_stopping" in generation and stopping is not None and stopping not in (True, False, "never"):
        wrong.append(f"early_stopping is {json.dumps(stopping)[:40]} (true, false or \"never\")")
    wrong += _validated(generation)
    if not wrong:
        return []
    return [ScanProblem(
        str(path), f"{first_few(wrong, _SHOWN)}: from_pretrained validates the generation settings as it loads the "
        "model, and raises", "remove those settings (generate's defaults apply) or give generate() them as arguments",
        kind=CONFIG_KIND)]



def _numeric(value: Any) -> bool:
    """Whether transformers can compare ``value`` with a number (null: the setting is unset)."""
    return value is None or isinstance(value, (int, float))  # (a bool compares as 0 or 1)


def _token_like(value: Any) -> bool:
    """An ``eos_token_id`` as ``torch.tensor(value, dtype=long)`` takes it (generate makes one of each special token
    id): null, a number, or a (nested) list of numbers of one shape. A null inside a list (TypeError) and ragged lists,
    ``[[2], [3, 4]]`` ("expected sequence of length 1"), read CLEAN in an adversarial round."""
    return value is None or _tensor_shape(value) is not None


def _tensor_shape(value: Any) -> tuple[int, ...] | None:
    """The shape ``torch.tensor(value)`` gives a number or nested list of numbers; None where it raises."""
    if isinstance(value, (int, float)):
        return ()
    if not isinstance(value, list):
        return None
    shapes = {_tensor_shape(item) for item in value}
    inner = shapes.pop() if len(shapes) == 1 else () if not shapes else None
    return None if inner is None else (len(value), *inner)


# What a setting has to be where transformers 5.25 reads it, and when it does (for a plain
# ``generate(ids, max_new_tokens=…)``): its JSON of another type makes a comparison or a tensor raise TypeError
# (a string "5", a list [1.2], an object). ``when``: "load" (GenerationConfig.validate, as from_pretrained loads the
# model), "always" (generate), "sample" (with do_sample: the sampling processors), "beams" (num_beams > 1), "eos"
# (an eos_token_id is set: the min-length processors), "top_k" (sampling, or get_generation_mode's ``top_k > 1``
# without beams)
_A_NUMBER, _AN_INTEGER, _A_TOKEN = "a number", "an integer", "a token id (an integer, or a list of them of one shape)"
_TYPES: dict[str, tuple[str, str, Callable[[Any], bool]]] = {
    "max_new_tokens": (_A_NUMBER, "load", _numeric),
    "num_return_sequences": (_A_NUMBER, "load", _numeric),
    "pad_token_id": ("a token id (an integer)", "load", _numeric),
    "assistant_ensemble_weight": (_A_NUMBER, "load", _numeric),
    "num_beams": (_AN_INTEGER, "always", _numeric),
    "max_time": (_A_NUMBER + " of seconds", "always", _numeric),
    "no_repeat_ngram_size": (_AN_INTEGER, "always", _numeric),
    "encoder_no_repeat_ngram_size": (_AN_INTEGER, "always", _numeric),
    "repetition_penalty": ("a float", "always", _numeric),
    "encoder_repetition_penalty": ("a float", "always", _numeric),
    "guidance_scale": (_A_NUMBER, "always", _numeric),
    "prefill_chunk_size": (_AN_INTEGER, "always", lambda v: v is None or _int(v)),
    "eos_token_id": (_A_TOKEN, "always", _token_like),
    "bos_token_id": (_A_TOKEN, "always", _token_like),
    "decoder_start_token_id": (_A_TOKEN, "always", _token_like),
    "forced_eos_token_id": (_A_TOKEN, "always", _token_like),
    "exponential_decay_length_penalty": ("a [start, decay factor] pair", "always",
                                         lambda v: v is None or isinstance(v, list)),
    "temperature": ("a float", "sample", _numeric),
    "top_k": (_AN_INTEGER, "top_k", _numeric),
    "top_p": ("a float", "sample", _numeric),
    "min_p": ("a float", "sample", _numeric),
    "top_h": ("a float", "sample", _numeric),
    "typical_p": ("a float", "sample", _numeric),
    "epsilon_cutoff": ("a float", "sample", _numeric),
    "eta_cutoff": ("a float", "sample", _numeric),
    "length_penalty": (_A_NUMBER, "beams", _numeric),
    # (an integer itself: "`min_length` has to be a non-negative integer, but is 5.0", an adversarial round)
    "min_length": (_AN_INTEGER, "eos", lambda v: v is None or isinstance(v, int)),
    "min_new_tokens": (_AN_INTEGER, "eos", lambda v: v is None or isinstance(v, int)),
}


def _wrong_types(generation: dict[str, Any], config: dict[str, Any] | None) -> list[tuple[str, str, bool]]:
    """(key, what transformers expects, whether from_pretrained raises on it) for each setting of another JSON type
    that transformers compares or makes a tensor of (``_TYPES``), where it does."""
    sampling = bool(generation.get("do_sample"))
    beams = generation.get("num_beams")
    beamed = _number(beams) and beams > 1
    eos = generation.get("eos_token_id") is not None or (isinstance(config, dict) and config.get("eos_token_id") is not None)
    used = {"load": True, "always": True, "sample": sampling, "beams": beamed, "eos": eos,
            "top_k": sampling or not beamed}
    return [(key, expected, when == "load") for key, (expected, when, fits) in _TYPES.items()
            if key in generation and used[when] and not fits(generation[key])]


# GenerationConfig's settings of the decoding modes transformers 5 moved to the Hub (generate raises "… requires
# `trust_remote_code=True` in your `generate` call"): contrastive search and group beam search are judged in
# generation_problems, DoLa and constrained beam search here
_HUB = "which transformers 5 keeps on the Hub (generate raises: it needs trust_remote_code)"


def _hub_mode(generation: dict[str, Any]) -> tuple[str, str]:
    """(the finding, its fix) where generate's mode is DoLa or constrained beam search, as get_generation_mode
    picks it; ("", "") otherwise."""
    for key in ("constraints", "force_words_ids"):  # (any value but null: constrained beam search comes first)
        if generation.get(key) is not None:
            return (f"{key} is {_shown(generation[key])}: constrained beam search, {_HUB}",
                    f"{key}: null (bad_words_ids or sequence_bias steer the tokens without it)")
    beams = generation.get("num_beams")
    assisted = any(generation.get(k) is not None for k in ("prompt_lookup_num_tokens", "assistant_early_exit")) \
        or bool(generation.get("use_mtp"))
    if generation.get("dola_layers") is not None and not (_number(beams) and beams != 1) and not assisted:
        # (DoLa extends greedy decoding and sampling only; with beams or an assistant it is passed over)
        return (f"dola_layers is {_shown(generation['dola_layers'])}: DoLa decoding, {_HUB}", "dola_layers: null")
    return "", ""


_WATERMARK_KEYS = {"greenlist_ratio", "bias", "hashing_key", "seeding_scheme", "context_width"}
_SYNTHID_KEYS = {"ngram_len", "keys", "context_history_size", "sampling_table_seed", "sampling_table_size",
                 "skip_first_ngram_calls", "debug_mode"}
# GenerationConfig.validate's cache implementations (configuration_utils' ALL_CACHE_IMPLEMENTATIONS and "paged")
CACHE_IMPLEMENTATIONS = ("static", "offloaded_static", "sliding_window", "hybrid", "hybrid_chunked", "offloaded_hybrid",
                         "offloaded_hybrid_chunked", "dynamic", "offloaded", "quantized", "paged")


def _validated(generation: dict[str, Any]) -> list[str]:
    """What else GenerationConfig.validate (and its __init__) refuses as from_pretrained loads the model."""
    wrong = []
    cache = generation.get("cache_implementation")
    if cache is not None and cache not in CACHE_IMPLEMENTATIONS:
        wrong.append(f"cache_implementation is {_shown(cache)} (\"Invalid `cache_implementation`\": one of "
                     f"{', '.join(CACHE_IMPLEMENTATIONS[:3])} … or null)")
    if generation.get("compile_config") is not None:  # (read from JSON it is never the CompileConfig it has to be)
        wrong.append(f"compile_config is {_shown(generation['compile_config'])} (\"it must be an instance of "
                     "`CompileConfig`\": save_pretrained never writes it; generate(compile_config=…) takes it)")
    wrong += _watermark(generation.get("watermarking_config"))
    suppressed = generation.get("suppress_tokens")
    if suppressed is not None and (not isinstance(suppressed, list) or any(isinstance(t, (list, dict)) for t in suppressed)):
        wrong.append(f"suppress_tokens is {_shown(suppressed)}, where transformers expects a list of token ids "
                     "(set() of it raises TypeError)")
    elif isinstance(suppressed, list):
        for key in ("forced_bos_token_id", "forced_eos_token_id"):
            forced = generation.get(key)
            forced_ids = [forced] if _int(forced) else forced if isinstance(forced, list) else []
            if forced_ids and all(t in suppressed for t in forced_ids if _int(t)) and all(_int(t) for t in forced_ids):
                wrong.append(f"{key} is {_shown(forced)}, which suppress_tokens suppresses (\"Forcing a token while "
                             "suppressing it\")")
    return wrong


def _watermark(config: Any) -> list[str]:
    """What in a ``watermarking_config`` WatermarkingConfig (or SynthIDTextWatermarkingConfig, with ``ngram_len``)
    refuses: a key it does not take, a missing one, a value its validate() refuses."""
    if config is None:
        return []
    if not isinstance(config, dict):
        return [f"watermarking_config is {_shown(config)}, where transformers expects an object (AttributeError)"]
    synthid = "ngram_len" in config
    unknown = sorted(set(config) - (_SYNTHID_KEYS if synthid else _WATERMARK_KEYS))
    if unknown:
        return [f"watermarking_config holds {', '.join(unknown[:_SHOWN])}, a key its class does not take (TypeError)"]
    if synthid:
        size = config.get("sampling_table_size")
        if "keys" not in config:
            return ["watermarking_config has ngram_len (SynthID) without its keys (TypeError)"]
        return [f"watermarking_config.sampling_table_size is {size} (\"should be < 2**24\")"] \
            if _number(size) and size > 2**24 else []
    wrong = []
    scheme, ratio, width = (config.get(k) for k in ("seeding_scheme", "greenlist_ratio", "context_width"))
    if "seeding_scheme" in config and scheme not in ("selfhash", "lefthash"):
        wrong.append(f"watermarking_config.seeding_scheme is {_shown(scheme)} (\"lefthash\" or \"selfhash\")")
    if _number(ratio) and not 0 <= ratio <= 1:
        wrong.append(f"watermarking_config.greenlist_ratio is {ratio} (in [0, 1])")
    if _number(width) and width < 1:
        wrong.append(f"watermarking_config.context_width is {width} (a positive integer)")
    return wrong


def _generate_refusals(generation: dict[str, Any], config: dict[str, Any] | None) -> tuple[list[str], list[str]]:
    """(findings, fixes) for the settings generate's processors and loops refuse as they are written: bad_words_ids
    not a list of lists, a sequence_bias that is no list of [token ids, float] pairs, low_memory with beams, a prompt
    lookup of no tokens, a float num_return_sequences, and sampling where suppress_tokens and begin_suppress_tokens
    leave no token of the vocabulary (every probability NaN)."""
    wrong: list[str] = []
    fixes: list[str] = []
    sampling = bool(generation.get("do_sample"))
    beams = generation.get("num_beams")
    beamed = _number(beams) and beams != 1
    bad = generation.get("bad_words_ids")
    if bad is not None and (not isinstance(bad, list) or not bad or not all(isinstance(w, list) for w in bad)
                            or not all(_int(t) for w in bad for t in w)):  # ([[1.5]]: "… list of positive integers")
        wrong.append(f"bad_words_ids is {_shown(bad)} (\"`bad_words_ids` has to be a non-empty list\" of lists of "
                     "token ids)")
        fixes.append("bad_words_ids: a list of token id lists, [[id], [id, id]], or null")
    bias = generation.get("sequence_bias")
    if bias is not None and (not isinstance(bias, list) or not bias or not all(_bias_pair(pair) for pair in bias)):
        wrong.append(f"sequence_bias is {_shown(bias)} (a non-empty list of [[token ids], float bias] pairs, as "
                     "GenerationConfig saves it; a JSON object's keys are no tuples)")
        fixes.append("sequence_bias: [[[id], 2.0], …] (the bias a float), or null")
    if generation.get("low_memory") is True and beamed:
        wrong.append(f"low_memory is true with num_beams {beams} (\"`low_memory=True` is not supported after the "
                     "beam search refactor\")")
        fixes.append("low_memory: null")
    lookup = generation.get("prompt_lookup_num_tokens")
    if _number(lookup) and lookup <= 0 and not beamed and generation.get("constraints") is None \
            and generation.get("force_words_ids") is None:
        wrong.append(f"prompt_lookup_num_tokens is {lookup} (\"Invalid max_matching_ngram_size or num_output_tokens\")")
        fixes.append("prompt_lookup_num_tokens: null (no prompt lookup), or the tokens to propose, such as 10")
    forced = generation.get("forced_eos_token_id")
    if isinstance(forced, list) and not any(_int(t) for t in _flattened(forced)):
        # ([] or [[]]: its processor refuses it, an adversarial round's read CLEAN. An eos_token_id of [] breaks only a
        # generate() given no attention mask, which infers one from it: the tokenizer's call gives one)
        wrong.append(f"forced_eos_token_id is {_shown(forced)}, a list of no token id (\"`eos_token_id` has to be a list "
                     "of positive integers\")")
        fixes.append("forced_eos_token_id: the model's end-of-sequence id (or a list of them), or null")
    eos = generation.get("eos_token_id")
    if isinstance(eos, list) and _token_like(eos) and not list(_flattened(eos)) and generation.get("pad_token_id") is None:
        wrong.append(f"eos_token_id is {_shown(eos)} and pad_token_id is not set (generate takes the pad token from "
                     "the first eos_token_id: IndexError)")
        fixes.append("eos_token_id: the model's end-of-sequence id (or a list of them)")
    longest = generation.get("max_length")
    if _number(longest) and longest <= 1 and generation.get("max_new_tokens") is None:
        wrong.append(f"max_length is {longest}, shorter than any prompt ('Input length of input_ids is …, but "
                     "`max_length` is set to'; generate(max_new_tokens=…) works)")
        fixes.append("max_length: null (generate's default, 20) or the longest prompt and answer to allow, or "
                     "max_new_tokens in its place")
    returned = generation.get("num_return_sequences")
    if isinstance(returned, float) and returned > 1 and sampling and not beamed:
        wrong.append(f"num_return_sequences is {returned} (repeat_interleave() given a float)")
        fixes.append("num_return_sequences: an integer")
    vocab = vocab_size(config)
    if sampling and vocab is not None:
        left = set(range(vocab))
        for key in ("suppress_tokens", "begin_suppress_tokens"):
            value = generation.get(key)
            if isinstance(value, list):
                left -= {t for t in value if _int(t)}
        if not left:
            keys = " and ".join(k for k in ("suppress_tokens", "begin_suppress_tokens") if isinstance(generation.get(k), list))
            wrong.append(f"{keys} leave no token of the vocabulary of {vocab:,} with do_sample true (every logit -inf: "
                         "\"probability tensor contains either inf, nan or element < 0\")")
            fixes.append("suppress_tokens, begin_suppress_tokens: the few tokens never to generate")
    return wrong, fixes


def _flattened(value: list[Any]) -> Iterator[Any]:
    """The items of a (nested) list."""
    for item in value:
        if isinstance(item, list):
            yield from _flattened(item)
        else:
            yield item


def _bias_pair(pair: Any) -> bool:
    """A sequence_bias entry SequenceBiasLogitsProcessor takes: [[token ids ≥ 0], a float]."""
    return (isinstance(pair, list) and len(pair) >= 2 and isinstance(pair[0], list)
            and all(_int(t) and t >= 0 for t in pair[0]) and isinstance(pair[1], float))


def _token_ids(value: Any) -> Iterator[int]:
    """The integers of bad_words_ids' list of lists (anything else: none; transformers refuses it its own way)."""
    if isinstance(value, list):
        for item in value:
            if isinstance(item, list):
                yield from (t for t in item if isinstance(t, int) and not isinstance(t, bool))


# softcaps that transformers applies whenever they are not null (tanh(x / cap) * cap), by the model types whose
# code reads them; other models ignore the keys, or take 0 as off (Laguna's moe_router_logit_softcapping)
_SOFTCAPS = ("final_logit_softcapping", "attn_logit_softcapping")
_SOFTCAP_TYPES = ("gemma", "t5gemma", "vaultgemma", "paligemma")  # (model_type prefixes: gemma2, gemma3_text, …)
# config values the logits (or the last hidden state) are divided by, by the model types whose code divides: 0 makes
# every logit Inf or NaN (HyperCLOVA X multiplies by its logits_scaling instead: not listed)
_LOGIT_DIVISORS = {"logits_scaling": ("granite", "minicpm3"), "logits_mup_width_multiplier": ("inkling",)}
# config values a model multiplies its input embeddings, its layers' outputs or its attention scores by, or raises to a
# negative power: 0 makes every logit 0, the output depend on the last token alone, the attention NaN or a plain
# average, or the build raise ZeroDivisionError (adversarial rounds' each read CLEAN)
_ZERO_BREAKS = {"embedding_multiplier": (("granite",), "the embeddings are multiplied by it: every logit is 0 and the "
                                         "output no longer depends on the prompt"),
                "logit_scale": (("cohere",), "the logits are multiplied by it: every logit is 0 and the output no "
                                "longer depends on the prompt"),
                "residual_multiplier": (("granite",), "each layer's output is multiplied by it: the layers add nothing, "
                                        "and each next token follows from the one before alone"),
                "attention_multiplier": (("granite",), "the attention scores are multiplied by it: torch's causal SDPA "
                                         "attention, the default, computes NaN, and eager attention a plain average "
                                         "of the tokens before, the query and key weights unused"),
                "query_pre_attn_scalar": (("gemma", "t5gemma", "vaultgemma"), "the attention scale is its -1/2 power: "
                                          "the model's build raises ZeroDivisionError")}
# config values a model multiplies its float32 activations by, by the model types whose code multiplies (muP
# multipliers): one beyond float32's range makes them Inf, the logits Inf or NaN (an adversarial round's 1e40s read
# CLEAN); the divisors above alike where 1 over them is (1e-40: every logit Inf)
_MULTIPLIERS = {"embedding_multiplier": ("granite", "falcon_h1"), "residual_multiplier": ("granite",),
                "attention_multiplier": ("granite",), "logit_scale": ("cohere",),
                **{key: ("falcon_h1",) for key in ("lm_head_multiplier", "attention_in_multiplier", "attention_out_multiplier",
                                                   "key_multiplier", "ssm_in_multiplier", "ssm_out_multiplier")}}
EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")  # Mixtral, Qwen-MoE/OLMoE, DeepSeek
# (PhiMoE's sparsemixer routes every token to two experts whatever num_experts_per_tok says: a helper's trial of 5
# over 3 experts loaded and generated, and was called BAD CONFIG)
_ROUTED_BY_OWN_RULE = frozenset({"phimoe"})
_ALWAYS_SLIDING = ("mistral", "mixtral", "phi3", "starcoder2")  # (without layer_types: every layer slides)
_SLIDING_WHEN_ASKED = ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe")  # (use_sliding_window, from max_window_layers)


def model_problems(path: Path, config: dict[str, Any]) -> list[ScanProblem]:
    """Finite values in config.json (``config``, read from ``path``; sub-configs included) that make every
    forward pass NaN or raise, judged by each (sub-)config's own model type where the keys mean something only
    to some models."""
    wrong: list[str] = []
    rope: list[ropevalues.Finding] = []
    for where, sub in _configs(config):
        wrong += _own_values(f"{where}." if where else "", sub)
        rope += ropevalues.findings(f"{where}." if where else "", sub, _head_dim(sub))
    found = []
    if wrong:
        found.append(ScanProblem(
            str(path), f"{first_few(wrong, _SHOWN)}: from_pretrained builds the model from these values as written, and "
            "its forward pass computes NaN or raises",
            f"write the values the model was trained with (the base model's {path.name} has them)",
            kind=CONFIG_KIND,
        ))
    if rope:
        found.append(ScanProblem(
            str(path), f"{first_few([what for what, _ in rope], _SHOWN)}: transformers computes the rotary embedding "
            "from these settings as written", "; ".join(dict.fromkeys(fix for _, fix in rope)) + f" (the base model's "
            f"{path.name} has the settings it was trained with)", kind=CONFIG_KIND))
    return found


def _own_values(prefix: str, config: dict[str, Any]) -> list[str]:
    """What in one (sub-)config breaks its model: a norm's negative epsilon, a Gemma softcap of 0, a Granite
    ``logits_scaling`` of 0, more experts routed to than exist (torch.topk raises
    "selected index k out of range"), a sliding window of no tokens where a layer slides (the attention mask and
    the scores disagree in size)."""
    wrong = []
    found_type = config.get("model_type")
    model_type = found_type if isinstance(found_type, str) else ""
    for key, value in config.items():
        if _number(value) and norm_epsilon(key) and value <= EPS_HARMFUL:
            wrong.append(f"{prefix}{key} is {value} (a norm's epsilon: the square root of a negative mean square is NaN "
                         "wherever a hidden state's is below |eps|)")
        elif isinstance(value, float) and norm_epsilon(key) and value > FLOAT32_MAX:
            # (an adversarial round's 1e39: every normalized hidden state x / sqrt(ms + Inf) is 0, every logit 0)
            wrong.append(f"{prefix}{key} is {value:g}, beyond float32's range (a norm's epsilon: Inf as the norm adds "
                         "it, so every normalized hidden state is 0 and every logit 0, whatever the prompt)")
        elif key in _SOFTCAPS and _number(value) and value == 0 and model_type.startswith(_SOFTCAP_TYPES):
            wrong.append(f"{prefix}{key} is 0 (tanh(x / cap) * cap: the final cap makes the logits NaN, the attention "
                         "cap makes every score 0)")
        elif (key in _LOGIT_DIVISORS and _number(value) and value == 0
              and model_type.startswith(_LOGIT_DIVISORS[key])):
            wrong.append(f"{prefix}{key} is 0 (the logits are divided by it: every one Inf or NaN)")
        elif key in _ZERO_BREAKS and _number(value) and value == 0 and model_type.startswith(_ZERO_BREAKS[key][0]):
            wrong.append(f"{prefix}{key} is 0 ({_ZERO_BREAKS[key][1]})")
        elif (key in _MULTIPLIERS and _number(value) and math.isfinite(value) and abs(value) > FLOAT32_MAX
              and model_type.startswith(_MULTIPLIERS[key])):
            wrong.append(f"{prefix}{key} is {value:g}, beyond float32's range (the model multiplies its activations by "
                         "it: Inf, and the logits Inf or NaN)")
        elif (key in _LOGIT_DIVISORS and _number(value) and 0 < abs(value) < 1 / FLOAT32_MAX
              and model_type.startswith(_LOGIT_DIVISORS[key])):
            wrong.append(f"{prefix}{key} is {value:g} (the logits are divided by it: 1 over it is beyond float32's "
                         "range, every logit Inf or NaN)")
        elif key == "return_dict" and value is False:
            # (transformers 5's heads read their base model's output by field: an adversarial round's read CLEAN)
            wrong.append(f"{prefix}return_dict is false (the model's layers return tuples where its head reads "
                         "fields: every forward and generate raise AttributeError)")
        elif key == "return_dict" and (value is None or (_number(value) and value == 0)):
            # (null or 0 reach the head as falsy but not False: the model runs and generates, and returns tuples, a
            # review's oracle)
            wrong.append(f"{prefix}return_dict is {_shown(value)} (the model returns tuples: model(**inputs).logits "
                         "raises AttributeError, though generate works)")
        elif key == "attn_implementation" and isinstance(value, str) and not _known_attention(value):
            # (save_pretrained never writes it: a hand-edited config.json, an adversarial round's typo read CLEAN)
            wrong.append(f"{prefix}attn_implementation is {_shown(value)}, not one transformers names (from_pretrained "
                         f"raises: {', '.join(ATTENTIONS)}, or null for its default)")
        elif key == QUANTIZATION and value is not None and not _names_quantizer(value):
            wrong.append(f"{prefix}{QUANTIZATION} is {_shown(value)}, which names no quant_method (from_pretrained "
                         "raises; null, or no such key, where the weights are not quantized)")
    if config.get("is_encoder_decoder") and _decoder_only(config):
        # (generate then asks for an encoder's input: "You must specify exactly one of input_ids or inputs_embeds"; it
        # asks `if is_encoder_decoder`, so "false" is true there, a later round's)
        wrong.append(f"{prefix}is_encoder_decoder is {_shown(config['is_encoder_decoder'])} for {config['architectures'][0]}, a decoder-only model (generate "
                     "raises: it looks for an encoder)")
    wrong += _rotary_dims(prefix, config)
    wrong += routing_problems(prefix, config)
    buckets, distance = config.get("relative_attention_num_buckets"), config.get("relative_attention_max_distance")
    if (model_type.startswith(("t5", "mt5", "umt5", "longt5")) and _int(buckets) and _int(distance)
            and distance <= buckets // 4):
        # (its log-spaced buckets start past the exact ones: log(distance / exact) is a math domain error at 0 and an
        # index past the table once an input is longer than it, an adversarial round)
        wrong.append(f"{prefix}relative_attention_max_distance is {distance}, within the {buckets // 4} exact buckets of "
                     f"{buckets} (the attention's bucketing fails on inputs longer than it)")
    wrong += _grouped_heads(prefix, config)
    window = config.get("sliding_window")
    if _number(window) and window <= 0 and _slides(model_type, config):
        wrong.append(f"{prefix}sliding_window is {window} (no token to attend to: the attention raises; null turns it off)")
    return wrong


# transformers 5.25's attention implementations by name (modeling_utils' check; "paged|" before one of them is paged
# attention over it); a repository id ("org/kernel") fetches a kernel from the Hub, which a load decides itself
ATTENTIONS = ("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3", "flash_attention_4")
QUANTIZATION = "quantization_config"  # a quantizer that unpacks stored tensors its own way (loadconfig.py too)


def _known_attention(value: str) -> bool:
    return value.removeprefix("paged|") in ATTENTIONS or "/" in value


def _names_quantizer(value: Any) -> bool:
    """A ``quantization_config`` transformers can pick a quantizer from: an object naming its ``quant_method``, or
    bitsandbytes' older ``load_in_8bit``/``load_in_4bit`` flags (a method transformers does not know it skips)."""
    return isinstance(value, dict) and (isinstance(value.get("quant_method"), str)
                                        or value.get("load_in_8bit") is True or value.get("load_in_4bit") is True)


# decoder-only LM heads transformers names otherwise than *ForCausalLM (T5's legacy "T5WithLMHeadModel", which Google's
# own t5-small config.json names, is an encoder-decoder: a review's read BAD CONFIG)
_OTHER_CAUSAL_HEADS = frozenset({"GPT2LMHeadModel", "OpenAIGPTLMHeadModel", "CTRLLMHeadModel", "TransfoXLLMHeadModel",
                                 "XLNetLMHeadModel", "GPTBigCodeLMHeadModel"})


def _decoder_only(config: dict[str, Any]) -> bool:
    """Whether every class config.json's ``architectures`` names is a causal LM (a decoder alone)."""
    names = config.get("architectures")
    return (isinstance(names, list) and bool(names)
            and all(isinstance(n, str) and (n.endswith("ForCausalLM") or n in _OTHER_CAUSAL_HEADS) for n in names))


_HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model")
_HEAD_KEYS = ("num_attention_heads", "n_head")


def _head_dim(config: dict[str, Any]) -> int | None:
    """A head's dimensions: ``head_dim``, else the hidden size over the heads; None where config.json gives neither."""
    head = config.get("head_dim")
    if _int(head) and head > 0:
        return head
    hidden = next((config[k] for k in _HIDDEN_KEYS if _int(config.get(k)) and config[k] > 0), None)
    heads = next((config[k] for k in _HEAD_KEYS if _int(config.get(k)) and config[k] > 0), None)
    return hidden // heads if hidden is not None and heads is not None else None


# (a rotary share above 1 by design: EfficientLoFTR's 2-D position embedding, 4.0 by default; every other fresh config
# of transformers 5.25 stays at or below 1: tests/test_config_fields.py sweeps them)
_WIDE_ROTARY = frozenset({"efficientloftr"})


def _rotary_dims(prefix: str, config: dict[str, Any]) -> list[str]:
    """Rotary dimensions past a head's (GPT-J's and CodeGen's ``rotary_dim``, GPT-NeoX's ``rotary_pct`` and
    ``partial_rotary_factor`` above 1): the rotary embedding is applied to that many dimensions of each head, and
    generate raises a size mismatch (a false-alarm hunt's GPT-J with rotary_dim 64 over heads of 8 read CLEAN)."""
    head = _head_dim(config)
    wrong = []
    rotary = config.get("rotary_dim")
    if head is not None and _int(rotary) and rotary > head:
        wrong.append(f"{prefix}rotary_dim is {rotary}, more than a head's {head} dimensions (the rotary embedding "
                     "raises a size mismatch as the model generates)")
    # (transformers 5 reads the share from rope_parameters where config.json has them, else from the top level, as
    # older saves hold it: a top-level value beside rope_parameters is not read)
    rope = config.get("rope_parameters")
    where = rope if isinstance(rope, dict) and "partial_rotary_factor" in rope else config
    named = "rope_parameters." if where is rope else ""
    if str(config.get("model_type")) in _WIDE_ROTARY:
        return wrong
    for key in ("rotary_pct", "partial_rotary_factor"):
        share = where.get(key)
        if _number(share) and share > 1:
            wrong.append(f"{prefix}{named}{key} is {share}: more rotary dimensions than a head has (the rotary "
                         "embedding raises a size mismatch as the model generates)")
    return wrong


def _grouped_heads(prefix: str, config: dict[str, Any]) -> list[str]:
    """Key/value heads that do not divide the query heads: grouped-query attention shares each key/value head among
    heads / kv_heads query heads (repeat_kv), and every forward pass raises "The size of tensor a (4) must match the
    size of tensor b (3)" (an adversarial round's 4 heads over 3 loaded and read CLEAN: the weights are consistent
    with the config, so no shape shows it). Not latent attention (DeepSeek's ``kv_lora_rank``): its keys and values
    are made per query head, and SDPA, the default, never reads the count (a test's 4 heads over DeepSeek-V3's
    default 128 generate)."""
    heads, kv = config.get("num_attention_heads"), config.get("num_key_value_heads")
    if not (_int(heads) and _int(kv) and heads > 0 and kv > 0) or heads % kv == 0 or "kv_lora_rank" in config:
        return []
    return [f"{prefix}num_key_value_heads is {kv}, which does not divide num_attention_heads of {heads} (grouped-query "
            "attention shares each key/value head among the same number of query heads: every forward pass raises)"]


def routing_problems(prefix: str, config: dict[str, Any]) -> list[str]:
    """More experts routed to than exist (torch.topk raises "selected index k out of range" as the model generates),
    or none, in one (sub-)config; architecture.py asks it of the values a model is built with too (a class's default
    num_experts_per_tok where config.json gives none)."""
    routed = config.get("num_experts_per_tok")
    experts = next((config[k] for k in EXPERT_KEYS if _number(config.get(k)) and config[k] > 0), None)
    dense = config.get("mlp_only_layers")  # (Qwen-MoE's layers without experts: all of them, no router at all)
    every_layer_dense = isinstance(dense, list) and _int(config.get("num_hidden_layers")) and len(dense) >= config["num_hidden_layers"]
    if (not _number(routed) or experts is None or experts < 2  # (1: a dense model, no router)
            or every_layer_dense or str(config.get("model_type")) in _ROUTED_BY_OWN_RULE):
        return []
    if routed > experts:
        return [f"{prefix}num_experts_per_tok is {routed}, more than the {experts} experts (torch.topk raises)"]
    if routed <= 0:
        # (an adversarial round: 0 experts a token loaded and generated, every MoE block adding nothing)
        return [f"{prefix}num_experts_per_tok is {routed}: no expert is routed to, so every MoE block adds nothing "
                "and the model's output is not the trained one"]
    return []




def _slides(model_type: str, config: dict[str, Any]) -> bool:
    """Whether some layer of the model uses its sliding window, as transformers 5.25 decides it."""
    types = config.get("layer_types")
    if isinstance(types, list):
        return "sliding_attention" in types
    if model_type in _SLIDING_WHEN_ASKED:
        below, layers = config.get("max_window_layers"), config.get("num_hidden_layers")
        return config.get("use_sliding_window") is True and not (_number(below) and _number(layers) and below >= layers)
    return model_type in _ALWAYS_SLIDING


def _configs(data: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """config.json's object and each sub-config in it (an object with its own ``model_type``), with its key."""
    yield "", data
    for key, value in data.items():
        if isinstance(value, dict) and "model_type" in value:
            yield str(key), value


__all__ = ["CACHE_IMPLEMENTATIONS", "EXPERT_KEYS", "embeds_token_ids", "generation_problems", "model_problems", "positive",
           "routing_problems", "vocab_size"]
