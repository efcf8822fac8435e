"""Kernels on raw bytes: every special bit pattern, every 8- and 16-bit code, block and chunk
boundaries, the prefilter's false alarms, and the numpy and torch kernels agreeing exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fixtures.builders import SPECIALS, bf16_bits, finite_bits
from nandoctor.dtypes import DTYPES
from nandoctor.kernels import CLEAN, NAN, NEGINF, POSINF, ChunkCounts, select_kernel
from nandoctor.kernels.cpu import BLOCK_BYTES, DENSE_BYTES, PREFILTER_BYTES, SUB_BYTES, CpuKernel
from tests.conftest import FIXTURES

torch = pytest.importorskip("torch")
from nandoctor.kernels.torch_kernel import TorchKernel  # noqa: E402  (needs torch)

CPU = CpuKernel()
TORCH = TorchKernel("cpu", chunk_bytes=1 << 20)
KERNELS = [CPU, TORCH]
FLOATS = ["F64", "F32", "F16", "BF16", "F8_E5M2", "F8_E4M3", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0"]
TORCH_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E5M2": "float8_e5m2",
               "F8_E4M3": "float8_e4m3fn", "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz",
               "F8_E8M0": "float8_e8m0fnu"}
UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def as_bytes(bits: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(bits).view(np.uint8)


def torch_counts(raw: np.ndarray, dtype: str) -> ChunkCounts:
    """What torch itself says about these bytes (fp8 through float32: the cast is exact)."""
    t = torch.frombuffer(bytearray(raw.tobytes()), dtype=getattr(torch, TORCH_NAMES[dtype]))
    if dtype.startswith("F8"):
        t = t.float()
    bad = ~torch.isfinite(t)
    first = int(bad.to(torch.uint8).argmax()) if bool(bad.any()) else -1
    counts = ChunkCounts(int(torch.isnan(t).sum()), int(torch.isposinf(t).sum()), int(torch.isneginf(t).sum()), first)
    return counts if counts.nonfinite else CLEAN


def expected_kind(dtype: str, code: int) -> int:
    """Ground truth from FORMATS.md's table, code by code."""
    spec = DTYPES[dtype]
    if spec.nan_codes:
        return NAN if code in spec.nan_codes else 0
    lane = spec.lane_bits
    magnitude = code & ((1 << (lane - 1)) - 1)
    if magnitude < spec.exp_mask:
        return 0
    if magnitude > spec.exp_mask:
        return NAN
    return NEGINF if code >> (lane - 1) else POSINF


# -- every special pattern, both kernels, cross-checked with torch --------------------------


