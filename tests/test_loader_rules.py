"""Folders read as Hugging Face loaders read them (issue 14, item 5).

A ``.bin`` is passed over only for the safetensors weights of the same name;
``config.json``'s ``transformers_weights`` is scanned (and refused outside the
folder); subfolders a loader's manifest names (sentence-transformers
``modules.json``, diffusers ``model_index.json``) are scanned, not noted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nandoctor.checkpoint import layout
from nandoctor.engine import scan

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

NAN = float("nan")


def clean(n: int = 4) -> dict:
    return {"w": torch.arange(n, dtype=torch.float32), "b": torch.ones(2)}


def bad(n: int = 4) -> dict:
    sd = clean(n)
    sd["w"][1] = NAN
    return sd


def names(files: list[Path] | tuple[str, ...]) -> list[str]:
    return sorted(Path(f).name for f in files)


@pytest.mark.parametrize(
    ("beside", "scanned"),
    [
        # an unrelated safetensors file hides nothing: transformers would load the .bin
        ("ema.safetensors", ["ema.safetensors", "pytorch_model.bin"]),
        ("model.fp16.safetensors", ["model.fp16.safetensors", "pytorch_model.bin"]),  # another variant
        ("adapter_model.safetensors", ["adapter_model.safetensors", "pytorch_model.bin"]),
        ("model.safetensors", ["model.safetensors"]),  # the same name: transformers loads this one
    ],
)
def test_a_bin_is_skipped_only_for_the_safetensors_of_the_same_name(tmp_path: Path, beside: str, scanned: list) -> None:
    safetensors_torch.save_file(clean(), tmp_path / beside)
    torch.save(bad(), tmp_path / "pytorch_model.bin")
    report = scan(tmp_path, device="cpu")
    assert names(report.files) == scanned
    assert report.exit_code == (1 if "pytorch_model.bin" in scanned else 0)


def test_variants_and_adapters_pair_by_name(tmp_path: Path) -> None:
    safetensors_torch.save_file(clean(), tmp_path / "model.fp16.safetensors")
    safetensors_torch.save_file(clean(), tmp_path / "adapter_model.safetensors")
    for name in ("pytorch_model.fp16.bin", "adapter_model.bin", "pytorch_model.bin"):
        torch.save(bad(), tmp_path / name)
    files = layout.discover(tmp_path)
    assert names(files.skipped) == ["adapter_model.bin", "pytorch_model.fp16.bin"]
    assert "pytorch_model.bin" in names(files.files)  # no model.safetensors: transformers loads it


def test_a_sharded_bin_hidden_by_a_safetensors_index_takes_its_shards_along(tmp_path: Path) -> None:
    safetensors_torch.save_file(clean(), tmp_path / "model-00001-of-00001.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "model-00001-of-00001.safetensors", "b": "model-00001-of-00001.safetensors"}}))
    torch.save(bad(), tmp_path / "part_a.bin")  # shard names the bin index lists, whatever they are
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"w": "part_a.bin", "b": "part_a.bin"}}))
    report = scan(tmp_path, device="cpu")
    assert names(report.files) == ["model-00001-of-00001.safetensors"] and report.exit_code == 0
    assert any("pytorch_model.bin.index.json" not in n and "part_a.bin" in n for n in report.notes)


def _sharded(folder: Path, shards: int = 3) -> None:
    """``model.safetensors.index.json`` and its shards, one tensor each."""
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        safetensors_torch.save_file({f"layers.{i}.w": torch.ones(4)}, folder / name)
        weight_map[f"layers.{i}.w"] = name
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_a_stale_single_file_beside_shards_is_one_note_saying_which_loads(tmp_path: Path) -> None:
    """transformers' from_pretrained looks for model.safetensors before model.safetensors.index.json: a
    model.safetensors left beside shards is what loads. One note says so (not one per shard)."""
    _sharded(tmp_path)
    safetensors_torch.save_file({f"layers.{i}.w": torch.ones(4) for i in range(3)}, tmp_path / "model.safetensors")
    report = scan(tmp_path, device="cpu")
    shared = [n for n in report.notes if "tensor name(s)" in n]
    assert shared == [
        "model.safetensors and the 3 shard(s) of model.safetensors.index.json share 3 tensor name(s) (e.g. layers.0.w): "
        "transformers' from_pretrained loads model.safetensors (it looks for it before model.safetensors.index.json), "
        "so the shards are not what loads; both were scanned as separate checkpoints (the report names the file of "
        "each bad tensor); delete the stale copy: model.safetensors, or model.safetensors.index.json and its shards"]
    assert len(report.tensors) == 6 and report.exit_code == 0


def test_another_file_sharing_names_with_shards_is_one_note(tmp_path: Path) -> None:
    _sharded(tmp_path)
    safetensors_torch.save_file({f"layers.{i}.w": torch.ones(4) for i in range(3)}, tmp_path / "ema.safetensors")
    shared = [n for n in scan(tmp_path, device="cpu").notes if "tensor name(s)" in n]
    assert shared == ["ema.safetensors and the 3 shard(s) of model.safetensors.index.json share 3 tensor name(s) "
                      "(e.g. layers.0.w); scanned as separate checkpoints (the report names the file of each bad tensor)"]


def test_the_single_file_a_loader_prefers_to_an_index() -> None:
    from nandoctor.checkpoint.loaders import single_file_of

    assert single_file_of("model.safetensors.index.json") == "model.safetensors"
    assert single_file_of("model.safetensors.index.fp16.json") == "model.fp16.safetensors"
    assert single_file_of("pytorch_model.bin.index.json") == "pytorch_model.bin"
    assert single_file_of("model.safetensors") is None


def test_variant_index_names_are_read_as_indexes(tmp_path: Path) -> None:
    safetensors_torch.save_file(clean(), tmp_path / "model.fp16-00001-of-00002.safetensors")
    (tmp_path / "model.safetensors.index.fp16.json").write_text(json.dumps({"weight_map": {
        "w": "model.fp16-00001-of-00002.safetensors", "b": "model.fp16-00002-of-00002.safetensors"}}))
    report = scan(tmp_path, device="cpu")
    assert report.exit_code == 3  # the index says a second shard exists: its absence is a problem
    assert any("missing" in e.message for e in report.errors)


def write_config(folder: Path, value: object) -> None:
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "transformers_weights": value}))


def test_transformers_weights_names_the_file_to_scan(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    safetensors_torch.save_file(bad(), tmp_path / "weights" / "custom.safetensors")
    write_config(tmp_path, "weights/custom.safetensors")
    report = scan(tmp_path, device="cpu")
    assert names(report.files) == ["custom.safetensors"]
    assert report.exit_code == 1 and {t.name for t in report.bad_tensors} == {"w"}


def test_transformers_weights_names_an_index(tmp_path: Path) -> None:
    safetensors_torch.save_file(bad(), tmp_path / "shard.safetensors")
    (tmp_path / "custom.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "shard.safetensors", "b": "shard.safetensors"}}))
    write_config(tmp_path, "custom.safetensors.index.json")
    files = layout.discover(tmp_path)
    assert [i.path.name for i in files.indexes] == ["custom.safetensors.index.json"] and names(files.files) == ["shard.safetensors"]


@pytest.mark.parametrize("value", ["../outside.safetensors", "/etc/outside.safetensors", "link.safetensors"])
def test_transformers_weights_outside_the_folder_is_refused(tmp_path: Path, value: str) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    safetensors_torch.save_file(clean(), folder / "model.safetensors")
    safetensors_torch.save_file(bad(), tmp_path / "outside.safetensors")
    os.symlink(tmp_path / "outside.safetensors", folder / "link.safetensors")  # a link out is no way in either
    write_config(folder, value)
    report = scan(folder, device="cpu")
    assert report.exit_code == 3
    assert any("transformers_weights" in e.message and "outside the checkpoint folder" in e.message for e in report.errors)


@pytest.mark.parametrize(("value", "words"), [("weights.pt", "transformers refuses"), (7, "transformers refuses"),
                                              ("gone.safetensors", "missing"),
                                              # a fuzzer's find: "internal error: ValueError: embedded null byte"
                                              ("model\u0000.safetensors", "not a valid file name (it holds a NUL byte)"),
                                              ("x" * 300 + ".safetensors", "it is longer than a file name can be"),
                                              ("\ud800.safetensors", "it holds characters no file name can")])
def test_transformers_weights_that_cannot_load_is_a_problem(tmp_path: Path, value: object, words: str) -> None:
    safetensors_torch.save_file(clean(), tmp_path / "model.safetensors")
    write_config(tmp_path, value)
    report = scan(tmp_path, device="cpu")
    assert report.exit_code == 3 and any(words in e.message for e in report.errors)


def sentence_transformer(folder: Path, dense: dict) -> None:
    folder.mkdir()
    safetensors_torch.save_file(clean(), folder / "model.safetensors")
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text("{}")
    (folder / "2_Dense").mkdir()
    torch.save({"linear.weight": dense["w"], "linear.bias": dense["b"]}, folder / "2_Dense" / "pytorch_model.bin")
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
    ]))


def test_sentence_transformers_subfolders_are_scanned(tmp_path: Path) -> None:
    sentence_transformer(tmp_path / "st", bad())
    report = scan(tmp_path / "st", device="cpu")
    assert sorted(os.path.relpath(f, tmp_path / "st") for f in report.files) == ["2_Dense/pytorch_model.bin", "model.safetensors"]
    assert report.exit_code == 1 and {t.name for t in report.bad_tensors} == {"linear.weight"}
    assert not any("not scanned" in n for n in report.notes)


def test_diffusers_components_are_scanned(tmp_path: Path) -> None:
    (tmp_path / "unet").mkdir()
    (tmp_path / "vae").mkdir()
    safetensors_torch.save_file(bad(), tmp_path / "unet" / "diffusion_pytorch_model.safetensors")
    torch.save(bad(), tmp_path / "unet" / "diffusion_pytorch_model.bin")  # hidden by its safetensors twin
    safetensors_torch.save_file(clean(), tmp_path / "vae" / "diffusion_pytorch_model.safetensors")
    (tmp_path / "model_index.json").write_text(json.dumps(
        {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
         "vae": ["diffusers", "AutoencoderKL"], "safety_checker": [None, None]}))
    files = layout.discover(tmp_path)
    assert sorted(os.path.relpath(f, tmp_path) for f in files.files) == [
        "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"]
    assert [os.path.relpath(f, tmp_path) for f in files.skipped] == ["unet/diffusion_pytorch_model.bin"]


def test_a_manifest_naming_a_folder_outside_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "st"
    sentence_transformer(folder, clean())
    (tmp_path / "elsewhere").mkdir()
    torch.save(bad(), tmp_path / "elsewhere" / "pytorch_model.bin")
    modules = json.loads((folder / "modules.json").read_text())
    modules[2]["path"] = "../elsewhere"
    (folder / "modules.json").write_text(json.dumps(modules))
    report = scan(folder, device="cpu")
    assert report.exit_code == 3 and any("outside the checkpoint folder" in e.message for e in report.errors)


def test_a_sentence_transformer_dense_layer_is_repaired(tmp_path: Path) -> None:
    from nandoctor.restore import repair

    sentence_transformer(tmp_path / "old", clean())
    sentence_transformer(tmp_path / "new", bad())
    result = repair(tmp_path / "new", [tmp_path / "old"], tmp_path / "fixed")
    assert result.ok and [r.name for r in result.plan.restorations] == ["linear.weight"]
    fixed = torch.load(tmp_path / "fixed" / "2_Dense" / "pytorch_model.bin", weights_only=True)
    assert torch.equal(fixed["linear.weight"], clean()["w"]) and torch.equal(fixed["linear.bias"], clean()["b"])
    assert (tmp_path / "fixed" / "model.safetensors").read_bytes() == (tmp_path / "new" / "model.safetensors").read_bytes()


def test_a_shard_name_holding_dot_dot_is_not_loadable_even_inside_the_folder(tmp_path: Path) -> None:
    """An adversarial round: an index naming its shards `sub/a/../model-0000k-of-00003.safetensors` (inside the folder
    once resolved) read CLEAN, and transformers refuses any shard name holding `..` without resolving it ("has a shard
    filename that points outside the model directory")."""
    transformers = pytest.importorskip("transformers")
    from tests.trainer_checkpoints import tiny_llama

    folder = tmp_path / "model"
    tiny_llama().save_pretrained(folder, max_shard_size="4KB")
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    (folder / "sub" / "a").mkdir(parents=True)
    for shard in set(index["weight_map"].values()):
        os.rename(folder / shard, folder / "sub" / shard)
    index["weight_map"] = {name: "sub/a/../" + shard for name, shard in index["weight_map"].items()}
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match="points outside the model directory"):  # the oracle
        transformers.AutoModelForCausalLM.from_pretrained(folder)
    report = scan(folder, device="cpu")
    assert report.exit_code == 3 and {e.kind for e in report.errors} == {"unloadable"}, report.errors
    assert all("holds '..'" in e.message for e in report.errors)


def test_transformers_weights_through_dot_dot_reads_the_file_once(tmp_path: Path) -> None:
    """An adversarial round: `transformers_weights: "sub/../model.safetensors"` (transformers checks it lexically and
    loads the folder's model.safetensors) was read twice, the file beside it and the one it names: "2 files · 42
    tensors", two NaN for the one planted."""
    transformers = pytest.importorskip("transformers")
    from tests.trainer_checkpoints import tiny_llama

    folder = tmp_path / "model"
    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[3, 3] = NAN
    model.save_pretrained(folder)
    (folder / "sub").mkdir()
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "transformers_weights": "sub/../model.safetensors"}))
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder)  # the oracle: it loads, NaN and all
    assert int(loaded.model.layers[0].mlp.up_proj.weight.isnan().sum()) == 1
    report = scan(folder, device="cpu")
    assert names(report.files) == ["model.safetensors"] and report.nan == 1 and report.exit_code == 1
