"""A DeepSpeed ``save_checkpoint`` folder (``global_stepN/`` saves and ``latest``) and a Megatron ``--save`` folder
(``iter_NNNNNNN/mp_rank_TT/model_optim_rng.pt`` and ``latest_checkpointed_iteration.txt``) are runs: one row per
save, the newest decides, ``--from auto`` takes the last healthy save, and the next step says which file makes
the framework resume from it. A Trainer checkpoint's own ``global_stepN/`` stays part of that checkpoint."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch

from nandoctor.api import scan
from nandoctor.checkpoint.runs import is_run_folder, scan_run
from nandoctor.restore import repair
from tests.conftest import run_cli

STEPS = (100, 200, 300)
BAD = "layers.2.weight"


def _weights(step: int, bad: bool) -> dict[str, torch.Tensor]:
    """A model that drifts a little from one save to the next (as training moves it), NaN at [3, 4] where ``bad``."""
    torch.manual_seed(0)
    weights = {f"layers.{i}.weight": torch.randn(16, 16) * (1 + step / 10_000) for i in range(3)}
    if bad:
        weights[BAD][3, 4] = float("nan")
    return weights


def _deepspeed_run(root: Path, bad_step: int = 300) -> Path:
    for step in STEPS:
        folder = root / f"global_step{step}"
        folder.mkdir(parents=True)
        torch.save({"module": _weights(step, step == bad_step), "global_steps": step, "dp_world_size": 1,
                    "mp_world_size": 1}, folder / "mp_rank_00_model_states.pt")
    (root / "latest").write_text(f"global_step{STEPS[-1]}")
    return root


def _megatron_run(root: Path, ranks: int = 2, bad_step: int = 300) -> Path:
    for step in STEPS:
        _megatron_save(root / f"iter_{step:07d}", step, ranks, bad=step == bad_step)
    (root / "latest_checkpointed_iteration.txt").write_text(str(STEPS[-1]))
    return root


def _megatron_save(folder: Path, step: int, tensor: int, pipeline: int = 1, bad: bool = False) -> Path:
    """One Megatron save as its --ckpt-format torch writes it: a model_optim_rng.pt per model-parallel rank, in
    mp_rank_TT/ (mp_rank_TT_PPP/ with pipeline ranks), each with its rank's slice of every tensor and the args."""
    whole = _weights(step, bad)
    rows = 16 // tensor
    for t in range(tensor):
        for p in range(pipeline):
            rank = folder / (f"mp_rank_{t:02d}" + (f"_{p:03d}" if pipeline > 1 else ""))
            rank.mkdir(parents=True)
            model = {f"language_model.encoder.{k}": v[t * rows:(t + 1) * rows].clone() for k, v in whole.items()}
            args = argparse.Namespace(tensor_model_parallel_size=tensor, pipeline_model_parallel_size=pipeline,
                                      num_layers=3, hidden_size=16)
            torch.save({"args": args, "checkpoint_version": 3.0, "iteration": step, "model": model},
                       rank / "model_optim_rng.pt")
    return folder


def test_a_deepspeed_save_folder_is_a_run_whose_newest_save_decides(tmp_path: Path) -> None:
    """A plain DeepSpeed loop's save_dir had been scanned as one checkpoint of every save at once."""
    root = _deepspeed_run(tmp_path / "save_dir")
    run = scan_run(root)
    assert [(c.step, c.name, c.status) for c in run.checkpoints] == [
        (100, "global_step100", "clean"), (200, "global_step200", "clean"), (300, "global_step300", "poisoned")]
    result = run_cli("scan", root)
    assert result.exit_code == 1, result.output
    said = " ".join(result.output.split())
    assert "last healthy: global_step200 · first bad: global_step300" in said
    assert f"write global_step200 into {root}/latest" in said


