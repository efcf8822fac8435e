"""PASS CLEAN means transformers loads the folder and generates from it: folders whose tensors all scan healthy but
whose config, stored dtypes or pickled globals stop that are never CLEAN. Each case is built with the real
transformers (a tiny Llama, no hub), safetensors and torch, and held to the oracle: ``from_pretrained`` raises, or
``generate`` fails or computes NaN (checkpoint/loadconfig.py, loadability.uncastable, readers/torch/weights_only.py).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import struct
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import nandoctor
from tests.conftest import run_cli

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from tests.trainer_checkpoints import tiny_llama  # noqa: E402  (needs torch and transformers)

DOWN = "model.layers.1.mlp.down_proj.weight"


class Custom:  # a class of the saving script's own, pickled by reference
    def __init__(self) -> None:
        self.lr = 0.1


def _save(folder: Path, *, safe: bool = True) -> Path:
    """save_pretrained's folder; with ``safe=False`` its weights as pytorch_model.bin (torch.save of the state dict,
    as transformers 4 wrote it: transformers 5 saves safetensors only)."""
    tiny_llama().save_pretrained(folder)
    if not safe:
        from safetensors.torch import load_file

        torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    return folder


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A tiny Llama as save_pretrained writes it: config.json, generation_config.json, model.safetensors."""
    return _save(tmp_path_factory.mktemp("saved") / "model")


@pytest.fixture
def model(saved: Path, tmp_path: Path) -> Path:
    import shutil

    return shutil.copytree(saved, tmp_path / "model")


def _edit(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))  # json writes float("nan") as NaN, as transformers' to_json_string does


