"""PyTorch ``.bin`` / ``.pt`` / ``.pth`` / ``.ckpt`` files read as byte ranges: no torch, no pickle code run.

The zip format (what ``torch.save`` writes): the archive's structure is
checked (zipentries), ``data.pkl`` is read by the restricted unpickler
(safe_pickle), the tensors found in it are named (torchnames) and become
views of storage regions read in place from the STORED ``data/<key>``
entries (torchrefs). The legacy format goes through torchlegacy. Anything
else that looks like a pickle is unpickled with the same restrictions only so
that a malicious file is named as such; it is never loaded.

Each storage's CRC-32 is checked against the zip directory (torch does not):
a mismatch is reported as corruption of that storage and of the tensors on
it, and the rest of the file is still scanned. ``defer_crcs=True`` leaves the
checks to the caller (``ReadResult.owed``: the scan pays them while it reads
the bytes anyway); otherwise they are a separate pass here (nandoctor.crc).
``NANDOCTOR_SKIP_CRC=1`` skips them (the report says so).
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, cast

from nandoctor.crc import check_owed, crc32, mismatch
from nandoctor.errors import (
    CorruptCheckpointError,
    NandoctorError,
    UnsafeCheckpointError,
    UnsupportedFormatError,
)
from nandoctor.model import UNLOADABLE_KIND, OwedCrc, ReadResult, Region, ScanProblem, UnviewedBad
from nandoctor.readers import magic
from nandoctor.readers.formats import TORCH, looks_legacy_torch, looks_torch
from nandoctor.readers.torch import nested, numpy_arrays, statedicts, weights_only
from nandoctor.readers.torch import version as archive_version
from nandoctor.readers.torch.legacy import LEGACY_PICKLES, NotLegacyError, read_legacy
from nandoctor.readers.torch.names import (
    Walk,
    WalkLimitError,
    add_unreached,
    hyperparameter_problems,
    scaler_problems,
    walk,
)
from nandoctor.readers.torch.quantized import pickled_float_refs, scale_refs
from nandoctor.readers.torch.refs import BuiltRefs, StorageBlock, build_refs, listed
from nandoctor.readers.torch.safe_pickle import UNREAD_TENSOR_GLOBALS, check_storage_id, restricted_load
from nandoctor.readers.torch.stubs import (
    META_TENSOR_GLOBAL,
    PickleFormatError,
    PickleTooLargeError,
    StorageRef,
    UnsafeGlobalError,
)
from nandoctor.readers.window import FileWindow
from nandoctor.readers.zipentries import (
    LOCAL_MAGIC,
    ZipDirectory,
    ZipEntry,
    ascii_fold,
    read_directory,
    read_entry,
)

MAX_PICKLE_BYTES = 1 << 30  # real data.pkl files are kilobytes to a few megabytes
MAX_META_BYTES = 1 << 20  # other small entries (version, .format_version …) are read and CRC-checked whole
SKIP_CRC_ENV = "NANDOCTOR_SKIP_CRC"

# Trainer / Accelerate files saved beside the weights: their tensors are named after the file
# (``optimizer.state.12.exp_avg``, ``rng_state_1.cuda``) so that two of them never share a name.
SIDE_FILE = re.compile(r"^(optimizer|scheduler|scaler|rng_state(_\d+)?)\.(pt|pth|bin)$")
# DeepSpeed: mp_rank_00_model_states.pt, zero_pp_rank_3_mp_rank_00_optim_states.pt, layer_05-model_states.pt …
DEEPSPEED_FILE = re.compile(r"^[\w.-]*(model|optim)_states\.pt$")

_UNSAFE_HINT = (
    "do not load this file with torch.load(weights_only=False) or pickle; nothing in it was executed. "
    "If you trust its source, load it in a sandbox and re-save the weights as safetensors"
)


class TorchReader:
    format_name = TORCH.name
    suffixes = TORCH.suffixes

    def sniff(self, head: bytes) -> bool:
        return looks_torch(head)

    def read(self, path: Path, *, defer_crcs: bool = False) -> ReadResult:
        """The file's tensors, notes and problems; with ``defer_crcs`` its storages' CRC-32 checks are
        left in ``owed`` for the caller to make (else checked here, in a separate pass)."""
        p = str(path)
        size = os.stat(path).st_size
        if size == 0:
            raise CorruptCheckpointError(p, "the file is empty (0 bytes)")
        with open(path, "rb") as fh:
            head = fh.read(512)
            if head.startswith(LOCAL_MAGIC):
                return _read_zip(p, fh, size, defer_crcs=defer_crcs)
            if _is_tar(head):
                raise UnsupportedFormatError(
                    f"{p}: this is torch's pre-0.4 tar format, which nandoctor does not read",
                    hint="load it once with an old torch in a sandbox and re-save it with torch.save or as safetensors",
                )
            if not looks_legacy_torch(head) and _has_zip_end(fh, size):
                raise CorruptCheckpointError(
                    p,
                    "a zip archive with bytes in front of it (it does not start with PK\\x03\\x04); torch refuses "
                    "such files and the extra bytes can hide a second file",
                )
            return _read_pickle_file(p, fh, size)


def read_zip_at(path: str, fh: BinaryIO, base: int, size: int, *, defer_crcs: bool = False,
                loader: str | None = None, groups: tuple[str, ...] = ()) -> ReadResult:
    """The ``torch.save`` stream of ``size`` bytes at ``base`` in ``path`` (a DCP item), read as a file of its
    own; the refs' regions (and owed checks) are absolute offsets in ``path``, their keys prefixed by ``base``.
    ``loader``: what reads the stream with ``torch.load(weights_only=True)`` (DCP's tensor items), in words; None
    for a pickled object, which ``dcp.load`` reads with ``weights_only=False`` (DefaultLoadPlanner.load_bytes): what
    torch's default would refuse in it is no matter then (a torchtitan TrainState's io.BytesIO, numpy values);
    ``groups``: the stream is the value of an optimizer's param_groups so named (DCP's ``optim.param_groups.0.lr``)."""
    read = _read_zip(path, cast(BinaryIO, FileWindow(fh, base, size)), size, base, defer_crcs, loader, groups,
                     weights_only_load=loader is not None)

    def shifted(region: Region) -> Region:
        return dataclasses.replace(region, offset=region.offset + base, key=f"{base}:{region.key}")

    refs = tuple(dataclasses.replace(ref, region=shifted(ref.region)) for ref in read.refs)
    return ReadResult(refs, read.notes, read.problems, read.owed, read.unviewed)


def _is_tar(head: bytes) -> bool:
    return len(head) >= 262 and head[257:262] == b"ustar"


def _has_zip_end(fh: BinaryIO, size: int) -> bool:
    """An end-of-central-directory record that ends exactly at the end of the file."""
    tail_len = min(size, 22 + 0xFFFF)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    while at >= 0:
        if at + 22 <= len(tail) and at + 22 + int.from_bytes(tail[at + 20 : at + 22], "little") == len(tail):
            return True
        at = tail.rfind(b"PK\x05\x06", 0, at)
    return False


def _pickle_errors(path: str, what: str, exc: BaseException) -> Exception:
    """Word an exception raised while unpickling ``what`` as a nandoctor error."""
    if isinstance(exc, UnsafeGlobalError):
        return UnsafeCheckpointError(
            path,
            f"{what} reaches for {exc.global_name}, which would run code when loaded; refused",
            _UNSAFE_HINT,
        )
    if isinstance(exc, PickleFormatError):
        return CorruptCheckpointError(path, f"{what}: {exc}")
    if isinstance(exc, PickleTooLargeError):
        return CorruptCheckpointError(path, f"{what} is larger than {MAX_PICKLE_BYTES >> 20} MiB; refused")
    if isinstance(exc, WalkLimitError):
        return CorruptCheckpointError(path, f"{what}: {exc}; refused")
    if isinstance(exc, MemoryError):  # a length field (BINBYTES8, LONG4 …) far beyond the data that follows
        return CorruptCheckpointError(path, f"{what} declares an object too large to build (a crafted length); refused")
    if isinstance(exc, EOFError) or (isinstance(exc, pickle.UnpicklingError) and "truncated" in str(exc)):
        return CorruptCheckpointError(path, f"{what} is truncated (an interrupted save or download)")
    return CorruptCheckpointError(path, f"{what} is not a valid pickle ({type(exc).__name__}: {str(exc)[:120]})")


@contextmanager
def _pickle_context(path: str, what: str) -> Iterator[None]:
    try:
        yield
    except (CorruptCheckpointError, UnsupportedFormatError):
        raise
    except RecursionError as exc:  # very deep nesting in the opcodes themselves
        raise _pickle_errors(path, what, PickleFormatError("nested too deeply")) from exc
    except Exception as exc:  # noqa: BLE001  every failure of a hostile pickle becomes one refusal naming the file
        raise _pickle_errors(path, what, exc) from None


def _read_zip(path: str, fh: BinaryIO, size: int, base: int = 0, defer_crcs: bool = False,
              loader: str | None = None, groups: tuple[str, ...] = (), weights_only_load: bool = True,
              depth: int = 0) -> ReadResult:
    """``depth``: how many torch.save streams this one lies in (nested.py), 0 for a file's own."""
    directory = read_directory(path, fh, size)
    entries = _archive_entries(path, directory)
    if "constants.pkl" in entries or any(name.startswith("code/") for name in entries):
        raise UnsafeCheckpointError(
            path,
            "this is a TorchScript archive (a program with code, not a checkpoint of weights); refused",
            "nandoctor scans checkpoints; save the model's state_dict() with torch.save or safetensors and scan that",
        )
    pickle_entry = entries.get("data.pkl")
    if pickle_entry is None:
        raise UnsupportedFormatError(
            f"{path}: a zip archive without data.pkl: not a PyTorch checkpoint",
        )
    data = _small_entry(path, fh, pickle_entry, MAX_PICKLE_BYTES)
    byteorder = "little"
    if "byteorder" in entries:
        raw = _small_entry(path, fh, entries["byteorder"], 64)
        if raw not in (b"little", b"big"):
            raise CorruptCheckpointError(
                path, f"unknown byteorder {raw[:16]!r} (torch writes 'little' or 'big')"
            )
        byteorder = raw.decode()
    if ".storage_alignment" in entries:  # torch.load: int(zip_file.get_record(".storage_alignment")), every mode
        raw = _small_entry(path, fh, entries[".storage_alignment"], MAX_META_BYTES)
        try:
            int(raw)
        except ValueError:
            raise CorruptCheckpointError(
                path, f"its .storage_alignment record holds {raw[:16]!r}, not an integer: torch.load refuses the file "
                "(int() of that record raises ValueError), so this model will not load",
                "load it with the torch that wrote it and re-save it with torch.save, or re-download it",
            ) from None
    for name, entry in entries.items():
        # version, .format_version, .storage_alignment, .data/serialization_id: torch reads them, so a
        # corrupted one is corruption of the file (a shifted local header reads padding in their place).
        if name not in ("data.pkl", "byteorder") and not name.startswith("data/") and entry.size <= MAX_META_BYTES:
            raw = _small_entry(path, fh, entry, MAX_META_BYTES)
            if name == ".data/serialization_id":
                try:
                    raw.decode("utf-8")  # (torch.load decodes it: UnicodeDecodeError otherwise)
                except UnicodeDecodeError:
                    raise CorruptCheckpointError(
                        path, f"its .data/serialization_id record holds {raw[:16]!r}, which is not UTF-8 text: "
                        "torch.load refuses the file (UnicodeDecodeError), so this model will not load",
                        "re-save it with torch.save, or re-download it",
                    ) from None

    declared: list[StorageRef] = []

    def persistent_load(pid: Any) -> StorageRef:
        ref = check_storage_id(pid, legacy=False)
        declared.append(ref)
        return ref

    with _pickle_context(path, "data.pkl"):
        loaded = restricted_load(data, persistent_load, offset=pickle_entry.data_offset)
        walked = walk(loaded.value, prefix=_name_prefix(path), groups=groups)
        add_unreached(walked, loaded.built, _name_prefix(path))

    blocks: dict[str, StorageBlock] = {}
    for ref in declared:
        if ref.key in blocks:
            continue
        label = f"data/{ref.key}"
        found = entries.get(ascii_fold(label))
        if found is None:
            raise CorruptCheckpointError(path, f"storage entry {label} is missing (data.pkl refers to it)")
        entry = found
        if not entry.stored:
            raise CorruptCheckpointError(
                path,
                f"storage entry {label} is compressed (zip method {entry.method}); torch never writes that and "
                "nandoctor does not inflate storages",
                "re-save the checkpoint with torch.save (do not re-zip it)",
            )
        if entry.size != ref.nbytes or entry.compressed_size != ref.nbytes:
            kind = "short" if entry.size < ref.nbytes else "long"
            raise CorruptCheckpointError(
                path,
                f"storage entry {label} is too {kind}: {entry.size} bytes where data.pkl declares {ref.nbytes} "
                f"({ref.numel} × {ref.storage_type.name})",
            )
        blocks[ref.key] = StorageBlock(ref.key, label, entry.data_offset, ref.nbytes)
    # torch.load refuses an archive whose version record it cannot read or does not support (before it unpickles
    # anything): the model will not load, so the file is refused here too (version.py), after the checks of its
    # structure above, whose words say more about a file broken in several ways.
    record = archive_version.record_name(entries)
    raw = _small_entry(path, fh, entries[record], MAX_META_BYTES) if record is not None else b""
    archive_version.check(path, next(iter(directory.entries)).split("/", 1)[0] + "/", record, raw)

    built = build_refs(path, walked, declared, blocks, byteorder)
    with _pickle_context(path, "data.pkl"):
        built.refs += scale_refs(path, [(n.name, n.tensor) for n in walked.tensors], loaded.float_offsets)
        built.refs += pickled_float_refs(path, walked.group_floats, loaded.float_offsets)
    notes = _notes(path, loaded.placeholders, walked, built)
    problems = (_unread_tensors(path, loaded.placeholders, built, walked) + weights_only.key_problems(path, loaded.value)
                + hyperparameter_problems(path, walked.hyper_floats) + scaler_problems(path, walked.dead_scalers))
    # (a global outside torch's allowlist can be allowed by whoever loads: torch.serialization.add_safe_globals, as
    # torchao does for its tensor subclasses; an opcode torch does not run cannot: only that is a DCP item's problem)
    if weights_only_load:
        _weights_only(path, loaded.refused, notes, problems)
        problems += weights_only.opcode_problems(path, data, loader=loader)
        notes += weights_only.protocol_notes(path, data, loader)
    arrays = numpy_findings(path, walked, notes, problems) + nested_findings(path, walked, notes, problems, depth)
    used = {ascii_fold(f"data/{key}") for key in blocks}
    unreferenced = sorted(n for n in entries if n.startswith("data/") and n not in used)
    if unreferenced:
        notes.append(
            f"{os.path.basename(path)}: {len(unreferenced)} storage "
            f"entr{'y' if len(unreferenced) == 1 else 'ies'} that data.pkl never "
            f"uses (torch ignores them too); not scanned: {listed(unreferenced)}"
        )
    owed: list[OwedCrc] = []
    if os.environ.get(SKIP_CRC_ENV, "") not in ("", "0"):
        notes.append(f"{os.path.basename(path)}: CRC-32 of the storages not checked ({SKIP_CRC_ENV} is set)")
    else:
        # an embedded stream's entries (a DCP item) are ``base`` further on in the file
        owed = [_owed(path, entries[ascii_fold(b.label)], base, built.tensors_by_storage.get(b.key, []))
                for b in blocks.values()]
        if not defer_crcs:
            problems += check_owed(fh.fileno(), owed)
            owed = []
    return ReadResult(tuple(built.refs), tuple(notes), tuple(problems), tuple(owed), arrays,
                      statedicts.nested_under(loaded.value))