def test_a_deepspeed_save_folder_is_repaired_from_its_last_healthy_save(tmp_path: Path) -> None:
    root = _deepspeed_run(tmp_path / "save_dir")
    result = repair(root / "global_step300", ["auto"], tmp_path / "fixed")
    assert result.ok and [r.name for r in result.plan.restorations] == [f"mp_rank_00_model_states.module.{BAD}"]
    fixed = torch.load(tmp_path / "fixed" / "mp_rank_00_model_states.pt", weights_only=True)["module"]
    assert torch.equal(fixed[BAD], _weights(200, False)[BAD])  # the donor's tensor, whole
    assert torch.equal(fixed["layers.0.weight"], _weights(300, False)["layers.0.weight"])  # the rest as it was


def test_a_trainer_checkpoint_keeps_its_global_step_folder_as_part_of_it(tmp_path: Path, demo_run: Path) -> None:
    """A Trainer under DeepSpeed saves global_stepN/ and latest inside each checkpoint-N: no run of one save."""
    checkpoint = tmp_path / "checkpoint-300"
    shutil.copytree(demo_run / "checkpoint-200", checkpoint)
    states = _deepspeed_run(tmp_path / "states", bad_step=0) / "global_step300"
    shutil.copytree(states, checkpoint / "global_step300")
    (checkpoint / "latest").write_text("global_step300")
    assert not is_run_folder(checkpoint)
    report = scan(checkpoint, device="cpu")
    assert any(n.startswith("global_step300/: 1 DeepSpeed state file(s) scanned") for n in report.notes)
    assert "mp_rank_00_model_states.module.layers.0.weight" in {t.name for t in report.tensors}


def test_one_global_step_folder_without_latest_is_no_run(tmp_path: Path) -> None:
    """A folder holding one global_stepN/ and nothing naming it is not taken for DeepSpeed's save folder."""
    (tmp_path / "global_step100").mkdir()
    torch.save({"module": _weights(100, False)}, tmp_path / "global_step100" / "mp_rank_00_model_states.pt")
    assert not is_run_folder(tmp_path)
    (tmp_path / "latest").write_text("global_step100")
    assert is_run_folder(tmp_path)


def test_a_megatron_save_folder_is_a_run_of_its_iterations(tmp_path: Path) -> None:
    root = _megatron_run(tmp_path / "save")
    run = scan_run(root)
    assert [(c.step, c.status) for c in run.checkpoints] == [(100, "clean"), (200, "clean"), (300, "poisoned")]
    result = run_cli("scan", root)
    assert result.exit_code == 1, result.output
    said = " ".join(result.output.split())
    assert f"write 200 into {root}/latest_checkpointed_iteration.txt" in said


def test_a_megatron_iteration_reads_every_rank_and_names_the_bad_ones_file(tmp_path: Path) -> None:
    root = _megatron_run(tmp_path / "save")
    report = scan(root / "iter_0000300", device="cpu")
    bad = [(Path(t.ref.file).relative_to(root / "iter_0000300").as_posix(), t.name, t.nan, t.first_bad)
           for t in report.bad_tensors]
    # the NaN at [3, 4] of the whole matrix lies in rank 0's slice (rows 0-7), at flat index 3 * 16 + 4
    assert bad == [("mp_rank_00/model_optim_rng.pt", f"model.language_model.encoder.{BAD}", 1, 3 * 16 + 4)]
    assert len(report.tensors) == 6 and report.exit_code == 1
    assert any(n.startswith("2 model-parallel rank files (mp_rank_00/model_optim_rng.pt, mp_rank_01/") for n in report.notes)
    assert not any("separate checkpoints" in n for n in report.notes)
    # (Megatron loads its files with weights_only=False: the pickled argparse.Namespace is no finding of torch.load)
    assert not any("weights_only=True) refuses" in n for n in report.notes), report.notes
    placeholders = [n for n in report.notes if "inert placeholders" in n]
    assert sorted(n.split(":")[0] for n in placeholders) == ["mp_rank_00/model_optim_rng.pt", "mp_rank_01/model_optim_rng.pt"]