def _load(folder: Path):
    """The oracle: the model from_pretrained builds, or the exception it raises."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoModelForCausalLM.from_pretrained(str(folder))
    except Exception as exc:  # noqa: BLE001  (any refusal: OSError, ValueError, TypeError, AttributeError …)
        return exc
    finally:
        hf_logging.set_verbosity(verbosity)


def _generate(model, sample: bool = False):
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=sample, pad_token_id=0)


def _problems(report) -> list[tuple[str, str]]:
    return [(Path(e.path).name, e.kind) for e in report.errors]


def _quiet(path: Path) -> tuple[int, str]:
    result = run_cli("scan", path, "--quiet", "--no-progress")
    return result.exit_code, result.output


# ---------------------------------------------------------------------------
# config.json (and adapter_config.json) that is not a JSON object
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("text,what", [
    (lambda t: t + "}", "is not valid JSON (Extra data"),
    (lambda t: t[: len(t) // 2], "is not valid JSON (Unterminated string" ),
    (lambda t: "[]", "holds a JSON array, not an object"),
    (lambda t: '"LlamaForCausalLM"', "holds a JSON string, not an object"),
])
def test_a_config_json_that_is_no_json_object_is_not_loadable(model: Path, text, what: str) -> None:
    config = model / "config.json"
    config.write_text(text(config.read_text()))
    assert isinstance(_load(model), Exception)  # the oracle

    report = nandoctor.scan(model, device="cpu")
    assert report.exit_code == 3 and _problems(report) == [("config.json", "unloadable")]
    assert report.errors[0].message.startswith(what) and "from_pretrained fails before it reads a weight" in report.errors[0].message
    assert "copy config.json from the base model" in report.errors[0].hint
    code, line = _quiet(model)
    assert code == 3 and line.startswith("FAIL NOT LOADABLE ")


def test_an_invalid_adapter_config_beside_adapter_weights_is_not_loadable(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    folder = tmp_path / "adapter"
    folder.mkdir()
    save_file({"base_model.model.q_proj.lora_A.weight": torch.zeros(4, 16),
               "base_model.model.q_proj.lora_B.weight": torch.zeros(16, 4)}, folder / "adapter_model.safetensors")
    good = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "task_type": "CAUSAL_LM"}
    (folder / "adapter_config.json").write_text(json.dumps(good))
    assert nandoctor.scan(folder, device="cpu").exit_code == 0  # the control

    (folder / "adapter_config.json").write_text(json.dumps(good)[:-1])  # cut short
    with pytest.raises(json.JSONDecodeError):  # what PEFT's PeftConfig.from_pretrained does with it: json.load
        json.loads((folder / "adapter_config.json").read_text())
    report = nandoctor.scan(folder, device="cpu")
    assert report.exit_code == 3 and _problems(report) == [("adapter_config.json", "unloadable")]
    assert "PEFT's from_pretrained fails" in report.errors[0].message


# ---------------------------------------------------------------------------
# config.json's dtype
# ---------------------------------------------------------------------------


def _dtype_cases() -> list[dict]:
    names = sorted(n for n in dir(torch) if isinstance(getattr(torch, n), torch.dtype))
    values = [*names, "auto", "fp16", "bf16", "fp32", "torch.float16", "Float16", "", 16, 1.5, True, [],
              {"": "float16"}, {"": "fp16"}, {"": "int8"}, {"text_config": "fp16"}, {}]
    return ([{"dtype": v} for v in values] + [{"torch_dtype": "half"}, {"torch_dtype": "fp16"}, {"torch_dtype": "auto"},
            {"dtype": None, "torch_dtype": "fp16"}, {"dtype": "float16", "torch_dtype": "fp16"},
            {"dtype": "fp16", "torch_dtype": "float16"}])


def test_every_config_dtype_is_judged_as_from_pretrained_judges_it(model: Path) -> None:
    """Every torch dtype name and the usual misspellings, under "dtype" and "torch_dtype": NOT LOADABLE exactly
    where from_pretrained raises (transformers 5.25; a dict is read for its "" entry)."""
    config = model / "config.json"
    base = {k: v for k, v in json.loads(config.read_text()).items() if k not in ("dtype", "torch_dtype")}
    accepted, disagree = [], []
    for case in _dtype_cases():
        config.write_text(json.dumps({**base, **case}))
        loads = not isinstance(_load(model), Exception)
        report = nandoctor.scan(model, device="cpu")
        judged = (report.exit_code, _problems(report))
        if judged != ((0, []) if loads else (3, [("config.json", "unloadable")])):
            disagree.append((case, loads, report.errors))
        if loads:
            accepted.append(case)
    assert disagree == []
    assert accepted == [{"dtype": v} for v in ("bfloat16", "double", "float", "float16", "float32", "float64", "half")] + [
        {"dtype": {"": "float16"}}, {"dtype": {"text_config": "fp16"}}, {"dtype": {}}, {"torch_dtype": "half"},
        {"dtype": "float16", "torch_dtype": "fp16"}]


@pytest.mark.parametrize("value,words,hint", [
    ("fp16", "torch has no dtype of that name (\"module 'torch' has no attribute 'fp16'\")", 'write "float16"'),
    ("torch.bfloat16", "torch has no dtype of that name", 'write "bfloat16"'),
    ("auto", "\"auto\" is a value for from_pretrained's dtype argument, not for config.json", 'remove "dtype"'),
    ("float8_e4m3fn", "torch keeps no storage of float8_e4m3fn", 'set "dtype" to the dtype the weights were saved in'),
    ("int8", "torch.int8 is not a floating-point dtype", 'set "dtype" to the dtype the weights were saved in'),
])
def test_a_refused_dtype_names_the_key_the_value_and_the_spellings_accepted(model: Path, value: str, words: str,
                                                                           hint: str) -> None:
    _edit(model / "config.json", dtype=value)
    assert isinstance(_load(model), Exception)
    report = nandoctor.scan(model, device="cpu")
    [problem] = report.errors
    assert problem.message.startswith(f'"dtype" is "{value}", which from_pretrained refuses: {words}')
    assert problem.message.endswith("takes only 'bfloat16', 'float16', 'float32', 'half', 'float', 'float64', 'double')")
    assert problem.hint.startswith(hint)
    assert _quiet(model)[1].startswith("FAIL NOT LOADABLE ")


def test_the_fp8_repro_and_its_controls(model: Path) -> None:
    """The trial's fp8cfg folder is NOT LOADABLE; the same folder with "float16", a dict dtype or no dtype is CLEAN
    and generates."""
    for dtype, clean in (("float8_e4m3fn", False), ("float16", True), ({"": "bfloat16"}, True), (None, True)):
        _edit(model / "config.json", dtype=dtype)
        loaded = _load(model)
        assert isinstance(loaded, Exception) != clean
        if clean:
            assert torch.isfinite(_generate(loaded)).all()
        assert (nandoctor.scan(model, device="cpu").exit_code == 0) == clean, dtype


# ---------------------------------------------------------------------------
# NaN / Infinity in config.json and generation_config.json
# ---------------------------------------------------------------------------


def test_nan_rms_norm_eps_in_config_json_is_a_bad_config(model: Path) -> None:
    _edit(model / "config.json", rms_norm_eps=float("nan"))
    loaded = _load(model)  # loads: the NaN is in the model it builds
    with torch.no_grad():
        assert torch.isnan(loaded(torch.tensor([[3, 4, 5]])).logits).all()
    with pytest.raises(RuntimeError, match="probability tensor contains either `inf`, `nan`"):
        _generate(loaded, sample=True)

    report = nandoctor.scan(model, device="cpu")
    assert report.exit_code == 3 and _problems(report) == [("config.json", "config")]
    assert report.errors[0].message.startswith("rms_norm_eps is NaN: from_pretrained builds the model from these values")
    code, line = _quiet(model)
    assert code == 3 and line.startswith("FAIL BAD CONFIG ") and "config.json: rms_norm_eps is NaN" in line
    data = json.loads(run_cli("scan", model, "--json", "--no-progress").output)
    assert data["summary"]["verdict"] == "BAD CONFIG" and data["errors"][0]["kind"] == "config"


def test_every_non_finite_number_is_named_by_its_key_path(model: Path) -> None:
    data = json.loads((model / "config.json").read_text())
    del data["rope_parameters"]
    (model / "config.json").write_text(json.dumps(data)[:-1] + ', "rope_parameters": {"rope_type": "default", '
                                       '"rope_theta": NaN}, "layer_scales": [1e999, -Infinity, 1.0]}')
    assert math.isinf(json.loads((model / "config.json").read_text())["layer_scales"][0])  # too large: Infinity
    report = nandoctor.scan(model, device="cpu")
    [problem] = report.errors
    assert problem.kind == "config" and problem.message.startswith(
        "rope_parameters.rope_theta is NaN, layer_scales[0] is Infinity, layer_scales[1] is -Infinity: ")


def test_nan_as_transformers_writes_it_is_a_bad_config_too(tmp_path: Path) -> None:
    """transformers 5.x's save_pretrained writes NaN as {"__float__": "NaN"} and from_pretrained reads it back:
    a model saved with rms_norm_eps NaN computed NaN logits and scanned CLEAN."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=64, rms_norm_eps=float("nan"))
    LlamaForCausalLM(config).save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["rms_norm_eps"] == {"__float__": "NaN"}
    loaded = LlamaForCausalLM.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        assert torch.isnan(loaded(torch.tensor([[1, 2, 3]])).logits).all()
    report = nandoctor.scan(tmp_path / "m", device="cpu")
    assert report.exit_code == 3 and report.errors[0].message.startswith("rms_norm_eps is NaN")


