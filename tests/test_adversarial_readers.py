"""Issue 14, readers: files from which ``torch.load(weights_only=True)`` gets NaN/Inf that a reader trusting
its own walk called clean, bombs of a few hundred bytes, and inputs that raised internal errors.

Each case is built here with ``struct`` and pickle opcodes; where torch loads the file it is the oracle
(the exact counts must match), where nandoctor refuses the file the scan must exit 3 naming the reason.
Never exit 0.
"""

from __future__ import annotations

import struct
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from nandoctor.engine import scan
from nandoctor.errors import CorruptCheckpointError, NandoctorError
from nandoctor.readers.torch.file import TorchReader
from tests.torch_helpers import (
    NEWFALSE,
    flatten,
    p_call,
    p_dict,
    p_global,
    p_int,
    p_storage,
    p_str,
    p_tensor,
    p_tuple,
    pickle_bytes,
    torch_counts,
    torch_zip,
    write_zip,
)

torch = pytest.importorskip("torch")
NAN, INF = float("nan"), float("inf")
F32_NAN = np.array([1.0, NAN, INF, -INF], dtype="<f4").tobytes()
F32_CLEAN = np.array([1.0, 2.0, 3.0, 4.0], dtype="<f4").tobytes()


def counts(report) -> dict[str, tuple[int, int, int]]:
    return {t.name: (t.nan, t.posinf, t.neginf) for t in report.tensors}


def oracle(path: Path) -> dict[str, tuple[int, int, int]]:
    return {name: torch_counts(t) for name, t in flatten(torch.load(path, weights_only=True)).items()}


def refused(path: Path, *words: str) -> str:
    """The scan exits 3 and its one problem says why (each of ``words`` appears in it)."""
    report = scan(path, device="cpu")
    assert report.exit_code == 3, counts(report)
    text = " ".join(p.message for p in report.errors)
    for word in words:
        assert word in text, text
    return text


def one_tensor(name: str = "w", numel: int = 4) -> bytes:
    return pickle_bytes(p_dict([(p_str(name), p_tensor(p_storage("0", numel), 0, [numel], [1]))]))


# ---------------------------------------------------------------------------------------------------------
# Item 2: zip records as torch reads them (case-insensitive names, the last end record).
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("twin", ["archive/DATA.PKL", "archive/BYTEORDER", "archive/DATA/0", "Archive/data/0"])
def test_names_that_collide_without_case_are_refused(tmp_path: Path, twin: str) -> None:
    items = [("archive/data.pkl", one_tensor()), ("archive/byteorder", b"little"), ("archive/data/0", F32_CLEAN),
             ("archive/version", b"3\n")]
    replacement = {"archive/DATA.PKL": one_tensor("hidden"), "archive/BYTEORDER": b"big"}.get(twin, F32_NAN)
    path = tmp_path / "twins.pt"
    write_zip(path, [*items, (twin, replacement)])
    refused(path, "duplicate", "case")


def test_upper_case_records_are_the_ones_torch_reads(tmp_path: Path) -> None:
    """Without a lower-case twin, ``DATA.PKL`` and ``DATA/0`` are torch's data.pkl and data/0."""
    path = tmp_path / "upper.pt"
    write_zip(path, [("archive/DATA.PKL", one_tensor()), ("archive/Data/0", F32_NAN), ("archive/version", b"3\n")])
    assert oracle(path) == {"w": (1, 1, 1)}
    report = scan(path, device="cpu")
    assert counts(report) == {"w": (1, 1, 1)} and report.exit_code == 1


def _end_record(data: bytes) -> int:
    return data.rindex(b"PK\x05\x06")


def test_an_archive_hidden_in_the_end_records_comment_is_refused(tmp_path: Path) -> None:
    clean, hidden = tmp_path / "clean.pt", tmp_path / "hidden.pt"
    torch_zip(clean, one_tensor(), {"0": F32_CLEAN})
    torch_zip(hidden, one_tensor(), {"0": F32_NAN})
    outer, inner = clean.read_bytes(), hidden.read_bytes()
    at = _end_record(outer)
    path = tmp_path / "comment.pt"
    path.write_bytes(outer[: at + 20] + struct.pack("<H", len(inner)) + inner)
    refused(path, "comment")


