"""Pair A's tensors with B's by name: exact names first, then with wrapper prefixes stripped.

The prefix rules are repair's (``restore/plan.py``'s ``normalise``): ``module.``,
``_orig_mod.``, ``base_model.model.``, ``model.`` … are stripped on both sides,
and two tensors that meet the same stripped name are never guessed between.
A tensor on one side only is *tied*, not missing, when it views the same
elements as a common tensor (a torch file's shared storage) or when it is a
known tied copy (``lm_head.weight`` ↔ the embeddings, checkpoint/ties.py) whose
bytes equal its partner's on its own side (checked when the pair is compared).

A tensor stored as chunks (DCP: one per rank that held a shard) is one global
tensor here, as the scan reports it (engine/chunks.py's ``gather``): its name,
its global shape, and the chunks it is read from (``Pair.stored_a``/``stored_b``).

A tensor on one side only may be in a file of the other side that could not be read (a truncated shard):
then it is not missing there but not compared (``Pair.unread``, status ``unreadable``). Where the other
side's index maps the name to an unread shard, that shard is named; a file no index lists may hold any
name, so every tensor found only on this side is unread then.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nandoctor.checkpoint.opener import Checkpoint
from nandoctor.checkpoint.ties import tie_candidates
from nandoctor.engine.chunks import gather
from nandoctor.layers import normalise
from nandoctor.model import ScanProblem, TensorRef


@dataclass(frozen=True)
class Pair:
    """One name to report: both sides, or one side (with how it may be tied)."""

    name: str
    a: TensorRef | None
    b: TensorRef | None
    tied_to: str | None = None  # views the very same elements as this common tensor
    partner: TensorRef | None = None  # a possible tied copy of this tensor on the same side: compare with it
    stored_a: tuple[TensorRef, ...] = ()  # A's chunks when it is stored as chunks (``a`` is then the global tensor)
    stored_b: tuple[TensorRef, ...] = ()
    unread: str | None = None  # on one side only, and the other side's file that may hold it was not read: why


    @property
    def side(self) -> str:
        return "a" if self.b is None else "b"


def _by_name(
    checkpoint: Checkpoint, side: str
) -> tuple[dict[str, TensorRef], dict[str, list[TensorRef]], list[ScanProblem]]:
    refs: dict[str, TensorRef] = {}
    problems = []
    tensors, chunks = gather(checkpoint.refs)
    for ref in tensors:
        first = refs.setdefault(ref.name, ref)
        if first is not ref:
            problems.append(ScanProblem(
                ref.file,
                f"tensor {ref.name!r} is also in {Path(first.file).name} ({side}); which one to compare is ambiguous",
                "diff one file at a time, or pass the folder that holds one copy",
            ))
    return refs, chunks, problems


def _unique_normalised(names: list[str]) -> dict[str, str]:
    seen: dict[str, list[str]] = {}
    for name in names:
        seen.setdefault(normalise(name), []).append(name)
    return {key: found[0] for key, found in seen.items() if len(found) == 1}


def pair_tensors(a: Checkpoint, b: Checkpoint) -> tuple[list[Pair], list[ScanProblem]]:
    """Every tensor name of A and B as a :class:`Pair`, A's file order first; plus ambiguous names."""
    refs_a, chunks_a, problems = _by_name(a, "A")
    refs_b, chunks_b, more = _by_name(b, "B")
    problems += more
    common = [name for name in refs_a if name in refs_b]
    left_a = [name for name in refs_a if name not in refs_b]
    left_b = [name for name in refs_b if name not in refs_a]
    norm_a, norm_b = _unique_normalised(left_a), _unique_normalised(left_b)
    renamed = {norm_a[key]: norm_b[key] for key in norm_a if key in norm_b}
    pairs = [Pair(name, refs_a[name], refs_b[other], stored_a=tuple(chunks_a.get(name, ())),
                  stored_b=tuple(chunks_b.get(other, ())))
             for name, other in [*((n, n) for n in common), *renamed.items()]]
    matched_b = set(renamed.values())
    pairs += _one_sided([n for n in left_a if n not in renamed], refs_a, {p.a.name for p in pairs if p.a}, "a",
                        chunks_a, _unread_files(b, "B"))
    pairs += _one_sided([n for n in left_b if n not in matched_b], refs_b, {p.b.name for p in pairs if p.b}, "b",
                        chunks_b, _unread_files(a, "A"))
    pairs.sort(key=_file_order)
    return pairs, problems


