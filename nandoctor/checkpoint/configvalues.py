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
  refuses (a ``max_new_tokens`` ≤ 0) are BAD CONFIG too: the weights are intact.
- config.json: a negative normalisation epsilon (``rms_norm_eps``, ``layer_norm_epsilon``: the square root of
  a negative variance is NaN) or a ``final_logit_softcapping``/``attn_logit_softcapping`` of 0
  (``tanh(x / cap) * cap`` divides by zero; null is off), Granite's ``logits_scaling`` of 0 (the logits are
  divided by it), a ``rope_theta`` of 0 or less (the rotary frequencies) or a linear or yarn rope scaling
  ``factor`` of 0: every forward pass NaN; more experts
  routed to than the model has, or a ``sliding_window`` of 0 or less: every forward pass raises. BAD CONFIG.

Values that transformers tolerates (a ``top_p`` of 1.5, a ``temperature`` of 0 without sampling, an
``eos_token_id`` outside the vocabulary) are left alone: they are no reason to call a model broken. A
``pad_token_id`` outside the vocabulary is BAD CONFIG where an ``eos_token_id`` can end a sequence: a batched
``generate`` pads a sequence that ended early with it (IndexError).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeGuard

from nandoctor.model import EPS_HARMFUL, ScanProblem
from nandoctor.verdict import CONFIG_KIND
from nandoctor.wording import first_few

_SHOWN = 3
# A sampling temperature below this makes every logit above 32 Inf (float32's largest value is 2^128): a language
# model's largest logits are 15-40, so below it generate raises (a review: logits of 20 at 5e-38 did)
TEMPERATURE_FLOOR = 2.0**-123


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


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
    ("num_beams", False, lambda v: _number(v) and v == 0, "ZeroDivisionError", "1 is greedy or sampling, no beams"),
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
    found += _load_refusals(path, generation)
    sampling = bool(generation.get("do_sample"))  # (generate asks `if do_sample`: "true", even "false", samples)
    wrong: list[str] = []
    fixes: list[str] = []
    for key, sampling_only, bad, raised, fix in _GENERATE_RULES:
        value = generation.get(key)
        if isinstance(value, str) and (sampling or not sampling_only):  # (each processor checks for a number)
            wrong.append(f"{key} is the string {json.dumps(value)[:20]} (\"{raised}\")")
            fixes.append(f"{key}: a number, not a string")
        elif bad(value) and (sampling or not sampling_only):
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


def _load_refusals(path: Path, generation: dict[str, Any]) -> list[ScanProblem]:
    """Settings ``GenerationConfig.validate`` refuses while ``from_pretrained`` loads the model: it does not load."""
    wrong = []
    returned, beams = generation.get("num_return_sequences"), generation.get("num_beams")
    beams = beams if _number(beams) and beams > 0 else 1  # (4.0 loads as 4 beams)
    if _int(returned) and returned > 1 and generation.get("do_sample") is not True:
        if beams == 1:
            wrong.append(f"num_return_sequences is {returned} without sampling or beams (\"Greedy methods without "
                         "beam search do not support num_return_sequences different than 1\")")
        elif returned > beams:
            wrong.append(f"num_return_sequences is {returned}, more than num_beams {beams} (\"num_return_sequences has to "
                         "be smaller or equal to num_beams\")")
    stopping = generation.get("early_stopping")
    if "early_stopping" in generation and stopping is not None and stopping not in (True, False, "never"):
        wrong.append(f"early_stopping is {json.dumps(stopping)[:40]} (true, false or \"never\")")
    if not wrong:
        return []
    return [ScanProblem(
        str(path), f"{first_few(wrong, _SHOWN)}: from_pretrained validates the generation settings as it loads the "
        "model, and raises", "remove those settings (generate's defaults apply) or give generate() them as arguments",
        kind=CONFIG_KIND)]


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
EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")  # Mixtral, Qwen-MoE/OLMoE, DeepSeek
_ALWAYS_SLIDING = ("mistral", "mixtral", "phi3", "starcoder2")  # (without layer_types: every layer slides)
_SLIDING_WHEN_ASKED = ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe")  # (use_sliding_window, from max_window_layers)


def model_problems(path: Path, config: dict[str, Any]) -> list[ScanProblem]:
    """Finite values in config.json (``config``, read from ``path``; sub-configs included) that make every
    forward pass NaN or raise, judged by each (sub-)config's own model type where the keys mean something only
    to some models."""
    wrong: list[str] = []
    for where, sub in _configs(config):
        wrong += _own_values(f"{where}." if where else "", sub)
    if not wrong:
        return []
    return [ScanProblem(
        str(path), f"{first_few(wrong, _SHOWN)}: from_pretrained builds the model from these values as written, and "
        "its forward pass computes NaN or raises",
        f"write the values the model was trained with (the base model's {path.name} has them)",
        kind=CONFIG_KIND,
    )]