def test_a_megatron_iteration_is_repaired_rank_by_rank(tmp_path: Path) -> None:
    root = _megatron_run(tmp_path / "save")
    result = repair(root / "iter_0000300", ["auto"], tmp_path / "fixed")
    assert result.ok and len(result.plan.restorations) == 1
    key = f"language_model.encoder.{BAD}"
    fixed = torch.load(tmp_path / "fixed" / "mp_rank_00" / "model_optim_rng.pt", weights_only=False)
    donor = torch.load(root / "iter_0000200" / "mp_rank_00" / "model_optim_rng.pt", weights_only=False)
    assert torch.equal(fixed["model"][key], donor["model"][key]) and fixed["iteration"] == 300
    untouched = root / "iter_0000300" / "mp_rank_01" / "model_optim_rng.pt"
    assert (tmp_path / "fixed" / "mp_rank_01" / "model_optim_rng.pt").read_bytes() == untouched.read_bytes()
    assert json.loads((tmp_path / "fixed" / "nandoctor-repair.json").read_text())  # the proof beside it


def test_a_file_scanned_alone_names_itself_in_its_notes(tmp_path: Path) -> None:
    """A helper's trial: a file scanned alone (its own checkpoint root) was named "." in the reader's notes."""
    torch.save({"model": _weights(100, False), "args": argparse.Namespace(lr=0.1)}, tmp_path / "last.pth.tar")
    report = scan(tmp_path / "last.pth.tar", device="cpu")
    assert any(n.startswith("last.pth.tar: torch.load's default") for n in report.notes), report.notes
    assert not any(n.startswith(".:") for n in report.notes)


def test_the_save_a_runs_resume_pointer_names_decides(tmp_path: Path) -> None:
    """A helper's trial: latest_checkpointed_iteration.txt set back to the healthy iteration 200, as the next steps
    said; Megatron then resumes iter_0000200, and the scan still failed on the abandoned iter_0000300. The save the
    pointer names decides (the abandoned ones are a caution), and so does DeepSpeed's latest; a save written after the
    pointer (the run went on) decides too."""
    import os

    root = _megatron_run(tmp_path / "save")
    (root / "latest_checkpointed_iteration.txt").write_text("200")
    result = run_cli("scan", root)
    said = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "iter_0000200 decides the exit code: latest_checkpointed_iteration.txt names it" in said
    assert "but iter_0000300 is poisoned" in said
    deepspeed = _deepspeed_run(tmp_path / "ds")
    (deepspeed / "latest").write_text("global_step200")
    assert run_cli("scan", deepspeed, "-q").exit_code == 0
    later = deepspeed / "global_step300" / "mp_rank_00_model_states.pt"  # (saved after the pointer was written)
    stamp = (deepspeed / "latest").stat().st_mtime + 60
    os.utime(later, (stamp, stamp))
    os.utime(later.parent, (stamp, stamp))
    assert run_cli("scan", deepspeed, "-q").exit_code == 1


@pytest.mark.parametrize(("pointer", "text", "said"), [
    ("latest", "global_step400", "latest names global_step400, which is not here"),
    ("latest", "", "latest names no save"),
    ("latest_checkpointed_iteration.txt", "400", "names iter_0000400, which is not here"),
    ("latest_checkpointed_iteration.txt", "3x0", "holds '3x0', not an iteration"),
])
def test_a_resume_pointer_that_names_no_save_fails_the_run(tmp_path: Path, pointer: str, text: str, said: str) -> None:
    """An adversarial round: DeepSpeed's latest naming a save that is not there (or none) passed, and DeepSpeed's
    load_checkpoint then loads nothing and training starts from scratch; Megatron's load exits on such a tracker."""
    root = (_deepspeed_run if pointer == "latest" else _megatron_run)(tmp_path / "save", bad_step=0)
    (root / pointer).write_text(text)
    result = run_cli("scan", root)
    said_all = " ".join(result.output.split())
    assert result.exit_code == 3 and said in said_all, result.output
    assert "write the save to resume from into that file" in said_all


