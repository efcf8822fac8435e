"""Differential fuzzing of torch zip files: nandoctor accepts a mutated file exactly when
``torch.load(weights_only=True, map_location="cpu")`` does (except the documented cases below, each confirmed
by an independent look at the bytes: Python's zipfile, struct, pickletools, the stdlib unpickler), and then
finds the same tensors (bare storages included), reads the same bytes and counts the same NaN/+Inf/-Inf.

Documented differences (docs/security.md):

* stricter: nandoctor refuses what torch loads: a CRC-32 that does not match (torch never checks it);
  bytes after the zip's end record; a local header that disagrees with the central directory, or whose
  lengths put the data past it (torch reads only the directory); a central directory whose records do not
  fill its declared size; duplicate entry names; compressed entries; overlapping entries; entries outside
  the archive's folder; a ZIP64 locator pointing at no ZIP64 record (torch falls back to the 32-bit end
  record); multi-disk fields that are not those of a single-file archive; a file marked as a folder (torch
  loads uninitialised memory for it); a pickle that Python's own unpickler cannot read; a storage id whose type is not a storage type or whose key or
  location is not text (torch ignores the location under map_location); one storage declared twice with
  different types or sizes (torch keeps the first); a storage the pickle loads (a persistent id) that no
  tensor of the result views, because the pickle discarded it (a stream cut short): torch drops it,
  nandoctor scans it whole as ``<storage K>`` (its NaN could reach the model through an object nandoctor
  does not walk) or, when it is untyped (its dtype is the lost tensor's), refuses the file;
* laxer: nandoctor reads what torch refuses: a pickle naming a global outside torch's allowlist gets an
  inert placeholder (listed in the report) instead of failing the file, so that Lightning and Trainer files
  stay readable; pickle opcodes torch's own unpickler does not implement (`DICT`, `LIST`, `BINSTRING`,
  `STACK_GLOBAL` … of protocols 0, 1, 4 and 5, as Python's pickle writes them) are read; a malformed pickle that stops early is read as the object it returns
  (torch also validates tensors it built and left on the stack).

Mutations: raw bytes anywhere (then mostly CRC or structure refusals); storage bytes with the CRC-32 fixed
up (value-level agreement on random bit patterns); data.pkl bytes with the CRC fixed up (the two
unpicklers); zip header fields; hand-made data.pkl with random offsets, sizes and strides (view bounds).
A small budget runs in CI; `python -m pytest -m slow tests/test_fuzz_torch.py` runs 5 × 2,000 examples.
"""

from __future__ import annotations

import io
import pickletools
import struct
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.mutations import byte_mutations

from nandoctor.dtypes import DTYPES
from nandoctor.engine import scan
from tests.torch_helpers import flatten, p_dict, p_str, p_tensor, p_storage, pickle_bytes, torch_counts, torch_zip

torch = pytest.importorskip("torch")

NAN, INF = float("nan"), float("inf")


def seed_file() -> bytes:
    g = torch.Generator().manual_seed(11)
    w = torch.randn(4, 6, generator=g)
    w[1, 2], w[3, 5] = NAN, INF
    h = torch.tensor([1.0, -INF, 0.5, 2.0, NAN], dtype=torch.float16)
    sd = {
        "w": w,
        "w_t": w.t(),  # a transposed view of the same storage
        "w_slice": w[1:3, 2:5],  # a strided slice holding w[1, 2]
        "h": h,
        "bf": torch.nn.Parameter(torch.tensor([NAN, 1.0, -2.0, INF], dtype=torch.bfloat16)),
        "f64": torch.tensor([[0.0, -INF], [3.0, 1.0]], dtype=torch.float64),
        "fp8": torch.tensor([INF, 0.25, -1.0, 2.0], dtype=torch.float32).to(torch.float8_e5m2),
        "ids": torch.arange(3, dtype=torch.int64),
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(1.5),
        "nested": [torch.tensor([NAN, 1.0]), {"x": torch.ones(2)}],
    }
    buffer = io.BytesIO()
    torch.save(sd, buffer)
    return buffer.getvalue()


SEED = seed_file()


# ---------------------------------------------------------------------------
# An independent look at the zip (Python's zipfile and struct, not nandoctor's reader).
# ---------------------------------------------------------------------------