def test_a_short_comment_is_refused_and_the_patcher_refuses_it_too(tmp_path: Path) -> None:
    from nandoctor.restore import zippatch

    path = torch_zip(tmp_path / "c.pt", one_tensor(), {"0": F32_CLEAN})
    data = path.read_bytes()
    at = _end_record(data)
    path.write_bytes(data[: at + 20] + struct.pack("<H", 5) + b"hello")
    assert zipfile.ZipFile(path).comment == b"hello"  # a valid zip to Python
    refused(path, "comment")
    with pytest.raises(CorruptCheckpointError, match="comment"):
        zippatch.read_entries(str(path))


def test_the_patcher_reads_the_directory_the_scan_read(tmp_path: Path) -> None:
    """One parser: the patcher's entries are the strict parser's, central records included."""
    from nandoctor.readers.zipentries import read_directory
    from nandoctor.restore import zippatch

    path = torch_zip(tmp_path / "ok.pt", one_tensor(), {"0": F32_CLEAN})
    with open(path, "rb") as fh:
        strict = read_directory(str(path), fh, path.stat().st_size)
    entries = zippatch.read_entries(str(path))
    assert [e.name for e in entries] == list(strict.entries)
    data = path.read_bytes()
    for entry in entries:
        assert data[entry.central_offset : entry.central_offset + 4] == b"PK\x01\x02"
        assert struct.unpack_from("<I", data, entry.central_offset + 16)[0] == entry.crc
    # a duplicate the old patcher parsed without a word is refused now
    twin = tmp_path / "twin.pt"
    write_zip(twin, [("archive/data.pkl", one_tensor()), ("archive/data/0", F32_CLEAN), ("archive/DATA/0", F32_NAN)])
    with pytest.raises(CorruptCheckpointError, match="duplicate"):
        zippatch.read_entries(str(twin))


def test_bytes_in_front_of_the_first_entry_are_refused(tmp_path: Path) -> None:
    """A second local header in front of the archive's first entry (the file still starts with PK\\x03\\x04)."""
    path = torch_zip(tmp_path / "ok.pt", one_tensor(), {"0": F32_CLEAN})
    data = path.read_bytes()
    front = b"PK\x03\x04" + b"\0" * 60
    shifted = bytearray(front + data)
    # shift every offset the directory holds by len(front)
    z = zipfile.ZipFile(path)
    cd_offset = z.start_dir
    pos = len(front) + cd_offset
    for _ in z.infolist():
        (offset,) = struct.unpack_from("<I", shifted, pos + 42)
        struct.pack_into("<I", shifted, pos + 42, offset + len(front))
        nlen, xlen, clen = struct.unpack_from("<HHH", shifted, pos + 28)
        pos += 46 + nlen + xlen + clen
    end = len(shifted) - 22
    struct.pack_into("<I", shifted, end + 16, cd_offset + len(front))
    path.write_bytes(bytes(shifted))
    refused(path, "not 0")


# ---------------------------------------------------------------------------------------------------------
# Item 1: tensor values written inline in the pickle by calling a tensor class.
# ---------------------------------------------------------------------------------------------------------

INLINE = b"]" + b"(" + b"G" + struct.pack(">d", 1.0) + b"G" + struct.pack(">d", NAN) + b"G" + struct.pack(">d", INF) + b"e"


@pytest.mark.parametrize("cls", ["Tensor", "FloatTensor", "HalfTensor", "BFloat16Tensor", "DoubleTensor"])
def test_inline_tensor_data_is_refused(tmp_path: Path, cls: str) -> None:
    body = p_dict([(p_str("w"), p_call(p_global("torch", cls), [INLINE]))])
    path = torch_zip(tmp_path / "inline.pt", pickle_bytes(body), {})
    assert oracle(path) == {"w": (1, 1, 0)}  # torch's weights-only loader builds it
    refused(path, f"torch.{cls}()", "pickle itself")


def test_inline_tensor_data_through_newobj_is_refused(tmp_path: Path) -> None:
    body = p_dict([(p_str("w"), p_global("torch", "FloatTensor") + p_tuple([INLINE]) + b"\x81")])
    path = torch_zip(tmp_path / "newobj.pt", pickle_bytes(body), {})
    assert scan(path, device="cpu").exit_code == 3


