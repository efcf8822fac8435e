"""Terminal output of runs and repairs, as a user sees it (issue 13, item 3): the progress bar never
glued into the report, trainer-log steps placed one by one, a free --out in hints, what was not
scanned, --quiet saying why in its one line, repair tables never cutting names."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nandoctor
from nandoctor.hints import repair_command_for
from tests.conftest import run_cli as run  # noqa: E402

from .conftest import DEMO_RUN


def test_progress_bar_is_gone_before_the_run_report_is_printed(tmp_path):
    # On a terminal (a real pty) the bar is drawn on stderr; the report must come after its last frame.
    main, secondary = pty.openpty()
    env = {**os.environ, "COLUMNS": "200", "TERM": "xterm"}
    env.pop("NANDOCTOR_NO_PROGRESS", None)
    proc = subprocess.Popen([sys.executable, "-m", "nandoctor", "scan", str(DEMO_RUN)], stdin=secondary,
                            stdout=secondary, stderr=secondary, env=env, cwd=Path(__file__).parent.parent)
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    text = b"".join(chunks).decode("utf-8", "replace")
    assert "Timeline" in text
    if "scanning" in text:  # the bar was drawn at all
        assert text.rindex("scanning") < text.index("Timeline")


def test_trainer_log_steps_are_placed_one_by_one(tmp_path):

    from nandoctor.checkpoint.runs import RunCheckpoint, RunReport, TrainLog
    from nandoctor.report.run_report import explanations

    checkpoints = tuple(RunCheckpoint(s, f"/r/checkpoint-{s}", "clean", None) for s in (4, 8, 12))
    log = TrainLog("/r/trainer_state.json", 13, 13, ("grad_norm",), 10)
    text = "\n".join(line for _, line in explanations(RunReport("/r", checkpoints, log)))
    assert "grad_norm NaN/Inf first at step 13 (after checkpoint-12, the newest checkpoint)" in text
    assert "loss exactly 0.0 from step 10 (between checkpoint-8 and checkpoint-12)" in text


def test_a_finite_trainer_log_names_only_the_series_it_has(tmp_path):
    """Lightning's metrics.csv logs train_loss and no grad_norm: the line says "train_loss finite", not
    "loss and grad_norm finite"; a trainer_state.json with both names both."""
    import json

    from nandoctor.checkpoint.runs import RunCheckpoint, RunReport
    from nandoctor.checkpoint.trainlog import read_metrics_csv, read_train_log
    from nandoctor.report.run_report import explanations

    (tmp_path / "metrics.csv").write_text("epoch,step,train_loss\n0,0,2.5\n0,1,2.25\n0,2,2.0\n")
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": [
        {"step": 5, "loss": 2.0, "grad_norm": 1.5}, {"step": 10, "loss": 1.5, "grad_norm": 1.0}]}))
    (tmp_path / "loss_only.json").write_text(json.dumps({"log_history": [{"step": 5, "loss": 2.0}]}))
    table = read_metrics_csv(tmp_path / "metrics.csv")
    assert table is not None
    checkpoints = (RunCheckpoint(2, str(tmp_path / "epoch=0-step=2.ckpt"), "clean", None),)
    expected = {table.train_log(): "train_loss finite up to step 2",
                read_train_log(tmp_path / "trainer_state.json"): "loss and grad_norm finite up to step 10",
                read_train_log(tmp_path / "loss_only.json"): "loss finite up to step 5"}
    for log, said in expected.items():
        assert explanations(RunReport(str(tmp_path), checkpoints, log)) == [("dim", f"trainer log ({log.source}): {said}")]


def test_repair_hint_names_an_out_that_does_not_exist(tmp_path):
    target = tmp_path / "run" / "checkpoint-300"
    target.mkdir(parents=True)
    (tmp_path / "run" / "repaired-checkpoint-300").mkdir()
    assert repair_command_for(str(target)).endswith(f"--out {target.with_name('repaired-' + target.name)}-2")
    (tmp_path / "run" / "repaired-checkpoint-300-2").mkdir()
    assert repair_command_for(str(target)).endswith(f"--out {target.with_name('repaired-' + target.name)}-3")


def test_a_file_of_a_checkpoint_folder_is_repaired_beside_the_folder_not_into_it(tmp_path):
    """Scanning run/checkpoint-300/model-0000x.safetensors suggests --out run/repaired-checkpoint-300-<file>
    (never a folder inside the checkpoint, nor repaired-checkpoint-300, the run view's name for a repair of
    the whole checkpoint); a file of a plain folder keeps its sibling name; the suggested repair works."""
    import shlex
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(DEMO_RUN, run_dir)
    shard = run_dir / "checkpoint-300" / "model-00002-of-00002.safetensors"
    result = run("scan", shard, "--no-progress")
    assert result.exit_code == 1
    command = "nandoctor repair " + " ".join(result.output.split("nandoctor repair ")[1].split())
    out = run_dir / "repaired-checkpoint-300-model-00002-of-00002"
    assert command.endswith(f"--out {out}") and "--from auto" in command
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(shard, loose / "weights.safetensors")
    assert repair_command_for(str(loose / "weights.safetensors")).endswith(f"--out {loose / 'weights-repaired'}")
    (loose / "config.json").write_text("{}")  # now a model folder: the --out goes beside it
    assert repair_command_for(str(loose / "weights.safetensors")).endswith(f"--out {tmp_path / 'loose-weights-repaired'}")
    fixed = run(*shlex.split(command)[1:])
    assert fixed.exit_code == 0, fixed.output
    assert (out / shard.name).is_file() and not any(p.is_dir() for p in shard.parent.iterdir())


def test_assert_finite_hint_out_is_free(tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(DEMO_RUN, run_dir)
    target = run_dir / "checkpoint-300"
    (run_dir / "repaired-checkpoint-300").mkdir()
    with pytest.raises(nandoctor.NonFiniteWeightsError) as err:
        nandoctor.assert_finite(str(target))
    assert f"--out {target.with_name('repaired-' + target.name)}-2" in err.value.hint


def test_accelerate_random_states_are_named_as_not_scanned(tmp_path):
    torch = pytest.importorskip("torch")
    accelerate = pytest.importorskip("accelerate")
    model = torch.nn.Linear(4, 2)
    accelerator = accelerate.Accelerator(cpu=True)
    model = accelerator.prepare(model)
    accelerator.save_state(str(tmp_path / "state"))
    names = {p.name for p in (tmp_path / "state").iterdir()}
    assert "random_states_0.pkl" in names
    result = run("scan", str(tmp_path / "state"))
    assert result.exit_code == 0
    assert "not scanned" in result.output and "random_states_0.pkl" in result.output


def test_quiet_says_why_when_the_scan_cannot_start(tmp_path):
    result = run("scan", str(tmp_path / "missing.safetensors"), "-q")
    assert result.exit_code == 3
    first = result.stdout.splitlines()[0] if hasattr(result, "stdout") else result.output.splitlines()[0]
    assert first.startswith("FAIL UNREADABLE") and "no such file or folder" in first
    pointer = tmp_path / "model.safetensors"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 1234\n")
    line = run("scan", str(pointer), "-q").output.splitlines()[0]
    assert line.startswith("FAIL UNREADABLE") and "Git LFS pointer" in line


def test_repair_tables_never_cut_names_in_a_pipe(tmp_path):
    from safetensors.numpy import save_file

    name = "model.layers.0." + "very_long_component_name_" * 6 + "weight"
    good = {name: np.ones((4, 4), np.float32), "lm_head.weight": np.ones((2, 2), np.float32)}
    bad = dict(good)
    bad[name] = good[name].copy()
    bad[name][0, 0] = np.nan
    deep = tmp_path / ("donor_folder_with_a_long_name_" * 3)
    deep.mkdir()
    save_file(good, str(deep / "model.safetensors"))
    (tmp_path / "bad").mkdir()
    save_file(bad, str(tmp_path / "bad" / "model.safetensors"))
    result = run("repair", str(tmp_path / "bad"), "--from", str(deep), "--out", str(tmp_path / "fixed"))
    assert result.exit_code == 0, result.output
    # folded onto more lines, never cut: no ellipsis, and the tensor column's pieces make the whole name
    assert "…" not in result.output
    table = result.output.split("Restored tensors")[1]
    first_column = "".join(line.split("│")[0].strip() for line in table.splitlines() if "│" in line)
    assert first_column == name