def _own_values(prefix: str, config: dict[str, Any]) -> list[str]:
    """What in one (sub-)config breaks its model: a norm's negative epsilon, a Gemma softcap of 0, a Granite
    ``logits_scaling`` of 0, a rotary base of 0 or less, more experts routed to than exist (torch.topk raises
    "selected index k out of range"), a sliding window of no tokens where a layer slides (the attention mask and
    the scores disagree in size)."""
    wrong = []
    found_type = config.get("model_type")
    model_type = found_type if isinstance(found_type, str) else ""
    for key, value in config.items():
        words = key.lower().split("_")
        if _number(value) and words[-1] in ("eps", "epsilon") and ("norm" in words or "rms" in words) and value <= EPS_HARMFUL:
            wrong.append(f"{prefix}{key} is {value} (a norm's epsilon: the square root of a negative mean square is NaN "
                         "wherever a hidden state's is below |eps|)")
        elif key in _SOFTCAPS and _number(value) and value == 0 and model_type.startswith(_SOFTCAP_TYPES):
            wrong.append(f"{prefix}{key} is 0 (tanh(x / cap) * cap: the final cap makes the logits NaN, the attention "
                         "cap makes every score 0)")
        elif (key in _LOGIT_DIVISORS and _number(value) and value == 0
              and model_type.startswith(_LOGIT_DIVISORS[key])):
            wrong.append(f"{prefix}{key} is 0 (the logits are divided by it: every one Inf or NaN)")
    wrong += _rope_thetas(prefix, config)
    routed = config.get("num_experts_per_tok")
    experts = next((config[k] for k in EXPERT_KEYS if _number(config.get(k)) and config[k] > 0), None)
    dense = config.get("mlp_only_layers")  # (Qwen-MoE's layers without experts: all of them, no router at all)
    every_layer_dense = isinstance(dense, list) and _int(config.get("num_hidden_layers")) and len(dense) >= config["num_hidden_layers"]
    if (_number(routed) and experts is not None and experts >= 2 and routed > experts  # (1: a dense model, no router)
            and not every_layer_dense):
        wrong.append(f"{prefix}num_experts_per_tok is {routed}, more than the {experts} experts (torch.topk raises)")
    window = config.get("sliding_window")
    if _number(window) and window <= 0 and _slides(model_type, config):
        wrong.append(f"{prefix}sliding_window is {window} (no token to attend to: the attention raises; null turns it off)")
    return wrong


def _rope_thetas(prefix: str, config: dict[str, Any]) -> list[str]:
    """A rotary base of 0 or less (in ``rope_parameters`` or one of its per-layer-type entries; at the top level of
    a config without them, which transformers 5 reads it into): the frequencies 1 / theta^(2i/d) are Inf or NaN,
    and so is every query and key past position 0 (eager attention's logits NaN; CPU SDPA hides it, computing
    garbage)."""
    found = []
    # (transformers 5 reads a top-level rope_theta only into a config without rope_parameters)
    places: list[tuple[str, Any]] = [] if isinstance(config.get("rope_parameters"), dict) else [("", config)]
    for key in ("rope_parameters", "rope_scaling"):
        value = config.get(key)
        if isinstance(value, dict):
            places.append((f"{key}.", value))
            places += [(f"{key}.{k}.", v) for k, v in value.items() if isinstance(v, dict)]
    for where, values in places:
        theta = values.get("rope_theta")
        if _number(theta) and theta <= 0:
            found.append(f"{prefix}{where}rope_theta is {theta} (the rotary frequencies 1/theta^(2i/d) are Inf or NaN: "
                         "every query and key past the first position NaN)")
        factor = values.get("factor")
        if values.get("rope_type", values.get("type")) in ("linear", "yarn", "llama3") and _number(factor) and factor == 0:
            # (transformers 5.25: linear divides the frequencies by it, yarn takes its log; a trial's logits NaN)
            found.append(f"{prefix}{where}factor is 0 for {values.get('rope_type', values.get('type'))} rope "
                         "scaling (the frequencies are divided by it: every query and key NaN)")
    return found


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


__all__ = ["EXPERT_KEYS", "embeds_token_ids", "generation_problems", "model_problems", "positive", "vocab_size"]
