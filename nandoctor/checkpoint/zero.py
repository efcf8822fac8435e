"""DeepSpeed ZeRO optimizer partitions named after the parameters they hold (a hook of ``open_checkpoint``).

Each rank's ``*zero_pp_rank_R_mp_rank_M_optim_states.pt`` holds flat fp32
partitions (``single_partition_of_fp32_groups`` for ZeRO-1/2,
``fp32_flat_groups`` for ZeRO-3) and the base optimizer's state of the same
layout (Adam's ``exp_avg`` / ``exp_avg_sq``). Scanned as plain torch files,
a NaN there has no parameter name. Here the flat tensors' refs are replaced by
one view per parameter run, named ``fp32.<param>``, ``exp_avg.<param>`` …,
whose position comes from DeepSpeed's own arithmetic (``zero_layout.py``)
applied to the numbers in the files (``param_shapes`` from the model states
file; ``zero_stage``, ``partition_count``, ``param_alignment_paddings`` from
the optimizer files). A parameter cut across ranks is a set of flat chunks
of one tensor, merged in the report in the parameter's own coordinates; a
non-finite value in padding belongs to no parameter and is reported as unviewed.
A checkpoint with several ZeRO sets (folders or model-parallel ranks) prefixes
the names with ``<folder>.mp_rank_MM.``.

Fewer rank files than ``partition_count`` (a rank that did not save) is a
problem (exit 3), as it is for DeepSpeed, which refuses to load it. Nothing
here imports deepspeed: its enums and classes are inert placeholders.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nandoctor.checkpoint.roles import MASTER_WEIGHTS
from nandoctor.checkpoint.zero_layout import LayoutError, Piece, Shapes, zero2_pieces, zero3_pieces
from nandoctor.errors import NandoctorError
from nandoctor.model import ChunkOf, ScanProblem, TensorRef
from nandoctor.readers.torch.file import read_object

OPTIM_FILE = re.compile(r"^(?P<kind>(?:bf16_)?)zero_pp_rank_(?P<rank>\d+)_mp_rank_(?P<mp>\d+)_optim_states\.pt$")
_STATE = re.compile(r"^optimizer_state_dict\.(?:base_optimizer_state|optimizer_state_dict)\.(?:state\.)?(\d+)\.(\w+)$")
_HINT_MISSING = ("a rank did not finish saving, or the folder was copied in part; DeepSpeed refuses to load it too. "
                 "Re-copy the whole global_stepN folder, or resume from an earlier checkpoint")


@dataclass(frozen=True)
class _Optim:
    """The partition numbers of one rank's optimizer states file."""

    path: Path
    rank: int
    stage: int
    world: int
    group_worlds: tuple[int, ...]  # ZeRO-1/2 saves a partition count per group
    paddings: tuple[tuple[int, ...], ...] | None
    # ZeRO-1/2 saves each partition without its tail padding (group_paddings), so the partition size
    # that places ranks (r * P) is the saved length plus that padding
    group_paddings: tuple[int, ...]


def attribute(refs_by_file: dict[Path, Sequence[TensorRef]]) -> tuple[list[ScanProblem], list[str]]:
    """Rename the flat partitions of every ZeRO set in ``refs_by_file`` in place; (problems, notes)."""
    sets: dict[tuple[Path, str], list[tuple[Path, re.Match[str]]]] = {}
    for file in refs_by_file:
        if found := OPTIM_FILE.match(file.name):
            sets.setdefault((file.parent, found["mp"]), []).append((file, found))
    problems: list[ScanProblem] = []
    notes: list[str] = []
    for (folder, mp), members in sorted(sets.items()):
        prefix = f"{folder.name}.mp_rank_{mp}." if len(sets) > 1 else ""
        try:
            notes.append(_attribute_set(folder, mp, members, refs_by_file, prefix, problems))
        except NandoctorError as exc:
            problems.append(ScanProblem(str(folder), exc.message, exc.hint))
        except LayoutError as exc:
            # Every byte is still scanned (under the flat names): only the naming is lost, so a note, not
            # an unreadable checkpoint. A missing rank file is a problem (_attribute_set), since bytes are missing.
            notes.append(
                f"{folder.name}/: DeepSpeed ZeRO partitions not attributed to parameters ({exc}); scanned under "
                "their flat names (if the model and optimizer states come from different saves, re-copy the folder)"
            )
    return problems, notes


