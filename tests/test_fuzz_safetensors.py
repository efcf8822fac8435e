"""Differential fuzzing: nandoctor accepts a mutated safetensors file exactly when the reference
`safetensors` library does (except the documented stricter cases), and then reads the same bytes and
counts the same NaN/Inf as torch.

A small budget runs in CI; `python -m pytest -m slow tests/test_fuzz_safetensors.py` runs 10,000 examples.
"""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.builders import SPECIALS, RawTensor, finite_bits, header_bytes
from nandoctor.errors import NandoctorError
from nandoctor.readers import reader_for
from tests.mutations import body_edits, byte_mutations

torch = pytest.importorskip("torch")
from safetensors import safe_open  # noqa: E402

DTYPE_NAMES = ["F32", "BF16", "F16", "F64", "I64", "U8", "F8_E5M2", "F8_E4M3", "BOOL", "f32", "F128", "Q4", ""]


def seed_file() -> bytes:
    rng = np.random.default_rng(5)
    bf = finite_bits("BF16", 12, rng)
    bf[3] = SPECIALS["BF16"]["nan"]
    f32 = finite_bits("F32", 6, rng)
    f32[5] = SPECIALS["F32"]["neginf"]
    tensors = {
        "a.bf16": RawTensor("BF16", (3, 4), bf.tobytes()),
        "b.f32": RawTensor("F32", (6,), f32.tobytes()),
        "c.i64": RawTensor("I64", (2,), finite_bits("I64", 2, rng).tobytes()),
        "d.scalar": RawTensor("F16", (), finite_bits("F16", 1, rng).tobytes()),
        "e.empty": RawTensor("F32", (0, 3), b""),
    }
    head = header_bytes(tensors, {"format": "pt"})
    return head + b"".join(t.data for t in tensors.values())


SEED = seed_file()
SEED_N = struct.unpack("<Q", SEED[:8])[0]


def _lie_about_header_length(draw, data: bytearray) -> None:
    if len(data) >= 8:
        data[:8] = struct.pack("<Q", max(0, SEED_N + draw(st.integers(-16, 16))))


# Non-finite patterns of the seed's float dtypes, little-endian, for the structure-keeping body edits.
_SPECIAL_BYTES = [
    np.array([SPECIALS[d][k]], dtype=f"<u{w}").tobytes()
    for d, w in (("F32", 4), ("BF16", 2), ("F16", 2))
    for k in ("nan", "posinf", "neginf")
]
_BODY_EDITS = body_edits(8 + SEED_N, _SPECIAL_BYTES)


def byte_mutation():
    """Two thirds of the examples change tensor bytes only (they reach the count comparison), the
    rest edit anywhere (they test the refusals)."""
    body_only = byte_mutations(SEED, 4, _BODY_EDITS, only_extra=True)
    anywhere = byte_mutations(SEED, 4, {"length": _lie_about_header_length, **_BODY_EDITS})
    return st.integers(0, 2).flatmap(lambda pick: anywhere if pick == 0 else body_only)
REACHED: dict[str, int] = {"examples": 0, "compared": 0}


@st.composite
def header_mutation(draw) -> bytes:
    header = json.loads(SEED[8 : 8 + SEED_N])
    body = SEED[8 + SEED_N :]
    names = [k for k in header if k != "__metadata__"]
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(names))
        field = draw(st.sampled_from(["dtype", "shape", "offset", "drop", "extra", "metadata", "rename"]))
        if name not in header:
            continue
        e = header[name]
        if field == "dtype":
            e["dtype"] = draw(st.sampled_from(DTYPE_NAMES))
        elif field == "shape":
            e["shape"] = draw(st.lists(st.integers(-2, 13), max_size=3))
        elif field == "offset":
            i = draw(st.integers(0, 1))
            e["data_offsets"][i] = max(-1, e["data_offsets"][i] + draw(st.integers(-8, 8)))
        elif field == "drop":
            del header[name]
        elif field == "extra":
            e[draw(st.sampled_from(["x", "dtype2", "offsets"]))] = draw(st.integers(0, 3))
        elif field == "metadata":
            header["__metadata__"] = draw(st.sampled_from([{}, {"format": "pt"}, {"a": 1}, [], "x", {"format": None}]))
        elif field == "rename":
            header[draw(st.sampled_from(["", "../../x", "z", "a.bf16 "]))] = header.pop(name)
    text = json.dumps(header).encode()
    text += b" " * draw(st.integers(0, 9))
    return struct.pack("<Q", len(text)) + text + body


