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
transformers 5.25). A dict (``{"": "float16"}``, per sub-config) loads everything in its ``""`` entry.
Without a dtype in config.json, ``_get_dtype`` takes a sharded index's ``metadata.dtype``, else the dtype of
the first floating tensor (fp8/fp4 skipped) of the first weight file in name order (``safe_open().keys()``
is sorted; shards sorted by name; a ``.bin`` file's in pickle order, torch.load's dict): one fp16
``lm_head.weight`` in an fp32 safetensors file loads every weight as fp16.

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
from nandoctor.dtypes import CAST_INTEGERS, DTYPES, TORCH_DTYPE_NAMES
from nandoctor.errors import NandoctorError
from nandoctor.model import ScanReport

NONE = "none"  # --target-dtype none: no overflow counts at all, config.json's dtype included
KEYS = ("dtype", "torch_dtype")  # in the order transformers prefers them
EXTRA_KEY = "load_dtype"  # the report's extra (and --json top level)
_LOADS_AS = {"F16": "fp16", "BF16": "bf16"}  # what a config dtype can quietly overflow into
_WIDER = {"fp16": '"bfloat16" or "float32"', "bf16": '"float32"'}
_SHOWN = 3  # tensors named in the note
_FLOATING = ("F64", "F32", "F16", "BF16")  # torch's is_floating_point, less fp8/fp4 (get_state_dict_dtype skips them)


@dataclass(frozen=True)
class LoadDtype:
    """The dtype ``from_pretrained`` casts the weights to: config.json, the key that decided (None when
    config.json names none and the weights decide: ``source``), its value and the cast target."""

    config: str
    key: str | None  # "dtype" or "torch_dtype"; None: not from config.json
    value: str  # as written: "float16", "half", "bfloat16"
    target: str  # the nandoctor target dtype: "fp16" or "bf16"
    source: str = "config"  # "config", "index" (a sharded index's metadata.dtype) or "first_tensor"
    where: str = ""  # for "index"/"first_tensor": the index file, or the tensor and its file

    def to_json(self, checked: bool) -> dict[str, Any]:
        return {"config": self.config, "key": self.key, "value": self.value, "target_dtype": self.target,
                "checked": checked, "source": self.source, **({"from": self.where} if self.where else {})}

    def said(self) -> str:
        """Where the dtype came from, in words."""
        if self.source == "config":
            return f'"{self.key}" in {self.config}'
        return f"config.json names no dtype, so transformers takes that of {self.where}"


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
    decided = config_dtype(data)
    if decided is None:
        return _from_the_weights(path.parent, str(path))
    key, value, _ = decided
    name = _narrow(value)
    return LoadDtype(str(path), key, value, name) if name and isinstance(value, str) else None


def config_dtype(config: dict[str, Any]) -> tuple[str, Any, bool] | None:
    """(the key that decides, its value, whether that came from a dict's ``""`` entry) of a config's dtype as
    transformers reads it: ``"dtype"``, else ``"torch_dtype"`` where ``"dtype"`` is absent or null; a dict (per
    sub-config) loads every module in its ``""`` entry (None there: the default dtype). None: no dtype named."""
    key = next((k for k in KEYS if config.get(k) is not None), None)
    if key is None:
        return None
    value = config[key]
    return (key, value.get(""), True) if isinstance(value, dict) else (key, value, False)


def _narrow(value: Any) -> str | None:
    """The nandoctor target a torch dtype name (``"float16"``) makes weights load as, when it can overflow."""
    spec = TORCH_DTYPE_NAMES.get(value) if isinstance(value, str) else None
    return _LOADS_AS.get(spec) if spec else None


def _from_the_weights(folder: Path, config: str) -> LoadDtype | None:
    """config.json names no dtype: a sharded index's ``metadata.dtype`` (safetensors' or ``.bin``'s: transformers
    reads the one of the files it loads), else the first floating tensor of the first weight file from_pretrained
    reads (transformers' ``get_state_dict_dtype``): in name order in a safetensors file, in pickle order in a
    ``.bin`` (torch.load's dict; an adversarial round: an fp16 first tensor made the whole model fp16, unsaid)."""
    from nandoctor.checkpoint.layout import read_index

    try:
        for single, index_name in (("model.safetensors", "model.safetensors.index.json"),
                                   ("pytorch_model.bin", "pytorch_model.bin.index.json")):
            if access.is_file(folder / single, refused=False):
                return _first_floating(folder / single, config)
            index_path = folder / index_name
            if not access.is_file(index_path, refused=False):
                continue
            meta = read_json(index_path).get("metadata")
            value = meta.get("dtype") if isinstance(meta, dict) else None
            if value is not None:
                name = _narrow(value)
                return LoadDtype(config, None, value, name, "index", index_path.name) if name else None
            shards = sorted(set(read_index(index_path).weight_map.values()))
            return _first_floating(folder / shards[0], config) if shards else None
    except (OSError, ValueError, AttributeError, NandoctorError):
        return None
    return None


