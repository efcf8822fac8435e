"""The scan engine: bounded memory for tensors far larger than a chunk, page release,
mmap vs read sources, files that change while they are read, one pipeline over shards."""

from __future__ import annotations

import json
import os
import struct
import sys

import numpy as np
import pytest

from fixtures.builders import SPECIALS, RawTensor, bf16_bits, write_safetensors, write_sharded
from nandoctor import sources
from nandoctor.kernels.cpu import CpuKernel
from nandoctor.engine import scan

from nandoctor.engine import pipeline as scan_module  # noqa: E402
from nandoctor.engine import work as work_module  # noqa: E402
MiB = 1 << 20


def status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("RssAnon", "RssFile")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out


def write_big(path, nbytes: int, bad_at: list[int]) -> None:
    """One bf16 tensor of ``nbytes``, streamed in 2 MB slices (the test itself stays small in memory)."""
    n = nbytes // 2
    block = bf16_bits(np.random.default_rng(0).standard_normal(MiB).astype(np.float32) * 0.02)
    header = {"__metadata__": {"format": "pt"}, "w": {"dtype": "BF16", "shape": [n], "data_offsets": [0, n * 2]}}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)) + text)
        for start in range(0, n, block.size):
            part = block[: min(block.size, n - start)].copy()
            for at in bad_at:
                if start <= at < start + part.size:
                    part[at - start] = SPECIALS["BF16"]["nan"]
            fh.write(part.tobytes())


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.safetensors"
    write_big(path, 320 * MiB, [5, 100 * MiB, 160 * MiB - 1])
    return path


def scan_sampling(path, **kwargs):
    """Scan and sample this process's resident memory after every chunk."""
    before = status()
    peak = dict(before)

    def progress(done, total, file):
        for key, value in status().items():
            peak[key] = max(peak[key], value)

    report = scan(path, device="cpu", progress=progress, **kwargs)
    return report, {k: peak[k] - before[k] for k in before}


@pytest.mark.parametrize("io", ["mmap", "read"])
def test_memory_stays_bounded_for_a_tensor_far_larger_than_a_chunk(big_file, monkeypatch, io):
    monkeypatch.setenv("NANDOCTOR_IO", io)
    report, growth = scan_sampling(big_file)
    t = report.tensors[0]
    assert (t.nan, t.first_bad) == (3, 5) and report.bytes_scanned == 320 * MiB
    # 320 MB were read; what stays resident is the release run plus the chunks in flight.
    assert growth["RssFile"] < 96 * MiB, growth
    assert growth["RssAnon"] < 48 * MiB, growth


def test_without_page_release_the_same_scan_would_hold_the_file(big_file, monkeypatch):
    """The bound above comes from releasing pages: with release off, the mapped file stays resident."""
    monkeypatch.setenv("NANDOCTOR_IO", "mmap")
    monkeypatch.setattr(sources, "RELEASE_BYTES", 1 << 62)
    monkeypatch.setattr(sources.MappedSource, "_flush", lambda self: None)
    _, growth = scan_sampling(big_file)
    assert growth["RssFile"] > 250 * MiB, growth


class FakeMap:
    def __init__(self):
        self.calls = []

    def madvise(self, option, start, length):
        self.calls.append((start, length))


def test_release_merges_contiguous_runs_and_rounds_to_pages(monkeypatch):
    monkeypatch.setattr(sources, "RELEASE_BYTES", 10 * sources.PAGE)
    src = sources.MappedSource.__new__(sources.MappedSource)
    src.mapped, src._start, src._end = FakeMap(), 0, 0
    page = sources.PAGE
    src.release(100, 4 * page)  # starts mid-page
    src.release(100 + 4 * page, 7 * page)  # contiguous: merged, and now past the run size
    assert src.mapped.calls == [(0, 11 * page)]
    far = 11 * page + sources.RELEASE_GAP_BYTES + page
    src.release(far, page)  # a long gap: a new run
    src._flush()
    assert src.mapped.calls[-1] == (far, page)


