"""The compiled one-pass CRC-32 + segment ORs (nandoctor/_fused.c through kernels/fused.py), against its oracles:
zlib.crc32 for the CRC, numpy's reduceat (census.segment_ors) for the ORs, and the scan's two-pass path
(``NANDOCTOR_NATIVE=0``) for every number a scan of a torch file reports."""

from __future__ import annotations

import os
import platform
import random
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest

from nandoctor.kernels import fused
from nandoctor.kernels.census import SEGMENT_BYTES, segment_ors

native = pytest.mark.skipif(not fused.available(), reason="the compiled pass does not run here")

# around the loop's 256-byte step, the 64 KiB segment and the scan's 8 MiB chunk
LENGTHS = [0, 1, 7, 8, 9, 255, 256, 257, 511, 512, 4096 + 8, SEGMENT_BYTES - 8, SEGMENT_BYTES - 1, SEGMENT_BYTES,
           SEGMENT_BYTES + 4, SEGMENT_BYTES + 8, SEGMENT_BYTES + 256, 3 * SEGMENT_BYTES + 777, (8 << 20) - 3, 8 << 20]


def _sparse(size: int, seed: int) -> np.ndarray:
    """Mostly zeros, a few set bits at random places: every segment's OR tells which bits lie in it."""
    rng = np.random.default_rng(seed)
    data = np.zeros(size, dtype=np.uint8)
    if size:
        at = rng.integers(0, size, max(1, size // 5000))
        data[at] = np.uint8(1) << rng.integers(0, 8, at.size).astype(np.uint8)
    return data


def _expected_ors(data: np.ndarray) -> np.ndarray | None:
    return segment_ors(data)  # (the numpy path: None where the data holds no whole word)


@native
@pytest.mark.parametrize("size", LENGTHS)
def test_crc_and_ors_agree_with_zlib_and_numpy(size: int) -> None:
    for seed, data in enumerate((_sparse(size, size), np.random.default_rng(size).integers(0, 256, size, np.uint8))):
        start = random.Random(size + seed).getrandbits(32)
        value, ors = fused.crc32_ors(data, start)
        assert value == zlib.crc32(data.tobytes(), start), (size, seed)
        expected = _expected_ors(data)
        if expected is None:
            assert ors is None
        else:
            assert ors is not None and ors.dtype == np.uint64
            np.testing.assert_array_equal(ors, expected)


@native
@pytest.mark.parametrize("size", LENGTHS)
def test_the_ors_alone_agree_with_numpy(size: int) -> None:
    """A chunk owing no CRC-32 (safetensors) gets its segment ORs from the compiled loop alone."""
    data = _sparse(size, size + 1)
    expected = _expected_ors(data)
    found = fused.segment_ors(data)
    if expected is None:
        assert found is None
    else:
        assert found is not None
        np.testing.assert_array_equal(found, expected)
    assert fused.segment_ors(_sparse(size + 16, 2)[3 : 3 + size]) is None or size < 8  # off alignment: numpy's


@native
def test_a_view_inside_a_larger_buffer_and_an_unaligned_one() -> None:
    """The scan hands views of its reused buffers and of mmaps: 8-byte aligned ones at any 16/64-byte phase get
    their ORs; a view off 8-byte alignment gets its CRC-32 and no ORs (its words would mix lanes)."""
    whole = _sparse((2 << 20) + 64, 9)
    for offset in (8, 16, 24, 40, 56):
        piece = whole[offset : offset + (1 << 20) + 13]
        value, ors = fused.crc32_ors(piece, 0)
        assert value == zlib.crc32(piece.tobytes())
        assert ors is not None
        np.testing.assert_array_equal(ors, _expected_ors(piece))
    piece = whole[3 : 3 + (1 << 20)]
    value, ors = fused.crc32_ors(piece, 7)
    assert value == zlib.crc32(piece.tobytes(), 7)
    assert ors is None


@native
def test_a_bit_in_each_segment_is_found_in_that_segment_alone() -> None:
    data = np.zeros(5 * SEGMENT_BYTES + 100, dtype=np.uint8)
    for segment in range(6):
        data[min(segment * SEGMENT_BYTES + 8 * segment + segment, data.size - 1)] = 1 << segment
    _, ors = fused.crc32_ors(data, 0)
    assert ors is not None
    np.testing.assert_array_equal(ors, _expected_ors(data))
    assert [int(o).bit_length() > 0 for o in ors] == [True] * 6


def test_native_off_by_the_environment(monkeypatch) -> None:
    monkeypatch.setenv(fused.NATIVE_ENV, "0")
    fused.reset()
    try:
        assert not fused.available()
    finally:
        monkeypatch.delenv(fused.NATIVE_ENV)
        fused.reset()


def test_a_build_of_another_version_is_passed_over(monkeypatch) -> None:
    """A stale build left in a source tree (an editable install after a pull) is never called with the arguments of
    another version: the scan takes its two passes (a helper's worktree crashed on one: "argument 2 must be int")."""
    import sys
    import types

    import nandoctor

    stale = types.ModuleType("nandoctor._fused")
    stale.available = lambda: True  # type: ignore[attr-defined]
    stale.crc32_ors = lambda *a: (_ for _ in ()).throw(TypeError("argument 2 must be int"))  # type: ignore[attr-defined]
    for version in (None, fused.API_VERSION - 1):
        if version is not None:
            stale.API_VERSION = version  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "nandoctor._fused", stale)
        monkeypatch.setattr(nandoctor, "_fused", stale, raising=False)
        fused.reset()
        assert not fused.available()
    monkeypatch.undo()
    fused.reset()


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


@pytest.mark.skipif(platform.machine() != "x86_64" or shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="the extension is built only with a C compiler, on x86-64")
def test_the_extension_is_built_where_it_can_run() -> None:
    """The build skips the extension quietly where it fails (optional): on a CPU that runs it, with a compiler
    installed, a missing module is a broken build that would halve the `.bin` scan's speed unseen."""
    if not {"avx512f", "avx512bw", "avx512vl", "vpclmulqdq", "pclmulqdq"} <= _cpu_flags():
        pytest.skip("this CPU has no AVX-512 carry-less multiplication")
    if os.environ.get(fused.NATIVE_ENV) == "0":
        pytest.skip(f"{fused.NATIVE_ENV}=0")
    assert fused.available()


def _scanned(path: Path) -> dict:
    """The scan's JSON report of ``path`` with the compiled pass as ``NANDOCTOR_NATIVE`` says now, timings left out."""
    from nandoctor import api
    from nandoctor.report.json_report import report_to_json

    fused.reset()
    report = report_to_json(api.scan(path, device="cpu"))
    for timing in ("seconds", "gb_per_s"):
        report["summary"].pop(timing)
    return report


def _both_ways(path: Path, monkeypatch, entry: str) -> tuple[dict, int]:
    """(the scan's JSON report of ``path`` with the compiled pass, the bytes its ``entry`` of kernels/fused.py read),
    checked equal to the report without it (``NANDOCTOR_NATIVE=0``)."""
    calls: list[int] = []
    real = getattr(fused, entry)
    monkeypatch.setattr(fused, entry, lambda data, *rest: calls.append(data.nbytes) or real(data, *rest))
    with_native = _scanned(path)
    monkeypatch.setenv(fused.NATIVE_ENV, "0")
    without = _scanned(path)
    monkeypatch.delenv(fused.NATIVE_ENV)
    fused.reset()
    assert with_native == without
    return with_native, sum(calls)


@native
def test_a_torch_file_scans_the_same_with_and_without_the_compiled_pass(tmp_path, monkeypatch) -> None:
    """NaN, ±Inf and an outlier planted at known places in large storages (several 8 MiB chunks, an fp16 and an
    fp32 tensor, one storage shared by two views), and a flipped mantissa bit in another storage: every count,
    first index, census number and the CRC-32 failure are the same on both paths."""
    torch = pytest.importorskip("torch")
    from tests.torch_helpers import entry_offset, flip_byte

    g = torch.Generator().manual_seed(0)
    big = (torch.randn(9 << 20, generator=g) * 0.02).to(torch.bfloat16)  # 18 MiB: three chunks
    big[5] = float("nan")
    big[(4 << 20) + 3] = float("inf")
    big[(9 << 20) - 1] = float("-inf")
    big[(6 << 20) + 11] = 300.0  # an outlier against a bulk of 0.02
    half = (torch.randn(3 << 20, generator=g) * 0.02).half()
    half[(2 << 20) + 1] = float("nan")
    single = torch.randn(1 << 20, generator=g) * 0.02
    shared = torch.randn(1 << 20, generator=g) * 0.02
    path = tmp_path / "pytorch_model.bin"
    torch.save({"a.weight": big, "b.weight": half, "c.weight": single,
                "d.weight": shared, "d2.weight": shared[: 1 << 19]}, path)
    flip_byte(path, entry_offset(path, "/data/2") + (2 << 20) + 1, 0x01)  # c.weight: a CRC-32 failure, no NaN


    with_native, through = _both_ways(path, monkeypatch, "crc32_ors")
    assert through >= (9 << 20) * 2, "the scan did not take the compiled pass"  # a's chunks at least
    tensors = {t["name"]: t for t in with_native["tensors"]}
    assert (tensors["a.weight"]["nan"], tensors["a.weight"]["posinf"], tensors["a.weight"]["neginf"]) == (1, 1, 1)
    assert tensors["a.weight"]["first_bad"]["index"] == 5
    assert tensors["b.weight"]["nan"] == 1 and tensors["b.weight"]["first_bad"]["index"] == (2 << 20) + 1
    assert any("CRC-32" in e["message"] for e in with_native["errors"]), with_native["errors"]


@native
def test_a_safetensors_file_scans_the_same_with_and_without_the_compiled_ors(tmp_path, monkeypatch) -> None:
    """NaN, Inf, an outlier and a zeroed tensor in large safetensors tensors: the same report whether the census's
    segment ORs come from the compiled loop or from numpy."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    a = (rng.standard_normal(5 << 20) * 0.02).astype(np.float16)
    a[3], a[(3 << 20) + 1] = np.nan, -np.inf
    b = (rng.standard_normal(3 << 20) * 0.02).astype(np.float32)
    b[(2 << 20) + 5] = 900.0
    path = tmp_path / "model.safetensors"
    save_file({"a.weight": a, "b.weight": b, "c.weight": np.zeros(1 << 20, np.float32)}, str(path))
    with_native, through = _both_ways(path, monkeypatch, "segment_ors")
    assert through >= a.nbytes + b.nbytes, "the scan did not take the compiled ORs"
    tensors = {t["name"]: t for t in with_native["tensors"]}
    assert (tensors["a.weight"]["nan"], tensors["a.weight"]["neginf"]) == (1, 1)
    assert tensors["a.weight"]["first_bad"]["index"] == 3
    assert tensors["b.weight"]["outliers"]["count"] == 1
