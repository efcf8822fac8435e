"""Strict GGUF reader (llama.cpp, ollama, LM Studio model files), v2 and v3, either byte order.

Layout: ``GGUF``, a uint32 version (a big-endian file reads as a version with
zero low bits, as gguf-py tells them apart), uint64 tensor and key/value
counts, the key/values, the tensor infos (name, dims, type, offset), padding to
the alignment, then the tensors, packed in info order, each padded to the
alignment. Every count and length is bounded by the bytes left in the file
before anything is allocated, and every rule llama.cpp's ``gguf.cpp`` enforces
is enforced here (see docs/gguf.md). Float tensors become plain regions;
block-quantized ones become regions whose scale fields the scan counts
(nandoctor/blockfields.py). Dimensions keep GGUF's order (ne0 first, fastest).
"""

from __future__ import annotations

import math
import mmap
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from nandoctor.errors import CorruptCheckpointError, NandoctorError, UnsupportedFormatError
from nandoctor.model import BlockFields, ReadResult, Region, ScanProblem, TensorRef
from nandoctor.readers import magic
from nandoctor.readers.formats import GGUF, looks_gguf
from nandoctor.readers.gguf_hparams import KEYS as _HPARAM_KEYS
from nandoctor.readers.gguf_shapes import KEYS as _SHAPE_KEYS
from nandoctor.readers.gguf_shapes import ArrayOf
from nandoctor.readers.shapes import refused_gguf_dims

DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME_BYTES = 63  # GGML_MAX_NAME is 64 with the terminating NUL
_LEGACY_MAGICS = (b"lmgg", b"fmgg", b"tjgg", b"ggml", b"ggmf", b"ggjt")  # before GGUF (little-endian uint32s)


@dataclass(frozen=True)
class GGMLType:
    """A tensor type: its block (1 element for plain floats) and where its scale fields are."""

    name: str
    block_elems: int = 1
    block_bytes: int = 0
    field_dtype: str = ""  # the dtype of the scale fields ("" for plain dtypes: the tensor's own)
    offset: int = 0
    count: int = 1
    packed: bool = False


def _q(name: str, elems: int, size: int, offset: int = 0, count: int = 1, dtype: str = "F16", packed: bool = False) -> GGMLType:
    return GGMLType(name, elems, size, dtype, offset, count, packed)


# ggml's type ids and block layouts (ggml/src/ggml-common.h). Q8_1 is ggml's 36-byte block (gguf-py says 40).
# NVFP4's UE4M3 scales decode to finite values whatever their bits (0x7F is zero in ggml): nothing to count.
# MXFP4's lanes are one BF16 per element (its E8M0 scale, or ±Inf where ggml's product overflows fp32), made by
# blockfields.gather from the whole block ("packed": not stored as such, so diff compares the block's bytes).
TYPES: dict[int, GGMLType] = {
    0: GGMLType("F32"), 1: GGMLType("F16"), 30: GGMLType("BF16"), 28: GGMLType("F64"),
    24: GGMLType("I8"), 25: GGMLType("I16"), 26: GGMLType("I32"), 27: GGMLType("I64"),
    2: _q("Q4_0", 32, 18), 3: _q("Q4_1", 32, 20, count=2), 6: _q("Q5_0", 32, 22), 7: _q("Q5_1", 32, 24, count=2),
    8: _q("Q8_0", 32, 34), 9: _q("Q8_1", 32, 36, count=2),
    10: _q("Q2_K", 256, 84, offset=80, count=2), 11: _q("Q3_K", 256, 110, offset=108),
    12: _q("Q4_K", 256, 144, count=2), 13: _q("Q5_K", 256, 176, count=2), 14: _q("Q6_K", 256, 210, offset=208),
    15: _q("Q8_K", 256, 292, dtype="F32"),
    16: _q("IQ2_XXS", 256, 66), 17: _q("IQ2_XS", 256, 74), 18: _q("IQ3_XXS", 256, 98), 19: _q("IQ1_S", 256, 50),
    20: _q("IQ4_NL", 32, 18), 21: _q("IQ3_S", 256, 110), 22: _q("IQ2_S", 256, 82), 23: _q("IQ4_XS", 256, 136),
    29: _q("IQ1_M", 256, 56, offset=48, packed=True),
    34: _q("TQ1_0", 256, 54, offset=52), 35: _q("TQ2_0", 256, 66, offset=64),
    39: _q("MXFP4", 32, 17, count=32, dtype="BF16", packed=True),  # lanes made per element: blockfields.py
    40: _q("NVFP4", 64, 36, count=0, dtype="U8"),
    41: _q("Q1_0", 128, 18), 42: _q("Q2_0", 64, 18),
}

