"""``nandoctor diff A B``: compare a checkpoint with a reference, tensor by tensor, without loading either.

Both sides are opened once (``open_checkpoint``: any format nandoctor reads),
paired by name (match.py, repair's prefix rules and tie rules), compared bytes
first and values only where bytes differ or dtypes differ (compare.py,
values.py), and summarised per tensor and per layer (result.py).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from nandoctor.checkpoint import hubcache, runs
from nandoctor.checkpoint.opener import Checkpoint, open_checkpoint
from nandoctor.checkpoint.selection import Selection
from nandoctor.diffs import result as r
from nandoctor.diffs.compare import Comparer, Outcome, ProgressCallback, Work, line_up, row_major
from nandoctor.diffs.match import Pair, pair_tensors
from nandoctor.diffs.result import DiffReport, TensorDiff
from nandoctor.fileidentity import fingerprint
from nandoctor.layers import bad_ranges, layer_of, natural_key
from nandoctor.model import LayerSummary, ScanProblem
from nandoctor.restore.tensorbytes import nbytes
from nandoctor.verdict import CONFIG_KIND, UNLOADABLE_KIND
from nandoctor.wording import path_word, plural

__all__ = ["DiffReport", "TensorDiff", "diff", "diff_checkpoints"]


def diff(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    *,
    progress: ProgressCallback | None = None,
    workers: int | None = None,
    both_formats: bool = False,
    selection: Selection | None = None,
) -> DiffReport:
    """Compare checkpoint ``a`` with ``b`` (paths, or repo ids in the local hub caches); see api_compare.diff.

    ``selection`` (``--only``/``--exclude``) is applied to both sides where each is opened, as for a scan:
    what it leaves out is counted in a note per side, and a side it leaves empty is a problem (exit 3)."""
    path_a, path_b = _one_checkpoint(a, b, 0), _one_checkpoint(a, b, 1)
    return diff_checkpoints(
        open_checkpoint(path_a, both_formats=both_formats, selection=selection),
        open_checkpoint(path_b, both_formats=both_formats, selection=selection),
        progress=progress,
        workers=workers,
        labels=(os.fspath(a), os.fspath(b)),
    )


def _one_checkpoint(a: str | os.PathLike[str], b: str | os.PathLike[str], side: int) -> Path:
    """The checkpoint side ``side`` (0: A, 1: B) names, as scan reads it (a run folder's final model); a run folder
    without one is refused with the diff to run instead, its newest checkpoint in the folder's place."""
    given = (a, b)[side]
    resolved, _ = hubcache.resolve(given)
    found = runs.one_checkpoint_in(resolved)
    if found is not None:
        return found

    def hint(newest: str) -> str:
        args = [newest, path_word(b)] if side == 0 else [path_word(a), newest]
        return f"diff one of its checkpoints, e.g. the newest: nandoctor diff {' '.join(args)}"

    raise runs.run_folder_error(resolved, hint)


def diff_checkpoints(
    a: Checkpoint,
    b: Checkpoint,
    *,
    progress: ProgressCallback | None = None,
    workers: int | None = None,
    labels: tuple[str, str] | None = None,
    values: bool = True,
) -> DiffReport:
    """Compare two opened checkpoints (repair uses this on its output and each donor).

    ``values=False`` compares bytes only: a tensor whose bytes differ is ``changed`` with no element
    counts (and a dtype change is ``changed`` too), at memcmp speed throughout."""
    started = time.perf_counter()
    # whether a folder loads (its config, its layout) is no question of its tensors' values: said, never INCOMPLETE
    aside = (CONFIG_KIND, UNLOADABLE_KIND)
    problems = [p for p in (*a.problems, *b.problems) if p.kind not in aside]
    notes = [*(f"A: {n}" for n in a.notes), *(f"B: {n}" for n in b.notes)]
    notes += [f"{side}: {p.path}: {p.message}" for side, c in (("A", a), ("B", b)) for p in c.problems if p.kind in aside]
    pairs, ambiguous = pair_tensors(a, b)
    problems += ambiguous
    renamed = [(p.a.name, p.b.name) for p in pairs if p.a is not None and p.b is not None and p.a.name != p.b.name]
    if renamed:
        # (a trial: a DDP save and a compiled model's diffed SAME with nothing said, though load_state_dict of one
        # into the other's model fails on every key)
        notes.append(f"{plural(len(renamed), 'tensor')} paired across names that differ by a wrapper's prefix "
                     f"({renamed[0][0]} ↔ {renamed[0][1]}): the values compare, but load_state_dict of one side into "
                     "the other's model fails on those keys unless the prefix is stripped")
    if pairs and all(pair.a is None or pair.b is None for pair in pairs) and any(p.a for p in pairs) \
            and any(p.b for p in pairs):
        # (every tensor "only in A" or "only in B": the two name their tensors apart, nothing was compared)
        gguf = [side for side, c in (("A", a), ("B", b)) if any(str(f).endswith(".gguf") for f in c.files.files)]
        why = (f" ({' and '.join(gguf)} {'is' if len(gguf) == 1 else 'are'} GGUF, whose names are llama.cpp's: "
               "blk.N.attn_q.weight, where a Hugging Face checkpoint has model.layers.N.self_attn.q_proj.weight)"
               if len(gguf) == 1 else "")
        notes.append(f"no tensor name of A is one of B's{why}: nothing was compared, every tensor is only on one side")

    work: list[Work] = []
    slot: dict[int, int] = {}  # pair index → index in work
    for i, pair in enumerate(pairs):
        if pair.a is not None and pair.b is not None:
            # Compared in row-major order (a GGUF ne [32, 64] is a [64, 32] array); positions in A's own order
            a_c, b_c = row_major(pair.a), row_major(pair.b)
            if tuple(a_c.shape) != tuple(b_c.shape):
                continue  # another shape: not compared element by element
            slot[i] = len(work)
            chunked = pair.stored_a or pair.stored_b
            work.append(dataclasses.replace(line_up(a_c, pair.stored_a, b_c, pair.stored_b), whole=pair.a)
                        if chunked else Work(((a_c, b_c),), pair.a))
        elif pair.partner is not None:
            ref = pair.a or pair.b
            assert ref is not None
            slot[i] = len(work)
            work.append(Work(((ref, pair.partner),), ref))
    total = sum(nbytes(x) + nbytes(y) for w in work for x, y in w.pieces)
    comparer = Comparer(workers, progress, total, values=values)
    try:
        outcomes = comparer.compare_all(work)
    finally:
        comparer.close()
    problems += _changed_files(a) + _changed_files(b)

    tensors = tuple(_tensor_diff(p, outcomes[slot[i]] if i in slot else None) for i, p in enumerate(pairs))
    layers, changed_ranges, cast_ranges = _layers(tensors)
    counts = {status: 0 for status in r.STATUSES}
    for t in tensors:
        counts[t.status] += 1
    label_a, label_b = labels or (str(a.path), str(b.path))
    return DiffReport(
        a=label_a,
        b=label_b,
        tensors=tensors,
        problems=tuple(problems),
        notes=tuple(notes),
        layers=layers,
        changed_ranges=changed_ranges,
        cast_ranges=cast_ranges,
        bytes_read=sum(o.bytes_read for o in outcomes),
        seconds=time.perf_counter() - started,
        counts=counts,
    )


def _changed_files(checkpoint: Checkpoint) -> list[ScanProblem]:
    """A file whose size or mtime moved while it was compared: its bytes were not the ones read."""
    out = []
    for file, before in checkpoint.fingerprints.items():
        try:
            now = fingerprint(file)
        except OSError as exc:
            out.append(ScanProblem(str(file), f"cannot stat it after the diff: {exc.strerror or exc}"))
            continue
        if now != before:
            out.append(ScanProblem(str(file), "the file changed while it was being compared",
                                   "wait for the writer to finish and diff again"))
    return out


def _tensor_diff(pair: Pair, outcome: Outcome | None) -> TensorDiff:
    a, b = pair.a, pair.b
    ref = a or b
    assert ref is not None
    if a is None or b is None:
        status = r.ONLY_A if b is None else r.ONLY_B
        tied_to = pair.tied_to
        if outcome is not None and pair.partner is not None and not outcome.error and not outcome.values_differ:
            tied_to = pair.partner.name  # the very same values as its partner: a tied copy
        if tied_to is not None:
            status = r.TIED
        elif pair.unread is not None:  # missing, or in a file of the other side that was not read: not known
            status = r.UNREADABLE
        return TensorDiff(
            name=ref.name, status=status, dtype_a=a.dtype if a else None, dtype_b=b.dtype if b else None,
            shape_a=tuple(a.shape) if a else None, shape_b=tuple(b.shape) if b else None,
            file_a=a.file if a else None, file_b=b.file if b else None,
            numel=ref.numel, tied_to=tied_to, order=a.order if a else "C", order_b=b.order if b else "C",
            message=pair.unread if status == r.UNREADABLE else None,
        )
    common = dict(
        name=a.name, name_b=None if b.name == a.name else b.name, dtype_a=a.dtype, dtype_b=b.dtype,
        shape_a=tuple(a.shape), shape_b=tuple(b.shape), file_a=a.file, file_b=b.file, numel=a.numel,
        order=a.order, order_b=b.order,
    )
    if outcome is None:
        return TensorDiff(status=r.SHAPE, **common)  # type: ignore[arg-type]
    if outcome.error is not None:
        return TensorDiff(status=r.UNREADABLE, message=outcome.error, **common)  # type: ignore[arg-type]
    quantized = a.region.blocks is not None or b.region.blocks is not None
    if outcome.per_block and a.region.blocks is not None:  # block-quantized, compared block by block
        common["blocks"] = a.region.blocks.blocks_in(a.region.nbytes)
    if not outcome.bytes_differ:
        return TensorDiff(status=r.IDENTICAL, changed=0, changed_blocks=0 if outcome.per_block else None,
                          nonfinite_a_only=0, nonfinite_b_only=0, compared_bytes=a.dtype == b.dtype,
                          **common)  # type: ignore[arg-type]
    if not outcome.decodable:  # no value was decoded: what differs, and any NaN/Inf, is not known (None)
        return TensorDiff(status=r.CHANGED, message=outcome.message or "compared by bytes only; the bytes differ",
                          compared_bytes=outcome.per_block or not quantized,  # (types that cannot line up: neither)
                          **common)  # type: ignore[arg-type]
    # Block by block: ``changed`` (elements) is known only when no block changed
    counted = ({"changed_blocks": outcome.changed, "changed": 0 if outcome.changed == 0 else None}
               if outcome.per_block else {"changed": outcome.changed})
    if outcome.changed == 0 and not outcome.a_only and not outcome.b_only:
        # (another dtype holding exactly the same values, a lossless widening such as bf16 → fp32, is no cast: no
        # value was rounded, and a diff of a conversion that lost nothing exits 0)
        status = r.EQUAL if a.dtype == b.dtype or not outcome.values_differ else r.CAST
        rounding = (outcome.rounding or 0.0) if status == r.CAST else None
        return TensorDiff(status=status, rounding=rounding, max_abs_all=outcome.max_abs_all, nonfinite_a_only=0,
                          nonfinite_b_only=0, **counted, **common)  # type: ignore[arg-type]
    return TensorDiff(
        status=r.CHANGED, max_abs=outcome.max_abs, max_rel=outcome.max_rel, max_abs_all=outcome.max_abs_all,
        rounding=outcome.rounding, nonfinite_a_only=outcome.a_only, nonfinite_b_only=outcome.b_only,
        first_nonfinite_a_only=outcome.first_a_only, first_nonfinite_b_only=outcome.first_b_only,
        **counted, **common,  # type: ignore[arg-type]
    )


def _summaries(tensors: tuple[TensorDiff, ...], counted: frozenset[str]) -> tuple[LayerSummary, ...]:
    groups: dict[str, list[TensorDiff]] = {}
    keys = {}
    for t in tensors:
        key = layer_of(t.name)
        groups.setdefault(key.group, []).append(t)
        keys[key.group] = key
    out = []
    for group in sorted(groups, key=natural_key):
        key, members = keys[group], groups[group]
        hit = [t for t in members if t.status in counted]
        out.append(LayerSummary(
            layer=group, stack=key.stack, index=key.index, tensors=len(members), bad_tensors=len(hit),
            nan=0, posinf=0, neginf=0,
            worst=max(hit, key=lambda t: t.changed or t.changed_blocks or 0).name if hit else None,
        ))
    return tuple(out)


_DIFFERENT = frozenset({r.CHANGED, r.SHAPE, r.ONLY_A, r.ONLY_B, r.UNREADABLE})


def _layers(tensors: tuple[TensorDiff, ...]) -> tuple[tuple[LayerSummary, ...], tuple, tuple]:
    """Per layer, the tensors that are not the same; consecutive ones as ranges (changed, cast apart)."""
    layers = _summaries(tensors, _DIFFERENT | {r.CAST})
    changed = bad_ranges(_summaries(tensors, _DIFFERENT - {r.UNREADABLE}))  # (not read is not changed)
    cast = bad_ranges(_summaries(tensors, frozenset({r.CAST})))
    return layers, changed, cast
