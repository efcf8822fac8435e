"""A checkpoint judged the same whichever way its path is spelled.

A new-user trial scanned a checkpoint from inside its folder: ``nandoctor scan .`` passed a checkpoint whose
absolute path failed DIVERGED (the run was found by the folder's name, and ``.`` has none), the console report
ended in "internal error: ValueError: PosixPath('.') has an empty name" (the suggested ``--out``), and
``repair . --from auto`` said the checkpoint was in no run. Every spelling a shell allows is tried here against
the absolute path: the same exit code and verdict, no internal error, and the suggested repair works from
where the user stands.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import nandoctor
from tests.conftest import run_cli


def _grown_run(root: Path) -> Path:
    """checkpoint-1, -2 healthy; checkpoint-3's lm_head 1000x: diverged by growth, no NaN anywhere."""
    rng = np.random.default_rng(0)
    weights = {f"model.layers.{i}.mlp.up_proj.weight": (rng.standard_normal((64, 32)) * 0.02).astype(np.float32)
               for i in range(4)}
    weights["lm_head.weight"] = (rng.standard_normal((100, 32)) * 0.02).astype(np.float32)
    for step, factor in [(1, 1.0), (2, 1.0), (3, 1000.0)]:
        folder = root / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        save_file({k: v * factor if k == "lm_head.weight" else v for k, v in weights.items()},
                  str(folder / "model.safetensors"))
    return root


@pytest.fixture(params=["demo", "grown"])
def checkpoint(request, tmp_path, demo_run) -> Path:
    if request.param == "demo":
        shutil.copytree(demo_run, tmp_path / "run")
        return tmp_path / "run" / "checkpoint-300"
    return _grown_run(tmp_path / "run") / "checkpoint-3"


def _case(quiet_line: str) -> str:
    """``FAIL DIVERGED`` of ``FAIL DIVERGED <path>: …``."""
    return quiet_line.split(":")[0].rsplit(" ", 1)[0]


def _spellings(checkpoint: Path) -> list[tuple[Path, str]]:
    """(working folder, path as typed) for the checkpoint folder, each a different shell spelling."""
    (checkpoint / "sub").mkdir()
    sibling = next(p for p in sorted(checkpoint.parent.iterdir()) if p != checkpoint)
    return [(checkpoint, "."), (checkpoint, "./"), (checkpoint.parent, checkpoint.name),
            (checkpoint / "sub", ".."), (sibling, f"../{checkpoint.name}"), (checkpoint / "sub", "../../" + checkpoint.name)]


def test_every_spelling_of_a_checkpoint_gets_the_verdict_of_its_absolute_path(checkpoint, monkeypatch):
    expected = run_cli("scan", "--quiet", checkpoint)
    assert expected.exit_code == 1
    case = _case(expected.output)
    for where, typed in _spellings(checkpoint):
        monkeypatch.chdir(where)
        quiet = run_cli("scan", "--quiet", typed)
        assert (quiet.exit_code, _case(quiet.output)) == (1, case), (where, typed, quiet.output)
        console = run_cli("scan", typed)
        assert console.exit_code == 1 and "internal error" not in console.output, (where, typed, console.output)
        assert nandoctor.scan(typed, device="cpu").exit_code == 1
        with pytest.raises(nandoctor.NonFiniteWeightsError):
            nandoctor.assert_finite(typed)