def _attribute_set(
    folder: Path, mp: str, members: list[tuple[Path, re.Match[str]]], refs_by_file: dict[Path, Sequence[TensorRef]],
    prefix: str, problems: list[ScanProblem],
) -> str:
    optims = sorted((_read_optim(file, int(found["rank"])) for file, found in members), key=lambda o: o.rank)
    first = optims[0]
    for other in optims[1:]:
        if (other.stage, other.world) != (first.stage, first.world):
            raise LayoutError(f"{other.path.name} says ZeRO-{other.stage} over {other.world} ranks where "
                              f"{first.path.name} says ZeRO-{first.stage} over {first.world}")
    kind = members[0][1]["kind"]
    missing = [f"{kind}zero_pp_rank_{r}_mp_rank_{mp}_optim_states.pt" for r in range(first.world)
               if not (folder / f"{kind}zero_pp_rank_{r}_mp_rank_{mp}_optim_states.pt").exists()]
    if missing:
        problems.append(ScanProblem(
            str(folder), f"DeepSpeed ZeRO-{first.stage} over {first.world} ranks, but {len(missing)} rank file(s) are "
            f"missing: {', '.join(missing[:4])}{' …' if len(missing) > 4 else ''}; their partitions were not scanned",
            _HINT_MISSING,
        ))
    if first.stage == 3:  # ZeRO-3 saves a model states file per rank, which DeepSpeed's load_checkpoint needs
        absent = [f"zero_pp_rank_{r}_mp_rank_{mp}_model_states.pt" for r in range(first.world)
                  if not (folder / f"zero_pp_rank_{r}_mp_rank_{mp}_model_states.pt").exists()]
        if absent:
            problems.append(ScanProblem(
                str(folder), f"DeepSpeed ZeRO-3 over {first.world} ranks, but {len(absent)} model states file(s) are "
                f"missing: {', '.join(absent[:4])}{' …' if len(absent) > 4 else ''}; DeepSpeed's load_checkpoint on "
                "those ranks fails", _HINT_MISSING,
            ))
    extra = [o.path.name for o in optims if o.rank >= first.world]
    if extra:
        raise LayoutError(f"{', '.join(extra)} lie beyond partition_count {first.world} (left from another save?)")
    shapes = _param_shapes(folder, mp, first.stage)
    params = sum(len(group) for group in shapes)
    for optim in optims:
        refs_by_file[optim.path] = _renamed(optim, refs_by_file[optim.path], shapes, prefix)
    return (f"{folder.name}/: DeepSpeed ZeRO-{first.stage} partitions of {len(optims)} of {first.world} rank(s) "
            f"attributed to {params:,} parameters ({prefix}fp32.<name>, {prefix}exp_avg.<name> …)")


def _read_optim(file: Path, rank: int) -> _Optim:
    state = _mapping(read_object(file), "optimizer_state_dict", file)
    stage = _int(state.get("zero_stage"), file, "zero_stage")
    counts = state.get("partition_count")
    group_worlds = tuple(_int(c, file, "partition_count") for c in counts) if isinstance(counts, list) else ()
    world = max(group_worlds) if group_worlds else _int(counts, file, "partition_count")
    raw = state.get("param_alignment_paddings")
    paddings = None
    if raw is not None:
        if not isinstance(raw, list) or not all(isinstance(g, list) for g in raw):
            raise LayoutError(f"{file.name}: param_alignment_paddings is not a list of lists")
        paddings = tuple(tuple(_int(p, file, "param_alignment_paddings") for p in group) for group in raw)
    if stage not in (1, 2, 3) or world < 1:
        raise LayoutError(f"{file.name}: zero_stage {stage} over {world} ranks is not a ZeRO layout")
    tails = state.get("group_paddings") or []
    group_paddings = tuple(_int(p, file, "group_paddings") for p in tails) if isinstance(tails, list) else ()
    return _Optim(file, rank, stage, world, group_worlds, paddings, group_paddings)


def _param_shapes(folder: Path, mp: str, stage: int) -> list[Shapes]:
    """``param_shapes`` of the model states file: per parameter group, (name, shape) in flattening order."""
    names = [f"mp_rank_{mp}_model_states.pt"] if stage <= 2 else \
        sorted((p.name for p in folder.glob(f"zero_pp_rank_*_mp_rank_{mp}_model_states.pt")), key=_rank_key)
    path = folder / (names[0] if names else f"zero_pp_rank_0_mp_rank_{mp}_model_states.pt")
    if not path.exists():
        raise NandoctorError(f"{path.name} is missing: this DeepSpeed model states file names the parameters of "
                             "the ZeRO partitions, which were scanned under their flat names only",
                             "re-copy the whole global_stepN folder")
    model_states = read_object(path)
    groups = model_states.get("param_shapes") if isinstance(model_states, dict) else None
    if isinstance(groups, dict):
        groups = [groups]
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise LayoutError(f"{path.name} holds no param_shapes (a list of name → shape per group)")
    out: list[Shapes] = []
    for group in groups:
        shapes: Shapes = []
        for name, shape in group.items():
            if not isinstance(name, str) or not isinstance(shape, tuple) or \
                    not all(isinstance(n, int) and n >= 0 for n in shape):
                raise LayoutError(f"{path.name}: param_shapes entry {name!r} is not a name and a shape")
            shapes.append((name, shape))
        out.append(shapes)
    return out


