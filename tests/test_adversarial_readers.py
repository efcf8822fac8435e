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
