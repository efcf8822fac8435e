"""Run folders as a timeline: verdict per checkpoint, trainer log, incomplete saves, exit code."""

from __future__ import annotations

import os

import json
import shutil

import pytest

import nandoctor
from nandoctor.checkpoint import runs

from .conftest import DEMO_RUN
from .conftest import run_cli as run


def test_demo_run_timeline_json_matches_planted_counts():
    expected = json.loads((DEMO_RUN / "expected.json").read_text())["checkpoints"]
    result = run("scan", str(DEMO_RUN), "--json")
    assert result.exit_code == 1  # the newest checkpoint (300) is bad
    data = json.loads(result.output)
    assert data["schema_version"] == 3
    r = data["run"]
    assert [c["name"] for c in r["checkpoints"]] == ["checkpoint-100", "checkpoint-200", "checkpoint-300"]
    assert [c["status"] for c in r["checkpoints"]] == ["clean", "clean", "poisoned"]
    assert (r["last_clean"], r["first_bad"], r["newest"]) == ("checkpoint-200", "checkpoint-300", "checkpoint-300")
    for c in r["checkpoints"]:
        want = expected[c["name"]]
        got = c["report"]
        assert got["summary"]["nan"] == want["nan"] and got["summary"]["posinf"] == want["posinf"]
        assert got["summary"]["neginf"] == want["neginf"]
        assert got["bad_layer_ranges"] == want["bad_layer_ranges"]
        bad = {t["name"]: t for t in got["tensors"] if t["nan"] + t["posinf"] + t["neginf"]}
        assert set(bad) == set(want["bad_tensors"])
    assert r["train_log"]["first_nonfinite"] == {"step": 260, "keys": ["grad_norm"], "skipped_steps": False}
    assert r["train_log"]["first_zero_loss_step"] == 260 and r["train_log"]["last_step"] == 300
    assert r["checkpoints"][1]["train_log"]["first_nonfinite"] is None
    assert data["summary"] == data["summary"] | {"decided_by": "checkpoint-300", "exit_code": 1, "ok": False}


def test_demo_run_rich_timeline_names_last_clean_first_bad_and_the_log_step():
    result = run("scan", str(DEMO_RUN))
    assert result.exit_code == 1
    out = result.output
    assert "last healthy: checkpoint-200 · first bad: checkpoint-300" in out
    assert "grad_norm NaN/Inf first at step 260" in out and "loss exactly 0.0 from step 260" in out
    assert "between checkpoint-200 and checkpoint-300" in out
    assert "transformer.h.21–23" in out
    assert "--from auto" in out


def test_quiet_run_line():
    result = run("scan", str(DEMO_RUN), "--quiet")
    assert result.exit_code == 1
    line = result.output.strip()
    assert "\n" not in line
    assert line.startswith("FAIL NON-FINITE") and "checkpoint-300" in line
    assert "last healthy: checkpoint-200" in line and "first bad: checkpoint-300" in line
    assert "transformer.h.21–23" in line and "step 260" in line


def test_newest_checkpoint_decides_the_exit_code(run_dir):
    shutil.copytree(run_dir / "checkpoint-200", run_dir / "checkpoint-1000")  # clean again, numerically last
    result = run("scan", str(run_dir), "--json")
    assert result.exit_code == 0
    r = json.loads(result.output)["run"]
    assert [c["step"] for c in r["checkpoints"]] == [100, 200, 300, 1000]  # by step, not by name
    assert (r["last_clean"], r["first_bad"]) == ("checkpoint-1000", "checkpoint-300")


def test_half_written_checkpoints_are_listed_as_incomplete_not_crashed_on(run_dir):
    no_weights = run_dir / "checkpoint-400"
    no_weights.mkdir()
    shutil.copy(run_dir / "checkpoint-300" / "trainer_state.json", no_weights)
    missing_shard = run_dir / "checkpoint-350"
    shutil.copytree(run_dir / "checkpoint-200", missing_shard)
    (missing_shard / "model-00002-of-00002.safetensors").unlink()
    writing = run_dir / "checkpoint-380"
    shutil.copytree(run_dir / "checkpoint-200", writing)
    (writing / "optimizer.pt.tmp").write_bytes(b"half")
    (writing / "trainer_state.json").unlink()
    renamed_never = run_dir / "tmp-checkpoint-500"
    shutil.copytree(run_dir / "checkpoint-200", renamed_never)

    result = run("scan", str(run_dir), "--json")
    assert result.exit_code == 3  # the newest (tmp-checkpoint-500) is not a finished save
    r = json.loads(result.output)["run"]
    by_name = {c["name"]: c for c in r["checkpoints"]}
    assert by_name["checkpoint-400"]["status"] == "incomplete"
    assert "no weight files" in by_name["checkpoint-400"]["incomplete"]
    assert by_name["checkpoint-400"]["report"] is None
    assert by_name["checkpoint-350"]["status"] == "incomplete"
    assert any("missing" in why for why in by_name["checkpoint-350"]["incomplete"])
    assert by_name["checkpoint-380"]["status"] == "incomplete"
    assert any("optimizer.pt.tmp" in why for why in by_name["checkpoint-380"]["incomplete"])
    assert any("trainer_state.json" in why for why in by_name["checkpoint-380"]["incomplete"])
    assert by_name["tmp-checkpoint-500"]["status"] == "incomplete"
    assert set(r["incomplete"]) == {"checkpoint-350", "checkpoint-380", "checkpoint-400", "tmp-checkpoint-500"}
    assert r["last_clean"] == "checkpoint-200"  # incomplete ones are never the clean one

    rich = run("scan", str(run_dir))
    assert rich.exit_code == 3 and "incomplete: checkpoint-400: no weight files" in rich.output
    assert "Traceback" not in rich.output


