"""`nandoctor diff` of a real tensor against a complex one, torch as the oracle; and a worker's error that leaves
no view of a mapped file behind (the tester's `BufferError: cannot close exported pointers exist`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import nandoctor
from nandoctor.diffs import values
from nandoctor.errors import NandoctorError
from tests.conftest import run_cli

N = 1000
IMAG = [3, 77, 500, 999]  # the elements whose imaginary part is not 0


def complex_tensor(real_dtype: torch.dtype) -> torch.Tensor:
    """C64 values whose real parts an integer dtype holds exactly, and a float one after its rounding."""
    g = torch.Generator().manual_seed(7)
    if real_dtype.is_floating_point:
        re = torch.randn(N, generator=g) * 1000
    else:
        re = torch.randint(0, 60000 if real_dtype == torch.uint16 else 1 << 24, (N,), generator=g).float()
    im = torch.zeros(N)
    im[IMAG] = torch.tensor([0.5, -2.0, 1e-3, 7.25])
    return torch.complex(re, im)


def save(path: Path, tensor: torch.Tensor) -> Path:
    if path.suffix == ".safetensors":
        save_file({"w": tensor.contiguous()}, path)
    else:
        torch.save({"w": tensor}, path)
    return path


@pytest.mark.parametrize("io", ["mmap", "read"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("real_dtype", [torch.float32, torch.float16, torch.int32, torch.uint16])
def test_a_real_tensor_against_a_complex_one_is_compared_as_a_cast(tmp_path, monkeypatch, io, suffix, real_dtype):
    monkeypatch.setenv("NANDOCTOR_IO", io)
    b = complex_tensor(real_dtype)
    a = b.real.to(real_dtype)  # torch's cast: the real part rounded (float) or exact (integers), the imaginary lost
    fa, fb = save(tmp_path / f"a{suffix}", a), save(tmp_path / f"b{suffix}", b)
    # Where the imaginary part is 0, torch's rounding of the real part is a cast: the same values
    zero_im = b.clone()
    zero_im.imag[:] = 0
    cast = nandoctor.diff(fa, save(tmp_path / f"z{suffix}", zero_im)).tensors[0]
    rounded = float((a.double() - b.real.double()).abs().max())  # torch's largest rounding error
    # (a real part stored exactly, float32 in complex64's float32 lanes: the same values in another dtype)
    assert (cast.status, cast.changed, cast.dtype_b) == ("cast" if rounded else "equal", 0, "C64"), cast
    assert cast.rounding == (rounded if rounded else None)
    # Elsewhere the imaginary part the real tensor does not hold is a change, counted per element, both ways
    for x, y, a_side in ((fa, fb, True), (fb, fa, False)):
        diff = nandoctor.diff(x, y).tensors[0]
        assert diff.status == "changed" and diff.changed == int(torch.count_nonzero(b.imag))
        assert diff.nonfinite_a_only == diff.nonfinite_b_only == 0
        k = int(b.imag.abs().argmax())
        assert diff.max_abs is not None and diff.max_abs.index == k and diff.max_abs.coords == (k,)
        assert diff.max_abs.amount == float(b.imag.abs().max())
        assert (diff.max_abs.a, diff.max_abs.b) == ((0.0, b.imag[k].item()) if a_side else (b.imag[k].item(), 0.0))


def test_the_testers_files_are_a_change_not_an_internal_error(tmp_path):
    fa = save(tmp_path / "a.safetensors", torch.tensor([1.0, 2.0]))
    fb = save(tmp_path / "b.safetensors", torch.tensor([1 + 1j, 2 + 0j]))
    result = run_cli("diff", fa, fb)
    assert result.exit_code == 1 and "internal error" not in result.output
    assert "1 of 2 elements" in result.stdout and "F32 → C64" in result.stdout


def test_an_error_in_a_worker_leaves_no_view_of_the_mapped_file(tmp_path, monkeypatch):
    """The worker's exception (and its frames, which hold the chunk's views of the map) is dropped with its
    future: the map closes; the tensor is unreadable with the error's message."""
    monkeypatch.setenv("NANDOCTOR_IO", "mmap")
    fa = save(tmp_path / "a.safetensors", torch.arange(4096, dtype=torch.float32))
    fb = save(tmp_path / "b.safetensors", torch.arange(4096, dtype=torch.float32) + 1)

    def broken(*args, **kwargs):
        raise NandoctorError("planted failure")

    monkeypatch.setattr(values, "compare", broken)
    diff = nandoctor.diff(fa, fb)
    assert diff.exit_code == 3 and diff.tensors[0].status == "unreadable"
    assert diff.tensors[0].message == "planted failure"