# Value types of the key/values: (struct code, size); 8 is a string, 9 an array.
_SCALARS = {0: ("B", 1), 1: ("b", 1), 2: ("H", 2), 3: ("h", 2), 4: ("I", 4), 5: ("i", 4), 6: ("f", 4),
            7: ("?", 1), 10: ("Q", 8), 11: ("q", 8), 12: ("d", 8)}
_STRING, _ARRAY = 8, 9
_FLOATS = (6, 12)  # float32, float64 scalars
_UINT32 = 4
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, the smallest value
_MIN_TENSOR_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, type, offset
_KEPT_KEYS = re.compile(r"^general\.(alignment|architecture|type)$|^split\.(count|no)$|\.(block_count|decoder_block_count|expert_count)$")
_EXPERTS = re.compile(r"_exps(\.|$)")


class GGUFReader:
    format_name = GGUF.name
    suffixes = GGUF.suffixes

    def sniff(self, head: bytes) -> bool:
        return looks_gguf(head)

    def read(self, path: Path) -> ReadResult:
        from nandoctor.readers import gguf_hparams, gguf_names, gguf_shapes

        header = read_header(path)
        arch, kind = header.metadata.get("general.architecture"), header.metadata.get("general.type")
        splits = _int_value(header.metadata, "split.count")  # (gguf-split: one file holds part of the blocks)
        problems, notes = gguf_names.checked(
            str(path), arch[1] if arch is not None else None,
            _block_counts(header.metadata),
            (r.name for r in header.refs), adapter=kind is not None and kind[1] == "adapter",
            whole=splits is None or splits <= 1)
        misnamed = _split_misnamed(path, splits, _int_value(header.metadata, "split.no"))
        arch_name = arch[1] if arch is not None and isinstance(arch[1], str) else None
        hparams = gguf_hparams.problems(str(path), {k: v for k, (kind, v) in header.metadata.items()
                                                    if kind in _FLOATS or _HPARAM_KEYS.search(k)}, arch_name)
        shapes = gguf_shapes.problems(str(path), arch_name,
                                      {k: v for k, (_, v) in header.metadata.items() if _SHAPE_KEYS.search(k)},
                                      header.refs, adapter=kind is not None and kind[1] == "adapter",
                                      first_split=not _int_value(header.metadata, "split.no"))
        return ReadResult(header.refs, (*header.notes, *notes), (*problems, *misnamed, *hparams, *shapes))


def split_count(path: Path) -> int | None:
    """The ``split.count`` of the GGUF file at ``path`` (None without one, or when its header cannot be read: its
    scan says why): a name like ``model-00001-of-00002.gguf`` alone does not make a file one of a set."""
    try:
        return _int_value(read_header(path).metadata, "split.count")
    except (NandoctorError, OSError):
        return None


