"""Writes DeepSpeed ZeRO checkpoint folders laid out as DeepSpeed 0.19's writer lays them, with NaN/Inf planted.

The partitioning follows DeepSpeed's *writer* (``stage_1_and_2.py``:
``flatten_dense_tensors_aligned`` pads each group to a multiple of ``2 * world``
and saves each rank's partition without its tail padding, recorded in
``group_paddings``; ``stage3.py``: each parameter padded to a multiple of
``world`` and split, a rank's shares concatenated), not nandoctor's reader, and
the dictionaries carry DeepSpeed's keys and types (``ZeroStageEnum`` pickled
under its DeepSpeed name through a stand-in module), so
``deepspeed.utils.zero_to_fp32`` reads the folder (tests/test_zero.py uses it
as the oracle where deepspeed is installed). Checked against folders written
by ``deepspeed.initialize(...).save_checkpoint`` on 2 gloo ranks.
"""

from __future__ import annotations

import contextlib
import enum
import math
import sys
import types
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import torch

# Two parameter groups (weights, biases); sizes chosen so that parameters straddle ranks.
GROUPS = [
    OrderedDict([("model.layers.0.mlp.weight", (3, 5)), ("model.layers.1.mlp.weight", (4, 3)), ("lm_head.weight", (2, 4))]),
    OrderedDict([("model.layers.0.mlp.bias", (3,)), ("model.layers.1.mlp.bias", (5,))]),
]
# Planted in the fp32 master weights: name -> [(coords, value)]
PLANTED = {
    "model.layers.1.mlp.weight": [((0, 1), float("nan")), ((3, 2), float("nan"))],
    "model.layers.1.mlp.bias": [((4,), float("inf"))],
}
# Planted in Adam's exp_avg_sq
PLANTED_STATE = {"lm_head.weight": [((1, 3), float("-inf"))]}

_ENUM_MODULE = "deepspeed.runtime.zero.config"


class _StandInStage(enum.IntEnum):
    disabled = 0
    optimizer_states = 1
    gradients = 2
    weights = 3


@contextlib.contextmanager
def stage_enum() -> Iterator[type[enum.IntEnum]]:
    """DeepSpeed's ``ZeroStageEnum`` where deepspeed is installed; otherwise a stand-in that pickles under
    DeepSpeed's name, through stub modules put in sys.modules while the files are written and taken out after: left
    there, a stub ``deepspeed`` without a ``__spec__`` made transformers' import check raise in every later test
    ("deepspeed.__spec__ is None") on a machine without deepspeed."""
    try:
        from deepspeed.runtime.zero.config import ZeroStageEnum  # type: ignore[import-not-found]

        yield ZeroStageEnum
        return
    except ImportError:
        pass
    _StandInStage.__module__, _StandInStage.__qualname__ = _ENUM_MODULE, "ZeroStageEnum"
    parts = _ENUM_MODULE.split(".")
    added = [name for name in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if name not in sys.modules]
    for name in added:
        sys.modules[name] = types.ModuleType(name)
    sys.modules[_ENUM_MODULE].ZeroStageEnum = _StandInStage  # type: ignore[attr-defined]
    try:
        yield _StandInStage
    finally:
        for name in added:
            sys.modules.pop(name, None)


def full_params(planted: dict) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out = {}
    for group in GROUPS:
        for name, shape in group.items():
            t = torch.randn(shape, generator=gen)
            for coords, value in planted.get(name, []):
                t[coords] = value
            out[name] = t
    return out


def _zero2_partitions(flat: torch.Tensor, world: int, keep_padding: bool = False) -> tuple[list[torch.Tensor], list[int]]:
    """Each rank's partition of ``flat`` and its tail padding; ``keep_padding``: the partitions as the
    optimizer's moments are saved (DeepSpeed strips the padding from the fp32 partition it saves, not from
    exp_avg/exp_avg_sq, which were made for the padded one)."""
    align = 2 * world
    padded = torch.cat([flat, flat.new_zeros((-flat.numel()) % align)])
    size = padded.numel() // world
    parts, paddings = [], []
    for r in range(world):
        left = r * size
        padding = size if flat.numel() <= left else max(0, left + size - flat.numel())
        parts.append(padded[left:left + size - (0 if keep_padding else padding)].clone())
        paddings.append(padding)
    return parts, paddings


def _zero3_partitions(tensors: list[torch.Tensor], world: int) -> list[torch.Tensor]:
    shares: list[list[torch.Tensor]] = [[] for _ in range(world)]
    for t in tensors:
        flat = t.reshape(-1)
        share = math.ceil(flat.numel() / world)
        padded = torch.cat([flat, flat.new_zeros(share * world - flat.numel())])
        for r in range(world):
            shares[r].append(padded[r * share:(r + 1) * share])
    return [torch.cat(s) for s in shares]


