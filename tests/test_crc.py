"""nandoctor/crc.py (crc32_combine, the separate pass) and engine/crcs.py (the scan's ledger) on their own:
checked against zlib.crc32 of the whole bytes, for many lengths and any order of arrival. Torch-free but for the last test (an end-to-end scan of a torch file)."""

from __future__ import annotations

import random
import zlib

import pytest

from nandoctor import crc
from nandoctor.engine.crcs import CrcLedger
from nandoctor.model import OwedCrc

LENGTHS = [0, 1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 63, 64, 65, 255, 256, 1000, 1023, 4095, 4096, 4097, 65535, 65536,
           100_003, (1 << 20) + 3]


@pytest.mark.parametrize("len_b", LENGTHS)
def test_combine_matches_the_crc_of_the_concatenation(len_b: int) -> None:
    rng = random.Random(len_b)
    for len_a in (0, 1, 3, 4096, 77_777):
        a, b = rng.randbytes(len_a), rng.randbytes(len_b)
        assert crc.crc32_combine(zlib.crc32(a), zlib.crc32(b), len_b) == zlib.crc32(a + b), (len_a, len_b)


def test_combine_of_many_pieces_in_order() -> None:
    rng = random.Random(7)
    data = rng.randbytes(300_001)
    cuts = sorted({0, len(data), *(rng.randrange(len(data)) for _ in range(40))})
    value = 0
    for start, stop in zip(cuts, cuts[1:]):
        value = crc.crc32_combine(value, zlib.crc32(data[start:stop]), stop - start)
    assert value == zlib.crc32(data)


def test_combine_edge_values() -> None:
    assert crc.crc32_combine(0x12345678, 0, 0) == 0x12345678  # appending nothing changes nothing
    assert crc.crc32_combine(0, 0xDEADBEEF, 5) == 0xDEADBEEF  # nothing before: the second CRC itself
    assert crc.shift_operator(0) == 1 << 31  # x^0: the identity


def test_the_fast_crc_agrees_with_zlib() -> None:
    data = random.Random(3).randbytes(1 << 16)
    assert crc.crc32(data, 0) & 0xFFFFFFFF == zlib.crc32(data)
    assert crc.crc32(memoryview(data)[5:], zlib.crc32(data[:5])) & 0xFFFFFFFF == zlib.crc32(data)


def test_the_gil_free_crc_agrees_with_zlib_on_the_scan_s_arrays() -> None:
    """The scan hands numpy views of its chunks: sizes around the GIL-free threshold, odd offsets into a
    larger buffer, other dtypes, a start value; a non-contiguous view still goes through python-isal."""
    np = pytest.importorskip("numpy")
    data = random.Random(4).randbytes(3 << 20)
    whole = np.frombuffer(data, dtype=np.uint8)
    for start, size in ((0, len(data)), (7, (64 << 10) - 1), (7, 64 << 10), (13, (64 << 10) + 1), (1, 1 << 20)):
        piece = whole[start : start + size]
        seed = zlib.crc32(data[:start])
        assert crc.crc32(piece, seed) & 0xFFFFFFFF == zlib.crc32(data[: start + size]), (start, size)
    assert crc.crc32(whole.view(np.uint16), 0) & 0xFFFFFFFF == zlib.crc32(data)
    with pytest.raises((BufferError, ValueError, TypeError)):  # what python-isal says of a strided buffer
        crc.crc32(whole[::2], 0)
    if crc._isal_without_gil() is not None:  # isal installed (a dependency): the chosen function is the GIL-free one
        assert crc.implementation().__module__ == "nandoctor.crc"


def _owed(data: bytes, offset: int, size: int, expected: int | None = None) -> OwedCrc:
    value = zlib.crc32(data[offset : offset + size]) if expected is None else expected
    return OwedCrc("f.bin", f"data/{offset}", offset, size, value, "'w'")


def _pay(ledger: CrcLedger, data: bytes, pieces: list[tuple[int, int]], seed: int) -> None:
    """The ledger fed the pieces' CRC-32s in a shuffled order (threads finish in any order)."""
    order = list(pieces)
    random.Random(seed).shuffle(order)
    for at, length in order:
        ledger.add(at, length, zlib.crc32(data[at : at + length]))