def _split_misnamed(path: Path, splits: int | None, number: int | None) -> tuple[ScanProblem, ...]:
    """A file of a gguf-split set (``split.count`` > 1) without a ``split.no``, or whose name is not
    ``<prefix>-0000K-of-0000N.gguf`` for its own ``split.no`` (a later file's N is not checked: llama.cpp takes the
    count from the first): llama.cpp finds the set's other files by that name and refuses the file ("invalid split
    file name"), so the model does not load from it, whatever its tensors hold."""
    from nandoctor.model import UNLOADABLE_KIND

    if splits is None or splits <= 1:
        return ()
    if number is None:  # (llama.cpp reads the first file's split.no to check it is the first: a required key)
        return (ScanProblem(
            str(path), f"not loadable: split.count says this file is part of a {splits}-file gguf-split set, but it has "
            "no split.no (llama.cpp: \"key not found in model: split.no\")",
            "write the set again with llama-gguf-split, or merge it into one file with llama-gguf-split --merge",
            kind=UNLOADABLE_KIND),)
    # (llama.cpp checks a later file's split.no against its place, not its split.count: the first file's is the set's)
    count = f"{splits:05d}" if number == 0 else "NNNNN"
    expected = f"-{number + 1:05d}-of-{count}.gguf"
    if re.fullmatch(rf".+-{number + 1:05d}-of-{count.replace('NNNNN', r'[0-9]{5}')}\.gguf", path.name):
        return ()
    return (ScanProblem(
        str(path), f"not loadable: split.count says this file is part {(number or 0) + 1} of a {splits}-file gguf-split "
        f"set, but its name does not end in {expected}, the name llama.cpp loads the set by (it refuses the file)",
        f"give it the name gguf-split gave it (<prefix>{expected}), or merge the set into one file with "
        "llama-gguf-split --merge", kind=UNLOADABLE_KIND),)


@dataclass(frozen=True)
class Header:
    version: int
    byteorder: str
    # (value type, value) of the keys nandoctor uses: alignment, architecture, counts, hyperparameters (an array of
    # more than one item as gguf_shapes.ArrayOf: its length)
    metadata: dict[str, tuple[int, object]]
    refs: tuple[TensorRef, ...]
    notes: tuple[str, ...]


class _Cursor:
    """Bounded reads from the mapped file: every length is checked against the bytes left first."""

    def __init__(self, buf: mmap.mmap | bytes, path: str, endian: str) -> None:
        self.buf, self.path, self.endian, self.pos = buf, path, endian, 0
        self.size = len(buf)

    def fail(self, reason: str, hint: str | None = None) -> CorruptCheckpointError:
        return CorruptCheckpointError(self.path, reason, hint)

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise self.fail(f"{what} needs {n:,} bytes at byte {self.pos:,} but the file ends at {self.size:,} (truncated?)")

    def unpack(self, code: str, size: int, what: str) -> int | float | bool:
        self.need(size, what)
        (value,) = struct.unpack_from(self.endian + code, self.buf, self.pos)
        self.pos += size
        return value

    def u32(self, what: str) -> int:
        return int(self.unpack("I", 4, what))

    def u64(self, what: str) -> int:
        return int(self.unpack("Q", 8, what))

    def raw_string(self, what: str) -> bytes:
        n = self.u64(f"the length of {what}")
        self.need(n, f"{what} ({n:,} bytes long)")
        out = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return out

    def skip_string(self, what: str) -> None:
        n = self.u64(f"the length of {what}")
        self.need(n, f"{what} ({n:,} bytes long)")
        self.pos += n


def read_header(path: Path) -> Header:
    """Validate the whole header and the tensor layout of a GGUF file; raise CorruptCheckpointError otherwise."""
    p = str(path)
    size = os.stat(path).st_size
    if size < 24:
        raise CorruptCheckpointError(p, f"file is {size} bytes, too short for a GGUF header")
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return _parse(buf, p, size)


