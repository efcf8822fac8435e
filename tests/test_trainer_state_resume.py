"""A trainer_state.json Trainer cannot resume from keeps its checkpoint from being the run's resume point.

An adversarial round: checkpoint-4 of a real Trainer run with trainer_state.json ``{}``, and one with an extra key
``"bogus_key"``, were named "last healthy" and the resume point; ``Trainer.train(resume_from_checkpoint=...)`` raised
on both (``TypeError``: ``None // int`` in compare_trainer_and_checkpoint_args, ``unexpected keyword argument`` in
TrainerState.load_from_json). The oracle here is that resume itself, on a real tiny Trainer run; the files the
installed Trainer writes are the no-false-alarm cases.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import nandoctor  # noqa: E402
from nandoctor.checkpoint.runs import INCOMPLETE  # noqa: E402
from nandoctor.checkpoint.trainerstate import _USED, FIELDS, resume_problem  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.pattern_runs import PatternTokens, tiny_llama, train  # noqa: E402

STEPS, EVERY = 6, 2


@pytest.fixture(scope="module")
def trainer_run(tmp_path_factory) -> Path:
    """A real Trainer run of the tiny Llama: checkpoint-2, -4, -6 as the installed transformers writes them."""
    out = tmp_path_factory.mktemp("trainer") / "run"
    train(out, steps=STEPS, save_steps=EVERY, learning_rate=1e-3, optim="adamw_torch")
    return out


def _resume(checkpoint: Path, out: Path) -> int:
    """Resume the run from ``checkpoint`` to STEPS with a real Trainer; the optimizer steps it took (a resume from
    checkpoint-4 takes 2)."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Count(TrainerCallback):
        steps = 0

        def on_step_end(self, args, state, control, **kwargs):
            Count.steps += 1

    args = TrainingArguments(output_dir=str(out), max_steps=STEPS, save_strategy="no", logging_steps=1,
                             per_device_train_batch_size=8, report_to="none", use_cpu=True, disable_tqdm=True,
                             lr_scheduler_type="constant", learning_rate=1e-3, optim="adamw_torch")
    Trainer(model=tiny_llama(), args=args, train_dataset=PatternTokens(), callbacks=[Count()]).train(
        resume_from_checkpoint=str(checkpoint))
    return Count.steps


def test_the_fields_are_those_of_the_installed_trainer_state():
    from transformers import TrainerState

    installed = {f.name for f in dataclasses.fields(TrainerState)}
    assert installed <= FIELDS, installed - FIELDS  # (a field of a newer transformers: add it to FIELDS)
    assert set(_USED) <= installed


def test_the_installed_trainer_s_files_resume_and_raise_no_alarm(trainer_run, tmp_path):
    for step in range(EVERY, STEPS + 1, EVERY):
        state = json.loads((trainer_run / f"checkpoint-{step}" / "trainer_state.json").read_text())
        assert resume_problem(state) is None, (step, resume_problem(state))
    run = nandoctor.scan_run(trainer_run, device="cpu")
    assert [c.status for c in run.checkpoints if c.status == INCOMPLETE] == []
    assert run.last_healthy is not None and run.last_healthy.name == f"checkpoint-{STEPS}"
    assert nandoctor.scan(trainer_run / "checkpoint-4", device="cpu").exit_code == 0
    assert _resume(trainer_run / "checkpoint-4", tmp_path / "resumed") == STEPS - 4  # (the oracle: it resumes)


def _without(key):
    def change(state):
        del state[key]
    return change


def _set(key, value):
    def change(state):
        state[key] = value
    return change


# (name, the change to checkpoint-4's trainer_state.json, the key nandoctor names, what the real resume does)
BROKEN = [
    ("empty", lambda state: state.clear(), "global_step", TypeError),
    ("extra_key", _set("bogus_key", 1), "bogus_key", TypeError),
    ("batch_size_null", _set("train_batch_size", None), "train_batch_size", TypeError),
    ("batch_size_gone", _without("train_batch_size"), "train_batch_size", TypeError),
    ("step_text", _set("global_step", "4"), "global_step", TypeError),
    ("callbacks_list", _set("stateful_callbacks", [{"args": {}}]), "stateful_callbacks", TypeError),
    ("log_object", _set("log_history", {}), "log_history", AttributeError),
    ("flos_null", _set("total_flos", None), "total_flos", TypeError),
    ("best_checkpoint_list", _set("best_model_checkpoint", []), "best_model_checkpoint", TypeError),
    ("step_gone", _without("global_step"), "global_step", None),  # resumes, but from step 0: all STEPS again
]