PATTERNS = [(d, k) for d in FLOATS for k in ("nan", "negnan", "snan", "posinf", "neginf", "max") if SPECIALS[d][k] is not None]


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.name)
@pytest.mark.parametrize("dtype,kind", PATTERNS)
def test_each_special_pattern(kernel, dtype, kind):
    code = SPECIALS[dtype][kind]
    rng = np.random.default_rng(7)
    bits = finite_bits(dtype, 1000, rng)
    bits[[3, 500, 999]] = code
    raw = as_bytes(bits)
    want = {"nan": (3, 0, 0), "negnan": (3, 0, 0), "snan": (3, 0, 0), "posinf": (0, 3, 0), "neginf": (0, 0, 3),
            "max": (0, 0, 0)}[kind]
    got = kernel.count(raw, DTYPES[dtype])
    assert (got.nan, got.posinf, got.neginf) == want
    assert got.first_bad == (-1 if kind == "max" else 3)
    assert kernel.any_nonfinite(raw, DTYPES[dtype]) == (kind != "max")
    if hasattr(torch, TORCH_NAMES[dtype]):
        assert got == torch_counts(raw, dtype)


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.name)
@pytest.mark.parametrize("dtype", ["F8_E5M2", "F8_E4M3", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0"])
def test_all_256_codes_of_8bit_floats(kernel, dtype):
    spec = DTYPES[dtype]
    codes = np.arange(256, dtype=np.uint8)
    indices, kinds = kernel.classify(codes, spec)
    truth = np.array([expected_kind(dtype, c) for c in range(256)])
    got = np.zeros(256, int)
    got[indices] = kinds
    assert (got == truth).all()
    # the named codes of FORMATS.md, explicitly
    named = {"F8_E4M3": {0x7F: NAN, 0xFF: NAN}, "F8_E5M2": {0x7C: POSINF, 0xFC: NEGINF, 0x7D: NAN, 0xFF: NAN},
             "F8_E8M0": {0xFF: NAN}, "F8_E4M3FNUZ": {0x80: NAN}, "F8_E5M2FNUZ": {0x80: NAN}}[dtype]
    for code, kind in named.items():
        assert got[code] == kind
    if hasattr(torch, TORCH_NAMES[dtype]):
        assert kernel.count(codes, spec) == torch_counts(codes, dtype)
    # one code at a time through the fast pass too (the prefilter must never miss one)
    filler = np.full(4096, 0x10, np.uint8)
    for code in range(256):
        filler[1234] = code
        assert kernel.any_nonfinite(filler, spec) == bool(truth[code]), hex(code)


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.name)
@pytest.mark.parametrize("dtype", ["BF16", "F16"])
def test_all_65536_codes_of_16bit_floats(kernel, dtype):
    codes = np.arange(1 << 16, dtype=np.uint16)
    raw = as_bytes(codes)
    got = kernel.count(raw, DTYPES[dtype])
    assert got == torch_counts(raw, dtype)
    indices, kinds = kernel.classify(raw, DTYPES[dtype])
    truth = np.array([expected_kind(dtype, c) for c in range(1 << 16)])
    assert (indices == np.flatnonzero(truth)).all() and (kinds == truth[truth > 0]).all()


def test_complex_counts_each_half_and_reports_the_element():
    values = np.ones(6, np.complex64)
    raw = values.view(np.uint32).copy()
    raw[2 * 4 + 1] = SPECIALS["F32"]["posinf"]  # imaginary part of element 4
    raw[2 * 5] = SPECIALS["F32"]["nan"]
    for kernel in KERNELS:
        got = kernel.count(as_bytes(raw), DTYPES["C64"])
        assert (got.nan, got.posinf, got.neginf, got.first_bad) == (1, 1, 0, 4)


def test_integers_and_bools_are_never_flagged():
    raw = np.full(4096, 0xFF, np.uint8)  # all-ones bytes: NaN in every float reading
    for kernel in KERNELS:
        for dtype in ("U8", "I8", "BOOL", "I16", "U16", "I32", "U32", "I64", "U64", "F4", "F6_E2M3"):
            assert not kernel.any_nonfinite(raw, DTYPES[dtype])
            assert kernel.count(raw, DTYPES[dtype]) == CLEAN


def test_dtype_zoo_both_kernels_match_the_expected_counts():
    from safetensors import safe_open

    from nandoctor.readers.safetensors import read_header

    expected = json.loads((FIXTURES / "dtype-zoo.expected.json").read_text())
    header, data_start, _ = read_header(FIXTURES / "dtype-zoo.safetensors")
    blob = np.fromfile(FIXTURES / "dtype-zoo.safetensors", dtype=np.uint8)
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        raw = blob[data_start + begin : data_start + end]
        want = expected[name]
        for kernel in KERNELS:
            got = kernel.count(raw, DTYPES[entry["dtype"]])
            first = None if got.first_bad < 0 else got.first_bad
            assert (got.nan, got.posinf, got.neginf, first) == (
                want["nan"], want["posinf"], want["neginf"], want["first_bad"]), (kernel.name, name)
    with safe_open(FIXTURES / "dtype-zoo.safetensors", framework="pt") as f:
        assert f.get_tensor("zoo.bf16").dtype == torch.bfloat16  # the file is what we think it is


# -- block, sub-block and alignment boundaries ----------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.name)
@pytest.mark.parametrize("dtype", ["BF16", "F32", "F64", "F8_E4M3", "F8_E8M0", "F8_E5M2FNUZ"])
def test_boundaries_of_blocks_and_sub_blocks(kernel, dtype):
    itemsize = DTYPES[dtype].itemsize
    n = (2 * BLOCK_BYTES + 3 * SUB_BYTES) // itemsize + 5
    bits = finite_bits(dtype, n, np.random.default_rng(3))
    edges = [0, SUB_BYTES // itemsize - 1, SUB_BYTES // itemsize, PREFILTER_BYTES // itemsize - 1,
             PREFILTER_BYTES // itemsize, DENSE_BYTES // itemsize - 1,
             DENSE_BYTES // itemsize, BLOCK_BYTES // itemsize - 1, BLOCK_BYTES // itemsize,
             2 * BLOCK_BYTES // itemsize + 1, n - 1]
    for at in edges:
        one = bits.copy()
        one[at] = SPECIALS[dtype]["nan"]
        got = kernel.count(as_bytes(one), DTYPES[dtype])
        assert (got.nan, got.first_bad) == (1, at), at
    many = bits.copy()
    many[edges] = SPECIALS[dtype]["nan"]
    assert kernel.count(as_bytes(many), DTYPES[dtype]) == ChunkCounts(len(edges), 0, 0, 0)
    # a run of NaN across the dense-count pieces and a block edge
    run = bits.copy()
    lo, hi = DENSE_BYTES // itemsize - 3, BLOCK_BYTES // itemsize + 3
    run[lo:hi] = SPECIALS[dtype]["nan"]
    assert kernel.count(as_bytes(run), DTYPES[dtype]) == ChunkCounts(hi - lo, 0, 0, lo)


@pytest.mark.parametrize("shift", [2, 4, 6])
def test_misaligned_start_and_odd_length(shift):
    """Lanes that start off an 8-byte boundary are tested outside the uint64 prefilter."""
    n = BLOCK_BYTES // 2 + 7
    store = np.zeros(n * 2 + 16, np.uint8)
    raw = store[shift : shift + n * 2]
    bits = raw.view(np.uint16)
    bits[:] = bf16_bits(np.full(n, 0.5, np.float32))
    for at in (0, 1, 2, n - 2, n - 1):
        bits[at] = SPECIALS["BF16"]["neginf"]
        for kernel in KERNELS:
            got = kernel.count(raw, DTYPES["BF16"])
            assert (got.neginf, got.first_bad) == (1, at), (kernel.name, shift, at)
        bits[at] = bf16_bits(np.array([0.5], np.float32))[0]
    odd = store[1 : 1 + 2 * 1001]  # lanes straddling uint64 words: no prefilter, exact test only
    odd.view(np.uint16)[:] = bf16_bits(np.ones(1001, np.float32))
    odd.view(np.uint16)[1000] = SPECIALS["BF16"]["nan"]
    assert CPU.count(odd, DTYPES["BF16"]) == ChunkCounts(1, 0, 0, 1000)


def test_prefilter_false_alarm_is_still_clean():
    """The OR of 3.0, 0.7 and 0.3 sets every bf16 exponent bit: flagged by the OR, cleared by the exact test."""
    values = np.tile(np.array([3.0, 0.7, 0.3, -2.5, 0.1], np.float32), BLOCK_BYTES // 4)
    raw = as_bytes(bf16_bits(values))
    word = np.bitwise_or.reduce(raw.view(np.uint64))
    assert any((int(word) >> s) & 0x7F80 == 0x7F80 for s in (0, 16, 32, 48))  # the prefilter does fire
    for kernel in KERNELS:
        assert not kernel.any_nonfinite(raw, DTYPES["BF16"])
        assert kernel.count(raw, DTYPES["BF16"]) == CLEAN
    largest = as_bytes(np.array([SPECIALS[d]["max"] for d in ["F32"]], np.uint32))
    assert CPU.count(largest, DTYPES["F32"]) == CLEAN


@pytest.mark.parametrize("tail", [0, 2, 6])
def test_prefilter_segments_send_only_suspects_to_the_exact_test(tail):
    """False alarms in some 64 KiB segments, a NaN in another, a ragged tail ending in -Inf: each
    segment is judged on its own, and nothing outside the flagged ones is missed or miscounted."""
    n = (BLOCK_BYTES + tail) // 2
    values = np.full(n, 0.25, np.float32)
    per = PREFILTER_BYTES // 2
    values[3 * per : 4 * per] = np.tile([3.0, 0.7, 0.3], per // 3 + 1)[:per]  # a false alarm segment
    bits = bf16_bits(values)
    bits[10 * per + 17] = SPECIALS["BF16"]["nan"]
    bits[40 * per] = SPECIALS["BF16"]["posinf"]
    if tail:
        bits[-1] = SPECIALS["BF16"]["neginf"]
    raw = as_bytes(bits)
    want = ChunkCounts(1, 1, int(bool(tail)), 10 * per + 17)
    for kernel in KERNELS:
        assert kernel.count(raw, DTYPES["BF16"]) == want, kernel.name
    where, kinds = CPU.classify(raw, DTYPES["BF16"])
    assert where.tolist() == [10 * per + 17, 40 * per] + ([n - 1] if tail else [])


def test_every_lane_bad():
    """Whole tensors of NaN (a layer that blew up) are counted exactly, not just flagged."""
    raw = as_bytes(np.full(3 * BLOCK_BYTES // 2, SPECIALS["BF16"]["negnan"], np.uint16))
    for kernel in KERNELS:
        assert kernel.count(raw, DTYPES["BF16"]) == ChunkCounts(3 * BLOCK_BYTES // 2, 0, 0, 0)


# -- the numpy and torch kernels agree on random planted data --------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_numpy_and_torch_kernels_agree_on_random_data(seed):
    rng = np.random.default_rng(seed)
    dtype = FLOATS[seed % len(FLOATS)] if seed < len(FLOATS) else "BF16"
    for dtype in (dtype, "BF16", "F32"):
        spec = DTYPES[dtype]
        n = int(rng.integers(1, 3 * BLOCK_BYTES // spec.itemsize))
        bits = finite_bits(dtype, n, rng, scale=float(rng.choice([0.02, 3.0, 1e4])))
        specials = [c for k, c in SPECIALS[dtype].items() if c is not None and k != "max"]
        where = rng.choice(n, size=min(n, int(rng.integers(0, 50))), replace=False)
        bits[where] = rng.choice(np.array(specials, dtype=bits.dtype), size=where.size)
        raw = as_bytes(bits)
        a, b = CPU.count(raw, spec), TORCH.count(raw, spec)
        assert a == b, (dtype, a, b)
        assert a.nonfinite == where.size
        assert CPU.any_nonfinite(raw, spec) == TORCH.any_nonfinite(raw, spec) == bool(where.size)
        ia, ka = CPU.classify(raw, spec)
        ib, kb = TORCH.classify(raw, spec)
        assert (ia == ib).all() and (ka == kb).all() and (np.sort(where) == ia).all()
        if hasattr(torch, TORCH_NAMES[dtype]):
            assert a == torch_counts(raw, dtype)


def test_torch_kernel_reuses_the_upload_and_reads_in_place():
    """check() uploads once; a buffer from host_buffer() is not copied again."""
    kernel = TorchKernel("cpu", chunk_bytes=4096)
    buffer = kernel.host_buffer(4096)
    buffer[:] = 0
    buffer.view(np.uint16)[10] = SPECIALS["BF16"]["nan"]
    assert kernel.check(buffer, DTYPES["BF16"]) == ChunkCounts(1, 0, 0, 10)
    assert kernel.check(np.zeros(64, np.uint8), DTYPES["BF16"]) == CLEAN


def test_select_kernel():
    assert select_kernel("cpu").name == "cpu"
    from nandoctor.errors import DeviceUnavailableError

    with pytest.raises(DeviceUnavailableError):
        select_kernel("tpu")
    if not torch.cuda.is_available():
        assert select_kernel("auto").name == "cpu"
        with pytest.raises(DeviceUnavailableError):
            select_kernel("cuda")


# -- live tensors ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "torch"])  # numpy on CPU tensors / the CUDA code path
def test_count_tensor_on_views_complex_fp8_and_slices(monkeypatch, backend):
    from nandoctor.kernels import live

    t = torch.randn(300, 70).to(torch.bfloat16)
    t[5, 3], t[100, 1], t[2, 69] = float("nan"), float("inf"), -float("inf")
    views = (t, t.T, t[:, ::2], t[50:], t[:, 1:4].T, t.view(-1)[::7], t[:, 69])
    for view in views:
        want = torch_counts(view.contiguous().view(torch.int16).numpy().view(np.uint8), "BF16")
        assert live.count_tensor(view, backend) == want
    monkeypatch.setattr(live, "SLICE_LANES", 1000)  # many slices, strided ones too
    for view in views + (t[::3],):
        want = torch_counts(view.contiguous().view(torch.int16).numpy().view(np.uint8), "BF16")
        assert live.count_tensor(view, backend) == want
    c = torch.complex(torch.tensor([1.0, float("nan"), 2.0]), torch.tensor([0.0, 1.0, -float("inf")]))
    assert live.count_tensor(c, backend) == ChunkCounts(1, 0, 1, 1)
    assert live.count_tensor(c.to(torch.complex32), backend) == ChunkCounts(1, 0, 1, 1)  # two fp16 lanes
    f8 = torch.tensor([1.0, 2.0, float("nan")]).to(torch.float8_e4m3fn)
    assert live.count_tensor(f8, backend) == ChunkCounts(1, 0, 0, 2)
    assert live.count_tensor(torch.arange(10), backend) == CLEAN
    assert live.count_tensor(torch.empty(0, 3), backend) == CLEAN
    assert live.count_tensor(torch.tensor(float("-inf")), backend) == ChunkCounts(0, 0, 1, 0)
    big = torch.full((5000,), 70000.0)
    big[3] = float("nan")
    assert live.overflow_tensor(big, "fp16", backend) == (4999, 70000.0)
    assert live.overflow_tensor(big[::2], "bf16", backend) == (0, 70000.0)


@pytest.mark.parametrize("dtype", ["C64", "C128", "C32"])
def test_complex_elements_count_once_in_every_kernel(dtype):
    """A complex element is NaN when either part is, else the sign of its first non-finite part; the numpy
    kernel, the torch kernel (the CUDA code path) and the live path agree, never above 100 %."""
    from nandoctor.kernels.torch_kernel import TorchKernel

    torch_dtype = {"C64": torch.complex64, "C128": torch.complex128, "C32": torch.complex32}[dtype]
    nan, inf = float("nan"), float("inf")
    pairs = [(1.0, 2.0), (nan, inf), (inf, nan), (inf, -inf), (-inf, inf), (0.5, -inf), (nan, nan), (3.0, 4.0), (-inf, 0.0)]
    real = torch.tensor([r for r, _ in pairs], dtype=torch.float64)
    imag = torch.tensor([i for _, i in pairs], dtype=torch.float64)
    t = torch.complex(real, imag).to(torch_dtype) if dtype != "C32" else torch.complex(real.half(), imag.half())
    raw = torch.view_as_real(t).contiguous().view(torch.uint8).numpy().reshape(-1)
    # elements 1, 2, 6: NaN; 3: +Inf (real first); 4, 5, 8: -Inf; lanes alone would say 4 NaN, 3 +Inf, 4 -Inf
    want = ChunkCounts(3, 1, 3, 1)
    spec = DTYPES[dtype]
    assert CpuKernel().count(raw, spec) == want
    assert TorchKernel("cpu").count(raw, spec) == want == TorchKernel("cpu").check(raw, spec)
    elements, kinds = CpuKernel().classify(raw, spec)
    assert elements.tolist() == [1, 2, 3, 4, 5, 6, 8] and kinds.tolist() == [NAN, NAN, POSINF, NEGINF, NEGINF, NAN, NEGINF]
    t_elements, t_kinds = TorchKernel("cpu").classify(raw, spec)
    assert t_elements.tolist() == elements.tolist() and t_kinds.tolist() == kinds.tolist()
    from nandoctor.kernels import live

    assert live.count_tensor(t, "auto") == want == live.count_tensor(t, "torch")


@pytest.mark.parametrize("scattered", [3, 9, 40])
def test_census_of_scattered_high_segments_equals_a_brute_force_count(scattered):
    """observe_block measures scattered high segments (a NaN in every MiB, a few large values) gathered into
    one array, and runs of them in place: either way every high segment, its top and every exploded lane are
    found, as a lane-by-lane count says."""
    from nandoctor.kernels.census import SEGMENT_BYTES, default_ceiling, lane_info, observe_block, segment_ors

    spec = DTYPES["BF16"]
    info = lane_info(spec, default_ceiling("BF16"))
    rng = np.random.default_rng(scattered)
    bits = bf16_bits(rng.standard_normal(BLOCK_BYTES // 2).astype(np.float32) * np.float32(0.02))
    per_segment = SEGMENT_BYTES // 2
    segments = rng.choice(bits.size // per_segment, scattered, replace=False)
    for k, segment in enumerate(sorted(segments)):
        at = segment * per_segment + int(rng.integers(per_segment))
        bits[at] = SPECIALS["BF16"]["nan"] if k % 3 == 0 else bf16_bits(np.float32([3.0, 1e6][k % 2]))[0]
    data = bits.view(np.uint8)
    found = observe_block(data, segment_ors(data), info, 1000)
    magnitude = bits & np.uint16(info.mag_mask)
    finite = magnitude < info.limit
    tops = np.where(finite, magnitude, 0).reshape(-1, per_segment).max(axis=1)
    expected = [(1000 + int(s) * per_segment, per_segment, int(tops[s])) for s in np.flatnonzero(tops >= info.high_bit)]
    assert sorted(found.high_segments) == expected
    assert found.exploded == int(np.count_nonzero(finite & (magnitude > info.ceiling_bits)))
    assert found.high_max == max((t for _, _, t in expected), default=found.high_max)


@pytest.mark.parametrize("dtype", ["F64", "F32", "F16", "BF16"])
@pytest.mark.parametrize("pattern", ["clean", "every_mib", "runs", "all_bad", "with_exploded", "odd_start"])
def test_census_counts_nonfinite_itself_exactly_as_torch_and_the_sieve(dtype, pattern):
    """For IEEE lanes CpuKernel.census counts NaN/+Inf/-Inf in the census's own high segments and skips the
    sieve: its counts and first bad element equal torch's, and its census equals the census taken beside the
    sieve (observe_chunk), on scattered, clustered and wall-to-wall NaN/Inf, beside large and exploded values,
    and on a chunk that starts off an 8-byte boundary (no segment ORs: exact everywhere)."""
    from nandoctor.kernels.census import default_ceiling, lane_info, observe_chunk, tallies

    spec = DTYPES[dtype]
    info = lane_info(spec, default_ceiling(dtype))
    assert tallies(spec, info)
    lane_bytes = spec.lane_bits // 8
    rng = np.random.default_rng(len(dtype) * 7 + len(pattern))
    lanes = (2 * BLOCK_BYTES + 3 * SUB_BYTES + 2 * lane_bytes) // lane_bytes  # two blocks and a ragged tail
    bits = finite_bits(dtype, lanes, rng)
    special = SPECIALS[dtype]
    kinds = ["nan", "posinf", "neginf"]
    if pattern in ("every_mib", "with_exploded", "odd_start"):
        for k, at in enumerate(range(int(rng.integers(1000)), lanes, (1 << 20) // lane_bytes)):
            bits[at] = special[kinds[k % 3]]
    if pattern == "runs":
        for start in (5, BLOCK_BYTES // lane_bytes - 40, lanes - 300):
            bits[start : start + 100] = special[kinds[start % 3]]
    if pattern == "all_bad":
        bits[:] = special["nan"]
        bits[rng.choice(lanes, 50, replace=False)] = special["neginf"]
    if pattern == "with_exploded":  # finite giants next to the NaN, in the same segments, and alone
        for at in rng.choice(lanes, 40, replace=False):
            value = float(rng.choice([3.0, -2e5, 7e4, 1e30]))
            bits[at] = finite_bits(dtype, 1, np.random.default_rng(0), scale=0.0)[0] | _bits_of(dtype, value)
    raw = as_bytes(bits)
    if pattern == "odd_start":
        buffer = np.empty(raw.size + 1, np.uint8)
        buffer[1:] = raw
        raw = buffer[1:]
        assert raw.ctypes.data % 8
    counts, census = CPU.census(raw, spec, info, 77)
    assert counts == torch_counts(raw, dtype) == CPU.count(raw, spec)
    reference = observe_chunk(raw, info, 77)
    for name in ("high_max", "sample_max", "exact_max", "nonzero", "zeros", "exploded"):
        assert getattr(census, name) == getattr(reference, name), name
    assert sorted(census.high_segments) == sorted(reference.high_segments)


def _bits_of(dtype: str, value: float) -> int:
    """The bit pattern of ``value`` in ``dtype``, clipped to the largest finite value (fp16 has no 1e30)."""
    if dtype == "BF16":
        return int(bf16_bits(np.array([value], np.float32))[0])
    numpy_type = {"F16": np.float16, "F32": np.float32, "F64": np.float64}[dtype]
    limit = float(np.finfo(numpy_type).max)
    return int(np.array([max(-limit, min(limit, value))], numpy_type).view(UNSIGNED[np.dtype(numpy_type).itemsize])[0])