def _infos(data: bytes) -> list[zipfile.ZipInfo] | None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return z.infolist()
    except Exception:
        return None


def _data_span(data: bytes, info: zipfile.ZipInfo) -> tuple[int, int] | None:
    at = info.header_offset
    if data[at : at + 4] != b"PK\x03\x04" or at + 30 > len(data):
        return None
    nlen, xlen = struct.unpack_from("<HH", data, at + 26)
    start = at + 30 + nlen + xlen
    return start, start + info.compress_size


def _walk_directory(data: bytes) -> tuple[list[tuple[bytes, int]], set[str]]:
    """(name, external attributes) of each central-directory record, walked with struct from the end record
    (ZIP64 too), and facts: ``directory_size`` when the records fail to fill exactly the directory's declared
    count and size, ``zip64`` when a ZIP64 locator points at something that is not a ZIP64 end record."""
    end = data.rfind(b"PK\x05\x06")
    if end < 0 or end + 22 > len(data):
        return [], set()
    disk, cd_disk, n_disk, count, cd_size, cd_offset = struct.unpack_from("<HHHHII", data, end + 4)
    facts = set()
    if disk or cd_disk or n_disk != count:
        facts.add("disk_fields")  # multi-disk fields (torch's zip reader accepts some of them)
    directory_end = end
    locator = end - 20
    if locator >= 0 and data[locator : locator + 4] == b"PK\x06\x07":
        z_disk, z, z_disks = struct.unpack_from("<IQI", data, locator + 4)
        if z_disk or z_disks != 1:
            facts.add("disk_fields")
        if data[z : z + 4] != b"PK\x06\x06":
            return [], facts | {"zip64"}  # torch's zip reader then falls back to the 32-bit end record
        disk, cd_disk, n_disk, count, cd_size, cd_offset = struct.unpack_from("<IIQQQQ", data, z + 16)
        if disk or cd_disk or n_disk != count:
            facts.add("disk_fields")
        directory_end = z
    if cd_offset + cd_size != directory_end:
        return [], facts | {"directory_size"}  # bytes between the directory and the end records
    records, pos = [], cd_offset
    for _ in range(min(count, 1 << 16)):
        if data[pos : pos + 4] != b"PK\x01\x02" or pos + 46 > len(data):
            return records, facts | {"directory_size"}
        nlen, xlen, clen, disk_start = struct.unpack_from("<HHHH", data, pos + 28)
        if disk_start:
            facts.add("disk_fields")
        records.append((data[pos + 46 : pos + 46 + nlen], struct.unpack_from("<I", data, pos + 38)[0]))
        pos += 46 + nlen + xlen + clen
    return records, facts | ({"directory_size"} if pos != cd_offset + cd_size else set())


def zip_facts(data: bytes) -> set[str]:
    """What is odd about this zip, as Python's zipfile and a few struct reads see it."""
    facts: set[str] = set()
    records, directory_facts = _walk_directory(data)
    facts |= directory_facts
    if any(external & 0x10 or name.endswith(b"/") for name, external in records):
        facts.add("directory")  # torch then loads the storage as uninitialised memory
    pkl = _pickle_of(data)
    if pkl is not None:
        facts |= pickle_facts(pkl)
    if not data.startswith(b"PK\x03\x04"):
        facts.add("prefix")
    end = data.rfind(b"PK\x05\x06")
    if end < 0 or end + 22 > len(data) or end + 22 + struct.unpack_from("<H", data, end + 20)[0] != len(data):
        facts.add("trailing")
    infos = _infos(data)
    if infos is None:
        return facts
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        start_dir = z.start_dir
    names = [i.filename for i in infos]
    if len(names) != len(set(names)):
        facts.add("duplicate")
    folder = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] else None
    if folder is None or any(not n.startswith(folder) for n in names):
        facts.add("outside")
    spans = []
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            facts.add("compressed")
        span = _data_span(data, info)
        if span is None:
            facts.add("local")
            continue
        at = info.header_offset
        nlen = struct.unpack_from("<H", data, at + 26)[0]
        method = struct.unpack_from("<H", data, at + 8)[0]
        if data[at + 30 : at + 30 + nlen] != info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437",
                                                                      "replace") or method != info.compress_type:
            facts.add("local")
        spans.append((at, span[1]))
        if span[1] > start_dir:
            facts.add("local_span")  # the local header's lengths put the data past the central directory
        if span[1] > len(data):
            continue
        if info.compress_type == zipfile.ZIP_STORED and zlib.crc32(data[span[0] : span[1]]) != info.CRC:
            facts.add("crc")
    spans.sort()
    if any(b < a_end for (_, a_end), (b, _) in zip(spans, spans[1:])):
        facts.add("overlap")
    return facts


