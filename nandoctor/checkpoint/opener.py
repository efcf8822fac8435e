"""A path opened once: every file of the checkpoint read by its reader into one :class:`Checkpoint`.

The layout says which files belong together (and checkpoint/loadability.py whether
they load as the checkpoint they are); each file's reader validates it
completely and returns its tensor references; the index and the shards are
cross-checked; every tensor gets its role. What could not be read becomes a
``ScanProblem`` (the rest is still opened), so a consumer decides whether a
partial checkpoint is acceptable (a scan reports it; a repair donor refuses it).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path

from nandoctor import access
from nandoctor.checkpoint import layout, loadability, nestedstate, quantized
from nandoctor.checkpoint.quantized import ScaledPair
from nandoctor.checkpoint.roles import OPTIMIZER, file_role, roles_of
from nandoctor.checkpoint.selection import Selection
from nandoctor.checkpoint.steps import MEGATRON_RANK
from nandoctor.errors import NandoctorError
from nandoctor.fileidentity import FileIdentity, fingerprint
from nandoctor.model import QUANTIZER_SCALE, OwedCrc, RefTable, ScanProblem, TensorRef, UnviewedBad, is_pickled_float
from nandoctor.readers import read_file
from nandoctor.verdict import UNREADABLE_KIND
from nandoctor.wording import first_few

_MAX_LISTED_NAMES = 5


@dataclass
class Checkpoint:
    """One checkpoint as its files describe it: tensors (with roles), notes and problems; no tensor byte read."""

    path: Path
    files: layout.CheckpointFiles
    # a file's refs: a RefTable (a safetensors file: columns) or a list of TensorRef
    refs_by_file: dict[Path, Sequence[TensorRef]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problems: list[ScanProblem] = field(default_factory=list)
    fingerprints: dict[Path, FileIdentity] = field(default_factory=dict)  # taken before each file was read
    selection: Selection | None = None  # --only / --exclude
    excluded: int = 0  # tensors left out by the selection
    excluded_weights: int = 0  # of them, model weights (the diverged share rule counts them: verdict.diverged_why)
    owed: dict[Path, list[OwedCrc]] = field(default_factory=dict)  # CRC-32 checks left to the scan (defer_crcs)
    unviewed: list[UnviewedBad] = field(default_factory=list)  # NaN/Inf the readers found outside tensors (numpy)
    cast_to_float: list[TensorRef] = field(default_factory=list)  # integer weights from_pretrained casts to float
    scaled: list[ScaledPair] = field(default_factory=list)  # quantizer scales judged by the weights they make
    nested: dict[Path, str] = field(default_factory=dict)  # torch files whose state dict lies under a key of theirs

    @property
    def refs(self) -> list[TensorRef]:
        """Every tensor as a TensorRef (made for a RefTable's rows that are not yet): for readers of a few."""
        return [ref for refs in self.refs_by_file.values() for ref in refs]

    @property
    def complete(self) -> bool:
        return not self.problems


def open_checkpoint(
    path: str | os.PathLike[str], *, both_formats: bool = False, selection: Selection | None = None,
    defer_crcs: bool = False,
) -> Checkpoint:
    """Read the headers of every file of the checkpoint at ``path``; raise only for an unusable path.

    ``selection`` (``--only`` / ``--exclude``) leaves tensors out by name; they are counted in
    ``excluded`` and named in a note. ``defer_crcs``: torch storages' CRC-32 checks are left in
    ``owed`` for the caller, who reads every byte anyway (the scan), instead of a pass of their own.
    """
    files = layout.discover(path, both_formats=both_formats)
    checkpoint = Checkpoint(
        Path(path), files, notes=list(files.notes), problems=list(files.problems), selection=selection or None
    )
    checkpoint.notes += layout.unscanned_notes(Path(path))
    unloadable, load_notes = loadability.problems(files)  # tensors that all scan healthy may still not load
    checkpoint.problems += unloadable
    checkpoint.notes += load_notes
    for file in files.files:
        try:
            checkpoint.fingerprints[file] = fingerprint(file)
            read = read_file(file, defer_crcs=defer_crcs)
        except (NandoctorError, OSError) as exc:
            checkpoint.problems.append(_with_unscanned(problem_of(file, exc), file, files.indexes))
            continue
        checkpoint.refs_by_file[file] = _with_roles(read.refs, file.name)
        checkpoint.notes += _named_from_root(read.notes, file, files.root)
        checkpoint.problems += read.problems
        if read.nested_under is not None:
            checkpoint.nested[file] = read.nested_under
        checkpoint.unviewed += read.unviewed
        if read.owed:
            checkpoint.owed[file] = list(read.owed)
    if any(file_role(file.name) == OPTIMIZER for file in checkpoint.refs_by_file):  # where ZeRO's partitions lie
        from nandoctor.checkpoint import zero  # (and its torch reader: imported by checkpoints that have them)

        zero_problems, zero_notes = zero.attribute(checkpoint.refs_by_file)  # before the name checks: it renames
        checkpoint.problems += zero_problems
        checkpoint.notes += zero_notes
    checkpoint.problems += _empty_files(checkpoint)
    checkpoint.refs_by_file, quantizer_notes = quantized.as_quantizer_reads(files.root, checkpoint.refs_by_file)
    checkpoint.notes += quantizer_notes
    checkpoint.problems += loadability.uncastable(files, checkpoint.refs_by_file)  # (after: it is no unreadable file)
    checkpoint.problems += loadability.zero_norm_inputs(files, checkpoint.refs_by_file)
    stored = loadability.from_pretrained_weights(files, checkpoint.refs_by_file)
    # A model weight file (not an optimizer or trainer state file) that could not be read holds weights all the
    # same: compared with what the config builds, they would be called missing ("initialized at random", where
    # from_pretrained raises on the file), and looking for them builds the model for nothing. Compared once every
    # model weight file reads.
    # (a model shard its index lists that is missing, too; an unreadable trainer file, rng_state.pth, is no reason)
    unread = any(file not in checkpoint.refs_by_file and file_role(file.name) is None for file in files.files) or any(
        p.kind == UNREADABLE_KIND and file_role(Path(p.path).name) is None for p in checkpoint.problems)
    # (every name under a training wrapper's prefix: the one cause of every weight the model would call missing)
    wrapped = loadability.wrapped_names(files, stored.names)
    # (a pytorch_model.bin holding {"model": state_dict, …}: from_pretrained finds no weight in it)
    nested = nestedstate.problems(checkpoint.nested, stored.files)
    # (a quantizer's tensors config.json's quantizer will not read: the weights the model would call missing are those)
    quantizer = quantized.problems(files.root, stored.names, stored.shapes, stored.dtypes)
    skip = unread or bool(wrapped) or bool(nested) or bool(quantizer)
    shape_problems, shape_notes = ([], []) if skip else loadability.architecture_problems(files, stored)
    checkpoint.problems += shape_problems
    checkpoint.problems += loadability.adapter_problems(files, checkpoint.refs_by_file)
    checkpoint.problems += wrapped
    checkpoint.problems += nested
    checkpoint.problems += quantizer
    checkpoint.notes += shape_notes
    checkpoint.cast_to_float = loadability.cast_to_float(files, checkpoint.refs_by_file)
    checkpoint.scaled = quantized.scaled_pairs(files.root, checkpoint.refs_by_file)
    checkpoint.problems += loadability.integer_weights(files.root, checkpoint.cast_to_float)
    index_problems, index_notes = _check_indexes(files, checkpoint.refs_by_file)
    checkpoint.problems += index_problems
    checkpoint.notes += index_notes
    duplicate_problems, duplicate_notes = _check_duplicate_names(checkpoint.refs_by_file, files)
    checkpoint.problems += duplicate_problems
    checkpoint.notes += duplicate_notes
    if checkpoint.selection is not None:
        _select(checkpoint, checkpoint.selection)
    return checkpoint


_EMPTY_HINT = ("check what was saved: the model's state_dict (on rank 0 for an FSDP full state dict, which is "
               "empty on the other ranks), not an empty dict; scan the checkpoint that holds the weights")


def _empty_files(checkpoint: Checkpoint) -> list[ScanProblem]:
    """A checkpoint read whole that holds no tensor at all, and a safetensors file without one beside files that
    hold some: a gate over nothing would pass anything, and a model loaded from it gets none of its weights
    (transformers reports each one missing and initialises it at random). Pickled files without tensors beside
    weights are left alone (trainer metadata, an optimizer with no state yet: a note says so)."""
    if checkpoint.problems or not checkpoint.refs_by_file:  # a file that could not be read explains it already
        return []
    if not any(len(refs) for refs in checkpoint.refs_by_file.values()):
        files = list(checkpoint.refs_by_file)
        if len(files) == 1 and file_role(files[0].name) is not None:  # (scheduler.pt scanned alone: no weights meant)
            return [ScanProblem(str(checkpoint.path), f"holds no tensors: {files[0].name} is training state (its "
                                "settings read finite), not weights; there is nothing to check here",
                                "scan the checkpoint folder it belongs to: its weights are judged with it",
                                kind="empty")]
        return [ScanProblem(str(checkpoint.path), "holds no tensors: there is nothing to check, and a model loaded "
                            "from it gets none of its weights", _EMPTY_HINT, kind="empty")]
    empty = [file for file, refs in checkpoint.refs_by_file.items() if not len(refs) and file.suffix == ".safetensors"]
    if not empty:
        return []
    # (a shard an index lists is judged by its index: the tensors it maps there may lie in another shard it lists;
    # the shards' names first: a weight map names each shard once per tensor, and a Path each costs ~5 us)
    indexed = {index.path.parent / shard for index in checkpoint.files.indexes for shard in set(index.weight_map.values())}
    return [ScanProblem(str(file), f"{file.name} is a safetensors file that holds no tensors, beside files that hold "
                        "some", _EMPTY_HINT, kind="empty")
            for file in empty if file not in indexed]


def _select(checkpoint: Checkpoint, selection: Selection) -> None:
    """Leave out the tensors ``selection`` does not keep (after the cross-checks, which need them all)."""
    total = 0
    for file, refs in checkpoint.refs_by_file.items():
        total += len(refs)
        keeps = [selection.keeps(name) for name in names_of(refs)]
        rows = [i for i, kept in enumerate(keeps) if kept]
        roles = refs.roles if isinstance(refs, RefTable) else [ref.role for ref in refs]
        checkpoint.excluded_weights += sum(1 for kept, role in zip(keeps, roles) if not kept and role == "weight")
        checkpoint.refs_by_file[file] = refs.take(rows) if isinstance(refs, RefTable) else [refs[i] for i in rows]
    kept = sum(len(refs) for refs in checkpoint.refs_by_file.values())
    # (a numpy value pickled beside the tensors is selected by its name as a tensor is: --exclude 'message_hub.*')
    checkpoint.unviewed = [u for u in checkpoint.unviewed if not u.pickled or selection.keeps(u.storage)]
    checkpoint.excluded = total - kept
    if total and not kept:  # a gate over nothing would pass anything: fail closed
        checkpoint.problems.append(ScanProblem(
            str(checkpoint.path),
            f"{selection.describe()} leaves none of its {total:,} tensors to scan",
            "check the patterns: they are globs on the full tensor name (nandoctor scan --json lists the names)",
            kind="selection",
        ))
    elif checkpoint.excluded:
        checkpoint.notes.append(f"{checkpoint.excluded:,} of {total:,} tensors left out by {selection.describe()}; not read")


def _with_roles(refs: Sequence[TensorRef], file_name: str) -> Sequence[TensorRef]:
    given = refs.roles if isinstance(refs, RefTable) else [ref.role for ref in refs]
    roles = roles_of(names_of(refs), file_name, given)
    if not isinstance(refs, RefTable):
        # (a rate of the optimizer or its scheduler read from the pickle is the optimizer's, whatever file holds it:
        # scheduler.pt is trainer state, but a NaN base_lrs is the optimizer's lr at the next step)
        # (a quantized weight's scale is the weight's: its values are the scale's multiples)
        roles = [OPTIMIZER if is_pickled_float(ref) and not ref.name.endswith(QUANTIZER_SCALE) else role
                 for ref, role in zip(refs, roles)]
    if isinstance(refs, RefTable):
        return refs.with_roles(roles)
    return [ref if role == ref.role else dataclasses.replace(ref, role=role) for ref, role in zip(refs, roles)]


def names_of(refs: Sequence[TensorRef]) -> list[str]:
    """The tensors' names (a RefTable's column: no TensorRef made)."""
    return refs.names if isinstance(refs, RefTable) else [ref.name for ref in refs]


def _with_unscanned(problem: ScanProblem, file: Path, indexes: list[layout.ShardIndex]) -> ScanProblem:
    """A shard that could not be read, saying which of the index's tensors it held went unscanned: the report
    names what the gate could not see, not only the file."""
    names = sorted(name for index in indexes for name, shard in index.weight_map.items()
                   if (index.path.parent / shard) == file)
    if not names:
        return problem
    return dataclasses.replace(problem, message=f"{problem.message}; its {len(names)} tensor(s) in "
                               f"{indexes[0].path.name} were not scanned: {first_few(names, _MAX_LISTED_NAMES, quoted=True)}")


# non-persistent buffers a model computes as it is built (the rotary frequencies, GPT-2's causal mask), which some
# indexes of older conversions still list
_REBUILT_BUFFER = re.compile(r"(?:^|\.)(?:rotary_emb\.inv_freq|attn\.(?:masked_)?bias)$")


def problem_of(file: Path, exc: NandoctorError | OSError) -> ScanProblem:
    """An error reading ``file`` as a problem of it (the file name is not repeated in the message)."""
    if isinstance(exc, OSError):
        exc = access.unreadable(file, exc)  # says what to do: permissions, the disk
    message = exc.message
    prefix = f"{file}: "
    return ScanProblem(str(file), message.removeprefix(prefix), exc.hint)


def _check_indexes(
    files: layout.CheckpointFiles, refs_by_file: dict[Path, Sequence[TensorRef]]
) -> tuple[list[ScanProblem], list[str]]:
    """(problems, notes) of each index against its shards. Loaders use an index to choose the shard files, then
    read every tensor of each (transformers 4 and 5, vLLM): a tensor the index maps to one shard and that lies in
    another it lists still loads, as does one it does not list (a stale index: notes); a tensor it maps that no
    shard holds is missing from the model (a problem). Two shards holding one name: _check_duplicate_names."""
    problems: list[ScanProblem] = []
    notes: list[str] = []
    for index in files.indexes:
        folder = index.path.parent
        by_shard: dict[str, list[str]] = {}
        for name, shard in index.weight_map.items():
            by_shard.setdefault(shard, []).append(name)
        read = {shard: set(names_of(refs_by_file[folder / shard])) for shard in by_shard if folder / shard in refs_by_file}
        held = set().union(*read.values()) if read else set()
        listed = set(index.weight_map)
        moved: list[str] = []
        for shard, names in sorted(by_shard.items()):
            if shard not in read:
                continue  # missing or unreadable: already reported
            present = read[shard]
            elsewhere = set(names) - present
            absent = sorted(n for n in elsewhere if n not in held)
            moved += sorted(n for n in elsewhere if n in held)
            # (buffers models rebuild and never load, which old conversions' indexes still list: Llama's
            # rotary_emb.inv_freq; from_pretrained ignores the entry, and an adversarial round's loaded and generated)
            stale = [n for n in absent if _REBUILT_BUFFER.search(n)]
            if stale:
                notes.append(f"{folder / shard}: {index.path.name} maps {len(stale)} buffer(s) here that no shard holds "
                             f"({first_few(stale, _MAX_LISTED_NAMES, quoted=True)}): models rebuild them and loaders "
                             "ignore the entries (an index from an older save); re-save to bring it up to date")
                absent = [n for n in absent if n not in stale]
            if absent:
                problems.append(ScanProblem(
                    str(folder / shard),
                    f"{len(absent)} tensors that {index.path.name} maps here are absent from every shard: "
                    f"{first_few(absent, _MAX_LISTED_NAMES, quoted=True)}",
                    "the index and the shards come from different saves; re-save or re-download",
                ))
            unlisted = sorted(present - listed)
            if unlisted:
                notes.append(f"{folder / shard}: {len(unlisted)} tensors are not in {index.path.name} "
                             f"({first_few(unlisted, _MAX_LISTED_NAMES, quoted=True)}): loaders read every tensor of "
                             "the shards an index lists, so they load them too (scanned)")
        if moved:
            notes.append(f"{index.path}: {len(moved)} tensors lie in another shard than it says "
                         f"({first_few(moved, _MAX_LISTED_NAMES, quoted=True)}): loaders read every shard it lists, "
                         "so they load; re-save the checkpoint to bring the index up to date")
    return problems, notes


_SHARD_NAME = re.compile(r"-\d+-of-\d+\.")


def _is_shard(file: Path, indexed: set[Path]) -> bool:
    """Part of one model split across files (listed in an index, or named like ``*-00001-of-00004.*``)."""
    return file in indexed or bool(_SHARD_NAME.search(file.name)) or file.suffix == ".distcp"


def _check_duplicate_names(
    refs_by_file: dict[Path, Sequence[TensorRef]], files: layout.CheckpointFiles
) -> tuple[list[ScanProblem], list[str]]:
    """The same tensor name in two shards of one model is ambiguous (a problem); in two separate
    checkpoints side by side (``epoch=1.ckpt``, ``epoch=2.ckpt``) it is expected (a note)."""
    if sum(1 for refs in refs_by_file.values() if refs) < 2:
        return [], []  # names within one file: its reader has refused duplicates, or they are views of it
    # (each shard by the index that lists it: a sharded dtype variant's set, model.safetensors.index.fp16.json's,
    # beside the default set is another model, as a single-file variant is: from_pretrained loads one of them)
    index_of = {index.path.parent / shard: index.path for index in files.indexes for shard in set(index.weight_map.values())}
    indexed = set(index_of)
    seen: dict[tuple[bool, str, tuple[int, ...] | None], Path] = {}
    problems: list[ScanProblem] = []
    shared: dict[tuple[Path, Path], list[str]] = {}  # separate checkpoints → the names they share
    for file, refs in refs_by_file.items():
        is_safetensors = file.suffix.lower() == ".safetensors"  # --both-formats: each format may hold every name
        # chunks of one DCP tensor share its name: the same chunk twice is what is ambiguous (a RefTable has none)
        chunks = repeat(None) if isinstance(refs, RefTable) else (r.chunk.offsets if r.chunk else None for r in refs)
        for name, chunk in zip(names_of(refs), chunks):
            other = seen.setdefault((is_safetensors, name, chunk), file)
            if other is file:  # (identity: a Path comparison per tensor costs more than the rest of the loop)
                continue
            if _is_shard(file, indexed) and _is_shard(other, indexed) and index_of.get(file) == index_of.get(other):
                problems.append(
                    ScanProblem(str(file), f"tensor {name!r} is also in {other.name}; which one loads is ambiguous")
                )
            else:
                shared.setdefault((other, file), []).append(name)
    return problems, _shared_notes(shared, files, indexed) + _hidden_indexes(shared, files)


def _hidden_indexes(shared: dict[tuple[Path, Path], list[str]], files: layout.CheckpointFiles) -> list[str]:
    """A note for each index whose shards from_pretrained never reads because the one-file weights it looks for first
    lie beside it, where they share no tensor name (when they do, _shared_notes says so)."""
    from nandoctor.checkpoint.loaders import single_file_of

    together = {file for pair in shared for file in pair}
    notes = []
    for index in files.indexes:
        single = single_file_of(index.path.name)
        other = index.path.parent / single if single else None
        if other is None or other not in files.files or other in together:
            continue
        notes.append(f"{other.name} and {index.path.name} lie side by side: transformers' from_pretrained loads "
                     f"{other.name} alone (it looks for it before {index.path.name}), and never the "
                     f"{len(set(index.weight_map.values()))} shard(s) the index lists; both were {SEPARATE}; delete "
                     f"the stale copy: {other.name}, or {index.path.name} and its shards")
    return notes


SEPARATE = "scanned as separate checkpoints (the report names the file of each bad tensor)"


def _named_from_root(notes: Sequence[str], file: Path, root: Path) -> list[str]:
    """A reader's notes, which begin with its file's name, naming it from the checkpoint folder instead where it lies
    in a subfolder (Megatron's ``mp_rank_00/model_optim_rng.pt`` and ``mp_rank_01/…``: one name, two files)."""
    relative = _relative(file, root)
    if relative in (file.name, "."):  # (".": a file scanned alone is its checkpoint's root)
        return list(notes)
    head = f"{file.name}: "
    return [f"{relative}: {note[len(head):]}" if note.startswith(head) else note for note in notes]


def _relative(file: Path, root: Path) -> str:
    """``file`` as named from the checkpoint folder ``root`` (its name alone when it lies elsewhere)."""
    try:
        return file.relative_to(root).as_posix()
    except ValueError:
        return file.name


def _shared_notes(shared: dict[tuple[Path, Path], list[str]], files: layout.CheckpointFiles,
                  indexed: set[Path]) -> list[str]:
    """One note per file that shares names with a sharded model's shards (not one per shard), saying which
    of the two a loader reads; a note per pair of other files (separate checkpoints side by side)."""
    if not shared:
        return []
    from nandoctor.checkpoint.loaders import single_file_of

    index_of = {index.path.parent / shard: index for index in files.indexes for shard in set(index.weight_map.values())}
    beside: dict[Path, tuple[set[Path], list[str]]] = {}  # a file outside the shards → (the shards, the names)
    notes = []
    ranks: set[Path] = set()  # Megatron's model-parallel rank files: one save, each rank its slice of every tensor
    for (a, b), names in shared.items():
        if _rank_files(a, b):
            ranks |= {a, b}
        elif _is_shard(a, indexed) != _is_shard(b, indexed):
            shard, other = (a, b) if _is_shard(a, indexed) else (b, a)
            shards, common = beside.setdefault(other, (set(), []))
            shards.add(shard)
            common.extend(names)
        else:
            # (named from the checkpoint folder where both sit in it: unet/… and unet_ema/… are otherwise one name)
            shown_a, shown_b = (_relative(f, files.root) for f in (a, b))
            notes.append(f"{shown_a} and {shown_b} share {len(names):,} tensor name(s) (e.g. {names[0]}); {SEPARATE}")
    for other, (shards, names) in beside.items():
        indexes = {index_of[s].path for s in shards if s in index_of}
        index = next(iter(indexes)) if len(indexes) == 1 else None
        whose = f"the {len(shards)} shard(s) of {index.name}" if index else f"{len(shards)} shard(s)"
        head = f"{other.name} and {whose} share {len(names):,} tensor name(s) (e.g. {names[0]})"
        if index is not None and other.parent == index.parent and single_file_of(index.name) == other.name:
            notes.append(f"{head}: transformers' from_pretrained loads {other.name} (it looks for it before "
                         f"{index.name}), so the shards are not what loads; both were {SEPARATE}; delete the stale "
                         f"copy: {other.name}, or {index.name} and its shards")
        else:
            notes.append(f"{head}; {SEPARATE}")
    if ranks:
        shown = sorted(_relative(f, files.root) for f in ranks)
        notes.append(f"{len(ranks)} model-parallel rank files ({first_few(shown, 2)}) hold slices of the same tensors, "
                     "as Megatron saves them: each is scanned, and a finding names its file")
    return notes


def _rank_files(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are two model-parallel ranks' files of one Megatron save (iter_N/mp_rank_TT[_PPP]/)."""
    return (a.name == b.name and a.parent.parent == b.parent.parent
            and all(MEGATRON_RANK.match(f.parent.name) for f in (a, b)))


__all__ = ["Checkpoint", "names_of", "open_checkpoint", "problem_of"]