def _parse(buf: mmap.mmap, p: str, size: int) -> Header:
    if not looks_gguf(buf[:4]):
        if buf[:4] in _LEGACY_MAGICS:
            raise UnsupportedFormatError(
                f"{p}: a GGML/GGJT model file from before GGUF (2023)",
                hint="convert it with llama.cpp's convert_llama_ggml_to_gguf.py, then scan the .gguf",
            )
        if magic.identify(bytes(buf[:64])) is not None:  # text, a web page, another format: say which
            raise magic.not_a(p, GGUF.words, bytes(buf[:64]))
        raise CorruptCheckpointError(p, f"does not start with the GGUF magic (found {bytes(buf[:4])!r})")
    (version,) = struct.unpack_from("<I", buf, 4)
    endian, byteorder = "<", "little"
    if version & 0xFFFF == 0:  # gguf-py's test: a big-endian file's small version reads with zero low bits
        (version,) = struct.unpack_from(">I", buf, 4)
        endian, byteorder = ">", "big"
    if version == 1:
        raise UnsupportedFormatError(
            f"{p}: GGUF version 1 (32-bit counts, 2023) is not read",
            hint="re-convert the model with a current llama.cpp (convert_hf_to_gguf.py), then scan it",
        )
    if version not in (2, 3):
        raise CorruptCheckpointError(p, f"GGUF version {version} is not one nandoctor knows (2 or 3)")
    cur = _Cursor(buf, p, endian)
    cur.pos = 8
    n_tensors = cur.u64("the tensor count")
    n_kv = cur.u64("the key/value count")
    # Counts bounded by the bytes left before anything is allocated: a lying count fails here.
    if n_kv > (size - cur.pos) // _MIN_KV_BYTES:
        raise cur.fail(f"header claims {n_kv:,} key/values, more than its {size - cur.pos:,} remaining bytes can hold")
    metadata = _read_kv(cur, n_kv)
    if n_tensors > (size - cur.pos) // _MIN_TENSOR_BYTES:
        raise cur.fail(f"header claims {n_tensors:,} tensors, more than its {size - cur.pos:,} remaining bytes can hold")
    alignment = _alignment(cur, metadata)
    infos = [_tensor_info(cur, i) for i in range(n_tensors)]
    data_start = _align(cur.pos, alignment)
    refs = _layout(cur, infos, data_start, alignment, byteorder, metadata)
    return Header(version, byteorder, metadata, refs, _notes(p, version, byteorder))


def _read_kv(cur: _Cursor, n_kv: int) -> dict[str, tuple[int, object]]:
    keys: set[bytes] = set()
    kept: dict[str, tuple[int, object]] = {}
    for i in range(n_kv):
        raw_key = cur.raw_string(f"the name of key/value {i}")
        if raw_key in keys:
            raise cur.fail(f"key {_shown(raw_key)} appears twice (llama.cpp refuses the file)")
        keys.add(raw_key)
        try:  # gguf's own reader refuses such a key; a mangled name means the key the loader needs is missing
            key = raw_key.decode("utf-8")
        except UnicodeDecodeError:
            raise cur.fail(f"the name of key/value {i}, {_shown(raw_key)}, is not UTF-8 (gguf's reader refuses the "
                           "file; a damaged key name is one the loader cannot find)") from None
        where = f"key {_shown(raw_key)}"
        kind = cur.u32(f"the type of {where}")
        # (gguf_hparams.problems, gguf_shapes.problems)
        if _KEPT_KEYS.search(key) or kind in _FLOATS or _HPARAM_KEYS.search(key) or _SHAPE_KEYS.search(key):
            kept[key] = _value(cur, kind, where)
        else:
            _skip_value(cur, kind, where)
    return kept


def _value(cur: _Cursor, kind: int, where: str) -> tuple[int, object]:
    if kind in _SCALARS:
        code, size = _SCALARS[kind]
        return (kind, cur.unpack(code, size, where))
    if kind == _STRING:
        return (kind, cur.raw_string(where).decode("utf-8", "replace"))
    if kind == _ARRAY and cur.size - cur.pos >= 12:  # (one number in an array: transformers' GGUF loader unwraps it)
        start = cur.pos
        item, count = cur.u32(f"the item type of {where}"), cur.u64(f"the length of {where}")
        if item in _SCALARS and count == 1:
            code, size = _SCALARS[item]
            return (kind, [cur.unpack(code, size, where)])
        cur.pos = start
        _skip_value(cur, kind, where)
        return (kind, ArrayOf(item, count))  # (a token list's length, a per-layer array: gguf_shapes)
    _skip_value(cur, kind, where)
    return (kind, None)


