"""A real ``transformers.Trainer`` run that ends with ``trainer.save_model()``: the run folder holds
``checkpoint-N`` folders and the final model at its top. ``nandoctor scan`` reads it as a run whose
timeline ends with a ``final`` row that decides the exit code; ``repair --from auto`` fixes that model."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from .conftest import run_cli as run

pytestmark = pytest.mark.integration

PLANTED = "model.layers.0.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    from .realruns import diverging_trainer_run

    out = tmp_path_factory.mktemp("final") / "run"
    # a low learning rate: healthy throughout; checkpoint-2, checkpoint-4, then the final model at the top
    diverging_trainer_run(out, steps=4, save_steps=2, learning_rate=0.01, save_final=True)
    assert (out / "model.safetensors").is_file() and (out / "checkpoint-4").is_dir()
    return out


@pytest.fixture
def run_dir(trained, tmp_path) -> Path:
    copy = tmp_path / "run3"
    shutil.copytree(trained, copy)
    return copy


def plant_nan(file: Path, name: str, count: int = 5) -> None:
    """Overwrite the first ``count`` float32 values of tensor ``name`` with NaN, by byte edits."""
    data = bytearray(file.read_bytes())
    (size,) = struct.unpack("<Q", data[:8])
    entry = json.loads(data[8 : 8 + size])[name]
    assert entry["dtype"] == "F32"
    start = 8 + size + entry["data_offsets"][0]
    data[start : start + 4 * count] = struct.pack("<f", float("nan")) * count
    file.write_bytes(bytes(data))


def rows(result) -> list[dict]:
    return json.loads(result.output)["run"]["checkpoints"]


def test_a_clean_final_model_ends_the_timeline_and_decides(run_dir):
    result = run("scan", str(run_dir), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    got = [(c["name"], c["step"], c["status"]) for c in data["run"]["checkpoints"]]
    assert got == [("checkpoint-2", 2, "clean"), ("checkpoint-4", 4, "clean"), ("final", None, "clean")]
    assert data["summary"]["decided_by"] == "final"
    assert data["run"]["checkpoints"][-1]["growth"] is not None  # judged against the run

    shutil.copy(run_dir / "checkpoint-4" / "trainer_state.json", run_dir)  # trainer.save_state()
    assert rows(run("scan", str(run_dir), "--json"))[-1]["step"] == 4

    text = run("scan", str(run_dir)).output
    assert "final" in text and "the final model decides the exit code" in text and "not scanned" not in text


def test_the_folder_is_also_one_checkpoint_and_the_reports_render_the_final_row(run_dir, tmp_path):
    import nandoctor

    report = nandoctor.scan(run_dir)  # the top-level model only, as before
    assert report.ok and {Path(f).name for f in report.files} == {"model.safetensors"}
    html = tmp_path / "run.html"
    markdown = run("scan", str(run_dir), "--markdown", "--html", str(html))
    assert markdown.exit_code == 0 and "| final |" in markdown.output.replace("`", "")
    assert "final" in html.read_text()


def test_a_poisoned_final_model_fails_the_run_and_repairs_from_the_checkpoints(run_dir, tmp_path):
    plant_nan(run_dir / "model.safetensors", PLANTED)
    result = run("scan", str(run_dir), "--json")
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert [(c["name"], c["status"]) for c in data["run"]["checkpoints"]] == [
        ("checkpoint-2", "clean"), ("checkpoint-4", "clean"), ("final", "poisoned")]
    assert (data["run"]["last_healthy"], data["run"]["first_bad"]) == ("checkpoint-4", "final")

    text = run("scan", str(run_dir)).output
    assert f"nandoctor repair {run_dir} --from auto" in text

    shutil.copytree(run_dir / "checkpoint-4", run_dir / "best_model")  # (save_model into the run: its own row)
    for name in ("optimizer.pt", "scheduler.pt", "trainer_state.json", "rng_state.pth"):
        (run_dir / "best_model" / name).unlink(missing_ok=True)
    fixed = tmp_path / "fixed"
    repaired = run("repair", str(run_dir), "--from", "auto", "--out", str(fixed))
    assert repaired.exit_code == 0, repaired.output
    assert "checkpoint-4" in repaired.output  # the donor: the newest healthy checkpoint
    assert not any(p.name.startswith("checkpoint-") for p in fixed.iterdir())  # the model, not the run
    assert not (fixed / "best_model").exists()  # (a model saved into the run is no file of the final model: a review)
    assert run("scan", str(fixed)).exit_code == 0
    # the next step is a command (a new user's trial: "copy its files over those at the top" was prose): pasted, the
    # patched file replaces the bad one, kept as .bad, and the run passes
    lines = [line.strip() for line in repaired.output.splitlines()]
    command = lines[lines.index("next: to use it, put its repaired files in place (the bad ones kept as FILE.bad):") + 1]
    assert command == (f"mv {run_dir / 'model.safetensors'} {run_dir / 'model.safetensors.bad'} && "
                       f"cp {fixed / 'model.safetensors'} {run_dir / 'model.safetensors'}")
    said = " ".join(run("scan", str(run_dir)).output.split())  # (before it is used: the scan offers the same line)
    assert f"{fixed} is a verified repair of the final model; to use it, put its repaired files in place: {command}" in said
    import subprocess

    assert subprocess.run(["bash", "-c", command]).returncode == 0
    assert run("scan", str(run_dir)).exit_code == 0 and not (run_dir / "nandoctor-repair.json").exists()


def test_a_save_made_after_the_final_model_decides_though_the_folder_time_moved(run_dir):
    """A new user's trial: a run that went on after save_model() (checkpoint-6, half written) passed CLEAN, decided by
    the final model: the run folder's own time, which making checkpoint-6 in it moved, was taken for when the final
    model was saved. Its weight files' times say it; a save newer than every other, written after it, decides."""
    import os

    later = run_dir / "checkpoint-6"
    shutil.copytree(run_dir / "checkpoint-4", later)
    weights = later / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # (the save is not done)
    old = (run_dir / "model.safetensors").stat().st_mtime - 60  # (the final model, saved a minute before)
    for file in run_dir.iterdir():
        if file.is_file():
            os.utime(file, (old, old))
    for step in (2, 4):
        os.utime(run_dir / f"checkpoint-{step}", (old - 60, old - 60))
    data = json.loads(run("scan", str(run_dir), "--json").output)
    assert data["summary"]["decided_by"] == "checkpoint-6" and data["summary"]["exit_code"] == 3
    # an earlier checkpoint copied after the final model (a plain cp -r gives each file the copy's time) is not newer
    # than the saves beside it: the final model decides alone
    shutil.rmtree(later)
    os.utime(run_dir / "checkpoint-2", None)
    data = json.loads(run("scan", str(run_dir), "--json").output)
    assert data["summary"]["decided_by"] == "final" and data["summary"]["exit_code"] == 0


