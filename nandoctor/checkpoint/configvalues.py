"""Finite values in config.json and generation_config.json that make ``generate`` raise or the model compute NaN.

A NaN in a config file is found by loadconfig.py; these are numbers that are valid JSON and wrong all the same,
each a check transformers itself makes when it uses the value (its logits processors' ValueErrors), held to
transformers 5.25 by tests/test_config_values.py:

- generation_config.json, which ``generate`` reads for every call without arguments: with ``do_sample`` true a
  ``temperature`` ≤ 0 (written by people who meant greedy decoding), a ``top_k`` < 0 or a ``min_p`` outside
  [0, 1]; in any mode a ``repetition_penalty`` or ``encoder_repetition_penalty`` ≤ 0, ``num_beams`` 0, a
  ``bad_words_ids`` token outside the vocabulary, an encoder-decoder's ``decoder_start_token_id`` outside it.
  The model loads: BAD CONFIG (``verdict.CONFIG_KIND``). A ``max_new_tokens`` ≤ 0 makes ``from_pretrained``
  itself raise: NOT LOADABLE.
- config.json: a negative normalisation epsilon (``rms_norm_eps``, ``layer_norm_epsilon``: the square root of
  a negative variance is NaN) or a ``final_logit_softcapping``/``attn_logit_softcapping`` of 0
  (``tanh(x / cap) * cap`` divides by zero; null is off): every forward pass
  NaN; more experts routed to than the model has, or a ``sliding_window`` of 0 or less: every forward pass
  raises. BAD CONFIG.

Values that transformers tolerates (a ``top_p`` of 1.5, a ``temperature`` of 0 without sampling, an
``eos_token_id`` outside the vocabulary) are left alone: they are no reason to call a model broken.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeGuard

from nandoctor.model import ScanProblem
from nandoctor.verdict import CONFIG_KIND, UNLOADABLE_KIND
from nandoctor.wording import first_few

_SHOWN = 3


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def vocab_size(config: dict[str, Any] | None) -> int | None:
    """The vocabulary size config.json gives (top level, else its text model's), if any."""
    if not isinstance(config, dict):
        return None
    for where in (config, config.get("text_config"), config.get("decoder")):
        if isinstance(where, dict) and isinstance(where.get("vocab_size"), int) and where["vocab_size"] > 0:
            return int(where["vocab_size"])
    return None


# (key, applies when do_sample only, is it wrong, what transformers raises, what to write)
_Rule = tuple[str, bool, Callable[[Any], bool], str, str]
_GENERATE_RULES: tuple[_Rule, ...] = (
    ("temperature", True, lambda v: _number(v) and v <= 0, "has to be a strictly positive float",
     "for greedy decoding set do_sample to false; to sample, a temperature > 0 (1.0 leaves the logits as they are)"),
    ("top_k", True, lambda v: _number(v) and v < 0, "has to be a strictly positive integer",
     "top_k 0 (or null) turns it off; else a positive number"),
    ("min_p", True, lambda v: _number(v) and not 0 <= v <= 1, "has to be a float in the [0, 1] interval",
     "min_p null turns it off; else a value in [0, 1]"),
    ("repetition_penalty", False, lambda v: _number(v) and v <= 0, "has to be a strictly positive float",
     "1.0 is no penalty"),
    ("encoder_repetition_penalty", False, lambda v: _number(v) and v <= 0, "has to be a strictly positive float",
     "1.0 is no penalty"),
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
            kind=UNLOADABLE_KIND,
        ))
    sampling = generation.get("do_sample") is True
    wrong: list[str] = []
    fixes: list[str] = []
    for key, sampling_only, bad, raised, fix in _GENERATE_RULES:
        value = generation.get(key)
        if bad(value) and (sampling or not sampling_only):
            wrong.append(f"{key} is {value}{' with do_sample true' if sampling_only else ''} ({raised})")
            fixes.append(f"{key}: {fix}")
    vocab = vocab_size(config)
    if vocab is not None:
        outside = sorted({t for t in _token_ids(generation.get("bad_words_ids")) if not 0 <= t < vocab})
        if outside:
            wrong.append(f"bad_words_ids holds token(s) {first_few([str(t) for t in outside], _SHOWN)} outside the "
                         f"vocabulary of {vocab:,} (\"the following tokens were being biased\")")
            fixes.append("bad_words_ids: ids below vocab_size (the tokenizer's)")
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