def _owed(path: str, entry: ZipEntry, base: int, tensors: list[str]) -> OwedCrc:
    return OwedCrc(path, entry.name.split("/", 1)[-1], entry.data_offset + base, entry.compressed_size,
                   entry.crc32, listed(tensors))


def _unread_tensors(path: str, placeholders: tuple[str, ...], built: BuiltRefs, walked: Walk) -> list[ScanProblem]:
    problems = []
    if walked.meta or META_TENSOR_GLOBAL in placeholders:
        # (torch.load gives it back, weights_only too, but it holds no values: a trial's file read CLEAN with one
        # tensor of two, and load_state_dict raised "Cannot copy out of meta tensor; no data!")
        problems.append(ScanProblem(
            path, f"holds tensors saved from the meta device ({listed(walked.meta) or META_TENSOR_GLOBAL}): they "
            "have no values, so the model cannot be loaded from them (load_state_dict raises \"Cannot copy out of "
            "meta tensor; no data!\")",
            "save the weights after they are materialized (model.to_empty(device=…) and loaded or initialized, "
            "then torch.save(model.state_dict(), …)), or from the process that holds them",
            kind=UNLOADABLE_KIND))
    unread = [p for p in placeholders if p in UNREAD_TENSOR_GLOBALS]
    if unread:
        problems.append(
            ScanProblem(
                path,
                f"holds tensors whose data is not a storage in the file ({', '.join(unread)}); they were not scanned",
                "move them to the CPU (t.cpu()) before saving, or save the weights as safetensors",
            )
        )
    if built.unscannable:
        problems.append(
            ScanProblem(
                path,
                f"{len(built.unscannable)} storage(s) the pickle loads are viewed by no tensor nandoctor could "
                f"find, and their dtype is known only to that tensor; not scanned: {listed(built.unscannable)}",
                "save the weights as a flat state_dict (torch.save(model.state_dict())) or as safetensors",
            )
        )
    return problems


