"""DCP (torch.distributed.checkpoint) folders: read through a restricted .metadata unpickler, chunks merged
in global coordinates, compared with what torch itself loads."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import pytest

import nandoctor
from nandoctor.checkpoint.runs import step_of
from tests.dcp_writer import torch_reference, write_two_rank

torch = pytest.importorskip("torch")
dcp = pytest.importorskip("torch.distributed.checkpoint")
FORMATS = ("TORCH_SAVE", "SAFETENSORS")


def _expected(reference: dict) -> dict[str, tuple[int, int, int, int | None]]:
    """(nan, +inf, -inf, first non-finite flat index) of each tensor as torch loaded it."""
    out = {}
    for name, t in reference.items():
        flat = t.float().reshape(-1)
        bad = (~torch.isfinite(flat)).nonzero()
        out[name] = (int(torch.isnan(flat).sum()), int(torch.isposinf(flat).sum()), int(torch.isneginf(flat).sum()),
                     int(bad[0]) if len(bad) else None)
    return out


def _found(report) -> dict[str, tuple[int, int, int, int | None]]:
    return {t.name: (t.nan, t.posinf, t.neginf, t.first_bad) for t in report.tensors}


def _save_single(folder: Path, fmt: str) -> None:
    from torch.distributed.checkpoint.filesystem import FileSystemWriter, SerializationFormat

    weight = torch.randn(5, 7)
    weight[3, 4] = float("nan")
    weight[0, 1] = float("inf")
    emb = torch.randn(16, dtype=torch.bfloat16)
    emb[9] = float("-inf")
    emb[10] = float("nan")
    state = {"model": {"proj.weight": weight, "emb": emb, "ids": torch.arange(4)}, "step": 7, "meta": {"k": [1, 2]}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group: saving in a single process"
        writer = FileSystemWriter(folder, serialization_format=getattr(SerializationFormat, fmt))
        dcp.save(state, storage_writer=writer)


@pytest.mark.parametrize("fmt", FORMATS)
def test_single_process_save_matches_torch(tmp_path: Path, fmt: str) -> None:
    _save_single(tmp_path, fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = _expected(torch_reference(str(tmp_path)))
    report = nandoctor.scan(tmp_path)
    assert report.errors == ()
    assert _found(report) == expected
    assert expected["model.proj.weight"] == (1, 1, 0, 1) and expected["model.emb"] == (1, 0, 1, 9)
    assert report.nan == 2 and report.posinf == 1 and report.neginf == 1
    assert report.exit_code == 1


def test_nan_in_a_numpy_array_saved_as_a_dcp_object_is_counted_as_in_a_torch_file(tmp_path: Path) -> None:
    """dcp.save writes a numpy array as a pickled object item; dcp.load (and dcp_to_torch_save) give the NaN
    back. The same dict written by torch.save failed (NaN in a numpy array is a finding) while the DCP folder
    passed CLEAN (a fuzzer's find)."""
    import numpy as np

    state = {"w": torch.randn(2), "stats": {"mean": np.array([1.0, float("nan"), float("inf")])}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(tmp_path / "ckpt"), no_dist=True)
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        dcp_to_torch_save(str(tmp_path / "ckpt"), str(tmp_path / "converted.pt"))
        loaded = torch.load(tmp_path / "converted.pt", weights_only=False)  # our own test output: trusted
    assert np.isnan(loaded["stats"]["mean"]).sum() == 1  # the oracle: torch gives the NaN back
    torch.save(state, tmp_path / "same.pt")
    for path in (tmp_path / "ckpt", tmp_path / "same.pt"):
        report = nandoctor.scan(path)
        assert report.exit_code == 1 and not report.errors, path
        assert [(u.kind, u.nan, u.posinf) for u in report.unviewed] == [("numpy", 1, 1)], path
    assert "stats" in nandoctor.scan(tmp_path / "ckpt").unviewed[0].label()


def test_a_torchtitan_train_state_with_bytesio_values_loads_and_is_clean(tmp_path: Path) -> None:
    """torchtitan's TrainState.state_dict() holds io.BytesIO values (its loss history, torch.save'd), which dcp.save
    pickles as object items; dcp.load reads those with weights_only=False and gets them back. Every torchtitan
    checkpoint was UNREADABLE ("reaches for _io.BytesIO, which would run code"): a buffer runs nothing. Nor is a
    numpy value in such an item one "torch.load's default refuses": dcp.load never reads it that way."""
    import io

    import numpy as np

    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    losses, steps = io.BytesIO(), io.BytesIO()
    torch.save([2.1, 2.0], losses)
    torch.save([1, 2], steps)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "train_state": {"step": torch.tensor(10, dtype=torch.int32), "global_avg_losses": losses,
                             "log_steps": steps, "data_stats": np.array([0.5, 1.5])}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(tmp_path / "step-10"), no_dist=True)
        template = {"model": torch.nn.Linear(4, 4).state_dict(), "optimizer": optimizer.state_dict(),
                    "train_state": {"step": torch.tensor(0, dtype=torch.int32), "global_avg_losses": io.BytesIO(),
                                    "log_steps": io.BytesIO(), "data_stats": None}}
        dcp.load(template, checkpoint_id=str(tmp_path / "step-10"), no_dist=True)  # the oracle loads it all
    restored = template["train_state"]["global_avg_losses"]
    restored.seek(0)
    assert torch.load(restored, weights_only=False) == [2.1, 2.0]
    report = nandoctor.scan(tmp_path / "step-10")
    assert report.errors == () and report.exit_code == 0, [p.message for p in report.errors]
    assert not any("refuses" in note for note in report.notes), report.notes
    assert "model.weight" in {t.name for t in report.tensors}
    # the buffer's module stays refused for what runs code: a pickled _io.open still refuses the file
    from nandoctor.readers.torch.safe_pickle import _is_unsafe

    assert _is_unsafe("_io", "open") and _is_unsafe("io", "FileIO") and not _is_unsafe("_io", "BytesIO")


