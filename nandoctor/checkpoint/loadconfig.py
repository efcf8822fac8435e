"""The JSON files ``from_pretrained`` reads beside the weights, checked as transformers 5.x reads them.

Healthy tensors still make no working model when the config the model is built from is broken:

- ``config.json`` that is not valid JSON, or valid JSON but not an object: ``from_pretrained`` fails before it
  reads a weight ("It looks like the config file at … is not a valid JSON file"; "Unrecognized model" for an
  array or a string). Likewise ``adapter_config.json`` beside adapter weights, for PEFT. NOT LOADABLE
  (``verdict.UNLOADABLE_KIND``).
- config.json's dtype — the top-level ``"dtype"``, or ``"torch_dtype"`` where ``"dtype"`` is absent or null
  (the rule loaddtype.py reads) — holding a value ``from_pretrained`` refuses. ``PreTrainedConfig`` turns a
  string into ``getattr(torch, value)`` and the model is built in that dtype, so only a floating-point dtype
  torch keeps storages of loads: :data:`LOADABLE_DTYPES`. ``"fp16"``, ``"torch.float16"`` and ``"auto"``
  (from_pretrained's argument, not a config value) fail with "module 'torch' has no attribute …"; ``"int8"``,
  ``"bool"``, ``"complex64"`` with "cannot be instantiated under dtype=…: not a floating-point dtype";
  ``"float8_e4m3fn"`` with "couldn't find storage object"; a number, boolean or array alike. A dict (one dtype
  per sub-config) is read for its ``""`` entry only, held to the same rule. Each value checked with
  transformers 5.25 (tests/test_load_config.py). NOT LOADABLE.
- a NaN or Infinity (or a number too large for a double, ``1e999``) anywhere in ``config.json``,
  ``generation_config.json`` or a PEFT adapter's ``adapter_config.json`` (``lora_alpha``: the update's scale):
  the model is built from the value as written, so an ``rms_norm_eps`` of NaN makes
  every forward pass NaN, and a ``temperature`` or ``repetition_penalty`` of NaN makes ``generate`` raise. The
  model loads, so this is no NOT LOADABLE: a problem of kind ``config`` (``verdict.CONFIG_KIND``, BAD CONFIG)
  naming the file and the key path (``text_config.rms_norm_eps is NaN``).
- values config.json's config class refuses as AutoConfig reads it (``16.0`` heads, ``"1024"`` as a width,
  ``hidden_act: null``): configfields.py; finite values that make ``generate`` raise or every forward pass NaN (a
  ``temperature`` of 0 with ``do_sample``, a negative ``rms_norm_eps``): configvalues.py, its rope settings
  ropevalues.py.

Only where a Hugging Face loader reads the folder's weights (loadability.py says which): a ``config.json``
beside other weights is another library's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nandoctor import access
from nandoctor.checkpoint import configfields, configvalues
from nandoctor.checkpoint.jsonfiles import read_json
from nandoctor.checkpoint.loaddtype import config_dtype
from nandoctor.checkpoint.loaders import CONFIG
from nandoctor.dtypes import TORCH_DTYPE_NAMES
from nandoctor.errors import UnreadablePathError
from nandoctor.model import ScanProblem
from nandoctor.verdict import CONFIG_KIND, UNLOADABLE_KIND
from nandoctor.wording import first_few

GENERATION_CONFIG = "generation_config.json"
PREPROCESSOR_CONFIG = "preprocessor_config.json"  # AutoFeatureExtractor's / AutoImageProcessor's settings
ADAPTER_CONFIG = "adapter_config.json"
# The dtype names transformers 5.25 builds a model in (getattr(torch, name): a floating dtype with a storage)
LOADABLE_DTYPES = ("bfloat16", "float16", "float32", "half", "float", "float64", "double")
# Spellings of those that transformers refuses, with the one it takes
_MEANT = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32", "fp64": "float64",
          **{f"torch.{name}": name for name in LOADABLE_DTYPES}}
_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}
_SHOWN = 3
_NOT_AN_OBJECT = ", not an object"  # (read_object's words for valid JSON of another type)


def problems(root: Path, *, model: bool, adapter: bool) -> list[ScanProblem]:
    """What in the folder ``root``'s config files stops its model loading or working: ``model`` when it holds
    weights transformers' ``from_pretrained`` reads (config.json and generation_config.json are then read),
    ``adapter`` when it holds PEFT adapter weights (adapter_config.json)."""
    found: list[ScanProblem] = []
    if adapter:
        loaded = read_object(root / ADAPTER_CONFIG)
        if isinstance(loaded, ScanProblem):
            found.append(loaded)
        elif isinstance(loaded, dict):
            found += _nonfinite(root / ADAPTER_CONFIG, loaded)
    if not model:
        return found
    config = read_object(root / CONFIG)
    if isinstance(config, ScanProblem):
        found.append(config)
    elif config is not None:
        found += _dtype(root / CONFIG, config)
        found += _nonfinite(root / CONFIG, config)
        found += configfields.model_type_problems(root / CONFIG, config)
        found += configfields.problems(root / CONFIG, config)
        found += configvalues.model_problems(root / CONFIG, config)
    generation = read_object(root / GENERATION_CONFIG)
    if isinstance(generation, ScanProblem) and _NOT_AN_OBJECT in generation.message:
        # (not JSON at all: from_pretrained passes it over and generate takes its defaults; a JSON list or string
        # is read and raises "'list' object is not a mapping")
        found.append(ScanProblem(generation.path, generation.message.replace("fails before it reads a weight",
                                 "raises on it (\"'list' object is not a mapping\")"), generation.hint, kind=CONFIG_KIND))
    if isinstance(generation, dict):
        found += _nonfinite(root / GENERATION_CONFIG, generation)
        found += configvalues.generation_problems(root / GENERATION_CONFIG, generation,
                                                  config if isinstance(config, dict) else None)
    elif generation is None and isinstance(config, dict) and _generates(config):
        # Without generation_config.json, from_pretrained builds the model's from config.json's keys
        # (GenerationConfig.from_model_config): its temperature, top_k, repetition_penalty … are generate's (an
        # adversarial round: do_sample true with temperature 0 there read CLEAN, and generate raised)
        found += configvalues.generation_problems(root / CONFIG, config, config)
    preprocessor = read_object(root / PREPROCESSOR_CONFIG)
    if isinstance(preprocessor, dict):
        found += _nonfinite(root / PREPROCESSOR_CONFIG, preprocessor) + _zero_std(root / PREPROCESSOR_CONFIG, preprocessor)
    return found


_GENERATIVE = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration", "MTModel")  # classes whose models generate


def _generates(config: dict[str, Any]) -> bool:
    """Whether config.json names a model class that generates (a causal or seq2seq LM head)."""
    names = config.get("architectures")
    return isinstance(names, list) and any(isinstance(n, str) and n.endswith(_GENERATIVE) for n in names)


def read_object(path: Path) -> dict[str, Any] | ScanProblem | None:
    """The JSON object in the config file ``path``; a NOT LOADABLE problem when it is not valid JSON or not an
    object; None when there is no such file (or it cannot be read at all: its own problem elsewhere)."""
    loader = "PEFT's from_pretrained" if path.name == ADAPTER_CONFIG else "from_pretrained"
    try:
        if not access.exists(path):
            broken = access.broken_link(path) if path.name != GENERATION_CONFIG else None  # (that one is passed over)
            if broken is None:
                return None
            # (a link farm's config whose store was removed: the weights scan healthy, and nothing loads)
            return ScanProblem(str(path), f"{broken[0]}: {loader} finds no config and fails before it reads a weight",
                               broken[1], kind=UNLOADABLE_KIND)
    except UnreadablePathError:
        return None  # the folder's listing says so
    hint = (f"copy {path.name} from the base model or from where the checkpoint was saved (a save or download cut "
            "short leaves it truncated)")
    try:
        data = read_json(path)
    except OSError:
        return None
    except ValueError as exc:
        return ScanProblem(str(path), f"is not valid JSON ({exc}): {loader} fails before it reads a weight (\"It "
                           f"looks like the config file at … is not a valid JSON file\")", hint, kind=UNLOADABLE_KIND)
    if not isinstance(data, dict):
        return ScanProblem(str(path), f"holds a JSON {_JSON_TYPES.get(type(data), 'value')}{_NOT_AN_OBJECT}: {loader} "
                           "fails before it reads a weight", hint, kind=UNLOADABLE_KIND)
    return data


def quant_method(root: Path) -> str | None:
    """The ``quant_method`` config.json's ``quantization_config`` names (``"mxfp4"``, ``"fp8"``, ``"gptq"``), if any."""
    config = read_object(root / CONFIG)
    quantization = config.get(configvalues.QUANTIZATION) if isinstance(config, dict) else None
    method = quantization.get("quant_method") if isinstance(quantization, dict) else None
    return method if isinstance(method, str) else None