def write(folder: Path, stage: int, world: int, *, pad_rank: int | None = None, padded_moments: bool = False,
          planted: dict | None = None, planted_state: dict | None = None) -> Path:
    """``folder/global_step1`` of a ZeRO-``stage`` run over ``world`` ranks; ``pad_rank``: NaN in that rank's
    ZeRO-3 padding (the last element of its share of model.layers.0.mlp.bias, which has 3 elements);
    ``padded_moments`` (ZeRO-1/2): the moments keep the tail padding the fp32 partition drops, as DeepSpeed
    0.19 saves them; ``planted`` / ``planted_state``: values planted in the fp32 master weights / exp_avg_sq
    instead of PLANTED / PLANTED_STATE (name -> [(coords, value)])."""
    with stage_enum() as found:
        return _write(folder, stage, world, found, pad_rank, padded_moments, planted, planted_state)


def _write(folder: Path, stage: int, world: int, stage_enum: type[enum.IntEnum], pad_rank: int | None,
           padded_moments: bool, planted: dict | None, planted_state: dict | None) -> Path:
    step = folder / "global_step1"
    step.mkdir(parents=True)
    (folder / "latest").write_text("global_step1")
    params = full_params(PLANTED if planted is None else planted)
    # (Adam's second moments are never negative: the random values made non-negative, then the planted ones put)
    states = {n: t.abs() for n, t in full_params({}).items()}
    for name, values in (PLANTED_STATE if planted_state is None else planted_state).items():
        for coords, value in values:
            states[name][coords] = value
    shapes = [OrderedDict((n, torch.Size(s)) for n, s in g.items()) for g in GROUPS]
    common = {"buffer_names": [], "optimizer": None, "lr_scheduler": None, "param_shapes": shapes,
              "frozen_param_shapes": None, "shared_params": {}, "frozen_param_fragments": None,
              "dp_world_size": world, "mp_world_size": 1, "ds_version": "0.19.8", "global_steps": 1}
    if stage <= 2:
        module = OrderedDict((n, p.to(torch.bfloat16)) for n, p in params.items())
        torch.save({"module": module, **common}, step / "mp_rank_00_model_states.pt")
        per_group = [_zero2_partitions(torch.cat([params[n].reshape(-1) for n in g]), world) for g in GROUPS]
        per_state = [_zero2_partitions(torch.cat([states[n].reshape(-1) for n in g]), world, padded_moments)
                     for g in GROUPS]
        for r in range(world):
            base = {"state": {g: {"step": torch.tensor(1.0), "exp_avg": torch.zeros_like(per_state[g][0][r]),
                                  "exp_avg_sq": per_state[g][0][r].clone()} for g in range(len(GROUPS))},
                    "param_groups": [{"lr": 1e-3, "params": [g]} for g in range(len(GROUPS))]}
            osd = {"loss_scaler": None, "dynamic_loss_scale": False, "overflow": False, "clip_grad": 1.0,
                   "base_optimizer_state": base,
                   "single_partition_of_fp32_groups": [per_group[g][0][r] for g in range(len(GROUPS))],
                   "zero_stage": stage_enum(stage), "group_paddings": [per_group[g][1][r] for g in range(len(GROUPS))],
                   "param_alignment_paddings": [[0] * len(g) for g in GROUPS], "partition_count": [world] * len(GROUPS),
                   "ds_version": "0.19.8"}
            torch.save({"optimizer_state_dict": osd, "ds_config": {}, "ds_version": "0.19.8"},
                       step / f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
        return step
    names = [n for g in GROUPS for n in g]
    # one sub-group per parameter group (sub_group_size larger than the model)
    flats = [_zero3_partitions([params[n] for n in g], world) for g in GROUPS]
    moments = [_zero3_partitions([states[n] for n in g], world) for g in GROUPS]
    if pad_rank is not None:  # model.layers.0.mlp.bias: 3 elements, a share of 2 at world 2: rank 1's 2nd is padding
        flats[1][pad_rank][math.ceil(3 / world) - 1] = float("nan")
    for r in range(world):
        module = OrderedDict((n, torch.empty(0)) for n in names)
        torch.save({"module": module, **common}, step / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt")
        state = {g: {"step": torch.tensor(1.0), "exp_avg": torch.zeros_like(moments[g][r]), "exp_avg_sq": moments[g][r].clone()}
                 for g in range(len(GROUPS))}
        osd = {"zero_stage": stage_enum(3), "loss_scaler": None, "dynamic_loss_scale": False,
               "overflow": False, "partition_count": world,
               "optimizer_state_dict": {"state": state,
                                        "param_groups": [{"lr": 1e-3, "params": [g]} for g in range(len(GROUPS))]},
               "fp32_flat_groups": [flats[g][r] for g in range(len(GROUPS))]}
        torch.save({"optimizer_state_dict": osd, "ds_config": {}, "ds_version": "0.19.8"},
                   step / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
    return step