# Each stricter fact, and the words nandoctor's refusal uses for it.
STRICTER = {
    "crc": ("CRC-32",),
    "trailing": ("end-of-central-directory", "unexpected bytes", "appended"),
    "local": ("local header",),
    "duplicate": ("duplicate",),
    "compressed": ("compressed",),
    "overlap": ("overlap",),
    "outside": ("outside",),
    "prefix": ("PK\\x03\\x04",),
    "directory": ("marked as a folder",),
    "directory_size": ("unexpected bytes at the end of the central directory", "does not end where"),
    "stdlib_pickle": ("not a valid pickle", "truncated"),
    "bad_pid": ("storage key and location must be strings", "does not name a torch storage type"),
    "pid_conflict": ("declared twice",),
    "local_span": ("run past the start of the central directory",),
    "zip64": ("ZIP64",),
    "disk_fields": ("multi-disk", "another disk"),
}


def _pickle_of(data: bytes) -> bytes | None:
    infos = _infos(data)
    if not infos:
        return None
    for info in infos:
        if info.filename.endswith("/data.pkl"):
            span = _data_span(data, info)
            return data[span[0] : span[1]] if span else None
    return None


class _Anything:
    """Whatever a global names, in the stdlib check below: accepts any call, state or items."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Anything()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass


# The opcodes torch 2.13's weights_only unpickler implements (torch/_weights_only_unpickler.py); Python's
# unpickler, which nandoctor's restricted one builds on, implements them all (DICT, LIST, STRING, BINSTRING,
# INT, STACK_GLOBAL, FRAME, MEMOIZE, SHORT_BINUNICODE … of protocols 0, 1, 4 and 5).
TORCH_OPCODES = frozenset({
    "APPEND", "APPENDS", "BINFLOAT", "BINGET", "LONG_BINGET", "BININT", "BININT1", "BININT2", "BINPERSID",
    "BINPUT", "LONG_BINPUT", "BINUNICODE", "BUILD", "EMPTY_DICT", "EMPTY_LIST", "EMPTY_SET", "EMPTY_TUPLE",
    "GLOBAL", "LONG1", "MARK", "NEWFALSE", "NEWOBJ", "NEWTRUE", "NONE", "PROTO", "REDUCE", "SETITEM",
    "SETITEMS", "SHORT_BINSTRING", "STOP", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
})


def pickle_facts(pkl: bytes) -> set[str]:
    """Python's own unpickler, with inert globals, on data.pkl: ``stdlib_pickle`` when it cannot read it (bad
    opcodes, memo, stack, protocol; torch's weights_only unpickler is a separate, laxer implementation of the
    same machine); ``bad_pid`` when a storage id's key or location is not text (torch ignores the location
    under map_location)."""
    import pickle

    pids = []
    kinds: dict[str, type] = {}

    class Inert(pickle.Unpickler):
        def find_class(self, module, name):
            return kinds.setdefault(f"{module}.{name}", type(name, (_Anything,), {}))

        def persistent_load(self, pid):
            pids.append(pid)
            return _Anything()

    facts = set()
    try:
        Inert(io.BytesIO(pkl)).load()
    except Exception:
        facts.add("stdlib_pickle")
    try:
        pickletools.dis(pkl, out=io.StringIO())
    except ValueError as exc:
        if "stack not empty after STOP" in str(exc):
            facts.add("stack_left")
    except Exception:
        pass
    try:
        if any(op.name not in TORCH_OPCODES for op, _, _ in pickletools.genops(pkl)):
            facts.add("torch_opcode")  # an opcode torch's weights_only unpickler does not implement
    except Exception:
        pass
    declared: dict[object, tuple] = {}
    for pid in pids:
        if isinstance(pid, tuple) and len(pid) >= 4 and not (
            isinstance(pid[2], str) and isinstance(pid[3], str)
            and isinstance(pid[1], type) and pid[1].__name__.endswith("Storage")
        ):
            facts.add("bad_pid")  # torch takes any object with a dtype as the type, and ignores the location
        if isinstance(pid, tuple) and len(pid) >= 5 and isinstance(pid[2], str):
            if declared.setdefault(pid[2], (pid[1], pid[4])) != (pid[1], pid[4]):
                facts.add("pid_conflict")  # torch keeps the first declaration and ignores the others
    return facts


def globals_in(pkl: bytes) -> set[str] | None:
    try:
        return {arg.replace(" ", ".") for op, arg, _ in pickletools.genops(pkl) if op.name in ("GLOBAL", "INST")}
    except Exception:
        return None


def unknown_globals(data: bytes) -> bool:
    """data.pkl names a global the seed does not (torch's weights_only allowlist is narrower than ours)."""
    pkl = _pickle_of(data)
    found = globals_in(pkl) if pkl is not None else None
    return bool(found and not found <= SEED_GLOBALS_SET)


SEED_GLOBALS_SET = globals_in(_pickle_of(SEED)) or set()


# ---------------------------------------------------------------------------
# The two readers.
# ---------------------------------------------------------------------------


def torch_reads(path: Path):
    """name → tensor as torch loads it; bare storages (not inside a tensor) become 1-D tensors, as nandoctor
    scans them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception:
        return None
    return flatten(_storages_as_tensors(obj))


def _fewer_storages(theirs: dict, data: bytes) -> bool:
    """True when torch's result views fewer storages than the archive holds (some were loaded and dropped)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            held = sum(1 for n in archive.namelist() if "/data/" in n and not n.endswith("/"))
    except (zipfile.BadZipFile, ValueError, OSError):
        return True  # zipfile is stricter than torch's reader here: no independent count to compare
    return len({t.untyped_storage().data_ptr() for t in theirs.values() if t.untyped_storage().nbytes()}) < held


def _storages_as_tensors(value):
    if isinstance(value, torch.storage.TypedStorage):
        return torch.empty(0, dtype=value.dtype).set_(value._untyped_storage)
    if isinstance(value, torch.UntypedStorage):
        return torch.empty(0, dtype=torch.uint8).set_(value)
    if isinstance(value, dict):
        return {k: _storages_as_tensors(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_storages_as_tensors(v) for v in value]
    return value


def our_bytes(raw: bytes, ref) -> bytes:
    item = DTYPES[ref.dtype].itemsize
    region = ref.region
    base = np.frombuffer(raw, np.uint8, count=region.nbytes, offset=region.offset).view(f"V{item}")
    strides = ref.strides if ref.strides is not None else ref.contiguous_strides
    if ref.numel == 0:
        return b""
    view = np.lib.stride_tricks.as_strided(base[ref.storage_offset :], shape=ref.shape,
                                           strides=[s * item for s in strides])
    return view.tobytes()


def torch_bytes(t) -> bytes:
    if t.numel() == 0:
        return b""
    dense = torch.empty(t.shape, dtype=t.dtype).copy_(t.detach())  # standard strides, even for expanded views
    return dense.reshape(-1).view(torch.uint8).numpy().tobytes()


def check(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pytorch_model.bin"
        path.write_bytes(data)
        theirs = torch_reads(path)
        report = scan(path, device="cpu")
        ours = not report.errors
        if ours and theirs is None:
            placeholders = unknown_globals(data) and any("placeholder" in n for n in report.notes)
            assert placeholders or zip_facts(data) & {"stack_left", "torch_opcode"}, (
                "nandoctor accepted a file torch refuses", report.notes)
            return
        if not ours:
            if theirs is not None:
                facts = zip_facts(data)
                words = [w for f in facts if f in STRICTER for w in STRICTER[f]]
                messages = " | ".join(e.message for e in report.errors)
                if "known only to that tensor" in messages and _fewer_storages(theirs, data):
                    return  # an untyped storage whose tensor the pickle discarded: refused, not guessed
                assert any(w in messages for w in words), (
                    f"nandoctor refused a file torch loads: {messages} (independent facts: {sorted(facts)})")
            return
        # Both accept: the same tensors, the same bytes, the same counts; plus, on nandoctor's side, storages
        # the pickle loaded and discarded, scanned whole (and only when torch's result has fewer storages),
        # and tensors the pickle built that its result does not hold (one that stops early leaves them on
        # the stack; the registry scans every tensor built, as <tensor i>).
        whole = [t for t in report.tensors if t.name.startswith(("<storage ", "<tensor "))]
        assert not whole or _fewer_storages(theirs, data) or all(t.name.startswith("<tensor ") for t in whole), [
            t.name for t in whole]
        assert {t.name for t in report.tensors} - {t.name for t in whole} == set(theirs), (
            sorted(t.name for t in report.tensors), sorted(theirs))
        raw = path.read_bytes()
        for result in (t for t in report.tensors if t not in whole):
            t = theirs[result.name]
            assert result.ref.dtype == _dtype_name(t.dtype), result.name
            assert tuple(result.ref.shape) == tuple(t.shape), result.name
            assert our_bytes(raw, result.ref) == torch_bytes(t), result.name
            assert (result.nan, result.posinf, result.neginf) == distinct_counts(t), result.name


def _positions(t) -> np.ndarray:
    index = np.full((), t.storage_offset(), np.int64)
    for n, s in zip(t.shape, t.stride()):
        index = np.add.outer(index, np.arange(n, dtype=np.int64) * s)
    return index.reshape(-1)


def distinct_counts(t) -> tuple[int, int, int]:
    """torch's NaN/+Inf/-Inf counts over the distinct storage elements the view reads (nandoctor counts an
    element an expanded or as_strided view reads twice once: it is one value in the file)."""
    t = t.detach()
    if t.numel() == 0:
        return 0, 0, 0
    base = torch.empty(0, dtype=t.dtype).set_(t.untyped_storage())
    return torch_counts(base[torch.from_numpy(np.unique(_positions(t)))])


def _dtype_name(dtype) -> str:
    return {
        torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
        torch.float8_e5m2: "F8_E5M2", torch.float8_e4m3fn: "F8_E4M3", torch.int64: "I64", torch.int32: "I32",
        torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.bool: "BOOL",
    }.get(dtype, str(dtype))


# ---------------------------------------------------------------------------
# Mutations.
# ---------------------------------------------------------------------------


def _entries(data: bytes) -> list[tuple[zipfile.ZipInfo, int, int]]:
    out = []
    for info in _infos(data) or []:
        span = _data_span(data, info)
        if span:
            out.append((info, *span))
    return out


def fix_crcs(data: bytes) -> bytes:
    """Recompute every stored entry's CRC-32 in the central directory, the local header (when set there)
    and the data descriptor, as a writer that changed the bytes on purpose would."""
    out = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        infos, start_dir = z.infolist(), z.start_dir
    pos = start_dir
    central = {}
    while out[pos : pos + 4] == b"PK\x01\x02":
        nlen, xlen, clen = struct.unpack_from("<HHH", out, pos + 28)
        central[struct.unpack_from("<I", out, pos + 42)[0]] = pos
        pos += 46 + nlen + xlen + clen
    for info in infos:
        span = _data_span(data, info)
        if span is None or info.compress_type != zipfile.ZIP_STORED:
            continue
        crc = zlib.crc32(data[span[0] : span[1]])
        record = central.get(info.header_offset)
        if record is not None:
            struct.pack_into("<I", out, record + 16, crc)
        if struct.unpack_from("<I", out, info.header_offset + 14)[0]:
            struct.pack_into("<I", out, info.header_offset + 14, crc)
        if info.flag_bits & 0x8:
            at = span[1] + (4 if out[span[1] : span[1] + 4] == b"PK\x07\x08" else 0)
            struct.pack_into("<I", out, at, crc)
    return bytes(out)


def byte_mutation():
    return byte_mutations(SEED, 3)


SPECIAL_BYTES = [b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\x00\x00\x80\xff", b"\x01\x00\x80\x7f", b"\x7c",
                 b"\x7e", b"\xfc", b"\x00\x7c", b"\x00\xfc", b"\x01\x7c", b"\xc0\x7f", b"\x80\x7f", b"\x80\xff",
                 b"\x00\x00\x00\x00\x00\x00\xf0\x7f", b"\x00\x00\x00\x00\x00\x00\xf8\xff"]


@st.composite
def storage_mutation(draw) -> bytes:
    """Random bytes and NaN/Inf bit patterns written into storages, CRCs fixed: every file stays loadable."""
    data = bytearray(SEED)
    storages = [(s, e) for info, s, e in _entries(SEED) if "/data/" in info.filename and e > s]
    for _ in range(draw(st.integers(1, 6))):
        start, end = draw(st.sampled_from(storages))
        pos = draw(st.integers(start, end - 1))
        chunk = draw(st.one_of(st.sampled_from(SPECIAL_BYTES), st.binary(min_size=1, max_size=8)))
        chunk = chunk[: end - pos]
        data[pos : pos + len(chunk)] = chunk
    return fix_crcs(bytes(data))


@st.composite
def pickle_mutation(draw) -> bytes:
    """data.pkl bytes changed in place (same length: the zip layout holds), CRC fixed: the unpicklers differ."""
    data = bytearray(SEED)
    (info, start, end) = next(e for e in _entries(SEED) if e[0].filename.endswith("/data.pkl"))
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(start, end - 1))
        if draw(st.booleans()):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        else:
            data[pos] = draw(st.sampled_from([0, 1, 2, 0x7F, 0x80, 0xFF, ord("."), ord("("), ord("R"), ord("t"),
                                              ord("c"), ord("h"), ord("q"), ord("K"), ord("J")]))
    return fix_crcs(bytes(data))


def _central_records(data: bytes) -> list[int]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        pos = z.start_dir
    records = []
    while data[pos : pos + 4] == b"PK\x01\x02":
        records.append(pos)
        nlen, xlen, clen = struct.unpack_from("<HHH", data, pos + 28)
        pos += 46 + nlen + xlen + clen
    return records


LOCAL_FIELDS = {"version": (4, "<H"), "flags": (6, "<H"), "method": (8, "<H"), "time": (10, "<H"),
                "date": (12, "<H"), "crc": (14, "<I"), "csize": (18, "<I"), "usize": (22, "<I"),
                "nlen": (26, "<H"), "xlen": (28, "<H")}
CENTRAL_FIELDS = {"made_by": (4, "<H"), "version": (6, "<H"), "flags": (8, "<H"), "method": (10, "<H"),
                  "time": (12, "<H"), "date": (14, "<H"), "crc": (16, "<I"), "csize": (20, "<I"), "usize": (24, "<I"),
                  "nlen": (28, "<H"), "xlen": (30, "<H"), "clen": (32, "<H"), "disk": (34, "<H"),
                  "iattr": (36, "<H"), "eattr": (38, "<I"), "offset": (42, "<I")}


@st.composite
def header_mutation(draw) -> bytes:
    """One field of a local header, a central-directory record or the end record set to a new value."""
    data = bytearray(SEED)
    where = draw(st.sampled_from(["local", "central", "end"]))
    if where == "end":
        at = SEED.rfind(b"PK\x05\x06")
        offset, fmt = draw(st.sampled_from([(4, "<H"), (6, "<H"), (8, "<H"), (10, "<H"), (12, "<I"), (16, "<I"),
                                            (20, "<H")]))
    else:
        records = _central_records(SEED)
        record = draw(st.sampled_from(records))
        if where == "central":
            at = record
            offset, fmt = CENTRAL_FIELDS[draw(st.sampled_from(sorted(CENTRAL_FIELDS)))]
        else:
            at = struct.unpack_from("<I", SEED, record + 42)[0]
            offset, fmt = LOCAL_FIELDS[draw(st.sampled_from(sorted(LOCAL_FIELDS)))]
    (old,) = struct.unpack_from(fmt, data, at + offset)
    bits = 8 * struct.calcsize(fmt)
    new = draw(st.one_of(st.integers(0, 2**bits - 1), st.integers(-8, 8).map(lambda d: (old + d) % 2**bits),
                         st.sampled_from([0, 1, 8, 2**bits - 1])))
    struct.pack_into(fmt, data, at + offset, new)
    return bytes(data)


@st.composite
def view_mutation(draw) -> bytes:
    """Hand-made data.pkl: random storage sizes, offsets, shapes and strides (in bounds or not), random bytes."""
    n_storages = draw(st.integers(1, 3))
    numels = [draw(st.integers(0, 24)) for _ in range(n_storages)]
    pairs = []
    for i in range(draw(st.integers(1, 4))):
        key = draw(st.integers(0, n_storages - 1))
        ndim = draw(st.integers(0, 3))
        size = [draw(st.integers(0, 5)) for _ in range(ndim)]
        stride = [draw(st.integers(0, 7)) for _ in range(ndim)]
        offset = draw(st.integers(0, 26))
        pairs.append((p_str(f"t{i}"), p_tensor(p_storage(str(key), numels[key]), offset, size, stride)))
    blob = pickle_bytes(p_dict(pairs))
    storages = {}
    for key, numel in enumerate(numels):
        values = draw(st.lists(st.sampled_from([0x7FC00000, 0x7F800000, 0xFF800000, 0x3F800000, 0x00000001,
                                                0xBF800000, 0x7F800001]), min_size=numel, max_size=numel))
        storages[str(key)] = np.array(values, np.uint32).tobytes()
    with tempfile.TemporaryDirectory() as tmp:
        path = torch_zip(Path(tmp) / "m.bin", blob, storages)
        return path.read_bytes()


FAST = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
SLOW = settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
STRATEGIES = {
    "bytes": byte_mutation(),
    "storages": storage_mutation(),
    "pickle": pickle_mutation(),
    "headers": header_mutation(),
    "views": view_mutation(),
}


def test_seed_is_read_alike():
    check(SEED)
    assert zip_facts(SEED) == set()
    report = scan_bytes(SEED)
    assert sum(t.nan for t in report.tensors) >= 4 and sum(t.posinf for t in report.tensors) >= 3


def scan_bytes(data: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.bin"
        path.write_bytes(data)
        return scan(path, device="cpu")


def test_fix_crcs_makes_a_changed_storage_loadable_again():
    """The storage mutation's CRC repair works (else every such example would only test the CRC refusal)."""
    data = bytearray(SEED)
    _, start, _ = next(e for e in _entries(SEED) if e[0].filename.endswith("/data/0"))
    data[start : start + 4] = b"\x00\x00\xc0\x7f"
    assert "crc" in zip_facts(bytes(data)) and scan_bytes(bytes(data)).errors
    fixed = fix_crcs(bytes(data))
    assert zip_facts(fixed) == set() and not scan_bytes(fixed).errors
    check(fixed)


@pytest.mark.parametrize("budget", [pytest.param(FAST, id="ci"), pytest.param(SLOW, id="long", marks=pytest.mark.slow)])
@pytest.mark.parametrize("kind", sorted(STRATEGIES))
def test_mutations_agree_with_torch(kind, budget):
    @budget
    @given(STRATEGIES[kind])
    def run(data):
        check(data)

    run()


INTERLEAVED = {
    # name: (storage index holding the NaN, offset, shape, stride, how many positions of the view read it)
    "overlapping": (8, 0, (4, 6), (2, 1), 2),  # w[2, 4] and w[3, 2] both read element 8
    "interleaved": (4, 0, (4, 2), (2, 3), 1),  # no element read twice; element 4 is w[2, 0]
}


@pytest.mark.parametrize("kind", sorted(INTERLEAVED))
def test_interleaved_views_hold_their_nan(tmp_path, kind):
    index, offset, shape, stride, positions = INTERLEAVED[kind]
    values = np.zeros(24, np.float32)
    values[index] = np.nan
    blob = pickle_bytes(p_dict([(p_str("w"), p_tensor(p_storage("0", 24), offset, shape, stride))]))
    path = torch_zip(tmp_path / "m.bin", blob, {"0": values.tobytes()})
    assert int(torch.isnan(torch.load(path, weights_only=True)["w"]).sum()) == positions
    report = scan(path, device="cpu")
    assert not report.unviewed, "a NaN the view reads is reported as held by no tensor"
    assert [(t.name, t.nan) for t in report.tensors] == [("w", 1)]  # one distinct storage element


def test_empty_irregular_view_beside_a_nan(tmp_path):
    blob = pickle_bytes(p_dict([(p_str("w"), p_tensor(p_storage("0", 1), 0, (2, 2, 0), (1, 1, 0)))]))
    path = torch_zip(tmp_path / "m.bin", blob, {"0": np.array([NAN], np.float32).tobytes()})
    assert torch.load(path, weights_only=True)["w"].shape == (2, 2, 0)
    report = scan(path, device="cpu")
    assert [(t.name, t.nan) for t in report.tensors] == [("w", 0)]
    assert [u.nan for u in report.unviewed] == [1] and report.exit_code == 1  # the NaN no view reads
