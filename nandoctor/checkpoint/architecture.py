"""Weights whose shapes config.json contradicts: from_pretrained builds the model from config.json, then refuses a
stored tensor of another shape ("size mismatch … ignore_mismatched_sizes") and initializes at random the layers
the weights lack.

Cheap first: config.json's ``vocab_size`` and ``hidden_size`` against the token embedding (and ``lm_head``), its
``num_hidden_layers`` against the layer stacks the weights hold. Those keys do not decide every model's shapes
(ALBERT's embeddings are ``embedding_size`` wide, Moshi's hold ``vocab_size + 1`` rows: a sweep of the 582
architectures of transformers 5.25 on torch's meta device found 26 such disagreements in healthy models), so a
disagreement is only a suspicion. Where transformers is installed, the model config.json describes is built on
the meta device (no weights, no memory; only classes transformers ships: never remote code) and the suspected
tensors and stacks are compared with it: a shape it builds otherwise is NOT LOADABLE, layers it builds that the
weights lack are too (the model loads, with those layers random). Without transformers, a note says what
disagrees. Names a loader renames (fused MoE experts) are never compared: only embeddings, ``lm_head`` and the
layer numbers of a stack.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from nandoctor.model import ScanProblem
from nandoctor.verdict import UNLOADABLE_KIND, family_of

EMBEDDING = re.compile(r"^(?:[A-Za-z_]+\.){0,2}(?:embed_tokens|wte|embed_in|word_embeddings)\.weight$")
STACK = re.compile(r"^((?:[A-Za-z_]+\.){0,2}(?:layers|h|blocks|layer))\.(\d+)\.")
LM_HEAD = "lm_head.weight"
_WITH_LM_HEAD = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")  # model classes with an lm_head
_HOLE = "the same tensor of the other layers is stored"  # (a suspicion too weak for a note when nothing can check it)


def problems(root: Path, config: dict[str, Any], names: Sequence[str],
             shapes: Sequence[tuple[int, ...]]) -> tuple[list[ScanProblem], list[str]]:
    """(problems, notes) for the top-level weights (``names``, ``shapes``) of the folder ``root`` that
    from_pretrained builds from ``config`` (config.json)."""
    stored = dict(zip(names, (tuple(s) for s in shapes)))
    stacks = _stacks(stored)
    suspected = list(_suspicions(config, stored, stacks))
    if not suspected:
        return [], []
    expected = _built_by_transformers(root)
    if expected is None:  # transformers missing, or a model it does not ship: nothing to compare with
        suspected = [(what, why) for what, why in suspected if why != _HOLE]
        if not suspected:
            return [], []
        unchecked = ("transformers does not build this model (nandoctor never runs a model's own code)"
                     if _has_transformers() else "install transformers for nandoctor to check it against the model "
                     "config.json builds")
        return [], [f"{root / 'config.json'}: {'; '.join(f'{what}: {why}' for what, why in suspected[:3])}; "
                    "from_pretrained refuses a tensor whose shape its config does not build, and initializes missing "
                    f"layers at random: not checked ({unchecked})"]
    found: list[ScanProblem] = []
    missing_names: list[tuple[str, str]] = []
    built_stacks = _stacks(expected)
    for what, why in suspected:
        if what in stored:  # a tensor: compare with the shape transformers builds for it
            want = expected.get(what)
            if want is not None and want != stored[what]:
                found.append(ScanProblem(
                    str(root), f"{what} holds shape {list(stored[what])} where the model config.json describes has "
                    f"{list(want)} ({why}): from_pretrained refuses the checkpoint (size mismatch)",
                    "save config.json with the model's real sizes (the one it was trained with), or the weights with "
                    "this config (a resized embedding needs its config's vocab_size)", kind=UNLOADABLE_KIND))
        elif what not in stacks:  # a tensor the weights lack: missing where the model builds it
            if what in expected:
                missing_names.append((what, why))
        else:  # a layer stack
            missing = sorted(built_stacks.get(what, set()) - stacks.get(what, set()))
            if missing:
                found.append(ScanProblem(
                    str(root), f"{what} holds {_numbers(stacks[what])} where the model config.json describes has "
                    f"{_numbers(built_stacks[what])} ({why}): from_pretrained initializes {_numbers(missing)} of {what} at "
                    "random, so the model is not this checkpoint",
                    "save config.json with the number of layers the weights hold (num_hidden_layers), or the "
                    "missing layers' weights", kind=UNLOADABLE_KIND))
    if missing_names:
        names_said = ", ".join(name for name, _ in missing_names[:3]) + (" …" if len(missing_names) > 3 else "")
        found.append(ScanProblem(
            str(root), f"{len(missing_names)} weight(s) the model config.json describes needs are not stored "
                       f"({names_said}: {missing_names[0][1]}): from_pretrained initializes them at random, so the "
                       "model is not this checkpoint",
            "copy the weight files from where the checkpoint was saved (a save or a filter that dropped tensors)",
            kind=UNLOADABLE_KIND))
    return found, []


def _stacks(shapes: dict[str, tuple[int, ...]]) -> dict[str, set[int]]:
    """The layer numbers of each stack (``model.layers``: 0, 1, …) among tensor names."""
    out: dict[str, set[int]] = {}
    for name in shapes:
        match = STACK.match(name)
        if match:
            out.setdefault(match.group(1), set()).add(int(match.group(2)))
    return out


def _suspicions(config: dict[str, Any], stored: dict[str, tuple[int, ...]],
                stacks: dict[str, set[int]]) -> Iterator[tuple[str, str]]:
    """(tensor name or stack, why) where config.json's top-level sizes disagree with the weights."""
    vocab, hidden, layers = (_size(config.get(key)) for key in ("vocab_size", "hidden_size", "num_hidden_layers"))
    for name, shape in stored.items():
        if len(shape) != 2 or not (EMBEDDING.match(name) or name == LM_HEAD):
            continue
        if vocab and shape[0] != vocab:
            yield name, f"config.json's vocab_size is {vocab:,}, the tensor has {shape[0]:,} rows"
        elif hidden and shape[1] != hidden:
            yield name, f"config.json's hidden_size is {hidden:,}, the tensor is {shape[1]:,} wide"
    if layers:
        for stack, numbers in stacks.items():
            if max(numbers) + 1 < layers:
                yield stack, f"config.json's num_hidden_layers is {layers:,}"
    # a tensor stored in all but a few layers of a stack (one in eight at most: a save or filter that dropped
    # it); a model whose layers differ by design (MoE every other layer, linear attention in three of four) stores
    # it in fewer, or the built model clears it (DeepSeek's first dense layers)
    for stack, numbers in stacks.items():
        holders: dict[str, set[int]] = {}
        for name in stored:
            match = STACK.match(name)
            if match and match.group(1) == stack:
                holders.setdefault(name[match.end():], set()).add(int(match.group(2)))
        for suffix, has in holders.items():
            if 0 < len(numbers) - len(has) <= max(1, len(numbers) // 8):
                for number in sorted(numbers - has):
                    yield f"{stack}.{number}.{suffix}", _HOLE
    architectures = config.get("architectures")
    head = isinstance(architectures, list) and any(isinstance(a, str) and a.endswith(_WITH_LM_HEAD) for a in architectures)
    if head and config.get("tie_word_embeddings") is False and LM_HEAD not in stored and any(map(EMBEDDING.match, stored)):
        yield LM_HEAD, "config.json's tie_word_embeddings is false, so the model has an LM head of its own"
    # one layer's tensor in another shape than the same tensor of every other layer (transposed, cut): a model
    # whose layers differ by design (a codec's widening convolutions, OpenELM's per-layer widths) has more than
    # one odd shape, or its odd one is cleared by the model transformers builds
    families: dict[str, list[str]] = {}
    for name in stored:
        family = family_of(name)
        if family != name:
            families.setdefault(family, []).append(name)
    for members in families.values():
        seen = Counter(stored[m] for m in members)
        if len(seen) != 2:
            continue
        (common, _), (odd, count) = seen.most_common()
        if count == 1 and (len(members) > 2 or odd == common[::-1]):  # (of two layers: only one the other's transpose)
            name = next(m for m in members if stored[m] == odd)
            yield name, f"the same tensor of the other layers has shape {list(common)}"


def _size(value: Any) -> int | None:
    """A positive integer size from config.json, else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _numbers(numbers: Sequence[int] | set[int]) -> str:
    ordered = sorted(numbers)
    if ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"layers {ordered[0]}–{ordered[-1]}" if len(ordered) > 1 else f"layer {ordered[0]}"
    return "layers " + ", ".join(map(str, ordered[:8])) + (" …" if len(ordered) > 8 else "")


def _has_transformers() -> bool:
    import importlib.util

    return importlib.util.find_spec("transformers") is not None


def _built_by_transformers(root: Path) -> dict[str, tuple[int, ...]] | None:
    """Name → shape of every tensor of the model transformers builds from ``root``'s config.json, on the meta
    device; None without transformers, or for a model it does not ship (remote code is never run)."""
    try:
        import torch
        import transformers
        from transformers.utils import logging as hf_logging
    except ImportError:
        return None
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        config = transformers.AutoConfig.from_pretrained(str(root), trust_remote_code=False, local_files_only=True)
        names = getattr(config, "architectures", None) or []
        cls = getattr(transformers, names[0], None) if names and isinstance(names[0], str) else None
        with torch.device("meta"), contextlib.redirect_stdout(io.StringIO()):
            if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
                model = cls(config)
            else:  # no class of that name: AutoModelForCausalLM builds from model_type, as a user's load would
                model = transformers.AutoModelForCausalLM.from_config(config, trust_remote_code=False)
        return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    except Exception:  # noqa: BLE001 - any failure to build is "not checked", never a verdict
        return None
    finally:
        hf_logging.set_verbosity(verbosity)


__all__ = ["problems"]