def test_a_tensor_class_of_a_storage_is_a_view_and_sizes_are_refused(tmp_path: Path) -> None:
    body = p_dict([(p_str("w"), p_call(p_global("torch", "FloatTensor"), [p_storage("0", 4)]))])
    path = torch_zip(tmp_path / "view.pt", pickle_bytes(body), {"0": F32_NAN})
    assert oracle(path) == {"w": (1, 1, 1)}
    report = scan(path, device="cpu")
    assert counts(report) == {"w": (1, 1, 1)} and report.exit_code == 1
    sizes = p_dict([(p_str("w"), p_call(p_global("torch", "HalfTensor"), [p_int(3), p_int(2)]))])
    refused(torch_zip(tmp_path / "sizes.pt", pickle_bytes(sizes), {}), "uninitialised")


# ---------------------------------------------------------------------------------------------------------
# Item 3: big-endian files, swapped by the declared storage type.
# ---------------------------------------------------------------------------------------------------------


def _v3(storage: bytes, numel: int, dtype: str) -> bytes:
    return p_call(p_global("torch._utils", "_rebuild_tensor_v3"),
                  [storage, p_int(0), p_tuple([p_int(numel)]), p_tuple([p_int(1)]), NEWFALSE,
                   p_call(p_global("collections", "OrderedDict"), []), p_global("torch", dtype)])


def _untyped(key: str, nbytes: int) -> bytes:
    return p_tuple([p_str("storage"), p_global("torch.storage", "UntypedStorage"), p_str(key), p_str("cpu"),
                    p_int(nbytes)]) + b"Q"


def test_a_big_endian_untyped_storage_is_never_swapped(tmp_path: Path) -> None:
    """torch loads an untyped storage as uint8 and never swaps it: the little-endian NaN stays a NaN."""
    raw = np.array([1.0, NAN, INF, 2.0], dtype="<f2").tobytes()
    body = p_dict([(p_str("w"), _v3(_untyped("0", 8), 4, "float16"))])
    path = torch_zip(tmp_path / "be.pt", pickle_bytes(body), {"0": raw}, byteorder=b"big")
    assert oracle(path) == {"w": (1, 1, 0)}
    report = scan(path, device="cpu")
    assert counts(report) == {"w": (1, 1, 0)} and report.exit_code == 1


def test_a_big_endian_view_of_another_width_is_refused(tmp_path: Path) -> None:
    """A float16 view of a float32 storage: torch swaps 4-byte units, which shuffles the float16 values."""
    raw = np.array([1.0, NAN, 2.0, 3.0], dtype=">f2").tobytes()
    body = p_dict([(p_str("w"), _v3(p_storage("0", 2), 4, "float16"))])
    path = torch_zip(tmp_path / "be16.pt", pickle_bytes(body), {"0": raw}, byteorder=b"big")
    assert oracle(path) == {"w": (1, 0, 0)}
    refused(path, "big-endian", "4-byte units")


def test_a_legacy_file_flagged_big_endian_is_read_little_endian_like_torch(tmp_path: Path) -> None:
    from tests.torch_helpers import legacy_file

    body = p_dict([(p_str("w"), p_tensor(p_storage("0", 4, legacy=True), 0, [4], [1]))])
    path = legacy_file(tmp_path / "old.pt", pickle_bytes(body), [("0", F32_NAN, 4)], little_endian=False)
    data = path.read_bytes()  # the helper wrote the count big-endian; torch reads it little-endian
    path.write_bytes(data.replace(struct.pack(">q", 4) + F32_NAN, struct.pack("<q", 4) + F32_NAN))
    assert oracle(path) == {"w": (1, 1, 1)}
    report = scan(path, device="cpu")
    assert counts(report) == {"w": (1, 1, 1)} and report.exit_code == 1


# ---------------------------------------------------------------------------------------------------------
# Item 4: tensors the name walk does not reach are scanned all the same (the unpickler's registry).
# ---------------------------------------------------------------------------------------------------------

EMPTY_OD = p_call(p_global("collections", "OrderedDict"), [])


def _with_attrs(obj: bytes, attrs: list[tuple[bytes, bytes]]) -> bytes:
    return obj + p_dict(attrs) + b"b"  # BUILD: obj.__dict__.update(attrs)


