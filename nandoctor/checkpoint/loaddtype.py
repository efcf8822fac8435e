"""The dtype ``from_pretrained`` loads a checkpoint's weights in, from its config.json: the default ``--target-dtype``.

transformers 5.x's ``from_pretrained`` defaults to ``dtype="auto"``: it builds the model in ``config.dtype``
and casts every weight into it as it loads (``modeling_utils._get_dtype``), whatever dtype the file stores.
``config.dtype`` is config.json's top-level ``"dtype"``, or the older ``"torch_dtype"`` where ``"dtype"`` is
absent or null (``PreTrainedConfig.__post_init__``: "if both are provided, keep dtype"). A sub-config's own
``dtype`` (``text_config``) is never read: the top-level one (or, without one, the weights' own) is set on
every sub-config. So fp32 or bf16 weights under ``"dtype": "float16"`` load as fp16, and a finite 70000
becomes Inf; ``generate`` then dies with ``probability tensor contains either inf, nan or element < 0``.
An fp8 name there makes ``from_pretrained`` fail outright (torch has no fp8 default dtype: "couldn't find
storage object Float8_e4m3fnStorage"), so only float16 and bfloat16 overflow quietly (checked with
transformers 5.25).

A scan given no target dtype counts overflow for that dtype (:func:`implied_target`) where a stored dtype
of the weight files can overflow it (fp32/bf16 into fp16, fp32 into bf16); an explicit ``--target-dtype``
wins and ``--target-dtype none`` turns it off. :func:`annotated` says in the report where the dtype came
from and what to do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nandoctor import access
from nandoctor import verdict as verdicts
from nandoctor.checkpoint.jsonfiles import read_json
from nandoctor.checkpoint.loaders import CONFIG
from nandoctor.dtypes import DTYPES, TORCH_DTYPE_NAMES
from nandoctor.errors import NandoctorError
from nandoctor.model import ScanReport

NONE = "none"  # --target-dtype none: no overflow counts at all, config.json's dtype included
KEYS = ("dtype", "torch_dtype")  # in the order transformers prefers them
EXTRA_KEY = "load_dtype"  # the report's extra (and --json top level)
_LOADS_AS = {"F16": "fp16", "BF16": "bf16"}  # what a config dtype can quietly overflow into
_WIDER = {"fp16": '"bfloat16" or "float32"', "bf16": '"float32"'}
_SHOWN = 3  # tensors named in the note


@dataclass(frozen=True)
class LoadDtype:
    """config.json's dtype for the weights: the file, the key that decided, its value and the cast target."""

    config: str
    key: str  # "dtype" or "torch_dtype"
    value: str  # as written: "float16", "half", "bfloat16"
    target: str  # the nandoctor target dtype: "fp16" or "bf16"

    def to_json(self, checked: bool) -> dict[str, Any]:
        return {"config": self.config, "key": self.key, "value": self.value, "target_dtype": self.target,
                "checked": checked}


def config_of(checkpoint: Path) -> Path:
    """The config.json ``from_pretrained`` reads with the weights at ``checkpoint`` (a folder, or a file in one)."""
    return checkpoint / CONFIG if access.is_dir(checkpoint, refused=False) else checkpoint.parent / CONFIG


def load_dtype(checkpoint: Path) -> LoadDtype | None:
    """The narrow dtype config.json makes ``from_pretrained`` load ``checkpoint``'s weights in; None without
    one (no config.json, none readable as JSON: nothing for nandoctor to imply, and the load fails on its own)."""
    path = config_of(checkpoint)
    try:
        data = read_json(path) if access.is_file(path, refused=False) else None
    except (OSError, ValueError, NandoctorError):
        return None
    if not isinstance(data, dict):
        return None
    for key in KEYS:
        value = data.get(key)
        if value is None:  # absent or null: the next key decides
            continue
        spec = TORCH_DTYPE_NAMES.get(value) if isinstance(value, str) else None
        name = _LOADS_AS.get(spec) if spec else None
        return LoadDtype(str(path), key, value, name) if name else None
    return None