def quantized(root: Path) -> bool:
    """Whether ``root``'s model is quantized, so that a quantizer loads its stored tensors its own way:
    config.json names one (``quantization_config``, or compressed-tensors' older ``compression_config``), or
    AutoGPTQ's ``quantize_config.json`` lies beside it; False without a readable config.json."""
    config = read_object(root / CONFIG)
    if not isinstance(config, dict):
        return False
    if any(config.get(key) is not None for key in (configvalues.QUANTIZATION, "compression_config")):
        return True
    try:
        return access.exists(root / "quantize_config.json")
    except UnreadablePathError:
        return False


def _dtype(path: Path, config: dict[str, Any], within: str = "") -> list[ScanProblem]:
    """config.json's dtype, and each sub-config's (``text_config``: a dict with its own ``model_type``, whose
    dtype string transformers converts the same way), where from_pretrained refuses it."""
    found = [problem for name, sub in config.items() if not within and isinstance(sub, dict) and "model_type" in sub
             for problem in _dtype(path, sub, f"{name}.")]
    decided = config_dtype(config)
    if decided is None or decided[1] is None:
        return found  # no dtype (or a dict's "" none): the weights' own, or the default
    key, value, in_dict = decided
    where = f'"{within}{key}" maps "" to' if in_dict else f'"{within}{key}" is'
    if isinstance(value, str) and value in LOADABLE_DTYPES:
        return found
    shown = json.dumps(value)[:40]
    meant = _MEANT.get(value) if isinstance(value, str) else None
    hint = (f'write "{meant}"' if meant else
            f'set "{key}" to the dtype the weights were saved in: "bfloat16", "float16" or "float32"') + \
        f' in {CONFIG} (transformers also takes {", ".join(repr(n) for n in LOADABLE_DTYPES[3:])})'
    if value == "auto":
        hint = (f'remove "{key}" (from_pretrained then takes the weights\' own dtype) or set it to the dtype they were '
                f'saved in: "bfloat16", "float16" or "float32"')
    return [*found, ScanProblem(
        str(path),
        f"{where} {shown}, which from_pretrained refuses: {_refusal(value)}; the model will not load (transformers 5.x "
        f"builds it in torch.<dtype>, and takes only {', '.join(repr(n) for n in LOADABLE_DTYPES)})",
        hint,
        kind=UNLOADABLE_KIND,
    )]