def test_release_runs_on_across_a_short_gap(monkeypatch):
    """Between two storages of a torch zip lies the next entry's local header: the run goes on across it
    (one release, not one per storage), and the header's page is dropped with it."""
    monkeypatch.setattr(sources, "RELEASE_BYTES", 10 * sources.PAGE)
    src = sources.MappedSource.__new__(sources.MappedSource)
    src.mapped, src._start, src._end = FakeMap(), 0, 0
    page = sources.PAGE
    src.release(0, 3 * page)
    src.release(3 * page + 100, 3 * page)  # 100 bytes of header between them
    src.release(6 * page + 200, 5 * page)
    assert src.mapped.calls == [(0, 11 * page)]
    far = 11 * page + 200 + sources.RELEASE_GAP_BYTES + 1  # one byte more than a short gap
    src.release(far, 2 * page)
    src._flush()
    assert src.mapped.calls[-1] == (far - far % page, (far + 2 * page) // page * page - far // page * page)


def test_closing_a_mapped_source_while_a_chunk_still_views_it_does_not_raise(tmp_path):
    """An interrupted scan closes its sources while a traceback still holds a chunk's array: mmap.close()
    raised BufferError there ("cannot close exported pointers exist": a trial's Ctrl-C on repair ended as an
    internal error, exit 3, instead of 130). The fd is closed; the map goes with its last view."""
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * 64)
    source = sources.open_source(path, mode="mmap")
    assert isinstance(source, sources.MappedSource)
    chunk = source.read(0, 4096, lambda n: np.empty(n, dtype=np.uint8))
    source.close()
    with pytest.raises(OSError):
        os.fstat(source.fd)
    assert int(chunk[255]) == 255  # the view still reads the mapped bytes


def test_a_region_at_an_odd_offset_is_scanned_from_an_aligned_copy(tmp_path, monkeypatch):
    """A DCP item's tensors (or an unpadded safetensors header's data) start at any byte: the mapped source
    hands the kernel an aligned copy of such a chunk, a view of an aligned one; both count the same."""
    rng = np.random.default_rng(9)
    bits = bf16_bits(rng.standard_normal(3 * MiB).astype(np.float32))  # 6 MiB: chunks of 4 MiB and more
    planted = [5, MiB + 3, 3 * MiB - 1]
    bits[planted] = SPECIALS["BF16"]["nan"]
    header = json.dumps({"w": {"dtype": "BF16", "shape": [bits.size], "data_offsets": [0, bits.nbytes]}}).encode()
    header += b" " * ((-len(header) - 8) % 8 + 3)  # the data starts 3 bytes past a multiple of 8
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bits.tobytes())
    assert (8 + len(header)) % 8 == 3
    seen = []
    original = sources.MappedSource.read

    def read(self, absolute, length, buffer_for):
        data = original(self, absolute, length, buffer_for)
        seen.append((absolute % 8, data.ctypes.data % 8))
        return data

    monkeypatch.setattr(sources.MappedSource, "read", read)
    results = {}
    for io in ("mmap", "read"):
        monkeypatch.setenv("NANDOCTOR_IO", io)
        report = scan(path, device="cpu")
        (t,) = report.tensors
        results[io] = (t.nan, t.first_bad, t.max_abs, t.zeros)
        assert report.complete and t.nan == 3 and t.first_bad == 5
    assert results["mmap"] == results["read"]
    assert seen and all(offset == 3 and address == 0 for offset, address in seen)


def test_read_source_and_mapped_source_agree(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    tensors = {}
    for i in range(5):
        bits = bf16_bits(rng.standard_normal(300_001 + i).astype(np.float32))
        bits[rng.choice(bits.size, i, replace=False)] = SPECIALS["BF16"]["posinf"]
        tensors[f"layers.{i}.w"] = RawTensor("BF16", (bits.size,), bits.tobytes())
    write_sharded(tmp_path, tensors, shards=3)
    results = {}
    for io in ("mmap", "read"):
        monkeypatch.setenv("NANDOCTOR_IO", io)
        report = scan(tmp_path, device="cpu")
        results[io] = [(t.name, t.posinf, t.first_bad) for t in report.tensors]
        assert report.complete and sum(t.posinf for t in report.tensors) == 10
    assert results["mmap"] == results["read"]


@pytest.mark.parametrize("io", ["mmap", "read"])
def test_tasks_of_several_chunks_count_what_one_chunk_a_task_counts(tmp_path, monkeypatch, io):
    """A worker task holds CHUNKS_PER_TASK chunks of a large region, scanned one after another: NaN/Inf
    in every chunk of a task, at a chunk's first and last lane, in a tail chunk, counted exactly (numpy
    the oracle), and the census (largest magnitude, zeros, outliers) the same as one chunk a task."""
    monkeypatch.setenv("NANDOCTOR_IO", io)
    chunk = CpuKernel.chunk_bytes // 2  # bf16 lanes a chunk
    rng = np.random.default_rng(11)
    values = (rng.standard_normal(5 * chunk + 777) * 0.02).astype(np.float32)
    values[::4099] = 0.0
    values[3 * chunk + 5] = 1000.0  # an outlier in the fourth chunk (2^14 times the bulk)
    bits = bf16_bits(values)
    planted = {"nan": [0, chunk - 1, chunk, 2 * chunk + 17, 5 * chunk + 776], "posinf": [chunk + 3], "neginf": [4 * chunk - 1]}
    for kind, places in planted.items():
        bits[places] = SPECIALS["BF16"][kind]
    write_safetensors(tmp_path / "model.safetensors", {"w": RawTensor("BF16", (bits.size,), bits.tobytes())})

    def scanned(per_task):
        monkeypatch.setattr(scan_module, "CHUNKS_PER_TASK", per_task)
        [t] = scan(tmp_path, device="cpu").tensors
        return t

    one = scanned(1)
    assert (one.nan, one.posinf, one.neginf, one.first_bad) == (5, 1, 1, 0)
    assert one.max_abs == 1000.0 and one.outliers is not None and one.outliers.count == 1
    for per_task in (2, 3):
        many = scanned(per_task)
        assert (many.nan, many.posinf, many.neginf, many.first_bad) == (one.nan, one.posinf, one.neginf, one.first_bad)
        assert (many.max_abs, many.zeros, many.outliers, many.findings) == (one.max_abs, one.zeros, one.outliers, one.findings)


def _filesystem_of(path) -> str:
    """The type of the filesystem holding ``path`` (the longest mount point above it), "" if unknown."""
    best, kind = "", ""
    try:
        with open("/proc/self/mounts") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) > 2 and str(path).startswith(fields[1].rstrip("/") + "/") and len(fields[1]) > len(best):
                    best, kind = fields[1], fields[2]
    except OSError:
        pass
    return kind