def test_a_megatron_iteration_missing_a_rank_folder_is_incomplete(tmp_path: Path) -> None:
    """An adversarial round: mp_rank_01/ gone from iter_0000300 (the other iterations hold it) passed CLEAN; Megatron's
    load of that rank raises FileNotFoundError. A hole in a tensor x pipeline grid is missing too."""
    import shutil

    root = _megatron_run(tmp_path / "save", bad_step=0)
    shutil.rmtree(root / "iter_0000300" / "mp_rank_01")
    result = run_cli("scan", root, "-q")
    assert result.exit_code == 3 and "model-parallel rank folder(s) missing or without model_optim_rng.pt: mp_rank_01/" in result.output, result.output
    grid = tmp_path / "grid" / "iter_0000100"
    for rank in ("mp_rank_00_000", "mp_rank_01_000", "mp_rank_00_001"):  # (mp_rank_01_001 missing)
        (grid / rank).mkdir(parents=True)
        torch.save({"model": _weights(100, False), "iteration": 100}, grid / rank / "model_optim_rng.pt")
    (grid.parent / "latest_checkpointed_iteration.txt").write_text("100")
    alone = run_cli("scan", grid.parent, "-q")
    assert alone.exit_code == 3 and "mp_rank_01_001/" in alone.output, alone.output


def test_megatron_fp16_loss_scale_expert_ranks_and_a_custom_deepspeed_tag(tmp_path: Path) -> None:
    """A helper's false-alarm hunt: Megatron's DynamicGradScaler keeps its loss scale as a one-element tensor, 2^17 in a
    healthy fp16 run, which read EXPLODED as a weight; expert-parallel rank folders (mp_rank_TT_PPP_EEE) were no rank
    folders; and a DeepSpeed latest naming a tag of its own (save_checkpoint(tag="best")) left that save unread."""
    root = tmp_path / "meg"
    for step in (100, 200):
        for rank in ("mp_rank_00_000_000", "mp_rank_00_000_001"):
            folder = root / f"iter_{step:07d}" / rank
            folder.mkdir(parents=True)
            scaler = {"scale": torch.tensor([131072.0]), "growth_tracker": 0, "hysteresis_tracker": 2}
            torch.save({"model": _weights(step, False), "iteration": step,
                        "optimizer": {"optimizer": {}, "grad_scaler": scaler}}, folder / "model_optim_rng.pt")
    (root / "latest_checkpointed_iteration.txt").write_text("200")
    assert run_cli("scan", root, "-q").exit_code == 0
    bad = root / "iter_0000200" / "mp_rank_00_000_001" / "model_optim_rng.pt"
    state = torch.load(bad, weights_only=False)
    state["optimizer"]["grad_scaler"]["scale"] = torch.tensor([float("nan")])  # (a NaN loss scale still fails)
    torch.save(state, bad)
    assert run_cli("scan", root, "-q").exit_code == 1

    ds = _deepspeed_run(tmp_path / "ds", bad_step=0)
    (ds / "best").mkdir()
    torch.save({"module": _weights(300, True)}, ds / "best" / "mp_rank_00_model_states.pt")
    (ds / "latest").write_text("best")
    result = run_cli("scan", ds, "-q")
    assert result.exit_code == 1 and "first bad: best" in result.output, result.output


def test_a_megatron_save_folder_holding_only_release_is_read_as_megatron_loads_it(tmp_path: Path) -> None:
    """A review: a --save folder holding only release/ (its tracker: "release", as a converted checkpoint's is) exited
    3 pointing at release/; Megatron's load reads the tracker and loads release/ as iteration 0: a save of the run."""
    root = tmp_path / "save"
    _megatron_save(root / "release", 0, 2)
    (root / "latest_checkpointed_iteration.txt").write_text("release")
    run = scan_run(root)
    assert [(c.step, c.name, c.status) for c in run.checkpoints] == [(0, "release", "clean")]
    assert run_cli("scan", root, "-q").exit_code == 0
    # training saved into the same folder: release is the run's first save, and the one to go back to
    _megatron_save(root / "iter_0000100", 100, 2, bad=True)
    (root / "latest_checkpointed_iteration.txt").write_text("100")
    result = run_cli("scan", root)
    said = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert "last healthy: release · first bad: iter_0000100" in said
    assert f"write release into {root}/latest_checkpointed_iteration.txt" in said
    (root / "latest_checkpointed_iteration.txt").write_text("release")  # (as said: release decides)
    assert "release decides the exit code" in " ".join(run_cli("scan", root).output.split())