def test_unreadable_checkpoint_in_a_run(run_dir):
    shard = run_dir / "checkpoint-300" / "model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-7])  # truncated
    result = run("scan", str(run_dir), "--json")
    assert result.exit_code == 3
    c = json.loads(result.output)["run"]["checkpoints"][-1]
    assert c["status"] == "unreadable" and c["report"]["errors"]


def test_a_run_folder_with_the_final_model_at_the_top_is_a_run_ending_in_a_final_row(run_dir):
    # Deliberate change: this folder used to be read as one checkpoint (its top-level model only). After
    # trainer.save_model(output_dir) it is still the run: the timeline ends with the final model, which decides.
    for f in (run_dir / "checkpoint-200").iterdir():
        shutil.copy(f, run_dir)
    assert runs.is_run_folder(run_dir)
    result = run("scan", str(run_dir), "--json")
    data = json.loads(result.output)
    rows = data["run"]["checkpoints"]
    assert [c["name"] for c in rows] == ["checkpoint-100", "checkpoint-200", "checkpoint-300", "final"]
    assert rows[-1]["final"] and rows[-1]["status"] == "clean" and rows[-1]["path"] == str(run_dir)
    assert rows[-1]["step"] is None  # the copied trainer_state.json says 200, before checkpoint-300: unknown
    assert data["summary"]["decided_by"] == "final" and result.exit_code == 0
    assert data["run"]["first_bad"] == "checkpoint-300"


def test_a_folder_with_weights_and_only_tmp_checkpoints_is_one_checkpoint(run_dir):
    for f in (run_dir / "checkpoint-200").iterdir():
        shutil.copy(f, run_dir)
    for name in ("checkpoint-100", "checkpoint-200", "checkpoint-300"):
        shutil.rmtree(run_dir / name)
    (run_dir / "tmp-checkpoint-400").mkdir()
    assert not runs.is_run_folder(run_dir)


def test_other_checkpoint_folders_are_noted(run_dir):
    shutil.copytree(run_dir / "checkpoint-200", run_dir / "checkpoint-300-copy")
    result = run("scan", str(run_dir), "--json")
    notes = json.loads(result.output)["run"]["notes"]
    assert any("checkpoint-300-copy" in n for n in notes)


def test_train_log_reading(tmp_path):
    state = tmp_path / "trainer_state.json"
    # Python's json writes NaN/Infinity literals; Trainer does the same.
    state.write_text(json.dumps({"log_history": [
        {"step": 10, "loss": 2.0, "grad_norm": 1.0},
        {"step": 20, "loss": float("inf"), "grad_norm": 3.0},
        {"step": 30, "loss": 0.0, "grad_norm": float("nan")},
        {"step": 30, "eval_loss": 1.0},
        {"train_runtime": 1.0},
    ]}))
    log = runs.read_train_log(state)
    assert (log.first_nonfinite_step, log.first_nonfinite_keys) == (20, ("loss",))
    assert log.first_zero_loss_step == 30 and log.last_step == 30 and log.suspicious_step == 20
    state.write_text("{not json")
    broken = runs.read_train_log(state)
    assert broken.error and broken.first_nonfinite_step is None


def test_lightning_metrics_csv_is_judged_as_a_trainer_log_is(tmp_path):
    """CSVLogger(save_dir, name="logs") beside ModelCheckpoint(dirpath=save_dir/"checkpoints"): the newest
    version's metrics.csv is found from the checkpoints folder and judged by the trainer_state.json rule."""
    from nandoctor.checkpoint.trainlog import metrics_near

    (tmp_path / "checkpoints").mkdir()
    for version, rows in (("version_0", "0,1.0,\n"), ("version_1", "0,2.0,\n1,,1.5\n2,inf,\n3,0.0,\n4,nan,\n")):
        (tmp_path / "logs" / version).mkdir(parents=True)
        (tmp_path / "logs" / version / "metrics.csv").write_text("step,train_loss,grad_norm\n" + rows)
    table = metrics_near(tmp_path / "checkpoints")
    assert table is not None and table.source.endswith("logs/version_1/metrics.csv")
    log = table.train_log()
    assert log is not None and log.logged_after_save
    assert (log.first_nonfinite_step, log.first_nonfinite_keys, log.first_zero_loss_step, log.last_step) == (
        2, ("train_loss",), 3, 4)
    before = table.train_log(before_step=2)  # the rows a save at step 2 came after
    assert before is not None and (before.last_step, before.suspicious_step) == (1, None)
    assert table.train_log(before_step=0) is None
    assert [p.step for p in table.series().points] == [0, 1, 2, 3, 4]


