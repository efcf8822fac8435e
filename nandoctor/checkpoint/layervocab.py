"""The families every layer of a model type holds: a cheap reason to build the model when the stored layers lack one.

A family missing from every layer (``mlp.down_proj`` dropped by a filter, or stored as Mistral's ``w2`` by a
conversion whose mapping lacks one entry) leaves no layer odd among its siblings, and from_pretrained initializes it
at random (an adversarial round: CLEAN). Which families a layer must hold is the model's to say, and building it
costs seconds (importing transformers), so layer_families.txt holds, for each model type transformers 5.25 ships,
the families each of its layer stacks holds in every layer, whatever one of its config's flags says (each class of
its auto mappings built on the meta device from its defaults, and once more for each boolean setting flipped and
each low rank left out; what its conversion mapping makes of other stored names left out, as Mixtral's experts
fused on load). Written by
``python -m nandoctor.checkpoint.layervocab``. A stored stack that holds most of such a set and lacks part of it is
suspected, and architecture.py builds the model to name what from_pretrained initializes; a model type not in the
file, or a config that builds its layers otherwise, costs at most a build, never a finding.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from functools import cache
from pathlib import Path
from typing import Any

from nandoctor.checkpoint import buildvalues

_FILE = Path(__file__).with_name("layer_families.txt")
_SET = "@"  # (a line "@<n> family family …" is set n; "<model_type> <stack>=<n> …" names a type's stacks' sets)


@cache
def _text() -> str:
    return "\n" + _FILE.read_text(encoding="utf-8")


@cache
def _sets(model_type: str) -> tuple[tuple[str, frozenset[str]], ...]:
    """(stack, its family set) of ``model_type``'s layer stacks as its classes build them (none where the file does
    not know the type)."""
    text = _text()
    if not model_type or any(c in model_type for c in f"{_SET}= \n"):
        return ()
    at = text.find(f"\n{model_type} ")
    if at < 0:
        return ()
    found = []
    for entry in text[at + 1:text.find("\n", at + 1)].split()[1:]:
        stack, _, number = entry.rpartition("=")
        start = text.find(f"\n{_SET}{number} ")
        if stack and start >= 0:
            found.append((stack, frozenset(text[start + 1:text.find("\n", start + 1)].split()[1:])))
    return tuple(found)


def _same_stack(stored: str, built: str) -> bool:
    """Whether a stored stack is one a class builds, a prefix aside (``model.layers`` is the base model's ``layers``)."""
    return stored == built or stored.endswith("." + built) or built.endswith("." + stored)


def _types(config: dict[str, Any]) -> list[str]:
    """The model types of config.json and of its sub-configs, once each."""
    return list(dict.fromkeys(sub["model_type"] for _, sub in buildvalues.sub_configs(config)
                              if isinstance(sub.get("model_type"), str)))


def knows(config: dict[str, Any]) -> bool:
    """Whether the vocabulary holds families of config.json's model type (or a sub-config's)."""
    return any(_sets(model_type) for model_type in _types(config))


def lacking(config: dict[str, Any], held: dict[str, Collection[str]]) -> str | None:
    """Words for a stored stack (``held``: stack → its families, layerfamilies.of_stacks) that holds most of the
    families every layer of that stack of config.json's model type holds and lacks some of them, else None. A stack
    no class of the type builds under its name is not judged (another save format's: a legacy Llava's
    ``language_model.model.layers``)."""
    sets = [(model_type, stack, required) for model_type in _types(config) for stack, required in _sets(model_type)]
    for stack, families in held.items():
        candidates = [(model_type, required) for model_type, built, required in sets if _same_stack(stack, built)]
        if any(required.issubset(families) for _, required in candidates):
            continue  # (a stack as one of the classes builds it)
        for model_type, required in candidates:
            if max(2, (len(required) + 1) // 2) <= sum(1 for f in required if f in families):
                missing = sorted(required.difference(families))
                return (f"{stack}.#.{missing[0]}{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''} "
                        f"is stored in no layer, where every layer of a {model_type} model has it")
    return None


def main() -> None:  # pragma: no cover - run by hand when transformers changes (a few minutes)
    """Write layer_families.txt from the installed transformers."""
    import contextlib
    import io
    import warnings

    import transformers
    from transformers.models.auto import modeling_auto
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    warnings.simplefilter("ignore")
    classes: dict[str, list[str]] = {}
    for attribute in sorted(dir(modeling_auto)):
        if attribute.startswith("MODEL_") and attribute.endswith("_MAPPING_NAMES"):
            for model_type, names in getattr(modeling_auto, attribute).items():
                for name in names if isinstance(names, (list, tuple)) else [names]:
                    classes.setdefault(model_type, []).append(name)
    lines: list[str] = []
    numbers: dict[frozenset[str], int] = {}
    for model_type in sorted(CONFIG_MAPPING_NAMES):
        required: dict[str, set[str]] = {}
        for name in dict.fromkeys(classes.get(model_type, [])):
            cls = getattr(transformers, name, None)
            if cls is None:
                continue
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                for stack, families in _built_families(transformers, cls, model_type):
                    required[stack] = required[stack] & families if stack in required else families
        # (fewer than three: no stack holds most of them and lacks one)
        entries = [f"{stack}={numbers.setdefault(frozenset(f), len(numbers))}" for stack, f in required.items()
                   if len(f) >= 3]
        if entries:
            lines.append(f"{model_type} {' '.join(entries)}")
    header = ["# layer families of each model type transformers " + transformers.__version__ + " builds, in every "
              "layer of a stack: python -m nandoctor.checkpoint.layervocab"]
    sets_lines = [f"{_SET}{n} {' '.join(sorted(s))}" for s, n in numbers.items()]
    _FILE.write_text("\n".join([*header, *sets_lines, *lines]) + "\n", encoding="utf-8")
    print(f"{len(lines)} model types, {len(numbers)} family sets written to {_FILE}")


def _built_families(transformers: Any, cls: type, model_type: str) -> Iterator[tuple[str, set[str]]]:  # pragma: no cover
    """(stack, the families in every one of its layers) of ``cls`` built from ``model_type``'s default config and
    from it with each boolean setting flipped (a flag that leaves a module out: Falcon's new_decoder_architecture) or
    each rank left out, each at most four layers, on the meta device; a stack's families of every variant that
    builds it intersected."""
    import torch

    from nandoctor.checkpoint.layerfamilies import of_stacks

    try:
        defaults = transformers.AutoConfig.for_model(model_type).to_dict()
    except Exception:  # noqa: BLE001 - (a config that needs arguments: not in the file)
        return
    # (a flag flipped, or a low rank left out: DeepSeek-V2-Lite's q_lora_rank null builds q_proj for q_a_proj/q_b_proj)
    changes: list[tuple[str, bool | None]] = [(key, not value) for key, value in defaults.items() if isinstance(value, bool)]
    changes += [(key, None) for key, value in defaults.items() if key.endswith("_rank") and isinstance(value, int)]
    found: dict[str, set[str]] = {}
    for change in [None, *changes]:
        try:
            config = transformers.AutoConfig.for_model(model_type)
            if change is not None:
                setattr(config, *change)
            fewer_layers(transformers, config)
            with torch.device("meta"):
                model = cls(config)
            targets = _conversion_targets(model)
            names = list(model.state_dict())
        except Exception:  # noqa: BLE001 - (a variant the class refuses, or needs an extra for)
            continue
        for stack, families in of_stacks(names).items():
            layers = {int(n[len(stack) + 1:].split(".", 1)[0]) for fam in families.values() for n in fam}
            every = {fam for fam, held in families.items() if len(held) == len(layers)
                     and not any(t.search("." + fam) for t in targets)}  # (as within a name: ".mlp.")
            found[stack] = found[stack] & every if stack in found else every
    yield from found.items()


def fewer_layers(transformers: Any, config: Any, depth: int = 0) -> None:  # pragma: no cover
    """At most four layers in ``config`` and its sub-configs (their layer_types cut to match)."""
    for key in buildvalues.LAYER_KEYS:
        if isinstance(getattr(config, key, None), int) and getattr(config, key) > 4:
            setattr(config, key, 4)
    types = getattr(config, "layer_types", None)
    if isinstance(types, list) and len(types) > 4:
        config.layer_types = types[:4]
    for key in (getattr(config, "sub_configs", None) or {}) if depth < 2 else ():
        sub = getattr(config, key, None)
        if isinstance(sub, transformers.PretrainedConfig):
            fewer_layers(transformers, sub, depth + 1)


def _conversion_targets(model: Any) -> list[re.Pattern[str]]:  # pragma: no cover
    """The names transformers 5's conversion mapping makes of other stored names (renamed, fused): a stored layer
    lacks them as built (Mixtral's per-expert ``w1`` fused into ``experts.gate_up_proj`` on load)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping

        patterns = [t for c in get_model_conversion_mapping(model) for t in (getattr(c, "target_patterns", None) or [])
                    if isinstance(t, str)]
    except Exception:  # noqa: BLE001 - (another transformers: nothing converted)
        return []
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error:  # (a replacement's group reference, not a pattern: a prefix's rename, no layer's)
            continue
    return compiled


if __name__ == "__main__":  # pragma: no cover
    main()