def _refusal(value: Any) -> str:
    """Why transformers refuses the dtype ``value``, as its error says it."""
    if not isinstance(value, str):
        return f"a JSON {_JSON_TYPES.get(type(value), 'value')} is no dtype name"
    if value == "auto":
        return "\"auto\" is a value for from_pretrained's dtype argument, not for config.json (\"module 'torch' has no attribute 'auto'\")"
    stored = TORCH_DTYPE_NAMES.get(value)
    if stored is None:
        return f"torch has no dtype of that name (\"module 'torch' has no attribute {value[:40]!r}\")"
    if value.startswith(("float8", "float4")):
        return (f"torch keeps no storage of {value}, so no model is built in it (\"couldn't find storage object\"); an "
                "fp8 checkpoint keeps the dtype at bfloat16 and names its quantizer in quantization_config")
    return f"torch.{value} is not a floating-point dtype (\"cannot be instantiated under dtype=torch.{value}\")"


# An infinite bound is a real setting (Mamba2's "time_step_limit": [0.0, Infinity], written bare by older
# transformers: the model loads and generates as the original); NaN never is, nor an infinite epsilon, scale or
# softcap (Gemma2's tanh(x / cap) * cap is NaN at cap = Infinity). Whole words of the key only (softmax_scale is
# no max), and an upper bound only +Infinity, a lower one only -Infinity.
_UPPER_WORDS = frozenset({"max", "maximum", "cap"})
_LOWER_WORDS = frozenset({"min", "minimum"})
_EITHER_WORDS = frozenset({"limit", "limits", "clip", "clamp", "bound", "bounds", "threshold", "range"})


