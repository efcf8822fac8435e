"""A real ``lightning.Trainer`` run folder with ``last.ckpt`` and a final model beside its step files.

``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` as a byte-identical copy of the newest step file
(``save_last="link"``: a symlink to it); ``trainer.fit(ckpt_path="last")`` resumes from it, so it is a row of
the timeline that decides the exit code, said to be the step file's row again where it is the same file. A
final model file beside the step files (``trainer.save_checkpoint("final.ckpt")``, a ``model.safetensors``) is
the ``final`` row, as ``trainer.save_model()``'s weights are for a Trainer run, and ``repair RUN --from auto``
repairs it from the healthy step files.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import struct
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")

import nandoctor  # noqa: E402
from nandoctor.checkpoint.stepfiles import step_folder  # noqa: E402
from nandoctor.checkpoint.runs import is_run_folder  # noqa: E402
from tests.conftest import run_cli as run  # noqa: E402
from tests.realruns import POISONED_PARAMETER, lightning_run  # noqa: E402

pytestmark = pytest.mark.integration

STEP6 = "epoch=0-step=6.ckpt"


@pytest.fixture(scope="module")
def copied_last(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("copied")
    lightning_run(out, steps=6, keep_last=False, save_last=True, save_final="final.ckpt")
    return out / "checkpoints"


@pytest.fixture(scope="module")
def linked_last(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("linked")
    lightning_run(out, steps=6, keep_last=False, save_last="link", save_final="model.safetensors")
    return out / "checkpoints"


def _copy(folder: Path, tmp_path: Path) -> Path:
    """A writable copy of the run (its metrics.csv beside, as CSVLogger left it; links kept as links)."""
    out = tmp_path / "run"
    shutil.copytree(folder.parent, out, symlinks=True)
    return out / "checkpoints"


def plant_nan(file: Path) -> None:
    """NaN at ``[0, 0]`` of the planted parameter in a Lightning ``.ckpt`` (saved again by torch)."""
    state = torch.load(file, weights_only=True)
    state["state_dict"][POISONED_PARAMETER][0, 0] = float("nan")
    torch.save(state, file)


def plant_nan_safetensors(file: Path, name: str) -> None:
    """NaN over the first value of tensor ``name`` of a safetensors file, by a byte edit."""
    data = bytearray(file.read_bytes())
    (size,) = struct.unpack("<Q", data[:8])
    entry = json.loads(data[8 : 8 + size])[name]
    start = 8 + size + entry["data_offsets"][0]
    data[start : start + 4] = struct.pack("<f", float("nan"))
    file.write_bytes(bytes(data))


def rows(result) -> list[tuple]:
    return [(c["name"], c["step"], c["status"], c["last"], c["final"], c["same_as"])
            for c in json.loads(result.output)["run"]["checkpoints"]]


def _steps(*statuses: str) -> list[tuple]:
    return [(f"epoch=0-step={s}.ckpt", s, status, False, False, None) for s, status in zip((2, 4, 6), statuses)]


def test_what_lightning_writes_last_ckpt_is_the_newest_step_file(copied_last, linked_last):
    """The premise: save_last=True copies the newest step file byte for byte; "link" makes a symlink."""
    assert (copied_last / "last.ckpt").read_bytes() == (copied_last / STEP6).read_bytes()
    assert os.readlink(linked_last / "last.ckpt") == STEP6
    run_folder = step_folder(copied_last)
    assert run_folder is not None
    assert [s for s, _ in run_folder.steps] == [2, 4, 6] and run_folder.last == copied_last / "last.ckpt"
    assert run_folder.final == copied_last / "final.ckpt" and run_folder.unplaced == () and run_folder.notes == ()


def test_clean_run_with_last_and_final_rows(copied_last, linked_last):
    result = run("scan", copied_last, "--json")
    assert result.exit_code == 0, result.output[-3000:]
    assert rows(result) == _steps("clean", "clean", "clean") + [
        ("last.ckpt", 6, "clean", True, False, {"name": STEP6, "how": "copy"}),
        ("final", 6, "clean", False, True, None)]  # final.ckpt's own global_step
    data = json.loads(result.output)
    assert data["summary"]["decided_by"] == "final" and data["run"]["notes"] == []
    assert data["run"]["checkpoints"][-1]["path"] == str(copied_last / "final.ckpt")
    assert data["run"]["last_healthy"] == "final"

    linked = run("scan", linked_last, "--json")
    assert linked.exit_code == 0, linked.output[-3000:]
    assert rows(linked) == _steps("clean", "clean", "clean") + [
        ("last.ckpt", 6, "clean", True, False, {"name": STEP6, "how": "link"}),
        ("final", None, "clean", False, True, None)]  # a safetensors file: no step of its own
    text = run("scan", linked_last).output
    assert "a link to epoch=0-step=6.ckpt" in text
    assert "the final model and last.ckpt decide the exit code, the worse of them" in text


def test_nan_in_last_ckpt_fails_the_run_and_repairs_from_the_step_files(copied_last, tmp_path):
    folder = _copy(copied_last, tmp_path)
    plant_nan(folder / "last.ckpt")  # no longer the same bytes as the step file: a save of its own
    result = run("scan", folder, "--json")
    assert result.exit_code == 1
    assert rows(result) == _steps("clean", "clean", "clean") + [
        ("last.ckpt", 6, "poisoned", True, False, None), ("final", 6, "clean", False, True, None)]
    data = json.loads(result.output)
    assert (data["summary"]["decided_by"], data["run"]["first_bad"]) == ("last.ckpt", "last.ckpt")
    bad = [t["name"] for t in data["run"]["checkpoints"][3]["report"]["tensors"] if t["findings"]]
    assert bad == [f"state_dict.{POISONED_PARAMETER}"]

    text = run("scan", folder).output
    assert "last.ckpt: NON-FINITE (POISONED) (the final model and last.ckpt decide the exit code" in text
    assert f"nandoctor repair {folder}/last.ckpt --from auto --out {folder}/last-repaired" in text
    assert "last.ckpt" in run("scan", folder, "-q").output.split("·")[0]
    with pytest.raises(nandoctor.NonFiniteWeightsError):
        nandoctor.assert_finite(folder)

    fixed = tmp_path / "fixed"
    repaired = run("repair", folder / "last.ckpt", "--from", "auto", "--out", fixed)
    assert repaired.exit_code == 0, repaired.output[-3000:]
    proof = json.loads((fixed / "nandoctor-repair.json").read_text())
    assert [d["step"] for d in proof["donors"]] == [6, 4, 2]
    assert [(r["tensor"], r["donor_step"]) for r in proof["restored"]] == [(f"state_dict.{POISONED_PARAMETER}", 6)]
    assert run("scan", fixed / "last.ckpt", "-q").exit_code == 0


def test_nan_in_the_final_ckpt_fails_the_run_and_repair_of_the_run_fixes_it(copied_last, tmp_path):
    folder = _copy(copied_last, tmp_path)
    plant_nan(folder / "final.ckpt")
    result = run("scan", folder, "--json")
    assert result.exit_code == 1
    assert rows(result) == _steps("clean", "clean", "clean") + [
        ("last.ckpt", 6, "clean", True, False, {"name": STEP6, "how": "copy"}), ("final", 6, "poisoned", False, True, None)]
    data = json.loads(result.output)
    assert (data["summary"]["decided_by"], data["run"]["first_bad"], data["run"]["last_healthy"]) == (
        "final", "final", STEP6)
    text = run("scan", folder).output
    assert f"nandoctor repair {folder}/final.ckpt --from auto" in text

    report = nandoctor.scan(folder)  # the API: the run folder stands for its final model
    assert report.target == str(folder / "final.ckpt") and report.exit_code == 1

    fixed = tmp_path / "fixed"
    repaired = run("repair", folder, "--from", "auto", "--out", fixed)
    assert repaired.exit_code == 0, repaired.output[-3000:]
    assert sorted(p.name for p in fixed.iterdir()) == ["final.ckpt", "nandoctor-repair.json"]  # the model, not the run
    proof = json.loads((fixed / "nandoctor-repair.json").read_text())
    assert [(r["tensor"], r["donor_step"]) for r in proof["restored"]] == [(f"state_dict.{POISONED_PARAMETER}", 6)]
    assert run("scan", fixed / "final.ckpt", "-q").exit_code == 0
    weights = torch.load(fixed / "final.ckpt", weights_only=True)["state_dict"][POISONED_PARAMETER]
    donor = torch.load(folder / STEP6, weights_only=True)["state_dict"][POISONED_PARAMETER]
    assert torch.equal(weights, donor)


def test_repair_of_the_run_fixes_every_deciding_file_and_never_calls_a_failing_run_clean(copied_last, tmp_path):
    """final.ckpt and last.ckpt both decide the exit code: the repair of the run repairs the one that fails
    (the final first), names the other with its command, and gives the ``mv`` lines for both at once."""
    import subprocess

    folder = _copy(copied_last, tmp_path)
    for name in ("final.ckpt", "last.ckpt"):
        plant_nan(folder / name)
    text = run("scan", folder).output
    last_fix = f"nandoctor repair {folder}/last.ckpt --from auto --out {folder}/last-repaired"
    assert f"nandoctor repair {folder}/final.ckpt --from auto --out {folder}/final-repaired" in text
    assert "final decides the exit code too: restore its bad tensors with" in text and last_fix in text

    fixed = tmp_path / "fixed"
    first = run("repair", folder, "--from", "auto", "--out", fixed)
    assert first.exit_code == 0, first.output[-3000:]
    assert sorted(p.name for p in fixed.iterdir()) == ["final.ckpt", "nandoctor-repair.json"]
    flat = " ".join(first.output.split())
    assert f"note: last.ckpt also decides the run's exit code and fails its scan; repair it too: {last_fix}" in flat
    # (each file's proof goes beside it, named for it, and the emptied repair folder away)
    final_move = (f"mv {folder}/final.ckpt {folder}/final.ckpt-bad && mv {fixed}/final.ckpt {folder}/final.ckpt && "
                  f"mv {fixed}/nandoctor-repair.json {folder}/final.ckpt.nandoctor-repair.json && rmdir {fixed}")
    last_move = (f"mv {folder}/last.ckpt {folder}/last.ckpt-bad && mv {folder}/last-repaired/last.ckpt {folder}/last.ckpt"
                 f" && mv {folder}/last-repaired/nandoctor-repair.json {folder}/last.ckpt.nandoctor-repair.json && "
                 f"rmdir {folder}/last-repaired")
    assert f"note: then put the repairs in place: {final_move} && {last_move}" in flat

    # only the final put in place: the run still fails on last.ckpt, and the repair of the run is of last.ckpt
    subprocess.run(final_move, shell=True, check=True)
    assert not fixed.exists() and (folder / "final.ckpt.nandoctor-repair.json").is_file()
    # (the proof beside the file still vouches for its bytes: --verify-hashes reads it, a review)
    verified = run("scan", folder / "final.ckpt", "--verify-hashes", "-q")
    assert verified.exit_code == 0 and "matches its recorded sha256" in verified.output, verified.output
    # (a new user's trial: a file the run saved again after the proof, as Lightning rewrites last.ckpt at every save,
    # read HASH MISMATCH, "restore it from a good copy"; it is no longer the repair's file)
    import os

    import shutil

    proof_time = (folder / "final.ckpt.nandoctor-repair.json").stat().st_mtime
    os.utime(folder / "final.ckpt", (proof_time + 60, proof_time + 60))  # (copied with plain cp: the same bytes)
    copied = run("scan", folder / "final.ckpt", "--verify-hashes", "-q")
    assert copied.exit_code == 0 and "matches its recorded sha256" in copied.output, copied.output
    step_file = sorted(folder.glob("epoch=*.ckpt"))[0]
    shutil.copyfile(step_file, folder / "final.ckpt")  # (a new save of the run, other bytes)
    os.utime(folder / "final.ckpt", (proof_time + 60, proof_time + 60))
    resaved = " ".join(run("scan", folder / "final.ckpt", "--verify-hashes").output.split())
    assert "HASH MISMATCH" not in resaved and "saved again after the repair proof that records it" in resaved, resaved
    assert run("scan", folder, "-q").exit_code == 1
    second = run("repair", folder, "--from", "auto", "--out", tmp_path / "fixed2", "--json")
    assert second.exit_code == 0, second.output[-3000:]
    proof = json.loads(second.output)
    assert proof["source"] == str(folder / "last.ckpt")
    assert [r["tensor"] for r in proof["restored"]] == [f"state_dict.{POISONED_PARAMETER}"]
    assert "ALREADY CLEAN" not in run("repair", folder, "--from", "auto", "--dry-run").output

    assert run(*shlex.split(last_fix)[1:]).exit_code == 0  # the named command works as printed
    subprocess.run(last_move, shell=True, check=True)
    assert run("scan", folder, "-q").exit_code == 0
    clean = run("repair", folder, "--from", "auto", "--out", tmp_path / "fixed3")
    assert clean.exit_code == 0 and "ALREADY CLEAN" in clean.output


def test_a_linked_last_ckpt_is_its_step_file_reported_once(linked_last, tmp_path):
    folder = _copy(linked_last, tmp_path)
    plant_nan(folder / STEP6)  # last.ckpt links to it: what a resume loads is poisoned too
    result = run("scan", folder, "--json")
    assert result.exit_code == 1
    assert rows(result) == _steps("clean", "clean", "poisoned") + [
        ("last.ckpt", 6, "poisoned", True, False, {"name": STEP6, "how": "link"}),
        ("final", None, "clean", False, True, None)]
    data = json.loads(result.output)
    assert (data["summary"]["decided_by"], data["run"]["first_bad"]) == ("last.ckpt", STEP6)
    text = run("scan", folder).output
    last_line = next(line for line in text.splitlines() if "│ last.ckpt" in line)
    assert "a link to epoch=0-step=6.ckpt" in last_line and "state_dict.net" not in last_line
    assert f"nandoctor repair {folder}/{STEP6} --from auto" in text  # the file itself, not the link
    assert "nandoctor repair " + str(folder / "last.ckpt") not in text
    html = tmp_path / "run.html"
    markdown = run("scan", folder, "--markdown", "--html", html).output
    assert "| 6 | last.ckpt | poisoned |  |  |  | a link to epoch=0-step=6.ckpt |" in markdown
    assert "a link to epoch=0-step=6.ckpt" in html.read_text()
    # its cells are said in its step file's row, in HTML as in the console and Markdown (a review: HTML said nan)
    import re

    row = next(r for r in re.findall(r"<tr>.*?</tr>", html.read_text(), re.S) if ">last.ckpt<" in r)
    assert ">nan<" not in row and ">inf<" not in row, row


def test_nan_in_a_final_safetensors_fails_and_repairs_from_the_step_files(linked_last, tmp_path):
    folder = _copy(linked_last, tmp_path)
    plant_nan_safetensors(folder / "model.safetensors", POISONED_PARAMETER)
    result = run("scan", folder, "--json")
    assert result.exit_code == 1
    assert rows(result)[-1] == ("final", None, "poisoned", False, True, None)
    assert json.loads(result.output)["summary"]["decided_by"] == "final"
    fixed = tmp_path / "fixed"
    repaired = run("repair", folder, "--from", "auto", "--out", fixed)
    assert repaired.exit_code == 0, repaired.output[-3000:]
    assert run("scan", fixed / "model.safetensors", "-q").exit_code == 0


# --------------------------------------------------------------------------- which file is which (no training)


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")


def test_one_step_file_beside_last_ckpt_is_a_run(tmp_path):
    """ModelCheckpoint's default save_top_k=1 with save_last=True leaves one step file and last.ckpt."""
    _touch(tmp_path, "epoch=0-step=8.ckpt", "last.ckpt")
    found = step_folder(tmp_path)
    assert found is not None and found.last == tmp_path / "last.ckpt" and found.final is None
    assert is_run_folder(tmp_path)
    _touch(tmp_path / "alone", "epoch=0-step=8.ckpt")
    assert step_folder(tmp_path / "alone") is None  # one step file alone is one checkpoint


