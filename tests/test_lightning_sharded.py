"""Lightning runs whose checkpoints are ``epoch=0-step=N.ckpt/`` folders, as Lightning's FSDP (sharded state dict)
and DeepSpeed strategies save them: checkpoints of the run (timeline, last healthy), not refused as non-files.

The FSDP folders are written by Lightning's own ``FSDPStrategy.save_checkpoint`` from the checkpoints of a real CPU
run (the strategy itself needs a GPU to train), so the run of files and the run of folders hold the same states;
torch's ``dcp_to_torch_save`` is the oracle for each folder. The DeepSpeed folders are ZeRO-2 saves laid out as
DeepSpeed writes them under Lightning's tag ``checkpoint``, with DeepSpeed's ``zero_to_fp32`` as the oracle."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

import nandoctor
from tests.torch_helpers import flatten, torch_counts

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")
from tests.realruns import POISONED_PARAMETER, lightning_run  # noqa: E402  (needs torch)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """(the run's .ckpt files, the same run saved as Lightning's FSDP sharded .ckpt folders)."""
    base = tmp_path_factory.mktemp("lightning-sharded")
    lightning_run(base / "files", poison_at=6, steps=10, keep_last=False, save_last=True)
    sharded = shutil.copytree(base / "files", base / "sharded")
    from lightning.pytorch.strategies import FSDPStrategy

    for ckpt in sorted((sharded / "checkpoints").glob("*.ckpt")):
        state = torch.load(ckpt, weights_only=True)
        ckpt.unlink()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # single process: DCP says it assumes so
            FSDPStrategy(state_dict_type="sharded").save_checkpoint(state, ckpt)  # a folder: .metadata, .distcp, meta.pt
    return base / "files" / "checkpoints", sharded / "checkpoints"


def _rows(run) -> list[tuple[str, int, str]]:
    return [(c.name, c.step, c.status) for c in run.checkpoints]


def test_sharded_ckpt_folders_are_the_runs_checkpoints(runs: tuple[Path, Path]) -> None:
    files, folders = runs
    assert all(p.is_dir() for p in folders.glob("*.ckpt"))
    by_files = nandoctor.scan_run(files, device="cpu")
    by_folders = nandoctor.scan_run(folders, device="cpu")
    assert _rows(by_folders) == _rows(by_files)
    assert [r[:2] for r in _rows(by_folders)] == [
        ("epoch=0-step=2.ckpt", 2), ("epoch=0-step=4.ckpt", 4), ("epoch=0-step=6.ckpt", 6), ("epoch=0-step=8.ckpt", 8),
        ("epoch=0-step=10.ckpt", 10), ("last.ckpt", 10)]  # last.ckpt's step read from its meta.pt
    assert by_folders.last_healthy.name == "epoch=0-step=4.ckpt" and by_folders.first_bad.name == "epoch=0-step=6.ckpt"
    assert by_folders.exit_code() == by_files.exit_code() == 1


def test_each_sharded_folder_counts_as_torch_rebuilds_it(runs: tuple[Path, Path], tmp_path: Path) -> None:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    _, folders = runs
    for step in (4, 6):
        folder = folders / f"epoch=0-step={step}.ckpt"
        dcp_to_torch_save(folder, tmp_path / f"{step}.pt")
        expected = {n: torch_counts(t) for n, t in flatten(torch.load(tmp_path / f"{step}.pt")).items()
                    if t.is_floating_point()}
        report = nandoctor.scan(folder, device="cpu")
        found = {t.name: (t.nan, t.posinf, t.neginf) for t in report.tensors}
        assert {n: found[n] for n in expected} == expected
        assert "meta.pt" in {Path(f).name for f in report.files}  # the loops and callbacks beside the .distcp files
        assert found[f"model.{POISONED_PARAMETER}"] == ((1, 0, 0) if step == 6 else (0, 0, 0))


def _deepspeed_ckpt(folder: Path, planted: bool, monkeypatch) -> None:
    """A ZeRO-2 save of 2 ranks as Lightning's DeepSpeed strategy makes it: ``save_checkpoint(folder,
    tag="checkpoint")`` writes ``folder/checkpoint/`` and ``folder/latest``."""
    from tests import zero_writer

    if not planted:
        monkeypatch.setattr(zero_writer, "PLANTED", {})
        monkeypatch.setattr(zero_writer, "PLANTED_STATE", {})
    zero_writer.write(folder, stage=2, world=2).rename(folder / "checkpoint")
    (folder / "latest").write_text("checkpoint")
    monkeypatch.undo()


def test_deepspeed_ckpt_folders_are_the_runs_checkpoints(tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "checkpoints"
    for step, planted in ((100, False), (200, False), (300, True)):
        _deepspeed_ckpt(run / f"epoch=0-step={step}.ckpt", planted, monkeypatch)
    bad = run / "epoch=0-step=300.ckpt"
    report = nandoctor.scan(bad, device="cpu")
    assert not report.errors
    # (DeepSpeed's checkpoint engine loads its files with weights_only=False: what torch's default would refuse in
    # them, its ZeroStageEnum, is no note and nothing on the verdict line)
    assert not any("refuses" in n for n in report.notes) and "refuses" not in nandoctor.verdict.one_line(report)
    fp32 = {t.name.removeprefix("fp32."): (t.nan, t.posinf, t.neginf) for t in report.tensors if t.name.startswith("fp32.")}
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except ImportError:
        pass
    else:  # DeepSpeed's own reader finds the folder through latest, as nandoctor does
        state = get_fp32_state_dict_from_zero_checkpoint(str(bad))
        assert fp32 == {n: torch_counts(t) for n, t in state.items()}
    assert fp32["model.layers.1.mlp.weight"] == (2, 0, 0)

    timeline = nandoctor.scan_run(run, device="cpu")
    assert [(c.name, c.status) for c in timeline.checkpoints] == [
        ("epoch=0-step=100.ckpt", "clean"), ("epoch=0-step=200.ckpt", "clean"), ("epoch=0-step=300.ckpt", "poisoned")]
    assert timeline.last_healthy.name == "epoch=0-step=200.ckpt" and timeline.exit_code() == 1


def test_repair_from_auto_finds_the_sharded_folders_before_the_first_bad_one(runs: tuple[Path, Path], tmp_path: Path) -> None:
    """--from auto takes donors from the run's step checkpoints before the first bad one: sharded .ckpt folders are
    those checkpoints too (they said "no donors")."""
    from tests.conftest import run_cli

    _, folders = runs
    out = tmp_path / "fixed.ckpt"
    result = run_cli("repair", folders / "epoch=0-step=6.ckpt", "--from", "auto", "--out", out, "--json", "--no-progress")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {Path(r["donor"]).name for r in data["restored"]} == {"epoch=0-step=4.ckpt"}
    assert nandoctor.scan(out, device="cpu").exit_code == 0
