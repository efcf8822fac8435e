"""Path → which files hold the checkpoint's tensors.

A single file; a folder with a ``*.index.json`` (Hugging Face sharding, for
safetensors and ``.bin`` alike) and its shards; or a folder of weight files
without an index, such as a Trainer ``checkpoint-N`` (weights plus
``optimizer.pt``, ``scheduler.pt``, ``scaler.pt``, ``rng_state*.pth``; the
pickled ``training_args.bin`` is left out with a note). A ``.bin`` is left out
(with a note, unless ``both_formats``) only where loaders read the safetensors
of the same name instead; ``config.json``'s ``transformers_weights`` and the
subfolders a loader's manifest names are read as the loaders read them
(checkpoint/loaders.py). The index is validated here as far as
it can be without reading shards (shard exists, stays inside the folder, is a
regular file); the cross-check of tensor names against the shards happens in
the scan, once the shards' headers are read.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from nandoctor import access
from nandoctor.checkpoint import loaders
from nandoctor.checkpoint.jsonfiles import read_json
from nandoctor.checkpoint.lightninglogs import version_saves
from nandoctor.checkpoint.steps import DEEPSPEED_LATEST, DEEPSPEED_STATES, MEGATRON_RANK, checkpoints_in, deepspeed_tag
from nandoctor.errors import (
    CheckpointNotFoundError,
    CheckpointsElsewhereError,
    CorruptCheckpointError,
    NandoctorError,
    UnreadablePathError,
    UnsupportedFormatError,
)
from nandoctor.layers import natural_key
from nandoctor.model import ScanProblem
from nandoctor.verdict import UNLOADABLE_KIND
from nandoctor.wording import first_few, path_word

# Preferred first: when a folder holds both, safetensors is what loaders pick too.
INDEX_NAMES = (
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors.index.json",
)
# Pickled files with a weight suffix that hold no tensors worth scanning: left out of folder scans
# with a note (scanned alone they are read like any torch file: no code runs).
NOT_WEIGHTS = {
    "training_args.bin": "Trainer's training arguments (a pickled Python object, not tensors)",
}


@dataclass(frozen=True)
class ShardIndex:
    path: Path
    weight_map: dict[str, str]  # tensor name → shard file name (relative to the folder)
    total_size: int | None
    has_metadata: bool = True  # a "metadata" object beside the weight_map (transformers reads index["metadata"])


@dataclass
class CheckpointFiles:
    """The files to scan for one checkpoint, plus what was wrong with the layout itself."""

    root: Path
    files: list[Path]
    indexes: list[ShardIndex] = field(default_factory=list)
    problems: list[ScanProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # weight files left out on purpose (other format)
    shard_of: ShardOf | None = None  # a file scanned alone that an index beside it lists among other shards


@dataclass(frozen=True)
class ShardOf:
    """The index beside a file scanned alone that lists it as one of several shards: the checkpoint is the folder,
    and a clean shard says nothing of the others (a trial's scan of model-00001-of-00002 passed, no word of the
    NaN in the other shard)."""

    index: str | None  # its file name; None for numbered shards no index lists (the name says how many)
    shards: int  # the shard files it lists (or the name counts), this one included
    tensors: int | None  # the tensors it maps, in every shard; None without an index

    def to_json(self) -> dict[str, object]:
        return {"index": self.index, "shards": self.shards, "tensors": self.tensors}


def is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


TAR = ".tar"  # torch.save's file under the name PyTorch's tutorial gives a general checkpoint (model.tar, x.pth.tar)


def is_weight_file(entry: Path, suffixes: tuple[str, ...]) -> bool:
    """Whether a folder's ``entry`` is a weight file by its suffix (``suffixes``: weight_suffixes), or a ``.tar`` whose
    first bytes are torch.save's (a real tar archive beside the weights is none: an adversarial round's
    model_best.pth.tar with NaN went unread, a run of checkpoint_N.tar read as no checkpoint at all)."""
    suffix = entry.suffix.lower()
    if suffix in suffixes:
        return True
    if suffix != TAR:
        return False
    from nandoctor.readers.formats import looks_torch

    try:
        with open(entry, "rb") as handle:
            return looks_torch(handle.read(64))
    except OSError:
        return False


def weight_suffixes() -> tuple[str, ...]:
    from nandoctor.readers import supported_suffixes

    return supported_suffixes()


_MAX_LISTED = 5  # data files named in the note
# Suffixes of files that hold data (pickles, arrays, other frameworks' weights) but no format nandoctor
# reads: listed as not scanned, never passed over in silence (accelerate's random_states_0.pkl).
_DATA_SUFFIXES = (".pkl", ".pickle", ".npy", ".npz", ".h5", ".hdf5", ".msgpack", ".joblib", ".onnx", ".tflite", ".keras")


def unscanned_notes(root: Path) -> list[str]:
    """A note naming the data files in the folder ``root`` that no reader of ours opens."""
    if not root.is_dir():
        return []
    supported = weight_suffixes()
    try:
        names = sorted(
            e.name for e in root.iterdir()
            if e.suffix.lower() in _DATA_SUFFIXES and e.suffix.lower() not in supported and not e.name.startswith(".")
        )
    except OSError:
        return []
    if not names:
        return []
    return [f"not scanned (not a format nandoctor reads): {first_few(names, _MAX_LISTED, quoted=True)}"]


def read_index(path: Path) -> ShardIndex:
    try:
        data = read_json(path)
    except OSError as exc:
        raise CorruptCheckpointError(str(path), f"cannot read the index: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CorruptCheckpointError(str(path), f"index is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("weight_map"), dict):
        raise CorruptCheckpointError(str(path), "index has no \"weight_map\" object")
    weight_map = data["weight_map"]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise CorruptCheckpointError(str(path), "weight_map must map tensor names to shard file names")
    meta = data.get("metadata")
    total = meta.get("total_size") if isinstance(meta, dict) else None
    return ShardIndex(path, dict(weight_map), total if type(total) is int else None, isinstance(meta, dict))


def _shard_path(root: Path, index: ShardIndex, shard: str) -> tuple[Path | None, ScanProblem | None]:
    """A shard listed in ``index``: relative to the index's own folder (as transformers resolves it), and
    inside the checkpoint folder ``root`` by its name (``../x``, an absolute name: refused). A shard that is a
    symbolic link is followed wherever it points, as a single weight file is and as transformers does: the
    folder's owner made the link (``cp -rs``, ``huggingface-cli download --local-dir`` with links). In a
    Hugging Face cache snapshot, whose files are links the hub client made into its own blobs, a link that
    leads anywhere else is refused: the cache was tampered with."""
    from nandoctor.checkpoint.hubcache import is_snapshot
    from nandoctor.checkpoint.loaders import inside

    unusable = access.unusable_name(shard)
    if unusable:
        return None, ScanProblem(str(index.path), f"shard name {shard[:60]!r}… is not a valid file name ({unusable}); "
                                 "refused", "fix the index's weight_map")
    folder = index.path.parent
    candidate = folder / shard
    base = os.path.abspath(root)
    escapes = os.path.isabs(shard) or os.path.commonpath([base, os.path.abspath(candidate)]) != base
    if not escapes and ".." in Path(shard).parts:
        # (transformers refuses any shard name holding `..` without resolving it, "has a shard filename that points
        # outside the model directory", since a cache's shards are links: `sub/a/../x` read CLEAN, an adversarial round)
        return None, ScanProblem(
            str(index.path),
            f"shard {shard!r} holds '..': from_pretrained refuses any shard name with '..' (\"points outside the model "
            "directory\"), even one that stays inside the folder, so the model does not load",
            "write each shard's name in the index as its path from the index's folder, without '..'",
            kind=UNLOADABLE_KIND,
        )
    if escapes or (is_snapshot(Path(base)) and inside(root, str(candidate.relative_to(root))) is None):
        return None, ScanProblem(
            str(index.path),
            f"shard {shard!r} points outside the checkpoint folder; refused",
            "fix the index so every shard is a file inside the folder",
        )
    try:
        present = access.exists(candidate)
    except UnreadablePathError as exc:
        return None, ScanProblem(exc.path, exc.reason, exc.hint)
    if not present and access.is_link(candidate):  # a Hugging Face snapshot whose blob is gone, say
        return None, not_regular_problem(candidate)
    if not present:
        names = sorted(n for n, s in index.weight_map.items() if s == shard)
        return None, ScanProblem(
            str(candidate),
            f"shard listed in {index.path.name} is missing ({len(names)} tensors, e.g. {names[0]!r})",
            "download or copy the missing shard",
        )
    if not is_regular_file(candidate):
        return None, not_regular_problem(candidate)
    return candidate, None


def discover(path: str | os.PathLike[str], *, both_formats: bool = False) -> CheckpointFiles:
    """Work out which files to scan for ``path``; raises when there is nothing to scan (and
    :class:`UnreadablePathError` when the file system will not say what is there)."""
    root = Path(path)
    found = access.status(root)
    if found is None:
        if access.is_link(root):  # a broken symlink, or a loop: say where it points
            reason, hint = access.not_regular(root)
            raise CheckpointNotFoundError(f"{root}: {reason}", hint)
        raise CheckpointNotFoundError(f"{root}: no such file or folder")
    if not stat.S_ISDIR(found.st_mode):
        if not stat.S_ISREG(found.st_mode):
            reason, hint = access.not_regular(root)
            raise UnsupportedFormatError(f"{root}: {reason}", hint)
        if root.suffix.lower() == ".json":  # an index, config.json, trainer_state.json: the folder is the checkpoint
            what = "the index of a sharded checkpoint" if loaders.is_index_name(root.name) else "a JSON file"
            raise UnsupportedFormatError(
                f"{root}: {what}, not weights",
                f"scan the checkpoint folder it belongs to: nandoctor scan {path_word(root.parent)}",
            )
        split = _gguf_split_set(root)
        if split is not None:
            return split
        return CheckpointFiles(root, [root], shard_of=_shard_of(root))
    result = _discover_folder(root, both_formats=both_formats, manifests=True)
    if not result.files and not result.problems:
        raise _nothing_found(root)
    return result


def gguf_split_folder(file: Path) -> Path | None:
    """The folder holding ``file`` when it is named as a file of a ``gguf-split`` set (its set is the checkpoint,
    repaired as that folder); None otherwise."""
    numbered = _NUMBERED_SHARD.match(file.name)
    if numbered is None or numbered["ext"].lower() != ".gguf" or not 1 < int(numbered["n"]) <= _MAX_SHARD_COUNT:
        return None
    from nandoctor.readers.gguf import split_count

    # (a whole model under a set's name: llama.cpp loads it alone, a review's false "files missing")
    return file.parent if (split_count(file) or 1) > 1 else None


def _gguf_split_set(file: Path) -> CheckpointFiles | None:
    """A file of a ``gguf-split`` set (``model-00001-of-00003.gguf``) is its whole set: llama.cpp and ollama are
    given the first file and load every file its name counts, so a scan of that path scans them all, and a
    missing one is exit 3 (a trial: the first file passed CLEAN, the NaN lay in the second). The set's files are the
    names llama.cpp builds (``<prefix>-%05d-of-%05d.gguf``), not any file whose digits read the same (a stray
    ``m-2-of-00002.gguf`` took the second file's place). None for any other file."""
    numbered = _NUMBERED_SHARD.match(file.name)
    if numbered is None or gguf_split_folder(file) is None:
        return None
    count = int(numbered["n"])
    expected = [file.parent / f"{numbered['stem']}-{k:05d}-of-{count:05d}.gguf" for k in range(1, count + 1)]
    present = [path for path in expected if is_regular_file(path)]
    files = present if file in present else [file, *present]
    result = CheckpointFiles(file, files)
    missing = [path for path in expected if path not in present]
    if missing:
        result.problems.append(ScanProblem(
            str(missing[0]), f"{len(missing)} of the {count} files of its gguf-split set missing "
            f"({first_few([p.name for p in missing], 4)}): llama.cpp loads every one of them",
            "copy the missing files of the gguf-split set from where the model came"))
    result.notes.append(f"{file.name}: one file of a gguf-split set of {count}; the set is scanned, as "
                        "llama.cpp loads it")
    return result


def _shard_of(file: Path) -> ShardOf | None:
    """The index beside ``file`` that lists it with other shards (the first such, by name); None when none does,
    or an index there cannot be read (the folder's own scan says why)."""
    try:
        # (names, not a Path per entry: a run of 1,600 step files scanned each file beside 1,600 others, a review's
        # 10.9 s, most of it building Paths of names no index has)
        with os.scandir(file.parent) as entries:
            indexes = sorted(file.parent / e.name for e in entries if loaders.is_index_name(e.name))
    except OSError:
        return None
    for path in indexes:
        try:
            index = read_index(path)
        except (NandoctorError, OSError):
            continue
        shards = set(index.weight_map.values())
        if file.name in shards and len(shards) > 1:
            return ShardOf(path.name, len(shards), len(index.weight_map))
    numbered = _NUMBERED_SHARD.match(file.name)  # (model-00001-of-00003.safetensors: the name says so; a GGUF's
    # set is its split.count's, _gguf_split_set)
    if (numbered and numbered["ext"].lower() != ".gguf" and 1 < int(numbered["n"]) <= _MAX_SHARD_COUNT
            and int(numbered["k"]) <= int(numbered["n"])):
        return ShardOf(None, int(numbered["n"]), None)
    return None


def _nothing_found(root: Path) -> UnsupportedFormatError:
    """No weights at the folder's top: name the subfolders that hold some (a folder of model folders, a run's project
    or logger folder), or say none does."""
    looked = f"looked for {', '.join(weight_suffixes())} and *.index.json"

    holding = [sub for sub, inside in _weight_subfolders(access.listing(root)) if isinstance(inside, list)]
    runs = [sub for sub in access.listing(root) if access.is_dir(sub, refused=False) and checkpoints_in(sub)]
    if runs:  # (accelerate's project folder: its run is checkpoints/checkpoint_N, whatever else lies beside it: a
        # repair's checkpoint_2-bad set aside there, which a trial's hint named instead of the run)
        beside = f"; {first_few([f'{sub.name}/' for sub in holding], 5)} beside it hold weights too" if holding else ""
        return CheckpointsElsewhereError(
            f"{root}: no checkpoint files at its top, but {first_few([f'{r.name}/' for r in runs], 5)} holds a "
            f"run of checkpoints{beside}", f"scan the run: nandoctor scan {path_word(runs[0])}")
    if not holding:
        deeper = _deeper_weights(root)
        versions = _version_folders(deeper)
        if versions:  # (Lightning's default: lightning_logs/version_N/checkpoints/, each version folder the run)
            shown = first_few([str(p.relative_to(root)) + "/" for p in versions], 3)
            what = "is a Lightning run" if len(versions) == 1 else "are Lightning runs"
            return CheckpointsElsewhereError(
                f"{root}: no checkpoint here; deeper, {shown} {what} (step files in checkpoints/, the logger's files "
                "beside them)", f"scan the run{'' if len(versions) == 1 else ', e.g. the newest'}: nandoctor scan "
                f"{path_word(versions[-1])}")
        if deeper:
            shown = first_few([str(p.relative_to(root)) + "/" for p in deeper], 3)
            return CheckpointsElsewhereError(
                f"{root}: no checkpoint files at its top; deeper, {shown} hold some",
                f"scan one of them, e.g. the last: nandoctor scan {path_word(deeper[-1])}")
        return UnsupportedFormatError(f"{root}: no checkpoint files found ({looked})")
    shown = first_few([f"{sub.name}/" for sub in holding], 5)
    return CheckpointsElsewhereError(
        f"{root}: no checkpoint files at its top, but {len(holding)} subfolder(s) hold weights: {shown}",
        f"scan one of them, e.g. nandoctor scan {path_word(holding[0])}",
    )


def _version_folders(deeper: list[Path]) -> list[Path]:
    """The Lightning logger version folders (lightninglogs.version_saves) whose ``checkpoints/`` of ``.ckpt`` files are all
    of ``deeper``, in its order; [] where any is not (runs are named only where all of them are)."""
    versions = []
    for folder in deeper:
        try:
            if (version_saves(folder.parent, access.listing(folder.parent)) != folder
                    or not any(e.suffix.lower() == ".ckpt" for e in access.listing(folder))):
                return []
        except UnreadablePathError:
            return []
        versions.append(folder.parent)
    return versions


def _discover_folder(root: Path, *, both_formats: bool, manifests: bool) -> CheckpointFiles:
    result = CheckpointFiles(root, [])
    try:
        entries = access.listing(root)
    except UnreadablePathError as exc:  # a problem of this checkpoint (a run's row, a loader's subfolder)
        result.problems.append(ScanProblem(exc.path, exc.reason, exc.hint))
        return result
    if _dcp_folder(root, entries, result):
        return result
    suffixes = weight_suffixes()
    weight_files = [e for e in entries if is_weight_file(e, suffixes) and not e.name.startswith(".")]
    for entry in [e for e in weight_files if e.name in NOT_WEIGHTS]:  # not weights: a repair copies it as is
        result.notes.append(f"{entry.name}: {NOT_WEIGHTS[entry.name]}; not scanned")
        weight_files.remove(entry)
    index_paths = [root / n for n in INDEX_NAMES if (root / n).exists()]
    index_paths += [e for e in entries if loaders.is_index_name(e.name) and e not in index_paths]

    explicit = loaders.explicit_weights(root)
    result.problems += explicit.problems
    result.notes += explicit.notes
    if explicit.path is not None:
        if loaders.is_index_name(explicit.path.name):
            index_paths += [explicit.path] if explicit.path not in index_paths else []
        elif explicit.path not in weight_files:
            weight_files.append(explicit.path)

    if not both_formats:
        _skip_hidden(root, weight_files, index_paths, result, keep=explicit.path)

    indexed: set[Path] = set()
    refused: set[Path] = set()
    for index_path in index_paths:
        try:
            index = read_index(index_path)
        except CorruptCheckpointError as exc:
            single = loaders.single_file_of(index_path.name)
            if single is not None and index_path.parent / single in weight_files and index_path != explicit.path:
                # (from_pretrained finds the one-file weights first and never opens this index: an adversarial round's
                # healthy model.safetensors beside a broken index read UNREADABLE)
                result.notes.append(f"{index_path.name}: {exc.reason}; transformers' from_pretrained loads {single} "
                                    "beside it and never reads it: delete the stale index")
                continue
            result.problems.append(ScanProblem(str(index_path), exc.reason, exc.hint))
            continue
        result.indexes.append(index)
        for shard in sorted(set(index.weight_map.values())):
            shard_path, problem = _shard_path(root, index, shard)
            if problem:
                result.problems.append(problem)
                refused.add(index.path.parent / shard)  # said once, as the index's shard
            elif shard_path is not None and shard_path not in indexed:
                indexed.add(shard_path)
                result.files.append(shard_path)

    # A safetensors index names safetensors shards: from_pretrained opens each with safe_open, and a torch file among
    # them fails the load ("header too large"; an adversarial round's .bin shard in a safetensors index read CLEAN).
    # (A .bin index may list safetensors shards: transformers loads each by its own extension.)
    for index in result.indexes:
        if ".safetensors.index" not in index.path.name:
            continue
        foreign = sorted({shard for shard in index.weight_map.values() if not shard.endswith(".safetensors")})
        if foreign:
            result.problems.append(ScanProblem(
                str(index.path), f"lists {first_few(foreign, 2)}, not safetensors file(s): transformers' from_pretrained "
                "opens every shard of a safetensors index as safetensors, and fails on them",
                "convert those shards to safetensors (safetensors.torch.save_file of their state dict) and list them "
                "under their new names, or write a pytorch_model.bin.index.json for them instead",
                kind=UNLOADABLE_KIND))

    # A numbered shard that no index lists beside an index listing shards of that name: loaders read the shards the
    # index names, never it. Of the listed set itself (model-00007-of-00007 beside an index naming 1-6 of 7), the
    # index is incomplete and its tensors reach no model: a problem. Of another count, a leftover of an earlier
    # save: a note (scanned, it made the set look incomplete or its tensors ambiguous, where the model loads).
    listed_sets = set(numbered_shards(sorted(indexed)))
    listed_stems = {(stem, ext) for stem, _, ext in listed_sets}
    for entry in weight_files:
        match = _NUMBERED_SHARD.match(entry.name)
        if entry in indexed or entry in refused or not match or (match["stem"], match["ext"]) not in listed_stems:
            continue
        refused.add(entry)
        if (match["stem"], match["n"], match["ext"]) in listed_sets:
            result.problems.append(ScanProblem(
                str(entry), f"{entry.name} is a shard of the set the index lists, but the index does not list it: "
                "loaders never read its tensors (from_pretrained initializes the weights it holds at random)",
                "copy the *.index.json from where the checkpoint was saved, or save the model again (save_pretrained)",
                kind=UNLOADABLE_KIND))
        else:
            result.notes.append(f"{entry.name}: a numbered shard of another count than the set the index lists (a "
                                f"leftover of an earlier save): loaders read only the shards the index names; not "
                                f"scanned (nandoctor scan {path_word(entry)} checks it alone)")
    for entry in weight_files:
        if entry in indexed or entry in refused:
            continue
        if not is_regular_file(entry):
            result.problems.append(not_regular_problem(entry))
            continue
        result.files.append(entry)

    result.problems += _missing_numbered_shards(root, [f for f in result.files if f not in indexed])
    subfolders = loaders.manifest_subfolders(root) if manifests else loaders.Subfolders()
    result.problems += subfolders.problems
    for sub in subfolders.folders:
        _merge_subfolder(result, sub, both_formats, "weight file(s) a loader reads")
    distributed = _fsdp_subfolders(entries)
    for sub in distributed:
        _merge_subfolder(result, sub, both_formats, None)  # (its own note says what it is)
    hooked = models_beside_state(entries, weight_files)
    for sub in hooked:
        _merge_subfolder(result, sub, both_formats, "weight file(s) of a model saved beside the trainer state")
    _subfolders(entries, result, set(subfolders.folders) | set(distributed) | set(hooked))
    result.problems += _missing_rank_folders(root, entries)
    return result


def _missing_rank_folders(root: Path, entries: list[Path]) -> list[ScanProblem]:
    """A Megatron iteration scanned on its own that lacks a model-parallel rank folder (its args say it was saved
    with, or a hole in its grid): the ranks it holds may be clean, and Megatron's load of it still fails (a review:
    iter_N/ saved with tensor-parallel size 2, its mp_rank_01/ gone, read CLEAN)."""
    from nandoctor.checkpoint.megatron import missing_ranks

    lacking = missing_ranks(root, entries)
    if lacking is None:
        return []
    return [ScanProblem(str(root), lacking.words,
                        "copy the missing rank folders from where the iteration was saved, or resume an iteration "
                        "that holds every rank")]


def models_beside_state(entries: list[Path], weight_files: list[Path]) -> list[Path]:
    """The model folders of an ``accelerator.save_state`` checkpoint whose save hook wrote each model into a
    subfolder of its own (diffusers' training scripts: ``checkpoint-N/unet/`` with config.json and
    ``diffusion_pytorch_model.safetensors``, beside ``optimizer.bin``, ``scheduler.bin``,
    ``random_states_0.pkl``): where the folder's top holds trainer state and no model weights, every
    subfolder holding a config.json and weights is the checkpoint's model, scanned with it."""
    from nandoctor.checkpoint.roles import file_role

    if not weight_files or any(file_role(f.name) is None for f in weight_files):
        return []  # the model is at the top (or there is no trainer state): nothing hidden below
    suffixes = weight_suffixes()
    found = []
    for sub in entries:
        if sub.name.startswith(".") or not access.is_dir(sub, refused=False):
            continue
        try:
            inside = access.listing(sub)
        except UnreadablePathError:
            continue  # (_subfolders notes a folder that cannot be listed)
        names = {e.name for e in inside}
        if (loaders.CONFIG in names or "adapter_config.json" in names) and any(
                e.suffix.lower() in suffixes and not e.name.startswith(".") for e in inside):
            found.append(sub)
    return found


def _skip_hidden(
    root: Path, weight_files: list[Path], index_paths: list[Path], result: CheckpointFiles, keep: Path | None
) -> None:
    """Leave out the torch weights (and their indexes and shards) that loaders pass over for the
    safetensors of the same name; nothing else is left out (``keep``: the file config.json names)."""
    hidden: dict[Path, str] = {}
    for index_path in list(index_paths):
        by = loaders.hidden_by(index_path.name, root)
        if by is None or index_path == keep:
            continue
        index_paths.remove(index_path)
        hidden[index_path] = by
        try:  # its shards go with it, whatever they are called
            shards = set(read_index(index_path).weight_map.values())
        except CorruptCheckpointError:
            shards = set()
        for entry in weight_files:
            if entry.name in shards:
                hidden[entry] = by
    for entry in weight_files:
        by = loaders.hidden_by(entry.name, root)
        if by is not None and entry != keep:
            hidden[entry] = by
    if not hidden:
        return
    weights = sorted(p for p in hidden if p in weight_files)
    result.skipped.extend(weights)
    weight_files[:] = [e for e in weight_files if e not in hidden]
    shown = ", ".join(p.name for p in weights[:3]) + (" …" if len(weights) > 3 else "")
    by = ", ".join(sorted(set(hidden.values())))
    result.notes.append(
        f"found both safetensors and .bin weights of the same name ({shown} beside {by}); scanned the "
        f"safetensors, which transformers and PEFT load ({BOTH_FORMATS_HINT})"
    )


BOTH_FORMATS_HINT = "use --both-formats to scan both"  # (a run repeats such a note of its deciding rows: runs.py)


def _merge_subfolder(result: CheckpointFiles, sub: Path, both_formats: bool, what: str | None) -> None:
    """Weights of a subfolder that is part of the checkpoint: one a loader reads (sentence-transformers
    ``2_Dense/``, diffusers ``unet/``: ``what`` its files are, for the note) or accelerate's FSDP state
    (``what`` None: one that holds nothing to scan is a problem, for the state it should hold is lost)."""
    found = _discover_folder(sub, both_formats=both_formats, manifests=False)
    result.files += found.files
    result.indexes += found.indexes
    result.problems += found.problems
    result.skipped += found.skipped
    result.notes += [f"{sub.name}/: {note}" for note in found.notes]
    if found.files and what is not None:
        result.notes.append(f"{sub.name}/: {len(found.files)} {what}, scanned with the checkpoint")
    elif what is None and not found.files and not found.problems:
        result.problems.append(ScanProblem(
            str(sub), "holds no checkpoint files (no .metadata, no .distcp): the state saved here is lost",
            "copy the folder again from where the checkpoint was saved, or resume from an earlier checkpoint"))


# accelerate's FSDP SHARDED_STATE_DICT saves (Trainer's checkpoint-N, accelerator.save_state) keep the model and
# each optimizer as a torch.distributed.checkpoint folder of its own beside the trainer's files
# (accelerate's save_fsdp_model / save_fsdp_optimizer: ``pytorch_model_fsdp_0/``, ``optimizer_0/``)
FSDP_MODEL_FOLDER = re.compile(r"^pytorch_model_fsdp_\d+$")
FSDP_OPTIMIZER_FOLDER = re.compile(r"^optimizer_\d+$")


def _fsdp_subfolders(entries: list[Path]) -> list[Path]:
    """The FSDP model and optimizer folders among a checkpoint folder's ``entries`` (links too: followed, as
    accelerate's load follows them)."""
    return [e for e in entries if (FSDP_MODEL_FOLDER.match(e.name) or FSDP_OPTIMIZER_FOLDER.match(e.name))
            and access.is_dir(e, refused=True)]


def _dcp_folder(root: Path, entries: list[Path], result: CheckpointFiles) -> bool:
    """A torch.distributed.checkpoint folder: its files are the ones its ``.metadata`` names, all of them, and
    any other weight file beside them (Lightning's sharded ``epoch=0-step=N.ckpt/`` keeps its loops and
    callbacks in ``meta.pt``: part of the checkpoint, never passed over)."""
    from nandoctor.readers.formats import dcp_metadata_files

    found = dcp_metadata_files(root)
    if not found:
        return False
    from nandoctor.readers.dcp import metadata_for

    try:
        metadata = metadata_for(root)
    except CorruptCheckpointError as exc:
        result.problems.append(ScanProblem(exc.path, exc.reason, exc.hint))
        return True
    assert metadata is not None
    result.notes.append(
        f"torch.distributed.checkpoint folder: {len(metadata.tensors):,} tensors in {len(metadata.files)} "
        f"file(s), read through {', '.join(f.name for f in found)}"
    )
    from nandoctor.readers.dcp_coverage import coverage_problems

    result.problems += coverage_problems(metadata, str(found[0]))  # chunks that leave out or repeat elements
    for name in metadata.files:
        candidate = root / name
        unusable = access.unusable_name(name)
        if unusable:
            result.problems.append(ScanProblem(str(found[0]), f"storage file {name[:60]!r} is not a valid file name "
                                               f"({unusable}); refused", "re-copy .metadata from where it was saved"))
        elif os.path.isabs(name) or candidate.resolve().parent != root.resolve():
            where = "lies outside the folder" if os.path.isabs(name) or ".." in name.split("/") else "lies in a subfolder"
            result.problems.append(ScanProblem(str(found[0]), f"storage file {name!r} {where}; refused (dcp.save writes "
                                               "every .distcp file beside .metadata)", "re-copy .metadata from where it was saved"))
        elif not is_regular_file(candidate) and access.is_link(candidate):
            result.problems.append(not_regular_problem(candidate))
        elif not is_regular_file(candidate):
            lost = sorted({item.fqn for item in metadata.items_in(name)})
            result.problems.append(ScanProblem(
                str(candidate),
                f"missing ({len(lost)} item(s) of the checkpoint, e.g. {lost[0]!r})",
                "copy every .distcp file of the save (one or more per rank) into the folder",
            ))
        else:
            result.files.append(candidate)
    suffixes = weight_suffixes()
    beside = [e for e in entries if e.suffix.lower() in suffixes and e.suffix.lower() != ".distcp"
              and not e.name.startswith(".") and e.name not in NOT_WEIGHTS]
    for entry in beside:
        if is_regular_file(entry):
            result.files.append(entry)
        else:
            result.problems.append(not_regular_problem(entry))
    if beside:
        result.notes.append(f"{', '.join(e.name for e in beside)}: beside the .distcp files, scanned with them")
    return True


# DeepSpeed saves ZeRO partitions of the weights and optimizer states (fp32 masters included) in
# checkpoint-N/global_stepN/; a NaN there poisons a resumed run, so they are part of the checkpoint. Beside them,
# DeepSpeed's ``latest`` names the folder (its tag) to load: ``global_stepN``, or Lightning's DeepSpeed strategy's
# ``checkpoint`` inside an ``epoch=0-step=N.ckpt/`` folder (steps.DEEPSPEED_STATES, steps.DEEPSPEED_LATEST).
def model_in_subfolder(folder: Path, entries: list[Path]) -> bool:
    """Whether ``folder`` (whose listing is ``entries``) keeps its model in a subfolder its layout scans:
    accelerate's FSDP sharded state (``pytorch_model_fsdp_0/``), DeepSpeed's ZeRO partitions
    (``global_stepN/``, or the folder DeepSpeed's ``latest`` names: Lightning's ``checkpoint/``), Megatron's
    model-parallel ranks (``mp_rank_00/``)."""
    fsdp, zero = partition_folders(folder, entries)
    return bool(fsdp or zero) or any(MEGATRON_RANK.match(e.name) for e in entries)


def partition_folders(folder: Path, entries: list[Path]) -> tuple[list[str], list[str]]:
    """(accelerate's FSDP sharded model folders, DeepSpeed's ZeRO folders) among ``folder``'s ``entries``, by
    name; the ZeRO folder DeepSpeed's ``latest`` names first (the one its loaders read)."""
    fsdp = sorted(e.name for e in entries if FSDP_MODEL_FOLDER.match(e.name))
    zero = sorted((e.name for e in entries if DEEPSPEED_STATES.match(e.name)), key=natural_key, reverse=True)
    tag = deepspeed_tag(folder) if any(e.name == DEEPSPEED_LATEST for e in entries) else None
    if tag is not None and any(e.name == tag for e in entries):
        zero = [tag, *(name for name in zero if name != tag)]
    return fsdp, zero


_DEEPER = 3  # folder levels below a folder without weights that are looked at for some (the 2nd and 3rd)
_DEEPER_FOLDERS = 256  # at most this many folders listed: a home folder named by mistake is not walked whole


def _deeper_weights(root: Path) -> list[Path]:
    """The folders two or three levels below ``root`` that hold weight files at their top, in name order (the
    last: the newest of ``version_0``, ``version_1``…), from a bounded walk; [] when none or too many to list."""
    level, listed = [root], 0
    for _depth in range(_DEEPER):
        subs: list[Path] = []
        for folder in level:
            try:
                entries = access.listing(folder)
            except UnreadablePathError:
                continue
            listed += 1
            if listed > _DEEPER_FOLDERS:
                return []
            subs += sorted((e for e in entries if not e.name.startswith(".") and not access.is_link(e)
                            and access.is_dir(e, refused=False)), key=lambda p: natural_key(p.name))
        holding = [sub for sub, inside in _weight_subfolders(subs) if isinstance(inside, list)] if _depth else []
        if holding:
            return holding
        level = subs
    return []


def _weight_subfolders(
    entries: list[Path], skip: set[Path] | frozenset[Path] = frozenset()
) -> list[tuple[Path, list[Path] | UnreadablePathError]]:
    """(subfolder, its weight files) of every subfolder among a folder's ``entries`` that holds weight files
    at its top, by name; ``skip``: files already accounted for. A subfolder that cannot be listed comes with
    the error instead (the caller says whether that matters)."""
    suffixes = weight_suffixes()
    found: list[tuple[Path, list[Path] | UnreadablePathError]] = []
    for sub in entries:
        if sub.name.startswith(".") or access.is_link(sub) or not access.is_dir(sub):
            continue
        try:
            inside = [e for e in access.listing(sub)
                      if e.suffix.lower() in suffixes and not e.name.startswith(".") and e not in skip]
        except UnreadablePathError as exc:
            found.append((sub, exc))
            continue
        if inside:
            found.append((sub, inside))
    return found


def _subfolders(entries: list[Path], result: CheckpointFiles, read: set[Path]) -> None:
    """Scan DeepSpeed's global_stepN/ (or the folder its ``latest`` names) with the checkpoint; note any other
    subfolder that holds weights not already scanned (``read``: the subfolders a loader's manifest names and
    the FSDP ones, read above). A DeepSpeed folder that cannot be listed is a problem (its states would go
    unscanned); another subfolder, a note."""
    scanned = set(result.files) | set(result.skipped)
    tag = deepspeed_tag(result.root) if any(e.name == DEEPSPEED_LATEST for e in entries) else None
    for sub, inside in _weight_subfolders([e for e in entries if e not in read], scanned):
        part = ("DeepSpeed state" if DEEPSPEED_STATES.match(sub.name) is not None or sub.name == tag
                else "Megatron model-parallel rank" if MEGATRON_RANK.match(sub.name) else None)
        if isinstance(inside, UnreadablePathError):
            if part is not None:
                result.problems.append(ScanProblem(inside.path, f"{inside.reason} (its {part} files are not "
                                                   "scanned)", inside.hint))
            else:
                result.notes.append(f"{sub.name}/ could not be listed ({inside.reason}); not checked for weights")
            continue
        if part is not None:
            regular = [e for e in inside if is_regular_file(e)]
            result.files += regular
            result.notes.append(f"{sub.name}/: {len(regular)} {part} file(s) scanned with the checkpoint")
            result.problems += [not_regular_problem(e) for e in inside if e not in regular]
        else:
            result.notes.append(
                f"{sub.name}/ holds {len(inside)} weight file(s) that were not scanned; to check them: "
                f"nandoctor scan {path_word(sub)}"
            )


def not_regular_problem(path: Path) -> ScanProblem:
    """A weight file that is not a regular file (a broken symlink, a FIFO …) as a problem saying which."""
    try:
        reason, hint = access.not_regular(path)
    except UnreadablePathError as exc:
        return ScanProblem(exc.path, exc.reason, exc.hint)
    return ScanProblem(str(path), reason, hint)


# Numbered shards as their writers name them: transformers, huggingface_hub and gguf-split pad both numbers to five
# digits (``model-00001-of-00003.safetensors``). An unpadded ``fold-1-of-5.pt`` is a whole model of a series, not a
# fifth of one (a review: its folder was "4 of 5 numbered shards missing", exit 3).
_NUMBERED_SHARD = re.compile(r"^(?P<stem>.+)-(?P<k>\d{5,})-of-(?P<n>\d{5,})(?P<ext>\.[A-Za-z]+)$")
_MAX_SHARD_COUNT = 100_000  # beyond: not a shard count


def numbered_shards(files: list[Path]) -> dict[tuple[str, str, str], dict[int, Path]]:
    """Files named like numbered shards (``model-00001-of-00003.safetensors``) by (stem, count as written,
    suffix), each set as {shard number: file}."""
    groups: dict[tuple[str, str, str], dict[int, Path]] = {}
    for file in files:
        match = _NUMBERED_SHARD.match(file.name)
        if match and int(match["n"]) <= _MAX_SHARD_COUNT:
            groups.setdefault((match["stem"], match["n"], match["ext"]), {})[int(match["k"])] = file
    return groups


def _missing_numbered_shards(root: Path, unindexed: list[Path]) -> list[ScanProblem]:
    """Shards named ``model-00001-of-00003.safetensors`` with no index still say how many there are:
    a folder missing some of them holds part of a model, which must not pass as a clean checkpoint. (A set an
    index lists is judged by its index: _discover_folder.)"""
    problems = []
    for (stem, n, ext), present in numbered_shards(unindexed).items():
        if ext.lower() == ".gguf" and not any(gguf_split_folder(path) for path in present.values()):
            continue  # (whole GGUF models under a set's names: llama.cpp loads each alone; a review)
        first = _NUMBERED_SHARD.match(next(iter(present.values())).name)
        assert first is not None
        width, total = len(first["k"]), int(n)
        missing = [k for k in range(1, total + 1) if k not in present]
        if missing:
            names = [f"{stem}-{k:0{width}d}-of-{n}{ext}" for k in missing]
            shown = first_few(names, 4)
            problems.append(
                ScanProblem(
                    str(root / names[0]),
                    f"{len(missing)} of {total} numbered shards missing ({shown}), and no index says otherwise: "
                    "this folder holds part of a model",
                    "copy the missing files of the gguf-split set from where the model came" if ext.lower() == ".gguf"
                    else "copy the missing shards (and the *.index.json) from where the checkpoint was saved",
                )
            )
    return problems