def test_cold_file_is_read_warm_file_is_mapped(tmp_path):
    path = tmp_path / "cold.bin"
    path.write_bytes(os.urandom(8 * MiB))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if _filesystem_of(path) in ("tmpfs", "ramfs", "overlay"):  # not probed: a cold probe starts read-ahead
            pytest.skip("this filesystem keeps pages cached: cannot make a cold file")
    finally:
        os.close(fd)
    cold = sources.open_source(path)
    try:
        assert cold.mode == "read"
        data = cold.read(0, 8 * MiB, sources.ThreadBuffers())
        assert data.tobytes() == path.read_bytes()
    finally:
        cold.close()
    warm = sources.open_source(path)
    try:
        assert warm.mode == "mmap"
    finally:
        warm.close()


def test_a_partly_cached_file_is_mapped_a_mostly_cold_one_read(tmp_path, monkeypatch):
    """Proactive reclaim leaves files partly cached; mapped they still scan faster than read (sources.py).
    (The probes' shares are set here: a real cold probe can start the kernel's read-ahead of the file.)"""
    path = tmp_path / "partly.bin"
    path.write_bytes(os.urandom(MiB))
    for share, mode in ((0.0, "read"), (0.25, "read"), (7 / 16, "read"), (0.5, "mmap"), (0.75, "mmap"), (1.0, "mmap")):
        monkeypatch.setattr(sources, "cached_fraction", lambda fd, size, probes=16, share=share: share)
        source = sources.open_source(path)
        try:
            assert source.mode == mode, share
            assert source.read(MiB - 5, 5, sources.ThreadBuffers()).tobytes() == path.read_bytes()[-5:]
        finally:
            source.close()


# -- files that change while they are read ---------------------------------------------------


def rewrite_during_scan(path, action, monkeypatch, io):
    """Scan with one worker and one chunk in flight; ``action`` runs after the first chunk."""
    monkeypatch.setenv("NANDOCTOR_IO", io)
    monkeypatch.setattr(scan_module, "IN_FLIGHT_PER_WORKER", 1)
    kernel = CpuKernel()
    kernel.workers = 1
    fired = []

    def progress(done, total, file):
        if not fired:
            fired.append(done)
            action(path)

    return scan(path, kernel=kernel, progress=progress)


def make_file(path):
    bits = bf16_bits(np.ones(6 * MiB, np.float32))  # 12 MB: three chunks
    write_safetensors(path, {"w": RawTensor("BF16", (bits.size,), bits.tobytes())})


def same_size_rewrite(path):
    with open(path, "r+b") as fh:
        fh.seek(-2, os.SEEK_END)
        fh.write(np.array([SPECIALS["BF16"]["nan"]], np.uint16).tobytes())
    os.utime(path, ns=(0, 1))  # a new mtime even on coarse clocks


def append(path):
    with open(path, "ab") as fh:
        fh.write(b"\0" * 64)


