"""The stored shapes put through transformers' own loading, on the meta device: what from_pretrained refuses.

transformers 5 loads many models through conversions: Mixtral's ``experts.0.w1`` … ``experts.7.w3`` are stacked and
concatenated into one ``mlp.experts.gate_up_proj`` of ``[experts, 2 x intermediate, hidden]``, and
``save_pretrained`` writes them back as the per-expert tensors. A stored name is then never a name of the model
built from config.json, so comparing shapes by name compares nothing: a config.json without ``num_local_experts``
(8 experts built over 4 stored) or ``moe_intermediate_size`` read CLEAN while from_pretrained refused it ("size
mismatch … ignore_mismatched_sizes").

So the stored shapes, as empty tensors on the meta device (no bytes read, no memory), go through
``convert_and_load_state_dict_in_model``, the function from_pretrained itself loads with, into the model built on
the meta device: its mismatched keys and conversion errors are exactly what from_pretrained raises on. Where
this transformers has no such function (another version), nothing is said: architecture.py's comparison by name
stands alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Refusal:
    """A parameter from_pretrained refuses: the shape its stored tensors make once converted, against the shape
    the model has, or the conversion's own error (``made`` and ``wanted`` empty)."""

    name: str  # the model's parameter (``model.layers.0.mlp.experts.gate_up_proj``)
    made: tuple[int, ...]
    wanted: tuple[int, ...]
    error: str = ""


def refusals(model: Any, stored: Mapping[str, tuple[int, ...]]) -> list[Refusal] | None:
    """What from_pretrained refuses loading tensors of the ``stored`` shapes (name → shape, as saved) into
    ``model``, built on the meta device (and changed by this: its parameters become the loaded meta tensors; build
    it for this alone); None where this transformers cannot be asked (another version)."""
    try:
        import torch
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import convert_and_load_state_dict_in_model
        from transformers.modeling_utils import LoadStateDictConfig
        from transformers.utils import logging as hf_logging
    except ImportError:
        return None
    tensors = {name: torch.empty(shape, dtype=torch.float32, device="meta") for name, shape in stored.items()}
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # (its "Loading weights" bar: no business of the scan's)
    try:
        mapping: Any = get_model_conversion_mapping(model)  # (its renamings and converters, as from_pretrained's)
        config = LoadStateDictConfig(device_map={"": "meta"}, weight_mapping=mapping)
        info, _ = convert_and_load_state_dict_in_model(model, tensors, config)
        mismatched = sorted((str(name), tuple(made), tuple(wanted)) for name, made, wanted in info.mismatched_keys)
        errors = dict(info.conversion_errors)
    except Exception:  # noqa: BLE001 - another transformers' loader: the comparison by name stands alone
        return None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    found = [Refusal(name, made, wanted) for name, made, wanted in mismatched]
    # (the error's last line says it: "Error: MergeModulelist on tensors destined for …")
    found += [Refusal(str(name), (), (), _last_line(str(text))) for name, text in sorted(errors.items())]
    return found


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-2] if len(lines) > 1 and lines[-1].startswith("Error") else (lines[-1] if lines else "")


__all__ = ["Refusal", "refusals"]