def test_an_infinite_limit_is_a_setting_not_a_bad_config(tmp_path: Path) -> None:
    """Mamba2's default time_step_limit is (0.0, inf), written as a bare Infinity by transformers 4.x (as on hub
    Mamba2 / Bamba / Nemotron-H configs): it loads and generates as the original."""
    from transformers import Mamba2Config, Mamba2ForCausalLM

    torch.manual_seed(0)
    model = Mamba2ForCausalLM(Mamba2Config(hidden_size=32, num_hidden_layers=2, vocab_size=64, num_heads=4, head_dim=16,
                                           state_size=8, n_groups=1, expand=2, chunk_size=8))
    model.save_pretrained(tmp_path / "m")
    _edit(tmp_path / "m" / "config.json", time_step_limit=[0.0, float("inf")])
    loaded = Mamba2ForCausalLM.from_pretrained(tmp_path / "m")
    assert loaded.config.time_step_limit[1] == float("inf")
    with torch.no_grad():
        ids = torch.tensor([[1, 2, 3, 4]])
        assert torch.allclose(loaded(ids).logits, model(ids).logits)
    assert nandoctor.scan(tmp_path / "m", device="cpu").exit_code == 0
    _edit(tmp_path / "m" / "config.json", layer_norm_epsilon=float("inf"))  # an infinite epsilon is no limit
    assert nandoctor.scan(tmp_path / "m", device="cpu").exit_code == 3