def truncate(path):
    os.truncate(path, 4 * MiB)


@pytest.mark.parametrize("io", ["mmap", "read"])
@pytest.mark.parametrize("action", [same_size_rewrite, append, truncate], ids=lambda f: f.__name__)
def test_file_changed_during_scan_is_reported(tmp_path, monkeypatch, io, action):
    path = tmp_path / "m.safetensors"
    make_file(path)
    report = rewrite_during_scan(path, action, monkeypatch, io)
    assert not report.complete and report.exit_code == 3 and not report.ok
    assert any(("changed" in e.message or "truncated" in e.message) and e.path == str(path) for e in report.errors)


def test_a_changed_shard_does_not_spoil_the_others(tmp_path, monkeypatch):
    tensors = {f"layers.{i}.w": RawTensor("BF16", (3 * MiB,), bf16_bits(np.ones(3 * MiB, np.float32)).tobytes())
               for i in range(4)}
    tensors["layers.3.w"] = RawTensor("BF16", (3 * MiB,), np.full(3 * MiB, SPECIALS["BF16"]["nan"], np.uint16).tobytes())
    write_sharded(tmp_path, tensors, shards=4)
    victim = tmp_path / "model-00001-of-00004.safetensors"
    monkeypatch.setenv("NANDOCTOR_IO", "read")
    monkeypatch.setattr(scan_module, "IN_FLIGHT_PER_WORKER", 1)
    kernel = CpuKernel()
    kernel.workers = 1
    fired = []

    def progress(done, total, file):
        if file == str(victim) and not fired:
            fired.append(1)
            truncate(victim)

    report = scan(tmp_path, kernel=kernel, progress=progress)
    assert [e.path for e in report.errors] == [str(victim)]
    by = {t.name: t for t in report.tensors}
    assert by["layers.3.w"].nan == 3 * MiB  # the last shard was still scanned, fully
    assert report.exit_code == 3


def test_progress_is_monotonic_and_complete(tmp_path):
    tensors = {f"t{i}": RawTensor("F32", (MiB + i,), np.zeros(MiB + i, np.float32).tobytes()) for i in range(5)}
    tensors["ids"] = RawTensor("I64", (10,), np.zeros(10, np.int64).tobytes())
    write_sharded(tmp_path, tensors, shards=2)
    seen = []
    report = scan(tmp_path, device="cpu", progress=lambda done, total, file: seen.append((done, total)))
    dones = [d for d, _ in seen]
    assert dones == sorted(dones) and dones[-1] == seen[-1][1] == report.bytes_scanned
    assert report.bytes_scanned == sum(4 * (MiB + i) for i in range(5))  # integers are not read


@pytest.mark.parametrize("io", ["mmap", "read"])
def test_many_small_tensors_are_batched_without_losing_a_count(tmp_path, monkeypatch, io):
    """Small regions are checked in batches (adjacent ones of one dtype in one fast pass): every planted
    value must still land on its own tensor, at its own index, in any mix of dtypes and sizes."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    monkeypatch.setenv("NANDOCTOR_IO", io)
    monkeypatch.setattr(work_module, "BATCH_PARTS", 37)  # many batches, boundaries everywhere
    rng = np.random.default_rng(3)
    tensors = {}
    for i in range(600):
        dtype = ["F32", "BF16", "F16"][(i // 7) % 3]  # runs of one dtype, then a switch
        n = int(rng.integers(1, 300))
        values = rng.standard_normal(n).astype(np.float32)
        for _ in range(int(rng.integers(0, 3)) if i % 5 == 0 else 0):
            values[rng.integers(0, n)] = rng.choice([np.nan, np.inf, -np.inf])
        if dtype == "F32":
            raw = values.tobytes()
        elif dtype == "F16":
            raw = values.astype(np.float16).tobytes()
        else:
            raw = bf16_bits(values).tobytes()
        tensors[f"block.{i}.w"] = RawTensor(dtype, (n,), raw)
    path = tmp_path / "many.safetensors"
    write_safetensors(path, tensors)
    report = scan(path, device="cpu")
    loaded = load_file(str(path))
    want = {}
    for name, t in loaded.items():
        f = t.float()
        bad = torch.nonzero(~torch.isfinite(f)).flatten()
        want[name] = (int(torch.isnan(f).sum()), int(torch.isposinf(f).sum()), int(torch.isneginf(f).sum()),
                      int(bad[0]) if bad.numel() else None)
    assert {t.name: (t.nan, t.posinf, t.neginf, t.first_bad) for t in report.tensors} == want
    assert report.nonfinite > 0 and not report.errors
