"""Which weight files of a folder from_pretrained reads, and the verdict on what it reads (transformers as the oracle).

An adversarial round: a ``model.safetensors`` holding only the embeddings beside the whole model's shards and their
index scanned CLEAN (from_pretrained loads the single file alone and initialises every layer at random); a
safetensors index listing a torch ``.bin`` shard scanned CLEAN (from_pretrained fails on it); a broken index beside a
healthy ``model.safetensors`` read UNREADABLE, though from_pretrained never opens it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import nandoctor  # noqa: E402


def _llama(folder: Path) -> dict[str, torch.Tensor]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 num_key_value_heads=2, vocab_size=128)).save_pretrained(folder)
    return load_file(str(folder / "model.safetensors"))


def _shard(folder: Path, tensors: dict[str, torch.Tensor], names: list[list[str]], suffixes: tuple[str, ...]) -> None:
    """Write ``tensors`` as shards (the i-th holding ``names[i]``, saved as safetensors or torch by ``suffixes[i]``)
    and a model.safetensors.index.json naming them."""
    weight_map = {}
    for i, (held, suffix) in enumerate(zip(names, suffixes), start=1):
        shard = f"model-{i:05d}-of-{len(names):05d}{suffix}"
        part = {k: tensors[k].contiguous() for k in held}
        if suffix == ".safetensors":
            save_file(part, str(folder / shard), metadata={"format": "pt"})
        else:
            torch.save(part, folder / shard)
        weight_map.update(dict.fromkeys(held, shard))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _loaded(folder: Path) -> tuple[bool, list[str]]:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        _, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    except Exception:  # noqa: BLE001 - (the oracle: it does not load, whatever the error)
        return False, []
    return True, sorted(info["missing_keys"])


def test_a_partial_single_file_beside_the_whole_models_shards_is_what_loads(tmp_path):
    folder = tmp_path / "m"
    tensors = _llama(folder)
    outside = [k for k in tensors if ".layers." not in k]
    layers = [k for k in tensors if ".layers." in k]
    save_file({k: tensors[k] for k in outside}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    _shard(folder, tensors, [outside + layers[: len(layers) // 2], layers[len(layers) // 2 :]], (".safetensors",) * 2)
    loads, missing = _loaded(folder)
    assert loads and sorted(missing) == sorted(layers)  # the oracle: every layer at random
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and report.errors[0].kind == "unloadable", report.errors
    assert "no layer is stored" in report.errors[0].message
    assert len(report.tensors) == len(tensors) + len(outside)  # (every file still scanned for NaN/Inf)
    (folder / "model.safetensors").unlink()  # the shards alone load whole
    assert _loaded(folder) == (True, []) and nandoctor.scan(folder).exit_code == 0


def test_a_torch_shard_in_a_safetensors_index_is_not_loadable(tmp_path):
    folder = tmp_path / "m"
    tensors = _llama(folder)
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    _shard(folder, tensors, [names[:10], names[10:]], (".safetensors", ".bin"))
    assert _loaded(folder)[0] is False
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and any(
        p.kind == "unloadable" and "model-00002-of-00002.bin, not safetensors" in p.message for p in report.errors)


def test_a_broken_index_beside_the_single_file_from_pretrained_loads_is_a_note(tmp_path):
    folder = tmp_path / "m"
    _llama(folder)
    (folder / "model.safetensors.index.json").write_text('{"weight_map": {"a": 5}}')
    assert _loaded(folder) == (True, [])
    report = nandoctor.scan(folder)
    assert report.exit_code == 0, report.errors
    assert any("model.safetensors.index.json" in n and "never reads it" in n for n in report.notes), report.notes
    (folder / "model.safetensors").rename(folder / "other.safetensors")  # now the index is what loads: broken
    assert nandoctor.scan(folder).exit_code == 3


def test_a_trainer_state_cut_short_is_no_clean_resume_point(tmp_path):
    """An adversarial round: a Trainer checkpoint whose trainer_state.json was cut short (a save interrupted) scanned
    CLEAN; resume_from_checkpoint reads it first (TrainerState.load_from_json) and raises. Alone: UNREADABLE naming
    the file; in its run: an incomplete save, never the last healthy one."""
    import shutil

    from transformers import TrainerState

    from tests.conftest import DEMO_RUN

    run = tmp_path / "run"
    for step in (100, 200):
        shutil.copytree(DEMO_RUN / f"checkpoint-{step}", run / f"checkpoint-{step}")
    state = run / "checkpoint-200" / "trainer_state.json"
    text = state.read_text()
    state.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError):
        TrainerState.load_from_json(str(state))
    TrainerState.load_from_json(str(run / "checkpoint-100" / "trainer_state.json"))
    alone = nandoctor.scan(run / "checkpoint-200")
    assert alone.exit_code == 3 and alone.errors[0].path == str(state) and "not a valid JSON object" in alone.errors[0].message
    assert nandoctor.scan(run / "checkpoint-100").exit_code == 0
    state.write_text("[]")  # (valid JSON, no object: load_from_json raises TypeError)
    with pytest.raises(TypeError):
        TrainerState.load_from_json(str(state))
    assert nandoctor.scan(run / "checkpoint-200").exit_code == 3
    state.write_text(text[: len(text) // 2])
    timeline = nandoctor.scan_run(run, device="cpu")
    assert [c.status for c in timeline.checkpoints] == ["clean", "incomplete"]
    assert Path(timeline.last_healthy.path).name == "checkpoint-100" and timeline.exit_code() == 3


def test_an_index_without_metadata_is_not_loadable(tmp_path):
    """An adversarial round: a hand-written model.safetensors.index.json of a weight_map alone read CLEAN, and
    from_pretrained raised KeyError: 'metadata'."""
    folder = tmp_path / "m"
    tensors = _llama(folder)
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    _shard(folder, tensors, [names[:10], names[10:]], (".safetensors", ".safetensors"))
    assert _loaded(folder) == (True, []) and nandoctor.scan(folder).exit_code == 0
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": json.loads(index.read_text())["weight_map"]}))
    assert _loaded(folder)[0] is False
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and any(p.kind == "unloadable" and "metadata" in p.message for p in report.errors)


@pytest.mark.parametrize(("renamed", "loads", "said"), [
    ("Model.safetensors", False, "holds Model.safetensors beside config.json, a name from_pretrained never opens"),
    ("pytorch_model.safetensors", False, "holds pytorch_model.safetensors beside config.json"),
    ("weights.safetensors", False, "rename weights.safetensors to model.safetensors"),
    ("model.fp16.safetensors", False, None),  # (a variant's: a note, it loads with variant="fp16")
])
def test_weights_under_a_name_from_pretrained_never_opens_are_not_loadable(tmp_path, renamed, loads, said):
    """An adversarial round: a save_pretrained folder whose weights file was renamed (Model.safetensors,
    pytorch_model.safetensors) read CLEAN; from_pretrained fails: "no file named model.safetensors"."""
    folder = tmp_path / "m"
    _llama(folder)
    (folder / "model.safetensors").rename(folder / renamed)
    assert _loaded(folder)[0] is loads
    report = nandoctor.scan(folder)
    if said is None:
        assert report.exit_code == 0 and any("variant='fp16'" in n for n in report.notes), report.notes
    else:
        assert report.exit_code == 3 and any(said in e.message or said in (e.hint or "") for e in report.errors), \
            report.errors
