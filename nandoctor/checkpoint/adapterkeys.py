"""LoRA tensors stored under names the loaders do not load, or without the other half of their module.

``PeftModel.from_pretrained`` maps each stored tensor to its module by name: ``save_pretrained`` writes
``base_model.model.<module>.lora_A.weight`` (the adapter's name dropped), and PEFT looks for exactly that. A name
without the ``base_model.model.`` prefix, or one still holding the live model's adapter name
(``lora_A.default.weight``), matches nothing under one of the two loaders, and a module whose ``lora_A`` is stored
without its ``lora_B`` (or the reverse) gets only the half stored. Neither loader raises: PEFT warns "Found missing
adapter keys", transformers prints its load report, and the modules keep their initial values (PEFT's default:
``lora_B`` zero, so the module is not adapted at all, or a random ``lora_A`` under a trained ``lora_B``). An
adversarial round's such adapters gave the bare base model's logits exactly, and read CLEAN. Checked with peft 0.21
and transformers 5.25 (tests/test_adapter_keys.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nandoctor.model import ScanProblem
from nandoctor.verdict import UNLOADABLE_KIND
from nandoctor.wording import first_few

PREFIX = "base_model.model."
# (the module; its part: a Linear's or a convolution's lora_A/lora_B modules, an embedding's lora_embedding_A/B
# parameters, DoRA's magnitude; what follows: ".weight"/".bias" of a module part, nothing for a parameter)
_PART = re.compile(r"^(?P<module>.+)\.(?P<part>lora_(?:embedding_)?[AB]|lora_magnitude_vector)(?P<rest>(?:\.[^.]+)*)$")
_SAVED_TAILS = ("", ".weight", ".bias")
_HINT = "save the adapter again with save_pretrained (PeftModel.save_pretrained writes every module's lora_A and " \
        "lora_B as base_model.model.<module>.lora_A.weight), or use the adapter_model file saved with this " \
        "adapter_config.json"


def problems(root: Path, config: dict[str, Any], names: Sequence[str]) -> list[ScanProblem]:
    """NOT LOADABLE where a LoRA adapter's (``config``'s) stored tensors (``names``) are not all loaded as stored:
    the module's docstring says which names; nothing for another type of adapter."""
    if config.get("peft_type", "LORA") != "LORA":
        return []
    parts = [(name, match) for name in names if (match := _PART.match(name))]
    return _unprefixed(root, [name for name, _ in parts]) or _named(root, parts) or _halves(root, config, parts)


def _unprefixed(root: Path, names: list[str]) -> list[ScanProblem]:
    """The LoRA tensors not under ``base_model.model.``: PeftModel.from_pretrained loads none of them (transformers'
    from_pretrained of the folder, which strips the prefix where it is, does load them)."""
    bare = [name for name in names if not name.startswith(PREFIX)]
    if not bare:
        return []
    how = "its LoRA tensors are" if len(bare) == len(names) else f"{len(bare)} of its {len(names)} LoRA tensors are"
    return [ScanProblem(
        str(root), f"{how} not named under {PREFIX!r} ({first_few(bare, 2)}), the prefix PeftModel.from_pretrained "
        "maps stored names to its modules by: it loads none of those, only warns (\"Found missing adapter keys\"), and "
        "runs their modules with LoRA at its initial values, so the model is not this adapter (transformers' "
        "from_pretrained of the folder does load them)",
        f"rename each such tensor to {PREFIX}<its name>, or {_HINT}", kind=UNLOADABLE_KIND)]


def _named(root: Path, parts: list[tuple[str, re.Match[str]]]) -> list[ScanProblem]:
    """The LoRA tensors named with the adapter's name (``lora_A.default.weight``, as the live model names them):
    transformers' from_pretrained adds the name again and loads none of them; PEFT only when loading it under that
    very name."""
    named = [(name, match) for name, match in parts if match["rest"] not in _SAVED_TAILS]
    if not named:
        return []
    name, match = named[0]
    adapter = match["rest"].split(".")[1]
    return [ScanProblem(
        str(root), f"{len(named)} LoRA tensor(s) hold the adapter's name {adapter!r} ({name}), which save_pretrained "
        f"drops: transformers' from_pretrained of the folder adds the name again ({match['part']}.{adapter}."
        f"{adapter}…) and loads none of them, nor does PeftModel.from_pretrained under any other adapter name: their "
        "modules keep LoRA's initial values, so the model is not this adapter",
        f"rename each such tensor without {'.' + adapter!r} ({match['module']}.{match['part']}"
        f"{match['rest'].replace('.' + adapter, '', 1)}), or {_HINT}", kind=UNLOADABLE_KIND)]


def _halves(root: Path, config: dict[str, Any], parts: list[tuple[str, re.Match[str]]]) -> list[ScanProblem]:
    """Modules stored with one half of their LoRA update (``lora_A`` without ``lora_B``, the embedding's
    ``lora_embedding_A`` without ``lora_embedding_B``), DoRA modules without their magnitude (``use_dora``: PEFT
    builds it from the base weight's norm, not the trained one) and magnitudes the config has no DoRA for (PEFT
    builds none and drops them)."""
    held: dict[str, set[str]] = {}
    for _, match in parts:
        held.setdefault(match["module"], set()).add(match["part"].replace("embedding_", ""))
    dora = bool(config.get("use_dora"))
    lacking: list[str] = []
    for module, have in sorted(held.items()):
        wanted = {"lora_A", "lora_B"} | ({"lora_magnitude_vector"} if dora else set())
        if not dora and "lora_magnitude_vector" in have:
            lacking.append(f"{module} holds DoRA's lora_magnitude_vector where adapter_config.json's use_dora is "
                           "not true (PEFT builds no magnitude and drops it)")
        elif wanted - have:
            lacking.append(f"{module} holds {' and '.join(sorted(have & wanted)) or 'no lora_A or lora_B'} without "
                           f"{' and '.join(sorted(wanted - have))}")
    if not lacking:
        return []
    more = f" (and {len(lacking) - 1} more module(s))" if len(lacking) > 1 else ""
    return [ScanProblem(
        str(root), f"{lacking[0]}{more}: PEFT builds every part of each module's LoRA and loads the parts stored, "
        "only warning (\"Found missing adapter keys\") of the others, which keep their initial values (by PEFT's "
        "default a lora_B of zero, the module not adapted at all; a lora_A drawn at random under a trained lora_B), so "
        "the model is not this adapter", _HINT, kind=UNLOADABLE_KIND)]


__all__ = ["PREFIX", "problems"]