def _unread_files(checkpoint: Checkpoint, side: str) -> Callable[[str], str | None]:
    """For a tensor name, why ``checkpoint`` (the other side) may hold it in a file that was not read; None when
    every file that could hold it was read."""
    read = checkpoint.refs_by_file
    listed: dict[str, Path] = {}  # name (and its normalised name) → the unread shard an index maps it to
    objects: dict[str, Path] = {}  # "item." → the unread file of a DCP pickled-object item (its tensors' prefix)
    indexed: set[Path] = set()
    for index in checkpoint.files.indexes:
        for name, shard in index.weight_map.items():
            file = index.path.parent / shard
            indexed.add(file)
            if file not in read:  # (a shard that is not there at all, too: its tensors were not read either)
                listed[name] = listed[normalise(name)] = file
    dcp_folders = {f.parent for f in checkpoint.files.files if f.suffix == ".distcp"}
    if dcp_folders:  # a DCP folder's .metadata maps each item to its file, as an index does (a missing one too)
        from nandoctor.readers.dcp import metadata_for

        for folder in dcp_folders:
            metadata = metadata_for(folder)
            for item in metadata.items if metadata is not None else ():
                file = folder / item.relative_path
                indexed.add(file)
                if file not in read:
                    listed.setdefault(item.fqn, file)
                    if item.chunk_offsets is None:  # (a pickled object's tensors are named under it: pair.0)
                        objects[f"{item.fqn}."] = file
    anywhere = [f for f in checkpoint.files.files if f not in read and f not in indexed]

    def why(name: str) -> str | None:
        file = listed.get(name) or listed.get(normalise(name)) or next(
            (f for prefix, f in objects.items() if name.startswith(prefix)), None)
        if file is not None:
            return f"not compared: {side}'s {'.metadata' if file.suffix == '.distcp' else 'index'} maps it to {file.name}, which could not be read"
        if anywhere:
            files = ", ".join(f.name for f in anywhere[:3]) + (" …" if len(anywhere) > 3 else "")
            return f"not compared: {side}'s {files} could not be read and may hold it"
        return None

    return why


def _one_sided(names: list[str], refs: dict[str, TensorRef], paired: set[str], side: str,
               chunks: dict[str, list[TensorRef]], unread: Callable[[str], str | None]) -> list[Pair]:
    by_elements = {refs[name].elements_key: name for name in paired}
    by_norm = _unique_normalised(list(paired))
    out = []
    for name in names:
        ref = refs[name]
        tied_to = by_elements.get(ref.elements_key)
        partner = None
        if tied_to is None and name not in chunks:  # (a tied copy is saved whole: chunks are no tie)
            for candidate in tie_candidates(normalise(name)):
                other = by_norm.get(candidate)
                if other is not None and other not in chunks and refs[other].dtype == ref.dtype and refs[other].shape == ref.shape:
                    partner = refs[other]
                    break
        a, b = (ref, None) if side == "a" else (None, ref)
        stored = tuple(chunks.get(name, ()))
        out.append(Pair(name, a, b, tied_to=tied_to, partner=partner, stored_a=stored if b is None else (),
                        stored_b=stored if a is None else (), unread=unread(name)))
    return out


def _file_order(pair: Pair) -> tuple[int, str, int, str]:
    ref = pair.a or pair.b
    assert ref is not None
    return (0 if pair.a is not None else 1, ref.file, ref.region.offset + ref.storage_offset, pair.name)
