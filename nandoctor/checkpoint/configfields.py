"""config.json values transformers' strict config classes refuse: AutoConfig.from_pretrained raises before a weight is read.

transformers 5 declares every config class a strict dataclass (huggingface_hub's ``@strict``): each field is
type-checked as it is set from config.json ("Field 'num_attention_heads' expected int, got float"), and some carry a
validator of their own (Llama's ``initializer_range`` in [0, 1], a few ``positive_int`` sizes, an activation checked
against ACT2FN). A value it refuses, ``16.0`` heads, ``"1024"`` as a width, a string as ``layer_types``,
``hidden_act: null``, makes ``AutoConfig.from_pretrained`` raise and the model never loads. Importing transformers to
ask costs seconds, so config_fields.txt holds, for every config class of transformers 5.25, the type of each field it
validates (``python -m nandoctor.checkpoint.configfields_writer`` writes it, keeping a field only where :func:`wanted`
refuses exactly what the class refuses on a set of probe values), and :func:`refusals` reads a config.json against
it: the top level by its ``model_type``, each sub-config (``text_config``, …) by the class its parent builds it with.
A key that is no field of its class (an older spelling, a model's own setting) is not type-checked by transformers,
and not judged here, but for the two every config reads: ``id2label`` (keys ``int()`` reads) and ``layer_types`` (a
list, validate_layer_type). A model type the file does not know is judged by nothing. The file also holds ACT2FN's
names (:func:`activations`) and marks ``~build-act`` the activation keys a model type's model looks up in ACT2FN as it
is built (a name ACT2FN lacks: from_pretrained raises KeyError).

File format: a line ``!act`` and ACT2FN's names; then a line per class, ``<key> [<base] [-field …] field=spec …``:
the fields of the class on the earlier line ``base``, less the ``-field`` ones, plus or replacing the ``field=spec``
given. A spec is alternatives joined by ``|`` (``int``, ``float``, ``bool``, ``str``, ``null``, ``list``/``list[…]``,
``dict``/``dict[…,…]``, ``lit[<JSON values>]``, ``obj``: a class no JSON value is), then checks after ``~``: ``act``
(an ACT2FN name), ``pos`` (a positive integer), an interval ``[0.0,1.0]`` (``(`` ``)`` open), ``build-act``,
``cfg=<key>`` (a sub-config built by that class) or ``auto=<model_type>`` (by the class its own ``model_type`` names,
that one by default).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from nandoctor.model import ScanProblem
from nandoctor.verdict import CONFIG_KIND
from nandoctor.wording import first_few
from nandoctor.wording import setting_shown as _shown

FILE = Path(__file__).with_name("config_fields.txt")  # (configfields_writer.py writes it)
ACT_TAG = "!act"  # (the line of ACT2FN's names)
_SHOWN = 3
_ACT_WORDS = "a name transformers' ACT2FN knows"
_PLURALS = {"int": "integers", "float": "floats", "str": "strings", "bool": "booleans", "int|float": "numbers",
            "float|int": "numbers"}
_TAGGED = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_DEPTH = 3  # (sub-configs of sub-configs: Qwen3-Omni's talker's text config; deeper is no model)
# JSON's types as transformers' annotations name them
_SIMPLE = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool), "float": lambda v: isinstance(v, float),
           "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str), "null": lambda v: v is None,
           "obj": lambda v: False, "any": lambda v: True}
_WORDS = {"int": "an integer", "float": "a float (with a decimal point)", "bool": "true or false", "str": "a string",
          "null": "null", "list": "a list", "dict": "an object", "lit": "one of", "any": "anything"}


@dataclass(frozen=True)
class Refusal:
    """One value a config class refuses: ``where`` (``""`` or ``"text_config."``), the key, the value, what the class
    takes (words), and the class's model type. ``built``: the class takes it, and its model's build refuses it
    (an activation ACT2FN does not know: KeyError)."""

    where: str
    key: str
    value: Any
    wanted: str
    model_type: str
    built: bool = False


@cache
def _text() -> str:
    return "\n" + FILE.read_text(encoding="utf-8")


def version() -> str:
    """The transformers version config_fields.txt was written from (``""`` if it does not say)."""
    first = _text()[1:].split("\n", 1)[0]
    return first.split("transformers ", 1)[1].split(" ", 1)[0] if "transformers " in first else ""


@cache
def activations() -> frozenset[str]:
    """The activation names transformers' ACT2FN knows."""
    text = _text()
    at = text.find(f"\n{ACT_TAG} ")
    return frozenset(text[at + 1:text.find("\n", at + 1)].split()[1:]) if at >= 0 else frozenset()


