"""Weights whose shapes config.json contradicts: from_pretrained builds the model from config.json, then refuses a
stored tensor of another shape ("size mismatch … ignore_mismatched_sizes") and initializes at random the layers
the weights lack.

Cheap first: config.json's ``vocab_size`` and ``hidden_size`` against the token embedding (and ``lm_head``), its
``num_hidden_layers`` against the layer stacks the weights hold. Those keys do not decide every model's shapes
(ALBERT's embeddings are ``embedding_size`` wide, Moshi's hold ``vocab_size + 1`` rows: a sweep of the 582
architectures of transformers 5.25 on torch's meta device found 26 such disagreements in healthy models), so a
disagreement is only a suspicion, as is a tensor in a shape its kind never has (tensorkinds.py: a norm saved
[1, H], a projection transposed in every layer, which keeps every dimension config.json gives). Where transformers
is installed, the model config.json describes is built on the meta device (no weights, no memory; only classes
transformers ships: never remote code) and the suspected tensors and stacks are compared with it: a shape it
builds otherwise is NOT LOADABLE, layers it builds that the weights lack are too (the model loads, with those layers random). Without transformers, a note says what
disagrees. Names a loader converts (MoE experts saved one by one, built fused) are compared as it converts them:
dryload.py puts the stored shapes through transformers' own loading on the meta device.

Config values transformers cannot build a model from are suspected the same cheap way (a ``pad_token_id`` outside
the vocabulary: ``save_pretrained`` writes it after a pad token is added without ``resize_token_embeddings``; a
head count of 0; an activation, rope type or layer type this transformers may not know). Where the build then
fails, the same config with those values replaced (the pad token dropped, the activation ``gelu``, …) is built
too: only when that one builds is the failure the value's, and the checkpoint BAD CONFIG naming it (from_pretrained
fails, the weights are intact: a resume point and a repair donor all the same); a build
that fails either way is nandoctor's own limit (a class needing another config, a missing extra), and says
nothing about the checkpoint. A config that describes more layers or experts than any model has (a one-byte
edit of ``num_hidden_layers``) is never built: its missing layers are said from the counts alone.

Whole families are suspected the same cheap way: every stored name under a prefix no model uses (a wrapper's
``student.``: prefixes.py), a family every layer of config.json's model type holds that no stored layer does (a module
dropped or renamed in every layer: layervocab.py), trained biases beside ``attention_bias: false`` (layerfamilies.py).
Once built, no stored name loading is NOT LOADABLE naming the prefix to take off, and a stored family the model has
in none of its layers is NOT LOADABLE too (from_pretrained ignores it).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

from nandoctor.checkpoint import buildvalues, configfields, dryload, layerfamilies, layervocab, prefixes, tensorkinds
from nandoctor.checkpoint.configvalues import ALIASES, EXPERT_KEYS, embeds_token_ids, positive, routing_problems, sized
from nandoctor.checkpoint.layerfamilies import STACK
from nandoctor.checkpoint.namevocab import near_misses, one_character_apart
from nandoctor.model import ScanProblem
from nandoctor.verdict import CONFIG_KIND, NAMES_KIND, UNLOADABLE_KIND, family_of
from nandoctor.wording import first_few

EMBEDDING = re.compile(r"^(?:[A-Za-z_]+\.){0,2}(?:embed_tokens|wte|embed_in|word_embeddings)\.weight$")
LM_HEAD = "lm_head.weight"
_FUSED_QKV = re.compile(r"(?:query_key_value|qkv|c_attn|W_pack)[^.]*\.weight$", re.IGNORECASE)
_LM_HEADS = (LM_HEAD, "embed_out.weight", "cls.predictions.decoder.weight", "lm_head.decoder.weight")  # (GPT-NeoX names its LM head embed_out: a miss cost a build for nothing)
# config.json keys that size a model (transformers' and the older GPT-2 / T5 spellings): one must be there
_SIZE_KEYS = ("hidden_size", "vocab_size", "num_hidden_layers", "intermediate_size", "n_embd", "n_layer", "d_model",
              "num_layers", "text_config")
_SIZES = ("intermediate_size", "head_dim", "moe_intermediate_size", "n_inner")  # sizes each layer's weights are built with
_SIZE_SUSPICION = "<sizes>"  # (no tensor or stack: a suspicion that only asks for the model to be built)
_OUTSIDE_SUSPICION = "<outside the layers>"  # (a weight outside the layer stacks not stored: which, the build says)
_NAME_SUSPICION = "<a name near a known one>"  # (a stored name one character from a model's: namevocab.py)
_LAYOUT_SUSPICION = "<layers out of pattern>"  # (a tensor held by layers in no pattern a model is built with)
_PREFIX_SUSPICION = "<a wrapper's prefix>"  # (every stored name under one the models do not use: prefixes.py)
_UNBUILT_SUSPICION = "<a layer family not built>"  # (stored biases config.json builds no layer with: layerfamilies.py)
# Embedding tables whose rows config.json sizes beside the vocabulary: (name pattern, the keys giving their rows)
_TABLES = (
    (re.compile(r"(?:^|\.)(?:wpe|position_embeddings|embed_positions)\.weight$"),
     ("max_position_embeddings", "n_positions", "max_seq_len")),
    (re.compile(r"(?:^|\.)token_type_embeddings\.weight$"), ("type_vocab_size",)),
)
_NUMBERED_SEGMENT = re.compile(r"\.\d+\.")  # a layer's (or any numbered module's) part of a name
_NUMBERED = re.compile(r"^([A-Za-z_]*[A-Za-z_])(\d+)$")  # a numbered segment of sibling modules: conv1, ln_2, fc1
_SHOWN_NEAR = 64  # (names paired with a near miss at most: a header of flipped bits is unreadable long before)
_ANY_EMBEDDING = re.compile(r"(?:embed|wte|shared|tok_|(?:^|\.)w\.weight$)", re.IGNORECASE)
_WITH_LM_HEAD = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration", "ForMaskedLM", "ForPreTraining")
_CAUSAL_HEADS = ("ForCausalLM", "LMHeadModel")  # model classes AutoModelForCausalLM.from_pretrained stands for  # model classes with an lm_head
_HOLE = "the same tensor of the other layers is stored"  # (a suspicion too weak for a note when nothing can check it)
# Long steps are said on this logger: the CLI shows its INFO records on its progress bar (cli/progress.py)
_STATUS = logging.getLogger("nandoctor.status")

def problems(root: Path, config: dict[str, Any], names: Sequence[str], shapes: Sequence[tuple[int, ...]],
             files: Sequence[str], *, quantized: bool = False) -> tuple[list[ScanProblem], list[str]]:
    """(problems, notes) for the top-level weights (``names``, ``shapes``, the ``files`` holding them) of the folder
    ``root`` that from_pretrained builds from ``config`` (config.json). ``quantized``: its quantizer stores some
    weights under names of its own (GPTQ's ``qweight``), so a weight the model builds that is not stored is not
    missing."""
    if not any(key in config for key in _SIZE_KEYS):
        return [], []  # a config.json naming no sizes (written by hand: {"model_type": "llama"}) builds defaults
    stored = dict(zip(names, (tuple(s) for s in shapes)))
    stacks = _stacks(stored)
    near = near_misses(stored)
    suspected = list(_suspicions(config, stored, stacks, near))
    if stacks and not quantized:  # (a quantizer stores its own names in the layers: GPTQ's qweight for a weight)
        suspected += _family_suspicions(config, stored)
    values = list(buildvalues.suspicions(config))
    if not suspected and not values:
        return [], []
    scale = buildvalues.too_big(config)
    if scale is not None:
        return _unbuilt(root, scale, config, stacks)
    if configfields.refusals(config):
        # (AutoConfig, or the model's build, refuses a value configfields.problems names: no model to compare with)
        return [], []
    built = _built_by_transformers(root)
    if isinstance(built, BuildFailure):
        blamed = _blame(root, config, values, built) or _blame_missing(root, config, suspected, built)
        if blamed is not None:
            return [blamed], []
        built = None  # (it fails either way: nandoctor's limit, not the checkpoint's)
    if built is None:  # transformers missing, or a model it does not ship: nothing to compare with
        # (a guess by names alone, a projection's orientation, is said only where a build confirms it)
        suspected = [(what, why) for what, why in suspected if why != _HOLE and not why.endswith(tensorkinds.GUESS)
                     and what not in (_NAME_SUSPICION, _LAYOUT_SUSPICION, _PREFIX_SUSPICION, _UNBUILT_SUSPICION)]
        if not suspected:
            return [], []
        unchecked = ("transformers does not build this model (nandoctor never runs a model's own code)"
                     if _has_transformers() else "install transformers for nandoctor to check it against the model "
                     "config.json builds")
        shown = "; ".join(why if what.startswith("<") else f"{what}: {why}" for what, why in suspected[:3])
        return [], [f"{root / 'config.json'}: {shown}; "
                    "from_pretrained refuses a tensor whose shape its config does not build, and initializes missing "
                    f"layers at random: not checked ({unchecked})"]
    expected, skipped = built.shapes, built.skipped
    found: list[ScanProblem] = []
    built_stacks = _stacks(expected)
    reasons = dict(suspected)
    # once built, every stored tensor the model names too is compared (a size config.json changes moves many)
    mismatched = [(name, shape, expected[name]) for name, shape in stored.items()
                  if name in expected and expected[name] != shape]
    # the names from_pretrained loads the stored tensors under (its own renames: a legacy LayerNorm.gamma is .weight)
    loaded_as = {name: built.loaded_as(name) for name in stored}
    # (no stored name the model's, every one under a wrapper's prefix: what else differs follows from that)
    none_loads = not quantized and not any(loaded_as[name] in expected or any(p.search(name) for p in skipped)
                                           for name in stored)
    wrapped = prefixes.problem(root, names, dict(zip(names, files)), expected, built.loaded_as) if none_loads else None
    if wrapped is not None:
        return [wrapped], []
    # (what it converts, Mixtral's experts.0.w1 … into one mlp.experts.gate_up_proj, is compared as it loads it)
    refused = [] if quantized else built.refusals(stored) or []
    compared = {name for name, _, _ in mismatched}
    mismatched += [(_made_from(r.name, loaded_as), r.made, r.wanted) for r in refused
                   if not r.error and r.name not in compared]
    failed = [r for r in refused if r.error]
    if failed:
        found.append(ScanProblem(
            str(root), f"from_pretrained cannot make {_made_from(failed[0].name, loaded_as)}: {failed[0].error}"
            + (f"; and {len(failed) - 1} more" if len(failed) > 1 else ""),
            "restore the weight files from where the checkpoint was saved (a tensor of one expert or layer is not "
            "the shape of its siblings')", kind=UNLOADABLE_KIND))
    routing = _default_routing(root, config, stored, built)
    if routing is not None:
        found.append(routing)
    if mismatched:
        name, shape, want = mismatched[0]
        # (a config value suspected may be what sizes it otherwise: an intermediate_size of 0 builds [0, 64])
        why = (reasons.get(name) or next((w for what, w in suspected if what == _SIZE_SUSPICION), None)
               or next((w for _, _, w, _ in values), None))
        more = f" and {len(mismatched) - 1} more tensor(s)" if len(mismatched) > 1 else ""
        found.append(ScanProblem(
            str(root), f"{name} holds shape {list(shape)} where the model built from config.json has {list(want)}"
            f"{more}{f' ({why})' if why else ''}: from_pretrained refuses the checkpoint (size mismatch)",
            GATHER_HINT if 0 in shape else tensorkinds.rearranged_hint(shape, want) or "save config.json with the model's real sizes (the one it was trained "
            "with), or the weights with this config (a resized embedding needs its config's vocab_size)",
            kind=UNLOADABLE_KIND))
    for stack in (what for what, _ in suspected if what in stacks and what not in stored):
        missing = sorted(built_stacks.get(stack, set()) - stacks[stack])
        ignored = sorted(number for number in stacks[stack] - built_stacks.get(stack, set()) if not all(
            any(p.search(name) for p in skipped) for name in stored if name.startswith(f"{stack}.{number}.")
        )) if stack in built_stacks else sorted(stacks[stack]) if _NO_LAYER_REASON.match(reasons[stack]) else []
        if ignored:
            found.append(ScanProblem(
                str(root), f"{stack} holds {_numbers(stacks[stack])} where the model built from config.json has "
                f"{_numbers(built_stacks[stack]) if stack in built_stacks else 'none'} ({reasons[stack]}): "
                f"from_pretrained leaves {_numbers(ignored)} of "
                f"{stack} unused, so the model is not this checkpoint",
                "save config.json with the number of layers the weights hold (num_hidden_layers)", kind=UNLOADABLE_KIND))
        if missing:
            found.append(ScanProblem(
                str(root), f"{stack} holds {_numbers(stacks[stack])} where the model built from config.json has "
                f"{_numbers(built_stacks[stack])} ({reasons[stack]}): from_pretrained initializes {_numbers(missing)} "
                f"of {stack} at random, so the model is not this checkpoint",
                "save config.json with the number of layers the weights hold (num_hidden_layers), or the missing "
                "layers' weights", kind=UNLOADABLE_KIND))
    loaded = set(loaded_as.values())
    loaded |= _also_filled(built.split_targets, loaded_as)
    unknown = {name: shape for name, shape in stored.items() if loaded_as[name] not in expected
               and not any(p.search(name) for p in skipped)}
    # (a suspected hole is named as the weights are stored: Llava's language_model.model.layers.1…, a legacy BERT's
    # LayerNorm.gamma; the model needs it under the name from_pretrained loads it as)
    wanted = [(built.loaded_as(what), why) for what, why in suspected
              if what not in stacks and what not in (_SIZE_SUSPICION, _OUTSIDE_SUSPICION, _NAME_SUSPICION,
                                                     _LAYOUT_SUSPICION, _PREFIX_SUSPICION, _UNBUILT_SUSPICION)]
    near_why = next((why for what, why in suspected if what == _NAME_SUSPICION), None)
    if near_why is not None:
        wanted += [(need, near_why) for need in _near_needs(near, unknown, expected, loaded, loaded_as)]
    wanted = _first_reasons(wanted)
    lacking = [(what, why) for what, why in wanted if what not in loaded and what in expected and not quantized]
    # the parameters the model has, none of whose group is stored (a tied embedding renamed leaves its LM head
    # unfilled too, a trial's wte flipped to gte): outside the layers, or in them, as the suspicion was
    outside = next((why for what, why in suspected if what == _OUTSIDE_SUSPICION), None)
    layout = next((why for what, why in suspected if what == _LAYOUT_SUSPICION), None)
    if not quantized:
        for group in built.filled_by:
            why = layout if STACK.match(group[0]) else outside
            if why is not None and not any(n in loaded for n in group):
                lacking.append((group[0], why))
    lacking = _first_reasons(lacking)
    renamed = _renamed(lacking, unknown, expected)
    if renamed:
        found.append(_renamed_problem(root, renamed, dict(zip(names, files))))
    lacking = [(name, why) for name, why in lacking if name not in renamed]
    if lacking:
        names_said = ", ".join(name for name, _ in lacking[:3]) + (" …" if len(lacking) > 3 else "")
        found.append(ScanProblem(
            str(root), f"{len(lacking)} weight(s) the model built from config.json needs are not stored "
                       f"({names_said}: {lacking[0][1]}): from_pretrained initializes them at random, so the "
                       "model is not this checkpoint",
            "copy the weight files from where the checkpoint was saved (a save or a filter that dropped tensors)",
            kind=UNLOADABLE_KIND))
    # stored families the model built has in none of its layers (trained biases beside attention_bias false): ignored
    if not quantized and stacks:
        families = layerfamilies.of_stacks(stored)
        renamed_from = set(renamed.values())

        def loads(name: str) -> bool:
            return loaded_as[name] in expected or name in renamed_from or any(p.search(name) for p in skipped)

        def in_built_layer(name: str) -> bool:
            match = STACK.match(loaded_as[name])
            return match is not None and int(match.group(2)) in built_stacks.get(match.group(1), ())

        unused = layerfamilies.unused(families, stored, loads, in_built_layer)
        if unused:
            found.append(layerfamilies.unused_problem(root, config, unused))
    if none_loads and not found and stored:  # (nothing else said why no stored name is one the model has)
        found.append(prefixes.unloaded(root, names, expected))
    return found, []


def _family_suspicions(config: dict[str, Any], stored: dict[str, tuple[int, ...]]) -> list[tuple[str, str]]:
    """A family every layer of config.json's model type holds that no stored layer does (layervocab.py: a module
    dropped or renamed in every layer), and stored layer biases beside a flag that builds none (layerfamilies.py)."""
    if not (layervocab.knows(config) or layerfamilies.bias_flags(config)):
        return []  # (a model type the vocabulary does not know, no bias flag: no pass over every name for nothing)
    families = layerfamilies.of_stacks(stored)
    found = []
    lacking = layervocab.lacking(config, layerfamilies.held(families))
    if lacking is not None:  # (the model built names each weight it initializes: every layer's hole)
        found.append((_LAYOUT_SUSPICION, lacking))
    biases = layerfamilies.biases_unbuilt(config, families, stored)
    if biases is not None:
        found.append((_UNBUILT_SUSPICION, biases))
    return found


def _made_from(target: str, loaded_as: dict[str, str]) -> str:
    """``target`` (a parameter of the model) with the stored tensors from_pretrained makes it of, where it converts
    them (stacks experts, concatenates gate and up projections): the names a user finds in the files."""
    sources = [name for name, loaded in loaded_as.items() if loaded == target and name != target]
    if not sources:
        return target
    more = f" and {len(sources) - 1} more" if len(sources) > 1 else ""
    return f"{target} (made of the stored {sources[0]}{more})"


def _first_reasons(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Each name of (name, why) ``pairs`` once, with its first reason, in order: a hole may be a near miss and out of
    the layers' pattern too, and one name wanted twice would pair with nothing (_renamed wants one of a shape)."""
    reason: dict[str, str] = {}
    for name, why in pairs:
        reason.setdefault(name, why)
    return list(reason.items())


