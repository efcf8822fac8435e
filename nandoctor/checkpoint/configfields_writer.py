"""Writes config_fields.txt from the installed transformers: ``python -m nandoctor.checkpoint.configfields_writer``.

Each config class's dataclass fields and their annotations become specs (configfields.py reads them); a field is
kept only where configfields' reading of its spec refuses exactly what the class refuses on a set of probe values
(an integer, a float, a string, a bool, null, a list, an object, …), so that a spec this module misreads costs a
miss, never a false alarm. Then each model type's base model is built on the meta device (layers cut to two) with
each activation key set to a name ACT2FN does not know: where the build raises KeyError for it, the key is marked
``~build-act``. Run by hand when transformers changes (several minutes: a few hundred thousand configs, and a
model per activation key); never imported by a scan.
"""

from __future__ import annotations  # pragma: no cover

import contextlib  # pragma: no cover
import inspect  # pragma: no cover
import io  # pragma: no cover
import json  # pragma: no cover
import re  # pragma: no cover
import traceback  # pragma: no cover
import types  # pragma: no cover
import typing  # pragma: no cover
import warnings  # pragma: no cover
from pathlib import Path  # pragma: no cover
from typing import Any  # pragma: no cover

from nandoctor.checkpoint import configfields  # pragma: no cover

# values a config.json can hold, each field's spec tried against its class with every one of them
PROBES: list[Any] = [2, 0, -1, 2.0, 2.5, 1e30, "2", "silu", True, None, [2], [2.5], ["full_attention"], {"a": 1}, {},
                     []]  # pragma: no cover
_UNSAFE = re.compile(r"[\s\[\]|,~=<!-]")  # (characters that would break a spec's text) # pragma: no cover
_FIELD_ERROR = re.compile(r"Validation error for field '([^']*)'")  # pragma: no cover
BOGUS_ACTIVATION = "gated-nandoctor_no_such_activation"  # (a "-": T5 parses "gated-gelu" into "gelu")  # pragma: no cover


def write(path: Path) -> None:  # pragma: no cover
    """Write config_fields.txt to ``path``."""
    import transformers
    from transformers.activations import ACT2FN
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    warnings.simplefilter("ignore")
    names = frozenset(ACT2FN)
    classes: dict[str, type] = {}
    for model_type in sorted(CONFIG_MAPPING_NAMES):
        with contextlib.suppress(Exception):
            classes[model_type] = CONFIG_MAPPING[model_type]
    rows: dict[str, dict[str, str]] = {}
    pending = list(classes.items())
    dropped = missed = 0
    while pending:
        key, cls = pending.pop(0)
        if key in rows:
            continue
        specs, subs = _specs(cls, classes)
        pending += [(sub_key, sub_cls) for sub_key, sub_cls in subs if sub_key not in rows]
        kept: dict[str, str] = {}
        for field, spec in specs.items():
            verdict = _verified(cls, field, spec, names)
            if verdict is None:
                dropped += 1
                continue
            missed += verdict
            kept[field] = spec
        rows[key] = kept
    for model_type in sorted(classes):
        for field in _built_activations(transformers, model_type, rows[model_type], names):
            rows[model_type][field] += "~build-act"
    lines = [f"# the fields each config class of transformers {transformers.__version__} validates, and their types: "
             "python -m nandoctor.checkpoint.configfields_writer",
             f"{configfields.ACT_TAG} {' '.join(sorted(names))}"]
    lines += _delta_lines(rows)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(rows)} config classes, {sum(map(len, rows.values()))} fields written to {path} "
          f"({dropped} fields left out: their spec and their class disagreed; {missed} probe values the specs miss)")


def _specs(cls: type, classes: dict[str, type]) -> tuple[dict[str, str], list[tuple[str, type]]]:  # pragma: no cover
    """(field → spec for each validated field of ``cls``, the sub-config classes it builds by key)."""
    import dataclasses

    from transformers.configuration_utils import PreTrainedConfig

    specs: dict[str, str] = {}
    subs: list[tuple[str, type]] = []
    defaults = getattr(cls, "sub_configs_defaults", None) or {}
    for field in dataclasses.fields(cls):
        spec = _spec(field.type)
        if spec is None or spec == "any" or _UNSAFE.search(field.name):
            continue
        for validator in _validators(field):
            spec += f"~{validator}"
        sub = defaults.get(field.name)
        if sub is not None and field.name != "backbone_config":  # (backbones are consolidated their own way)
            if not issubclass(sub.config_class, PreTrainedConfig):
                spec += f"~auto={sub.model_type}"
            else:
                key = sub.config_class.model_type
                if not key or classes.get(key) is not sub.config_class:
                    key = sub.config_class.__name__
                spec += f"~cfg={key}"
                subs.append((key, sub.config_class))
        specs[field.name] = spec
    return specs, subs


def _spec(annotation: Any) -> str | None:  # pragma: no cover
    """An annotation as configfields reads it; None where huggingface_hub does not validate it (a string
    annotation: the base class's fields, written under ``from __future__ import annotations``)."""
    if isinstance(annotation, (str, typing.ForwardRef)):
        return None
    if annotation is typing.Any:
        return "any"
    if annotation is None or annotation is type(None):
        return "null"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        parts = [_spec(a) for a in args]
        if any(p is None or p == "any" for p in parts):
            return "any"
        return "|".join(dict.fromkeys(p for p in parts if p is not None))
    if origin is typing.Literal:
        if all(isinstance(a, (str, int, float, bool)) or a is None for a in args):
            text = ",".join(json.dumps(a) for a in args)
            return "any" if _UNSAFE.search(text.replace(",", "")) else f"lit[{text}]"
        return "any"
    if origin is list:
        inner = _spec(args[0]) if args else None
        return "list" if not args else "any" if inner is None or inner == "any" else f"list[{inner}]"
    if origin is dict:
        if not args:
            return "dict"
        keys, values = _spec(args[0]), _spec(args[1])
        if keys is None or values is None:
            return "any"
        return "dict" if keys == "any" and values == "any" else f"dict[{keys},{values}]"
    if origin in (tuple, set, frozenset):
        return "obj"  # (JSON holds no tuple or set: a JSON list is refused where only they are)
    if origin is not None:
        return "any"  # (Sequence[…], Callable: a list or a string may be one; never judged)
    if annotation in (int, float, bool, str):
        return annotation.__name__
    if annotation in (list, dict):
        return annotation.__name__
    if annotation in (tuple, set):
        return "obj"
    if isinstance(annotation, type):
        return "obj"  # (a config class, a TypedDict, torch.dtype: no JSON value is an instance)
    return "any"


