"""A checkpoint with nothing in it never passes: a gate over no tensors would pass anything, and a model loaded
from it gets none of its weights (transformers reports each one missing and initialises it at random)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.conftest import run_cli


def _weights(path) -> None:
    save_file({"model.w": np.ones((8, 8), np.float32), "model.b": np.zeros(8, np.float32) + 0.5}, path)


@pytest.mark.parametrize("layout", ["safetensors {}", "folder of {}", "torch {}", "lightning without state"])
def test_a_checkpoint_without_tensors_exits_3_with_no_tensors(tmp_path, layout):
    if layout == "safetensors {}":
        target = tmp_path / "model.safetensors"
        save_file({}, target, metadata={"format": "pt"})
    elif layout == "folder of {}":
        target = tmp_path / "ckpt"
        target.mkdir()
        (target / "config.json").write_text("{}")
        save_file({}, target / "model.safetensors", metadata={"format": "pt"})
    else:
        torch = pytest.importorskip("torch")
        target = tmp_path / ("empty.pt" if layout == "torch {}" else "epoch=1-step=10.ckpt")
        torch.save({} if layout == "torch {}" else {"epoch": 1, "global_step": 10, "state_dict": {}}, target)
    quiet = run_cli("scan", "-q", str(target))
    assert quiet.exit_code == 3 and quiet.output.startswith("FAIL NO TENSORS"), quiet.output
    data = json.loads(run_cli("scan", "--json", str(target)).stdout)
    assert data["summary"]["exit_code"] == 3 and data["summary"]["verdict"] == "NO TENSORS"
    assert [e["kind"] for e in data["errors"]] == ["empty"] and "holds no tensors" in data["errors"][0]["message"]


def test_an_empty_safetensors_file_beside_weights_is_named(tmp_path):
    _weights(tmp_path / "model.safetensors")
    save_file({}, tmp_path / "adapter_model.safetensors")
    result = run_cli("scan", "--json", str(tmp_path))
    data = json.loads(result.stdout)
    assert result.exit_code == 3 and data["summary"]["verdict"] == "NO TENSORS"
    assert [e["path"].rsplit("/", 1)[-1] for e in data["errors"]] == ["adapter_model.safetensors"]


def test_a_pickle_without_tensors_beside_weights_is_only_noted(tmp_path):
    """Trainer metadata or an optimizer with no state yet (plain SGD) holds no tensors: not a problem."""
    torch = pytest.importorskip("torch")
    _weights(tmp_path / "model.safetensors")
    torch.save({}, tmp_path / "optimizer.pt")
    result = run_cli("scan", "--json", str(tmp_path))
    data = json.loads(result.stdout)
    assert result.exit_code == 0 and data["summary"]["verdict"] == "CLEAN", data["errors"]
    assert any("holds no tensors" in n for n in data["notes"])
