"""A repair killed at any moment leaves nothing at --out; its temporary folder goes now or next run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fixtures.builders import RawTensor, finite_bits, plant, write_sharded
from nandoctor.restore import PROOF_NAME, repair
from tests.conftest import ROOT

PHASES = ("temp", "copy-2", "copied", "verified", "hashed", "proof", "synced")


def make_pair(root: Path, n_tensors: int = 6, numel: int = 1 << 16) -> tuple[Path, Path]:
    rng = np.random.default_rng(7)
    target, donor = {}, {}
    for i in range(n_tensors):
        name = f"model.layers.{i}.mlp.up_proj.weight"
        good = finite_bits("F32", numel, rng)
        bad = finite_bits("F32", numel, rng)
        if i % 2:
            plant(bad, {"nan": [0, numel - 1], "posinf": [numel // 2]}, "F32")
        target[name] = RawTensor("F32", (numel // 256, 256), bad.tobytes())
        donor[name] = RawTensor("F32", (numel // 256, 256), good.tobytes())
    (root / "ckpt").mkdir(parents=True)
    (root / "old").mkdir()
    write_sharded(root / "ckpt", target, 3)
    write_sharded(root / "old", donor, 3)
    (root / "ckpt" / "config.json").write_text("{}\n")
    return root / "ckpt", root / "old"


def temps(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if ".nandoctor-tmp-" in p.name]


KILLER = """
import os, signal, sys
from nandoctor.restore import repair
phase, target, donor, out = sys.argv[1:5]
copies = []
def on_phase(name):
    if name == phase:
        os.kill(os.getpid(), signal.SIGKILL)
def progress(done, total, what):
    if what.startswith("copying"):
        copies.append(what)
        if phase == "copy-2" and len(copies) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
repair(target, [donor], out, on_phase=on_phase, progress=progress)
"""


@pytest.mark.parametrize("phase", PHASES)
def test_sigkill_at_each_phase_leaves_nothing_at_out(tmp_path, phase):
    target, donor = make_pair(tmp_path)
    out = tmp_path / "fixed"
    done = subprocess.run([sys.executable, "-c", KILLER, phase, str(target), str(donor), str(out)], cwd=ROOT)
    assert done.returncode == -signal.SIGKILL
    assert not out.exists()
    assert len(temps(tmp_path)) == 1  # the dead process's temporary folder is still there …
    result = repair(target, [donor], tmp_path / "fixed-2")  # … until the next repair beside it
    assert result.ok and temps(tmp_path) == []
    assert not out.exists()


def test_sigkill_after_the_rename_leaves_a_complete_output(tmp_path):
    target, donor = make_pair(tmp_path)
    out = tmp_path / "fixed"
    done = subprocess.run([sys.executable, "-c", KILLER, "renamed", str(target), str(donor), str(out)], cwd=ROOT)
    assert done.returncode == -signal.SIGKILL
    proof = json.loads((out / PROOF_NAME).read_text())
    assert proof["verification"]["verdict"] == "CLEAN" and temps(tmp_path) == []


@pytest.mark.parametrize("delay", [0.0, 0.005, 0.02, 0.05])
def test_sigkill_at_arbitrary_moments(tmp_path, delay):
    # Wait until the temporary folder exists (the build has begun), then kill a little later.
    target, donor = make_pair(tmp_path, n_tensors=8, numel=1 << 20)
    out = tmp_path / "fixed"
    cmd = [sys.executable, "-m", "nandoctor", "repair", str(target), "--from", str(donor), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not temps(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.0005)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if out.exists():  # it finished before the kill: then it is whole and verified
        assert json.loads((out / PROOF_NAME).read_text())["verification"]["verdict"] == "CLEAN"
        assert temps(tmp_path) == []
    else:
        assert proc.returncode == -signal.SIGKILL
    result = repair(target, [donor], tmp_path / "again")
    assert result.ok and temps(tmp_path) == []


TERMINATOR = """
import os, signal, sys
from nandoctor.restore import writer
from nandoctor.cli import main
real = writer.write_repair
def write_repair(*args, **kwargs):
    kwargs["on_phase"] = lambda name: os.kill(os.getpid(), signal.SIGTERM) if name == "copied" else None
    return real(*args, **kwargs)
writer.write_repair = write_repair
sys.argv = ["nandoctor", "repair", sys.argv[1], "--from", sys.argv[2], "--out", sys.argv[3]]
main()
"""


def test_sigterm_cleans_up_at_once(tmp_path):
    target, donor = make_pair(tmp_path)
    out = tmp_path / "fixed"
    done = subprocess.run(
        [sys.executable, "-c", TERMINATOR, str(target), str(donor), str(out)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 130, done.stderr
    assert "interrupted" in done.stderr
    assert not out.exists() and temps(tmp_path) == []
    assert os.listdir(target)  # the source is still there


PEAK = """
import sys
from nandoctor.restore import repair
result = repair(sys.argv[1], [sys.argv[2]], sys.argv[3])
assert result.ok
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) * 1024)
"""


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_peak_memory_stays_low_for_a_big_tensor(tmp_path, fmt):
    """A 768 MB tensor restored (a transposed view in the .bin case) in well under 512 MB of RSS."""
    rows, cols = 12288, 16384
    (tmp_path / "ckpt").mkdir()
    if fmt == "safetensors":
        for path, fill in ((tmp_path / "ckpt" / "model.safetensors", 0), (tmp_path / "old.safetensors", 1)):
            text = json.dumps({"__metadata__": {"format": "pt"}, "w": {"dtype": "F32", "shape": [rows, cols], "data_offsets": [0, rows * cols * 4]}}).encode()
            text += b" " * (-len(text) % 8)
            with open(path, "wb") as fh:
                fh.write(len(text).to_bytes(8, "little") + text)
                row = np.full(cols, fill, np.float32)
                for i in range(rows):
                    if fill == 0 and i in (5, rows - 1):
                        row[7] = np.nan
                    fh.write(row.tobytes())
                    row[7] = fill
        target, donor = tmp_path / "ckpt", tmp_path / "old.safetensors"
    else:
        torch = pytest.importorskip("torch")
        pytest.importorskip("nandoctor.readers.torch.file")
        w = torch.zeros(cols, rows)
        w[7, 5] = float("nan")
        torch.save({"w": w.t()}, tmp_path / "ckpt" / "pytorch_model.bin")
        del w
        torch.save({"w": torch.ones(rows, cols)}, tmp_path / "old.bin")
        target, donor = tmp_path / "ckpt", tmp_path / "old.bin"
    done = subprocess.run(
        [sys.executable, "-c", PEAK, str(target), str(donor), str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    peak = int(done.stdout.strip().splitlines()[-1])
    assert peak < 512 * 2**20, f"peak RSS {peak / 2**20:.0f} MiB"