@pytest.mark.parametrize(("name", "change", "key", "raised"), BROKEN, ids=[b[0] for b in BROKEN])
def test_a_trainer_state_trainer_cannot_resume_from_is_no_resume_point(trainer_run, tmp_path, name, change, key,
                                                                       raised):
    run = tmp_path / "run"
    shutil.copytree(trainer_run, run)
    path = run / "checkpoint-4" / "trainer_state.json"
    state = json.loads(path.read_text())
    change(state)
    path.write_text(json.dumps(state))
    # the oracle: the real resume raises, or (global_step gone) starts over at step 0
    if raised is not None:
        with pytest.raises(raised):
            _resume(run / "checkpoint-4", tmp_path / "resumed")
    else:
        assert _resume(run / "checkpoint-4", tmp_path / "resumed") == STEPS
    problem = resume_problem(state)
    assert problem is not None and problem.key == key, problem
    # in its run: not the resume point (checkpoint-6 poisoned below, so the run names one)
    scanned = nandoctor.scan_run(run, device="cpu")
    (four,) = [c for c in scanned.checkpoints if c.name == "checkpoint-4"]
    assert four.status == INCOMPLETE and f"trainer_state.json {problem.words}" in four.incomplete[0]
    assert scanned.last_healthy is not None and scanned.last_healthy.name == "checkpoint-6"
    _poison(run / "checkpoint-6")
    console = run_cli("scan", run, "--no-progress")
    text = " ".join(console.output.split())
    assert "last healthy: checkpoint-2" in text and f"resume from {run / 'checkpoint-2'}" in text, console.output
    assert f"incomplete: checkpoint-4: trainer_state.json {problem.words}" in text and repr(key) in text
    # alone: exit 3, naming the file, with what to do
    alone = nandoctor.scan(run / "checkpoint-4", device="cpu")
    assert alone.exit_code == 3 and alone.errors[0].path == str(path) and problem.fix in alone.errors[0].hint


def _poison(checkpoint: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(checkpoint / "model.safetensors"))
    tensors["model.layers.1.self_attn.o_proj.weight"][0, 0] = float("nan")
    save_file(tensors, str(checkpoint / "model.safetensors"), metadata={"format": "pt"})


def test_a_field_of_a_newer_transformers_than_the_list_is_asked_of_the_installed_one(monkeypatch):
    """A trainer_state.json written by a transformers newer than the static list holds a field the list lacks: that
    is no fault where the installed TrainerState has it (every checkpoint of such a run would have lost its resume
    point), and one where it does not."""
    import dataclasses

    from transformers.trainer_callback import TrainerState

    from nandoctor.checkpoint import trainerstate

    newer = dataclasses.make_dataclass("TrainerState", [("future_field", int, dataclasses.field(default=0))],
                                       bases=(TrainerState,))
    state = {"global_step": 4, "train_batch_size": 8, "stateful_callbacks": {}, "future_field": 3}
    monkeypatch.setattr(trainerstate, "_installed_fields", lambda: frozenset(f.name for f in dataclasses.fields(newer)))
    assert trainerstate.resume_problem(state) is None
    newer(**state)  # the oracle: that version loads it
    monkeypatch.setattr(trainerstate, "_installed_fields", lambda: None)  # (no transformers: the list decides)
    problem = trainerstate.resume_problem(state)
    assert problem is not None and problem.key == "future_field"
    with pytest.raises(TypeError):
        TrainerState(**state)  # the oracle: the installed version refuses it


def test_the_newest_checkpoint_s_unresumable_state_is_fixed_in_the_next_step_not_deleted(trainer_run, tmp_path):
    """An adversarial round: the newest checkpoint's trainer_state.json had an extra key, its weights healthy; the next
    step called it "an unfinished save: wait for it to finish, or delete it". It says what fixes the file."""
    run = tmp_path / "run"
    shutil.copytree(trainer_run, run)
    path = run / "checkpoint-6" / "trainer_state.json"
    state = json.loads(path.read_text())
    state["bogus_key"] = 1
    path.write_text(json.dumps(state))
    text = " ".join(run_cli("scan", run, "--no-progress").output.split())
    assert "checkpoint-6: its trainer_state.json has a key TrainerState has no field for ('bogus_key')" in text, text
    assert "delete 'bogus_key' from it" in text and "unfinished save" not in text