def test_nan_temperature_in_generation_config_is_a_bad_config(model: Path) -> None:
    _edit(model / "generation_config.json", temperature=float("nan"), do_sample=True)
    loaded = _load(model)
    with pytest.raises(ValueError, match=r"`temperature` \(=nan\) has to be a strictly positive float"):
        _generate(loaded, sample=True)
    report = nandoctor.scan(model, device="cpu")
    assert report.exit_code == 3 and _problems(report) == [("generation_config.json", "config")]
    assert report.errors[0].message.startswith("temperature is NaN: generate takes its settings from these values")


# ---------------------------------------------------------------------------
# F4 tensors: loaded by safetensors.torch as float4_e2m1fn_x2, which torch cannot cast
# ---------------------------------------------------------------------------


def _with_f4(file: Path, name: str) -> None:
    """``file`` with the tensor ``name`` rewritten as F4 of the same shape (its bytes: codes 2, 2 in each)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(file)
    shape = list(tensors.pop(name).shape)
    save_file(tensors, file)
    raw = file.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
    size = math.prod(shape) // 2
    header[name] = {"dtype": "F4", "shape": shape, "data_offsets": [len(data), len(data) + size]}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    file.write_bytes(struct.pack("<Q", len(text)) + text + data + b"\x22" * size)


def test_an_f4_weight_where_no_quantizer_unpacks_it_is_not_loadable(model: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    _with_f4(model / "model.safetensors", DOWN)
    stored = load_file(model / "model.safetensors")[DOWN]  # safetensors.torch loads the file ...
    assert stored.dtype == torch.float4_e2m1fn_x2 and list(stored.shape) == [16, 16]  # ... half as wide
    with pytest.raises(RuntimeError, match="not implemented for 'Float4_e2m1fn_x2'"):
        stored.float()
    assert isinstance(_load(model), RuntimeError)  # the oracle

    report = nandoctor.scan(model, device="cpu")
    assert report.exit_code == 3 and _problems(report) == [("model.safetensors", "unloadable")]
    assert report.errors[0].message.startswith(
        f"1 tensor(s) of dtype F4 ('{DOWN}'): safetensors.torch loads F4 as float4_e2m1fn_x2 with half the last dimension")
    assert _quiet(model)[1].startswith("FAIL NOT LOADABLE ")

    # the controls: a quantizer named in config.json unpacks fp4 its own way (transformers' fp8 one: MXFP4 experts);
    # the file alone loads in safetensors.torch, and nandoctor cannot know its loader
    _edit(model / "config.json", quantization_config={"quant_method": "fp8", "weight_block_size": [16, 16]})
    assert nandoctor.scan(model, device="cpu").exit_code == 0
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes())
    assert nandoctor.scan(alone, device="cpu").exit_code == 0


# ---------------------------------------------------------------------------
# torch files whose pickle torch.load(weights_only=True) refuses
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("extra,first", [
    (argparse.Namespace(lr=1), "argparse.Namespace"),
    (np.arange(3.0), "numpy._core.multiarray._reconstruct"),
    (Custom(), f"{__name__}.Custom"),
    (frozenset({1}), "builtins.frozenset"),
])
def test_a_pytorch_model_bin_torch_refuses_to_load_weights_only_is_not_loadable(tmp_path: Path, extra, first: str) -> None:
    folder = _save(tmp_path / "model", safe=False)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    assert nandoctor.scan(folder, device="cpu").exit_code == 0 and torch.isfinite(_generate(_load(folder))).all()

    torch.save({**state, "args": extra}, folder / "pytorch_model.bin")
    loaded = _load(folder)
    assert isinstance(loaded, Exception) and "Weights only load failed" in str(loaded)  # the oracle
    report = nandoctor.scan(folder, device="cpu")
    assert report.exit_code == 3 and _problems(report) == [("pytorch_model.bin", "unloadable")]
    assert report.errors[0].message.startswith(f"pickles {first}")
    assert "which torch.load(weights_only=True) refuses" in report.errors[0].message
    assert "transformers' from_pretrained loads pytorch_model.bin with weights_only=True" in report.errors[0].message
    assert _quiet(folder)[1].startswith("FAIL NOT LOADABLE ")


def test_a_numbered_bin_shard_and_adapter_model_bin_are_held_to_the_same_rule(tmp_path: Path) -> None:
    folder = tmp_path / "sharded"
    folder.mkdir()
    model = tiny_llama()
    model.config.save_pretrained(folder)
    state = model.state_dict()
    names = sorted(state)
    weight_map = {}
    for k, part in enumerate((names[: len(names) // 2], names[len(names) // 2:]), 1):
        shard = f"pytorch_model-{k:05d}-of-00002.bin"
        tensors = {n: state[n].contiguous() for n in part}
        torch.save({**tensors, "meta": argparse.Namespace(step=3)} if k == 2 else tensors, folder / shard)
        weight_map.update(dict.fromkeys(part, shard))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert isinstance(_load(folder), Exception)
    report = nandoctor.scan(folder, device="cpu")
    assert report.exit_code == 3 and _problems(report) == [("pytorch_model-00002-of-00002.bin", "unloadable")]

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    torch.save({"base_model.model.q_proj.lora_A.weight": torch.zeros(4, 16),
                "base_model.model.q_proj.lora_B.weight": torch.zeros(16, 4), "config": argparse.Namespace(r=4)},
               adapter / "adapter_model.bin")  # (names as PEFT saves them: the refused global is the one trouble)
    with pytest.raises(Exception, match="Weights only load failed"):  # PEFT's torch_load: weights_only=True
        torch.load(adapter / "adapter_model.bin", weights_only=True)
    report = nandoctor.scan(adapter, device="cpu")
    assert report.exit_code == 3 and _problems(report) == [("adapter_model.bin", "unloadable")]
    assert "PEFT's from_pretrained loads adapter_model.bin" in report.errors[0].message


def test_other_torch_files_torch_refuses_get_a_note_not_a_failure(tmp_path: Path) -> None:
    """A training .pt holding argparse.Namespace and a Lightning .ckpt with a pathlib path in its hyper_parameters:
    their loaders choose weights_only (Lightning's leave it to torch's default, and fail unless given False), so a
    note (naming the first global torch refuses, and Lightning's loaders for the .ckpt), exit 0, and the refusal on
    the --quiet line a gate reads."""
    pt = tmp_path / "train_state.pt"
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1)}, pt)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(pt, weights_only=True)
    assert torch.load(pt, weights_only=False)["args"].lr == 0.1
    report = nandoctor.scan(pt, device="cpu")
    assert report.exit_code == 0 and report.errors == ()
    assert [n for n in report.notes if "weights_only" in n] == [
        "train_state.pt: torch.load's default (weights_only=True) refuses this file: it pickles argparse.Namespace, "
        "outside torch's allowlist; load it with weights_only=False only if you trust its source (nandoctor read it "
        "with inert stand-ins)"]

    import lightning

    class Module(lightning.LightningModule):
        def __init__(self, lr: float = 0.1, hidden: int = 4, data_dir: Path = Path("/data/train")) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.lin = torch.nn.Linear(hidden, 1)

        def training_step(self, batch, _):
            return self.lin(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=4)
    trainer = lightning.Trainer(max_steps=2, default_root_dir=tmp_path / "pl", logger=False, enable_progress_bar=False,
                                enable_model_summary=False, accelerator="cpu")
    trainer.fit(Module(), data)
    [ckpt] = (tmp_path / "pl").rglob("*.ckpt")
    with pytest.raises(Exception, match="Weights only load failed"):  # the Path in its hyper_parameters
        torch.load(ckpt, weights_only=True)
    assert torch.load(ckpt, weights_only=False)["hyper_parameters"] == {
        "lr": 0.1, "hidden": 4, "data_dir": Path("/data/train")}
    report = nandoctor.scan(ckpt, device="cpu")
    assert report.exit_code == 0 and report.errors == ()
    assert [n for n in report.notes if "weights_only" in n] == [
        f"{ckpt.name}: torch.load's default (weights_only=True) refuses this file (Lightning's load_from_checkpoint "
        "and Trainer.fit(ckpt_path=…) too, unless given weights_only=False): it pickles pathlib.PosixPath, "
        "outside torch's allowlist; load it with weights_only=False only if you trust its source (nandoctor read it "
        "with inert stand-ins)"]
    with pytest.raises(Exception, match="Weights only load failed"):  # Lightning's own loader, as the note says
        Module.load_from_checkpoint(ckpt)
    assert Module.load_from_checkpoint(ckpt, weights_only=False).hparams.data_dir == Path("/data/train")
    quiet = run_cli("scan", ckpt, "--quiet")
    assert quiet.exit_code == 0 and quiet.output.startswith("PASS CLEAN")
    assert (f"torch.load's default (weights_only=True) refuses {ckpt.name}: load with weights_only=False only if you "
            "trust the source") in quiet.output
    assert "refuses train_state.pt" in run_cli("scan", pt, "--quiet").output


def test_a_normal_folder_is_clean_and_generates(saved: Path, tmp_path: Path) -> None:
    for folder in (saved, _save(tmp_path / "bin", safe=False)):
        assert torch.isfinite(_generate(_load(folder))).all()
        report = nandoctor.scan(folder, device="cpu")
        assert report.exit_code == 0 and report.errors == () and not any("weights_only" in n for n in report.notes)


# ---------------------------------------------------------------------------
# The allowlist: a static table held to torch's own
# ---------------------------------------------------------------------------


def test_the_static_allowlist_is_torchs_own() -> None:
    from nandoctor.readers.torch.weights_only import ALLOWED

    code = ("import torch; from torch import _weights_only_unpickler as w; print('\\n'.join(sorted(set("
            "w._get_allowed_globals()) | {f'{g.__module__}.{g.__name__}' for g in torch.serialization.get_safe_globals()})))")
    torch_own = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert sorted(ALLOWED) == torch_own  # a fresh `import torch`: nothing else has registered safe globals


@pytest.mark.parametrize("module,name", [
    ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("__builtin__", "set"),
    ("builtins", "set"), ("builtins", "frozenset"), ("torch", "half"), ("torch", "float16"), ("torch", "FloatStorage"),
    ("argparse", "Namespace"), ("numpy.core.multiarray", "_reconstruct"), ("pathlib", "PosixPath"),
    ("copy_reg", "_reconstructor"), ("torch.nn.parameter", "Buffer"), ("torch._utils", "_rebuild_xla_tensor"),
])
def test_refuses_agrees_with_torchs_weights_only_unpickler(module: str, name: str) -> None:
    from torch import _weights_only_unpickler as w

    from nandoctor.readers.torch.weights_only import refuses

    pickle = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"."  # PROTO 2, GLOBAL, STOP
    try:
        w.Unpickler(io.BytesIO(pickle)).load()
        torch_refuses = False
    except w.UnpicklingError:
        torch_refuses = True
    assert refuses(module, name) == torch_refuses


def test_what_the_reader_records_is_what_torch_refuses(tmp_path: Path) -> None:
    import zipfile

    from nandoctor.readers.torch.safe_pickle import check_storage_id, restricted_load

    buffer = io.BytesIO()
    torch.save(OrderedDict(w=torch.ones(2), args=argparse.Namespace(a=1), s=frozenset({1}), n=np.float32(1.0)), buffer)
    with zipfile.ZipFile(buffer) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    loaded = restricted_load(data, lambda pid: check_storage_id(pid, legacy=False))
    assert loaded.refused == ("argparse.Namespace", "builtins.frozenset", "numpy._core.multiarray.scalar",
                              "numpy.dtype")


@pytest.mark.parametrize("value", ["fp16", "auto"])
def test_a_sub_config_dtype_from_pretrained_refuses_is_not_loadable(tmp_path: Path, value: str) -> None:
    """A composite model's text_config.dtype is converted by transformers as the top-level one is: "fp16" or
    "auto" there made from_pretrained fail while the scan said CLEAN."""
    from transformers import (AutoModelForImageTextToText, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration)

    torch.manual_seed(0)
    text = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=2, vocab_size=64)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=16, patch_size=8, projection_dim=16)
    folder = tmp_path / "llava"
    LlavaForConditionalGeneration(LlavaConfig(text_config=text, vision_config=vision, image_token_index=63)).save_pretrained(folder)
    assert nandoctor.scan(folder, device="cpu").exit_code == 0
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["dtype"] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(AttributeError, match=f"has no attribute '{value}'"):
        AutoModelForImageTextToText.from_pretrained(folder)
    report = nandoctor.scan(folder, device="cpu")
    assert report.exit_code == 3 and report.errors[0].message.startswith(f'"text_config.dtype" is "{value}"')


def test_the_opcode_table_is_torchs_own() -> None:
    import inspect
    import pickletools
    import re

    import torch._weights_only_unpickler as unpickler

    from nandoctor.readers.torch.weights_only import TORCH_OPCODES

    source = inspect.getsource(unpickler.Unpickler.load)
    assert TORCH_OPCODES == {op.name for op in pickletools.opcodes if re.search(rf"\b{op.name}\b", source)}


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("extra", [None, 2**2100, b"\x00\x01", bytearray(b"ab")], ids=["plain", "bigint", "bytes", "bytearray"])
def test_a_pytorch_model_bin_is_not_loadable_exactly_when_torch_refuses_its_pickle(tmp_path: Path, protocol, extra,
                                                                                  zipped) -> None:
    """torch.save(…, pickle_protocol=4) scanned CLEAN, but torch's weights-only unpickler runs only protocol 2's
    opcodes (no FRAME, MEMOIZE, LONG4, BINBYTES …), so from_pretrained fails on the file. The oracle: torch.load
    with weights_only=True, as from_pretrained loads pytorch_model.bin."""
    state: dict = {"w": torch.ones(2)}
    if extra is not None:
        state["extra"] = extra
    path = tmp_path / "pytorch_model.bin"
    torch.save(state, path, pickle_protocol=protocol, _use_new_zipfile_serialization=zipped)
    try:
        torch.load(path, weights_only=True)
        loads = True
    except Exception:  # noqa: BLE001  (UnpicklingError and friends)
        loads = False
    report = nandoctor.scan(path, device="cpu")
    assert (report.exit_code == 3) == (not loads), (protocol, extra, [e.message for e in report.errors])
    # the same bytes under a name no Hugging Face loader reads: a training file, whose loader picks weights_only
    other = tmp_path / "state.pt"
    other.write_bytes(path.read_bytes())
    if isinstance(extra, (type(None), int)) and protocol >= 2 and zipped:  # (protocols 0/1: nandoctor's reader refuses)
        assert nandoctor.scan(other, device="cpu").exit_code == 0


@pytest.mark.parametrize(("key", "value", "bad"), [
    ("softmax_scale", float("inf"), True), ("attn_logit_softcapping", float("inf"), True),
    ("final_logit_softcapping", -float("inf"), True), ("router_capacity_factor", float("inf"), True),
    ("max_position_bound", float("inf"), False), ("clip_max", float("inf"), False), ("clip_min", -float("inf"), False),
    ("value_max", -float("inf"), True),
])
def test_an_infinite_value_passes_only_where_its_key_is_a_limit(model: Path, key: str, value: float, bad: bool) -> None:
    """A review: "max" inside softmax_scale and "cap" inside softcapping made Infinity there a limit: CLEAN, and
    Gemma2's tanh(x / cap) * cap is NaN at cap = Infinity."""
    _edit(model / "config.json", **{key: value})
    assert (nandoctor.scan(model, device="cpu").exit_code == 3) == bad


@pytest.mark.parametrize("prefix, safe", [("_orig_mod.", True), ("module.", False), ("module._orig_mod.", True),
                                          ("model.", True)])
def test_weights_saved_from_a_wrapped_model_are_not_loadable(tmp_path, prefix, safe):
    """torch.save(compiled_or_ddp_model.state_dict()) beside config.json: from_pretrained strips only the model's
    base prefix ("model." for LlamaForCausalLM's own names is no wrapper), finds none of its names in
    "_orig_mod."/"module." ones and initializes every weight at random; the folder scanned CLEAN."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    folder = _save(tmp_path / "model")
    tensors = {prefix + name: t for name, t in load_file(folder / "model.safetensors").items()}
    (folder / "model.safetensors").unlink()
    if safe:
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    else:
        torch.save(tensors, folder / "pytorch_model.bin")
    _, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    wrapped = prefix != "model."
    assert bool(info["missing_keys"]) is wrapped
    report = nandoctor.scan(folder)
    if not wrapped:
        assert report.exit_code == 0, report.errors
        return
    assert report.exit_code == 3 and [e.kind for e in report.errors] == ["unloadable"], report.errors
    said = {"_orig_mod.": "torch.compile", "module.": "DDP or DataParallel",
            "module._orig_mod.": "torch.compile inside DDP or DataParallel"}[prefix]
    assert f"{prefix!r} from {said})" in report.errors[0].message
