"""PEFT LoRA adapters whose tensors' ranks adapter_config.json contradicts.

``PeftModel.from_pretrained`` builds each LoRA module with the rank adapter_config.json gives (``r``, or the
``rank_pattern`` entry whose key matches the module's name, as PEFT matches it: the whole name or its dotted
tail), then loads the stored ``lora_A`` (rank rows) and ``lora_B`` (rank columns) into it: a stored rank of
another size is a "size mismatch" and the adapter does not load (an ``r`` edited after training, an adapter
paired with another run's config). ``lora_A`` alone is compared: a grouped convolution's ``lora_B`` holds
rank / groups columns, and LoRA on a MoE's fused expert parameters (``target_parameters``) holds the rank once
per expert. Checked with peft 0.21 (tests/test_adapters.py).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nandoctor.checkpoint.configvalues import positive
from nandoctor.model import FLOAT32_MAX, ScanProblem
from nandoctor.verdict import CONFIG_KIND, UNLOADABLE_KIND
from nandoctor.wording import first_few

# (the module's name, which of A/B, and the dimension that is the rank: A is [r, in, …], B is [out, r, …])
_LORA = re.compile(r"^(?P<module>.+)\.lora_(?:embedding_)?(?P<part>A|B)(?:\.[^.]+)?(?:\.weight)?$")
_PREFIX = "base_model.model."
# a quantified group that itself holds a quantifier ((a+)+, ([\w.]+)*): catastrophic backtracking
_NESTED_QUANTIFIER = re.compile(r"\([^()]*[*+}][^()]*\)\s*[*+{]")


def pattern_lookup(patterns: Any) -> Callable[[str], Any] | None:
    """PEFT's ``get_pattern_key`` as a lookup: a module's name → the value of the first key (in the config's order)
    that matches it, as a regex against the whole name or a dotted tail of it (None where none does); None where the
    keys cannot be tried: not a mapping, a key that can backtrack for minutes on one name (PEFT would hang on it,
    nandoctor does not), or one Python's re refuses (PEFT fails its own way: nothing to compare with)."""
    if not isinstance(patterns, dict):
        return None
    keys = [key for key in patterns if isinstance(key, str)]
    if any(_NESTED_QUANTIFIER.search(key) for key in keys):
        return None
    try:
        compiled = [(re.compile(rf"(?:.*\.)?(?:{key})"), patterns[key]) for key in keys]
    except re.error:
        return None
    return lambda module: next((value for pattern, value in compiled if pattern.fullmatch(module)), None)


def rank_problems(root: Path, config: dict[str, Any], names: Sequence[str],
                  shapes: Sequence[tuple[int, ...]]) -> list[ScanProblem]:
    """NOT LOADABLE when a stored LoRA tensor's rank is not the one adapter_config.json (``config``) gives its
    module; nothing for another kind of adapter or a config without a usable ``r``."""
    if config.get("peft_type", "LORA") != "LORA":
        return []
    rank = positive(config.get("r"))
    if rank is None:
        return []
    pattern_rank = pattern_lookup(config.get("rank_pattern") or {})
    if pattern_rank is None:
        return []
    # LoRA on parameters (target_parameters: a MoE's fused experts, "mlp.experts.gate_up_proj") stores the rank
    # once per expert, under the parameters' module (…mlp.experts, …experts.base_layer)
    per_expert = _parameter_modules(config)
    wrong: list[str] = []
    for name, shape in zip(names, shapes):
        match = _LORA.match(name)
        # (lora_A's rows are the rank; a Linear's lora_B's columns too: a transposed one was CLEAN; a grouped
        # convolution's lora_B's columns are rank / groups, so only 2-D ones are compared)
        # (BD-LoRA's block-diagonal lora_B holds rank / blocks columns)
        if match is None or len(shape) < 2 or (match["part"] != "A" and (len(shape) != 2 or config.get("use_bdlora"))):
            continue
        module = match["module"].removeprefix(_PREFIX)
        given = pattern_rank(module)
        expected = given if isinstance(given, int) and not isinstance(given, bool) else rank
        stored = shape[0] if match["part"] == "A" else shape[1]
        if stored != expected and not (_holds_parameters(module, per_expert) and stored % expected == 0):
            wrong.append(f"{name} has rank {stored}, adapter_config.json gives its module {expected}")
    if not wrong:
        return []
    more = f" (and {len(wrong) - 1} more tensor(s))" if len(wrong) > 1 else ""
    return [ScanProblem(
        str(root), f"{wrong[0]}{more}: PEFT builds each LoRA module with the config's rank and refuses the stored "
        "weights (size mismatch), so the adapter does not load",
        "use the adapter_config.json saved with these weights (its r and rank_pattern), or the weights saved with "
        "this config", kind=UNLOADABLE_KIND)]


def is_lora(name: str) -> bool:
    """Whether ``name`` is a LoRA tensor (``….lora_A.weight``, ``….lora_embedding_B``)."""
    return _LORA.match(name) is not None



def _update_scale(config: dict[str, Any]) -> float | None:
    """The factor PEFT multiplies each LoRA update by (``lora_alpha / r``, ``/ sqrt(r)`` with ``use_rslora``), a
    Python float times float32 activations; None where the config does not give both as finite numbers."""
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not (isinstance(rank, (int, float)) and isinstance(alpha, (int, float))) or isinstance(rank, bool) \
            or isinstance(alpha, bool) or rank <= 0:
        return None
    if isinstance(alpha, float) and not math.isfinite(alpha):
        return None  # (NaN and Infinity are loadconfig.py's: said once)
    try:
        return float(alpha) / (math.sqrt(rank) if config.get("use_rslora") else float(rank))
    except OverflowError:  # (an integer alpha too large for a float)
        return math.inf


def _patterned_overflow(config: dict[str, Any], modules: Sequence[str]) -> str:
    """The first module of the stored LoRA tensors (``modules``) whose ``alpha_pattern`` alpha over its rank
    (``rank_pattern``'s, else ``r``), each taken as PEFT takes it (:func:`pattern_lookup`: the first key that
    matches), scales its update beyond float32's range, in words; "" where none."""
    alphas = pattern_lookup(config.get("alpha_pattern") or {})
    ranks = pattern_lookup(config.get("rank_pattern") or {}) or (lambda module: None)
    if alphas is None:
        return ""
    for module in modules:
        alpha = alphas(module)
        if alpha is None:
            continue
        given = ranks(module)
        rank = given if given is not None else config.get("r")
        scale = _update_scale({**config, "r": rank, "lora_alpha": alpha})
        if scale is not None and abs(scale) > FLOAT32_MAX:
            return f"{module} (alpha {alpha!r} over r {rank!r}: {scale:.3g})"
    return ""


# PEFT 0.21's adapter types (PeftType); a type outside them is asked of the installed PEFT (a newer one may know it)
_PEFT_TYPES = frozenset({
    "ADALORA", "ADAMSS", "ADAPTION_PROMPT", "BEFT", "BOFT", "C3A", "CARTRIDGE", "CPT", "DEFT", "DELORA", "FOURIERFT",
    "FROD", "GLORA", "GRALORA", "HIRA", "HRA", "IA3", "LILY", "LN_TUNING", "LOHA", "LOKR", "LORA", "MISS",
    "MULTITASK_PROMPT_TUNING", "OFT", "OSF", "PEANUT", "POLY", "PREFIX_TUNING", "PROMPT_TUNING", "PSOFT", "PVERA",
    "P_TUNING", "RANDLORA", "ROAD", "SHADOW", "SHIRA", "SUPERTUNING", "TINYLORA", "TRAINABLE_TOKENS", "UNILORA",
    "VBLORA", "VERA", "WAVEFT", "XLORA"})


def _known_peft_type(kind: Any) -> bool:
    """Whether PEFT loads an adapter of type ``kind``: one of its types, or, for another string, one the installed PEFT
    has (none installed: not judged)."""
    if kind in _PEFT_TYPES:
        return True
    if not isinstance(kind, str):
        return False
    try:
        from peft import PeftType  # (only for a type outside the list: a newer PEFT's)
    except Exception:  # noqa: BLE001  (not installed, or broken: nothing is said)
        return True
    return kind in PeftType.__members__


def config_problems(root: Path, config: dict[str, Any], names: Sequence[str]) -> list[ScanProblem]:
    """A LoRA adapter_config.json (``config``) that does not make these weights (``names``) the adapter: an ``r`` that
    is no positive integer (PEFT raises), a ``lora_alpha`` of 0 (every update scaled to nothing), or
    ``target_modules`` that match none of the modules the stored LoRA tensors belong to, or not all of them (PEFT
    builds LoRA on the modules the config names and drops the stored tensors of the others: a trial's adapter loaded
    as the bare base model, logits equal to the last digit). PEFT's other filters (``layers_to_transform``,
    ``exclude_modules``) and ``all-linear`` are not reproduced: nothing is said there. A ``peft_type`` PEFT does not
    know (a KeyError as it loads: an adversarial round's "LORAX" read CLEAN) is BAD CONFIG whatever the type."""
    path = str(root / "adapter_config.json")
    kind = config.get("peft_type", "LORA")
    if not _known_peft_type(kind):
        return [ScanProblem(path, f"its peft_type is {json.dumps(kind)[:40]}, which PEFT does not know: "
                            "PeftModel.from_pretrained raises (KeyError) and the adapter does not load",
                            "use the adapter_config.json saved with these weights (peft_type \"LORA\" for a LoRA)",
                            kind=CONFIG_KIND)]
    if kind != "LORA":
        return []
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if "r" in config and not config.get("rank_pattern") and (not isinstance(rank, int) or isinstance(rank, bool)
                                                              or rank <= 0):
        return [ScanProblem(path, f"its r is {rank!r}: PEFT needs a positive integer and refuses the config",
                            "use the adapter_config.json saved with these weights", kind=CONFIG_KIND)]
    # (an alpha_pattern gives modules their own alpha; DoRA's magnitude vectors change the model whatever alpha is)
    if (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha == 0
            and not config.get("alpha_pattern") and not config.get("use_dora") and not config.get("modules_to_save")):
        return [ScanProblem(path, "its lora_alpha is 0: PEFT scales every LoRA update by lora_alpha / r, so the "
                            "adapted model is the bare base model", "use the adapter_config.json saved with these "
                            "weights", kind=CONFIG_KIND)]
    scale = _update_scale(config)
    if scale is not None and abs(scale) > FLOAT32_MAX:
        return [ScanProblem(path, f"its lora_alpha {alpha!r} over r {rank!r} scales every LoRA update by {scale:.3g}, "
                            "beyond float32's largest value: every adapted layer's output is Inf, the logits NaN",
                            "use the adapter_config.json saved with these weights (lora_alpha is usually r or 2 r)",
                            kind=CONFIG_KIND)]
    modules = sorted({match["module"].removeprefix(_PREFIX) for name in names if (match := _LORA.match(name))})
    patterned = _patterned_overflow(config, modules)
    if patterned:
        return [ScanProblem(path, f"its alpha_pattern scales the LoRA update of {patterned} beyond float32's largest "
                            "value: those layers' outputs are Inf, the logits NaN", "use the adapter_config.json saved "
                            "with these weights (lora_alpha is usually r or 2 r)", kind=CONFIG_KIND)]
    if any(config.get(key) for key in ("layers_to_transform", "exclude_modules", "layers_pattern")):
        return []
    targets = config.get("target_modules")
    if isinstance(targets, str):
        if targets.lower() == "all-linear" or _NESTED_QUANTIFIER.search(targets):
            return []
        try:
            pattern = re.compile(targets)
        except re.error:
            return []

        def targeted(module: str) -> bool:
            return pattern.fullmatch(module) is not None
    elif isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets):
        def targeted(module: str) -> bool:  # (PEFT: the name itself, or a dotted tail of it)
            return any(module == t or module.endswith(f".{t}") for t in targets)
    else:
        return []
    per_expert = _parameter_modules(config)
    # (LoRA on an nn.MultiheadAttention targets the module and stores its out_proj's under mha.base_layer.out_proj)
    dropped = [m for m in modules if not targeted(m.split(".base_layer")[0]) and not _holds_parameters(m, per_expert)]
    if not dropped:
        return []
    how = "none of the" if len(dropped) == len(modules) else f"{len(dropped)} of the {len(modules)}"
    return [ScanProblem(
        path, f"its target_modules ({first_few([str(t) for t in targets] if isinstance(targets, list) else [targets], 4)}) "
        f"match {how} modules the stored LoRA weights belong to ({first_few(dropped, 3)}): PEFT builds LoRA on the "
        "modules the config names and drops the stored weights of the others, so the model is not this adapter",
        "use the adapter_config.json saved with these weights (its target_modules)", kind=UNLOADABLE_KIND)]


def _holds_parameters(module: str, targets: set[str]) -> bool:
    """Whether ``module`` (``base_layer`` wrappers aside) may be the module of a targeted parameter: one named by a
    dotted ``target_parameters`` entry, or any module where an entry is a bare parameter name (peft 0.21 writes
    ``['down_proj', 'gate_up_proj']`` for a transformers 5 MoE's experts: which module holds them only the model
    knows; a review: every such adapter was NOT LOADABLE)."""
    if "" in targets:
        return True
    bare = module.replace(".base_layer", "")
    return any(bare == target or bare.endswith(f".{target}") for target in targets)


def _parameter_modules(config: dict[str, Any]) -> set[str]:
    """The modules ``target_parameters`` names (``mlp.experts`` of ``mlp.experts.gate_up_proj``); ``""`` where an
    entry is a bare parameter name, held by modules the config does not name."""
    targets = config.get("target_parameters")
    if not isinstance(targets, list):
        return set()
    return {t.rsplit(".", 1)[0] if "." in t else "" for t in targets if isinstance(t, str)}


__all__ = ["config_problems", "is_lora", "rank_problems"]