def _hidden_cases() -> dict[str, bytes]:
    nan_tensor = p_tensor(p_storage("1", 4), 0, [4], [1])
    int_view = _v3(_untyped("0", 16), 4, "int32")
    v2 = p_global("torch._utils", "_rebuild_tensor_v2")
    hooks_with_attr = _with_attrs(EMPTY_OD, [(p_str("x"), nan_tensor)])
    optimizer = _with_attrs(
        p_call(p_global("collections", "OrderedDict"), [b"]" + b"(" + p_tuple([p_str("state"), b"}"])
                                                         + p_tuple([p_str("param_groups"), b"]"]) + b"e"]),
        [(p_str("x"), nan_tensor)])
    optimizer_state = p_dict([(p_str("state"), p_call(p_global("collections", "OrderedDict"), []) + p_dict(
        [(p_str("x"), nan_tensor)]) + b"b"), (p_str("param_groups"), b"]")])
    subclass = p_call(p_global("torch._tensor", "_rebuild_from_type_v2"), [
        v2, p_global("torch", "Tensor"),
        p_tuple([p_storage("2", 4), p_int(0), p_tuple([p_int(4)]), p_tuple([p_int(1)]), NEWFALSE,
                 p_dict([(p_str("h"), nan_tensor)])]),
        p_dict([(p_str("a"), p_int(1))])])
    return {
        "hooks": p_dict([(p_str("w"), p_call(v2, [p_storage("2", 4), p_int(0), p_tuple([p_int(4)]),
                                                 p_tuple([p_int(1)]), NEWFALSE, hooks_with_attr])),
                         (p_str("i"), int_view)]),
        "optimizer": p_dict([(p_str("opt"), optimizer), (p_str("i"), int_view)]),
        "optimizer_state": p_dict([(p_str("opt"), optimizer_state), (p_str("i"), int_view)]),
        "subclass_state": p_dict([(p_str("s"), subclass), (p_str("i"), int_view)]),
    }


@pytest.mark.parametrize("case", ["hooks", "optimizer", "optimizer_state", "subclass_state"])
def test_tensors_no_name_reaches_are_scanned(tmp_path: Path, case: str) -> None:
    raw = np.array([1, 2, 3, 4], dtype="<i4").tobytes()
    storages = {"0": raw, "1": F32_NAN, "2": F32_CLEAN}
    path = torch_zip(tmp_path / f"{case}.pt", pickle_bytes(_hidden_cases()[case]), storages)
    report = scan(path, device="cpu")
    nan_counts = {name: c for name, c in counts(report).items() if c != (0, 0, 0)}
    assert list(nan_counts.values()) == [(1, 1, 1)], counts(report)
    assert report.exit_code == 1


def test_a_float_view_hidden_behind_an_integer_view_is_never_clean(tmp_path: Path) -> None:
    """The hidden tensor views the same untyped storage as float32: found, and the file refused."""
    hidden = _v3(_untyped("0", 16), 4, "float32")
    body = p_dict([(p_str("i"), _v3(_untyped("0", 16), 4, "int32")),
                   (p_str("h"), p_call(p_global("torch._utils", "_rebuild_tensor_v2"),
                                       [_untyped("1", 16), p_int(0), p_tuple([p_int(4)]), p_tuple([p_int(1)]),
                                        NEWFALSE, _with_attrs(EMPTY_OD, [(p_str("x"), hidden)])]))])
    path = torch_zip(tmp_path / "h.pt", pickle_bytes(body), {"0": F32_NAN, "1": F32_CLEAN})
    refused(path, "viewed as")


# ---------------------------------------------------------------------------------------------------------
# Item 9: a tensor's saved state as torch takes it (never charged to an invented tensor).
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entries", [4, 5])
def test_legacy_tensor_state_tuples_are_refused(tmp_path: Path, entries: int) -> None:
    state = p_tuple([p_tensor(p_storage("1", 4), 0, [4], [1])] + [p_int(0)] * (entries - 1))
    sub = p_call(p_global("torch._tensor", "_rebuild_from_type_v2"), [
        p_global("torch._utils", "_rebuild_tensor_v2"), p_global("torch", "Tensor"),
        p_tuple([p_storage("0", 4), p_int(0), p_tuple([p_int(4)]), p_tuple([p_int(1)]), NEWFALSE, EMPTY_OD]),
        state])
    path = torch_zip(tmp_path / "s.pt", pickle_bytes(p_dict([(p_str("p"), sub)])), {"0": F32_CLEAN, "1": F32_NAN})
    refused(path, f"{entries} entries")
    body = b"\x80\x02" + p_dict([(p_str("p"), p_tensor(p_storage("0", 4), 0, [4], [1]) + state + b"b")]) + b"."
    path = torch_zip(tmp_path / "b.pt", body, {"0": F32_CLEAN, "1": F32_NAN})
    refused(path, "re-points")


