"""Hugging Face ``refs/`` read exactly as huggingface_hub reads them, and run folders whose step is
ambiguous (issue 14, item 6)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from nandoctor.checkpoint import hubcache, runs
from nandoctor.cli import cli
from nandoctor.errors import CheckpointNotFoundError, RepairRefusedError
from tests.conftest import DEMO_RUN
from tests.test_hubcache import COMMIT, OLD_COMMIT, make_hf_repo


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "MODELSCOPE_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.parametrize("content", [
    COMMIT + "\n",  # huggingface_hub would look for snapshots/<hash>\n: no such snapshot
    " " + COMMIT,
    COMMIT.upper(),
    COMMIT[:39],
    "../../../../elsewhere",
    OLD_COMMIT[:20] + "\x00" + OLD_COMMIT[21:],
    "",
])
def test_refs_main_that_is_not_exactly_a_commit_is_refused(tmp_path, monkeypatch, content):
    cache = tmp_path / "hf"
    make_hf_repo(cache, "org/m", bad=False, commit=COMMIT)
    (cache / "models--org--m" / "refs" / "main").write_text(content)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    with pytest.raises(CheckpointNotFoundError, match="not a 40-character commit hash"):
        hubcache.find_hf("org/m", cache=cache)
    result = invoke("scan", "org/m", "-q")
    assert result.exit_code == 3 and "refs/main" in result.output and "Traceback" not in result.output


def test_refs_main_that_is_exactly_a_commit_is_used(tmp_path):
    cache = tmp_path / "hf"
    make_hf_repo(cache, "org/m", bad=True, commit=OLD_COMMIT, ref=None)
    snapshot = make_hf_repo(cache, "org/m", bad=False, commit=COMMIT)
    assert (cache / "models--org--m" / "refs" / "main").read_bytes() == COMMIT.encode()
    assert hubcache.find_hf("org/m", cache=cache).path == snapshot


def test_a_revision_with_a_trailing_newline_is_not_a_commit(tmp_path):
    cache = tmp_path / "hf"
    make_hf_repo(cache, "org/m", bad=False, commit=COMMIT)
    with pytest.raises(CheckpointNotFoundError, match="revision not in the Hugging Face cache"):
        hubcache.find_hf("org/m", COMMIT + "\n", cache=cache)


def two_folders_of_one_step(tmp_path: Path) -> Path:
    run = tmp_path / "output"
    run.mkdir()
    shutil.copytree(DEMO_RUN / "checkpoint-200", run / "checkpoint-200")
    shutil.copytree(DEMO_RUN / "checkpoint-200", run / "checkpoint-300")
    shutil.copytree(DEMO_RUN / "checkpoint-200", run / "checkpoint-0300")
    return run


def test_two_checkpoint_folders_of_one_step_are_a_problem(tmp_path):
    run = two_folders_of_one_step(tmp_path)
    report = runs.scan_run(run, device="cpu")
    assert report.problems == ("checkpoint-0300 and checkpoint-300 are all step 300: Trainer may resume (or rotation "
                               "delete) either one",)
    assert all(c.status == "clean" for c in report.checkpoints) and report.exit_code() == 3
    result = invoke("scan", str(run), "--json")
    assert result.exit_code == 3
    assert json.loads(result.output)["run"]["problems"] == list(report.problems)
    # Every form says it fails, and why (a trial: "PASS CLEAN" and verdict CLEAN with exit code 3)
    assert json.loads(result.output)["summary"]["verdict"] == "AMBIGUOUS RUN"
    text = invoke("scan", str(run))
    assert text.exit_code == 3 and "checkpoint-0300 and checkpoint-300" in text.output
    assert "run: AMBIGUOUS RUN" in text.output and "rename or remove the stray folder, then scan again" in text.output
    quiet = invoke("scan", str(run), "--quiet")
    assert quiet.exit_code == 3 and quiet.output.startswith("FAIL AMBIGUOUS RUN ") and "PASS" not in quiet.output
    markdown = invoke("scan", str(run), "--markdown")
    assert "FAIL AMBIGUOUS RUN" in markdown.output and "PASS" not in markdown.output


def test_distinct_steps_are_no_problem(tmp_path):
    run = two_folders_of_one_step(tmp_path)
    shutil.rmtree(run / "checkpoint-0300")
    report = runs.scan_run(run, device="cpu")
    assert report.problems == () and report.exit_code() == 0


def test_repair_from_auto_refuses_a_run_with_two_folders_of_one_step(tmp_path):
    from nandoctor.restore import repair

    run = two_folders_of_one_step(tmp_path)
    shutil.copytree(DEMO_RUN / "checkpoint-300", run / "checkpoint-400")  # the demo run's poisoned one
    with pytest.raises(RepairRefusedError, match="checkpoint-0300 and checkpoint-300 are all step 300"):
        repair(run / "checkpoint-400", ["auto"], tmp_path / "fixed")
    assert not (tmp_path / "fixed").exists()