def _archive_entries(path: str, directory: ZipDirectory) -> dict[str, ZipEntry]:
    """Entries keyed by their name inside the archive's one top folder (torch requires that folder),
    ASCII case folded: torch looks records up ignoring case (``DATA.PKL`` is its ``data.pkl``), so every
    lookup here goes through ``ascii_fold`` too and reads exactly the record torch reads. (Names that
    collide when folded were refused by the directory parser.)"""
    names = list(directory.entries)
    if not names or "/" not in names[0]:
        raise UnsupportedFormatError(f"{path}: a zip archive whose entries are not in one folder: not a PyTorch checkpoint")
    prefix = ascii_fold(names[0].split("/", 1)[0] + "/")
    out: dict[str, ZipEntry] = {}
    for name, entry in directory.entries.items():
        if not ascii_fold(name).startswith(prefix):
            raise CorruptCheckpointError(
                path, f"zip entry {name!r} is outside the archive's folder {prefix!r}; torch refuses such files"
            )
        out[ascii_fold(name[len(prefix):])] = entry
    return out


def _small_entry(path: str, fh: BinaryIO, entry: ZipEntry, limit: int) -> bytes:
    """A metadata entry (data.pkl, byteorder) read whole: stored, bounded, and CRC-checked first."""
    label = entry.name.split("/", 1)[-1]
    if not entry.stored:
        raise CorruptCheckpointError(
            path, f"zip entry {label} is compressed (method {entry.method}); torch never writes that, refused"
        )
    if entry.size != entry.compressed_size:
        raise CorruptCheckpointError(path, f"zip entry {label}: stored entry with two different sizes")
    if entry.size > limit:
        raise CorruptCheckpointError(path, f"zip entry {label} is {entry.size} bytes, over the {limit}-byte limit")
    data = read_entry(fh, entry)
    if len(data) != entry.size:
        raise CorruptCheckpointError(path, f"zip entry {label} is truncated")
    if crc32(data, 0) & 0xFFFFFFFF != entry.crc32:
        raise CorruptCheckpointError(
            path, f"zip entry {label} fails its CRC-32 check: the file is corrupt, so none of it is trusted"
        )
    return data