def test_a_state_pair_sets_attributes(tmp_path: Path) -> None:
    pair = p_tuple([p_dict([(p_str("a"), p_tensor(p_storage("1", 4), 0, [4], [1]))]), b"N"])
    sub = p_call(p_global("torch._tensor", "_rebuild_from_type_v2"), [
        p_global("torch._utils", "_rebuild_tensor_v2"), p_global("torch", "Tensor"),
        p_tuple([p_storage("0", 4), p_int(0), p_tuple([p_int(4)]), p_tuple([p_int(1)]), NEWFALSE, EMPTY_OD]),
        pair])
    path = torch_zip(tmp_path / "pair.pt", pickle_bytes(p_dict([(p_str("p"), sub)])), {"0": F32_CLEAN, "1": F32_NAN})
    report = scan(path, device="cpu")
    assert counts(report) == {"p": (0, 0, 0), "p.a": (1, 1, 1)} and report.exit_code == 1


# ---------------------------------------------------------------------------------------------------------
# Item 7: a quantized tensor's scale and zero point.
# ---------------------------------------------------------------------------------------------------------


def _qtensor(scale: float, zero_point: int) -> bytes:
    params = p_tuple([p_global("torch", "per_tensor_affine"), b"G" + struct.pack(">d", scale), p_int(zero_point)])
    return pickle_bytes(p_dict([(p_str("q"), p_call(p_global("torch._utils", "_rebuild_qtensor"), [
        p_storage("0", 2, "QInt8Storage"), p_int(0), p_tuple([p_int(2)]), p_tuple([p_int(1)]), params, NEWFALSE,
        EMPTY_OD]))]))


@pytest.mark.parametrize(("scale", "expected"), [(NAN, (1, 0, 0)), (INF, (0, 1, 0)), (-INF, (0, 0, 1))])
def test_a_non_finite_quantizer_scale_is_a_finding(tmp_path: Path, scale: float, expected: tuple) -> None:
    path = torch_zip(tmp_path / "q.pt", _qtensor(scale, 3), {"0": bytes([2, 4])})
    assert not torch.isfinite(torch.load(path, weights_only=True)["q"].dequantize()).all()
    report = scan(path, device="cpu")
    assert counts(report) == {"q": (0, 0, 0), "q.<scale>": expected} and report.exit_code == 1


def test_a_zero_point_out_of_range_is_refused(tmp_path: Path) -> None:
    path = torch_zip(tmp_path / "q.pt", _qtensor(0.5, 1000), {"0": bytes([2, 4])})
    refused(path, "range")


@pytest.mark.parametrize("scale", [1e300, 1e30, -1e6])
def test_a_huge_quantizer_scale_is_an_exploded_weight(tmp_path: Path, scale: float) -> None:
    """torch loads the file (a trial: a scale of 1e30 was CLEAN, a flipped bit's 8.99e306 "0 tensors read") and
    dequantizes to values as huge, or Inf past float32's range: the scale is the weight's, and exploded."""
    path = torch_zip(tmp_path / "q.pt", _qtensor(scale, 3), {"0": bytes([2, 4])})
    values = torch.load(path, weights_only=True)["q"].dequantize()
    assert (~torch.isfinite(values)).any() or values.abs().max() > 1e5  # the oracle
    report = scan(path, device="cpu")
    assert report.exit_code == 1 and report.verdict == "EXPLODED"
    (row,) = [t for t in report.tensors if t.name == "q.<scale>"]
    assert row.ref.role == "weight" and row.exploded == 1 and row.max_abs == abs(scale)


def test_a_finite_quantizer_is_clean(tmp_path: Path) -> None:
    path = tmp_path / "q.pt"
    torch.save({"q": torch.quantize_per_tensor(torch.tensor([1.0, 2.0]), 0.5, 3, torch.qint8)}, path)
    report = scan(path, device="cpu")
    assert report.exit_code == 0 and [t.name for t in report.tensors] == ["q"]


# ---------------------------------------------------------------------------------------------------------
# Item 10: bombs of a few hundred bytes, and many views of one storage.
# ---------------------------------------------------------------------------------------------------------


