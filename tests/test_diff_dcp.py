"""`nandoctor diff` on real torch.distributed.checkpoint folders: sharded tensors are compared as the global
tensors scan reports, whatever the sharding on either side (2 gloo ranks, 1 rank, safetensors), and every
position is a global coordinate."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import nandoctor
from nandoctor.checkpoint.opener import open_checkpoint
from tests.dcp_writer import torch_reference, write_two_rank

torch = pytest.importorskip("torch")
pytest.importorskip("torch.distributed.checkpoint")
from safetensors.torch import save_file  # noqa: E402

TENSORS = 12  # 4 parameters and their 2 Adam moments (tests/dcp_writer.py)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dcp-diff")
    out = {"two": root / "two", "planted": root / "planted", "one": root / "one"}
    write_two_rank(str(out["two"]), "TORCH_SAVE", plant=False)
    write_two_rank(str(out["planted"]), "TORCH_SAVE")  # NaN, -Inf at the places dcp_writer.py names
    write_two_rank(str(out["one"]), "TORCH_SAVE", plant=False, ranks=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = torch_reference(str(out["two"]))
    out["st"] = root / "same.safetensors"
    save_file({k: v.contiguous() for k, v in values.items()}, out["st"])
    values["model.0.weight"][6, 1] = 3e30  # row 6: rank 1's half of the 8 rows
    out["st_far"] = root / "far.safetensors"
    save_file({k: v.contiguous() for k, v in values.items()}, out["st_far"])
    return out


def _chunks(path: Path) -> int:
    return sum(ref.chunk is not None for ref in open_checkpoint(path).refs)


@pytest.mark.integration
def test_same_values_sharded_differently_are_identical(saved: dict[str, Path]) -> None:
    assert _chunks(saved["two"]) == 2 * TENSORS and _chunks(saved["one"]) == 0  # really sharded differently
    for a, b in (("two", "one"), ("one", "two"), ("two", "st"), ("st", "two")):
        report = nandoctor.diff(saved[a], saved[b])
        assert (report.verdict, report.exit_code, report.problems) == ("SAME", 0, ()), (a, b)
        assert report.counts["identical"] == TENSORS and len(report.tensors) == TENSORS
        assert {t.shape_a for t in report.tensors if t.name == "model.0.weight"} == {(8, 6)}


@pytest.mark.integration
@pytest.mark.parametrize("reference", ["two", "one", "st"])
def test_planted_values_found_at_global_coordinates(saved: dict[str, Path], reference: str) -> None:
    report = nandoctor.diff(saved["planted"], saved[reference])
    assert (report.verdict, report.exit_code, report.problems) == ("DIFFERENT", 1, ())
    changed = {t.name: t for t in report.tensors if t.status == "changed"}
    assert sorted(changed) == ["model.0.weight", "model.2.weight", "optim.state.2.bias.exp_avg"]
    assert report.counts["identical"] == TENSORS - 3
    found = {name: (t.changed, t.nonfinite_a_only, t.nonfinite_b_only, t.first_nonfinite_a_only,
                    t.first_nonfinite_a_only_coords) for name, t in changed.items()}
    assert found == {
        "model.0.weight": (1, 1, 0, 32, (5, 2)),  # NaN in rank 1's half: its local row 1 is global row 5
        "model.2.weight": (1, 1, 0, 11, (1, 3)),  # -Inf in rank 0's half
        "optim.state.2.bias.exp_avg": (1, 1, 0, 2, (2,)),  # rank 1's first element
    }


@pytest.mark.integration
def test_largest_change_in_rank_one_half_is_global(saved: dict[str, Path]) -> None:
    for a, b, value in (("two", "st_far", "B"), ("st_far", "two", "A")):
        report = nandoctor.diff(saved[a], saved[b])
        (t,) = [t for t in report.tensors if t.status == "changed"]
        assert (t.name, t.changed, t.max_abs.index, t.max_abs.coords) == ("model.0.weight", 1, 37, (6, 1))
        assert (t.max_abs.b if value == "B" else t.max_abs.a) == pytest.approx(3e30, rel=1e-6)


@pytest.mark.integration
def test_cli_line_names_global_coordinates(saved: dict[str, Path]) -> None:
    done = subprocess.run([sys.executable, "-m", "nandoctor", "diff", str(saved["planted"]), str(saved["one"])],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    lines = [" ".join(line.split()) for line in done.stdout.splitlines()]
    assert "model.0.weight changed 1 of 48 elements; 1 NaN/Inf only in A (first at [5, 2])" in lines
    assert "model.2.weight changed 1 of 32 elements; 1 NaN/Inf only in A (first at [1, 3])" in lines
    assert not any("ambiguous" in line for line in lines)


def test_a_tensor_in_a_missing_distcp_file_is_unreadable_not_only_in_b(tmp_path: Path) -> None:
    """The .metadata maps every item to its file, as an index maps a shard's names: a tensor of a file that is gone
    is not compared, never "only in B" (and counted as a change)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter

    torch.manual_seed(0)
    state = {f"l{i}.weight": torch.randn(8, 8) for i in range(4)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for side in ("a", "b"):
            dcp.save(state, storage_writer=FileSystemWriter(str(tmp_path / side), single_file_per_rank=False),
                     no_dist=True)
    lost = sorted((tmp_path / "a").glob("*.distcp"))[-1]
    lost.unlink()
    result = nandoctor.diff(tmp_path / "a", tmp_path / "b")
    unread = [t for t in result.tensors if t.status == "unreadable"]
    assert result.exit_code == 3 and not [t for t in result.tensors if t.status in ("only_a", "only_b", "changed")]
    assert len(unread) == 1 and unread[0].message == (
        f"not compared: A's .metadata maps it to {lost.name}, which could not be read")


def test_a_tensor_in_a_missing_pickled_object_item_is_unreadable_too(tmp_path: Path) -> None:
    """A review: a tuple's tensor (`pair.0`, read from the object item `pair`) of a missing file was "only in B"."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter

    from nandoctor.readers.dcp import metadata_for

    state = {"w": torch.ones(4), "pair": (torch.ones(2), 3)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for side in ("a", "b"):
            dcp.save(state, storage_writer=FileSystemWriter(str(tmp_path / side), single_file_per_rank=False),
                     no_dist=True)
    metadata = metadata_for(tmp_path / "a")
    assert metadata is not None
    (item,) = [i for i in metadata.items if i.fqn == "pair"]
    (tmp_path / "a" / item.relative_path).unlink()
    result = nandoctor.diff(tmp_path / "a", tmp_path / "b")
    assert {t.name: t.status for t in result.tensors}["pair.0"] == "unreadable"
