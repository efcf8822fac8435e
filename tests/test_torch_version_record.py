"""A torch zip's archive version record, judged as torch.load judges it: a file torch refuses (no ``version``
record, a version past what torch reads, one it cannot parse) is a problem of the file (exit 3), never CLEAN;
every record torch accepts is scanned as before. torch.load is the oracle for every case."""

from __future__ import annotations

import io
import zipfile

import pytest

from nandoctor.engine import scan
from nandoctor.readers.torch import version as archive_version
from tests.conftest import run_cli

torch = pytest.importorskip("torch")

TEXTS = [b"%d\n" % n for n in range(0, 21)] + [
    b"3", b" 3\n", b"\t3\r\n", b"\v\f3", b"03\n", b"+3\n", b"-3\n", b"-0\n", b"3x\n", b"0x5\n", b"x\n", b"", b"\n",
    b"3\x00junk", b"\x003", b"18446744073709551615\n", b"18446744073709551616\n", b"18446744073709551617\n",
    b"9223372036854775808\n", b"-18446744073709551615\n", b"99999999999999999999999\n", b"1" * 200,
]
WHERE = ["version", ".data/version", "both", "both, version bad"]


def _entries() -> tuple[str, list[tuple[str, bytes]]]:
    buf = io.BytesIO()
    torch.save({"w": torch.arange(4, dtype=torch.float32)}, buf)
    with zipfile.ZipFile(buf) as z:
        entries = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    folder = entries[0][0].split("/", 1)[0] + "/"
    return folder, [(n, d) for n, d in entries if n not in (folder + "version", folder + ".data/version")]


def _archive(path, records: list[tuple[str, bytes]]) -> None:
    folder, entries = _entries()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for name, data in [*entries[:2], *((folder + n, d) for n, d in records), *entries[2:]]:
            out.writestr(zipfile.ZipInfo(name), data)


def _records(where: str, text: bytes) -> list[tuple[str, bytes]]:
    if where == "both":
        return [(".data/version", text), ("version", b"3\n")]
    if where == "both, version bad":
        return [(".data/version", b"3\n"), ("version", text)]
    return [(where, text)]


def _torch_loads(path) -> bool:
    try:
        torch.load(path, weights_only=True)
    except (RuntimeError, IndexError):  # IndexError: torch's words for std::out_of_range ("stoull")
        return False
    return True


@pytest.mark.parametrize("where", WHERE)
def test_scan_refuses_exactly_the_version_records_torch_load_refuses(tmp_path, where):
    for i, text in enumerate(TEXTS):
        path = tmp_path / f"v{i}.pt"
        _archive(path, _records(where, text))
        loads = _torch_loads(path)
        report = scan(path, device="cpu")
        assert report.exit_code == (0 if loads else 3), (where, text, report.errors)
        if not loads:
            assert "torch.load refuses it" in report.errors[0].message and report.errors[0].path == str(path)


def test_an_archive_without_a_version_record_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "model.pt"
    _archive(path, [])
    with pytest.raises(RuntimeError, match='hasRecord\\("version"\\)'):
        torch.load(path, weights_only=True)
    result = run_cli("scan", path)
    assert result.exit_code == 3 and "CLEAN" not in result.output
    assert f"{path}: the archive has no version record (archive/version); torch.load refuses it" in result.output
    assert "hint: load it with the torch that wrote it and re-save it with torch.save" in result.output


def test_a_version_newer_than_torch_reads_is_refused_with_torchs_words(tmp_path):
    path = tmp_path / "model.pt"
    _archive(path, [("version", b"99\n")])
    with pytest.raises(RuntimeError, match="version 99, but the maximum supported version for reading is 10"):
        torch.load(path, weights_only=True)
    quiet = run_cli("scan", "-q", path)
    assert quiet.exit_code == 3 and quiet.output.startswith("FAIL UNREADABLE")
    assert "says format version 99; torch reads versions 1 to 10" in quiet.output


def test_the_supported_range_is_the_installed_torchs(tmp_path):
    """MIN_VERSION/MAX_VERSION are torch's kMin/kMaxSupportedFileFormatVersion: the first refused versions on
    either side are the bounds' neighbours."""
    for version, loads in [(archive_version.MIN_VERSION - 1, False), (archive_version.MIN_VERSION, True),
                           (archive_version.MAX_VERSION, True), (archive_version.MAX_VERSION + 1, False)]:
        path = tmp_path / f"{version}.pt"
        _archive(path, [("version", b"%d\n" % version)])
        assert _torch_loads(path) is loads


ALIGNMENTS = [b"64", b"", b"x", b" 64 \n", b"+64", b"-1", b"0", b"6_4", b"64\x00", b"1e3", b"0x40", b"\xff",
              b"9" * 100]


def test_scan_refuses_exactly_the_storage_alignment_records_torch_load_refuses(tmp_path):
    """torch.load reads int(zip.get_record(".storage_alignment")) in every mode: a record int() refuses (a
    fuzzer's b"x") made from_pretrained fail while the scan said CLEAN."""
    folder, entries = _entries()
    for i, text in enumerate(ALIGNMENTS):
        path = tmp_path / f"a{i}.pt"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
            for name, data in entries:
                out.writestr(zipfile.ZipInfo(name), text if name == folder + ".storage_alignment" else data)
            out.writestr(zipfile.ZipInfo(folder + "version"), b"3\n")
        try:
            torch.load(path, weights_only=True)
            loads = True
        except ValueError:
            loads = False
        report = scan(path)
        assert (not report.errors) == loads, (text, report.errors)
        if not loads:
            assert ".storage_alignment record" in report.errors[0].message
