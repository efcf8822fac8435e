"""The families of a layer stack: one tensor of every layer (``model.layers.#.mlp.down_proj.weight``), and a family
the model config.json describes does not build.

A conversion whose mapping lacks one entry (Mistral's ``w2`` left for ``down_proj``), a filter that drops a module,
or trained biases beside a config.json whose ``attention_bias`` says false leave every layer alike: no layer is odd
among its siblings, and from_pretrained initializes the missing family at random or ignores the stored one (an
adversarial round: each read CLEAN). A family the model needs and no layer stores is suspected from the
vocabulary of the config's model type (layervocab.py) and named by the model built (architecture.py's layers out of
pattern); stored biases of a model config.json builds without them are suspected here (:func:`biases_unbuilt`), and
a stored family the model built does not have, in every layer that holds it, is NOT LOADABLE (:func:`unused`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

from nandoctor.model import ScanProblem
from nandoctor.verdict import UNLOADABLE_KIND
from nandoctor.wording import first_few

STACK = re.compile(r"^((?:[A-Za-z_]+\.){0,2}(?:layers|h|blocks|block|layer))\.(\d+)\.")  # (block: T5)
_NUMBER = re.compile(r"(?<=\.)\d+(?=\.)|^\d+(?=\.)")  # (a numbered segment in a layer: an expert's, T5's sub-layer)
Families = dict[str, dict[str, list[str]]]  # stack → family → its stored names (``model.layers`` → ``mlp.….weight``)


def family(suffix: str) -> str:
    """A layer's tensor name (after ``<stack>.<n>.``) with its numbered segments made ``#``: one family for every
    expert of an MoE layer, whatever its count."""
    return _NUMBER.sub("#", suffix)


def of_stacks(names: Iterable[str]) -> Families:
    """The families of each layer stack among ``names``, with their names."""
    found: Families = {}
    known: dict[str, str] = {}  # (suffix → family: an MoE's every layer repeats its experts' suffixes)
    for name in names:
        match = STACK.match(name)
        if match:
            suffix = name[match.end():]
            fam = known.get(suffix) or known.setdefault(suffix, family(suffix))
            found.setdefault(match.group(1), {}).setdefault(fam, []).append(name)
    return found


# config.json flags that build a layer's projections without biases, and the projections each builds (Llama's and its
# many followers' names): another model's flag of the same name governs modules of its own (InternVL's vision
# attention keeps a biased projection_layer, RecurrentGemma's temporal block a biased o_proj, whatever their
# attention_bias says: a sweep of 4,435 fresh saves, every model type with each flag flipped, found)
_BIAS_FLAGS = {"attention_bias": re.compile(r"(?:^|\.)(?:self_attn|attention|attn)\.(?:q|k|v|o)_proj\.bias$"),
               "mlp_bias": re.compile(r"(?:^|\.)(?:mlp|feed_forward|ffn)\.(?:gate|up|down)_proj\.bias$")}


def bias_flags(config: dict[str, Any]) -> list[str]:
    """config.json's flags that build its layers' projections without biases, false."""
    return [flag for flag in _BIAS_FLAGS if config.get(flag) is False]


def biases_unbuilt(config: dict[str, Any], families: Families, stored: dict[str, tuple[int, ...]]) -> str | None:
    """Words for a layer projection's bias stored beside the config.json flag that builds it without one
    (``attention_bias: false``), else None: from_pretrained ignores the trained biases (a suspicion: the model built
    says whether it has them)."""
    for flag in bias_flags(config):
        governed = _BIAS_FLAGS[flag]
        for fams in families.values():
            for fam, names in fams.items():
                if governed.search(fam) and len(stored[names[0]]) == 1:
                    return f"config.json's {flag} is false, and {names[0]} is stored (a trained bias?)"
    return None


def unused(families: Families, stored: dict[str, tuple[int, ...]], wanted: Callable[[str], bool],
           in_built_layer: Callable[[str], bool]) -> list[tuple[str, list[str]]]:
    """(``stack.#.family``, its names) of each stored family of weights (``.weight``, a 1-D ``.bias``) none of which
    the model built has (``wanted``: whether from_pretrained loads a stored name into it, or its class skips it), in
    the layers it builds (``in_built_layer``: a layer beyond them is unused whole, architecture.py's to say)."""
    found = []
    for stack, fams in families.items():
        for fam, names in fams.items():
            if not (fam.endswith(".weight") or (fam.endswith(".bias") and len(stored[names[0]]) == 1)):
                continue  # (buffers an older save stored: GPT-2's [1, 1, n, n] attn.bias mask, rotary inv_freq)
            built = [name for name in names if in_built_layer(name)]
            if built and not any(map(wanted, built)):
                found.append((f"{stack}.#.{fam}", built))
    return found


def unused_problem(root: Path, config: dict[str, Any], found: list[tuple[str, list[str]]]) -> ScanProblem:
    """NOT LOADABLE for the stored families :func:`unused` found: from_pretrained ignores them."""
    count = sum(len(names) for _, names in found)
    flags = bias_flags(config)
    biases = all(fam.endswith(".bias") for fam, _ in found)
    said = " and ".join(flags[:3]) + (" are" if len(flags) > 1 else " is")
    hint = (f"config.json's {said} false while the weights hold trained biases: write true (as the model was "
            "trained), or save config.json the model was trained with" if biases and flags else
            "save config.json the model was trained with (a flag or size of it builds these modules), or the weights "
            "under the names the model has")
    return ScanProblem(
        str(root), f"{count} stored weight(s) are none the model built from config.json has "
        f"({first_few([fam for fam, _ in found], 3)}, in every layer that holds them): from_pretrained ignores them, "
        "so the model is not this checkpoint", hint, kind=UNLOADABLE_KIND)


def held(families: Families) -> dict[str, Collection[str]]:
    """Each stack's families, without their names."""
    return {stack: set(fams) for stack, fams in families.items()}


__all__ = ["STACK", "Families", "bias_flags", "biases_unbuilt", "family", "held", "of_stacks", "unused",
           "unused_problem"]