def test_the_suggested_repair_works_from_where_the_user_stands(tmp_path, demo_run, monkeypatch):
    shutil.copytree(demo_run, tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoint-300"
    for where, typed in _spellings(checkpoint):
        monkeypatch.chdir(where)
        report = run_cli("scan", typed)
        line = next(line.strip() for line in report.output.splitlines() if line.strip().startswith("nandoctor repair"))
        args = shlex.split(line)[1:]
        out = Path(args[args.index("--out") + 1])
        assert args[1] == (typed.rstrip("/") or typed) and "--from" in args and args[args.index("--from") + 1] == "auto", line
        assert out.resolve().parent == checkpoint.parent, (typed, line)  # beside the checkpoint, never inside it
        done = run_cli(*args)
        assert done.exit_code == 0, (where, typed, done.output)
        assert nandoctor.scan(out, device="cpu").exit_code == 0
        shutil.rmtree(out)


def test_one_shard_named_alone_says_it_is_not_the_whole_checkpoint(tmp_path, demo_run):
    """A trial tab-completed one shard of the demo: PASS CLEAN, no word that the other shard, which its index lists,
    holds every NaN. The verdict (the --quiet line too) says it is one of N shards; a file alone says nothing."""
    import json

    shutil.copytree(demo_run, tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoint-300"
    first = checkpoint / "model-00001-of-00002.safetensors"
    quiet = run_cli("scan", "--quiet", first)
    assert quiet.exit_code == 0 and "one of the 2 shards model.safetensors.index.json lists" in quiet.output, quiet.output
    assert "scan the folder" in run_cli("scan", first).output
    assert json.loads(run_cli("scan", "--json", first).output)["shard_of"] == {
        "index": "model.safetensors.index.json", "shards": 2, "tensors": 195}
    alone = tmp_path / "alone.safetensors"
    shutil.copy(first, alone)
    assert "shards" not in run_cli("scan", "--quiet", alone).output
    assert "shard_of" not in json.loads(run_cli("scan", "--json", alone).output)
    # numbered shards no index lists (a set copied without its index, a GGUF split): the name says how many
    (tmp_path / "bare").mkdir()
    bare = tmp_path / "bare" / first.name
    shutil.copy(first, bare)
    quiet = run_cli("scan", "--quiet", bare)
    assert "one of the 2 numbered shards its name counts: scan the folder" in quiet.output, quiet.output
    assert json.loads(run_cli("scan", "--json", bare).output)["shard_of"] == {"index": None, "shards": 2, "tensors": None}



@pytest.mark.parametrize("raw", [b"esc_\x1b[31mRED", b"bad\xff\xfe"], ids=["escape", "not-utf8"])
def test_a_suggested_command_pasted_into_bash_names_the_very_folder(tmp_path, demo_run, raw):
    """A reports trial: the next: line of a checkpoint whose name holds an escape character read
    `nandoctor repair 'ck/esc_\\x1b[31mRED' …` (printed escaped inside a plain quote): pasted, it named another
    folder ("no such file"). Such names are quoted as bash's $'…', which the escaped print keeps intact."""
    import os
    import subprocess

    shutil.copytree(demo_run, tmp_path / "run")
    odd = os.fsencode(tmp_path / "run") + b"/" + raw
    os.rename(os.fsencode(tmp_path / "run" / "checkpoint-300"), odd)
    report = run_cli("scan", os.fsdecode(odd))
    line = next(line.strip() for line in report.output.splitlines() if line.strip().startswith("nandoctor repair"))
    assert "$'" in line, line
    listed = subprocess.run(["bash", "-c", "ls -d " + line.split()[2]], capture_output=True)
    assert listed.returncode == 0 and listed.stdout.strip() == odd, (line, listed)


def test_a_relative_path_starting_with_a_dash_is_no_option_in_a_suggested_command(tmp_path, demo_run, monkeypatch):
    """An adversarial trial: for a folder named `-tmp`, the suggested `nandoctor repair -tmp/checkpoint-300 …` was
    "No such option: -t" and the `mv -tmp/…` line a usage error. Such a path is written `./-tmp/…`; pasted, the
    suggested repair and then the suggested mv work, and the checkpoint passes."""
    import subprocess

    shutil.copytree(demo_run, tmp_path / "-tmp")
    monkeypatch.chdir(tmp_path)
    line = next(line.strip() for line in run_cli("scan", "--", "-tmp/checkpoint-300").output.splitlines()
                if line.strip().startswith("nandoctor repair"))
    assert line.startswith("nandoctor repair ./-tmp/checkpoint-300 --from auto --out ./-tmp/repaired-checkpoint-300")
    done = subprocess.run(["bash", "-c", line.replace("nandoctor ", f"{sys.executable} -m nandoctor ", 1)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    move = next(line.strip() for line in done.stdout.splitlines() if line.strip().startswith("mv "))
    assert move.startswith("mv ./-tmp/checkpoint-300 ./-tmp/bad-checkpoint-300 && ")
    assert subprocess.run(["bash", "-c", move], cwd=tmp_path).returncode == 0
    assert run_cli("scan", "-q", "./-tmp/checkpoint-300").exit_code == 0


def test_every_suggested_command_writes_a_dash_path_as_no_option(tmp_path, demo_run, monkeypatch):
    """A review: the manifest hint of --verify-hashes still said `nandoctor manifest -m > manifest.json` for a folder
    named `-m` ("No such option: -m"). Pasted, the suggested manifest command runs and writes the manifest."""
    import subprocess

    shutil.copytree(demo_run / "checkpoint-200", tmp_path / "-m")
    monkeypatch.chdir(tmp_path)
    said = run_cli("scan", "--verify-hashes", "--", "-m").output
    command = said[said.index("`nandoctor manifest ") + 1 :].split("`")[0]
    assert command == "nandoctor manifest ./-m > manifest.json", command
    done = subprocess.run(["bash", "-c", command.replace("nandoctor ", f"{sys.executable} -m nandoctor ", 1)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and json.loads((tmp_path / "manifest.json").read_text()), done.stderr


def test_a_checkpoint_named_as_dot_gets_a_move_that_works(tmp_path, demo_run, monkeypatch):
    """A trial: `repair . …` from inside the checkpoint said "to use it in place of :" and `mv . ../…-bad`, which
    bash refuses (the working folder cannot be moved by that name). The checkpoint is named, the move uses its path."""
    import subprocess

    shutil.copytree(demo_run, tmp_path / "run")
    monkeypatch.chdir(tmp_path / "run" / "checkpoint-300")
    done = run_cli("repair", ".", "--from", "../checkpoint-200", "--out", "../checkpoint-300-fixed", "--no-progress")
    said = " ".join(done.output.split())
    assert done.exit_code == 0 and "to use it in place of checkpoint-300:" in said, said
    move = next(line.strip() for line in done.output.splitlines() if line.strip().startswith("mv "))
    assert not move.startswith("mv . ")
    assert subprocess.run(["bash", "-c", move], cwd=tmp_path / "run" / "checkpoint-300").returncode == 0
    assert run_cli("scan", "-q", str(tmp_path / "run" / "checkpoint-300")).exit_code == 0
