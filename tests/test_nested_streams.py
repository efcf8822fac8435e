"""torch.save streams pickled inside a torch file or a DCP item as io.BytesIO values (TransformerEngine's
``_extra_state``: its FP8 scales), read from memory and counted (readers/torch/nested.py).

The oracle: torch.load(weights_only=False) of the outer file gives the BytesIO back, and torch.load of its bytes
(what a module's set_extra_state does) gives the tensor with the NaN. Before nested.py such files read CLEAN."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import pytest

import nandoctor
from tests.conftest import run_cli

torch = pytest.importorskip("torch")


def _extra_state(scale: list[float], legacy: bool = False) -> io.BytesIO:
    """What TransformerEngine 1.x's get_extra_state returns: torch.save of the FP8 meta into a BytesIO."""
    buffer = io.BytesIO()
    state = {"scale_fwd": torch.tensor(scale), "amax_history_fwd": torch.ones(16, 3),
             "extra_fp8_variables": {"num_gemms": 1}}
    if legacy:
        torch.save(state, buffer, _use_new_zipfile_serialization=False)
    else:
        torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def _layer(scale: list[float], legacy: bool = False) -> dict:
    return {"decoder.layers.0.self_attention.linear_qkv.weight": torch.randn(12, 4),
            "decoder.layers.0.self_attention.linear_qkv._extra_state": _extra_state(scale, legacy)}


def _oracle_nan(path: Path) -> int:
    """NaN a module's set_extra_state would load: torch.load of the outer file, then of the stream."""
    outer = torch.load(path, weights_only=False)  # our own test output: trusted
    stream = outer["decoder.layers.0.self_attention.linear_qkv._extra_state"]
    stream.seek(0)
    return int(torch.isnan(torch.load(stream, weights_only=False)["scale_fwd"]).sum())


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_nan_in_a_pickled_torch_save_stream_fails_naming_the_tensor(tmp_path: Path, legacy: bool) -> None:
    path = tmp_path / "model_optim_rng.pt"
    torch.save(_layer([1.0, float("nan"), float("inf")], legacy), path)
    assert _oracle_nan(path) == 1
    report = nandoctor.scan(path)
    assert report.exit_code == 1 and not report.errors, [e.message for e in report.errors]
    assert [(u.kind, u.storage, u.nan, u.posinf, u.neginf) for u in report.unviewed] == [
        ("stream", "decoder.layers.0.self_attention.linear_qkv._extra_state.scale_fwd", 1, 1, 0)]
    assert report.nan == 1 and report.posinf == 1
    assert "torch.save stream" in report.unviewed[0].label()


def test_a_finite_stream_is_clean_and_said_read(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(_layer([1.0, 2.0, 3.0]), path)
    report = nandoctor.scan(path)
    assert report.exit_code == 0 and not report.unviewed and not report.errors
    assert any("torch.save stream(s) pickled in the file" in n and "_extra_state" in n for n in report.notes)


def test_bytes_that_are_no_torch_stream_are_left_alone(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(3), "blob": io.BytesIO(b"\x7fELF not a checkpoint at all")}, path)
    report = nandoctor.scan(path)
    assert report.exit_code == 0 and not report.unviewed and not report.errors
    # (a zip that is no torch.save stream, as a review's assets archive: it read UNREADABLE, "not a PyTorch checkpoint")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a.txt", "hello")
        z.writestr("b/c.txt", "x")
    torch.save({"w": torch.ones(3), "assets": io.BytesIO(archive.getvalue())}, path)
    assert torch.load(path, weights_only=False)["assets"].getvalue() == archive.getvalue()  # the oracle: it loads
    report = nandoctor.scan(path)
    assert report.exit_code == 0 and not report.errors, [e.message for e in report.errors]