def _read_pickle_file(path: str, fh: BinaryIO, size: int, depth: int = 0) -> ReadResult:
    """A file that is not a zip: a legacy torch file, or some other pickle (named if malicious, never loaded).
    ``depth``: as for ``_read_zip`` (a stream within a file is loaded as its owner's code chooses: no
    weights-only judgement then)."""
    with _pickle_context(path, "pickled data"):
        try:
            legacy = read_legacy(path, fh, size, MAX_PICKLE_BYTES)
        except NotLegacyError as exc:
            if exc.is_pickle:
                raise UnsupportedFormatError(
                    f"{path}: a pickle that is not a PyTorch checkpoint (no torch magic number); not loaded",
                    hint="nandoctor reads files written by torch.save; a plain pickle can run code when loaded",
                ) from None
            fh.seek(0)
            head = fh.read(64)
            if magic.identify(head) is not None:  # text, a web page, another format: say which
                raise magic.not_a(path, TORCH.words, head) from None
            raise UnsupportedFormatError(f"{path}: neither a torch zip archive nor a legacy torch file") from None
        walked = walk(legacy.root, prefix=_name_prefix(path))
        add_unreached(walked, legacy.built, _name_prefix(path))
    built = build_refs(path, walked, legacy.declared, legacy.blocks, legacy.byteorder)
    with _pickle_context(path, "pickled data"):
        built.refs += scale_refs(path, [(n.name, n.tensor) for n in walked.tensors], legacy.float_offsets)
        built.refs += pickled_float_refs(path, walked.group_floats, legacy.float_offsets)
    notes = _notes(path, tuple(legacy.placeholders), walked, built)
    notes.insert(
        0,
        f"{os.path.basename(path)}: legacy (pre-1.6) torch format; it has no checksums, so corruption that "
        "leaves finite values cannot be detected",
    )
    problems = (_unread_tensors(path, tuple(legacy.placeholders), built, walked) + weights_only.key_problems(path, legacy.root)
                + hyperparameter_problems(path, walked.hyper_floats) + scaler_problems(path, walked.dead_scalers))
    if not depth:
        _weights_only(path, tuple(legacy.refused), notes, problems)
        fh.seek(0)
        notes += weights_only.protocol_notes(path, fh)
        problems += weights_only.opcode_problems(path, fh, count=LEGACY_PICKLES)
    problems += _untyped_legacy(path, walked, legacy.declared)
    arrays = numpy_findings(path, walked, notes, problems) + nested_findings(path, walked, notes, problems, depth)
    return ReadResult(tuple(built.refs), tuple(notes), tuple(problems), (), arrays, statedicts.nested_under(legacy.root))


