"""Weights stored under a prefix from_pretrained does not strip: none of their names is one the model has.

A wrapper's ``state_dict()`` names every parameter after the attribute that holds the model: a distillation
wrapper's ``student.``, a multimodal wrapper's ``llm.``, PEFT's ``base_model.model.`` (a merged model saved from the
PeftModel), a LightningModule's ``net.`` over the model's own ``model.``. from_pretrained strips only the model's own
base prefix (``model.`` for Llama), finds none of the names it builds, and initializes every weight at random: the
model loads and generates nonsense while every stored value reads finite (an adversarial round: CLEAN).

DDP's ``module.`` and torch.compile's ``_orig_mod.`` are known without a build (loadability.wrapped_names). Any other
prefix is suspected here from the names alone (:func:`suspicion`: cheap, no transformers), and judged by the model
transformers builds (architecture.py, :func:`problem`): it names the prefix whose removal gives the model its names,
and how to take it off; where no prefix does, and nothing else explains it, the weights are another model's
(:func:`unloaded`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from nandoctor.checkpoint import namevocab
from nandoctor.checkpoint.renaming import strip_prefix_command
from nandoctor.model import ScanProblem
from nandoctor.verdict import UNLOADABLE_KIND
from nandoctor.wording import first_few

# What a whole causal LM holds beside its base model: under a shared prefix, the prefix wraps the whole model
_HEADS = ("lm_head.weight", "embed_out.weight")


def shared(names: Collection[str]) -> list[str]:
    """The leading segments every one of ``names`` starts with, never a name's last (``model`` of ``model.norm.weight``
    and ``model.layers.0.…``)."""
    if not names:
        return []
    first, last = min(names), max(names)  # (the extremes in order share what all of them share)
    length = next((i for i, (a, b) in enumerate(zip(first, last)) if a != b), min(len(first), len(last)))
    common = first[:length]
    cut = common.rfind(".")
    return common[:cut].split(".") if cut > 0 else []


def suspicion(names: Collection[str]) -> str | None:
    """Words for stored names that all start with a prefix a wrapper gives, else None: a leading segment they share
    that no transformers model uses (namevocab: ``student``, ``llm``, ``base_model``), or an LM head under what they
    share (``transformer.lm_head.weight``: a whole causal LM under one attribute). A suspicion: the model built says
    whether from_pretrained finds its names (it strips its own base prefix: Llama's ``model.``)."""
    segments = shared(names)
    unknown = next((segment for segment in segments if not namevocab.known(segment)), None)
    if unknown is not None:
        return f"every stored name starts with {'.'.join(segments)}. ({unknown} is no name a transformers model uses)"
    for k in range(1, len(segments) + 1):
        prefix = ".".join(segments[:k]) + "."
        head = next((prefix + head for head in _HEADS if prefix + head in names), None)
        if head is not None:
            return f"every stored name starts with {prefix}, and {head} is stored: a whole model under one prefix"
    return None


def problem(root: Path, names: Sequence[str], file_of: dict[str, str], expected: Collection[str],
            loads_as: Callable[[str], str]) -> ScanProblem | None:
    """NOT LOADABLE for stored ``names`` none of which loads as a name of the model built (``expected``; ``loads_as``:
    the name from_pretrained loads a stored one under) where taking the prefix they share off, or a leading part of
    it, gives the model its names; None otherwise (what else is wrong is architecture.py's to say)."""
    segments = shared(names)
    prefixes = [".".join(segments[:k]) + "." for k in range(1, len(segments) + 1)]
    # (the prefix that leaves the model's very names first: base_model.model. of base_model.model.model.layers.0…,
    # not base_model., whose removal loads only because transformers strips the model's own model. too)
    prefix = next((p for p in prefixes if _most(names, p, lambda name: name in expected)), None) or next(
        (p for p in prefixes if _most(names, p, lambda name: loads_as(name) in expected)), None)
    if prefix is None:
        return None
    first = names[0]
    files = sorted(set(file_of.values()))
    attribute = prefix.rstrip(".")
    save = f"or save the model the wrapper holds (its {attribute} attribute) with save_pretrained"
    if len(files) == 1 and files[0].endswith(".safetensors"):
        hint = f"take {prefix!r} off every name with {strip_prefix_command(files[0], prefix)} and scan again; {save}"
    else:
        hint = f"rename the tensors without {prefix!r} in the weight files (and in the index's weight_map); {save}"
    return ScanProblem(
        str(root), f"none of the {len(names):,} stored weight names is one the model built from config.json has: "
        f"every one starts with {prefix!r} ({first}, where the model has {first[len(prefix):]}), a wrapper's prefix "
        "from_pretrained does not strip, so it initializes every weight at random and the model is not this "
        "checkpoint", hint, kind=UNLOADABLE_KIND)


def unloaded(root: Path, names: Sequence[str], expected: Collection[str]) -> ScanProblem:
    """NOT LOADABLE for stored ``names`` none of which is a name of the model built (``expected``) where no prefix
    explains it and nothing else was found: the weights are another model's than config.json describes."""
    return ScanProblem(
        str(root), f"none of the {len(names):,} stored weight names is one the model built from config.json has "
        f"({names[0]}; the model's are {first_few(sorted(expected), 2)}): from_pretrained initializes every weight "
        "at random, so the model is not this checkpoint",
        "save config.json with the model the weights are (its architectures, model_type and sizes), or the weights "
        "under the names that model has", kind=UNLOADABLE_KIND)


def _most(names: Sequence[str], prefix: str, found: Callable[[str], bool]) -> bool:
    """Whether ``found`` holds for half the names or more once ``prefix`` is taken off them (a wrapper's own tensors
    beside the model's may not)."""
    return 2 * sum(found(name[len(prefix):]) for name in names) >= len(names)


__all__ = ["problem", "shared", "suspicion", "unloaded"]