def _near_needs(near: list[str], unknown: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]],
                loaded: set[str], loaded_as: dict[str, str]) -> list[str]:
    """The names the model needs, not loaded, that a stored name holding one of the ``near`` misses
    (namevocab.near_misses) misses by one character, of its shape: compared only within a shape, only for those
    stored names, at most _SHOWN_NEAR (an MoE's 20,000 names each way would otherwise be compared all with all)."""
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for need, shape in expected.items():
        if need not in loaded:
            by_shape.setdefault(shape, []).append(need)
    found: list[str] = []
    for name, shape in unknown.items():
        if not any(part in name for part in near):
            continue
        found += [need for need in by_shape.get(shape, ()) if one_character_apart(loaded_as[name], need)]
        if len(found) >= _SHOWN_NEAR:
            break
    return found[:_SHOWN_NEAR]


def _renamed(lacking: list[tuple[str, str]], unknown: dict[str, tuple[int, ...]],
             expected: dict[str, tuple[int, ...]]) -> dict[str, str]:
    """The weights the model needs that are stored under a name it does not have: missing name → stored name,
    where one stored tensor of the same shape is the only candidate for it (a flipped bit in a header renames a
    tensor; from_pretrained initialises the missing one afresh and ignores the other)."""
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for name, shape in unknown.items():
        by_shape.setdefault(shape, []).append(name)
    wanted = Counter(expected[name] for name, _ in lacking)
    out = {name: by_shape[expected[name]][0] for name, _ in lacking
           if len(by_shape.get(expected[name], ())) == 1 and wanted[expected[name]] == 1}
    # (a tensor renamed in every layer: several of one shape, each the one candidate of its own module, q_proj stored
    # as q_prj in layer 0 and in layer 1, an adversarial round's)
    module = {name: name.rsplit(".", 2)[0] for name in (*unknown, *(n for n, _ in lacking))}
    for name, _ in lacking:
        if name in out:
            continue
        shape = expected[name]
        here = [c for c in by_shape.get(shape, ()) if module[c] == module[name]]
        rivals = [n for n, _ in lacking if module[n] == module[name] and expected[n] == shape]
        if len(here) == 1 and len(rivals) == 1 and here[0] not in out.values():
            out[name] = here[0]
    return out


