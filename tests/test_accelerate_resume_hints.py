"""The repair and put-in-place commands for accelerate's ``automatic_checkpoint_naming`` saves, followed verbatim,
with accelerate's own ``load_state()`` as the oracle.

A trial: the suggested ``--out checkpoints/checkpoint_2-repaired`` and the put-in-place ``mv … checkpoint_2-bad``
both stayed inside ``checkpoints/``, where ``load_state()`` resumes the folder whose name's first number is the
largest: ``checkpoint_2-bad`` tied with ``checkpoint_2``, and the run resumed the poisoned copy (NaN three steps on)
while ``nandoctor scan`` of the run said CLEAN. Both go beside ``checkpoints/`` now.
"""

from __future__ import annotations

import shlex
import subprocess

import pytest

torch = pytest.importorskip("torch")
accelerate = pytest.importorskip("accelerate")

import nandoctor  # noqa: E402
from tests.conftest import run_cli  # noqa: E402


def _accelerator(project):
    from accelerate.utils import ProjectConfiguration

    torch.manual_seed(0)
    acc = accelerate.Accelerator(cpu=True, project_config=ProjectConfiguration(
        project_dir=str(project), automatic_checkpoint_naming=True))
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return acc, *acc.prepare(model, optimizer)


def _three_saves(project, poison) -> None:
    """Three accelerate save_state() of a training run, ``poison`` applied to a weight before the last."""
    acc, model, optimizer = _accelerator(project)
    for save in range(3):
        model(torch.randn(4, 8)).pow(2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        if save == 2:
            with torch.no_grad():
                poison(model[2].weight)
        acc.save_state()


def test_the_suggested_commands_leave_accelerates_resume_on_the_repaired_state(tmp_path):
    project = tmp_path / "project"
    _three_saves(project, lambda weight: weight.__setitem__((1, 3), float("inf")))
    bad = project / "checkpoints" / "checkpoint_2"
    scanned = run_cli("scan", bad)
    assert scanned.exit_code == 1
    command = " ".join(scanned.output.split()).split("next: restore the bad tensors from an earlier checkpoint with ", 1)[1]
    assert command.startswith("nandoctor repair ") and f"--out {project / 'checkpoint_2-repaired'}" in command
    assert run_cli(*shlex.split(command)[1:]).exit_code == 0
    # (the run's next step is the verified repair's mv alone: a trial's also told to move the saves after checkpoint_1
    # out and resume it, which would set the repair aside again)
    run_next = " ".join(run_cli("scan", project / "checkpoints").output.split())
    assert "is a verified repair of checkpoint_2" in run_next and "move the saves after" not in run_next
    with pytest.raises(nandoctor.NonFiniteWeightsError) as caught:
        nandoctor.assert_finite(bad)
    subprocess.run(caught.value.hint.split("put it in its place: ", 1)[1], shell=True, check=True)
    assert sorted(p.name for p in (project / "checkpoints").iterdir()) == ["checkpoint_0", "checkpoint_1", "checkpoint_2"]
    assert (project / "checkpoint_2-bad").is_dir()
    assert run_cli("scan", project / "checkpoints", "-q").exit_code == 0
    # the project folder is the run of checkpoints/, the copy set aside beside it no row of it (a note)
    whole = " ".join(run_cli("scan", project).output.split())
    assert "✓ PASS newest checkpoint_2: CLEAN" in whole and "not part of the timeline: checkpoint_2-bad/" in whole

    again, model2, optimizer2 = _accelerator(project)
    again.load_state()  # accelerate's own "resume the latest"
    assert all(bool(torch.isfinite(p).all()) for p in model2.parameters())
    for _ in range(3):
        model2(torch.randn(4, 8)).pow(2).sum().backward()
        optimizer2.step()
        optimizer2.zero_grad()
    assert all(bool(torch.isfinite(p).all()) for p in model2.parameters())


def test_a_serving_gate_over_nan_moments_says_so_and_can_check_the_weights_alone(tmp_path):
    """A trial: assert_finite on an accelerate save whose only NaN was an Adam moment raised "tensors hold NaN/Inf"
    with no way to gate the weights alone (the CLI has --exclude): a serving script's false alarm."""
    project = tmp_path / "project"
    acc, model, optimizer = _accelerator(project)
    model(torch.randn(4, 8)).pow(2).sum().backward()
    optimizer.step()
    next(iter(optimizer.state.values()))["exp_avg_sq"].view(-1)[0] = float("nan")
    acc.save_state()
    saved = project / "checkpoints" / "checkpoint_0"
    with pytest.raises(nandoctor.NonFiniteWeightsError) as caught:
        nandoctor.assert_finite(saved)
    assert "only optimizer state holds NaN/Inf" in caught.value.message
    assert "exclude=['optimizer.*']" in caught.value.hint and "nandoctor repair" in caught.value.hint
    report = nandoctor.assert_finite(saved, exclude=["optimizer.*"])
    assert report.verdict == "CLEAN" and report.extra["excluded"]["exclude"] == ["optimizer.*"]


def test_resuming_an_earlier_accelerate_save_as_the_run_scan_says_works(tmp_path):
    """A trial: the run's advice "resume from checkpoints/checkpoint_1" left accelerate's load_state() taking the newest,
    poisoned save, and an explicit load_state(path) left its save counter at 0 (the next save_state() refused:
    checkpoint_0 already exists). The run scan says both, and following it resumes and saves."""
    import re

    project = tmp_path / "project"
    _three_saves(project, lambda weight: weight.fill_(float("nan")))  # (diverged: a repair refused, resume instead)
    said = " ".join(run_cli("scan", project / "checkpoints").output.split())
    assert "accelerate resumes the newest save in checkpoints/" in said
    iteration = int(re.search(r"accelerator\.project_configuration\.iteration = (\d+)", said).group(1))
    assert iteration == 2 and "move the saves after checkpoint_1 out of checkpoints/" in said
    (project / "checkpoints" / "checkpoint_2").rename(project / "checkpoint_2-bad")
    again, model2, optimizer2 = _accelerator(project)
    again.load_state()
    again.project_configuration.iteration = iteration
    model2(torch.randn(4, 8)).pow(2).sum().backward()
    optimizer2.step()
    again.save_state()
    assert sorted(p.name for p in (project / "checkpoints").iterdir()) == ["checkpoint_0", "checkpoint_1", "checkpoint_2"]
    assert all(bool(torch.isfinite(p).all()) for p in model2.parameters())
    assert run_cli("scan", project / "checkpoints", "-q").exit_code == 0


@pytest.mark.parametrize("final", ["save_model", "save_pretrained"])
def test_an_accelerate_project_folder_is_the_run_of_its_checkpoints_and_final_model(tmp_path, final):
    """A review: the project folder of accelerate's automatic_checkpoint_naming (checkpoints/checkpoint_N, and the
    final model saved beside them into final_model/) exited 3, "checkpoints/ holds a run"; it is that run, its final
    model a row that decides with the newest checkpoint."""
    from safetensors.torch import load_file, save_file

    project = tmp_path / "project"
    _three_saves(project, lambda weight: None)
    acc, model, _ = _accelerator(project)
    acc.load_state()
    if final == "save_model":  # (accelerate's own: model.safetensors alone)
        acc.save_model(model, project / "final_model")
    else:  # (a transformers model's: config.json beside it)
        from transformers import GPT2Config, GPT2LMHeadModel

        GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=16)).save_pretrained(
            project / "final_model")
    run = nandoctor.scan_run(project)
    assert [(c.name, c.status) for c in run.checkpoints] == [
        ("checkpoint_0", "clean"), ("checkpoint_1", "clean"), ("checkpoint_2", "clean"), ("final_model/", "clean")]
    assert run_cli("scan", project, "-q").exit_code == 0
    weights = project / "final_model" / "model.safetensors"
    tensors = load_file(weights)
    name = next(k for k, v in tensors.items() if v.dim() == 2)
    tensors[name][0, 0] = float("nan")
    save_file(tensors, weights, metadata={"format": "pt"})
    result = run_cli("scan", project)
    said = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert "✗ FAIL final_model/: NON-FINITE (POISONED)" in said and "last healthy: checkpoint_2" in said
    # (nothing after checkpoint_2 to move out of checkpoints/: the resume advice says no more)
    assert "move the saves after" not in said
    # (accelerate's save_model is the checkpoints' model, whose healthy tensors they hold; another model's, not)
    donors = "--from auto" if final == "save_model" else "--from <"
    assert f"nandoctor repair {project / 'final_model'} {donors}" in said