def may_overflow(checkpoint: Path, target_dtype: str) -> bool:
    """Whether a weight file ``from_pretrained`` reads at ``checkpoint`` stores a dtype that can overflow
    ``target_dtype``: read from the safetensors headers (a bf16 model whose config says bfloat16 costs no
    overflow pass); True for anything else (``.bin`` weights, an unreadable header), where the scan decides."""
    from nandoctor.kernels.targets import can_overflow, target  # (numpy: only once a config names a narrow dtype)

    tgt = target(target_dtype)
    try:
        if access.is_dir(checkpoint):
            files = [f for f in access.listing(checkpoint) if f.suffix == ".safetensors" and access.is_file(f)]
        else:
            files = [checkpoint] if checkpoint.suffix == ".safetensors" else []
        if not files:  # .bin weights (or none): their dtypes are in a pickle; count rather than guess
            return True
        from nandoctor.readers.safetensors import read_table

        stored = {dtype for file in files for dtype in read_table(file)[0].dtypes}
    except (OSError, ValueError, NandoctorError):
        return True
    return any(name not in DTYPES or can_overflow(DTYPES[name], tgt) for name in stored)


def implied_target(checkpoint: Path) -> str | None:
    """The target dtype a scan of ``checkpoint`` given none counts overflow for: config.json's, where the
    stored weights can overflow it."""
    load = load_dtype(checkpoint)
    return load.target if load is not None and may_overflow(checkpoint, load.target) else None


def annotated(report: ScanReport, checkpoint: Path, asked: str | None) -> ScanReport:
    """``report`` with config.json's load dtype (``extra["load_dtype"]``, whether the scan counted overflow
    for it) and a note saying what the cast does to these weights and what to do; unchanged where config.json
    names no narrow dtype or no stored dtype can overflow it. ``asked``: the target dtype the user gave
    (None, ``"none"`` or a name)."""
    load = load_dtype(checkpoint)
    if load is None:
        return report
    checked = verdicts.target_dtype(report) == load.target
    # (given no target dtype, the scan counted for config.json's exactly where its weights can overflow it)
    if not checked and (asked is None or not may_overflow(checkpoint, load.target)):
        return report
    extra = {**report.extra, EXTRA_KEY: load.to_json(checked)}
    return dataclasses.replace(report, notes=(*report.notes, _note(report, load, checked, asked)), extra=extra)


def _note(report: ScanReport, load: LoadDtype, checked: bool, asked: str | None) -> str:
    head = f'config.json loads these weights as {load.value} ("{load.key}" in {load.config})'
    if not checked:
        instead = "--target-dtype none" if asked == NONE else f"--target-dtype {asked} was checked instead"
        return f"{head}; not checked against {load.value}'s range ({instead})"
    count = verdicts.overflow_count(report)
    if not count:
        return f"{head}: checked against its range" + (" (--target-dtype none skips this)" if asked is None else "")
    from nandoctor.kernels.targets import target

    spec = target(load.target)
    names = [t.name for t in sorted(verdicts.overflow_tensors(report), key=lambda t: (-t.overflow, t.name))]
    where = ", ".join(names[:_SHOWN]) + (f" … ({len(names)} tensors)" if len(names) > _SHOWN else "")
    values = f"{verdicts.plural(count, 'value')} of |x| {'≥' if spec.inclusive else '>'} {spec.limit:g}"
    return (f"{head}: {values} ({spec.name}'s largest is {spec.max_finite:g}) would become {spec.becomes.capitalize()} in {where}; "
            f"{_advice(load.to_json(True))}")


def advice(report: ScanReport) -> str | None:
    """What to do about weights that overflow the dtype config.json loads them in; None when the scan did not
    count overflow for config.json's dtype."""
    load = report.extra.get(EXTRA_KEY)
    if not (isinstance(load, dict) and load.get("checked")):
        return None
    return f"{_advice(load)}: from_pretrained loads them as {load['value']}"


def _advice(load: dict[str, Any]) -> str:
    return f'fix those weights, or set "{load["key"]}" to {_WIDER[load["target_dtype"]]} in {load["config"]}'