def test_a_bin_the_final_model_skips_is_said_for_the_run(tmp_path):
    """A helper's trial: a Trainer run's top held model.safetensors (save_model) and the user's own pytorch_model.bin
    (diverged); the run scan never named the .bin, where a plain folder's scan says it was skipped."""
    import shutil

    import torch

    import nandoctor
    from tests.conftest import DEMO_RUN

    run = tmp_path / "run"
    shutil.copytree(DEMO_RUN, run)
    for item in (DEMO_RUN / "checkpoint-200").iterdir():
        if item.name != "trainer_state.json":
            shutil.copy(item, run / item.name)
    torch.save({"transformer.wte.weight": torch.full((4, 4), float("nan"))}, run / "pytorch_model.bin")
    report = nandoctor.scan_run(run, device="cpu")
    assert any(note.startswith("final: found both safetensors and .bin") and "--both-formats" in note
               for note in report.notes), report.notes


@pytest.mark.parametrize("name", ["predictions.pt", "training_args.bin"])
def test_torch_files_at_a_runs_top_that_are_no_model_are_no_final_model(tmp_path, name):
    """A new user's trial: a Trainer run whose top held predictions.pt ({"logits": [nan, 1.0]}) failed as "the final
    model" POISONED, with a repair that could not work; one holding only training_args.bin failed INCOMPLETE ("final
    is an unfinished save"). No config, no loader's name: no final model; a file with tensors is a row of its own
    (a caution where it is bad), never the decider."""
    import shutil

    import torch

    import nandoctor
    from tests.conftest import DEMO_RUN

    run = tmp_path / "out"
    for step in (100, 200):
        shutil.copytree(DEMO_RUN / f"checkpoint-{step}", run / f"checkpoint-{step}")
    torch.save({"logits": torch.tensor([float("nan"), 1.0])} if name == "predictions.pt" else {"lr": 0.1}, run / name)
    report = nandoctor.scan_run(run, device="cpu")
    assert report.exit_code() == 0 and not any(c.final and not c.saved_into for c in report.checkpoints)
    behind = [c.name for c in report.bad_behind()]
    assert behind == (["predictions.pt"] if name == "predictions.pt" else []), behind