def _untyped_legacy(path: str, walked: Walk, declared: list[StorageRef]) -> list[ScanProblem]:
    """NOT LOADABLE: a legacy file with an untyped storage, as ``torch.save(…, _use_new_zipfile_serialization=False)``
    writes a tensor whose dtype has no legacy storage class (float8, complex32, uint16/32/64). torch's legacy
    loader asks every storage type for its dtype, which ``UntypedStorage`` has not: torch.load raises, with
    weights_only or without, whatever loads the file."""
    if not any(ref.storage_type.untyped for ref in declared):
        return []
    untyped = [n for n in walked.tensors if n.tensor.storage.storage_type.untyped]
    dtypes = sorted({n.tensor.torch_dtype for n in untyped})
    what = f"tensor(s) {listed([n.name for n in untyped])} ({', '.join(dtypes)}) are" if untyped else "a storage is"
    return [ScanProblem(
        path,
        f"a legacy torch file whose {what} stored untyped, which torch's legacy loader cannot read: torch.load "
        "raises ('UntypedStorage' has no attribute 'dtype'), with weights_only=True or False",
        "re-save it in torch.save's default (zip) format (no _use_new_zipfile_serialization=False), or with "
        "model.save_pretrained(…), which writes safetensors",
        kind=UNLOADABLE_KIND,
    )]