def test_checkpoints_in_orders_by_step(tmp_path):
    for name in ("checkpoint-900", "checkpoint-1000", "checkpoint-50", "checkpoint-x", "tmp-checkpoint-7"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint-2").write_text("a file, not a folder")
    assert [s for s, _ in runs.checkpoints_in(tmp_path)] == [50, 900, 1000]


def test_next_steps_skip_an_unfinished_save_and_then_point_at_a_verified_repair(run_dir):
    (run_dir / "tmp-checkpoint-310").mkdir()
    (run_dir / "tmp-checkpoint-310" / "model.safetensors.tmp").write_bytes(b"\0" * 64)
    result = run("scan", str(run_dir))
    assert result.exit_code == 3
    out = " ".join(result.output.split())  # rich wraps long lines
    assert "tmp-checkpoint-310 is an unfinished save: wait for it to finish, or delete it" in out
    assert f"nandoctor repair {run_dir}/checkpoint-300 --from auto --out {run_dir}/repaired-checkpoint-300" in out
    assert "tmp-checkpoint-310 --from" not in out

    (run_dir / "tmp-checkpoint-310" / "model.safetensors.tmp").unlink()
    (run_dir / "tmp-checkpoint-310").rmdir()
    assert run("repair", str(run_dir / "checkpoint-300"), "--from", "auto", "--out", str(run_dir / "repaired-checkpoint-300")).exit_code == 0
    out = " ".join(run("scan", str(run_dir)).output.split())
    assert f"{run_dir}/repaired-checkpoint-300 is a verified repair of checkpoint-300" in out
    assert f"mv {run_dir}/checkpoint-300 {run_dir}/bad-checkpoint-300 && mv {run_dir}/repaired-checkpoint-300 {run_dir}/checkpoint-300" in out
    assert "nandoctor repair" not in out  # the repair is done: not suggested again
    # the scan of the checkpoint alone says the same (it used to suggest the same repair again, into a -2 folder)
    alone = run("scan", str(run_dir / "checkpoint-300"))
    assert alone.exit_code == 1
    out = " ".join(alone.output.split())
    assert f"{run_dir}/repaired-checkpoint-300 is a verified repair of checkpoint-300" in out
    assert f"mv {run_dir}/checkpoint-300 {run_dir}/bad-checkpoint-300 && mv {run_dir}/repaired-checkpoint-300 {run_dir}/checkpoint-300" in out
    assert "nandoctor repair" not in out and "repaired-checkpoint-300-2" not in out
    # and so does assert_finite's hint (it suggested the repair again, into -repaired-2)
    with pytest.raises(nandoctor.NonFiniteWeightsError) as raised:
        nandoctor.assert_finite(run_dir / "checkpoint-300")
    assert raised.value.hint.startswith(f"{run_dir}/repaired-checkpoint-300 is a verified repair of checkpoint-300")
    assert "repaired-checkpoint-300-2" not in raised.value.hint

    # re-saved since (a rerun overwrote it): the repair is of the checkpoint as it was, and is not offered any more
    weights = run_dir / "checkpoint-300" / "model-00001-of-00002.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    out = " ".join(run("scan", str(run_dir)).output.split())
    assert "is a verified repair" not in out and "repaired-checkpoint-300-2" in out
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    (run_dir / "checkpoint-300").rename(run_dir / "bad-checkpoint-300")
    (run_dir / "repaired-checkpoint-300").rename(run_dir / "checkpoint-300")
    assert run("scan", str(run_dir), "-q").exit_code == 0  # what the hint promised


def test_a_verified_repair_under_any_name_is_found_and_the_repair_says_how_to_use_it(run_dir):
    """A new-user trial: `repair … --out run/checkpoint-300-fixed` (docs/api.md's name) was verified, but the run
    scan told the user to repair again into -repaired: only that name was looked for. The repair's proof names its
    source, so any folder beside the checkpoint is found; and the repair itself says how to put it in place."""
    fixed = run_dir / "checkpoint-300-fixed"
    repaired = run("repair", str(run_dir / "checkpoint-300"), "--from", "auto", "--out", str(fixed), "--no-progress")
    assert repaired.exit_code == 0
    move = f"mv {run_dir}/checkpoint-300 {run_dir}/bad-checkpoint-300 && mv {fixed} {run_dir}/checkpoint-300"
    said = " ".join(repaired.output.split())
    assert f"next: to use it in place of checkpoint-300: {move}" in said
    for scanned in (run_dir, run_dir / "checkpoint-300"):
        out = " ".join(run("scan", str(scanned)).output.split())
        assert f"{fixed} is a verified repair of checkpoint-300" in out and move in out
        assert "nandoctor repair" not in out
    moved = run_dir.with_name("moved")  # (a review: the run folder moved since, the proof's source path is gone)
    run_dir.rename(moved)
    out = " ".join(run("scan", str(moved / "checkpoint-300")).output.split())
    assert f"{moved / 'checkpoint-300-fixed'} is a verified repair of checkpoint-300" in out, out[-600:]
    moved.rename(run_dir)
    (run_dir / "bad-checkpoint-300").mkdir()  # (a set-aside copy of an earlier repair: mv would nest into it)
    out = " ".join(run("scan", str(run_dir / "checkpoint-300")).output.split())
    assert f"mv {run_dir}/checkpoint-300 {run_dir}/bad-checkpoint-300-2 && mv {fixed} {run_dir}/checkpoint-300" in out
    (run_dir / "checkpoint-300").rename(run_dir / "bad-checkpoint-300-2")
    fixed.rename(run_dir / "checkpoint-300")
    assert run("scan", str(run_dir), "-q").exit_code == 0  # what both promised


def test_only_a_finished_intact_repair_judged_alike_is_offered(run_dir):
    """An adversarial trial: a killed repair's temporary folder (its proof written, not yet renamed), a verified
    repair whose shard was later replaced by a bad copy or deleted, and a repair made with --exclude offered to a
    full scan were each suggested as "a verified repair" with the mv that puts it in place."""
    import os

    target = run_dir / "checkpoint-300"
    fixed = run_dir / "checkpoint-300-fixed"
    assert run("repair", str(target), "--from", "auto", "--out", str(fixed), "--no-progress").exit_code == 0

    def offered() -> bool:
        return f"{fixed} is a verified repair" in " ".join(run("scan", str(target)).output.split())

    assert offered()
    temp = run_dir / ".checkpoint-300-fixed.nandoctor-tmp-123-0123abcd"  # (what a killed repair leaves)
    fixed.rename(temp)
    assert "is a verified repair" not in run("scan", str(target)).output
    temp.rename(fixed)
    shard = fixed / "model-00002-of-00002.safetensors"
    saved = shutil.copy2(shard, run_dir / "saved.safetensors")
    shutil.copy2(target / shard.name, shard)  # the bad shard copied back over the repaired one, its mtime kept
    assert os.stat(shard).st_mtime_ns <= (fixed / "nandoctor-repair.json").stat().st_mtime_ns  # (cp -p's way)
    assert not offered()
    shutil.copy2(saved, shard)  # its own bytes again: but a file rewritten since the proof is no verified one
    assert not offered()
    shard.unlink()
    assert not offered()

    partial = run_dir / "checkpoint-300-partial"  # repaired with --exclude: the left-out tensors still hold NaN
    assert run("repair", str(target), "--from", "auto", "--exclude", "transformer.h.23.*", "--out", str(partial),
               "--no-progress").exit_code == 0
    shutil.rmtree(fixed)
    assert "checkpoint-300-partial is a verified repair" not in run("scan", str(target)).output
    alike = " ".join(run("scan", str(target), "--exclude", "transformer.h.23.*").output.split())
    assert f"{partial} is a verified repair" in alike  # (judged as this scan judges: offered)


def test_repair_of_a_whole_run_folder_names_a_checkpoint_to_repair(run_dir):
    result = run("repair", str(run_dir), "--from", "auto", "--out", str(run_dir.parent / "x"))
    assert result.exit_code == 3
    assert "a training run folder (3 checkpoint-N folders), not one checkpoint" in result.output
    assert not (run_dir.parent / "x").exists()


def test_diff_and_manifest_of_a_run_folder_name_their_own_command_and_the_newest_checkpoint(tmp_path):
    """`diff RUN B` and `manifest RUN` on a folder of checkpoint-N folders: one checkpoint is asked for, and the
    hint gives the same command with the newest checkpoint (checkpoint-10, not checkpoint-2, which sorts first
    by name), never `nandoctor scan` of the oldest."""
    import numpy as np
    from safetensors.numpy import save_file

    run_folder, other = tmp_path / "run", tmp_path / "other.safetensors"
    for step in (2, 10):
        (run_folder / f"checkpoint-{step}").mkdir(parents=True)
        save_file({"w": np.full(4, step, np.float32)}, str(run_folder / f"checkpoint-{step}" / "model.safetensors"))
    save_file({"w": np.zeros(4, np.float32)}, str(other))
    newest = run_folder / "checkpoint-10"
    for args, wanted in (
        (("diff", run_folder, other), f"hint: diff one of its checkpoints, e.g. the newest: nandoctor diff {newest} {other}"),
        (("diff", other, run_folder), f"hint: diff one of its checkpoints, e.g. the newest: nandoctor diff {other} {newest}"),
        (("manifest", run_folder), f"nandoctor manifest {newest} > manifest.json"),
    ):
        result = run(*args)
        out = " ".join(result.output.split())
        assert result.exit_code == 3 and "a training run folder" in out and "not one checkpoint" in out, out
        assert wanted in out and "nandoctor scan" not in out and "checkpoint-2" not in out, out
    assert run("diff", newest, other).exit_code == 1  # the hint's command runs
    assert runs.newest_checkpoint(run_folder) == newest
    from nandoctor.errors import UnsupportedFormatError

    with pytest.raises(UnsupportedFormatError) as caught:  # (the API's verify_hashes said "nandoctor scan RUN/checkpoint-2")
        nandoctor.verify_hashes(str(run_folder))
    assert caught.value.hint == f"verify one of its checkpoints, e.g. the newest: nandoctor.verify_hashes({str(newest)!r})"


def test_suggested_commands_are_quoted_for_the_shell(tmp_path):
    spaced = tmp_path / "my run"
    shutil.copytree(DEMO_RUN, spaced)
    out = " ".join(run("scan", str(spaced / "checkpoint-300")).output.split())
    assert f"nandoctor repair '{spaced}/checkpoint-300' --from auto --out '{spaced}/repaired-checkpoint-300'" in out


def test_a_checkpoint_folder_no_one_may_read_is_its_row_s_problem_not_a_crash(run_dir):
    """checkpoint-300 at mode 000 (and, as a second case, readable but not searchable): the run is still scanned,
    that row is unreadable with the path, "permission denied" and what to do; the newest row decides: exit 3.
    Its sibling scans and repairs on its own, with the unreadable folder passed over (never a donor)."""
    from .permissions import mode, need_permissions, permission_hint, run_nandoctor

    need_permissions()
    newest = run_dir / "checkpoint-300"
    for bits in (0o000, 0o444):
        with mode(newest, bits):
            result = run_nandoctor("scan", run_dir, "--json")
            assert result.returncode == 3, result.stderr
            assert "Traceback" not in result.stderr and "internal error" not in result.stderr
            data = json.loads(result.stdout)
            rows = {c["name"]: c for c in data["run"]["checkpoints"]}
            assert [c["status"] for c in data["run"]["checkpoints"]] == ["clean", "clean", "unreadable"]
            assert rows["checkpoint-300"]["incomplete"] == []
            assert rows["checkpoint-300"]["report"]["errors"] == [
                {"path": str(newest), "message": "permission denied", "hint": permission_hint(newest), "kind": "unreadable"}]
            assert data["run"]["last_healthy"] == "checkpoint-200" and data["summary"]["exit_code"] == 3
            quiet = run_nandoctor("scan", run_dir, "--quiet")
            assert quiet.returncode == 3
            assert quiet.stdout == (f"FAIL UNREADABLE {newest}: 0 tensors read; 1 part(s) unreadable (first: {newest}: "
                                    "permission denied) · last healthy: checkpoint-200 · first bad: none\n")
            console = run_nandoctor("scan", run_dir)
            assert console.returncode == 3
            assert f"unreadable: checkpoint-300: {newest}: permission denied" in console.stdout
            assert f"  hint: {permission_hint(newest)}" in console.stdout.splitlines()
            assert (f"  next: checkpoint-300 could not be read completely (see above): {permission_hint(newest)}"
                    in console.stdout.splitlines())
            sibling = run_nandoctor("scan", run_dir / "checkpoint-200", "--quiet")
            assert (sibling.returncode, sibling.stdout) == (0, f"PASS CLEAN {run_dir / 'checkpoint-200'}: 195 tensors healthy\n")
            plan = run_nandoctor("repair", run_dir / "checkpoint-200", "--from", "auto", "--dry-run")
            assert plan.returncode == 0 and "nothing to restore" in plan.stdout, plan.stdout + plan.stderr


def test_a_checkpoint_behind_a_link_into_a_locked_folder_is_its_row_s_problem(run_dir, tmp_path):
    """checkpoint-300 a symlink into a folder no one may search (a shared volume): the row is unreadable, saying
    where the link leads; a Lightning run's last.ckpt linked into such a folder likewise (and, as the row a
    resume loads, decides exit 3). Neither is dropped from the timeline nor crashes it."""
    torch = pytest.importorskip("torch")
    from .permissions import mode, need_permissions, run_nandoctor

    need_permissions()
    vault = tmp_path / "vault"
    vault.mkdir()
    shutil.move(run_dir / "checkpoint-300", vault / "checkpoint-300")
    (run_dir / "checkpoint-300").symlink_to(vault / "checkpoint-300")
    lightning = tmp_path / "ckpts"
    lightning.mkdir()
    for step in (2, 4):
        torch.save({"state_dict": {"w": torch.ones(2)}, "global_step": step}, lightning / f"epoch=0-step={step}.ckpt")
    torch.save({"state_dict": {"w": torch.ones(2)}, "global_step": 4}, vault / "last.ckpt")
    (lightning / "last.ckpt").symlink_to(vault / "last.ckpt")
    with mode(vault, 0):
        trainer = run_nandoctor("scan", run_dir, "--json")
        lit = run_nandoctor("scan", lightning, "--json")
    assert trainer.returncode == 3 and lit.returncode == 3, trainer.stderr + lit.stderr
    rows = json.loads(trainer.stdout)["run"]["checkpoints"]
    assert [(c["name"], c["status"]) for c in rows] == [
        ("checkpoint-100", "clean"), ("checkpoint-200", "clean"), ("checkpoint-300", "unreadable")]
    assert rows[-1]["report"]["errors"][0]["message"] == f"permission denied (it is a link to {vault / 'checkpoint-300'})"
    data = json.loads(lit.stdout)
    assert [(c["name"], c["status"]) for c in data["run"]["checkpoints"]] == [
        ("epoch=0-step=2.ckpt", "clean"), ("epoch=0-step=4.ckpt", "clean"), ("last.ckpt", "unreadable")]
    assert data["summary"]["decided_by"] == "last.ckpt"
    assert data["run"]["checkpoints"][-1]["report"]["errors"][0]["message"] == (
        f"permission denied (it is a link to {vault / 'last.ckpt'})")


def _trainer_state(folder, losses: dict[int, float]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    history = [{"step": s, "loss": v, "grad_norm": 1.0} for s, v in sorted(losses.items())]
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": history}))


def test_a_loss_jump_in_the_trainer_log_moves_the_last_healthy_checkpoint_back_in_a_broken_run(tmp_path):
    """Finite weights that made the loss go from ~5 to 110 are no resume point: where the run has a bad checkpoint,
    the checkpoints saved from the step whose weights made the jump are skipped as resume points and donors; a
    healthy run's log (spikes under 4x, here 2.5x) moves nothing."""
    from nandoctor.checkpoint.trainlog import read_train_log

    losses = {1: 5.0, 2: 4.9, 3: 5.1, 4: 5.0, 5: 5.2, 6: 12.0, 7: 110.0, 8: 4000.0}
    _trainer_state(tmp_path / "a", losses)
    log = read_train_log(tmp_path / "a" / "trainer_state.json")
    assert (log.loss_jump_step, log.loss_jump, log.broken_weights_from) == (7, (110.0, 5.0), 6)
    calm = {**losses, 6: 12.4, 7: 8.0, 8: 5.0}  # a spike to 2.5x that recovers
    _trainer_state(tmp_path / "b", calm)
    assert read_train_log(tmp_path / "b" / "trainer_state.json").loss_jump_step is None


def test_a_checkpoint_without_the_optimizer_its_siblings_hold_is_noted(run_dir):
    """Weights fine, but resume_from_checkpoint would start a fresh optimizer: said, not silent."""
    torch = pytest.importorskip("torch")
    for name in ("checkpoint-100", "checkpoint-200", "checkpoint-300"):
        if name != "checkpoint-200":
            torch.save({"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"params": [0]}]},
                       run_dir / name / "optimizer.pt")
    data = json.loads(run("scan", str(run_dir), "--json").stdout)
    notes = data["run"]["notes"]
    assert any(n.startswith("checkpoint-200 lacks optimizer.pt") for n in notes), notes
    assert not any(n.startswith(("checkpoint-100 lacks", "checkpoint-300 lacks")) for n in notes)


def test_a_run_failed_on_zeroed_says_what_to_do(run_dir):
    """--fail-on zeroed fails the run (exit 1, ZEROED): the next step names the all-zero tensors."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    zeroed = None
    for path in sorted((run_dir / "checkpoint-300").glob("*.safetensors")):
        tensors = {k: torch.nan_to_num(v, nan=0.01, posinf=0.01, neginf=-0.01) for k, v in load_file(path).items()}
        if zeroed is None:  # the NaN the demo plants out of the way, one weight matrix zeroed
            zeroed = next(n for n in sorted(tensors) if tensors[n].dim() == 2 and "wte" not in n)
            tensors[zeroed] = torch.zeros_like(tensors[zeroed])
        save_file(tensors, path, metadata={"format": "pt"})
    result = run("scan", str(run_dir), "--fail-on", "zeroed")
    out = " ".join(result.output.split())
    assert result.exit_code == 1 and "all-zero tensors in checkpoint-300" in out and zeroed in out, out[-800:]
    # The checkpoint the gate fails is not the run's last healthy one under that gate, in any report (it was named
    # so beside its own FAIL).
    assert "last healthy: checkpoint-200" in out, out[-800:]
    quiet = run("scan", str(run_dir), "--fail-on", "+zeroed", "--quiet").output
    assert "last healthy: checkpoint-200" in quiet, quiet
    data = json.loads(run("scan", str(run_dir), "--fail-on", "+zeroed", "--json").output)
    assert data["run"]["last_healthy"] == data["run"]["last_clean"] == "checkpoint-200"
    assert "Last healthy:** checkpoint-200" in run("scan", str(run_dir), "--fail-on", "+zeroed", "--markdown").output
    # the default gate fails it too (zeroed is among its findings); a gate that leaves zeroed out reports it, but a
    # weight checkpoint-200 held not all zero is damage: no resume point there either
    default = json.loads(run("scan", str(run_dir), "--json").output)
    assert default["summary"]["exit_code"] == 1 and default["run"]["last_healthy"] == "checkpoint-200"
    reported = json.loads(run("scan", str(run_dir), "--json", "--fail-on", "nonfinite,exploded,outlier").output)
    assert reported["summary"]["exit_code"] == 0 and reported["run"]["last_healthy"] == "checkpoint-200"


def test_a_checkpoint_bad_only_in_its_optimizer_state_says_the_weights_are_fine_and_where_to_resume(run_dir):
    """NaN in the Adam moments alone: the model loads and generates, resuming restores the NaN. The scan says so
    (no layer grid for optimizer.state.N, which numbers parameters), and the run names the checkpoint to resume
    from even where a healthy final model is its last healthy row."""
    torch = pytest.importorskip("torch")
    newest = run_dir / "checkpoint-300"
    for shard in (run_dir / "checkpoint-200").glob("*.safetensors"):
        shutil.copy(shard, newest / shard.name)  # (its weights healthy again)
    for name in ("checkpoint-100", "checkpoint-200", "checkpoint-300"):
        state = {i: {"exp_avg": torch.zeros(4), "exp_avg_sq": torch.zeros(4)} for i in range(40)}
        if name == "checkpoint-300":
            state[33]["exp_avg_sq"][1] = float("nan")
        torch.save({"state": state, "param_groups": [{"params": list(range(40))}]}, run_dir / name / "optimizer.pt")
    result = run("scan", str(newest))
    out = " ".join(result.output.split())
    assert result.exit_code == 1, out[-800:]
    assert "only optimizer state is bad (optimizer.state.33.exp_avg_sq)" in out and "weights are healthy" in out
    assert "or restore the bad tensors" in out and "layer × component" not in out
    for f in (run_dir / "checkpoint-200").iterdir():  # a final model at the top (trainer.save_model)
        if f.suffix in (".safetensors", ".json") and f.name != "trainer_state.json":
            shutil.copy(f, run_dir)
    result = run("scan", str(run_dir))
    out = " ".join(result.output.split())
    assert result.exit_code == 0 and "last healthy: final" in out, out[-800:]
    assert (f"optimizer state only: checkpoint-300: optimizer.state.33.exp_avg_sq holds NaN/Inf or exploded values "
            f"while its weights are healthy; resuming training from it restores them: resume from "
            f"{run_dir / 'checkpoint-200'} instead") in out


def test_an_adam_second_moment_at_inf_says_the_weights_may_be_broken(run_dir):
    """A real run at lr 1e2: its Adam exp_avg_sq overflowed to +Inf (a gradient beyond ~1e19) while its weights, finite
    and under every ceiling, scored an eval loss of 8,960 (untrained: 4.9); the scan said "the model weights are
    healthy, so the model loads and generates". A second moment at +Inf says the weights may be broken."""
    torch = pytest.importorskip("torch")
    newest = run_dir / "checkpoint-300"
    for shard in (run_dir / "checkpoint-200").glob("*.safetensors"):
        shutil.copy(shard, newest / shard.name)
    state = {i: {"exp_avg": torch.zeros(4), "exp_avg_sq": torch.zeros(4)} for i in range(40)}
    state[7]["exp_avg_sq"][2] = float("inf")
    torch.save({"state": state, "param_groups": [{"params": list(range(40))}]}, newest / "optimizer.pt")
    out = " ".join(run("scan", str(newest)).output.split())
    assert "a second moment that overflowed to +Inf took a gradient whose square is beyond its dtype's range" in out
    assert "the model weights are healthy" not in out and "evaluate the model" in out
    # the run's warning line and assert_finite's error say it too (a real-training trial: the run view still said
    # "while its weights are healthy")
    whole = " ".join(run("scan", str(run_dir)).output.split())
    assert "optimizer state only: checkpoint-300" in whole and "while its weights are healthy" not in whole
    assert "a second moment that overflowed to +Inf" in whole and "(evaluate them before use)" in whole
    with pytest.raises(nandoctor.NonFiniteWeightsError, match="may still be broken") as raised:
        nandoctor.assert_finite(newest, device="cpu")
    assert "the weights are finite and healthy" not in str(raised.value)


def test_max_w_of_a_checkpoint_holding_inf_or_nan_says_so(tmp_path):
    """A new user: the timeline, Markdown table and HTML chart showed 0.0874 as max |w| of the demo's checkpoint-300,
    which holds 53 +Inf (the largest *finite* magnitude). The tables say inf (nan where NaN is all that is broken)."""
    import numpy as np

    from fixtures.builders import RawTensor, write_safetensors

    report = nandoctor.scan_run(DEMO_RUN, device="cpu")
    rows = {c.name: c.max_abs_words for c in report.checkpoints}
    assert rows == {"checkpoint-100": "0.0874", "checkpoint-200": "0.0874", "checkpoint-300": "inf"}
    console = run("scan", str(DEMO_RUN), "--no-progress").output
    assert [line.split("│")[7].strip() for line in console.splitlines() if "│ checkpoint-300 │" in line] == ["inf"]
    html = tmp_path / "r.html"
    run("scan", str(DEMO_RUN), "--html", str(html), "-q")
    assert ">inf<" in html.read_text() and "largest finite weight magnitude" in html.read_text()
    values = np.random.default_rng(0).standard_normal(4096).astype(np.float32) * 0.02
    for step, planted in ((1, False), (2, True)):
        folder = tmp_path / "run" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        bits = values.copy()
        if planted:
            bits[7] = np.nan
        write_safetensors(folder / "model.safetensors", {f"model.layers.{i}.mlp.weight": RawTensor(
            "F32", (4096,), (bits if i == 1 else values).tobytes()) for i in range(3)})
    nan_run = nandoctor.scan_run(tmp_path / "run", device="cpu")
    assert [c.max_abs_words for c in nan_run.checkpoints] == [f"{float(abs(values).max()):.3g}", "nan"]


def test_a_passing_run_names_a_bad_checkpoint_before_its_newest(tmp_path):
    """A new user: a run whose checkpoint-30 is poisoned and checkpoint-40 healthy printed ✓ PASS and no word on
    checkpoint-30 (generate died on it). The pass is ⚠ and names it, console and Markdown."""
    import shutil

    run_dir = shutil.copytree(DEMO_RUN, tmp_path / "run")
    shutil.copytree(run_dir / "checkpoint-200", run_dir / "checkpoint-400")
    report = nandoctor.scan_run(run_dir, device="cpu")
    assert report.exit_code() == 0 and [c.name for c in report.bad_behind()] == ["checkpoint-300"]
    console = run("scan", str(run_dir), "--no-progress").output
    assert "⚠ PASS newest checkpoint-400: CLEAN" in console
    assert "but checkpoint-300 is poisoned: do not load or resume from it (repair it with --from auto" in console
    markdown = run("scan", str(run_dir), "--markdown").output
    assert markdown.startswith("## nandoctor: ⚠️ PASS") and "**Earlier checkpoints:** checkpoint-300 is poisoned" in markdown
    import json

    assert json.loads(run("scan", str(run_dir), "--json").output)["run"]["bad_behind"] == ["checkpoint-300"]
    assert nandoctor.scan_run(DEMO_RUN, device="cpu").bad_behind() == []  # (a failing run: its next steps say it)
    quiet = run("scan", str(run_dir), "--quiet").output  # (a new user's trial: --quiet said "first bad" alone)
    assert quiet.startswith("PASS CLEAN") and " · but checkpoint-300 is poisoned: do not load or resume from it" in quiet


def test_a_trainer_checkpoint_set_aside_as_the_next_steps_say_is_no_checkpoint_to_transformers_rotation(run_dir):
    """A new user's trial: `mv checkpoint-30 checkpoint-30-bad` as the next steps said; transformers' rotation
    (save_total_limit) lists checkpoint-* and read the step in checkpoint-30-bad, so it deleted the healthy
    checkpoint-20 and kept the bad copy. The bad copy is now bad-checkpoint-N, and a folder that rotation would count
    is named in a note."""
    from transformers.trainer_utils import rotate_checkpoints

    fixed = run_dir / "checkpoint-300-fixed"
    assert run("repair", str(run_dir / "checkpoint-300"), "--from", "auto", "--out", str(fixed), "-q").exit_code == 0
    move = next(line.strip() for line in run("scan", str(run_dir)).output.splitlines() if line.strip().startswith("mv "))
    assert move == f"mv {run_dir}/checkpoint-300 {run_dir}/bad-checkpoint-300 && mv {fixed} {run_dir}/checkpoint-300"
    (run_dir / "checkpoint-300").rename(run_dir / "bad-checkpoint-300")
    fixed.rename(run_dir / "checkpoint-300")
    assert run("scan", str(run_dir), "-q").exit_code == 0
    rotate_checkpoints(str(run_dir), 2)  # (the oracle: what a Trainer with save_total_limit=2 keeps)
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == ["bad-checkpoint-300", "checkpoint-200",
                                                                       "checkpoint-300"]

    (run_dir / "bad-checkpoint-300").rename(run_dir / "checkpoint-300-bad")  # (as older advice named it)
    said = " ".join(run("scan", str(run_dir)).output.split())
    assert ("transformers' Trainer counts checkpoint-300-bad among the checkpoints its save_total_limit rotation "
            "keeps") in said


def test_resuming_an_earlier_trainer_checkpoint_says_to_move_the_later_bad_ones_aside(run_dir):
    """A new user's trial: "resume from checkpoint-15", and nothing said of the diverged checkpoint-60 beside it; a
    later resume_from_checkpoint=True resumed checkpoint-60 (transformers' get_last_checkpoint takes the highest
    step), trained on NaN, and the save_total_limit rotation deleted the healthy checkpoints."""
    import subprocess

    from transformers.trainer_utils import get_last_checkpoint

    said = " ".join(run("scan", str(run_dir)).output.split())
    move = f"mv {run_dir}/checkpoint-300 {run_dir}/bad-checkpoint-300"
    assert f"before resuming from checkpoint-200, move the later checkpoint(s) out of Trainer's way" in said
    assert said.endswith(move)
    assert get_last_checkpoint(str(run_dir)) == str(run_dir / "checkpoint-300")
    assert subprocess.run(["bash", "-c", move]).returncode == 0
    assert get_last_checkpoint(str(run_dir)) == str(run_dir / "checkpoint-200")  # the oracle: what a resume takes now
    assert run("scan", str(run_dir), "-q").exit_code == 0


def test_a_final_model_holding_an_earlier_checkpoints_weights_says_so(tmp_path):
    """A real-training trial: load_best_model_at_end saved checkpoint-10's weights as the final model (byte-identical,
    eval loss 4.24 where checkpoint-40 scored 2.14), and the run read "last healthy: final" without a word. A real
    Trainer whose best checkpoint is its first (greater_is_better on the eval loss) makes one; the run says whose
    weights the final model holds; a final model of the newest weights says nothing."""
    pytest.importorskip("transformers")
    from transformers import Trainer, TrainingArguments

    from tests.pattern_runs import PatternTokens, tiny_llama

    def trained(out, best_first: bool):
        arguments = dict(output_dir=str(out), max_steps=30, save_steps=10, eval_steps=10, eval_strategy="steps",
                         per_device_train_batch_size=8, learning_rate=1e-2, report_to="none", use_cpu=True, seed=0,
                         disable_tqdm=True, lr_scheduler_type="constant", load_best_model_at_end=best_first,
                         metric_for_best_model="eval_loss", greater_is_better=best_first)
        trainer = Trainer(model=tiny_llama(0), args=TrainingArguments(**arguments), train_dataset=PatternTokens(seed=0),
                          eval_dataset=PatternTokens(seed=5))
        trainer.train()
        trainer.save_model(str(out))
        return out

    best = trained(tmp_path / "best", True)
    assert (best / "model.safetensors").read_bytes() == (best / "checkpoint-10" / "model.safetensors").read_bytes()
    run = nandoctor.scan_run(best)
    final = run.checkpoints[-1]
    assert final.final and final.weights_of == "checkpoint-10"
    assert any(n.startswith("final: the weights of checkpoint-10, not of the newest checkpoint-30") for n in run.notes)
    from nandoctor.report.json_report import run_to_json

    assert run_to_json(run)["run"]["checkpoints"][-1]["weights_of"] == "checkpoint-10"
    newest = nandoctor.scan_run(trained(tmp_path / "newest", False))
    assert newest.checkpoints[-1].final and newest.checkpoints[-1].weights_of is None
    assert not any("the weights of" in n for n in newest.notes)


def test_a_run_whose_weights_never_changed_warns_that_it_did_not_train(tmp_path):
    """A real-training trial: a Trainer run at learning rate 0 saved byte-identical weights at every step and read ✓
    CLEAN without a word (its loss stayed at the untrained model's). Its saves' weights all agree: the run warns (⚠
    PASS, exit 0); a run that trained says nothing."""
    pytest.importorskip("transformers")
    from nandoctor.report.json_report import run_to_json
    from nandoctor.report.run_report import one_line
    from tests.pattern_runs import train

    train(tmp_path / "dead", steps=30, save_steps=10, learning_rate=0.0)
    assert (tmp_path / "dead" / "checkpoint-10" / "model.safetensors").read_bytes() == \
        (tmp_path / "dead" / "checkpoint-30" / "model.safetensors").read_bytes()  # (the oracle: nothing trained)
    dead = nandoctor.scan_run(tmp_path / "dead")
    assert dead.exit_code() == 0 and dead.unchanged == ("checkpoint-10", "checkpoint-30") and dead.reported_only()
    assert "the weights did not change from checkpoint-10 to checkpoint-30: the run did not train" in one_line(dead)
    assert run_to_json(dead)["run"]["unchanged"] == ["checkpoint-10", "checkpoint-30"]
    # (a census that agrees is no proof: a pure-bf16 run's small steps move no tensor's largest value, zero count or
    # bulk, a false-alarm hunt's "did not train"; one element moved inside the bulk reads so, and says nothing)
    import torch
    from safetensors.torch import load_file, save_file

    newest = tmp_path / "dead" / "checkpoint-30" / "model.safetensors"
    tensors = load_file(str(newest))
    weight = tensors["model.layers.0.mlp.up_proj.weight"]
    small = int(torch.argmin(weight.abs()))
    weight.view(-1)[small] *= 0.5
    save_file(tensors, str(newest), metadata={"format": "pt"})
    moved = nandoctor.scan_run(tmp_path / "dead")
    first, last = (runs._census(c.report, weights_only=True) for c in (moved.checkpoints[0], moved.checkpoints[-1]))
    assert first == last  # (the census agrees: the bytes tell)
    assert moved.unchanged is None and not moved.reported_only()
    train(tmp_path / "alive", steps=30, save_steps=10, learning_rate=1e-3)
    alive = nandoctor.scan_run(tmp_path / "alive")
    assert alive.exit_code() == 0 and alive.unchanged is None and not alive.reported_only()


def test_diverged_checkpoints_behind_a_passing_one_are_said_in_one_clause():
    """A trial: a reused output folder's four diverged checkpoints before a healthy newest one each repeated "is
    diverged: delete it (a repair would only stitch …)" on the verdict's line."""
    from nandoctor.report.run_report import bad_behind_words

    rows = [runs.RunCheckpoint(step, f"run/checkpoint-{step}", runs.DIVERGED, None) for step in (10, 20, 30, 40)]
    said = bad_behind_words(rows)
    assert said == ("checkpoint-10, checkpoint-20, checkpoint-30 and 1 more are diverged: delete them (a repair would "
                    "only stitch a broken model together)")
    assert bad_behind_words(rows[:1]).startswith("checkpoint-10 is diverged: delete it (")


def test_two_training_runs_written_into_one_folder_are_said(tmp_path):
    """A trial: a second run overwrote checkpoint-10 to -40 of a first one whose checkpoint-50 stayed, and decided,
    without a word that the rows came from two runs. Their trainer logs begin with other losses: a note says so."""
    pytest.importorskip("transformers")
    from tests.pattern_runs import train

    folder = tmp_path / "output"
    train(folder, steps=30, save_steps=10, learning_rate=1e-3)
    train(folder, steps=20, save_steps=10, learning_rate=1e-2, seed=1)  # (overwrites checkpoint-10 and -20)
    run = nandoctor.scan_run(folder)
    said = [n for n in run.notes if n.startswith("the trainer logs begin differently")]
    assert len(said) == 1 and "checkpoint-10, checkpoint-20 from loss" in said[0] and "checkpoint-30 from loss" in said[0]
    one = tmp_path / "one"
    train(one, steps=30, save_steps=10, learning_rate=1e-3)
    assert not any(n.startswith("the trainer logs begin differently") for n in nandoctor.scan_run(one).notes)