def _skip_value(cur: _Cursor, kind: int, where: str) -> None:
    if kind in _SCALARS:
        cur.need(_SCALARS[kind][1], where)
        cur.pos += _SCALARS[kind][1]
    elif kind == _STRING:
        cur.skip_string(where)
    elif kind == _ARRAY:
        item = cur.u32(f"the item type of {where}")
        count = cur.u64(f"the length of {where}")
        if item == _ARRAY:
            raise cur.fail(f"{where} is an array of arrays, which llama.cpp does not read")
        if item in _SCALARS:
            cur.need(count * _SCALARS[item][1], f"{where} ({count:,} items)")
            cur.pos += count * _SCALARS[item][1]
        elif item == _STRING:
            if count > (cur.size - cur.pos) // 8:
                raise cur.fail(f"{where} claims {count:,} strings, more than the rest of the file can hold")
            for k in range(count):
                cur.skip_string(f"item {k} of {where}")
        else:
            raise cur.fail(f"{where} is an array of unknown type {item}")
    else:
        raise cur.fail(f"{where} has unknown value type {kind}")


def _alignment(cur: _Cursor, metadata: dict[str, tuple[int, object]]) -> int:
    entry = metadata.get("general.alignment")
    if entry is None:
        return DEFAULT_ALIGNMENT
    kind, value = entry
    if kind != _UINT32 or not isinstance(value, int) or value <= 0 or value & (value - 1):
        raise cur.fail(f"general.alignment must be a uint32 power of two, not {value!r} (type {kind})")
    return value


@dataclass(frozen=True)
class _Info:
    name: str
    dims: tuple[int, ...]
    type: GGMLType
    offset: int


def _tensor_info(cur: _Cursor, i: int) -> _Info:
    raw = cur.raw_string(f"the name of tensor {i}")
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise cur.fail(f"the name of tensor {i} ({_shown(raw)}) is not valid UTF-8") from None
    where = f"tensor {name!r}"
    if not raw:
        raise cur.fail(f"tensor {i} has an empty name")
    if len(raw) > MAX_NAME_BYTES:
        raise cur.fail(f"{where}: name is {len(raw)} bytes, longer than llama.cpp's {MAX_NAME_BYTES}")
    n_dims = cur.u32(f"the dimension count of {where}")
    if n_dims > MAX_DIMS:
        raise cur.fail(f"{where}: {n_dims} dimensions, more than GGML's {MAX_DIMS}")
    dims = tuple(cur.u64(f"dimension {k} of {where}") for k in range(n_dims))
    if any(d >= 1 << 63 for d in dims) or math.prod(dims) >= 1 << 63:
        raise cur.fail(f"{where}: dimensions {list(dims)} overflow int64")
    refused = refused_gguf_dims(dims)
    if refused is not None:
        raise cur.fail(f"{where}: {refused}")
    type_id = cur.u32(f"the type of {where}")
    kind = TYPES.get(type_id)
    if kind is None:
        raise cur.fail(
            f"{where}: tensor type {type_id} is not a GGML type nandoctor knows "
            "(a fork's own quantization, e.g. ik_llama.cpp's IQ*_K?)",
            hint="nothing in it was checked; re-quantize to a mainline llama.cpp type (llama-quantize) to scan it",
        )
    if dims and dims[0] % kind.block_elems:
        raise cur.fail(f"{where}: its rows of {dims[0]} elements are not whole {kind.name} blocks of {kind.block_elems}")
    offset = cur.u64(f"the data offset of {where}")
    return _Info(name, dims, kind, offset)