def _validators(field: Any) -> list[str]:  # pragma: no cover
    """A field's own validators as configfields' checks (one it does not read left out: taken, never refused)."""
    found = []
    attached = field.metadata.get("validator")
    for validator in attached if isinstance(attached, list) else [attached] if attached else []:
        name = getattr(validator, "__qualname__", "")
        if name == "positive_int_field":
            found.append("pos")
        elif name == "activation_fn_key":
            found.append("act")
        elif name == "probability":
            found.append("[0,1]")
        elif name.startswith("interval."):
            bound = inspect.getclosurevars(validator).nonlocals
            low, high = bound.get("min"), bound.get("max")
            found.append(("(" if bound.get("exclude_min") else "[") + ("" if low in (None, float("-inf")) else repr(low))
                         + "," + ("" if high in (None, float("inf")) else repr(high))
                         + (")" if bound.get("exclude_max") else "]"))
    return found


def _verified(cls: type, field: str, spec: str, names: frozenset[str]) -> int | None:  # pragma: no cover
    """None where ``spec`` refuses a probe value the class takes (or cannot be told): the field is left out; else
    how many probe values the class refuses that ``spec`` takes (misses, never false alarms)."""
    import copy

    missed = 0
    for probe in [*PROBES, *sorted(names)[:1]]:
        reading = configfields.wanted(spec, probe, names) is not None
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                cls(**{field: copy.deepcopy(probe)})
            refused: bool | None = False
        except Exception as exc:  # noqa: BLE001 - which field's validation raised, if any
            match = _FIELD_ERROR.search(str(exc))
            refused = True if match and match.group(1) == field else None
        if reading and refused is not True:
            return None
        missed += bool(refused) and not reading
    return missed


def _built_activations(transformers: Any, model_type: str, fields: dict[str, str],
                       names: frozenset[str]) -> list[str]:  # pragma: no cover
    """The string fields of ``model_type`` holding an ACT2FN name by default that its base model looks up in ACT2FN
    as it is built (a name it does not know: KeyError)."""
    import torch

    from nandoctor.checkpoint.layervocab import fewer_layers

    try:
        defaults = transformers.AutoConfig.for_model(model_type)
    except Exception:  # noqa: BLE001 - (a config that needs arguments)
        return []
    candidates = [f for f, spec in fields.items() if spec.split("~")[0] in ("str", "str|null", "null|str")
                  and getattr(defaults, f, None) in names]
    if not candidates or not _builds(transformers, torch, model_type, {}, fewer_layers):
        return []
    return [f for f in candidates if not _builds(transformers, torch, model_type, {f: BOGUS_ACTIVATION}, fewer_layers,
                                                 missing=BOGUS_ACTIVATION)]


def _builds(transformers: Any, torch: Any, model_type: str, changes: dict[str, Any], fewer: Any,
            missing: str = "") -> bool:  # pragma: no cover
    """Whether the base model of ``model_type`` builds with ``changes`` (where ``missing`` is given, False only for
    the KeyError ACT2FN raises for the whole value: the innermost frame in transformers' activations.py; a model
    that parses the value, as T5 its "gated-gelu", looks up a part of it)."""
    try:
        config = transformers.AutoConfig.for_model(model_type, **changes)
        fewer(transformers, config)
        with torch.device("meta"), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            transformers.AutoModel.from_config(config)
    except KeyError as exc:
        frames = traceback.extract_tb(exc.__traceback__)
        from_act2fn = bool(frames) and Path(frames[-1].filename).name == "activations.py"
        return bool(missing) and not (from_act2fn and exc.args[:1] == (missing,))
    except Exception:  # noqa: BLE001 - (a model that needs an extra, or refuses the config: not this key's)
        return bool(missing)
    return True


def _delta_lines(rows: dict[str, dict[str, str]]) -> list[str]:  # pragma: no cover
    """A line per class, each the fields of an earlier line (``<base``) less and plus what differs, where that is
    shorter than the fields written out."""
    lines: list[str] = []
    written: list[str] = []
    depth: dict[str, int] = {}
    for key in sorted(rows, key=lambda k: (k[:1].isupper(), k)):
        own = rows[key]
        best, entries = None, [f"{f}={s}" for f, s in sorted(own.items())]
        for other in written:
            if depth[other] >= 8:
                continue
            theirs = rows[other]
            diff = [f"-{f}" for f in sorted(theirs) if f not in own]
            diff += [f"{f}={s}" for f, s in sorted(own.items()) if theirs.get(f) != s]
            if len(" ".join(diff)) + len(other) + 2 < len(" ".join(entries)):
                best, entries = other, diff
        depth[key] = depth[best] + 1 if best else 0
        written.append(key)
        lines.append(" ".join([key, *([f"<{best}"] if best else []), *entries]))
    return lines


if __name__ == "__main__":  # pragma: no cover
    write(configfields.FILE)