def test_other_files_are_named_never_guessed(tmp_path):
    _touch(tmp_path, "epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "last-v1.ckpt", "last.ckpt", "epoch=3.ckpt",
           "best.ckpt", "final.ckpt", "model.safetensors")
    os.utime(tmp_path / "last-v1.ckpt", ns=(1, 1))  # an earlier run's: ckpt_path="last" takes the newest
    os.symlink("gone.ckpt", tmp_path / "last-v2.ckpt")
    found = step_folder(tmp_path)
    assert found is not None
    # (every file with no step to place it by is a row of its own: read and judged, never left unread)
    assert (found.last, found.final, found.unplaced) == (
        tmp_path / "last.ckpt", None, ("best.ckpt", "epoch=3.ckpt", "final.ckpt", "last-v1.ckpt", "model.safetensors"))
    assert found.notes == (
        'last-v2.ckpt links to gone.ckpt, which does not exist: trainer.fit(ckpt_path="last") would start from '
        "scratch; remove the link",
        'last-v1.ckpt: older last checkpoint(s) (trainer.fit(ckpt_path="last") resumes from the newest, '
        "last.ckpt); each a row of its own, not what a resume loads",
        "final.ckpt, model.safetensors could each be the run's final model, so neither is taken as it: "
        "each is a row of its own",
    )
    (tmp_path / "model.safetensors").unlink()
    assert step_folder(tmp_path).final == tmp_path / "final.ckpt"
    _touch(tmp_path / "sharded", "epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "model.safetensors.index.json")
    assert step_folder(tmp_path / "sharded") is None  # a sharded model at the top: not a run


def test_a_lightning_run_without_a_final_model_is_no_checkpoint_for_the_api(tmp_path):
    _touch(tmp_path, "epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "last.ckpt")
    with pytest.raises(nandoctor.UnsupportedFormatError, match="use nandoctor.scan_run"):
        nandoctor.scan(tmp_path)
    # the repair of the run is of the file that decides it, last.ckpt (here an empty file: unreadable, named)
    unreadable = run("repair", tmp_path, "--from", "auto", "--out", tmp_path.parent / "fixed")
    assert unreadable.exit_code == 3 and "last.ckpt" in unreadable.output
    (tmp_path / "last.ckpt").unlink()  # nothing decides but the newest step file: one checkpoint to name
    refused = run("repair", tmp_path, "--from", "auto", "--out", tmp_path.parent / "fixed")
    assert refused.exit_code == 3 and "a training run folder (2 Lightning …step=N….ckpt files)" in refused.output
    assert not (tmp_path.parent / "fixed").exists()


def test_the_config_beside_a_final_hugging_face_model_is_judged(linked_last, tmp_path):
    """``model.save_pretrained(run_folder)`` in a Lightning run: the final row is its weight file, and the config
    files from_pretrained reads beside it were never read (a NaN rms_norm_eps scanned CLEAN there)."""
    folder = _copy(linked_last, tmp_path)
    (folder / "config.json").write_text('{"model_type": "llama", "rms_norm_eps": NaN}')
    result = run("scan", folder, "--json")
    assert result.exit_code == 3, result.output[-2000:]
    final = json.loads(result.output)["run"]["checkpoints"][-1]
    assert final["final"] and any("rms_norm_eps is NaN" in e["message"] for e in final["report"]["errors"])
    (folder / "config.json").write_text('{"model_type": "llama", "rms_norm_eps": 1e-6}')
    assert run("scan", folder, "-q").exit_code == 0


def test_a_template_without_a_step_is_a_timeline_by_the_steps_saved(tmp_path):
    """A helper's trial: ModelCheckpoint(filename="{epoch}-{val_loss:.2f}"), the template of Lightning's own docs, has
    no step in its names: the folder read as one checkpoint, a final.ckpt NaN throughout was "POISONED" beside its
    healthy saves, and every suggested repair was refused. Its files are the timeline, placed by their global_step."""
    import torch

    net = torch.nn.Linear(4, 4)
    for epoch, step, value in ((0, 8, 0.5), (1, 16, 0.4), (2, 24, float("nan"))):
        state = {k: torch.full_like(v, value) for k, v in net.state_dict().items()}
        torch.save({"state_dict": state, "global_step": step, "epoch": epoch, "pytorch-lightning_version": "2.6.6"},
                   tmp_path / f"epoch={epoch}-val_loss={value:.2f}.ckpt")
    report = nandoctor.scan_run(tmp_path, device="cpu")
    assert [(c.step, c.name) for c in report.checkpoints] == [
        (8, "epoch=0-val_loss=0.50.ckpt"), (16, "epoch=1-val_loss=0.40.ckpt"), (24, "epoch=2-val_loss=nan.ckpt")]
    assert report.last_healthy.name == "epoch=1-val_loss=0.40.ckpt" and report.exit_code() == 1
    fixed = run("repair", tmp_path / "epoch=2-val_loss=nan.ckpt", "--from", "auto", "--out", tmp_path.parent / "fixed",
                "--allow-diverged")
    assert fixed.exit_code == 0, fixed.output


def test_a_rerun_into_the_same_folder_orders_its_files_by_version(tmp_path):
    """An adversarial round: epoch=0-step=200.ckpt (the first run) and epoch=0-step=200-v1.ckpt (the rerun, NaN): name
    order put -v1 first, the older file decided and the run passed. Lightning's version counter orders them."""
    import torch

    net = torch.nn.Linear(4, 4)
    for name, value in (("epoch=0-step=100.ckpt", 0.1), ("epoch=0-step=200.ckpt", 0.2),
                        ("epoch=0-step=200-v1.ckpt", float("nan"))):
        state = {k: torch.full_like(v, value) for k, v in net.state_dict().items()}
        torch.save({"state_dict": state, "global_step": 200}, tmp_path / name)
    report = nandoctor.scan_run(tmp_path, device="cpu")
    assert [c.name for c in report.checkpoints][-1] == "epoch=0-step=200-v1.ckpt" and report.exit_code() == 1


def test_an_epoch_template_file_cut_short_is_never_dropped(tmp_path):
    """An adversarial round: in a "{epoch}-{val_loss}" folder the newest file cut short had no global_step to place it
    by, and the run passed. It is a row of its own, unreadable: exit 3."""
    import torch

    net = torch.nn.Linear(4, 4)
    for epoch, step in ((0, 8), (1, 16)):
        torch.save({"state_dict": net.state_dict(), "global_step": step}, tmp_path / f"epoch={epoch}-val_loss=0.5.ckpt")
    data = (tmp_path / "epoch=1-val_loss=0.5.ckpt").read_bytes()
    (tmp_path / "epoch=2-val_loss=0.4.ckpt").write_bytes(data[: len(data) // 2])
    assert nandoctor.scan_run(tmp_path, device="cpu").exit_code() == 3
