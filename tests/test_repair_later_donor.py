"""A donor saved after the target in its own run is named in a doubt (console, quiet line, proof).

A tester's: `repair run/checkpoint-30 --from run/checkpoint-40` took step 40's tensors with no word, where the docs
call donors earlier checkpoints and `--from auto` never takes a later one (it may carry what damaged the target).
"""

from __future__ import annotations

import json
import shutil

from tests.conftest import DEMO_RUN
from tests.conftest import run_cli as run


def test_a_donor_saved_after_the_target_is_doubted_and_an_earlier_one_or_another_run_s_is_not(tmp_path):
    runs = tmp_path / "run"
    shutil.copytree(DEMO_RUN, runs, ignore=shutil.ignore_patterns("expected.json"))
    shutil.copytree(runs / "checkpoint-200", runs / "checkpoint-400")  # healthy tensors, saved after the target
    shutil.copytree(runs / "checkpoint-200", tmp_path / "other-run" / "checkpoint-400")  # another run's own steps
    later = run("repair", runs / "checkpoint-300", "--from", runs / "checkpoint-400", "--out", tmp_path / "a", "-q",
                "--no-progress")
    assert later.exit_code == 0, later.output
    doubt = (f"donor {runs}/checkpoint-400 was saved at step 400, after the target (step 300): its tensors are a "
             "later state of the run than the rest of the repaired checkpoint")
    assert later.stdout.startswith("REPAIRED") and f"; but {doubt}" in later.stdout, later.stdout
    proof = json.loads((tmp_path / "a" / "nandoctor-repair.json").read_text())
    assert [d for d in proof["donor_doubts"] if d.startswith(doubt)] and [n for n in proof["notes"] if n.startswith(doubt)]
    for donor, out in ((runs / "checkpoint-200", "b"), (tmp_path / "other-run" / "checkpoint-400", "c")):
        fine = run("repair", runs / "checkpoint-300", "--from", donor, "--out", tmp_path / out, "-q", "--no-progress")
        assert fine.exit_code == 0 and "after the target" not in fine.output, fine.output
        assert json.loads((tmp_path / out / "nandoctor-repair.json").read_text())["donor_doubts"] == []