def _nonfinite(path: Path, data: dict[str, Any]) -> list[ScanProblem]:
    """NaN, and Infinity outside a bound, in the config ``data`` read from ``path``: one problem naming their
    key paths."""
    found = [f"{where} is {_word(value)}" for where, value in _floats(data)
             if math.isnan(value) or (math.isinf(value) and not _bound(where, value))]
    if not found:
        return []
    if path.name == GENERATION_CONFIG:
        effect = ("generate takes its settings from these values (a temperature or repetition_penalty of NaN makes it "
                  "raise 'has to be a strictly positive float'; other keys are used as written)")
    elif path.name == PREPROCESSOR_CONFIG:
        effect = ("the feature extractor or image processor normalizes every input with these values (a mean or std of "
                  "NaN makes every input, and every output, NaN)")
    elif path.name == ADAPTER_CONFIG:
        effect = ("PEFT builds the adapter from these values as written (a lora_alpha of NaN or Infinity scales every "
                  "LoRA update by it: NaN outputs)")
    else:
        effect = ("from_pretrained builds the model from these values as written (an rms_norm_eps or a scale of NaN "
                  "makes every forward pass NaN)")
    return [ScanProblem(
        str(path),
        f"{first_few(found, _SHOWN)}: {effect}",
        f"write the values the model was trained with (the base model's {path.name} has them); JSON has no NaN or "
        "Infinity, a writer put them there from a float that had gone bad",
        kind=CONFIG_KIND,
    )]


_STD_KEYS = ("std", "image_std")  # what a processor divides every input by, after the mean is taken off


def _zero_std(path: Path, data: dict[str, Any]) -> list[ScanProblem]:
    """A processor's normalizing std of 0 (one, or a channel's): every input divided by it is ±Inf or NaN (an
    adversarial round: an audio classifier's std 0 gave logits [nan, nan, nan], and its scan passed CLEAN)."""
    if data.get("do_normalize") is False:
        return []
    zero = [key for key in _STD_KEYS if _has_zero(data.get(key))]  # (0, or under 1e-30: the quotient overflows)
    if not zero:
        return []
    return [ScanProblem(
        str(path), f"{first_few([f'{key} holds 0' for key in zero], _SHOWN)} (or a value under 1e-30): the processor "
        "divides every input by it, so every input and every output is Inf or NaN",
        f"write the std the model was trained with (the base model's {path.name} has it)", kind=CONFIG_KIND)]


_TINY_STD = 1e-30  # (a normalized input of order 1 divided by less overflows float32: logits [nan, nan, nan])


def _has_zero(value: Any) -> bool:
    if isinstance(value, list):
        return any(_has_zero(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < _TINY_STD


def _bound(where: str, value: float) -> bool:
    """Whether the key path ``where`` names a limit that the infinite ``value`` leaves open ("none")."""
    words = set(where.rsplit(".", 1)[-1].split("[", 1)[0].lower().split("_"))
    return bool(words & _EITHER_WORDS) or bool(words & (_UPPER_WORDS if value > 0 else _LOWER_WORDS))


# transformers 5.x writes NaN/Infinity as {"__float__": "NaN"} (PreTrainedConfig._encode_special_floats) and
# from_pretrained reads them back as floats
_FLOAT_TAG = "__float__"
_TAGGED = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _floats(data: Any) -> Iterator[tuple[str, float]]:
    """Every float in the JSON value ``data`` with its key path (``text_config.rope_scaling.factor``,
    ``layer_scales[3]``), transformers' tagged ones (``{"__float__": "NaN"}``) included, without recursion (a
    deep document is bounded by read_json, not by the stack)."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, float):
            yield where, value
        elif isinstance(value, dict) and len(value) == 1 and isinstance(value.get(_FLOAT_TAG), str):
            if value[_FLOAT_TAG] in _TAGGED:
                yield where, _TAGGED[value[_FLOAT_TAG]]
        elif isinstance(value, dict):
            stack += [(f"{where}.{key}" if where else str(key), item) for key, item in reversed(value.items())]
        elif isinstance(value, list):
            stack += [(f"{where}[{i}]", item) for i, item in reversed(list(enumerate(value)))]


def _word(value: float) -> str:
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


__all__ = ["ADAPTER_CONFIG", "GENERATION_CONFIG", "LOADABLE_DTYPES", "problems", "quantized", "read_object"]