@cache
def fields(key: str, depth: int = 0) -> dict[str, str]:
    """The fields the config class ``key`` (a model type, or a sub-config class's name) validates, with their specs;
    empty where the file does not know it."""
    text = _text()
    if not key or depth > 64 or key[0] in "<-!=" or any(c in key for c in " \n"):  # (xlm-roberta has a "-")
        return {}
    at = text.find(f"\n{key} ")
    if at < 0:
        return {}
    found: dict[str, str] = {}
    for entry in text[at + 1:text.find("\n", at + 1)].split()[1:]:
        if entry.startswith("<"):
            found.update(fields(entry[1:], depth + 1))
        elif entry.startswith("-"):
            found.pop(entry[1:], None)
        else:
            name, _, spec = entry.partition("=")
            found[name] = spec
    return found


@cache
def model_types() -> frozenset[str]:
    """The model types config_fields.txt holds a config class of (each lowercase; the sub-config classes it holds
    under their class names, ``BarkCoarseConfig``, are none)."""
    keys = (line.split(" ", 1)[0] for line in _text().split("\n")[1:] if line and line[0] not in "#!")
    return frozenset(key for key in keys if key == key.lower())


def model_type_problems(path: Path, config: dict[str, Any]) -> list[ScanProblem]:
    """BAD CONFIG where config.json (``config``, read from ``path``) of a transformers model gives a model type no
    transformers knows: a value that is no string, or a known type in other letters (``"Llama"``, ``"xlm_roberta"``).
    AutoConfig, every AutoModel class and pipeline() raise ("does not recognize this architecture"); an adversarial
    round's read CLEAN. A config.json transformers did not write (no ``architectures``, no ``transformers_version``:
    timm's, a diffusers component's) and one whose ``auto_map`` gives its own AutoConfig (remote code) are not judged;
    nor are a missing, null or empty type (a user's own PreTrainedConfig subclass saves ``""``) and a type unknown here
    (a model's own remote code that lost its auto_map, Qwen-1's ``qwen``, or a type newer than config_fields.txt): a
    class named directly loads those, and which transformers the user runs is not known here."""
    if "_diffusers_version" in config or not ("architectures" in config or "transformers_version" in config):
        return []
    auto_map = config.get("auto_map")
    value, types = config.get("model_type"), model_types()
    if value in (None, "") or not types or (isinstance(auto_map, dict) and "AutoConfig" in auto_map):
        return []
    if isinstance(value, str):
        near = next((t for t in (value.lower(), value.lower().replace("_", "-"), value.lower().replace("-", "_"))
                     if t in types), None)
        if value in types or near is None:
            return []
        said = f"has model_type {_shown(value)}, where transformers' type is {near!r}"
    else:
        said = f"has model_type {_shown(value)}, which names no type"
    return [ScanProblem(
        str(path), f"{path.name} {said}: AutoConfig, the AutoModel classes and pipeline() raise on it (\"does not "
        "recognize this architecture\"), so the model loads only through its class named directly",
        f"write the model_type of the architecture it holds (\"llama\" for LlamaForCausalLM; the base model's "
        f"{path.name} has it)", kind=CONFIG_KIND)]


def judges(config: dict[str, Any], key: str) -> bool:
    """Whether ``key`` of ``config`` (a config.json object, or a sub-config's) is a field its class validates, so
    that :func:`refusals` decides its type exactly (no build needed)."""
    return key in fields(str(config.get("model_type") or ""))


def is_activation(config: dict[str, Any], key: str) -> bool:
    """Whether ``config``'s model looks ``key`` up in ACT2FN as it is built (an unknown name: KeyError)."""
    spec = fields(str(config.get("model_type") or "")).get(key, "")
    return "~act" in spec


def uses_rope(model_type: Any) -> bool:
    """Whether the config class of ``model_type`` has rope parameters (its model computes rotary frequencies
    from them)."""
    return isinstance(model_type, str) and "rope_parameters" in fields(model_type)


def refusals(config: dict[str, Any]) -> list[Refusal]:
    """Every value of config.json's object ``config`` (sub-configs included) its config class refuses, as
    transformers 5's strict dataclasses do while AutoConfig reads it."""
    model_type = config.get("model_type")
    return list(_refused("", config, model_type if isinstance(model_type, str) else "", 0))


