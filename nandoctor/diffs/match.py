"""Pair A's tensors with B's by name: exact names first, then with wrapper prefixes stripped.

The prefix rules are repair's (``restore/plan.py``'s ``normalise``): ``module.``,
``_orig_mod.``, ``base_model.model.``, ``model.`` … are stripped on both sides,
and two tensors that meet the same stripped name are never guessed between.
A tensor on one side only is *tied*, not missing, when it views the same
elements as a common tensor (a torch file's shared storage) or when it is a
known tied copy (``lm_head.weight`` ↔ the embeddings, checkpoint/ties.py) whose
bytes equal its partner's on its own side (checked when the pair is compared).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nandoctor.checkpoint.opener import Checkpoint
from nandoctor.checkpoint.ties import tie_candidates
from nandoctor.model import ScanProblem, TensorRef
from nandoctor.restore.plan import normalise


@dataclass(frozen=True)
class Pair:
    """One name to report: both sides, or one side (with how it may be tied)."""

    name: str
    a: TensorRef | None
    b: TensorRef | None
    tied_to: str | None = None  # views the very same elements as this common tensor
    partner: TensorRef | None = None  # a possible tied copy of this tensor on the same side: compare with it

    @property
    def side(self) -> str:
        return "a" if self.b is None else "b"


def _by_name(checkpoint: Checkpoint, side: str) -> tuple[dict[str, TensorRef], list[ScanProblem]]:
    refs: dict[str, TensorRef] = {}
    problems = []
    for ref in checkpoint.refs:
        first = refs.setdefault(ref.name, ref)
        if first is not ref:
            problems.append(ScanProblem(
                ref.file,
                f"tensor {ref.name!r} is also in {Path(first.file).name} ({side}); which one to compare is ambiguous",
                "diff one file at a time, or pass the folder that holds one copy",
            ))
    return refs, problems


def _unique_normalised(names: list[str]) -> dict[str, str]:
    seen: dict[str, list[str]] = {}
    for name in names:
        seen.setdefault(normalise(name), []).append(name)
    return {key: found[0] for key, found in seen.items() if len(found) == 1}


def pair_tensors(a: Checkpoint, b: Checkpoint) -> tuple[list[Pair], list[ScanProblem]]:
    """Every tensor name of A and B as a :class:`Pair`, A's file order first; plus ambiguous names."""
    refs_a, problems = _by_name(a, "A")
    refs_b, more = _by_name(b, "B")
    problems += more
    common = [name for name in refs_a if name in refs_b]
    left_a = [name for name in refs_a if name not in refs_b]
    left_b = [name for name in refs_b if name not in refs_a]
    norm_a, norm_b = _unique_normalised(left_a), _unique_normalised(left_b)
    renamed = {norm_a[key]: norm_b[key] for key in norm_a if key in norm_b}
    pairs = [Pair(name, refs_a[name], refs_b[name]) for name in common]
    pairs += [Pair(name, refs_a[name], refs_b[other]) for name, other in renamed.items()]
    matched_b = set(renamed.values())
    pairs += _one_sided([n for n in left_a if n not in renamed], refs_a, {p.a.name for p in pairs if p.a}, "a")
    pairs += _one_sided([n for n in left_b if n not in matched_b], refs_b, {p.b.name for p in pairs if p.b}, "b")
    pairs.sort(key=_file_order)
    return pairs, problems


def _one_sided(names: list[str], refs: dict[str, TensorRef], paired: set[str], side: str) -> list[Pair]:
    by_elements = {refs[name].elements_key: name for name in paired}
    by_norm = _unique_normalised(list(paired))
    out = []
    for name in names:
        ref = refs[name]
        tied_to = by_elements.get(ref.elements_key)
        partner = None
        if tied_to is None:
            for candidate in tie_candidates(normalise(name)):
                other = by_norm.get(candidate)
                if other is not None and refs[other].dtype == ref.dtype and refs[other].shape == ref.shape:
                    partner = refs[other]
                    break
        a, b = (ref, None) if side == "a" else (None, ref)
        out.append(Pair(name, a, b, tied_to=tied_to, partner=partner))
    return out


def _file_order(pair: Pair) -> tuple[int, str, int, str]:
    ref = pair.a or pair.b
    assert ref is not None
    return (0 if pair.a is not None else 1, ref.file, ref.region.offset + ref.storage_offset, pair.name)
