"""LoRA modules PeftModel.from_pretrained builds on the base model that the adapter file holds nothing for.

PEFT builds LoRA on every module of the base model that adapter_config.json's ``target_modules`` matches (a name or
dotted tail, a regex matched whole, ``all-linear``; within ``layers_to_transform``, less ``exclude_modules``), then
loads the stored tensors, and of the modules it finds nothing for it only warns ("Found missing adapter keys"):
they keep LoRA's initial values (an adversarial round's adapter file that lost one layer's ``v_proj``, or every
``v_proj``, loaded 0.4 off the trained adapter's logits and read CLEAN). Which modules the base has, only the base
says: Gemma 3n's KV-sharing layers have no ``k_proj`` or ``v_proj``, T5 has its ``relative_attention_bias`` in its
first block alone, a hybrid model attends in some layers only. So where the stored names leave a gap
(:func:`_gapped`), the base model adapter_config.json names is built on the meta device (its config.json from a
local folder or the Hugging Face cache: never downloaded; only classes transformers ships), PEFT's own LoRA is put
on it, and meta tensors of the stored shapes go through PEFT's own loading (``set_peft_model_state_dict``): the
LoRA parameters it leaves missing are the finding. Without such a base, or without peft, transformers or torch,
nothing is said. Checked with peft 0.21 and transformers 5.25 (tests/test_adapter_keys.py).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nandoctor import access
from nandoctor.checkpoint import buildvalues, hubcache, loadconfig
from nandoctor.checkpoint.adapterkeys import PREFIX
from nandoctor.errors import NandoctorError
from nandoctor.model import ScanProblem
from nandoctor.verdict import UNLOADABLE_KIND
from nandoctor.wording import first_few

_LORA_MODULE = re.compile(r"^(?P<module>.+)\.lora_(?:embedding_)?[AB](?:\.[^.]+)*$")
_NUMBER = re.compile(r"(?:^|(?<=\.))\d+(?=\.|$)")  # a numbered module's number: a layer's, an expert's
# a LoRA parameter of the live model PEFT loads into (adapter "default"), as PeftModel.load_adapter counts the missing
_LIVE = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.(?:lora_(?:embedding_)?[AB]|lora_magnitude_vector)\.default(?:\.[^.]+)?$")
_STATUS = logging.getLogger("nandoctor.status")  # (the CLI shows its INFO records on its progress bar)


def problems(root: Path, config: dict[str, Any], names: Sequence[str],
             shapes: Sequence[tuple[int, ...]]) -> list[ScanProblem]:
    """NOT LOADABLE where PEFT builds LoRA modules on the base model that the stored tensors (``names``) hold nothing
    for; nothing where the stored names leave no gap, for another type of adapter, or without a local base."""
    if config.get("peft_type", "LORA") != "LORA":
        return []
    modules = sorted({match["module"].removeprefix(PREFIX) for name in names if (match := _LORA_MODULE.match(name))})
    if not modules or not _gapped(config.get("target_modules"), modules):
        return []
    named = config.get("base_model_name_or_path")
    base = local_base(named, config.get("revision"))
    if base is None:
        return []
    missing = _left_missing(root, base, names, shapes)
    if not missing:
        return []
    return [ScanProblem(
        str(root), f"{len(missing)} module(s) of the base model {named!r} that adapter_config.json puts LoRA on "
        f"hold no stored LoRA tensors ({first_few(missing, 3)}): PeftModel.from_pretrained builds LoRA on them and only "
        "warns (\"Found missing adapter keys\"); they keep LoRA's initial values (by PEFT's default a lora_B of zero: "
        "not adapted at all), so the model is not this adapter",
        "use the adapter_model file saved with this adapter_config.json, or save the adapter again with "
        "save_pretrained; modules left out on purpose belong in its exclude_modules", kind=UNLOADABLE_KIND)]


def _gapped(targets: Any, modules: list[str]) -> bool:
    """Whether the stored LoRA ``modules`` (names without PEFT's prefix) may lack some PEFT builds: a
    ``target_modules`` entry none of them is or ends with, or numbered modules with a hole: a module family (its
    numbers as ``*``) not held by every layer its stack's other families hold, or not by every layer and expert
    from the first up to its last (``layers_to_transform``, a hybrid model's attention layers: the build decides)."""
    if isinstance(targets, list) and any(
            isinstance(t, str) and not any(m == t or m.endswith(f".{t}") for m in modules) for t in targets):
        return True
    families: dict[str, set[tuple[int, ...]]] = {}
    for module in modules:
        numbers = tuple(int(n) for n in _NUMBER.findall(module))
        if numbers:
            families.setdefault(_NUMBER.sub("*", module), set()).add(numbers)
    layers: dict[str, set[int]] = {}  # a stack (the name up to its first number) → the layers any family holds
    for family, held in families.items():
        layers.setdefault(family.split("*", 1)[0], set()).update(numbers[0] for numbers in held)
    for family, held in families.items():
        each = [set(position) for position in zip(*held)]
        if (each[0] != layers[family.split("*", 1)[0]] or len(held) != math.prod(len(s) for s in each)
                or any(s != set(range(max(s) + 1)) for s in each)):
            return True
    return False


def local_base(named: Any, revision: Any) -> Path | None:
    """The folder holding the config.json of the base model ``base_model_name_or_path`` names: a local folder, or a
    repo id's snapshot already in the Hugging Face cache (never downloaded); None elsewhere."""
    if not isinstance(named, str) or not named or len(named) > 4096:
        return None
    try:
        folder = Path(named)  # (no ~: neither transformers nor PEFT expands it, a trial's "~/base" read as scanned)
        if not access.is_dir(folder) and hubcache.looks_like_repo_id(named):
            repo, pinned = hubcache.split_revision(named)  # (org/name@rev, else the config's own revision)
            hit = hubcache.find_hf(repo, pinned or (revision if isinstance(revision, str) and revision else None))
            folder = hit.path if hit is not None else folder
        return folder if access.is_file(folder / "config.json", refused=False) else None
    except (NandoctorError, OSError, ValueError):  # (unreadable, a revision not cached: nothing to build from)
        return None


def _left_missing(adapter: Path, base: Path, names: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> list[str]:
    """The modules (names without PEFT's prefix) whose LoRA parameters PEFT's loading leaves missing when the base
    model in ``base`` gets the adapter in ``adapter`` and meta tensors of the stored ``names`` and ``shapes``; none
    where it cannot tell (no peft, a base it cannot build, stored LoRA tensors it would not take: the model built
    is then not the one the adapter was trained on, and the other checks judge the names)."""
    config = loadconfig.read_object(base / "config.json")
    if not isinstance(config, dict) or buildvalues.too_big(config) is not None:
        return []
    _STATUS.info("building the base model %s with the adapter on it, to check the modules PEFT adapts (a few seconds)",
                 base)
    try:
        import torch
        from peft import LoraConfig
        from peft.auto import MODEL_TYPE_TO_PEFT_MODEL_MAPPING
        from peft.peft_model import PeftModel
        from peft.utils.save_and_load import set_peft_model_state_dict
        from transformers.utils import logging as hf_logging
    except ImportError:
        return []
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (PEFT's and the model's own warnings: the result is read instead)
            lora = LoraConfig.from_pretrained(str(adapter))
            lora.init_lora_weights = True  # (PiSSA, LoftQ, EVA start from the base's values, which meta has not)
            lora.inference_mode = True
            model = _base_model(base, lora.task_type)
            if model is None:
                return []
            wrapper = MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(lora.task_type, PeftModel)
            adapted = wrapper(model, lora, low_cpu_mem_usage=True)
            stored = {name: torch.empty(shape, device="meta") for name, shape in zip(names, shapes)}
            loaded: Any = set_peft_model_state_dict(adapted, stored, low_cpu_mem_usage=True)
    except Exception:  # noqa: BLE001 - (a config PEFT refuses, a size mismatch: the other checks' to say)
        return []
    finally:
        hf_logging.set_verbosity(verbosity)
    if any(_LORA_MODULE.match(name) for name in loaded.unexpected_keys):
        return []
    return sorted({match["module"] for key in loaded.missing_keys if (match := _LIVE.match(key))})


def _base_model(base: Path, task: Any) -> Any:
    """The model of ``base``'s config.json on the meta device, of the class PEFT's AutoPeftModel loads for the
    adapter's ``task_type`` (AutoModelForCausalLM for CAUSAL_LM …), else of the class its ``architectures``
    names; None where transformers builds neither."""
    import torch
    import transformers
    from peft.auto import MODEL_TYPE_TO_PEFT_MODEL_MAPPING, _BaseAutoPeftModel

    config = transformers.AutoConfig.from_pretrained(str(base), trust_remote_code=False, local_files_only=True)
    wanted = MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(task)
    autos = [auto._target_class for auto in _BaseAutoPeftModel.__subclasses__()
             if wanted is not None and getattr(auto, "_target_peft_class", None) is wanted]
    named = [cls for n in (getattr(config, "architectures", None) or [])[:1]
             if isinstance(n, str) and (cls := getattr(transformers, n, None)) is not None]
    with torch.device("meta"):
        for cls in [*autos, *named]:
            try:
                if hasattr(cls, "from_config"):
                    return cls.from_config(config)
                if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
                    return cls(config)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # (an Auto class with no entry for this model type: the next)
    return None


__all__ = ["problems"]