def _name_prefix(path: str) -> str:
    name = os.path.basename(path)
    if SIDE_FILE.match(name) or DEEPSPEED_FILE.match(name):
        # Side files, and DeepSpeed's one file per rank with the same keys: named apart by their stem,
        # which stays the same from one checkpoint to the next (a repair finds the donor's copy).
        return name.rsplit(".", 1)[0]
    return ""


# What numpy's RNG state (np.random.get_state(), in every Trainer checkpoint's rng_state*.pth) pickles as:
# integer arrays of generator state, expected there, so not worth a note on every scan.
_NUMPY_RNG_GLOBALS = frozenset(
    f"{module}.{name}"
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
) | {"numpy.ndarray", "numpy.dtype", "numpy.dtypes.UInt32DType", "numpy.dtypes.Float64DType"}


def _weights_only(path: str, refused: tuple[str, ...], notes: list[str], problems: list[ScanProblem]) -> None:
    """What torch's default load (weights_only=True) refusing the file means (weights_only.py): a problem for
    the weights a Hugging Face loader reads that way, else a note (none for numpy's RNG state in
    ``rng_state*.pth``, which Trainer loads with numpy allowed)."""
    quiet = _NUMPY_RNG_GLOBALS if os.path.basename(path).startswith("rng_state") else frozenset()
    found, said = weights_only.judged(path, refused, quiet)
    problems += found
    notes += said