def _rank_key(name: str) -> int:
    found = re.search(r"zero_pp_rank_(\d+)_", name)
    return int(found[1]) if found else 0


def _renamed(optim: _Optim, refs: Sequence[TensorRef], shapes: list[Shapes], prefix: str) -> list[TensorRef]:
    """``refs`` of one rank file with each flat partition replaced by its parameter pieces."""
    stem = optim.path.name.rsplit(".", 1)[0] + "."
    flat_key = "single_partition_of_fp32_groups" if optim.stage <= 2 else "fp32_flat_groups"
    flats = {int(r.name[len(stem):].rsplit(".", 1)[1]): r for r in refs
             if re.fullmatch(re.escape(f"{stem}optimizer_state_dict.{flat_key}.") + r"\d+", r.name)}
    if sorted(flats) != list(range(len(flats))) or not flats:
        raise LayoutError(f"{optim.path.name}: no {flat_key} tensors numbered 0, 1, …")
    pieces = _pieces(optim, shapes, [flats[g].numel for g in range(len(flats))])
    out: list[TensorRef] = []
    for ref in refs:
        label, group = _label(ref, stem, flat_key)
        # An optimizer state may be longer than its fp32 partition: DeepSpeed saves the last rank's partition
        # without its tail padding, but the moments of the padded one; the pieces lie at the same places, and the
        # padding's elements, viewed by no piece, are reported as bytes no tensor views.
        if label is None or group not in pieces or ref.numel < flats[group].numel or not _flat_1d(ref) \
                or (label == "fp32" and ref.numel != flats[group].numel):
            out.append(ref)
            continue
        out += [_piece_ref(ref, piece, f"{prefix}{label}.{piece.param}") for piece in pieces[group]]
    return out


def _pieces(optim: _Optim, shapes: list[Shapes], sizes: list[int]) -> dict[int, list[Piece]]:
    if optim.stage == 3:
        flat_shapes = [entry for group in shapes for entry in group]
        return dict(enumerate(zero3_pieces(flat_shapes, optim.world, optim.rank, sizes)))
    if len(shapes) != len(sizes):
        raise LayoutError(f"{len(shapes)} parameter groups in param_shapes but {len(sizes)} flat partitions "
                          f"in {optim.path.name}")
    out = {}
    for group, (group_shapes, size) in enumerate(zip(shapes, sizes)):
        world = optim.group_worlds[group] if group < len(optim.group_worlds) else optim.world
        paddings = list(optim.paddings[group]) if optim.paddings is not None and group < len(optim.paddings) else None
        tail = optim.group_paddings[group] if group < len(optim.group_paddings) else 0
        out[group] = zero2_pieces(group_shapes, paddings, size, tail, world, optim.rank)
    return out


def _label(ref: TensorRef, stem: str, flat_key: str) -> tuple[str | None, int]:
    """("fp32" or the optimizer state's key, group) for a flat partition tensor; (None, -1) otherwise."""
    if not ref.name.startswith(stem):
        return None, -1
    name = ref.name[len(stem):]
    if name.startswith(f"optimizer_state_dict.{flat_key}."):
        return MASTER_WEIGHTS, int(name.rsplit(".", 1)[1])
    if found := _STATE.match(name):
        return found[2], int(found[1])
    return None, -1


def _flat_1d(ref: TensorRef) -> bool:
    return len(ref.shape) == 1 and ref.is_contiguous and ref.chunk is None


def _piece_ref(flat: TensorRef, piece: Piece, name: str) -> TensorRef:
    at = flat.storage_offset + piece.start
    if piece.whole:
        return dataclasses.replace(flat, name=name, shape=piece.shape, storage_offset=at, strides=None)
    chunk = ChunkOf((piece.param_start,), piece.shape, flat=True)
    return dataclasses.replace(flat, name=name, shape=(piece.length,), storage_offset=at, strides=None, chunk=chunk)


def _mapping(value: Any, key: str, file: Path) -> dict[Any, Any]:
    inner = value.get(key) if isinstance(value, dict) else None
    if not isinstance(inner, dict):
        raise LayoutError(f"{file.name} holds no {key} (not a DeepSpeed ZeRO optimizer states file)")
    return inner


def _int(value: Any, file: Path, what: str) -> int:
    """An int as DeepSpeed pickles it: plain, or an enum member (a placeholder that recorded its value)."""
    args = getattr(value, "args", None)
    if isinstance(args, tuple) and len(args) == 1:
        value = args[0]
    if isinstance(value, bool) or not isinstance(value, int):
        raise LayoutError(f"{file.name}: {what} is {value!r}, not a number")
    return value

__all__ = ["OPTIM_FILE", "attribute"]