def _refused(where: str, config: dict[str, Any], key: str, depth: int) -> Iterator[Refusal]:
    specs = fields(key)
    for name, value in config.items():
        spec = specs.get(name)
        if name == "id2label" and specs and not _labels(value):
            # (PreTrainedConfig.__post_init__ reads it as {int(key): label}: a list, or label2id's mapping written in
            # its place, {"neg": 0}, raises: AttributeError, "invalid literal for int()")
            yield Refusal(where, name, value, "an object from label numbers (\"0\", \"1\", …) to names", key)
            continue
        if (name == "layer_types" and spec is None and value is not None and not isinstance(value, list)
                and "num_hidden_layers" in specs):
            # (validate_layer_type, a class validator of every config with layers, reads it as a list of layer types:
            # a string's letters or a number's iteration refuse, where the class has no field of that name)
            yield Refusal(where, name, value, "a list of layer types, one per layer", key)
            continue
        if spec is None:
            continue
        takes = wanted(spec, value)
        if takes is not None:
            yield Refusal(where, name, value, takes, key)
            continue
        if "~build-act" in spec and isinstance(value, str) and value not in activations():
            yield Refusal(where, name, value, _ACT_WORDS, key, built=True)
            continue
        if isinstance(value, dict) and depth < _DEPTH:
            sub = _sub_class(spec, value)
            if sub:
                yield from _refused(f"{where}{name}.", value, sub, depth + 1)


def _labels(value: Any) -> bool:
    """Whether ``id2label`` is as PreTrainedConfig reads it: null, or an object whose keys ``int()`` reads."""
    if value is None:
        return True
    if not isinstance(value, dict):
        return False
    try:
        return all(isinstance(int(k), int) for k in value)
    except ValueError:
        return False


def _sub_class(spec: str, value: dict[str, Any]) -> str:
    """The config class a sub-config's object is built with (``~cfg=`` its own; ``~auto=`` the one its
    ``model_type`` names, that one by default)."""
    for check in spec.split("~")[1:]:
        if check.startswith("cfg="):
            return check[4:]
        if check.startswith("auto="):
            named = value.get("model_type")
            return named if isinstance(named, str) and named else check[5:]
    return ""


def wanted(spec: str, value: Any, names: frozenset[str] | None = None) -> str | None:
    """None where a field of ``spec`` takes ``value`` (``names``: ACT2FN's, by default the file's); else what it
    takes, in words."""
    types, *checks = spec.split("~")
    value = _decoded(value)
    if not _matches(types, value):
        return _said(types)
    for check in checks:
        takes = _check(check, value, activations() if names is None else names)
        if takes is not None:
            return takes
    return None


def _matches(types: str, value: Any) -> bool:
    """Whether ``value`` is of one of the alternatives ``types`` (huggingface_hub's type_validator, for JSON)."""
    return any(_one(alternative, value) for alternative in _split(types, "|"))


def _decoded(value: Any) -> Any:
    """transformers' tagged float (``{"__float__": "Infinity"}``, as it saves NaN and Inf) as the float it reads."""
    if isinstance(value, dict) and len(value) == 1 and value.get("__float__") in _TAGGED:
        return _TAGGED[value["__float__"]]
    return value


def _one(alternative: str, value: Any) -> bool:
    value = _decoded(value)
    name, _, inner = alternative.partition("[")
    inner = inner[:-1] if inner.endswith("]") else inner
    if name in _SIMPLE and not inner:
        return bool(_SIMPLE[name](value))
    if name == "lit":
        choices = json.loads(f"[{inner}]")
        if isinstance(value, bool):  # (a Literal holds a bool only as a bool, an int only as an int)
            return any(c is value for c in choices)
        return any(c == value and type(c) is type(value) for c in choices)
    if name == "list":
        return isinstance(value, list) and (not inner or all(_matches(inner, item) for item in value))
    if name == "dict":
        if not isinstance(value, dict):
            return False
        if not inner:
            return True
        keys, values = _split(inner, ",")
        return all(_matches(keys, k) and _matches(values, v) for k, v in value.items())
    return True  # (a type this module does not read: taken, never a false alarm)


