"""CLEAN means the model loads: checkpoint folders whose tensors all scan healthy but that transformers cannot load
are exit 3, held to ``from_pretrained`` on real Trainer / save_pretrained output (checkpoint/loadability.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import nandoctor
from tests.conftest import run_cli

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from tests.trainer_checkpoints import loads, trainer_run  # noqa: E402  (needs torch and transformers)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A real Trainer run: checkpoint-2, checkpoint-4, checkpoint-6 of a tiny Llama."""
    return trainer_run(tmp_path_factory.mktemp("trained") / "run")


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    return shutil.copytree(trained, tmp_path / "run")


def _problems(report) -> list[str]:
    return [f"{Path(e.path).name}: {e.message}" for e in report.errors]


def test_a_trainer_checkpoint_whose_model_file_is_gone_is_exit_3_as_from_pretrained_fails(run: Path) -> None:
    newest = run / "checkpoint-6"
    (newest / "model.safetensors").unlink()  # optimizer.pt, scheduler.pt, rng_state.pth, trainer_state.json left
    assert not loads(newest) and loads(run / "checkpoint-4")  # the oracle

    report = nandoctor.scan(newest, device="cpu")
    assert report.exit_code == 3
    assert _problems(report) == [
        "checkpoint-6: holds trainer state (optimizer.pt, rng_state.pth, scheduler.pt) but no model weights: "
        "from_pretrained finds no model.safetensors or pytorch_model.bin, and Trainer's resume_from_checkpoint finds "
        "no valid checkpoint"]
    assert "copy model.safetensors" in report.errors[0].hint
    quiet = run_cli("scan", newest, "--quiet", "--no-progress")
    assert quiet.exit_code == 3 and quiet.output.startswith("FAIL NOT LOADABLE ") and "no model weights" in quiet.output
    assert [e.kind for e in report.errors] == ["unloadable"]  # read fine; it is the folder that would not load
    assert nandoctor.scan(run / "checkpoint-4", device="cpu").exit_code == 0

    timeline = nandoctor.scan_run(run, device="cpu")
    assert [(c.name, c.status) for c in timeline.checkpoints] == [
        ("checkpoint-2", "clean"), ("checkpoint-4", "clean"), ("checkpoint-6", "incomplete")]
    assert any("no model weights" in why for why in timeline.checkpoints[-1].incomplete)
    assert timeline.last_healthy.name == "checkpoint-4" and timeline.exit_code() == 3
    assert not any("resume_from_checkpoint from it would start" in n for n in timeline.notes)  # not "a fresh optimizer"


