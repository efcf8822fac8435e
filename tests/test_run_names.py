"""A run's checkpoint whose tensor names differ from its neighbours' (checkpoint/runs.py, renamed_tensors).

A new-user trial: one flipped bit in a safetensors header renamed ``lm_head.weight`` to ``lm_hfad.weight``; the
scan passed it CLEAN, and transformers reported ``lm_head.weight`` missing, initialised it afresh and the eval
loss went from 0.146 to 4.57. The oracle here is ``from_pretrained``'s own loading report (``missing_keys``) and
the eval loss; the fix the hint gives is run and checked with them too.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess

import pytest

pytest.importorskip("transformers")

import nandoctor  # noqa: E402
from nandoctor import verdict  # noqa: E402
from tests.pattern_runs import UNIFORM_LOSS, eval_loss, load, pattern_run  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return pattern_run(tmp_path_factory.mktemp("names"))  # a real Trainer run: checkpoint-10, -20, -30


def _flip_header_bit(path, name: str, char: int, bit: int) -> str:
    """Flip one bit of character ``char`` of ``name`` where the safetensors header of ``path`` spells it; the
    name it now reads."""
    data = bytearray(path.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    at = data.index(json.dumps(name).encode(), 8, 8 + length) + 1 + char
    data[at] ^= 1 << bit
    path.write_bytes(bytes(data))
    return name[:char] + chr(ord(name[char]) ^ (1 << bit)) + name[char + 1:]


def _problems(checkpoint) -> list:
    return [p for p in checkpoint.report.errors if p.kind == verdict.NAMES_KIND]


@pytest.mark.parametrize("step", [30, 20])
def test_a_tensor_renamed_by_a_header_bit_flip_is_a_problem_and_the_hint_fixes_it(trained, tmp_path, step):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    target = run / f"checkpoint-{step}"
    clean_loss = eval_loss(target)
    renamed = _flip_header_bit(target / "model.safetensors", "lm_head.weight", 3, 0)  # "h" -> "i"
    assert renamed == "lm_iead.weight"
    model, info = load(target)  # the oracle: transformers' own loading report
    assert info["missing_keys"] == ["lm_head.weight"] or set(info["missing_keys"]) == {"lm_head.weight"}
    assert abs(eval_loss(model) - UNIFORM_LOSS) < abs(clean_loss - UNIFORM_LOSS) / 2  # near chance, far from trained

    alone = nandoctor.scan(str(target), device="cpu")  # every tensor finite: the names tell, also judged alone
    assert alone.verdict == "TENSOR NAMES CHANGED" and alone.exit_code == 3
    assert nandoctor.scan(str(target / "model.safetensors"), device="cpu").exit_code == 3  # (the file in the folder too)
    scanned = nandoctor.scan_run(str(run), device="cpu")
    rows = {c.step: c for c in scanned.checkpoints}
    assert [s for s, c in rows.items() if _problems(c)] == [step]
    (problem,) = _problems(rows[step])
    assert problem.path == str(target / "model.safetensors")
    # (config.json's model needs lm_head.weight: the folder's own check names the pair before the run compares names)
    assert problem.message.startswith("lm_head.weight is not stored, lm_iead.weight (same shape) is a name the model ")
    assert rows[step].status == "unreadable" and rows[step].report.exit_code == 3
    assert rows[step].report.verdict == "TENSOR NAMES CHANGED"
    assert scanned.exit_code() == (3 if step == 30 else 0)  # the newest decides
    assert scanned.first_bad is not None and scanned.first_bad.step == step  # it loads wrong: bad, not only unread
    assert scanned.last_healthy is not None and scanned.last_healthy.step == (20 if step == 30 else 30)
    from nandoctor.report.run_report import explanations, next_steps

    assert (("bad", f"tensor names changed: checkpoint-{step}: {problem.path}: {problem.message}")
            in explanations(scanned))  # headed by its kind, not "unreadable"
    if step == 30:
        assert next_steps(scanned)[0].startswith(
            "checkpoint-30: weights stored under names its model does not load (see above): ")

    command = problem.hint.split(" with ", 1)[1].rsplit(" and scan again", 1)[0]
    assert command.startswith("python -c ")
    subprocess.run(command, shell=True, check=True)
    model, info = load(target)
    assert not info["missing_keys"] and eval_loss(model) == pytest.approx(clean_loss, abs=1e-6)
    assert not _problems({c.step: c for c in nandoctor.scan_run(str(run), device="cpu").checkpoints}[step])
    assert nandoctor.scan(str(target), device="cpu").exit_code == 0


def test_names_that_change_for_a_reason_are_no_problem(trained, tmp_path):
    """A tensor added from some save on, a run of two checkpoints (which one is odd cannot be told), and a tied
    copy saved once by safetensors between torch files that save both names: none is blamed."""
    import torch
    from safetensors.torch import load_file, save_file

    run = tmp_path / "grown"
    shutil.copytree(trained, run)
    newest = run / "checkpoint-30" / "model.safetensors"
    tensors = load_file(newest)
    tensors["score.weight"] = torch.ones(2, 32)  # a head added for the last save
    save_file(tensors, newest, metadata={"format": "pt"})
    assert not any(_problems(c) for c in nandoctor.scan_run(str(run), device="cpu").checkpoints)
    assert nandoctor.scan(str(newest.parent), device="cpu").exit_code == 0  # judged alone, the same

    pair = tmp_path / "pair"
    pair.mkdir()
    for step in (20, 30):
        shutil.copytree(trained / f"checkpoint-{step}", pair / f"checkpoint-{step}")
    _flip_header_bit(pair / "checkpoint-30" / "model.safetensors", "lm_head.weight", 3, 0)
    found = {c.step: [p.message for p in _problems(c)] for c in nandoctor.scan_run(str(pair), device="cpu").checkpoints}
    # the run's rule blames neither of two; the folder's own config.json names what its model needs (a new-user
    # trial: a checkpoint alone with a renamed weight passed CLEAN, and from_pretrained initialised it at random)
    assert not found[20] and [m.split(":")[0] for m in found[30]] == [
        "lm_head.weight is not stored, lm_iead.weight (same shape) is a name the model does not have"]

    tied = tmp_path / "tied"
    shutil.copytree(trained, tied)
    for config in tied.glob("checkpoint-*/config.json"):  # a tied model's (the trained one is not: its lm_head is its own)
        config.write_text(json.dumps({**json.loads(config.read_text()), "tie_word_embeddings": True}))
    for step in (10, 30):  # torch files of a tied model: both names view one storage
        folder = tied / f"checkpoint-{step}"
        state = {k: v.clone() for k, v in load_file(folder / "model.safetensors").items()}
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
        (folder / "model.safetensors").unlink()
        torch.save(state, folder / "pytorch_model.bin")
    middle = tied / "checkpoint-20" / "model.safetensors"
    tensors = load_file(middle)
    del tensors["lm_head.weight"]  # save_pretrained drops the tied copy
    save_file(tensors, middle, metadata={"format": "pt"})
    assert not any(_problems(c) for c in nandoctor.scan_run(str(tied), device="cpu").checkpoints)
    assert nandoctor.scan(str(middle.parent), device="cpu").exit_code == 0
    untied = tmp_path / "untied"  # the same gap between two safetensors files that hold both: missing
    shutil.copytree(trained, untied)
    shutil.copy(middle, untied / "checkpoint-20" / "model.safetensors")
    rows = nandoctor.scan_run(str(untied), device="cpu").checkpoints
    # config.json says the model is untied: the model it builds needs lm_head.weight (checkpoint/architecture.py),
    # which says so before the run compares names
    assert [c.step for c in rows if c.report.errors] == [20]
    (problem,) = rows[1].report.errors
    assert problem.kind == "unloadable" and "lm_head.weight: config.json's tie_word_embeddings is false" in problem.message
    alone = nandoctor.scan(str(untied / "checkpoint-20"), device="cpu")
    assert alone.exit_code == 3 and alone.errors[0].message == problem.message


def test_one_shard_of_several_is_not_judged_alone_and_tied_storages_are_no_rename(tmp_path):
    """A shard scanned alone (a pre-commit hook's file list) holds the names where the shards were cut, which may move
    between saves (a run resumed with another max_shard_size): it is not compared, its folder is. And a BERT run whose
    saves alternate between .bin (the decoder bias and the prediction bias: one storage, two names) and safetensors
    (one name) renamed nothing (checkpoint-2 of b, s, b, s, b was TENSOR NAMES CHANGED)."""
    import json

    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, BertForMaskedLM

    from tests.conftest import DEMO_RUN

    for step in (100, 200):
        for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
            assert nandoctor.scan(str(DEMO_RUN / f"checkpoint-{step}" / shard), device="cpu").exit_code == 0
    names = [f"model.layers.{i}.mlp.weight" for i in range(9)]
    for step, cuts in ((1, [3, 6]), (2, [3, 6]), (3, [4, 7])):  # the cut moves at checkpoint-3
        folder = tmp_path / "sharded" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        weight_map = {}
        for k, part in enumerate([names[a:b] for a, b in zip([0, *cuts], [*cuts, 9])], 1):
            file = f"model-{k:05d}-of-00003.safetensors"
            save_file({n: torch.randn(16, 16) * 0.02 for n in part}, folder / file, metadata={"format": "pt"})
            weight_map.update({n: file for n in part})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    newest = tmp_path / "sharded" / "checkpoint-3"
    assert nandoctor.scan(str(newest / "model-00002-of-00003.safetensors"), device="cpu").exit_code == 0
    assert nandoctor.scan(str(newest), device="cpu").exit_code == 0

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=64))
    run = tmp_path / "bert"
    for step, kind in enumerate("bsbsb", 1):
        folder = run / f"checkpoint-{step}"
        if kind == "s":
            model.save_pretrained(folder)  # the tied decoder bias saved once
        else:
            model.config.save_pretrained(folder)
            torch.save(model.state_dict(), folder / "pytorch_model.bin")  # both names, one storage
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    assert nandoctor.scan(str(run / "checkpoint-2"), device="cpu").exit_code == 0
    assert not any(_problems(c) for c in nandoctor.scan_run(str(run), device="cpu").checkpoints)


def _plain_run(root, renamed_from: int, steps=(5, 10, 15, 20)):
    """A plain PyTorch loop saving ``checkpoint-N/state.pt`` ({"model", "optimizer"}), its model wrapped by
    torch.compile from step ``renamed_from`` on (its state dict's names then start ``_orig_mod.``)."""
    import torch

    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    optim = torch.optim.Adam(plain.parameters(), lr=1e-3)
    compiled = torch.compile(plain, backend="eager")
    for step in range(1, max(steps) + 1):
        loss = plain(torch.randn(4, 8)).square().mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        if step in steps:
            folder = root / f"checkpoint-{step}"
            folder.mkdir(parents=True)
            model = compiled if step >= renamed_from else plain
            torch.save({"model": model.state_dict(), "optimizer": optim.state_dict()}, folder / "state.pt")
    return root


@pytest.mark.parametrize("renamed_from", [10, 20])
def test_a_rename_from_some_save_on_blames_no_checkpoint_at_the_runs_ends(tmp_path, renamed_from):
    """A trial: torch.compile switched on after the first save (its saves name every weight `_orig_mod.…`) made the
    run's first checkpoint, the only one that loads into the plain model, TENSOR NAMES CHANGED (exit 3), in the run
    and scanned alone; a rename at the newest save did the same to it. A name held on one side only is a renaming
    from some save on; a flipped bit (one character) at the run's end is still damage."""
    import torch

    run = _plain_run(tmp_path / "run", renamed_from)
    first = torch.load(run / "checkpoint-5" / "state.pt", weights_only=True)["model"]
    torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).load_state_dict(first)  # the oracle
    scanned = nandoctor.scan_run(str(run), device="cpu")
    assert not any(_problems(c) for c in scanned.checkpoints) and scanned.exit_code() == 0
    for step in (5, 20):
        assert nandoctor.scan(str(run / f"checkpoint-{step}"), device="cpu").exit_code == 0
    # damage at the run's first save is still told: one name one character off, beside neighbours that agree
    flipped = _plain_run(tmp_path / "flipped", 100)
    state = torch.load(flipped / "checkpoint-5" / "state.pt", weights_only=True)
    state["model"]["2.biar"] = state["model"].pop("2.bias")  # (one character off, as a flipped bit makes it)
    torch.save(state, flipped / "checkpoint-5" / "state.pt")
    rows = {c.step: c for c in nandoctor.scan_run(str(flipped), device="cpu").checkpoints}
    assert [s for s, c in rows.items() if _problems(c)] == [5]
    assert _problems(rows[5])[0].message.startswith("model.2.bias missing")
