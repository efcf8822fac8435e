"""A norm's epsilon of 0 (or a harmless-looking negative one) where a token's embedding row is all zeros.

A norm divides by ``sqrt(mean square + eps)``: for a hidden state of zeros and an epsilon of 0 that is 0 / 0, NaN.
A LayerNorm (``layer_norm_eps``: GPT-NeoX, Phi, StableLM, Falcon) divides ``x - mean`` by ``sqrt(variance + eps)``,
0 / 0 for any *constant* row (torch's variance of equal values is exactly 0: checked for widths 64 to 1,000),
so there a row whose every element is one value is as bad as a row of zeros.
A model whose first operation is a norm of the token embedding (Llama, Mistral, Qwen, Gemma: no position
embedding is added before it) meets such a hidden state wherever an input holds a token whose embedding row is
all zeros, and transformers makes one such row in every model it initializes with a ``pad_token_id``
(``nn.Embedding(padding_idx=…)``; training leaves it zero, as the pad token's gradient is). Its NaN reaches
every position through the attention (masked or not: 0 × NaN is NaN), so every left-padded batch generates
garbage or raises, while unpadded prompts are fine. An adversarial round's config.json edit (``rms_norm_eps: 0``)
read CLEAN.

Judged only where config.json gives such an epsilon (rare, so reading the embedding costs a healthy scan nothing);
then the token embedding's rows are read (bits: a float zero is one whose bits but the sign are 0). A negative
epsilon beyond :data:`~nandoctor.model.EPS_HARMFUL` is configvalues.py's own BAD CONFIG, for every input.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nandoctor.checkpoint import tensorrows
from nandoctor.checkpoint.configvalues import norm_epsilon
from nandoctor.model import CONFIG_KIND, EPS_HARMFUL, FLOAT32_ZERO, RefTable, ScanProblem, TensorRef
from nandoctor.wording import first_few

# a model's token embedding (Llama's model.embed_tokens, GPT-2's wte, GPT-NeoX's embed_in, BERT's word_embeddings)
_EMBEDDING = re.compile(r"^(?:[A-Za-z_]+\.){0,2}(?:embed_tokens|wte|embed_in|word_embeddings|tok_embeddings)\.weight$")
# a learned position embedding added to the token's before the first norm: a zero token row is no zero hidden state
_POSITIONS = re.compile(r"(?:^|\.)(?:wpe|position_embeddings|embed_positions)\.weight$")
_SHOWN = 4


def problems(config_path: Path, config: dict[str, Any], weights: Sequence[Sequence[TensorRef]]) -> list[ScanProblem]:
    """BAD CONFIG where ``config`` (read from ``config_path``) gives a norm epsilon in (EPS_HARMFUL, 0] (or one that
    rounds to 0 in float32, 1e-46, as the norm adds it) and the
    token embedding among ``weights`` (the refs of the files from_pretrained reads) has rows of zeros (of one value
    for a LayerNorm's epsilon)."""
    epsilons = [(key, value) for key, value in _epsilons(config) if EPS_HARMFUL < value <= FLOAT32_ZERO]
    if not epsilons:
        return []
    embedding, positions = None, False
    for refs in weights:
        names = refs.names if isinstance(refs, RefTable) else [ref.name for ref in refs]  # (no ref made per name)
        for i, name in enumerate(names):
            if _POSITIONS.search(name):
                positions = True
            elif embedding is None and _EMBEDDING.match(name):
                embedding = refs[i]
    if embedding is None or positions:
        return []
    key, value = epsilons[0]
    constant = _layer_norm(key, config)
    rows = _degenerate_rows(embedding, constant)
    if not rows:
        return []
    pad = config.get("pad_token_id")
    said = [f"{row} (the pad token)" if row == pad else str(row) for row in rows]
    return [ScanProblem(
        str(config_path),
        f"{key} is {value} and {len(rows):,} row(s) of the token embedding {embedding.name} are "
        f"{'constant (zeros, or one value throughout: a LayerNorm subtracts the mean)' if constant else 'all zeros'} "
        f"({'id' if len(rows) == 1 else 'ids'} {first_few(said, _SHOWN)}): the first norm divides 0 by 0 for an input "
        "holding one of those tokens, and the attention spreads its NaN to every position"
        + (" (every padded batch)" if pad in rows else ""),
        f"write the epsilon the model was trained with (the base model's {config_path.name} has it, 1e-05 or 1e-06 "
        "most often)",
        kind=CONFIG_KIND,
    )]


def _epsilons(config: dict[str, Any]) -> list[tuple[str, float]]:
    """config.json's norm epsilons from float32's 0 down to -1 (and its text model's: configvalues.norm_epsilon)."""
    found = []
    for prefix, sub in (("", config), ("text_config.", config.get("text_config"))):
        if not isinstance(sub, dict):
            continue
        for key, value in sub.items():
            if (norm_epsilon(key) and isinstance(value, (int, float)) and not isinstance(value, bool)
                    and -1 < value <= FLOAT32_ZERO):
                found.append((prefix + key, float(value)))  # (in range: a 400-digit integer is no float)
    return found


# model types whose ``layer_norm_epsilon`` is an RMSNorm's (T5's T5LayerNorm, Mamba's MambaRMSNorm): a constant row
# of them divides by no zero (a review's)
_RMS_UNDER_LAYER_NAME = ("t5", "mt5", "umt5", "longt5", "switch_transformers", "pop2piano", "udop", "mamba",
                         "falcon_mamba")


def _layer_norm(key: str, config: dict[str, Any]) -> bool:
    """Whether config.json's epsilon ``key`` is a LayerNorm's (``layer_norm_eps``, ``text_config.layer_norm_epsilon``),
    which subtracts the row's mean first, not an RMSNorm's (``rms_norm_eps``, ``norm_eps``, T5's and Mamba's
    ``layer_norm_epsilon``)."""
    where, _, name = key.rpartition(".")
    sub = config.get(where) if where else config
    model_type = sub.get("model_type") if isinstance(sub, dict) else None
    rms = isinstance(model_type, str) and model_type.startswith(_RMS_UNDER_LAYER_NAME)
    return "layer" in name.lower().split("_") and not rms


def _degenerate_rows(ref: TensorRef, constant: bool) -> list[int]:
    """The rows of the 2-D float tensor ``ref`` whose every element is ±0 (``constant``: or whose elements are all one
    value); empty where it cannot be read plainly (tensorrows.readable)."""
    if len(ref.shape) != 2 or not tensorrows.readable(ref):
        return []
    magnitude = tensorrows.magnitude(ref)
    found: list[int] = []
    try:
        for first, block in tensorrows.row_blocks(ref):
            degenerate = ~(block & magnitude).any(axis=1)
            if constant:  # (equal bits: one value; ±0 mixed is a zero row, above)
                degenerate |= (block == block[:, :1]).all(axis=1)
            found += (np.flatnonzero(degenerate) + first).tolist()
    except OSError:
        return []
    return found


__all__ = ["problems"]