def _renamed_problem(root: Path, renamed: dict[str, str], file_of: dict[str, str]) -> ScanProblem:
    """TENSOR NAMES CHANGED for weights stored under names the model does not have, with the command that renames
    them back where they share one safetensors file."""
    from nandoctor.checkpoint.renaming import rename_back_command, renamed_words

    pairs = list(renamed.items())
    shown = "; ".join(f"{right} is not stored, {wrong} (same shape) is a name the model does not have"
                      for right, wrong in pairs[:3]) + (f"; and {len(pairs) - 3} more" if len(pairs) > 3 else "")
    files = sorted({file_of[wrong] for wrong in renamed.values()})
    file = files[0]
    load = (f"from_pretrained initializes {pairs[0][0]} at random and ignores {pairs[0][1]}, and `nandoctor repair` "
            "restores values, not names")
    if len(files) == 1 and file.endswith(".safetensors"):
        hint = (f"{load}: rename {renamed_words(renamed)} (a flipped bit in a header renames a tensor) with "
                f"{rename_back_command(file, renamed)} and scan again")
    else:
        hint = f"{load}: rename {renamed_words(renamed)} in the weight files, or restore them from a good copy"
    return ScanProblem(file, f"{shown}: the model built from config.json needs the name", hint, kind=NAMES_KIND)


def _unbuilt(root: Path, scale: tuple[int, int], config: dict[str, Any],
             stacks: dict[str, set[int]]) -> tuple[list[ScanProblem], list[str]]:
    """A config describing more layers or experts than any model: the layers its stacks lack, from the counts."""
    layers, experts = scale
    described = f"{layers:,} layers" + (f" of {experts:,} experts" if experts else "")
    short = [stack for stack, numbers in stacks.items() if max(numbers) + 1 < layers]
    if short:
        stack = short[0]
        return [ScanProblem(
            str(root), f"config.json describes {described}, {stack} holds {_numbers(stacks[stack])}: from_pretrained "
            f"builds them all and initializes the layers the weights lack at random (if it can build that many at all), "
            "so the model is not this checkpoint",
            "save config.json with the number of layers the weights hold (num_hidden_layers)", kind=UNLOADABLE_KIND)], []
    return [], [f"{root / 'config.json'}: describes {described}, more than any model has: not built to check the "
                "weights against it"]


def _blame(root: Path, config: dict[str, Any], values: list[buildvalues.Suspicion],
           failure: BuildFailure) -> ScanProblem | None:
    """BAD CONFIG naming the suspected values whose replacement lets the model build, or None (none does, or
    none was suspected: the build fails for a reason of nandoctor's own)."""
    if not values:
        return None
    causes = [value for value in values if _builds_without(config, [value])]
    if not causes and len(values) > 1 and _builds_without(config, values):
        causes = values
    if not causes:
        return None
    import transformers

    return ScanProblem(
        str(root / "config.json"), f"{'; '.join(why for _, _, why, _ in causes)}: transformers {transformers.__version__} cannot build "
        f"the model config.json describes ({failure.error}), so from_pretrained fails before it reads a weight",
        "correct " + ", ".join(dict.fromkeys(key for _, key, _, _ in causes)) + " in config.json (the base model's "
        "config.json has the value it was trained with)", kind=CONFIG_KIND)  # (the weights are intact: BAD CONFIG)


def _blame_missing(root: Path, config: dict[str, Any], suspected: list[tuple[str, str]],
                   failure: BuildFailure) -> ScanProblem | None:
    """BAD CONFIG where the build failed and config.json lacks a size the weights need (:func:`_missing_sizes`): the
    class's default is what failed (GPT-2's 12 heads do not divide a width of 32), else None."""
    keys = list(dict.fromkeys(match.group(1) for _, why in suspected if (match := _MISSING_KEY.match(why))))
    if not keys:
        return None
    import transformers

    if str(config.get("model_type")) not in transformers.CONFIG_MAPPING:
        return None  # (a model transformers does not ship, Qwen-1's remote code: its own failure, not a size's)
    return ScanProblem(
        str(root / "config.json"), f"config.json gives no {first_few(keys, 4)}, so the class's default is built: "
        f"transformers {transformers.__version__} cannot build the model config.json describes ({failure.error}), so "
        "from_pretrained fails before it reads a weight",
        f"write {', '.join(keys)} into config.json (the base model's config.json has the values it was trained with)",
        kind=CONFIG_KIND)


def _builds_without(config: dict[str, Any], chosen: list[buildvalues.Suspicion]) -> bool:
    """Whether transformers builds the model from a copy of ``config`` with the ``chosen`` values replaced."""
    import tempfile

    patched = json.loads(json.dumps(config))  # (plain JSON: a deep copy; the caller's config stays as read)
    copies = {id(sub): copy for (_, sub), (_, copy) in zip(buildvalues.sub_configs(config),
                                                            buildvalues.sub_configs(patched))}
    for sub, key, _, instead in chosen:
        if instead is buildvalues.DROP:
            copies[id(sub)].pop(key, None)
        else:
            copies[id(sub)][key] = instead
    with tempfile.TemporaryDirectory(prefix="nandoctor-config-") as folder:
        (Path(folder) / "config.json").write_text(json.dumps(patched))
        return isinstance(_built_by_transformers(Path(folder)), _Built)


def _stacks(shapes: dict[str, tuple[int, ...]]) -> dict[str, set[int]]:
    """The layer numbers of each stack (``model.layers``: 0, 1, …) among tensor names."""
    out: dict[str, set[int]] = {}
    for name in shapes:
        match = STACK.match(name)
        if match:
            out.setdefault(match.group(1), set()).add(int(match.group(2)))
    return out