def _split(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` outside brackets."""
    parts, depth, start = [], 0, 0
    for at, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == separator and depth == 0:
            parts.append(text[start:at])
            start = at + 1
    parts.append(text[start:])
    return parts


def _check(check: str, value: Any, names: frozenset[str]) -> str | None:
    """What a field's own validator (``check``) refuses in ``value``, in words; None where it takes it (``build-act``
    is the model's, not the config class's: :func:`_refused` judges it)."""
    if check == "act":
        return None if isinstance(value, str) and value in names else _ACT_WORDS
    if check == "pos":  # (positive_int_field)
        return None if value is None or (isinstance(value, int) and value > 0) else "a positive integer"
    if check and check[0] in "[(" and check[-1] in "])":  # (interval(min, max): a comparison that raises refuses too)
        low_text, high_text = check[1:-1].split(",")
        low = float(low_text) if low_text else -math.inf
        high = float(high_text) if high_text else math.inf
        if isinstance(value, (int, float)):
            above = low < value if check[0] == "(" else low <= value
            below = value < high if check[-1] == ")" else value <= high
            if above and below:
                return None
        return f"a number in {check[0]}{low_text or '-inf'}, {high_text or 'inf'}{check[-1]}"
    return None


def _said(types: str) -> str:
    """A spec's alternatives in words: ``an integer or null``."""
    words = []
    for alternative in _split(types, "|"):
        name, _, inner = alternative.partition("[")
        if name == "lit":
            words.append("one of " + ", ".join(json.dumps(c) for c in json.loads(f"[{inner[:-1]}]")))
        elif name != "obj":
            words.append(_WORDS.get(name, name) + (f" of {_PLURALS.get(inner[:-1], 'values: ' + _said(inner[:-1]))}"
                                                    if name == "list" and inner else ""))
    return " or ".join(dict.fromkeys(words)) or "no value JSON can hold"


@cache
def _validates_fields() -> bool:
    """Whether the transformers that loads these models validates config fields by type: transformers 5's strict
    config classes do, 4's took any JSON value; with none installed here (the model is served elsewhere) the data's
    version is taken. Read from the package's metadata, not imported."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        major = installed("transformers").split(".", 1)[0]
    except PackageNotFoundError:
        return True
    return not major.isdigit() or int(major) >= 5


def problems(path: Path, config: dict[str, Any]) -> list[ScanProblem]:
    """BAD CONFIG for the values of config.json (``config``, read from ``path``) its config class refuses; none where
    its ``auto_map`` names its own AutoConfig (remote code: that class reads it, not transformers' strict one)."""
    auto_map = config.get("auto_map")
    if isinstance(auto_map, dict) and "AutoConfig" in auto_map:
        return []
    found = refusals(config)
    said = f"transformers {version()}" if version() else "transformers"
    problems = []
    typed = [r for r in found if not r.built]
    if typed and not _validates_fields():  # (asked only then: importlib.metadata costs a scan ~5 ms of imports)
        typed = []
    if typed:
        shown = [f"{r.where}{r.key} is {_shown(r.value)} (the {r.model_type} config takes {r.wanted})" for r in typed]
        problems.append(ScanProblem(
            str(path), f"{first_few(shown, _SHOWN)}: AutoConfig.from_pretrained refuses {'it' if len(typed) == 1 else 'them'} ({said} validates its config "
            "classes' fields: \"Validation error for field\"), so from_pretrained fails before it reads a weight",
            "write " + ", ".join(dict.fromkeys(f"{r.where}{r.key}" for r in typed)) + f" in {path.name} as the type "
            "named (2 for 2.0, true for \"true\"; the base model's config.json has the values it was trained with)",
            kind=CONFIG_KIND))
    named = [r for r in found if r.built]
    if named:
        shown = [f"{r.where}{r.key} is {_shown(r.value)}" for r in named]
        problems.append(ScanProblem(
            str(path), f"{first_few(shown, _SHOWN)}, an activation {said}'s ACT2FN does not know: the model's build "
            "looks it up and from_pretrained raises KeyError before it reads a weight",
            "write " + ", ".join(dict.fromkeys(f"{r.where}{r.key}" for r in named)) + f" in {path.name} as one of "
            f"{', '.join(sorted(activations())[:6])} … (the base model's config.json has the one it was trained with)",
            kind=CONFIG_KIND))
    return problems



__all__ = ["ACT_TAG", "FILE", "Refusal", "activations", "fields", "is_activation", "judges", "model_type_problems",
           "model_types", "problems", "refusals", "uses_rope", "version", "wanted"]
