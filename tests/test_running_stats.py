"""A BatchNorm's running statistics are buffers, judged for NaN/Inf, and exploded above RUNNING_STAT_CEILING.

A trial on torchvision/timm-style ResNet state dicts: one flipped top exponent bit made a running_mean 1.5e37 (and
a running_var 2.6e38); the model's eval logits went from 0.19 to 9.1e33 and its top class changed for every input,
and the scan said CLEAN. The oracle here is the network itself, in eval mode."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file, save_file  # noqa: E402

import nandoctor  # noqa: E402
from tests.conftest import run_cli  # noqa: E402


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 4))
    net.train()
    for _ in range(5):  # running statistics of real batches
        net(torch.randn(4, 3, 8, 8))
    return net.eval()


def _flip_top_exponent_bit(path: Path, name: str, index: int) -> None:
    """Flip bit 30 (the top exponent bit of an F32) of element ``index`` of ``name``, in the file's bytes."""
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    header = __import__("json").loads(data[8 : 8 + n])
    start = 8 + n + header[name]["data_offsets"][0] + 4 * index
    data[start + 3] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("stat", ["running_mean", "running_var"])
def test_a_flipped_running_statistic_is_exploded_and_repaired(tmp_path, stat):
    net = _net()
    healthy = tmp_path / "healthy.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(healthy))
    assert nandoctor.scan(str(healthy), device="cpu").exit_code == 0
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(healthy.read_bytes())
    _flip_top_exponent_bit(flipped, f"1.{stat}", 3)
    state = load_file(str(flipped))
    assert abs(float(state[f"1.{stat}"][3])) > 1e30
    x = torch.randn(4, 3, 8, 8)
    broken = _net()
    broken.load_state_dict(state)
    assert not torch.equal(broken(x).argmax(1), net(x).argmax(1)) or (broken(x) - net(x)).abs().max() > 1e3

    report = nandoctor.scan(str(flipped), device="cpu")
    assert report.exit_code == 1 and {t.name: t.findings for t in report.tensors if t.findings} == {
        f"1.{stat}": ("exploded",)}
    from nandoctor import verdict

    assert "1 running statistic exploded (max |x| " in verdict.one_line(report)
    done = run_cli("repair", str(flipped), "--from", str(healthy), "--out", str(tmp_path / "fixed"))
    assert done.exit_code == 0, done.output
    assert (tmp_path / "fixed" / "flipped.safetensors").read_bytes() == healthy.read_bytes()


def test_large_running_statistics_of_a_healthy_network_stay_clean(tmp_path):
    """A review: BatchNorm1d(momentum=None) over raw features (cents, Unix times) keeps running variances of 1e18 in
    a model 98 % accurate: no finding."""
    torch.manual_seed(0)
    norm = torch.nn.BatchNorm1d(16, momentum=None)
    for _ in range(20):
        norm(torch.randn(32, 16) * 1e9 + 1.7e9)
    assert float(norm.running_var.max()) > 1e17
    path = tmp_path / "bn.safetensors"
    save_file({k: v.contiguous() for k, v in norm.state_dict().items()}, str(path))
    assert nandoctor.scan(str(path), device="cpu").exit_code == 0