def _shared_tuple(depth: int) -> bytes:
    """A tuple of 2**depth paths from ~8 bytes per level: each level pairs the level below with itself."""
    body = b")q\x00"
    for i in range(1, depth + 1):
        body += b"h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"\x86q" + bytes([i])
    return body + b"0"  # leave it in the memo only


def test_a_shared_tuple_as_a_dict_key_is_refused_before_it_is_hashed(tmp_path: Path) -> None:
    data = b"\x80\x02" + _shared_tuple(60) + b"}" + b"h" + bytes([60]) + p_int(1) + b"s."
    path = torch_zip(tmp_path / "dag.pt", data, {})
    assert path.stat().st_size < 1000
    started = time.perf_counter()
    refused(path, "hashing bomb")
    assert time.perf_counter() - started < 2


def test_a_shared_tuple_hashed_by_frozenset_is_refused(tmp_path: Path) -> None:
    items = b"]" + b"(" + b"h\x28" * 200 + b"e"  # a list of 200 references to a 2**40-path tuple
    data = b"\x80\x02" + _shared_tuple(40) + p_call(p_global("builtins", "frozenset"), [items]) + b"."
    refused(torch_zip(tmp_path / "fs.pt", data, {}), "hashing bomb")


def test_a_key_is_named_by_a_bounded_repr(tmp_path: Path) -> None:
    """A tuple of 2**18 paths is allowed as a key (it hashes fast); its name is a few dozen characters."""
    data = (b"\x80\x02" + _shared_tuple(18) + b"}" + b"h" + bytes([18])
            + p_dict([(p_str("w"), p_tensor(p_storage("0", 4), 0, [4], [1]))]) + b"s.")
    path = torch_zip(tmp_path / "key.pt", data, {"0": F32_NAN})
    started = time.perf_counter()
    report = scan(path, device="cpu")
    assert time.perf_counter() - started < 2
    (name,) = counts(report)
    assert name.endswith(".w") and len(name) < 120 and counts(report)[name] == (1, 1, 1)


def test_many_views_of_one_storage_are_refused_quickly(tmp_path: Path) -> None:
    from nandoctor.readers.torch.rebuilds import MAX_VIEWS_PER_STORAGE

    n = MAX_VIEWS_PER_STORAGE + 1
    head = p_storage("0", 1024) + b"q\x00" + p_global("torch._utils", "_rebuild_tensor_v2") + b"q\x01" + EMPTY_OD
    views = []
    for i in range(n):
        storage, func = (head, b"") if i == 0 else (b"h\x00", b"h\x01")
        call = (func or b"") + b"(" + storage + p_int(i % 1000) + b"K\x04\x85K\x01\x85\x89" + b"}" + b"tR"
        views.append(p_int(i) + (call if i else p_global("torch._utils", "_rebuild_tensor_v2") + b"q\x01(" +
                                 p_storage("0", 1024) + b"q\x00" + p_int(0) + b"K\x04\x85K\x01\x85\x89}tR"))
    data = b"\x80\x02}(" + b"".join(views) + b"u."
    path = torch_zip(tmp_path / "views.pt", data, {"0": np.zeros(1024, "<f4").tobytes()})
    started = time.perf_counter()
    refused(path, "views of storage")
    assert time.perf_counter() - started < 5


def test_a_legacy_files_non_finite_scale_points_at_its_bytes(tmp_path: Path) -> None:
    from tests.torch_helpers import legacy_file

    params = p_tuple([p_global("torch", "per_tensor_affine"), b"G" + struct.pack(">d", NAN), p_int(0)])
    body = p_dict([(p_str("q"), p_call(p_global("torch._utils", "_rebuild_qtensor"), [
        p_storage("0", 2, "QInt8Storage", legacy=True), p_int(0), p_tuple([p_int(2)]), p_tuple([p_int(1)]), params,
        NEWFALSE, EMPTY_OD]))])
    path = legacy_file(tmp_path / "q.pt", pickle_bytes(body), [("0", bytes([1, 2]), 2)])
    report = scan(path, device="cpu")
    assert counts(report) == {"q": (0, 0, 0), "q.<scale>": (1, 0, 0)} and report.exit_code == 1
    (scale,) = [t for t in report.tensors if t.name == "q.<scale>"]
    at = scale.ref.region.offset
    assert path.read_bytes()[at - 1 : at + 8] == b"G" + struct.pack(">d", NAN)