def _bin_shards(model, folder: Path) -> None:
    """pytorch_model-0000k-of-00002.bin shards and their index, laid out as transformers 4 saved them."""
    model.config.save_pretrained(folder)
    state = model.state_dict()
    names = sorted(state)
    weight_map = {}
    for k, part in enumerate((names[: len(names) // 2], names[len(names) // 2:]), 1):
        shard = f"pytorch_model-{k:05d}-of-00002.bin"
        torch.save({n: state[n].contiguous() for n in part}, folder / shard)
        weight_map.update(dict.fromkeys(part, shard))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_numbered_shards_without_their_index_are_exit_3_as_from_pretrained_fails(trained: Path, tmp_path: Path,
                                                                                 kind: str) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(trained / "checkpoint-4"))
    folder = tmp_path / "model"
    if kind == "safetensors":
        model.save_pretrained(folder, max_shard_size="20KB")
    else:
        folder.mkdir()
        _bin_shards(model, folder)
    index = folder / ("model.safetensors.index.json" if kind == "safetensors" else "pytorch_model.bin.index.json")
    shards = sorted(p.name for p in folder.glob(f"*-of-*.{kind}"))
    assert len(shards) >= 2 and index.is_file()
    assert loads(folder) and nandoctor.scan(folder, device="cpu").exit_code == 0

    index.unlink()
    assert not loads(folder)
    report = nandoctor.scan(folder, device="cpu")
    assert report.exit_code == 3 and len(report.errors) == 1
    assert report.errors[0].path == str(folder / shards[0])
    assert report.errors[0].message.startswith(f"{len(shards)} numbered shards ({shards[0]} …) ")
    assert f"but no {index.name} that lists them" in report.errors[0].message
    assert len(report.tensors) == len(model.state_dict())  # every tensor still scanned

    # the same shards alone (no config.json, no trainer file): weights whose loader nandoctor cannot know, as before
    alone = tmp_path / "alone"
    alone.mkdir()
    for name in shards:
        shutil.copy(folder / name, alone)
    assert nandoctor.scan(alone, device="cpu").exit_code == 0


def test_a_trainer_checkpoint_without_config_json_is_exit_3_as_from_pretrained_fails(run: Path, tmp_path: Path) -> None:
    middle = run / "checkpoint-4"
    (middle / "config.json").unlink()
    assert not loads(middle)
    report = nandoctor.scan(middle, device="cpu")
    assert report.exit_code == 3
    assert _problems(report) == ["config.json: a Trainer checkpoint without config.json (generation_config.json beside "
                                 "the weights says it had one): from_pretrained cannot load it (\"Unrecognized model\")"]

    (middle / "generation_config.json").unlink()  # the run's other checkpoints still say so
    assert not loads(middle)
    assert _problems(nandoctor.scan(middle, device="cpu")) == [
        "config.json: a Trainer checkpoint without config.json (checkpoint-2/config.json says it had one): "
        "from_pretrained cannot load it (\"Unrecognized model\")"]
    rows = {c.name: c.status for c in nandoctor.scan_run(run, device="cpu").checkpoints}
    assert rows == {"checkpoint-2": "clean", "checkpoint-4": "unreadable", "checkpoint-6": "clean"}

    # a copy of the folder on its own, its trainer_state.json gone too: its name and the run it came from say Trainer
    copy = shutil.copytree(middle, tmp_path / "copy" / "checkpoint-4")
    (copy / "trainer_state.json").unlink()
    shutil.copytree(run / "checkpoint-2", tmp_path / "copy" / "checkpoint-2")
    assert not loads(copy) and nandoctor.scan(copy, device="cpu").exit_code == 3


class _NotTransformers(torch.nn.Module):
    """A model Trainer trains that is no transformers model: Trainer saves its bare state dict, no config."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(64, 8)
        self.head = torch.nn.Linear(8, 64)

    def forward(self, input_ids, labels=None):
        logits = self.head(self.embed(input_ids))
        return {"loss": torch.nn.functional.cross_entropy(logits.view(-1, 64), labels.view(-1)), "logits": logits}


def test_a_model_that_is_not_a_transformers_model_scans_clean_with_a_note(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    torch.manual_seed(0)
    out = trainer_run(tmp_path / "custom", steps=4, model=_NotTransformers())
    for step in (2, 4):
        folder = out / f"checkpoint-{step}"
        assert not (folder / "config.json").exists() and (folder / "trainer_state.json").is_file()
        fresh = _NotTransformers()
        fresh.load_state_dict(load_file(folder / "model.safetensors"))  # how such a model loads: strict, it does
        report = nandoctor.scan(folder, device="cpu")
        assert report.exit_code == 0, report.errors
        assert any(n.startswith("no config.json: from_pretrained cannot load this folder") for n in report.notes)
    # the user's own hyperparameters in a config.json at the run's top are no model config: still clean
    (out / "config.json").write_text(json.dumps({"lr": 1e-3, "batch_size": 4, "layers": 2}))
    assert nandoctor.scan(out / "checkpoint-4", device="cpu").exit_code == 0
    assert nandoctor.scan_run(str(out), device="cpu").exit_code() == 0
    # a model config there (what save_pretrained writes) says the checkpoints had one: exit 3
    (out / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    assert nandoctor.scan(out / "checkpoint-4", device="cpu").exit_code == 3


def test_a_saved_model_folder_that_lost_its_config_is_exit_3_as_from_pretrained_fails(trained: Path, tmp_path: Path) -> None:
    """save_pretrained writes generation_config.json beside config.json: a folder of the weights and the one
    without the other would not load, Trainer checkpoint or not."""
    folder = tmp_path / "saved"
    folder.mkdir()
    for name in ("model.safetensors", "generation_config.json"):
        shutil.copy(trained / "checkpoint-2" / name, folder)
    assert not loads(folder)
    report = nandoctor.scan(folder, device="cpu")
    assert report.exit_code == 3 and [e.kind for e in report.errors] == ["unloadable"]
    assert report.errors[0].message.startswith("a model folder without config.json (generation_config.json beside")
    shutil.copy(trained / "checkpoint-2" / "config.json", folder)
    assert loads(folder) and nandoctor.scan(folder, device="cpu").exit_code == 0


def test_weights_alone_scan_as_before(trained: Path, tmp_path: Path) -> None:
    """A single file, and a folder of weight files without config.json or trainer files: not judged for loading."""
    single = trained / "checkpoint-2" / "model.safetensors"
    assert nandoctor.scan(single, device="cpu").exit_code == 0
    folder = tmp_path / "weights"
    folder.mkdir()
    shutil.copy(single, folder)
    report = nandoctor.scan(folder, device="cpu")
    assert report.exit_code == 0 and not report.notes