def numpy_findings(path: str, walked: Walk, notes: list[str], problems: list[ScanProblem]) -> tuple[UnviewedBad, ...]:
    """The numpy arrays and scalars pickled in the file (numpy_arrays.py), counted: NaN/Inf in one is a finding of
    the file (UnviewedBad of kind ``numpy``), one that cannot be decoded a problem, the floating rest a note."""
    name = os.path.basename(path)
    found: list[UnviewedBad] = []
    finite: list[str] = []
    trainer: list[str] = []
    for array_name, array in walked.arrays:
        try:
            counted = numpy_arrays.count(array_name, array)
        except ValueError as exc:
            problems.append(ScanProblem(
                path, f"numpy value {array_name!r} could not be read from the pickle ({exc}), so its NaN/Inf were "
                "not counted", "save it as a tensor (torch.from_numpy) or leave it out of the checkpoint"))
            continue
        if counted is None:
            continue
        if not (counted.nan or counted.posinf or counted.neginf):
            finite.append(array_name)
        elif array_name in walked.trainer:
            trainer.append(array_name)  # (trainer state: counted, never a finding, as its tensors are)
        else:
            found.append(UnviewedBad(path, array_name, counted.nan, counted.posinf, counted.neginf, kind="numpy"))
    if trainer:
        notes.append(f"{name}: NaN/Inf in {len(trainer)} numpy value(s) of trainer state (a logged metric's history: "
                     f"not the model's, no finding): {listed(trainer)}")
    if finite:
        notes.append(f"{name}: {len(finite)} numpy floating array(s) or scalar(s) pickled in the file (not tensors) read from the "
                     f"pickle: finite: {listed(finite)}")
    return tuple(found)