def _token_ids(value: Any) -> Iterator[int]:
    """The integers of bad_words_ids' list of lists (anything else: none; transformers refuses it its own way)."""
    if isinstance(value, list):
        for item in value:
            if isinstance(item, list):
                yield from (t for t in item if isinstance(t, int) and not isinstance(t, bool))


# softcaps that transformers applies whenever they are not null (Gemma2/3, T5Gemma, VaultGemma: tanh(x / cap) * cap);
# others treat 0 as off (Laguna's moe_router_logit_softcapping defaults to 0)
_SOFTCAPS = ("final_logit_softcapping", "attn_logit_softcapping")


def model_problems(path: Path, config: dict[str, Any]) -> list[ScanProblem]:
    """Finite values in config.json (``config``, read from ``path``; sub-configs included) that make every
    forward pass NaN."""
    wrong = []
    for where, value in _numbers(config):
        words = where.rsplit(".", 1)[-1].lower().split("_")
        if words[-1] in ("eps", "epsilon") and value < 0:
            wrong.append(f"{where} is {value} (a normalisation's epsilon: the square root of a negative variance is NaN)")
        elif where.rsplit(".", 1)[-1] in _SOFTCAPS and value == 0:
            wrong.append(f"{where} is 0 (tanh(x / cap) * cap divides by zero: NaN)")
    for where, sub in _configs(config):
        wrong += _relations(where, sub)
    if not wrong:
        return []
    return [ScanProblem(
        str(path), f"{first_few(wrong, _SHOWN)}: from_pretrained builds the model from these values as written, and "
        "every forward pass computes NaN or raises",
        f"write the values the model was trained with (the base model's {path.name} has them; null turns a softcap off)",
        kind=CONFIG_KIND,
    )]


_EXPERT_COUNTS = ("num_local_experts", "num_experts", "n_routed_experts")  # Mixtral, Qwen-MoE/OLMoE, DeepSeek


def _relations(where: str, config: dict[str, Any]) -> list[str]:
    """Values of one (sub-)config that break the forward pass together with another: more experts routed to than
    exist (torch.topk raises "selected index k out of range"), a sliding window of no tokens (the attention mask
    and the scores disagree in size)."""
    prefix = f"{where}." if where else ""
    wrong = []
    routed = config.get("num_experts_per_tok")
    experts = next((config[k] for k in _EXPERT_COUNTS if _number(config.get(k)) and config[k] > 0), None)
    if _number(routed) and experts is not None and routed > experts:
        wrong.append(f"{prefix}num_experts_per_tok is {routed}, more than the {experts} experts (torch.topk raises)")
    window = config.get("sliding_window")
    if _number(window) and window <= 0 and config.get("use_sliding_window") is not False:
        wrong.append(f"{prefix}sliding_window is {window} (no token to attend to: the attention raises; null turns it off)")
    return wrong


def _configs(data: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """config.json's object and each sub-config in it (an object with its own ``model_type``), with its key."""
    yield "", data
    for key, value in data.items():
        if isinstance(value, dict) and "model_type" in value:
            yield str(key), value


def _numbers(data: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """Each number under a key of ``data`` and of its sub-config objects, with its key path."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            stack += [(f"{where}.{key}" if where else str(key), item) for key, item in reversed(value.items())]
        elif _number(value) and where:
            yield where, value


__all__ = ["generation_problems", "model_problems", "vocab_size"]
