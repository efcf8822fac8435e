"""Weights beside config.json none of whose names is one the model has, transformers' from_pretrained as the oracle
(its missing_keys: every weight, initialized at random): a state dict saved inside a training loop's dict
(readers/torch/statedicts.py), every name under a wrapper's prefix other than DDP's or torch.compile's
(checkpoint/prefixes.py). An adversarial round's each read CLEAN. The healthy twins (a flat state dict with a loop's
extras beside it, the model's own base prefix added) load and stay CLEAN; the hint's command, run as printed, gives
the model its weights back."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import nandoctor  # noqa: E402
from nandoctor.checkpoint import architecture  # noqa: E402


def _llama(folder: Path, *, tied: bool = False) -> dict[str, torch.Tensor]:
    """A tiny Llama saved to ``folder``; its state dict as saved."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 num_key_value_heads=2, vocab_size=128, tie_word_embeddings=tied)).save_pretrained(folder)
    return load_file(str(folder / "model.safetensors"))


def _missing(folder: Path) -> list[str]:
    """The weights from_pretrained initializes at random loading ``folder``."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    _, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    return sorted(info["missing_keys"])


def _hint_command(hint: str) -> str:
    """The ``python -c '…'`` command a hint gives, as printed."""
    found = re.search(r"python -c '[^']*'", hint)
    assert found is not None, hint
    return found.group()


@pytest.mark.parametrize("key", ["model", "state_dict"])
def test_a_state_dict_saved_inside_a_dict_is_not_loadable(tmp_path, monkeypatch, key):
    """torch.save({"model": state_dict, "epoch": 3}, "pytorch_model.bin") beside config.json: transformers takes the
    outer dict for the state dict, finds no weight in it and initializes every one at random. Said from the pickle's
    own top level (its flattened names are those of a wrapper's prefix, which transformers strips): no model built."""
    folder = tmp_path / "m"
    tensors = _llama(folder)
    (folder / "model.safetensors").unlink()
    torch.save({key: tensors, "epoch": 3}, folder / "pytorch_model.bin")
    assert len(_missing(folder)) == len(tensors)  # the oracle: every weight at random
    monkeypatch.setattr(architecture, "_built_by_transformers", lambda root: pytest.fail("built for nothing"))
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and [e.kind for e in report.errors] == ["unloadable"], report.errors
    assert f"the weights lie inside {key!r}" in report.errors[0].message
    # (a repair refuses it, said as what it is: the file was read, and would not load; not "could not be read")
    with pytest.raises(nandoctor.NandoctorError, match=r"1 problem\(s\) a repair does not fix \(not loadable\)"):
        nandoctor.repair(folder, [folder], tmp_path / "fixed")
    alone = tmp_path / "alone"  # (the file without config.json: its loader is not known, nor judged)
    alone.mkdir()
    shutil.copy(folder / "pytorch_model.bin", alone / "pytorch_model.bin")
    assert nandoctor.scan(alone).exit_code == 0
    subprocess.run(_hint_command(report.errors[0].hint), shell=True, check=True)
    assert _missing(folder) == [] and nandoctor.scan(folder).exit_code == 0


@pytest.mark.parametrize("extra", [{"epoch": 3}, {"step": torch.tensor(300)}, {"losses": [1.0, 2.0]}])
def test_a_flat_state_dict_with_a_loops_extras_beside_it_stays_clean(tmp_path, extra):
    """The weights at the file's top, a loop's counters beside them: from_pretrained loads every weight (the extras
    are unexpected keys, ignored)."""
    folder = tmp_path / "m"
    tensors = _llama(folder)
    (folder / "model.safetensors").unlink()
    torch.save({**tensors, **extra}, folder / "pytorch_model.bin")
    assert _missing(folder) == []
    report = nandoctor.scan(folder)
    assert report.exit_code == 0 and not report.errors, report.errors


@pytest.mark.parametrize(("prefix", "tied"), [
    ("student.", False), ("llm.", False), ("base_model.model.", False), ("student.", True),
    ("transformer.", False),  # (a name models use: the LM head under it gives the wrapper away)
])
def test_weights_under_a_wrappers_prefix_are_not_loadable(tmp_path, prefix, tied):
    """A distillation wrapper's student., a multimodal wrapper's llm., PEFT's base_model.model. on every name:
    from_pretrained strips only the model's own model., finds none of its names and initializes every weight at
    random. The model built says so, and which prefix to take off; the command the hint gives takes it off."""
    folder = tmp_path / "m"
    tensors = _llama(folder, tied=tied)
    save_file({prefix + name: t for name, t in tensors.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    assert len(_missing(folder)) >= len(tensors)  # the oracle: every weight at random
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and [e.kind for e in report.errors] == ["unloadable"], report.errors
    assert f"every one starts with {prefix!r}" in report.errors[0].message
    subprocess.run(_hint_command(report.errors[0].hint), shell=True, check=True)
    assert _missing(folder) == [] and nandoctor.scan(folder).exit_code == 0


def test_another_models_weights_under_a_prefix_are_not_loadable(tmp_path):
    """A GPT-2's weights under a wrapper's prefix beside a Llama's config.json: no prefix taken off gives the Llama its
    names, and nothing else says why none of them is one it has: still NOT LOADABLE (every weight at random)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "m"
    _llama(folder)
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=128, n_positions=64))
    save_file({"student." + name: t.clone() for name, t in gpt2.state_dict().items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    assert len(_missing(folder)) > 10  # the oracle: every Llama weight at random
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and [e.kind for e in report.errors] == ["unloadable"], report.errors
    assert "none of the" in report.errors[0].message and "student." in report.errors[0].message


def test_a_torch_file_under_a_wrappers_prefix_is_not_loadable(tmp_path):
    """The same names in a pytorch_model.bin: the hint says what to rename (no command for a pickle)."""
    folder = tmp_path / "m"
    tensors = _llama(folder)
    (folder / "model.safetensors").unlink()
    torch.save({"student." + name: t for name, t in tensors.items()}, folder / "pytorch_model.bin")
    assert len(_missing(folder)) == len(tensors)
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and "every one starts with 'student.'" in report.errors[0].message, report.errors
    assert "rename the tensors without 'student.'" in report.errors[0].hint


@pytest.mark.parametrize("tied", [False, True])
def test_the_models_own_prefix_and_healthy_saves_stay_clean(tmp_path, monkeypatch, tied):
    """model. before a Llama's own names (a LightningModule's self.model): transformers strips it, every weight
    loads, and the scan stays CLEAN (the LM head under it costs a build that says so). A healthy save, tied or
    not, builds no model."""
    healthy = tmp_path / "healthy"
    tensors = _llama(healthy, tied=tied)
    with monkeypatch.context() as patched:
        patched.setattr(architecture, "_built_by_transformers", lambda root: pytest.fail("built for nothing"))
        assert nandoctor.scan(healthy).exit_code == 0
    folder = tmp_path / "m"
    _llama(folder, tied=tied)
    save_file({"model." + name: t for name, t in tensors.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    assert _missing(folder) == []
    report = nandoctor.scan(folder)
    assert report.exit_code == 0 and not report.errors, report.errors