def nested_findings(path: str, walked: Walk, notes: list[str], problems: list[ScanProblem],
                    depth: int) -> tuple[UnviewedBad, ...]:
    """The ``torch.save`` streams pickled in the file as ``io.BytesIO`` values (nested.py), each read from memory
    as a torch file of its own and its storages counted: NaN/Inf in one is a finding of the file (kind ``stream``),
    a stream that cannot be read (or holds a global that runs code) a problem, the finite rest a note."""
    name = os.path.basename(path)
    found: list[UnviewedBad] = []
    finite: list[str] = []
    trainer: list[str] = []
    for stream_name, stream in walked.streams:
        try:
            data = nested.content(stream)
        except ValueError:
            continue  # (bytes of no kind a BytesIO holds: nothing torch.load reads)
        if not (data.startswith(LOCAL_MAGIC) or looks_legacy_torch(data[:512])):
            continue  # other bytes (text, an image): no torch.save stream to load
        if depth >= nested.MAX_DEPTH:
            problems.append(ScanProblem(path, f"the torch.save stream pickled as {stream_name!r} lies "
                                        f"{depth + 1} streams deep; not read", "save its tensors as tensors"))
            continue
        try:
            read = (_read_zip(path, io.BytesIO(data), len(data), defer_crcs=True, weights_only_load=False,
                              depth=depth + 1)
                    if data.startswith(LOCAL_MAGIC) else _read_pickle_file(path, io.BytesIO(data), len(data), depth + 1))
        except UnsupportedFormatError:
            continue  # (a zip or pickle that is no torch.save stream: bytes of another kind, which nothing loads here)
        except NandoctorError as exc:
            problems += nested.rehomed(path, stream_name, (ScanProblem(path, exc.message, exc.hint),))
            continue
        problems += nested.rehomed(path, stream_name, read.problems)
        problems += nested.rehomed(path, stream_name, tuple(
            failed for owed in read.owed
            if (failed := mismatch(owed, crc32(memoryview(data)[owed.offset : owed.offset + owed.size], 0))) is not None))
        try:
            bad, counted = nested.count_storages(path, stream_name, data, read, _name_prefix(path))
        except ValueError as exc:  # (a storage past the stream's bytes: its reader checked them, so never expected)
            problems.append(ScanProblem(path, f"the torch.save stream pickled as {stream_name!r} could not be counted "
                                        f"({exc})", "save its tensors as tensors"))
            continue
        inner = [dataclasses.replace(u, storage=f"{stream_name}.{u.storage}") for u in read.unviewed]
        bad += [dataclasses.replace(u, kind="stream") if u.kind != "numpy" else u for u in inner]
        if stream_name in walked.trainer:
            trainer += [u.storage for u in bad]
        elif bad:
            found += bad
        elif counted:
            finite.append(stream_name)
    if trainer:
        notes.append(f"{name}: NaN/Inf in {len(trainer)} value(s) of trainer state pickled as torch.save streams "
                     f"(not the model's, no finding): {listed(trainer)}")
    if finite:
        notes.append(f"{name}: {len(finite)} torch.save stream(s) pickled in the file as io.BytesIO values "
                     f"(TransformerEngine's _extra_state keeps its FP8 scales so) read from the pickle: finite: "
                     f"{listed(finite)}")
    return tuple(found)


def _notes(path: str, placeholders: tuple[str, ...], walked: Walk, built: BuiltRefs) -> list[str]:
    name = os.path.basename(path)
    notes: list[str] = []
    if placeholders and not (name.startswith("rng_state") and set(placeholders) <= _NUMPY_RNG_GLOBALS):
        notes.append(
            f"{name}: {len(placeholders)} unknown global(s) became inert placeholders (never imported or "
            f"called): {', '.join(placeholders[:8])}{' …' if len(placeholders) > 8 else ''}"
        )
    if walked.optimizers_named:
        notes.append(f"{name}: optimizer moments named after their parameters (from param_groups' param_names)")
    if walked.unreached:
        notes.append(f"{name}: {len(walked.unreached)} tensor(s) the pickle builds sit where no name reaches them "
                     f"(torch loads them all the same); scanned as {listed(walked.unreached)}")
    if walked.renamed:
        notes.append(f"{name}: {len(walked.renamed)} tensor name(s) repeated after flattening; later ones got "
                     f"a #n suffix: {listed(walked.renamed)}")
    if not built.refs:
        notes.append(f"{name}: holds no tensors; nothing to scan")
    notes += [f"{name}: {n}" for n in built.notes]
    return notes



def read_object(path: Path) -> Any:
    """The unpickled ``data.pkl`` of the torch zip file at ``path``, built of inert stand-ins only (tensors
    as ``TensorStub``, unknown globals as ``Placeholder``): for the few callers that need a file's
    non-tensor values (DeepSpeed's partition arithmetic, checkpoint/zero.py). Raises as ``TorchReader.read``."""
    p = str(path)
    size = os.stat(path).st_size
    with open(path, "rb") as fh:
        if not fh.read(4).startswith(LOCAL_MAGIC):
            raise UnsupportedFormatError(f"{p}: not a torch zip file (torch.save's format since torch 1.6)")
        entries = _archive_entries(p, read_directory(p, fh, size))
        pickle_entry = entries.get("data.pkl")
        if pickle_entry is None:
            raise UnsupportedFormatError(f"{p}: a zip archive without data.pkl: not a PyTorch checkpoint")
        data = _small_entry(p, fh, pickle_entry, MAX_PICKLE_BYTES)
    with _pickle_context(p, "data.pkl"):
        return restricted_load(data, lambda pid: check_storage_id(pid, legacy=False)).value