def test_the_no_trainer_examples_step_folders_are_a_run(tmp_path):
    """accelerate's no_trainer examples save ``save_state(f"{output_dir}/step_{completed_steps}")``: a real run's folder
    of step_N saves was refused (exit 3, "subfolder(s) hold weights") and its healthy twin with it. It is a run: the
    timeline, the last healthy save, and the clipping advice in accelerate's own words."""
    torch.manual_seed(0)
    acc = accelerate.Accelerator(cpu=True)  # (no automatic naming: the examples name each save themselves)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    model, optimizer = acc.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    run = tmp_path / "run"
    for step in (10, 20, 30):
        model(torch.randn(4, 8)).pow(2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        if step == 30:  # (a blow-up: every weight exploded)
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.mul_(1e30)
        acc.save_state(str(run / f"step_{step}"))
    (run / "step_40").mkdir()  # (a loop's per-step samples: no save, no row; a review's run exited 3, INCOMPLETE)
    (run / "step_40" / "generations.json").write_text('{"text": "sample"}')
    report = nandoctor.scan_run(run)
    assert [c.name for c in report.checkpoints] == ["step_10", "step_20", "step_30"]
    assert report.last_clean is not None and report.last_clean.name == "step_20" and report.exit_code() == 1
    output = " ".join(run_cli("scan", run).output.split())
    assert f"resume training from the last healthy checkpoint, {run / 'step_20'}" in output
    assert "accelerator.clip_grad_norm_" in output and "gradient_clip_val" not in output