def _dense_layers(config: dict[str, Any], stacked: int) -> set[int]:
    """The layers of a mixture-of-experts model that config.json makes dense (no experts): DeepSeek's and Kimi's
    first ``first_k_dense_replace``, Qwen-MoE's ``mlp_only_layers``; of the ``stacked`` layers stored, at most (a
    hostile ``first_k_dense_replace`` of 2^70 made a set of that many, and the scan was killed for its memory)."""
    first = min(positive(config.get("first_k_dense_replace")) or 0, stacked)
    listed = config.get("mlp_only_layers")
    return set(range(first)) | ({n for n in listed if isinstance(n, int)} if isinstance(listed, list) else set())


def _no_layers(key: str, count: int = 0) -> str:
    return f"config.json's {key} is {count}"


# (a layer count of 0 or less: every stored layer unused)
_NO_LAYER_REASON = re.compile(r"^config\.json's (?:" + "|".join(("num_hidden_layers", *ALIASES["num_hidden_layers"]))
                              + r") is (?:0|-\d+)$")
UNGATHERED = "a sharded save (DeepSpeed ZeRO-3, FSDP) that did not gather its parameters"
GATHER_HINT = ("save again with the parameters gathered (DeepSpeed's stage3_gather_16bit_weights_on_model_save, "
               "accelerator.get_state_dict(model), or FSDP's full state dict), or use zero_to_fp32.py on the checkpoint")
_EMPTY = f"stored empty: {UNGATHERED}?"