@pytest.mark.parametrize("seed", range(8))
def test_ledger_covers_every_byte_whatever_the_order(seed: int) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(200_000)
    # three entries, one empty; chunks claimed inside them, some refused (overlap, across an edge), gaps between
    owed = [_owed(data, 100, 50_000), _owed(data, 60_000, 0), _owed(data, 60_100, 120_003)]
    ledger = CrcLedger(owed)
    claimed = []
    for at, length in [(100, 4096), (4196, 4096), (4196, 100), (20_000, 30_100), (50_000, 200), (60_100, 7),
                       (60_107, 65_536), (150_000, 1000), (140_000, 100)]:
        if ledger.claim(at, length):
            claimed.append((at, length))
    assert (4196, 100) not in claimed and (50_000, 200) not in claimed  # an overlap; past the entry's end
    assert (140_000, 100) not in claimed  # before a byte already claimed: left to the gaps
    gaps = list(ledger.gaps(5000))
    assert all(length <= 5000 for _, length in gaps)
    covered = sorted(claimed + gaps)
    for entry in owed:  # every byte of every entry exactly once
        inside = [(a, n) for a, n in covered if entry.offset <= a < entry.offset + entry.size]
        assert sum(n for _, n in inside) == entry.size
        assert all(a + n == b for (a, n), (b, _) in zip(inside, inside[1:]))
    _pay(ledger, data, covered, seed)
    assert ledger.problems() == []


def test_ledger_reports_a_mismatch_and_only_entries_read_whole() -> None:
    data = bytes(range(256)) * 100
    bad = _owed(data, 0, 1000, expected=zlib.crc32(data[:1000]) ^ 1)
    unread = _owed(data, 2000, 1000, expected=0)  # wrong, but never read whole: no verdict
    ledger = CrcLedger([bad, unread])
    assert ledger.claim(0, 600)
    _pay(ledger, data, [(0, 600), *ledger.gaps(4096)][:2], 0)  # the first entry whole, the second one not
    ledger.add(2000, 10, zlib.crc32(data[2000:2010]))
    [problem] = ledger.problems()
    assert problem.path == "f.bin" and "storage data/0 fails its CRC-32 check" in problem.message
    assert "'w'" in problem.message


def test_empty_entries_are_judged_without_a_read() -> None:
    assert CrcLedger([OwedCrc("f", "data/1", 10, 0, 0, "")]).problems() == []
    [problem] = CrcLedger([OwedCrc("f", "data/1", 10, 0, 5, "")]).problems()
    assert "values in it cannot be trusted" in problem.message


def test_separate_pass_matches(tmp_path) -> None:
    data = random.Random(1).randbytes((9 << 20) + 5)  # several pieces of the pass
    path = tmp_path / "blob"
    path.write_bytes(data)
    owed = [_owed(data, 3, (9 << 20) - 1), _owed(data, (9 << 20) + 2, 3, expected=1)]
    with open(path, "rb") as fh:
        [problem] = crc.check_owed(fh.fileno(), owed)
    assert f"data/{(9 << 20) + 2}" in problem.message


@pytest.mark.parametrize("flip_at_mib", [None, 3, 9, 17])
def test_the_scan_s_own_crc_of_a_large_storage_catches_a_flipped_byte(tmp_path, monkeypatch, flip_at_mib) -> None:
    """A 20 MiB bf16 storage, its CRC-32 taken chunk by chunk in the scan's own pass and combined: a finite bit
    flip (no NaN to see) in any chunk fails the check, and the untouched file passes."""
    torch = pytest.importorskip("torch")
    from nandoctor import api
    from tests.torch_helpers import entry_offset, flip_byte

    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": (torch.randn(10 << 20) * 0.02).to(torch.bfloat16)}, path)
    if flip_at_mib is not None:
        flip_byte(path, entry_offset(path, "/data/0") + (flip_at_mib << 20) + 1, 0x01)  # a mantissa bit
    separate = []
    from nandoctor.readers.torch import file as torch_file

    monkeypatch.setattr(torch_file, "check_owed", lambda *a: separate.append(1) or [])  # the scan must not need it
    report = api.scan(path, device="cpu")
    assert not separate
    failures = [e.message for e in report.errors if "CRC-32" in e.message]
    assert bool(failures) == (flip_at_mib is not None), failures
    assert report.nan == 0