def test_a_corrupt_storage_inside_the_stream_is_a_problem_of_the_file(tmp_path: Path) -> None:
    """A flipped byte inside the nested stream's storage fails its own zip CRC-32 (torch does not check it)."""
    inner = _extra_state([1.0, 2.0, 3.0]).getvalue()
    at = inner.index(torch.tensor([1.0, 2.0, 3.0]).numpy().tobytes())
    flipped = bytearray(inner)
    flipped[at + 1] ^= 0x01  # 1.0 → 1.0000001: finite, only the checksum knows
    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(2), "x._extra_state": io.BytesIO(bytes(flipped))}, path)
    report = nandoctor.scan(path)
    assert report.exit_code == 3
    assert any("x._extra_state" in e.message and "CRC" in e.message for e in report.errors), \
        [e.message for e in report.errors]


def test_a_stream_whose_pickle_runs_code_refuses_the_file_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    inner = io.BytesIO()
    torch.save({"scale": torch.ones(2), "hook": Evil()}, inner)
    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(2), "x._extra_state": inner}, path)
    report = nandoctor.scan(path)
    assert report.exit_code == 3 and not marker.exists()
    assert any("x._extra_state" in e.message and "system" in e.message for e in report.errors), \
        [e.message for e in report.errors]


def test_streams_within_streams_are_followed_and_bounded(tmp_path: Path) -> None:
    bad = _extra_state([float("nan")])
    wrapped = io.BytesIO()
    torch.save({"inner": bad}, wrapped)
    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(2), "outer": wrapped}, path)
    report = nandoctor.scan(path)
    assert [(u.storage, u.nan) for u in report.unviewed] == [("outer.inner.scale_fwd", 1)]
    deep = io.BytesIO()
    torch.save({"w": torch.ones(1)}, deep)
    for _ in range(4):
        level = io.BytesIO()
        torch.save({"s": deep}, level)
        deep = level
    torch.save({"w": torch.ones(2), "deep": deep}, path)
    report = nandoctor.scan(path)
    assert report.exit_code == 3 and any("streams deep" in e.message for e in report.errors)


def test_a_dcp_item_holding_a_stream_with_nan_fails(tmp_path: Path) -> None:
    """dcp.save pickles a BytesIO value as an object item; dcp.load gives it back (DefaultLoadPlanner.load_bytes,
    weights_only=False) and its owner torch.loads it: the NaN is there (a Megatron torch_dist checkpoint keeps
    TransformerEngine's _extra_state so). It read CLEAN."""
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    state = {"model": _layer([float("nan"), 1.0, 1.0])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(tmp_path / "iter_0000010"), no_dist=True)
        template = {"model": {"decoder.layers.0.self_attention.linear_qkv.weight": torch.zeros(12, 4),
                              "decoder.layers.0.self_attention.linear_qkv._extra_state": io.BytesIO()}}
        dcp.load(template, checkpoint_id=str(tmp_path / "iter_0000010"), no_dist=True)
    stream = template["model"]["decoder.layers.0.self_attention.linear_qkv._extra_state"]
    stream.seek(0)
    assert int(torch.isnan(torch.load(stream, weights_only=False)["scale_fwd"]).sum()) == 1  # the oracle
    report = nandoctor.scan(tmp_path / "iter_0000010")
    assert report.exit_code == 1, [e.message for e in report.errors]
    assert [(u.kind, u.nan) for u in report.unviewed] == [("stream", 1)]
    assert "model.decoder.layers.0.self_attention.linear_qkv._extra_state" in report.unviewed[0].storage


def test_repair_refuses_and_says_a_repair_restores_tensors_only(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    torch.save(_layer([1.0, 1.0, 1.0]), good)
    torch.save(_layer([float("nan"), 1.0, 1.0]), bad)
    result = run_cli("repair", bad, "--from", good, "--out", tmp_path / "fixed")
    assert result.exit_code != 0 and not (tmp_path / "fixed").exists()
    assert "_extra_state" in result.output and "restores tensors" in result.output, result.output
    scanned = run_cli("scan", bad)
    assert scanned.exit_code == 1 and "torch.save stream" in scanned.output, scanned.output