def _suspicions(config: dict[str, Any], stored: dict[str, tuple[int, ...]], stacks: dict[str, set[int]],
                near: list[str] | None = None) -> Iterator[tuple[str, str]]:
    """(tensor name or stack, why) where config.json's top-level sizes disagree with the weights. ``near``: the
    stored names' near misses (namevocab.near_misses), when the caller has them."""
    vocab = positive(config.get("vocab_size"))
    hidden_key, hidden = sized(config, "hidden_size")
    layers_key, layers = sized(config, "num_hidden_layers")
    for name, shape in stored.items():
        if 0 in shape:  # (a ZeRO-3 save's un-gathered [0]; DINOv3's register_tokens [1, 0, d] of 0 register tokens)
            yield name, _EMPTY
        elif not shape and name.endswith((".weight", ".bias")):  # (a norm saved 0-d; a logit_scale is 0-d by design)
            yield name, "a weight or bias stored with no dimension"
        elif len(shape) == 1 and (EMBEDDING.match(name) or name == LM_HEAD):
            yield name, f"an embedding or LM head stored flat ({shape[0]:,} values)"
        elif len(shape) > 2 and (EMBEDDING.match(name) or name == LM_HEAD):  # (unsqueezed: [1, vocab, hidden])
            yield name, f"an embedding or LM head has two dimensions, this one is stored with {len(shape)}"
        if len(shape) != 2 or not (EMBEDDING.match(name) or name == LM_HEAD):
            continue
        if vocab and shape[0] != vocab:
            yield name, f"config.json's vocab_size is {vocab:,}, the tensor has {shape[0]:,} rows"
        elif hidden and shape[1] != hidden and shape[1] != positive(config.get("embedding_size")):
            # (ALBERT, ELECTRA and MobileBERT factorize their embeddings: embedding_size wide, a healthy save built
            # on the meta device on every scan for it, a sweep found)
            yield name, f"config.json's {hidden_key} is {hidden:,}, the tensor is {shape[1]:,} wide"
    # a norm, linear layer or projection stored in a shape its kind never has, the same way in every layer (a
    # transposition, [1, H] norms: no layer is odd among its siblings, the dimensions stay config.json's)
    yield from tensorkinds.suspicions(config, stored)
    # position and token-type embeddings of another length than config.json gives (max_position_embeddings raised to
    # extend the context: from_pretrained refuses the stored table; an adversarial round's read CLEAN)
    for name, shape in stored.items():
        if len(shape) != 2:
            continue
        for pattern, keys in _TABLES:
            key, rows = next(((k, positive(config.get(k))) for k in keys if k in config), ("", None))
            if rows and pattern.search(name) and shape[0] not in (rows, rows + 2):  # (+2: OPT/BART's offset rows)
                yield name, f"config.json's {key} is {rows:,}, the tensor has {shape[0]:,} rows"
    # (a stack of num_hidden_layers is the language model's; others beside it are a vision tower's, an encoder's;
    # DeepSeek-V3 stores its multi-token-prediction layers after them: num_nextn_predict_layers)
    extra = positive(config.get("num_nextn_predict_layers")) or 0
    if layers and stacks and not any(max(numbers) + 1 in (layers, layers + extra) for numbers in stacks.values()):
        for stack in stacks:
            yield stack, f"config.json's {layers_key} is {layers:,}"
    elif layers and not any(_NUMBERED_SEGMENT.search(name) for name in stored):
        # (no layer of any stack: a model.safetensors of the embeddings alone beside the shards of the rest, which
        # from_pretrained never reads once it found model.safetensors; an adversarial round's read CLEAN)
        yield _LAYOUT_SUSPICION, f"config.json's {layers_key} is {layers:,}, and no layer is stored"
    elif type(config.get(layers_key)) is int and config[layers_key] <= 0 and stacks:
        # (a model of no layers loads, and every stored layer goes unused: a trial's was CLEAN)
        for stack in stacks:
            yield stack, _no_layers(layers_key, config[layers_key])
    # an encoder-decoder's own counts (BART, Whisper, Marian: encoder_layers / decoder_layers)
    for key, word in (("encoder_layers", "encoder"), ("decoder_layers", "decoder"), ("num_decoder_layers", "decoder")):
        count = positive(config.get(key))
        for stack, numbers in stacks.items():
            if count and word in stack.split(".") and max(numbers) + 1 != count:
                yield stack, f"config.json's {key} is {count:,}"
    # a tensor stored in all but a few layers of a stack (one in eight at most: a save or filter that dropped
    # it); a model whose layers differ by design (MoE every other layer, linear attention in three of four) stores
    # it in fewer, or the built model clears it (DeepSeek's first dense layers)
    for stack, numbers in stacks.items():
        holders: dict[str, set[int]] = {}
        for name in stored:
            match = STACK.match(name)
            if match and match.group(1) == stack:
                holders.setdefault(name[match.end():], set()).add(int(match.group(2)))
        dense = _dense_layers(config, max(numbers, default=-1) + 1)
        types: dict[tuple[int, frozenset[int]], bool] = {}
        moved = set(_lone_out_of_pattern(holders, partial(_in_a_layout, numbers=numbers),
                                         lambda suffix: suffix.rpartition(".")[0]))
        for suffix, has in holders.items():
            if 0 < len(numbers) - len(has) <= max(1, len(numbers) // 8):
                for number in sorted(numbers - has):
                    if number in dense and (suffix.startswith("mlp.") or "expert" in suffix):
                        continue  # (a layer config.json makes dense has no experts, router or shared experts)
                    if number == max(numbers) and suffix.startswith("downsample."):
                        continue  # (a hierarchical model's last stage has nothing to downsample: Swin's, by design)
                    if len(numbers) == 2 and has == {min(numbers)} and _FIRST_LAYER_ONLY.search(suffix):
                        continue  # (of two layers, the second lacks what only a first layer is built with)
                    if _another_layer_type(number, has, holders, types):
                        continue
                    yield f"{stack}.{number}.{suffix}", _HOLE
            elif suffix in moved:
                yield _LAYOUT_SUSPICION, f"{stack}.#.{suffix} is stored in {_numbers(has)} only"
    # an attention block that stores all but one of its input projections (q/k/v_proj, BERT's query/key/value) the same in
    # every layer: a rename or a filter that took one tensor of every layer, which no hole shows, every layer lacking it
    # alike (an adversarial round: q_proj renamed or dropped in every layer read CLEAN; from_pretrained initialised it
    # at random). A suspicion: the model built says which it needs
    lone = _lone_projection(stored)
    if lone is not None:
        yield _LAYOUT_SUSPICION, lone
    # numbered sibling modules outside the layers (Whisper's conv1 and conv2) numbered from 0 or 1 without a gap; a
    # flipped bit in the number (conv1 stored as conv3, itself a name models use) leaves a family that is not
    numbered = _numbered_families(name for name in stored if not STACK.match(name))
    for family in _lone_out_of_pattern(numbered, _counted_from_one, lambda family: family.partition("#")[0]):
        yield _OUTSIDE_SUSPICION, f"{family} is numbered {', '.join(map(str, sorted(numbered[family])))}"
    yield from _missing_sizes(config, stored, stacks)
    wrapper = prefixes.suspicion(stored)
    if wrapper is not None:
        yield _PREFIX_SUSPICION, wrapper
    mismatch = _model_type_mismatch(config)
    if mismatch:  # (what from_pretrained builds is the model_type's model: are the weights its?)
        yield _OUTSIDE_SUSPICION, mismatch
        yield _LAYOUT_SUSPICION, mismatch
    # a size config.json gives that no stored tensor has as a dimension (intermediate_size edited, a GQA head count)
    dims = {d for shape in stored.values() for d in shape}
    heads, kv = sized(config, "num_attention_heads")[1], positive(config.get("num_key_value_heads"))
    head_dim = positive(config.get("head_dim")) or (hidden // heads if hidden and heads and hidden % heads == 0 else None)
    experts = max((positive(config.get(k)) or 0 for k in EXPERT_KEYS), default=0)
    # (head_dim is no stored dimension itself, only a factor of the projections'; a MoE model's intermediate_size
    # may size no layer at all: Qwen3-30B-A3B's experts are moe_intermediate_size wide)
    sizes = {key: positive(config.get(key)) for key in _SIZES if key != "head_dim" and not (key == "intermediate_size" and experts > 1)}
    width = sizes.get("intermediate_size")
    if width and config.get("block_auto_adjust_ff_dim") is True:
        sizes["intermediate_size"] = _adjusted_width(config, width) or width
    if heads and head_dim:
        sizes["num_attention_heads x head_dim"] = heads * head_dim
    fused = heads * head_dim + 2 * kv * head_dim if heads and kv and head_dim else None
    if (kv and head_dim and "kv_lora_rank" not in config
            and not any(_FUSED_QKV.search(name) and shape and shape[0] == fused for name, shape in stored.items())):
        # (a fused query-key-value projection, Falcon's, has only the sum of the three as a dimension; DeepSeek's
        # latent attention, kv_lora_rank, stores no key projection of num_key_value_heads x head_dim rows)
        sizes["num_key_value_heads x head_dim"] = kv * head_dim
        for name, shape in stored.items():  # (GQA: the key projection's rows are exactly that)
            if name.endswith("k_proj.weight") and len(shape) == 2 and shape[0] != kv * head_dim:
                yield _SIZE_SUSPICION, (f"config.json's num_key_value_heads x head_dim is {kv * head_dim:,}, "
                                        f"{name} has {shape[0]:,} rows")
                break
    for key, size in sizes.items():
        if size and dims and size not in dims and 2 * size not in dims:  # (2x: gate and up projections fused)
            yield _SIZE_SUSPICION, f"config.json's {key} is {size:,}, a dimension no stored tensor has"
    # a name one character from one the models use (a flipped bit in a header; outside a stack nothing else shows it)
    near = near_misses(stored) if near is None else near
    if near:
        yield _NAME_SUSPICION, f"{', '.join(near[:3])}: one character from a name transformers' models use"
    # weights outside the layers a save left out (embeddings frozen, only the trained parameters saved): no token
    # embedding, no norm outside the layers while the layers have norms (the final norm)
    if stacks:
        # (a text model's: a vision or audio encoder, or a CTC head's vocab_size, embeds no token; by any common
        # name: BART's shared, Mamba's embeddings, OpenAI-GPT's tokens_embed, CTRL's w: a miss costs a build)
        if vocab and embeds_token_ids(config) and not any(_ANY_EMBEDDING.search(name) for name in stored if not STACK.match(name)):
            yield _OUTSIDE_SUSPICION, "no token embedding is stored"
        # (a final norm only where the layers surely normalize first: RMSNorm models are pre-norm decoders; a
        # post-norm model, OpenAI-GPT or OPT-350m, has none, and would cost a build for nothing)
        elif ("rms_norm_eps" in config
              and any(tensorkinds.NORM.search(name) for name in stored if STACK.match(name))
              and not any(tensorkinds.NORM.search(name) for name in stored if not STACK.match(name))):
            yield _OUTSIDE_SUSPICION, "no norm outside the layers is stored (the final norm)"
    architectures = config.get("architectures")
    head = isinstance(architectures, list) and any(isinstance(a, str) and a.endswith(_WITH_LM_HEAD) for a in architectures)
    # (under a composite model's prefix too: transformers 5 saves Llava's as language_model.lm_head.weight)
    if (head and config.get("tie_word_embeddings") is False
            and not any(name == known or name.endswith("." + known) for name in stored for known in _LM_HEADS)
            and any(map(EMBEDDING.match, stored)) and not _head_by_shape(stored)):
        yield LM_HEAD, "config.json's tie_word_embeddings is false, so the model has an LM head of its own"
        # (a masked LM's head is named otherwise, BERT's cls.predictions.decoder: the built model says which)
        yield _OUTSIDE_SUSPICION, "config.json's tie_word_embeddings is false, so the model has an LM head of its own"
    # one layer's tensor in another shape than the same tensor of every other layer (transposed, cut): a model
    # whose layers differ by design (a codec's widening convolutions, OpenELM's per-layer widths) has more than
    # one odd shape, or its odd one is cleared by the model transformers builds
    families: dict[str, list[str]] = {}
    for name in stored:
        family = family_of(name)
        if family != name:
            families.setdefault(family, []).append(name)
    convolutions: set[str] | None = None  # (the modules whose weight is a kernel, found once a family asks)
    for family, members in families.items():
        seen = Counter(stored[m] for m in members)
        if len(seen) != 2 or not _contiguous(family, members):
            continue
        (common, _), (odd, count) = seen.most_common()
        if count == 1:  # (of two layers, which one is odd is the built model's to say: a trial's cut one was CLEAN)
            name = next(m for m in members if stored[m] == odd)
            if _other_modules(common, odd):
                continue
            if convolutions is None:
                convolutions = {_KERNEL_OF.sub("", n) for n, shape in stored.items()
                                if len(shape) >= 3 and _KERNEL_OF.search(n)}
            if _convolution_widths(name, common, odd, convolutions):
                continue
            yield name, f"the same tensor of the other layers has shape {list(common)}"


# modules a model builds in its first layer alone: T5's (and Switch Transformers') relative_attention_bias, RWKV's
# pre_ln. In a stack of more layers a tensor of one layer is no hole; of two, the second lacking it is the design (a
# sweep: every healthy two-layer T5 and RWKV save was built on the meta device for it)
_FIRST_LAYER_ONLY = re.compile(r"(?:^|\.)(?:relative_attention_bias|pre_ln)\.")


def _another_layer_type(number: int, has: set[int], holders: dict[str, set[int]],
                        seen: dict[tuple[int, frozenset[int]], bool]) -> bool:
    """Whether layer ``number``, lacking a tensor the layers ``has`` hold, is a layer of another type: it holds two
    tensors or more that none of them holds, of modules other than those it lacks tensors of, none a one-character
    change of a tensor it lacks (Jamba's attention layers among its Mamba layers, RecurrentGemma's and MiniMax's
    attention among recurrent or linear-attention ones, Switch Transformers' sparse and dense blocks: each a hole in a
    few layers, built on every healthy scan, a sweep found). A save or filter that dropped a tensor leaves the layer
    holding nothing new, a flipped bit one new name one character from the lost one, a rename within a module (a
    legacy LayerNorm.gamma and beta) the same module, and a module renamed in one layer (its ``self_attn`` saved as
    ``attn``: from_pretrained initializes that layer's attention at random) the lost tensors under one other segment
    (:func:`_renamed_parent`)."""
    key = (number, frozenset(has))  # (``seen``: the answers so far, one per layer and holders: an MoE's thousands)
    if key not in seen:
        candidates = [suffix for suffix, layers in holders.items() if number in layers and not layers & has]
        lacking: dict[int, list[str]] = {}
        modules: set[str] = set()
        if len(candidates) >= 2:
            for suffix, layers in holders.items():
                if number not in layers:
                    lacking.setdefault(len(suffix), []).append(suffix)
                    modules.add(suffix.rpartition(".")[0])
        own = [suffix for suffix in candidates if suffix.rpartition(".")[0] not in modules
               and not any(one_character_apart(suffix, lost) for lost in lacking.get(len(suffix), ()))]
        seen[key] = len(own) >= 2 and not _renamed_parent(own, [s for group in lacking.values() for s in group])
    return seen[key]


def _renamed_parent(own: list[str], lacking: list[str]) -> bool:
    """Whether tensors of ``own`` are tensors of ``lacking`` with one segment written otherwise, the same change for the
    tensors of two modules or more (``self_attn.q_proj.weight`` and ``self_attn.k_proj.weight`` saved as
    ``attn.q_proj.weight`` and ``attn.k_proj.weight``): a module renamed, not a layer of another type, whose modules
    differ each its own way (a recurrent block's ``linear_x`` where attention has ``q_proj``: one module alone)."""
    by_length: dict[int, list[list[str]]] = {}
    for suffix in lacking:
        parts = suffix.split(".")
        by_length.setdefault(len(parts), []).append(parts)
    renamed: dict[tuple[int, str, str], set[str]] = {}  # (segment, lost spelling, new spelling) → modules it renames
    for suffix in own:
        parts = suffix.split(".")
        for lost in by_length.get(len(parts), ()):
            differ = [i for i, (a, b) in enumerate(zip(parts, lost)) if a != b]
            if len(differ) == 1 and differ[0] < len(parts) - 1:
                at = differ[0]
                modules = renamed.setdefault((at, lost[at], parts[at]), set())
                modules.add(".".join(lost[:-1]))
                if len(modules) >= 2:
                    return True
    return False


def _head_by_shape(stored: dict[str, tuple[int, ...]]) -> str | None:
    """A weight outside the layers, no embedding table by its name, of a token embedding's shape ([vocab, hidden]):
    an LM head of its own under a name of its model's (GIT's output, FSMT's output_projection; a sweep: every healthy
    save of them was built on the meta device, its head not found by name), else None."""
    tables = {shape for name, shape in stored.items() if EMBEDDING.match(name) and len(shape) == 2}
    return next((name for name, shape in stored.items() if shape in tables and not EMBEDDING.match(name)
                 and not STACK.match(name) and not _ANY_EMBEDDING.search(name)
                 and not any(pattern.search(name) for pattern, _ in _TABLES)), None)


def _other_modules(common: tuple[int, ...], odd: tuple[int, ...]) -> bool:
    """Whether numbered siblings of these two shapes are modules of different kinds, not one tensor transposed or
    cut: another number of dimensions that is not a dimension of 1 added (an nn.Sequential's Linear [out, in] and
    LayerNorm [out] beside it: GIT's visual projection, built on every healthy scan, a sweep found)."""
    return len(common) != len(odd) and [d for d in common if d != 1] != [d for d in odd if d != 1]


_KERNEL_OF = re.compile(r"\.(?:weight|weight_[gv]|parametrizations\.weight\.original\d)$")


def _convolution_widths(name: str, common: tuple[int, ...], odd: tuple[int, ...], convolutions: set[str]) -> bool:
    """Whether ``name``, outside the layer stacks, belongs to a convolution (a module of the ``convolutions``) whose
    siblings differ from it in their channels alone, the kernel's size kept: a stack of convolutions changes its width
    by design (Speech2Text's subsampler, VITS's upsampler, a WaveNet's last skip layer: each built on every healthy
    scan, a sweep found), where the layers' own projections keep theirs."""
    if STACK.match(name):
        return False
    module = _KERNEL_OF.sub("", name) if _KERNEL_OF.search(name) else name.rpartition(".")[0]
    return module in convolutions and len(common) == len(odd) and common[2:] == odd[2:]


def _adjusted_width(config: dict[str, Any], size: int) -> int | None:
    """The MLP width a model builds from ``intermediate_size`` where config.json's ``block_auto_adjust_ff_dim`` says it
    adjusts it (LFM2's: two thirds of it, times ``block_ffn_dim_multiplier``, rounded up to ``block_multiple_of``; every
    healthy LFM2 save was built for a width no tensor has, a sweep found); None where the values make no width."""
    width = int(2 * size / 3)
    multiplier = config.get("block_ffn_dim_multiplier")
    if multiplier is None:
        return width
    if not isinstance(multiplier, (int, float)) or isinstance(multiplier, bool) or not 0 < multiplier < 2 ** 20:
        return None  # (a width no model builds: the built model says what it makes of it)
    step = positive(config.get("block_multiple_of"))
    if not step or step >= 2 ** 40:
        return None
    width = int(multiplier * width)
    return step * ((width + step - 1) // step)


def _contiguous(family: str, members: list[str]) -> bool:
    """Whether the members of a family are numbered 0, 1, 2 … with no gap: layers of a stack. An nn.Sequential's
    modules skip the numbers of those without weights (Qwen2-VL's merger: mlp.0 and mlp.2 beside a GELU at 1), and
    are different modules, not siblings of one shape (a sweep: every healthy Qwen2-VL save was built for it)."""
    at = family.find("#")
    if at < 0:
        return True
    numbers = set()
    for name in members:
        digits = re.match(r"\d+", name[at:])
        if digits is None:
            return True
        numbers.add(int(digits.group()))
    return numbers == set(range(len(numbers)))


_GIVEN_BY = (  # (a size, what stores a tensor it sizes: config.json without it builds the class's default)
    ("hidden_size", re.compile(r"(?:^|\.)(?:embed_tokens|wte|word_embeddings|embed_in)\.weight$")),
    ("vocab_size", re.compile(r"(?:^|\.)(?:embed_tokens|wte|word_embeddings|embed_in)\.weight$")),
    ("num_attention_heads", re.compile(r"\.(?:q_proj|query|c_attn|query_key_value|qkv_proj|W_pack)\.weight$")),
    # (Mixtral's experts as saved, experts.0.w1 and w3; transformers 5's fused experts.gate_up_proj, no .weight)
    ("intermediate_size", re.compile(r"\.(?:gate_proj|up_proj|gate_up_proj|intermediate\.dense)\.weight$"
                                     r"|\.experts\.\d+\.w[13]\.weight$|\.experts\.gate_up_proj$")),
)
_GIVES_NO = "config.json gives no"
_MISSING_KEY = re.compile(r"^config\.json gives no (\w+)")
# (a size's family: a key of it present, under whatever name a model gives it, and nothing is missing; swin's
# mlp_ratio, Whisper's max_source_positions, FSMT's src_vocab_size, Moonshine's encoder_num_hidden_layers)
_FAMILIES = {
    # (not Qwen3-MoE's mlp_only_layers, DeepSeek's num_nextn_predict_layers, Qwen2's max_window_layers: other counts)
    "num_hidden_layers": re.compile(r"^(?!.*(?:_only_|nextn|window|max_)).*(?:layers|layer$|depth|blocks)"),
    # (not Falcon's ffn_hidden_size: the MLP's)
    "hidden_size": re.compile(r"^(?!ffn_|intermediate_).*(?:hidden_size|n_embd|d_model|embed_dim|emb_dim|hidden_dim)$|^dim$"),
    # (not Falcon's num_kv_heads nor num_key_value_heads: the key/value heads' count)
    "num_attention_heads": re.compile(r"^(?!.*(?:key_value|kv_)).*(?:heads|n_head)"),
    "intermediate_size": re.compile(r"intermediate|ffn|mlp_ratio|d_ff|n_inner|hidden_dim"),
    "vocab_size": re.compile(r"vocab"),
    "max_position_embeddings": re.compile(r"position|n_ctx|seq_len|n_positions"),
    "num_local_experts": re.compile(r"^(?:num_local_experts|num_experts|n_routed_experts|moe_num_experts)$"),
}


def _gives(config: dict[str, Any], key: str) -> bool:
    """Whether config.json gives the size ``key`` under any name of its family (a value other than null)."""
    family = _FAMILIES[key]
    return any(family.search(k) and v is not None for k, v in config.items())


_KEY_PROJECTION = re.compile(r"^(?P<block>.*\.)k_proj\.weight$")
_ROUTED = re.compile(r"^(?:num_experts_per_tok|moe_top_?k|moe_k|n_activated_experts|experts_per_token)$")


def _gives_routing(config: dict[str, Any]) -> bool:
    """Whether config.json's top level names how many experts route each token (a value, not null)."""
    return any(_ROUTED.search(k) and v is not None for k, v in config.items())
# an expert's weight (per expert, fused, shared): Mixtral's experts.0.w1.weight, transformers 5's experts.gate_up_proj,
# Qwen2-MoE's shared_expert.up_proj.weight; not a quantizer's scales (FP8's weight_scale_inv)
_EXPERT_WEIGHT = re.compile(r"\.(?:experts?|shared_experts?)\.(?:.*\.weight|[a-z_]*proj)$")


def _unsized_expert_dimension(config: dict[str, Any], stored: dict[str, tuple[int, ...]]) -> str | None:
    """Words for an expert weight's dimension that no size config.json gives (nor twice one: gate and up fused),
    else None: the size that gave it was deleted and the class's default is built (Qwen2-MoE without
    moe_intermediate_size or shared_expert_intermediate_size builds 1408 and 5632 over experts of other widths; a
    helper's trial read CLEAN). Which key it was is the model's to say: a suspicion, the built model decides."""
    given = set(_integers(config))
    for name, shape in stored.items():
        if len(shape) < 2 or not _EXPERT_WEIGHT.search(name):
            continue
        for size in shape:
            if size != 1 and size not in given and not (size % 2 == 0 and size // 2 in given):
                return (f"no size config.json gives is {size:,}, a dimension of {name} (a size config.json does not "
                        "give builds the class's default)")
    return None


def _integers(value: Any, depth: int = 0) -> Iterator[int]:
    """The positive integers of a config.json value, its objects' and lists' too (DBRX's ffn_config, a per-layer
    list of widths), to a few levels."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        yield value
    elif depth < 3 and isinstance(value, dict):
        for item in value.values():
            yield from _integers(item, depth + 1)
    elif depth < 3 and isinstance(value, list):
        for item in value[:4096]:
            yield from _integers(item, depth + 1)


def _model_type_mismatch(config: dict[str, Any]) -> str:
    """Words for a config.json whose ``model_type`` is not its ``architectures``' model (``"model_type": "gpt2"`` beside
    ``LlamaForCausalLM``): AutoModel*.from_pretrained builds the model_type's class, which finds none of the weights'
    names and initializes them all at random (an adversarial round: CLEAN); "" where they agree."""
    model_type, names = config.get("model_type"), config.get("architectures")
    if not (isinstance(model_type, str) and model_type and isinstance(names, list) and names
            and isinstance(names[0], str)) or "auto_map" in config:  # (remote code names its own classes)
        return ""
    if not names[0].endswith(_CAUSAL_HEADS):  # (a user's own class, MyClassifier over a Llama: loaded by that class, a
        # helper found; AutoModelForCausalLM is only what a language model's load builds)
        return ""
    head = re.split(r"[_\-]", model_type.lower())[0]
    squashed = re.sub(r"[^a-z0-9]", "", names[0].lower())
    return "" if head in squashed else (f"config.json's model_type {model_type!r} is not its architectures' "
                                        f"{names[0]}: from_pretrained builds the model_type's model")


def _missing_sizes(config: dict[str, Any], stored: dict[str, tuple[int, ...]],
                   stacks: dict[str, set[int]]) -> Iterator[tuple[str, str]]:
    """Sizes a transformers config.json (one with a ``model_type``) does not give, deleted or null, where the weights
    hold what they size: from_pretrained builds the class's default (32 layers, 4096 wide, as many key/value heads as
    heads) and refuses the weights or fills the layers they lack at random (an adversarial round: each read CLEAN)."""
    if ("transformers_version" not in config or not isinstance(config.get("model_type"), str)
            or len(list(buildvalues.sub_configs(config))) > 1):
        # (save_pretrained writes every size a class has, and its version: a config.json without it is written by
        # hand and may leave sizes to the class; a composite model's sizes are its sub-configs': text_config …)
        return
    if sum(_gives(config, key) for key in _FAMILIES) < 3:
        return  # (a config.json of the sizes' own spellings, or none: a hand-written one builds defaults by design)
    if stacks and not _gives(config, "num_hidden_layers"):
        for stack in stacks:
            yield stack, f"{_GIVES_NO} num_hidden_layers: the model is built with its class's default"
    for key, holds in _GIVEN_BY:
        if not _gives(config, key):
            name = next((name for name in stored if holds.search(name)), None)
            if name is not None:
                yield _SIZE_SUSPICION, f"{_GIVES_NO} {key} (the class's default is built), {name} is stored"
    if config.get("num_key_value_heads") is None:  # (null or absent: as many key/value heads as heads)
        for name, shape in stored.items():
            match = _KEY_PROJECTION.match(name)
            query = stored.get(f"{match['block']}q_proj.weight") if match else None
            if query and len(shape) == 2 and len(query) == 2 and shape[0] != query[0]:
                yield _SIZE_SUSPICION, (f"{_GIVES_NO} num_key_value_heads (as many as the heads is built), "
                                        f"{name} has {shape[0]:,} rows and the query projection {query[0]:,}")
                break
    expert = next((name for name in stored if ".experts." in name), None)
    if expert is not None and not _gives(config, "num_local_experts"):  # (Mixtral's default: 8 experts)
        yield _SIZE_SUSPICION, f"{_GIVES_NO} num_local_experts (the class's default is built), {expert} is stored"
    if expert is not None and not _gives_routing(config) and "expert_capacity" not in config:
        # (the class's default top-k may exceed the experts stored: Qwen3-MoE's 8 over 4 loads, and generate raises;
        # a router of expert_capacity has no top-k to default, Switch Transformers' top-1 and NLLB-MoE's top-2 are its
        # code's: every healthy Switch save was built for it, a sweep found)
        yield _SIZE_SUSPICION, f"{_GIVES_NO} num_experts_per_tok (the class's default is built), {expert} is stored"
    unsized = _unsized_expert_dimension(config, stored)
    if unsized is not None:
        yield _SIZE_SUSPICION, unsized
    if not _gives(config, "max_position_embeddings"):
        pattern, keys = _TABLES[0]
        name = next((name for name in stored if pattern.search(name)), None)
        if name is not None:
            yield _SIZE_SUSPICION, f"{_GIVES_NO} {keys[0]} (the class's default is built), {name} is stored"


# (the input projections only: the output one is o_proj, out_proj or dense by model, BART's cross-attention out_proj)
_PROJECTION = re.compile(r"^(?P<block>.*\.)(?P<part>q_proj|k_proj|v_proj|query|key|value)\.weight$")
_PROJECTION_SETS = ({"q_proj", "k_proj", "v_proj"}, {"query", "key", "value"})
_FUSED_PROJECTION = re.compile(r"(?:qkv|query_key_value|c_attn|W_pack|in_proj)")
# (a block's input projection in the query's place: RWKV's time mixing reads its receptance beside key and value, and
# has no query; every healthy RWKV save was built on the meta device for it, a sweep found)
_QUERY_OTHERWISE = frozenset({"receptance.weight"})


def _lone_projection(stored: dict[str, tuple[int, ...]]) -> str | None:
    """Words for an attention block that holds all but one of a set of projections (and no fused one), else None."""
    blocks: dict[str, set[str]] = {}
    for name in stored:
        match = _PROJECTION.match(name)
        if match:
            blocks.setdefault(match["block"], set()).add(match["part"])
    for block, parts in blocks.items():
        for whole in _PROJECTION_SETS:
            held = parts & whole
            if len(held) == len(whole) - 1 and not any(
                    name.startswith(block) and _FUSED_PROJECTION.search(name[len(block):]) for name in stored):
                (lacking,) = whole - held
                if lacking in ("query", "q_proj") and any(f"{block}{other}" in stored for other in _QUERY_OTHERWISE):
                    continue
                return f"{STACK.sub(lambda m: m.group(1) + '.#.', block)}{lacking} is not stored beside " \
                       f"{', '.join(sorted(held))}"
    return None


def _regular(layers: set[int], numbers: set[int]) -> bool:
    """Whether ``layers`` of a stack numbered ``numbers`` follow a layout models are built with: a run from the
    first layer or to the last (DeepSeek's dense first layers, MoE after them), or every k-th layer (MoE every other
    layer, full attention every fourth). A flipped bit in one layer number breaks it: T5's relative_attention_bias
    of block 0 stored as block 4, a dense layer 0's MLP stored as layer 2 (a trial: CLEAN, while from_pretrained
    initialised the real ones at random)."""
    ordered = sorted(layers)
    if not ordered:
        return True
    if ordered == list(range(ordered[0], ordered[-1] + 1)):
        return ordered[0] == min(numbers) or ordered[-1] == max(numbers)
    return len(ordered) > 2 and len({b - a for a, b in pairwise(ordered)}) == 1  # (two apart: a pattern of nothing)


def _in_a_layout(layers: set[int], numbers: set[int]) -> bool:
    """Whether ``layers`` of a stack numbered ``numbers`` follow a layout, or their complement does (linear attention
    in three of four layers: full attention every fourth)."""
    return _regular(layers, numbers) or _regular(numbers - layers, numbers)


def _lone_out_of_pattern(families: dict[str, set[int]], regular: Callable[[set[int]], bool],
                         module_of: Callable[[str], str]) -> Iterator[str]:
    """The families (name with its number left out → the numbers holding it) whose numbers follow no ``regular``
    pattern, and that a one-bit flip would explain: no other family has the same numbers (a layer type holds many
    tensors, which keep together: hybrid models' mixer layers, a downsampling block), nor does another family of
    its module have more of them (a module's optional parameter, Moonshine's conv1 without a bias). A flip moves
    one tensor alone."""
    sets = Counter(frozenset(numbers) for numbers in families.values())
    by_module: dict[str, list[str]] = {}
    for family in families:
        by_module.setdefault(module_of(family), []).append(family)
    for members in by_module.values():
        for family in members:
            have = families[family]
            if regular(have) or sets[frozenset(have)] > 1 or any(have < families[m] for m in members):
                continue
            yield family


def _counted_from_one(numbers: set[int]) -> bool:
    """Whether numbered siblings are numbered as models number them: from 0 or 1, without a gap (or alone)."""
    return len(numbers) < 2 or (min(numbers) <= 1 and sorted(numbers) == list(range(min(numbers), max(numbers) + 1)))


def _numbered_families(names: Iterable[str]) -> dict[str, set[int]]:
    """The numbers of each family of numbered sibling segments (``model.encoder.conv#.weight``: {1, 2})."""
    families: dict[str, set[int]] = {}
    for name in names:
        parts = name.split(".")
        for i, part in enumerate(parts):
            match = _NUMBERED.match(part)
            if match:
                family = ".".join([*parts[:i], f"{match.group(1)}#", *parts[i + 1:]])
                families.setdefault(family, set()).add(int(match.group(2)))
    return families


def _numbers(numbers: Sequence[int] | set[int]) -> str:
    ordered = sorted(numbers)
    if ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"layers {ordered[0]}–{ordered[-1]}" if len(ordered) > 1 else f"layer {ordered[0]}"
    return "layers " + ", ".join(map(str, ordered[:8])) + (" …" if len(ordered) > 8 else "")


def _has_transformers() -> bool:
    import importlib.util

    return importlib.util.find_spec("transformers") is not None


class BuildFailure:
    """transformers raised while reading config.json or building its model: ``error`` says what."""

    __slots__ = ("error",)  # (a plain class: a dataclass costs every scan's start-up its generated methods)

    def __init__(self, error: str) -> None:
        self.error = error


@dataclass(frozen=True)
class _Built:
    """The model transformers builds from a config.json, on the meta device."""

    shapes: dict[str, tuple[int, ...]]  # every tensor of its state dict
    skipped: list[re.Pattern[str]]  # stored names its class says from_pretrained skips
    # the parameters from_pretrained fills from any one stored name of each group (tied ones share a group: an LM head
    # and its embedding), groups its class does not let go missing; a group none of whose names is stored is lacking
    filled_by: list[list[str]]
    loaded_as: Callable[[str], str]  # a stored name → the name from_pretrained loads it under (its conversion mapping)
    split_targets: list[tuple[list[str], list[str]]] = field(default_factory=list)  # conversions filling several
    # stored name → shape in, what from_pretrained refuses out, loaded as it loads them (dryload.py); None: not asked
    refusals: Callable[[dict[str, tuple[int, ...]]], list[dryload.Refusal] | None] = lambda stored: None
    values: dict[str, Any] = field(default_factory=dict)  # its config's values, the class's defaults filled in


def _renames(model: Any, built: dict[str, tuple[int, ...]]) -> Callable[[str], str]:
    """The name from_pretrained gives a stored tensor: transformers 5's own conversion mapping (legacy
    ``LayerNorm.gamma``/``beta``, ``weight_g``/``weight_v``, a model's renamed modules, the base model's prefix
    added or dropped); the stored name itself where this transformers has no such mapping."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

        transforms = get_model_conversion_mapping(model)
        renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
        converters = [t for t in transforms if isinstance(t, WeightConverter)]
        prefix = getattr(model, "base_model_prefix", None) or None
    except Exception:  # noqa: BLE001 - another transformers: names are compared as stored
        return lambda name: name

    def loaded_as(name: str) -> str:
        try:
            return rename_source_key(name, renamings, converters, prefix, built)[0]
        except Exception:  # noqa: BLE001 - (a mapping this version cannot apply to the name: as stored)
            return name

    return loaded_as


def _split_targets(model: Any) -> list[tuple[list[str], list[str]]]:
    """(source patterns, target names) of each of transformers 5's conversions that split one stored tensor into
    several (a fused vision ``qkv_proj`` into ``q_proj``, ``k_proj``, ``v_proj``); none for another transformers."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter

        converters = [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightConverter)]
    except Exception:  # noqa: BLE001 - another transformers: nothing is split
        return []
    found = [(list(c.source_patterns), list(c.target_patterns)) for c in converters
             if len(getattr(c, "target_patterns", ()) or ()) > 1]
    return [(sources, targets) for sources, targets in found
            if all(isinstance(p, str) for p in (*sources, *targets))]


def _also_filled(splits: list[tuple[list[str], list[str]]], loaded_as: dict[str, str]) -> set[str]:
    """The names beyond the first that a stored tensor fills where a conversion splits it (``loaded_as``: each stored
    name → the name it loads as, rename_source_key naming the first target only: a false-alarm hunt's UnlimitedOcr
    was called lacking its k_proj and v_proj). Only a stored name holding the conversion's source (``qkv_proj``)
    fills: a language model's own q_proj beside it fills no k_proj (a review)."""
    filled: set[str] = set()
    for stored, name in loaded_as.items():
        for sources, targets in splits:
            if any(source in stored for source in sources) and targets[0] in name:
                filled.update(name.replace(targets[0], other, 1) for other in targets[1:])
    return filled


def _values(model: Any) -> dict[str, Any]:
    """The values the model was built with (config.json's, the class's defaults for what it does not give)."""
    try:
        values = model.config.to_dict()
    except Exception:  # noqa: BLE001 - (a config class that cannot say them: nothing is judged by them)
        return {}
    return values if isinstance(values, dict) else {}


def _default_routing(root: Path, config: dict[str, Any], stored: dict[str, tuple[int, ...]],
                     built: _Built) -> ScanProblem | None:
    """BAD CONFIG where config.json gives no num_experts_per_tok over stored experts and the class's default routes
    to more experts than the model has (Qwen2-MoE's 4, Qwen3-MoE's 8 over 3: from_pretrained loads it, and generate
    raises "selected index k out of range"; a helper's trial read CLEAN), else None."""
    if (_gives_routing(config)
            or not any(".experts." in name for name in stored)):
        return None
    wrong = routing_problems("", built.values)
    if not wrong:
        return None
    return ScanProblem(
        str(root / "config.json"), f"config.json gives no num_experts_per_tok, so the class's default is built: "
        f"{wrong[0]}: from_pretrained loads the model, and generate raises",
        "write num_experts_per_tok into config.json (the base model's config.json has the number of experts each "
        "token was routed to in training)", kind=CONFIG_KIND)


def _built_by_transformers(root: Path) -> _Built | BuildFailure | None:
    """The model transformers builds from ``root``'s config.json, on the meta device; None without transformers,
    or for a model it does not ship (remote code is never run, a missing optional package); what it raised else."""
    _STATUS.info("building the model of %s with transformers, to check the tensors it needs (a few seconds)",
                 root / "config.json")
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
        with torch.device("meta"), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (a model's own warnings while it is built: no business of the scan's)
            # (the class its architectures name, where its config is this one's: AutoModel*.from_pretrained builds the
            # model_type's class otherwise, as here)
            if (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)
                    and isinstance(config, getattr(cls, "config_class", None) or type(config))):
                model = cls(config)
            else:  # no class of that name: AutoModelForCausalLM builds from model_type, as a user's load would
                model = transformers.AutoModelForCausalLM.from_config(config, trust_remote_code=False)
        built = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
        # what the class itself says from_pretrained skips (DeepSeek-V3's multi-token-prediction layer 61)
        ignored = getattr(type(model), "_keys_to_ignore_on_load_unexpected", None) or []
        # parameters sharing one tensor (an LM head tied to the embedding) are filled from whichever is stored
        holders: dict[int, list[str]] = {}
        for name, parameter in model.named_parameters(remove_duplicate=False):
            holders.setdefault(id(parameter), []).append(name)
        optional = [re.compile(p) for p in getattr(type(model), "_keys_to_ignore_on_load_missing", None) or []
                    if isinstance(p, str)]
        groups = [names for names in holders.values() if not any(p.search(n) for n in names for p in optional)]
        return _Built(built, [re.compile(p) for p in ignored if isinstance(p, str)], groups, _renames(model, built),
                      _split_targets(model), partial(dryload.refusals, model), _values(model))
    except ImportError:  # (an optional package the model class needs)
        return None
    except Exception as exc:  # noqa: BLE001 - a verdict only once _blame pins it on a config value
        text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        return BuildFailure(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
    finally:
        hf_logging.set_verbosity(verbosity)


__all__ = ["problems"]
