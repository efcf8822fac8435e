"""safetensors dtypes that safetensors.torch cannot load (F6_E2M3, F6_E3M2: torch has no 6-bit float) make a
problem naming the tensors (exit 3): load_file and transformers fail on the file, so it is never CLEAN. Every
other dtype of the format scans as before. safetensors.torch is the oracle, dtype by dtype."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from nandoctor.dtypes import DTYPES, SAFETENSORS_DTYPES, TORCH_UNCASTABLE_SAFETENSORS, TORCH_UNLOADABLE_SAFETENSORS
from nandoctor.engine import scan
from tests.conftest import run_cli

pytest.importorskip("torch")


def _write(path, tensors: dict[str, tuple[str, int, bytes]]) -> None:
    """A safetensors file of ``name: (dtype, elements, bytes)``, written by hand (safetensors' writers have no
    6-bit dtype to write from)."""
    header, offset = {}, 0
    for name, (dtype, n, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": [n], "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(data for _, _, data in tensors.values()))


def _loads(path) -> bool:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        load_file(path)
    except SafetensorError:
        return False
    return True


def test_exactly_the_dtypes_safetensors_torch_refuses_make_the_file_exit_3(tmp_path):
    refused = set()
    for dtype in sorted(SAFETENSORS_DTYPES):
        path = tmp_path / f"{dtype}.safetensors"
        _write(path, {"w": (dtype, 8, bytes(8 * DTYPES[dtype].bits // 8))})  # zeros: finite in every dtype
        loads = _loads(path)
        refused |= set() if loads else {dtype}
        report = scan(path, device="cpu")
        assert report.exit_code == (0 if loads else 3), (dtype, report.errors)
        assert [t.name for t in report.tensors] == ["w"]  # read and counted either way
    assert refused == TORCH_UNLOADABLE_SAFETENSORS == {"F6_E2M3", "F6_E3M2"}


def test_exactly_the_dtypes_safetensors_torch_loads_as_tensors_torch_cannot_cast(tmp_path):
    """Of the dtypes load_file loads, the ones it gives back other than the header says (another shape) or as a
    tensor torch cannot cast into a float parameter: F4 alone (float4_e2m1fn_x2, half as wide, no copy kernel).
    A model folder storing one is NOT LOADABLE (tests/test_load_config.py); a file alone is not judged."""
    import warnings

    import torch
    from safetensors.torch import load_file

    uncastable = set()
    for dtype in sorted(SAFETENSORS_DTYPES - TORCH_UNLOADABLE_SAFETENSORS):
        path = tmp_path / f"{dtype}.safetensors"
        header = json.dumps({"w": {"dtype": dtype, "shape": [2, 8], "data_offsets": [0, 2 * DTYPES[dtype].bits]}}).encode()
        path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(2 * DTYPES[dtype].bits))
        tensor = load_file(path)["w"]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # complex to real drops the imaginary part: a cast all the same
                tensor.to(torch.float32)
            cast = True
        except RuntimeError:
            cast = False
        if list(tensor.shape) != [2, 8] or not cast:
            uncastable.add(dtype)
    assert uncastable == TORCH_UNCASTABLE_SAFETENSORS == {"F4"}


def test_the_problem_names_the_tensors_and_the_nan_elsewhere_is_still_counted(tmp_path):
    from safetensors import safe_open

    path = tmp_path / "model.safetensors"
    nan = np.array([1.0, np.nan, 2.0, np.nan], np.float32).tobytes()
    _write(path, {"mlp.experts.w1": ("F6_E2M3", 4, b"\x01\x02\x03"), "embed.weight": ("F32", 4, nan),
                  "mlp.experts.w2": ("F6_E3M2", 8, b"\x00" * 6)})
    with safe_open(path, framework="pt") as f:
        assert int(f.get_tensor("embed.weight").isnan().sum()) == 2
        with pytest.raises(Exception, match="Dtype not understood"):
            f.get_tensor("mlp.experts.w1")
    report = scan(path, device="cpu")
    assert report.exit_code == 3 and report.nan == 2
    [problem] = report.errors
    assert problem.path == str(path) and problem.kind == "unloadable"
    assert problem.message.startswith("2 tensor(s) of dtype F6_E2M3/F6_E3M2 ('mlp.experts.w1', 'mlp.experts.w2'): "
                                      "safetensors.torch cannot load this dtype")
    assert "re-export those tensors in a dtype torch loads" in problem.hint
    data = json.loads(run_cli("scan", "--json", path).output)
    assert data["summary"]["verdict"] != "CLEAN" and "safetensors.torch cannot load this dtype" in data["errors"][0]["message"]
    quiet = run_cli("scan", "-q", path)
    assert quiet.exit_code == 3 and quiet.output.startswith("FAIL NON-FINITE + NOT LOADABLE")