def test_an_iteration_resharded_to_fewer_ranks_is_read_by_its_own_args(tmp_path: Path) -> None:
    """A review: the newest iteration resharded from tensor-parallel size 2 to 1 (its args say 1) read INCOMPLETE,
    "mp_rank_01/ missing", by the iterations before it; each iteration's own args say which ranks it holds."""
    root = tmp_path / "save"
    for step, tensor in ((100, 2), (200, 2), (300, 1)):
        _megatron_save(root / f"iter_{step:07d}", step, tensor)
    (root / "latest_checkpointed_iteration.txt").write_text("300")
    run = scan_run(root)
    assert [(c.step, c.status) for c in run.checkpoints] == [(100, "clean"), (200, "clean"), (300, "clean")]
    assert run_cli("scan", root, "-q").exit_code == 0
    shutil.rmtree(root / "iter_0000200" / "mp_rank_01")  # (its args say 2: still missing, between its neighbours)
    rows = scan_run(root).checkpoints
    assert [c.status for c in rows] == ["clean", "incomplete", "clean"]
    assert "its args say tensor-parallel size 2" in rows[1].incomplete[0]


@pytest.mark.parametrize(("tensor", "pipeline", "removed", "said"), [
    (2, 1, "mp_rank_01", "tensor-parallel size 2"),
    (1, 2, "mp_rank_00_001", "tensor-parallel size 1, pipeline-parallel size 2"),  # (no hole the folders span)
])
def test_one_iteration_missing_a_rank_its_args_name_is_incomplete(tmp_path: Path, tensor: int, pipeline: int,
                                                                   removed: str, said: str) -> None:
    """A review: one iteration alone (no neighbours to compare with) saved with tensor-parallel size 2, its mp_rank_01/
    gone, read CLEAN, and so did the iteration scanned on its own; Megatron's load of that rank fails."""
    root = tmp_path / "save"
    iteration = _megatron_save(root / "iter_0000100", 100, tensor, pipeline)
    (root / "latest_checkpointed_iteration.txt").write_text("100")
    assert run_cli("scan", root, "-q").exit_code == 0
    # (a rank folder left empty by a rank that died mid-save is missing as much: an adversarial round's read CLEAN)
    for file in (iteration / removed).iterdir():
        file.unlink()
    assert run_cli("scan", root, "-q").exit_code == 3 and run_cli("scan", iteration, "-q").exit_code == 3
    shutil.rmtree(iteration / removed)
    for target in (root, iteration):
        result = run_cli("scan", target, "-q")
        out = " ".join(result.output.split())
        assert result.exit_code == 3, result.output
        assert f"model-parallel rank folder(s) missing or without model_optim_rng.pt: {removed}/ (its args say {said};" in out
    assert [c.status for c in scan_run(root).checkpoints] == ["incomplete"]


def test_a_tracker_naming_a_bad_iteration_under_a_healthy_newest_one_is_rewritten_in_the_next_step(tmp_path: Path) -> None:
    """An adversarial round: the tracker named the poisoned iter_0000100, iter_0000200 after it healthy; "resume from
    iter_0000200" said nothing of the tracker, and Megatron resumes what it names: the poisoned one again."""
    root = tmp_path / "save"
    _megatron_save(root / "iter_0000050", 50, 1)
    _megatron_save(root / "iter_0000100", 100, 1, bad=True)
    _megatron_save(root / "iter_0000200", 200, 1)
    (root / "latest_checkpointed_iteration.txt").write_text("100")
    result = run_cli("scan", root, "--no-progress")
    said = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert f"resume from {root}/iter_0000200" in said
    assert f"write 200 into {root}/latest_checkpointed_iteration.txt" in said, said
