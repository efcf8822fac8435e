"""A loss jump no bad checkpoint confirms moves nothing (docs/health.md), but is said: a run whose loss rose ~60x and
stayed up with every weight finite and modest (a trial, lr 3) scanned CLEAN without a word. One spike at the last
logged step, which no later log confirms, is not said: a healthy run's odd batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

import nandoctor  # noqa: E402
from nandoctor.report.run_report import one_line  # noqa: E402


def _run(root: Path, losses: list[float]) -> Path:
    """Checkpoints at steps 2, 4, … holding healthy weights that move a little from save to save (a run whose saves
    hold the same bytes did not train, and says so), each trainer_state.json logging ``losses`` up to its step (a loss
    per step)."""
    torch.manual_seed(0)
    weights = {"model.layers.0.mlp.weight": torch.randn(8, 8) * 0.02, "lm_head.weight": torch.randn(16, 8) * 0.02}
    for step in range(2, len(losses) + 1, 2):
        folder = root / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        save_file({k: v * (1 + 0.01 * step) for k, v in weights.items()}, folder / "model.safetensors")
        history = [{"step": s, "loss": losses[s - 1]} for s in range(1, step + 1)]
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": history}))
    return root


def test_a_loss_that_rose_and_stayed_up_is_said_and_a_last_spike_is_not(tmp_path: Path) -> None:
    risen = nandoctor.scan_run(str(_run(tmp_path / "risen", [7.0, 7.2, 6.9, 7.1, 40.0, 90.0, 200.0, 640.0])))
    assert risen.exit_code() == 0  # (the rule never fails a checkpoint on its own)
    assert one_line(risen).endswith("trainer log: loss 40 at step 5, 5.67x its early 7.05")  # (median of 4)
    spike = nandoctor.scan_run(str(_run(tmp_path / "spike", [7.0, 7.2, 6.9, 7.1, 6.8, 6.7, 6.9, 40.0])))
    assert spike.exit_code() == 0 and "trainer log" not in one_line(spike)
    jumps = [nandoctor.to_json(r)["run"]["train_log"]["loss_jump"] for r in (risen, spike)]
    assert [(j["step"], j["confirmed"]) for j in jumps] == [(5, True), (8, False)]  # (JSON says which)


def test_a_checkpoint_saved_after_the_jump_says_so_when_scanned_alone(tmp_path: Path) -> None:
    """A trial: a run at lr 30 logged 4.6 → 8,000 before its first save; the run scan warned, but each checkpoint
    scanned alone (--quiet, the API) was CLEAN without a word. It stays CLEAN (exit 0) and says it, as the run does."""
    run = _run(tmp_path / "risen", [7.0, 7.2, 6.9, 7.1, 40.0, 90.0, 200.0, 640.0])
    caution = ("but the trainer log's loss jumped to 40 at step 5, 5.67x its early 7.05: the weights saved from step 4 "
               "on made that loss (unless the data changed there); check this checkpoint's loss before using it")
    # (checkpoint-4's own log ends before the jump, which its weights made: the later saves' logs say it; a helper's
    # trial: a checkpoint saved at the jump read CLEAN without a word, the next one with the caution)
    for step, said in ((8, True), (6, True), (4, True), (2, False)):
        report = nandoctor.scan(run / f"checkpoint-{step}", device="cpu")
        line = nandoctor.verdict.one_line(report)
        assert report.exit_code == 0 and line.startswith("PASS CLEAN")
        assert line.endswith(caution) == said, line
    assert nandoctor.to_json(nandoctor.scan(run / "checkpoint-8"))["run"]["loss_jump"] == {
        "step": 5, "loss": 40.0, "early_loss": 7.05, "sustained": True}
    spike = _run(tmp_path / "spike", [7.0, 7.2, 6.9, 7.1, 6.8, 6.7, 6.9, 40.0])
    assert "trainer log" not in nandoctor.verdict.one_line(nandoctor.scan(spike / "checkpoint-8"))


def test_a_pass_beside_a_loss_jump_is_no_green_check(tmp_path: Path) -> None:
    """A new user's trial: a run whose loss went 5 → 7e4 (finite weights, the model's loss 38,563) read "✓ PASS …
    CLEAN" and "✅ PASS CLEAN" beside the warning to look at it first. Every report marks such a pass ⚠, the run's
    and a checkpoint's alike; the exit code stays 0, and a run without a jump keeps its green check."""
    from tests.conftest import run_cli

    run = _run(tmp_path / "risen", [7.0, 7.2, 6.9, 7.1, 40.0, 90.0, 200.0, 640.0])
    for target in (run, run / "checkpoint-8"):
        console = run_cli("scan", str(target))
        assert console.exit_code == 0 and "⚠ PASS" in console.output, console.output
        assert "✓ PASS" not in console.output and "✓ CLEAN" not in console.output
        assert run_cli("scan", str(target), "--markdown").output.startswith("## nandoctor: ⚠️ PASS CLEAN")
        page = tmp_path / "page.html"
        run_cli("scan", str(target), "--html", str(page))
        assert "<b>⚠ PASS CLEAN" in page.read_text()
    steady = _run(tmp_path / "steady", [7.0, 7.2, 6.9, 7.1, 6.8, 6.7, 6.9, 6.5])
    assert "✓ PASS" in run_cli("scan", str(steady)).output
    assert "✓ CLEAN" in run_cli("scan", str(steady / "checkpoint-8")).output