def _align(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def _nbytes(info: _Info) -> int:
    numel = math.prod(info.dims)
    if info.type.block_bytes:
        return numel // info.type.block_elems * info.type.block_bytes
    return numel * _PLAIN_BYTES[info.type.name]


_PLAIN_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I8": 1, "I16": 2, "I32": 4, "I64": 8}


def _layout(
    cur: _Cursor, infos: list[_Info], data_start: int, alignment: int, byteorder: str, metadata: dict[str, tuple[int, object]]
) -> tuple[TensorRef, ...]:
    """Tensors packed in info order, each padded to the alignment, all inside the file (as gguf.cpp requires)."""
    seen: set[str] = set()
    expected = 0
    end = data_start
    expert_count = _int_value(metadata, _arch_key(metadata, "expert_count"))
    refs = []
    for info in infos:
        where = f"tensor {info.name!r}"
        if info.name in seen:
            raise cur.fail(f"{where} appears twice; which one llama.cpp loads is undefined")
        seen.add(info.name)
        if info.offset % alignment:
            raise cur.fail(f"{where}: data offset {info.offset:,} is not a multiple of the alignment {alignment}")
        if info.offset != expected:
            kind = "overlaps the tensor before it" if info.offset < expected else f"leaves a hole of {info.offset - expected:,} bytes"
            raise cur.fail(f"{where}: data offset {info.offset:,} {kind} (expected {expected:,})")
        nbytes = _nbytes(info)
        end = data_start + info.offset + nbytes
        if end > cur.size:
            raise cur.fail(f"{where} ends at byte {end:,}, past the end of the {cur.size:,}-byte file (truncated?)")
        expected = info.offset + _align(nbytes, alignment)
        refs.append(_ref(cur.path, info, data_start, nbytes, byteorder, expert_count))
    if infos and cur.size > data_start + expected:
        raise cur.fail(f"{cur.size - data_start - expected:,} unexpected bytes after the last tensor's padding")
    if not infos and cur.size > data_start:
        raise cur.fail(f"{cur.size - cur.pos:,} unexpected bytes after a header that declares no tensors")
    return tuple(refs)


def _ref(path: str, info: _Info, data_start: int, nbytes: int, byteorder: str, expert_count: int | None) -> TensorRef:
    kind = info.type
    start = data_start + info.offset
    if kind.block_bytes:
        fields = BlockFields(kind.name, kind.block_bytes, kind.block_elems, kind.offset, kind.count, kind.packed)
        region = Region(path, start, nbytes, kind.field_dtype, info.name, byteorder, fields)
    else:
        region = Region(path, start, nbytes, kind.name, info.name, byteorder)
    experts = 0
    if _EXPERTS.search(info.name) and len(info.dims) >= 3:
        experts = info.dims[-1] if expert_count is None or expert_count == info.dims[-1] else 0
    return TensorRef(info.name, kind.name, info.dims, region, order="F", experts=experts)


def _block_counts(metadata: dict[str, tuple[int, object]]) -> dict[str, int | None]:
    """Each block prefix's count: ``blk.N`` and an encoder's ``enc.blk.N`` by ``{arch}.block_count``, a decoder's
    ``dec.blk.N`` by ``{arch}.decoder_block_count``, or ``block_count`` without it (as llama.cpp defaults it)."""
    blocks = _int_value(metadata, _arch_key(metadata, "block_count"))
    decoder = _int_value(metadata, _arch_key(metadata, "decoder_block_count"))
    return {"": blocks, "enc.": blocks, "dec.": blocks if decoder is None else decoder}


def _arch_key(metadata: dict[str, tuple[int, object]], suffix: str) -> str:
    arch = metadata.get("general.architecture")
    name = arch[1] if arch is not None and isinstance(arch[1], str) else ""
    return f"{name}.{suffix}"


def _int_value(metadata: dict[str, tuple[int, object]], key: str) -> int | None:
    entry = metadata.get(key)
    if entry is not None and isinstance(entry[1], int) and not isinstance(entry[1], bool):
        return entry[1]
    return None


def _notes(p: str, version: int, byteorder: str) -> tuple[str, ...]:
    if byteorder == "big":
        return (f"{Path(p).name}: a big-endian GGUF (v{version}); scale fields read byte-swapped",)
    return ()


def _shown(raw: bytes) -> str:
    text = raw[:80].decode("utf-8", "replace")
    return repr(text) + ("…" if len(raw) > 80 else "")


__all__ = ["TYPES", "GGMLType", "GGUFReader", "Header", "read_header"]