def _first_floating(first: Path, config: str) -> LoadDtype | None:
    """The dtype of the first floating tensor of the weight file ``first`` (fp8/fp4 skipped), if a narrow one."""
    if first.suffix == ".safetensors":
        from nandoctor.readers.safetensors import read_table

        table = read_table(first)[0]
        floats = sorted((n, d) for n, d in zip(table.names, table.dtypes) if d in _FLOATING)
    else:
        from nandoctor.readers import read_file

        # (defer_crcs: the pickle alone, not a pass over the storages for their CRC-32s)
        floats = [(r.name, r.dtype) for r in read_file(first, defer_crcs=True).refs if r.dtype in _FLOATING]
    if not floats:
        return None
    tensor, dtype = floats[0]
    name = _LOADS_AS.get(dtype)
    value = {"F16": "float16", "BF16": "bfloat16"}.get(dtype, "")
    return LoadDtype(config, None, value, name, "first_tensor", f"the first floating tensor ({tensor} in {first.name})") if name else None


def may_overflow(checkpoint: Path, target_dtype: str) -> bool:
    """Whether a weight file ``from_pretrained`` reads at ``checkpoint`` stores a dtype that can overflow
    ``target_dtype``: read from the safetensors headers (a bf16 model whose config says bfloat16 costs no
    overflow pass); True for anything else (``.bin`` weights, an unreadable header), where the scan decides."""
    from nandoctor.kernels.targets import target  # (numpy: only once a config names a narrow dtype)

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
    return _overflowable(stored, tgt)


def _overflowable(stored: set[str], tgt: Any) -> bool:
    """Whether any of the ``stored`` dtypes can overflow the target ``tgt`` when cast (an integer weight is cast to
    the model's dtype too: checkpoint/loadability.cast_to_float)."""
    from nandoctor.kernels.targets import can_overflow

    return any(name not in DTYPES or can_overflow(DTYPES[name], tgt) or name in CAST_INTEGERS for name in stored)


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
    if asked is None and verdicts.target_dtype(report) == load.target and not _scanned_overflowable(report, load.target):
        # (.bin weights: their dtypes were unknown before the scan read them; all bf16 under a bf16 config, no
        # cast can overflow: as for safetensors, nothing to count and nothing to say)
        return verdicts.judged(dataclasses.replace(report, extra={k: v for k, v in report.extra.items()
                                                                  if k != "target_dtype"}),
                               report.judgement.fail_on if report.judgement is not None else None)
    checked = verdicts.target_dtype(report) == load.target
    # (given no target dtype, the scan counted for config.json's exactly where its weights can overflow it)
    if not checked and (asked is None or not may_overflow(checkpoint, load.target)):
        return report
    extra = {**report.extra, EXTRA_KEY: load.to_json(checked)}
    return dataclasses.replace(report, notes=(*report.notes, _note(report, load, checked, asked)), extra=extra)


def _scanned_overflowable(report: ScanReport, target_dtype: str) -> bool:
    """Whether a tensor the cast touches (a weight or buffer) is stored, as the scan read it, in a dtype that can
    overflow ``target_dtype``."""
    from nandoctor.kernels.targets import target

    refs = report.tensors.refs
    stored = {dtype for dtype, role in zip(refs.dtypes, refs.roles) if role in verdicts.CAST_ROLES}
    return _overflowable(stored, target(target_dtype))


def _note(report: ScanReport, load: LoadDtype, checked: bool, asked: str | None) -> str:
    head = (f'config.json loads these weights as {load.value} ("{load.key}" in {load.config})' if load.source == "config"
            else f"from_pretrained loads these weights as {load.value} ({load.said()})")
    if not checked:
        instead = "--target-dtype none" if asked == NONE else f"--target-dtype {asked} was checked instead"
        return f"{head}; not checked against {load.value}'s range ({instead})"
    count = verdicts.overflow_count(report)
    if not count:
        ceiling = " and fp16's exploded ceiling (|w| > 2^14, as for weights stored in fp16)" if load.target == "fp16" else ""
        return f"{head}: checked against its range{ceiling}" + (" (--target-dtype none skips this)" if asked is None else "")
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
    return f"fix those weights, or {wider(load)}"


def wider(load: dict[str, Any]) -> str:
    """How to load the weights in a dtype that holds them (``load``: the report's ``load_dtype``)."""
    return f'set "{load.get("key") or "dtype"}" to {_WIDER[load["target_dtype"]]} in {load["config"]}'