def test_last_healthy_after_the_jump_says_it_is_so_by_its_weights(tmp_path: Path) -> None:
    from nandoctor.report.run_report import after_loss_jump

    risen = nandoctor.scan_run(str(_run(tmp_path / "risen", [7.0, 7.2, 6.9, 7.1, 40.0, 90.0, 200.0, 640.0])))
    assert risen.last_clean.name == "checkpoint-8"
    assert after_loss_jump(risen, risen.last_healthy) == " (by its weights; saved after the loss jump at step 5)"
    steady = nandoctor.scan_run(str(_run(tmp_path / "steady", [7.0, 7.2, 6.9, 7.1, 6.8, 6.7, 6.9, 6.6])))
    assert after_loss_jump(steady, steady.last_healthy) == ""


def test_a_batch_of_one_log_of_easy_and_rare_examples_is_no_sustained_jump(tmp_path: Path) -> None:
    """A false-alarm trial: a healthy classifier trained with batch size 1 (12% rare class) logged 0.68 early, then
    easy and rare examples in turn (0.05, 3.06, 0.05, 2.98, 3.05 …); two rare ones in a row confirmed a "jump", and
    its CLEAN checkpoint got the caution while its data loss had fallen from 0.69 to 0.44. The median from the jump
    on is what says the loss stayed up."""
    import itertools

    early = [0.7, 0.68, 0.69, 0.66, 0.68]
    later = list(itertools.islice(itertools.cycle([0.05, 0.06, 3.06, 0.04, 2.98, 3.05, 0.05, 0.07, 0.05]), 27))
    run = _run(tmp_path / "noisy", early + later)
    report = nandoctor.scan(run / "checkpoint-32", device="cpu")
    log = nandoctor.scan_run(str(run)).log
    assert log is not None and log.loss_jump_confirmed and not log.loss_jump_sustained  # (the jump rule fired)
    assert report.exit_code == 0 and "trainer log" not in nandoctor.verdict.one_line(report)
    assert "trainer log: loss" not in one_line(nandoctor.scan_run(str(run)))


def test_a_resume_point_saved_after_the_jump_is_named_with_the_caution(tmp_path: Path) -> None:
    """A new-user trial: the timeline said "last healthy: checkpoint-20 (by its weights; saved after the loss jump
    at step 3)", and the next step said "then resume from …/checkpoint-20" without a word of it."""
    from nandoctor.report.run_report import next_steps

    run = _run(tmp_path / "risen", [7.0, 7.2, 6.9, 7.1, 40.0, 90.0, 200.0, 640.0])
    (run / "checkpoint-8" / "model.safetensors").unlink()  # the newest save lost its weights: not loadable
    scanned = nandoctor.scan_run(str(run))
    assert scanned.exit_code() == 3 and scanned.last_clean.name == "checkpoint-6"
    said = " ".join(next_steps(scanned))
    assert f"resume from {run / 'checkpoint-6'} (saved after the loss jump at step 5: check its loss first)" in said


def test_a_jump_at_the_last_log_with_grown_weights_is_diverged(tmp_path: Path) -> None:
    """An adversarial round: a run that logs at its saves always has its jump at the newest checkpoint's last log,
    which nothing confirms; at 68x its early loss, with the weights' bulk grown x85, it passed CLEAN without a word.
    From 10x at the last entry, with growth ≥ 32x, it is diverged; the same spike without the growth is not said."""
    root = _run(tmp_path / "run", [7.0, 7.2, 6.9, 7.1, 6.8, 6.7, 6.9, 200.0])
    newest = root / "checkpoint-8" / "model.safetensors"
    from safetensors.torch import load_file

    save_file({name: t * 200 for name, t in load_file(newest).items()}, newest)  # (the update that made the loss)
    run = nandoctor.scan_run(str(root))
    row = run.checkpoints[-1]
    assert row.status == "diverged" and 32 <= (row.baseline_growth or 0) < 256 and run.exit_code() == 1
    from nandoctor import verdict

    alone = nandoctor.scan(root / "checkpoint-8")
    assert alone.health == "diverged" and alone.exit_code == 1
    assert "and the trainer log's loss jumped to 200 at step 8" in verdict.one_line(alone)
    spike = nandoctor.scan(_run(tmp_path / "spike", [7.0, 7.2, 6.9, 7.1, 6.8, 6.7, 6.9, 200.0]) / "checkpoint-8")
    assert spike.exit_code == 0 and "trainer log" not in verdict.one_line(spike)


def test_healthy_rows_saved_after_the_break_are_no_green_check_in_the_timeline(tmp_path: Path) -> None:
    """A helper's trial: the line under the timeline said no checkpoint from the loss jump on was a resume point, while
    their rows read ✓ healthy. They read ⚠ healthy; those before the break keep their check."""
    from nandoctor.report.run_report import status_word

    run = _run(tmp_path / "risen", [7.0, 7.2, 6.9, 7.1, 40.0, 90.0, 200.0, 640.0, 900.0, 950.0])
    bad = {"model.layers.0.mlp.weight": torch.full((8, 8), float("nan")), "lm_head.weight": torch.randn(16, 8) * 0.02}
    save_file(bad, run / "checkpoint-10" / "model.safetensors")
    report = nandoctor.scan_run(str(run))
    rows = {c.name: status_word(c, report.broken_weights_from) for c in report.checkpoints}
    assert rows == {"checkpoint-2": "✓ healthy", "checkpoint-4": "⚠ healthy", "checkpoint-6": "⚠ healthy",
                    "checkpoint-8": "⚠ healthy", "checkpoint-10": "✗ poisoned"}