def reference_accepts(path: Path) -> dict[str, "torch.Tensor"] | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception:
        return None


def ours_accepts(path: Path):
    try:
        return list(reader_for(path).read(path).refs)
    except NandoctorError:
        return None


def is_documented_stricter(data: bytes) -> bool:
    """Cases we refuse on purpose where the reference is lax: duplicate tensor names."""
    try:
        n = struct.unpack("<Q", data[:8])[0]
        pairs = json.loads(data[8 : 8 + n], object_pairs_hook=lambda p: p)
    except Exception:
        return False
    keys = [k for k, _ in pairs] if isinstance(pairs, list) else []
    return len(keys) != len(set(keys))


def check(data: bytes) -> None:
    from nandoctor.engine import scan

    REACHED["examples"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.safetensors"
        path.write_bytes(data)
        ref = reference_accepts(path)
        refs = ours_accepts(path)
        if refs is not None and ref is None:
            raise AssertionError("nandoctor accepted a file the reference refuses")
        if refs is None:
            if ref is not None:
                assert is_documented_stricter(data), "nandoctor refused a file the reference accepts"
            return
        assert {r.name for r in refs} == set(ref)
        raw = path.read_bytes()
        for r in refs:
            expect = ref[r.name].reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
            assert raw[r.region.offset : r.region.offset + r.region.nbytes] == expect, r.name
        report = scan(path, device="cpu")
        assert report.complete
        REACHED["compared"] += 1
        for t in report.tensors:
            value = ref[t.name]
            if not value.is_floating_point():
                assert t.nonfinite == 0
                continue
            value = value.float() if value.dtype.itemsize == 1 else value
            assert (t.nan, t.posinf, t.neginf) == (
                int(torch.isnan(value).sum()), int(torch.isposinf(value).sum()), int(torch.isneginf(value).sum())
            ), t.name


FAST = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
SLOW = settings(max_examples=5000, deadline=None, suppress_health_check=list(HealthCheck))


def test_seed_is_accepted_by_both():
    check(SEED)


@FAST
@given(byte_mutation())
def test_byte_mutations_agree_with_reference(data):
    check(data)


def test_byte_mutations_mostly_reach_the_count_comparison():
    """The fuzzer is only worth its time if most examples get past the header to the counts."""
    REACHED.update(examples=0, compared=0)
    test_byte_mutations_agree_with_reference()
    assert REACHED["examples"] >= 100
    assert REACHED["compared"] / REACHED["examples"] >= 0.5, REACHED


@FAST
@given(header_mutation())
def test_header_mutations_agree_with_reference(data):
    check(data)


@pytest.mark.slow
@SLOW
@given(byte_mutation())
def test_byte_mutations_agree_with_reference_long(data):
    check(data)


@pytest.mark.slow
@SLOW
@given(header_mutation())
def test_header_mutations_agree_with_reference_long(data):
    check(data)


@pytest.mark.parametrize("spelling", ["-0", "-0.0", "0.0", "0e0", "4.0", "4e0", "-4", "18446744073709551616"])
def test_number_spellings_in_a_header_agree_with_reference(spelling):
    """A dimension written "-0" is 0 to Python's json but a float to the reference (serde), which refuses the
    file: nandoctor called it clean. Every spelling of a size is held to the reference."""
    header = (b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
              b'"b":{"dtype":"F32","shape":[' + spelling.encode() + b',4],"data_offsets":[8,8]}}')
    header += b" " * (-len(header) % 8)
    check(struct.pack("<Q", len(header)) + header + struct.pack("<2f", 1, 2))
