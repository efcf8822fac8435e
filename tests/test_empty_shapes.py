"""Empty tensors whose shapes the loaders refuse: a 0 among the dimensions holds no element, but the loaders'
size arithmetic still overflows on the others (readers/shapes.py). Never CLEAN: each is exit 3, with the real
loader as the oracle where one runs here (safetensors' ``load_file``, ``torch.load``, gguf-py's reader); empty
tensors the loaders take stay CLEAN.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from nandoctor.engine import scan
from tests import gguf_files
from tests.torch_helpers import p_dict, p_storage, p_str, p_tensor, pickle_bytes, torch_zip

torch = pytest.importorskip("torch")
F32 = np.array([1.0, 2.0, 3.0, 4.0], dtype="<f4").tobytes()


def _safetensors(path: Path, empty_shape: list[int]) -> Path:
    header = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
              "e": {"dtype": "F32", "shape": empty_shape, "data_offsets": [16, 16]}}
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + F32)
    return path


def _loads(load, path: Path) -> bool:
    try:
        load(path)
    except Exception:  # noqa: BLE001 - any refusal of the loader's
        return False
    return True


def _exit_code(path: Path) -> tuple[int, str]:
    report = scan(path, device="cpu")
    return report.exit_code, " ".join(p.message for p in report.errors)


@pytest.mark.parametrize("shape", [[2**32, 2**32, 0], [2**62, 2**62, 0], [2**40, 2**40, 0, 5], [2**64 - 1, 0]])
def test_safetensors_empty_shapes_the_loader_refuses_are_exit_3(tmp_path: Path, shape: list[int]) -> None:
    from safetensors.torch import load_file

    path = _safetensors(tmp_path / "m.safetensors", shape)
    assert not _loads(load_file, path)  # the oracle: "overflow computing buffer size", or torch's reshape
    code, why = _exit_code(path)
    assert code == 3 and "tensor 'e'" in why and str(shape) in why, why


@pytest.mark.parametrize("shape", [[0, 7, 9], [2**20, 0], [0], [3, 0, 2**30], [0, 2**40, 2**40]])
def test_safetensors_empty_shapes_the_loader_takes_stay_clean(tmp_path: Path, shape: list[int]) -> None:
    from safetensors.torch import load_file

    path = _safetensors(tmp_path / "m.safetensors", shape)
    assert tuple(load_file(path)["e"].shape) == tuple(shape)
    assert _exit_code(path) == (0, "")


def _torch_file(path: Path, size: tuple[int, ...], stride: tuple[int, ...]) -> Path:
    pkl = pickle_bytes(p_dict([(p_str("w"), p_tensor(p_storage("0", 4), 0, [4], [1])),
                               (p_str("e"), p_tensor(p_storage("1", 0), 0, size, stride))]))
    return torch_zip(path, pkl, {"0": F32, "1": b""})


@pytest.mark.parametrize(("size", "stride"), [((2**62, 2**62, 0), (1, 1, 1)), ((2**40, 2**40, 0), (2**40, 1, 1)),
                                              ((2**64, 0), (1, 1)), ((0, 4), (2**63, 1))])
def test_torch_empty_shapes_torch_refuses_are_exit_3(tmp_path: Path, size, stride) -> None:
    path = _torch_file(tmp_path / "m.pt", size, stride)
    assert not _loads(lambda p: torch.load(p, weights_only=True), path)  # the oracle
    code, why = _exit_code(path)
    assert code == 3 and "tensor 'e'" in why, why


def test_torch_empty_shapes_torch_takes_stay_clean(tmp_path: Path) -> None:
    path = _torch_file(tmp_path / "m.pt", (0, 7, 9), (63, 9, 1))
    assert tuple(torch.load(path, weights_only=True)["e"].shape) == (0, 7, 9)
    assert _exit_code(path) == (0, "")


def _gguf(path: Path, dims: list[int]) -> Path:
    f32 = 0  # GGML_TYPE_F32
    tensors = [("output_norm.weight", [4], f32, 0, F32), ("blk.0.ffn_norm.weight", dims, f32, 32, b"")]
    path.write_bytes(gguf_files.pack(tensors, kv=[gguf_files.kv_str("general.architecture", "llama")]))
    return path


def test_gguf_a_zero_past_the_first_dimension_is_exit_3(tmp_path: Path) -> None:
    # llama.cpp divides INT64_MAX by ne[1..3] to check the element count (gguf.cpp): a 0 there stops it
    code, why = _exit_code(_gguf(tmp_path / "z.gguf", [32, 0]))
    assert code == 3 and "llama.cpp divides" in why, why


def test_gguf_empty_dimensions_past_int64_are_exit_3(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    path = _gguf(tmp_path / "big.gguf", [2**40, 2**40, 0])
    assert not _loads(gguf.GGUFReader, path)  # the oracle: gguf-py's reader ("array is too big")
    assert _exit_code(path)[0] == 3