# ---------------------------------------------------------------------------------------------------------
# Item 11: shard names that are no file names.
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shard", ["a\u0000b.safetensors", "x" * 300 + ".safetensors", "d/" + "é" * 130 + ".bin"])
def test_shard_names_that_are_no_file_names_are_problems(tmp_path: Path, shard: str) -> None:
    import json

    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {"w": shard}}))
    try:
        report = scan(tmp_path, device="cpu")
    except NandoctorError:
        return  # a refusal of the whole folder is a NandoctorError too; never an OSError or ValueError
    assert report.exit_code == 3 and "not a valid file name" in report.errors[0].message


# ---------------------------------------------------------------------------------------------------------
# A safetensors header Python's json reads and safetensors' serde refuses
# ---------------------------------------------------------------------------------------------------------

def _header_with(tmp_path: Path, extra: str, pad_names: int = 0) -> Path:
    """A clean one-tensor safetensors file whose entry carries ``extra`` as an unknown field (and ``pad_names`` more
    clean tensors, to make the header large enough for the compact parser)."""
    entries = ['"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16],"x":%s}' % extra]
    entries += ['"p%06d":{"dtype":"F32","shape":[4],"data_offsets":[%d,%d]}' % (i, 16 * (i + 1), 16 * (i + 2))
                for i in range(pad_names)]
    header = ("{" + ",".join(entries) + "}").encode()
    header += b" " * (-len(header) % 8)
    path = tmp_path / "h.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + F32_CLEAN * (1 + pad_names))
    return path


@pytest.mark.parametrize("pad_names", [0, 6000])  # (6000 tensors: a header the compact parser is tried on)
@pytest.mark.parametrize("extra, loads", [
    ("NaN", False), ("-Infinity", False), ("1e400", False), ("-1e309", False), ("1" + "0" * 309, False),
    ("[" * 125 + "]" * 125, True), ("[" * 126 + "]" * 126, False), ('{"a":' * 126 + "1" + "}" * 126, False),
    ("1e308", True), ("1.5e-400", True), ("1" + "0" * 40, True), ('{"a":[1,{"b":null}]}', True),
    ('["\\ud800"]', False), ('[["\\udc00"]]', False), ('{"a":["\\ud800"]}', False), ('["\\ud83d\\ude00"]', True),
])
def test_a_header_safetensors_refuses_is_never_clean(tmp_path: Path, extra: str, loads: bool, pad_names: int) -> None:
    """An adversarial round: an unknown field holding NaN, Infinity, 1e400, a 400-digit integer or nesting past
    serde's recursion limit (the top object is level 1 of 127): Python's json reads it, safetensors refuses the
    header ("invalid JSON in header"), from_pretrained fails, and nandoctor said CLEAN (a repair of such a file was
    "verified" and did not load). load_file is the oracle, both ways."""
    from safetensors.numpy import load_file

    path = _header_with(tmp_path, extra, pad_names)
    try:
        load_file(path)
        loaded = True
    except Exception as exc:  # (safetensors raises its own SafetensorError)
        assert "invalid JSON in header" in str(exc)
        loaded = False
    assert loaded is loads  # the oracle
    report = scan(path, device="cpu")
    if loads:
        assert report.exit_code == 0 and not report.errors
    else:
        assert report.exit_code == 3 and "JSON" in report.errors[0].message, report.errors


@pytest.mark.parametrize("key", [7, b"x"])
def test_a_hugging_face_weights_file_with_a_key_that_is_no_string_is_not_loadable(tmp_path: Path, key) -> None:
    """An adversarial round: pytorch_model.bin holding every weight plus a tensor under the key ``7`` (or ``b"x"``):
    torch.load(weights_only=True) returns it, from_pretrained raises (AttributeError, TypeError), nandoctor said
    CLEAN. Another torch file's keys are its own loader's business."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=4)
    model = transformers.LlamaForCausalLM(config)
    config.save_pretrained(tmp_path)
    state = {**model.state_dict(), key: torch.ones(2)}
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises((AttributeError, TypeError)):  # the oracle
        transformers.LlamaForCausalLM.from_pretrained(tmp_path)
    report = scan(tmp_path, device="cpu")
    assert report.exit_code == 3 and [p.kind for p in report.errors] == ["unloadable"], report.errors
    assert "no string" in report.errors[0].message
    torch.save(state, tmp_path / "model.pt")
    assert scan(tmp_path / "model.pt", device="cpu").exit_code == 0