@pytest.fixture(scope="module", params=FORMATS)
def two_rank(request, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp(f"dcp-{request.param.lower()}")
    write_two_rank(str(folder), request.param)
    return folder


@pytest.mark.integration
def test_two_rank_sharded_model_and_optimizer_match_torch(two_rank: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = torch_reference(str(two_rank))
    report = nandoctor.scan(two_rank)
    assert report.errors == ()
    assert sorted(os.listdir(two_rank)) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert len(report.tensors) == 12  # 4 parameters + their 2 Adam moments, each saved as 2 chunks
    assert _found(report) == _expected(reference)
    by_name = {t.name: t for t in report.tensors}
    assert by_name["model.0.weight"].ref.shape == (8, 6) and by_name["model.0.weight"].first_bad_coords == (5, 2)
    assert by_name["model.2.weight"].neginf == 1 and by_name["model.2.weight"].first_bad_coords == (1, 3)
    moment = by_name["optim.state.2.bias.exp_avg"]
    assert (moment.nan, moment.first_bad, moment.role) == (1, 2, "optimizer")
    assert (report.nan, report.neginf) == (2, 1)
    assert not any("share" in n for n in report.notes)


def test_distcp_alone_is_not_called_damaged(tmp_path: Path) -> None:
    _save_single(tmp_path, "TORCH_SAVE")
    lone = tmp_path / "lone"
    lone.mkdir()
    (tmp_path / "__0_0.distcp").rename(lone / "__0_0.distcp")
    report = nandoctor.scan(lone / "__0_0.distcp")
    assert report.exit_code == 3
    (problem,) = report.errors
    assert "without its folder's .metadata" in problem.message and "ZIP64" not in problem.message


def test_missing_distcp_file_is_exit_3_naming_it(tmp_path: Path) -> None:
    _save_single(tmp_path, "TORCH_SAVE")
    (tmp_path / "__0_0.distcp").unlink()
    report = nandoctor.scan(tmp_path)
    assert report.exit_code == 3 and report.tensors == ()
    (problem,) = report.errors
    assert problem.path.endswith("__0_0.distcp") and "missing (5 item(s)" in problem.message


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_METADATA",))


def test_malicious_metadata_is_refused_and_never_run(tmp_path: Path, monkeypatch) -> None:
    _save_single(tmp_path, "TORCH_SAVE")
    with open(tmp_path / ".metadata", "rb") as fh:
        metadata = pickle.load(fh)
    metadata.planner_data = _Payload()
    with open(tmp_path / ".metadata", "wb") as fh:
        pickle.dump(metadata, fh)
    monkeypatch.chdir(tmp_path)
    report = nandoctor.scan(tmp_path)
    assert report.exit_code == 3
    (problem,) = report.errors
    assert "posix.system" in problem.message and "refused, nothing was run" in problem.message
    assert not (tmp_path / "PWNED_BY_METADATA").exists()


def test_item_mismatching_its_metadata_is_corrupt(tmp_path: Path) -> None:
    _save_single(tmp_path, "TORCH_SAVE")
    with open(tmp_path / ".metadata", "rb") as fh:
        metadata = pickle.load(fh)
    for index, info in metadata.storage_data.items():
        if index.fqn == "model.emb":
            info.offset += 1  # off by one byte: not a torch.save stream any more
    with open(tmp_path / ".metadata", "wb") as fh:
        pickle.dump(metadata, fh)
    report = nandoctor.scan(tmp_path)
    assert report.exit_code == 3
    assert [p.message.split(":")[0] for p in report.errors] == ["item 'model.emb'"]
    assert {t.name for t in report.tensors} == {"model.proj.weight", "model.ids"}


def test_step_folders_join_the_run_timeline() -> None:
    assert step_of(Path("run/step-300")) == 300 and step_of(Path("run/checkpoint-20")) == 20
    assert step_of(Path("run/steps-3")) is None


@pytest.mark.parametrize("what", ["float", "integer"])
def test_flipped_byte_in_an_item_is_caught(tmp_path: Path, what: str) -> None:
    """A DCP item is a torch.save stream: its storages' CRC-32s are checked (in the scan's pass, and by the
    reader on its own), and the problem names the item."""
    from torch.distributed.checkpoint.filesystem import FileSystemWriter

    from nandoctor.readers.dcp import DcpReader

    weight = torch.arange(4096, dtype=torch.float32) / 4096
    ids = torch.arange(1 << 20, (1 << 20) + 4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": {"w": weight, "ids": ids}}, storage_writer=FileSystemWriter(tmp_path))
    assert nandoctor.scan(tmp_path).exit_code == 0
    [file] = tmp_path.glob("*.distcp")
    raw = bytearray(file.read_bytes())
    target = (weight if what == "float" else ids).numpy().tobytes()
    at = raw.find(target)
    assert at > 0 and raw.find(target, at + 1) < 0
    raw[at + 4 * 1000 + 1] ^= 0x01  # a mantissa bit (or a low bit of an id): the value stays finite
    file.write_bytes(bytes(raw))
    name = "model.w" if what == "float" else "model.ids"
    report = nandoctor.scan(tmp_path)
    [problem] = [e for e in report.errors if "CRC-32" in e.message]
    assert report.exit_code == 3 and repr(name) in problem.message and problem.path == str(file)
    assert any("CRC-32" in p.message and repr(name) in p.message for p in DcpReader().read(file).problems)


def test_nan_outside_a_view_in_a_pickled_object_says_how_to_resave_with_dcp(tmp_path: Path) -> None:
    """A tuple holding a view of a larger storage whose NaN lies outside the view: dcp.save pickles the whole
    storage. The next step said to torch.load and re-save the .distcp, which torch.load cannot read."""
    from nandoctor.report.summary import next_steps

    storage = torch.arange(100, dtype=torch.float32)
    storage[50] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"w": torch.ones(4), "pair": (storage[:10], 3)}, checkpoint_id=str(tmp_path / "ckpt"), no_dist=True)
    report = nandoctor.scan(tmp_path / "ckpt")
    assert report.exit_code == 1 and [(u.nan, u.kind) for u in report.unviewed] == [(1, "storage")]
    said = "\n".join(next_steps(report))
    assert "torch.distributed.checkpoint.save" in said and "python -c" not in said


def test_chunks_of_different_scales_are_judged_as_the_whole_tensor(tmp_path) -> None:
    """A review: a tensor cut between two ranks, one chunk N(0, 0.01) with three values of 5e4, the other N(0, 1e-3)
    with eight of 8.0, passed CLEAN (each chunk measured against its own bulk, the eleven chunk outliers then taken
    for the whole tensor's bulk), while the same tensor in one file fails with its three outliers. The chunks are
    measured again as one tensor: the same outliers, the same first one, the same bulk as the file's."""
    import torch
    from safetensors.torch import load_file

    from tests.dcp_scales_writer import BIG
    from tests.dcp_writer import under_torchrun

    folder = tmp_path / "step-1"
    under_torchrun("tests.dcp_scales_writer", str(folder))
    name = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(torch_reference(str(folder))[name], load_file(f"{folder}.safetensors")[name])  # (dcp.load)
    chunked, single = nandoctor.scan(folder), nandoctor.scan(f"{folder}.safetensors")
    (a,), (b,) = chunked.tensors, single.tensors
    assert b.outliers is not None and b.outliers.count == len(BIG)  # the file's judgement, the reference
    assert a.outliers == b.outliers and a.bulk_scale == b.bulk_scale and a.findings == b.findings == ("outlier",)
    assert chunked.exit_code == single.exit_code == 1
