"""A GGUF file's float hyperparameters that make every forward pass NaN: the GGUF form of config.json's values.

llama.cpp (and transformers' GGUF loader, which turns these keys into a config.json) computes each norm from
``<arch>.attention.layer_norm_rms_epsilon`` / ``layer_norm_epsilon`` and the rotary frequencies from
``<arch>.rope.freq_base``. A NaN in a float key of the architecture's, a norm epsilon at or below -1e-3 (the square root
of a negative mean square: model.EPS_HARMFUL says why that bound) or a rotary base of 0 or less is BAD
CONFIG (exit 3): the tensors are intact, the model computes NaN (an adversarial round: each read CLEAN). An
infinite epsilon or rotary base is left alone: the norms give zeros, the rotation none, finite either way.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from nandoctor.model import CONFIG_KIND, EPS_HARMFUL, ScanProblem
from nandoctor.wording import first_few

_EPSILONS = (".attention.layer_norm_rms_epsilon", ".attention.layer_norm_epsilon")
_ROPE_BASES = (".rope.freq_base", ".rope.freq_base_swa")
# the keys judged whatever their type (the reader keeps them: an integer rotary base of 0 is as NaN as a float's)
KEYS = re.compile("(" + "|".join(re.escape(key) for key in _EPSILONS + _ROPE_BASES) + ")$")


def problems(path: str, floats: Mapping[str, object], arch: str | None = None) -> list[ScanProblem]:
    """BAD CONFIG for the key/values (``floats``: key → value; every float one, and the epsilons and rotary bases
    whatever their type: an integer, one number in an array) that make the model compute NaN."""
    wrong = []
    for key, found in floats.items():
        # (a number as any type, or one number in an array, as transformers' GGUF loader reads it)
        value = found[0] if isinstance(found, list) and len(found) == 1 else found
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        value = float(value)
        if math.isnan(value) and (arch is None or key.startswith(f"{arch}.") or key.endswith(_EPSILONS + _ROPE_BASES)):
            # (a NaN in the architecture's hyperparameters, which the loaders build the model from; a general.* or
            # tokenizer float is nobody's arithmetic)
            wrong.append(f"{key} is {value} (every value computed from it is NaN)")
        elif key.endswith(_EPSILONS) and value <= EPS_HARMFUL:
            wrong.append(f"{key} is {value} (a norm's epsilon: the square root of a negative mean square is NaN "
                         "wherever a hidden state's is below |eps|)")
        elif key.endswith(_ROPE_BASES) and value <= 0:
            wrong.append(f"{key} is {value} (the rotary frequencies base^(-2i/d) are Inf or NaN: every query and key "
                         "past the first position NaN)")
    if not wrong:
        return []
    return [ScanProblem(
        path, f"{first_few(wrong, 3)}: llama.cpp and transformers' GGUF loader build the model from these values as "
        "written, and its forward pass computes NaN",
        "write the values the model was converted with (the source model's config.json has them: rms_norm_eps, "
        "rope_theta), e.g. with gguf-py's gguf_set_metadata.py, or convert it again", kind=CONFIG_KIND)]
