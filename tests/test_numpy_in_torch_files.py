"""numpy arrays pickled in a torch file are read from the pickle (never through numpy's unpickling) and counted:
a torch file whose numpy arrays hold NaN was called clean, while torch.load(weights_only=False) loads the NaN."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import run_cli

torch = pytest.importorskip("torch")


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    f64 = rng.standard_normal(1000)
    f64[[3, 500]] = np.nan
    f64[7] = np.inf
    big = rng.standard_normal((4, 8)).astype(">f4")
    big[1, 2] = -np.inf
    half = rng.standard_normal(64).astype(np.float16)
    half[::16] = np.nan
    cplx = (rng.standard_normal(10) + 1j * rng.standard_normal(10)).astype(np.complex64)
    cplx[2] = complex(np.nan, 1.0)
    cplx[4] = complex(1.0, -np.inf)
    return {"f64": f64, "big": big, "half": half, "cplx": cplx}


def _expected(array: np.ndarray) -> tuple[int, int, int]:
    if np.iscomplexobj(array):
        nan = np.isnan(array.real) | np.isnan(array.imag)
        inf = ~nan & (np.isinf(array.real) | np.isinf(array.imag))
        sign = np.where(np.isinf(array.real), array.real, array.imag)
        return int(nan.sum()), int((inf & (sign > 0)).sum()), int((inf & (sign < 0)).sum())
    return int(np.isnan(array).sum()), int(np.isposinf(array).sum()), int(np.isneginf(array).sum())


@pytest.mark.parametrize("how", ["zip protocol 2", "zip protocol 4", "legacy"])
def test_nan_in_numpy_arrays_is_counted_exactly_and_fails(tmp_path, how):
    arrays = _arrays()
    state = {"model.weight": torch.ones(4, 4), "stats": arrays,
             "rng": np.random.RandomState(0).get_state()[1],  # uint32: cannot hold NaN, left alone
             "finite": np.linspace(0, 1, 5)}
    path = tmp_path / "model.pt"
    kwargs = {"pickle_protocol": 4} if how == "zip protocol 4" else {}
    torch.save(state, path, _use_new_zipfile_serialization=how != "legacy", **kwargs)
    loaded = torch.load(path, weights_only=False)  # the oracle: torch loads these NaN
    assert np.isnan(loaded["stats"]["f64"]).sum() == 2
    result = run_cli("scan", "--json", str(path))
    data = json.loads(result.stdout)
    assert result.exit_code == 1 and data["summary"]["verdict"] == "NON-FINITE", data["errors"]
    got = {u["storage"]: (u["nan"], u["posinf"], u["neginf"]) for u in data["unviewed"] if u["kind"] == "numpy"}
    assert got == {f"stats.{k}": _expected(v) for k, v in arrays.items()}
    assert data["summary"]["nan"] == sum(n for n, _, _ in got.values())
    assert any("finite: 'finite'" in n for n in data["notes"])  # the finite float array is named as read
    assert "rng" not in json.dumps(data["unviewed"])
    quiet = run_cli("scan", "-q", str(path))
    assert quiet.exit_code == 1 and "numpy arrays pickled in the file" in quiet.output


def test_finite_numpy_arrays_pass_with_a_note(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(3), "mean": np.array([0.5, 0.25], np.float32)}, path)
    result = run_cli("scan", "--json", str(path))
    data = json.loads(result.stdout)
    assert result.exit_code == 0 and not data["unviewed"]
    assert any("numpy floating array(s)" in n and "mean" in n for n in data["notes"])
