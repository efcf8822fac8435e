"""Every numpy float or complex value torch.load(weights_only=False) gives back from a torch file is counted:
float128/complex256 arrays, structured arrays (every float field, nested, subarray, aligned, titled, record
arrays, object fields beside them), numpy scalars, masked arrays, matrices, arrays inside object arrays, pickle
protocols 2, 4 and 5 and the legacy format. The oracle is the object torch.load builds, walked with numpy's own
field access. A value that cannot be decoded is a problem naming it (exit 3), never skipped."""

from __future__ import annotations

import json
import pickle
from collections import defaultdict

import numpy as np
import pytest

from tests.conftest import run_cli

torch = pytest.importorskip("torch")

NAN, INF = np.nan, np.inf


def _values() -> dict[str, object]:
    """One numpy value per key (keys without dots: the report names values by their path)."""
    structured = np.zeros(3, dtype=[("a", "<f4"), ("b", ">f8"), ("n", "i4"), ("c", "c8")])
    structured["a"][1], structured["b"][2], structured["c"][0] = NAN, -INF, complex(0, INF)
    nested_dtype = np.dtype([("x", [("y", "f2"), ("z", "i2")]), ("s", "f4", (2, 3))], align=True)
    nested = np.zeros(2, nested_dtype)
    nested["x"]["y"][1], nested["s"][0, 1, 2], nested["s"][1, 0, 0] = INF, NAN, -INF
    titled = np.zeros(2, dtype={"names": ["a"], "formats": ["f8"], "titles": ["Alpha"]})
    titled["a"][0] = NAN
    record = np.rec.array([(1.0, 2), (NAN, 3)], dtype=[("p", "f8"), ("q", "i4")])
    with_objects = np.array([(NAN, "x"), (INF, "y"), (1.0, None)], dtype=[("a", "f8"), ("o", "O")])
    masked = np.ma.masked_array([1.0, NAN, INF], mask=[0, 1, 0], fill_value=NAN)
    inner = np.array([NAN, NAN], np.float32)
    held = np.empty(3, dtype=object)
    held[0], held[1], held[2] = inner, np.float16(-INF), "text"
    strided = np.arange(12, dtype=np.float64).reshape(3, 4)[:, ::2].copy()
    strided[1, 1] = NAN
    return {
        "f2": np.array([1, NAN, INF], np.float16), "f4be": np.array([NAN, -INF], ">f4"),
        "f8": np.array([[NAN, 1.0], [2.0, INF]], order="F"), "f16": np.array([INF, 1.0, NAN], np.longdouble),
        "c8": np.array([complex(NAN, 0), complex(1, -INF)], np.complex64),
        "c16": np.array([complex(INF, NAN), 1j], np.complex128), "c32": np.array([complex(1, INF), 0], np.clongdouble),
        "zerod": np.array(NAN, np.float32), "empty": np.zeros((0, 3), np.float64), "strided": strided[:, ::1],
        "structured": structured, "nested": nested, "titled": titled, "record": record,
        "withobjects": with_objects, "masked": masked, "matrix": np.matrix([[NAN, 1.0]]), "held": held,
        "s4": np.float32(NAN), "s8": np.float64(INF), "s16": np.longdouble(-INF), "s2": np.float16(1.0),
        "sc8": np.complex64(complex(NAN, 1)), "sc16": np.complex128(complex(0, -INF)),
        "sc32": np.clongdouble(complex(INF, 0)), "void": structured[0], "ints": np.arange(5), "flag": np.bool_(True),
        "dates": np.array(["2020-01-01", "NaT"], "datetime64[D]"), "words": np.array(["a", "b"]),
    }


def _tally(values: np.ndarray) -> tuple[int, int, int]:
    if values.dtype.kind == "c":
        nan = np.isnan(values.real) | np.isnan(values.imag)
        inf = ~nan & (np.isinf(values.real) | np.isinf(values.imag))
        sign = np.where(np.isinf(values.real), values.real, values.imag)
        return int(nan.sum()), int((inf & (sign > 0)).sum()), int((inf & (sign < 0)).sum())
    return int(np.isnan(values).sum()), int(np.isposinf(values).sum()), int(np.isneginf(values).sum())


