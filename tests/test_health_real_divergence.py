"""Health on a run that genuinely diverged: a real ``transformers.Trainer`` (tests/realruns.py).

The tiny Qwen2's head is trained with SGD at a learning rate that makes it diverge: healthy,
then growing by x20-50 a step to finite values of 1e10-1e20, then NaN. nandoctor must say which
checkpoint is the last healthy one, never take a donor tensor from a diverged checkpoint, and the
repaired model must generate.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

import nandoctor  # noqa: E402
from tests.realruns import diverging_trainer_run, generate_ok  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    return diverging_trainer_run(tmp_path_factory.mktemp("run") / "out")


def test_the_timeline_names_the_last_healthy_checkpoint(diverged):
    run = nandoctor.scan_run(str(diverged["output_dir"]), device="cpu")
    by_step = {c.step: c for c in run.checkpoints}
    first_exploded, first_nan = diverged["first_exploded"], diverged["first_nonfinite"]
    assert run.last_healthy is not None and run.last_healthy.step < first_exploded
    assert run.last_healthy.step >= diverged["last_healthy"]  # not earlier than a plainly healthy one
    # the checkpoint whose weights made the loss jump (finite, max |w| ~26, loss 110 against 5) is no resume point
    assert run.broken_weights_from is not None and run.last_healthy.step < run.broken_weights_from
    assert run.last_healthy.step == diverged["last_healthy"]
    for step in range(first_exploded, first_nan):  # finite but exploded: never healthy
        assert by_step[step].status in ("diverged", "poisoned"), (step, by_step[step].status)
        assert "exploded" in {f for t in by_step[step].report.tensors for f in t.findings} or by_step[step].status == "diverged"
    assert all(by_step[s].status != "clean" for s in range(first_nan, max(by_step) + 1))
    assert run.exit_code() == 1


def test_an_exploded_checkpoint_fails_the_gate_though_finite(diverged):
    step = diverged["first_exploded"] + 2
    report = nandoctor.scan(str(diverged["output_dir"] / f"checkpoint-{step}"), device="cpu")
    assert report.nonfinite == 0 and report.exit_code == 1
    assert {t.name for t in report.tensors if "exploded" in t.findings} >= {"lm_head.weight"}
    with pytest.raises(nandoctor.NonFiniteWeightsError, match="exploded"):
        nandoctor.assert_finite(str(diverged["output_dir"] / f"checkpoint-{step}"))


def test_auto_repair_never_takes_a_donor_from_a_bad_checkpoint_and_the_result_generates(diverged, tmp_path):
    out_dir = diverged["output_dir"]
    run = nandoctor.scan_run(str(out_dir), device="cpu")
    newest = run.newest
    first_bad = run.first_bad
    out = tmp_path / "repaired"
    result = nandoctor.repair(newest.path, "auto", str(out))
    assert result.ok, result
    proof = json.loads((out / "nandoctor-repair.json").read_text())
    steps = {r["donor_step"] for r in proof["restored"]}
    assert steps and max(steps) < first_bad.step  # never the first bad checkpoint or later
    # nor one whose weights made the loss jump (finite and modest, but a loss of 110 where the run began at 5)
    assert run.broken_weights_from is not None and max(steps) < run.broken_weights_from
    assert nandoctor.scan(str(out), device="cpu").ok
    assert not generate_ok(newest.path)
    assert generate_ok(out)


def test_a_checkpoint_the_run_calls_diverged_is_diverged_alone_and_repair_refuses_it(diverged, tmp_path):
    """A new-user trial: the run scan called a grown checkpoint diverged, its standalone scan called it
    poisoned and suggested `repair --from auto`, and that repair handed back the donor's weights."""
    out_dir = diverged["output_dir"]
    step = diverged["first_exploded"] + 2
    target = out_dir / f"checkpoint-{step}"
    in_run = {c.step: c for c in nandoctor.scan_run(str(out_dir), device="cpu").checkpoints}[step]
    assert in_run.status == "diverged" and "first healthy checkpoint" in in_run.why
    alone = nandoctor.scan(str(target), device="cpu")
    assert alone.health == "diverged"  # the same run context as the run scan
    from nandoctor.report.summary import next_steps

    assert not any("nandoctor repair" in line for line in next_steps(alone))
    with pytest.raises(nandoctor.RepairRefusedError, match="diverged") as refused:
        nandoctor.repair(str(target), "auto", str(tmp_path / "refused"))
    assert not (tmp_path / "refused").exists()
    # the hint names the checkpoint to resume from, as the run scan does (it sent the user to another command)
    last_healthy = nandoctor.scan_run(str(out_dir), device="cpu").last_healthy
    assert last_healthy is not None
    assert f"resume training from the last healthy checkpoint ({last_healthy.path})" in refused.value.hint
    assert nandoctor.repair(str(target), "auto", str(tmp_path / "anyway"), allow_diverged=True).ok