def _oracle(value: object) -> tuple[int, int, int]:
    """NaN, +Inf, -Inf in every numpy float value within ``value`` as torch.load built it."""
    parts: list[tuple[int, int, int]] = []
    if isinstance(value, np.ma.MaskedArray):
        parts += [_oracle(value.data), _oracle(value._fill_value)]
    elif isinstance(value, np.ndarray) and value.dtype.names:
        parts += [_oracle(np.asarray(value[name])) for name in value.dtype.names]
    elif isinstance(value, np.ndarray) and value.dtype.hasobject:
        parts += [_oracle(item) for item in value.ravel()]
    elif isinstance(value, np.ndarray) and value.dtype.kind in "fc":
        parts.append(_tally(np.asarray(value)))
    elif isinstance(value, np.void):
        parts.append(_oracle(np.array(value)))
    elif isinstance(value, np.generic) and value.dtype.kind in "fc":
        parts.append(_tally(np.array(value)))
    elif isinstance(value, (dict, list, tuple)):
        parts += [_oracle(v) for v in (value.values() if isinstance(value, dict) else value)]
    return tuple(sum(p[i] for p in parts) for i in range(3))  # type: ignore[return-value]


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix, kept because pickles hold it
@pytest.mark.parametrize("how", ["protocol 2", "protocol 4", "protocol 5", "legacy"])
def test_every_numpy_float_value_torch_load_builds_is_counted_exactly(tmp_path, how):
    values = _values()
    path = tmp_path / "model.pt"
    kwargs = {"pickle_protocol": int(how[-1])} if how.startswith("protocol") else {}
    torch.save({"weight": torch.ones(2), **values}, path, _use_new_zipfile_serialization=how != "legacy", **kwargs)
    loaded = torch.load(path, weights_only=False)
    expected = {key: _oracle(loaded[key]) for key in values}
    assert expected["structured"] == (1, 1, 1) and expected["masked"] == (2, 1, 0) and expected["held"] == (2, 0, 1)
    result = run_cli("scan", "--json", path)
    data = json.loads(result.stdout)
    assert not data["errors"], data["errors"]
    got: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for bad in data["unviewed"]:
        assert bad["kind"] == "numpy"
        counts = got[bad["storage"].split(".")[0]]
        counts[:] = [counts[0] + bad["nan"], counts[1] + bad["posinf"], counts[2] + bad["neginf"]]
    assert {k: tuple(v) for k, v in got.items()} == {k: v for k, v in expected.items() if any(v)}
    assert (data["summary"]["nan"], data["summary"]["posinf"], data["summary"]["neginf"]) == tuple(
        sum(v[i] for v in expected.values()) for i in range(3))
    assert result.exit_code == 1 and data["summary"]["verdict"] == "NON-FINITE"
    assert any("numpy floating array(s) or scalar(s)" in note and "'s2'" in note and "'empty'" in note
               for note in data["notes"])


@pytest.mark.parametrize("value", [np.float32(np.nan), np.float64(np.inf), np.complex128(complex(0, -np.inf)),
                                   np.clongdouble(complex(np.nan, 0)), np.longdouble(np.inf)])
def test_a_numpy_scalar_alone_in_a_file_fails_the_scan(tmp_path, value):
    path = tmp_path / "state.pt"
    torch.save({"weight": torch.ones(2), "best": value}, path)
    assert _oracle(torch.load(path, weights_only=False)) != (0, 0, 0)
    quiet = run_cli("scan", "-q", path)
    assert quiet.exit_code == 1 and "numpy arrays pickled in the file" in quiet.output


def _with_dtype_code(code: bytes, new: bytes, tmp_path) -> object:
    path = tmp_path / "odd.pt"
    torch.save({"w": torch.ones(1), "stats": np.array([np.nan], np.float64)}, path, _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    assert raw.count(code) == 1
    path.write_bytes(raw.replace(code, new))
    return path


def test_a_float_type_this_numpy_lacks_is_a_problem_naming_the_value(tmp_path):
    """``f8`` rewritten to ``f9`` (no such float): torch.load fails on it; the scan says the value was not read."""
    path = _with_dtype_code(b"X\x02\x00\x00\x00f8", b"X\x02\x00\x00\x00f9", tmp_path)
    with pytest.raises((TypeError, pickle.UnpicklingError)):
        torch.load(path, weights_only=False)
    result = run_cli("scan", "--json", path)
    data = json.loads(result.stdout)
    assert result.exit_code == 3
    assert "numpy value 'stats' could not be read from the pickle" in data["errors"][0]["message"]
    assert "no float type numpy has here" in data["errors"][0]["message"]


def test_integer_string_and_datetime_values_are_left_alone(tmp_path):
    path = tmp_path / "rng.pt"
    torch.save({"w": torch.ones(1), "state": np.random.RandomState(0).get_state(), "n": np.int64(3),
                "when": np.datetime64("NaT"), "names": np.array(["x"])}, path)
    result = run_cli("scan", "--json", path)
    data = json.loads(result.stdout)
    assert result.exit_code == 0 and not data["unviewed"] and not data["errors"]
