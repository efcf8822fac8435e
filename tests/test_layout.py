"""Folders of torch files: sharded .bin with its index, both formats side by side, Trainer checkpoint-N."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import nandoctor
from nandoctor.checkpoint import layout
from nandoctor.engine import scan
from tests.conftest import DEMO_RUN
from tests.torch_helpers import flatten, report_counts, torch_counts

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

NAN, INF = float("nan"), float("inf")


def weights() -> dict:
    g = torch.Generator().manual_seed(1)
    sd = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(4, 3, generator=g) for i in range(4)}
    sd["model.embed_tokens.weight"] = torch.randn(6, 3, generator=g)
    sd["model.layers.2.mlp.up_proj.weight"][1, 2] = NAN
    sd["model.layers.3.mlp.up_proj.weight"][0, 0] = -INF
    return sd


def save_sharded_bin(folder: Path, sd: dict, *, index_edit=None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(sd)
    shards = {"pytorch_model-00001-of-00002.bin": names[:2], "pytorch_model-00002-of-00002.bin": names[2:]}
    weight_map = {}
    for shard, members in shards.items():
        torch.save({n: sd[n] for n in members}, folder / shard)
        weight_map.update({n: shard for n in members})
    index = {"metadata": {"total_size": sum(t.numel() * 4 for t in sd.values())}, "weight_map": weight_map}
    if index_edit:
        index_edit(index)
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))


def test_sharded_bin_with_index(tmp_path: Path) -> None:
    sd = weights()
    save_sharded_bin(tmp_path / "ckpt", sd)
    report = scan(tmp_path / "ckpt", device="cpu")
    assert not report.errors
    assert sorted(Path(f).name for f in report.files) == [
        "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    assert report_counts(report) == {n: torch_counts(t) for n, t in sd.items()}
    assert report.exit_code == 1


def test_bin_index_that_disagrees_with_its_shards(tmp_path: Path) -> None:
    def edit(index: dict) -> None:
        index["weight_map"]["model.ghost.weight"] = "pytorch_model-00001-of-00002.bin"  # not in the shard
        del index["weight_map"]["model.layers.3.mlp.up_proj.weight"]  # in a shard, not in the index

    save_sharded_bin(tmp_path / "ckpt", weights(), index_edit=edit)
    report = scan(tmp_path / "ckpt", device="cpu")
    messages = " | ".join(e.message for e in report.errors)
    assert "model.ghost.weight" in messages and "absent from every shard" in messages
    # (loaders read every tensor of the shards an index lists: the unlisted one loads, a note says so)
    assert "model.layers.3.mlp.up_proj.weight" not in messages
    assert any("model.layers.3.mlp.up_proj.weight" in n and "not in pytorch_model.bin.index.json" in n for n in report.notes)
    assert report.exit_code == 3


def test_bin_index_with_missing_or_escaping_shard(tmp_path: Path) -> None:
    def edit(index: dict) -> None:
        index["weight_map"]["model.embed_tokens.weight"] = "../outside.bin"
        index["weight_map"]["model.layers.0.mlp.up_proj.weight"] = "pytorch_model-00009-of-00009.bin"

    save_sharded_bin(tmp_path / "ckpt", weights(), index_edit=edit)
    torch.save({"x": torch.ones(1)}, tmp_path / "outside.bin")
    report = scan(tmp_path / "ckpt", device="cpu")
    messages = " | ".join(e.message for e in report.errors)
    assert "outside the checkpoint folder" in messages and "missing" in messages
    assert str(tmp_path / "outside.bin") not in report.files


def test_shards_that_are_links_out_of_the_folder_are_followed(tmp_path: Path) -> None:
    """A folder of links to shards kept elsewhere (`cp -rs`, a --local-dir download with links) loads in
    transformers: it is scanned as the shards are, NaN counted, not refused as shards 'outside the folder'
    (an index naming ../outside.bin still is, above)."""
    store, linked = tmp_path / "store", tmp_path / "linked"
    state = weights()
    state["model.layers.1.mlp.up_proj.weight"][2, 1] = float("nan")
    save_sharded_bin(store, state)
    linked.mkdir()
    for file in store.iterdir():
        (linked / file.name).symlink_to(file)
    report, original = scan(linked, device="cpu"), scan(store, device="cpu")
    assert not report.errors and report.exit_code == original.exit_code == 1
    assert report_counts(report) == report_counts(original) and report.nan == original.nan >= 1
    assert "model.layers.1.mlp.up_proj.weight" in {t.ref.name for t in report.bad_tensors}


def test_both_formats_scans_safetensors_and_says_so(tmp_path: Path) -> None:
    sd = weights()
    folder = tmp_path / "ckpt"
    folder.mkdir()
    safetensors_torch.save_file(sd, folder / "model.safetensors")
    bin_sd = dict(sd)
    bin_sd["lm_head.weight"] = bin_sd["model.embed_tokens.weight"]  # tied: present only in the .bin
    torch.save(bin_sd, folder / "pytorch_model.bin")

    report = scan(folder, device="cpu")
    assert [Path(f).name for f in report.files] == ["model.safetensors"]
    assert any("both safetensors and .bin" in n and "--both-formats" in n for n in report.notes)
    assert report_counts(report) == {n: torch_counts(t) for n, t in sd.items()}

    both = scan(folder, device="cpu", both_formats=True)
    assert sorted(Path(f).name for f in both.files) == ["model.safetensors", "pytorch_model.bin"]
    assert not both.errors  # the same names in two formats are expected, not "ambiguous"
    assert len(both.tensors) == len(sd) * 2 + 1
    assert both.nan == 2 * 1 + 0 and both.neginf == 2


def save_trainer_checkpoint(folder: Path, *, rng_files=("rng_state.pth",)) -> dict:
    import random

    import numpy as np

    folder.mkdir(parents=True)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model(torch.randn(2, 3)).sum().backward()
    opt = torch.optim.AdamW(model.parameters())
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    safetensors_torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    state = opt.state_dict()
    state["state"][1]["exp_avg_sq"][2] = NAN
    torch.save(state, folder / "optimizer.pt")
    torch.save(sched.state_dict(), folder / "scheduler.pt")
    torch.save({"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0}, folder / "scaler.pt")
    for name in rng_files:
        torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()},
                   folder / name)
    import argparse

    torch.save(argparse.Namespace(output_dir="out", learning_rate=5e-5), folder / "training_args.bin")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 500, "log_history": []}))
    (folder / "config.json").write_text("{}")
    return state


def test_trainer_checkpoint_scans_weights_and_optimizer(tmp_path: Path) -> None:
    folder = tmp_path / "output" / "checkpoint-500"
    state = save_trainer_checkpoint(folder, rng_files=("rng_state_0.pth", "rng_state_1.pth"))
    files = layout.discover(folder)
    assert sorted(p.name for p in files.files) == [
        "model.safetensors", "optimizer.pt", "rng_state_0.pth", "rng_state_1.pth", "scaler.pt", "scheduler.pt"]
    assert files.skipped == []  # not weights in another format: a repair copies it like trainer_state.json
    assert any(n.startswith("training_args.bin") and "not scanned" in n for n in files.notes)

    report = scan(folder, device="cpu")
    assert not report.errors  # rng_state_0 and rng_state_1 hold the same keys, but are named apart
    counts = report_counts(report)
    assert counts["optimizer.state.1.exp_avg_sq"] == (1, 0, 0)
    assert {n for n in counts if n.startswith("optimizer.")} == set(flatten(state, "optimizer"))
    assert "rng_state_0.cpu" in counts and "rng_state_1.cpu" in counts
    assert report.exit_code == 1
    assert not any("numpy" in n for n in report.notes)  # RNG state in rng_state*.pth is expected: no note


def test_training_args_alone_is_read_without_running_it(tmp_path: Path) -> None:
    import argparse

    path = tmp_path / "training_args.bin"
    torch.save(argparse.Namespace(output_dir="out"), path)
    report = scan(path, device="cpu")
    # read as data (the Namespace an inert stand-in); it holds no weights: nothing to call clean (exit 3)
    assert report.exit_code == 3 and not report.tensors and [e.kind for e in report.errors] == ["empty"]
    assert any("argparse.Namespace" in n for n in report.notes)


def test_folder_of_bin_and_optimizer_without_index(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save(weights(), folder / "pytorch_model.bin")
    torch.save({"state": {0: {"exp_avg": torch.tensor([INF])}}, "param_groups": [{"params": [0]}]},
               folder / "optimizer.pt")
    report = scan(folder, device="cpu")
    assert not report.errors
    assert report_counts(report)["optimizer.state.0.exp_avg"] == (0, 1, 0)
    assert report_counts(report)["model.layers.2.mlp.up_proj.weight"] == (1, 0, 0)


def test_cli_both_formats_flag(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from nandoctor.cli import cli

    folder = tmp_path / "ckpt"
    folder.mkdir()
    clean = {"w": torch.ones(2)}
    safetensors_torch.save_file(clean, folder / "model.safetensors")
    torch.save({"w": torch.tensor([NAN, 1.0])}, folder / "pytorch_model.bin")  # the .bin differs
    runner = CliRunner()
    assert runner.invoke(cli, ["scan", str(folder), "--no-progress"]).exit_code == 0
    result = runner.invoke(cli, ["scan", str(folder), "--no-progress", "--both-formats", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["summary"]["nan"] == 1


@pytest.mark.parametrize("name", ["model.safetensors.index.json", "config.json"])
def test_a_json_file_of_a_checkpoint_points_at_its_folder(tmp_path: Path, name: str) -> None:
    from nandoctor.errors import UnsupportedFormatError

    folder = tmp_path / "ck"
    shutil.copytree(DEMO_RUN / "checkpoint-300", folder)
    with pytest.raises(UnsupportedFormatError) as caught:
        layout.discover(folder / name)
    assert "not weights" in caught.value.message and caught.value.hint.endswith(f"nandoctor scan {folder}")


def test_deepspeed_states_are_scanned_with_the_checkpoint_and_other_subfolders_noted(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint-300"
    shutil.copytree(DEMO_RUN / "checkpoint-200", folder)
    states = folder / "global_step300"
    states.mkdir()
    flat = torch.randn(1000)
    flat[17] = float("nan")
    for rank in range(2):  # the same keys in every rank's file
        torch.save({"optimizer_state_dict": {"fp32_flat_groups": [flat if rank else torch.randn(1000)]}},
                   states / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    (folder / "extra").mkdir()
    torch.save({"w": torch.ones(2)}, folder / "extra" / "adapter.bin")

    report = scan(folder, device="cpu")
    bad = {t.name: (t.nan, t.first_bad) for t in report.bad_tensors}
    assert bad == {"bf16_zero_pp_rank_1_mp_rank_00_optim_states.optimizer_state_dict.fp32_flat_groups.0": (1, 17)}
    assert report.exit_code == 1 and not report.errors
    assert any(n.startswith("extra/ holds 1 weight file(s) that were not scanned") for n in report.notes)


def test_a_folder_named_global_step_with_hugging_face_shards_is_read_as_usual(tmp_path: Path) -> None:
    """Megatron/BLOOM-style uploads keep ordinary sharded .bin weights in global_stepN/."""
    folder = tmp_path / "global_step100"
    folder.mkdir()
    shards = {"pytorch_model-00001-of-00002.bin": {"a": torch.ones(2)}, "pytorch_model-00002-of-00002.bin": {"b": torch.ones(3)}}
    for name, tensors in shards.items():
        torch.save(tensors, folder / name)
    index = {"metadata": {}, "weight_map": {k: name for name, tensors in shards.items() for k in tensors}}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    report = scan(folder, device="cpu")
    assert report.exit_code == 0 and sorted(t.name for t in report.tensors) == ["a", "b"]


def test_deepspeed_states_are_repaired_from_the_earlier_checkpoint(tmp_path: Path) -> None:
    from nandoctor.restore import repair

    run = tmp_path / "run"
    flats = {}
    for step in (10, 20):
        folder = run / f"checkpoint-{step}"
        shutil.copytree(DEMO_RUN / "checkpoint-200", folder)
        (folder / f"global_step{step}").mkdir()
        flat = torch.arange(1000, dtype=torch.float32) + step
        if step == 20:
            flat[17] = float("nan")
        flats[step] = flat
        torch.save({"optimizer_state_dict": {"fp32_flat_groups": [flat]}},
                   folder / f"global_step{step}" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    result = repair(run / "checkpoint-20", ["auto"], tmp_path / "fixed")
    assert result.ok and [r.name for r in result.plan.restorations] == [
        "zero_pp_rank_0_mp_rank_00_optim_states.optimizer_state_dict.fp32_flat_groups.0"]
    fixed = torch.load(tmp_path / "fixed" / "global_step20" / "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                       weights_only=True)["optimizer_state_dict"]["fp32_flat_groups"][0]
    assert torch.equal(fixed, flats[10])  # the donor's tensor, whole


# ---------------------------------------------------------------------------
# Broken symlinks, folders of model folders, folders that cannot be listed
# ---------------------------------------------------------------------------


def _hf_snapshot(root: Path) -> Path:
    """A Hugging Face cache snapshot whose model.safetensors links to a blob that is gone."""
    snapshot = root / "models--org--tiny" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (root / "models--org--tiny" / "blobs").mkdir()
    (snapshot / "model.safetensors").symlink_to("../../blobs/" + "b" * 64)
    (snapshot / "config.json").write_text("{}")
    return snapshot


def test_a_broken_symlink_names_its_target_and_a_lost_hf_blob_says_re_download(tmp_path: Path) -> None:
    from nandoctor.errors import CheckpointNotFoundError
    from tests.conftest import run_cli

    snapshot = _hf_snapshot(tmp_path)
    link = snapshot / "model.safetensors"
    found = layout.discover(snapshot)
    assert found.files == []
    (problem,) = found.problems
    assert (problem.path, problem.message) == (
        str(link), f"a broken symlink: it points to ../../blobs/{'b' * 64}, which does not exist")
    assert problem.hint == ("the Hugging Face cache lost this blob (an interrupted download, or a cache clean-up): "
                            "download the model again: huggingface-cli download org/tiny --force-download")
    with pytest.raises(CheckpointNotFoundError) as info:  # the link itself as the path
        layout.discover(link)
    assert info.value.message == f"{link}: {problem.message}" and info.value.hint == problem.hint
    elsewhere = tmp_path / "w.safetensors"
    elsewhere.symlink_to(tmp_path / "gone" / "w.safetensors")
    result = run_cli("scan", elsewhere, "--quiet")
    assert result.exit_code == 3
    assert result.output.startswith(
        f"FAIL UNREADABLE {elsewhere}: a broken symlink: it points to {tmp_path / 'gone' / 'w.safetensors'}, "
        "which does not exist\n")
    loop = tmp_path / "loop.safetensors"
    loop.symlink_to(loop)
    with pytest.raises(CheckpointNotFoundError, match="a symlink loop; refused"):
        layout.discover(loop)


def test_a_shard_named_by_the_index_that_is_a_broken_link_says_so(tmp_path: Path) -> None:
    ckpt = shutil.copytree(DEMO_RUN / "checkpoint-200", tmp_path / "ckpt")
    shard = ckpt / "model-00002-of-00002.safetensors"
    shard.unlink()
    shard.symlink_to("blobs/0123")  # inside the folder, as a snapshot's links lead into its own blobs/
    problems = layout.discover(ckpt).problems
    assert [(p.path, p.message, p.hint) for p in problems] == [  # once, as the index's shard
        (str(shard), "a broken symlink: it points to blobs/0123, which does not exist",
         "restore the file it points to (or copy the weights in place of the link), then scan again")]


def test_a_folder_of_model_folders_names_the_ones_holding_weights(tmp_path: Path) -> None:
    from nandoctor.errors import UnsupportedFormatError
    from tests.conftest import run_cli

    models = tmp_path / "models"
    for name in ("llama", "bert", "qwen", "t5", "gpt2", "phi", "mistral"):
        shutil.copytree(DEMO_RUN / "checkpoint-200", models / name)
    (models / "notes").mkdir()  # no weights: not named
    (models / "notes" / "readme.txt").write_text("x")
    with pytest.raises(UnsupportedFormatError) as info:
        layout.discover(models)
    assert info.value.message == (f"{models}: no checkpoint files at its top, but 7 subfolder(s) hold weights: "
                                  "bert/, gpt2/, llama/, mistral/, phi/ and 2 more")
    assert info.value.hint == f"scan one of them, e.g. nandoctor scan {models / 'bert'}"
    quiet = run_cli("scan", models, "--quiet")
    assert quiet.exit_code == 3 and quiet.output.startswith(f"FAIL NO CHECKPOINT {models}: no checkpoint files at its top")
    shutil.rmtree(models / "notes")
    for name in ("llama", "bert", "qwen", "t5", "gpt2", "phi"):
        shutil.rmtree(models / name)
    with pytest.raises(UnsupportedFormatError) as one:
        layout.discover(models)
    assert one.value.message == f"{models}: no checkpoint files at its top, but 1 subfolder(s) hold weights: mistral/"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UnsupportedFormatError, match="no checkpoint files found"):
        layout.discover(empty)


def test_a_deepspeed_folder_that_cannot_be_listed_is_a_problem_another_is_a_note(tmp_path: Path) -> None:
    """Permissions as the test's own user sees them: as root (who reads everything) the scan runs in a child
    process without CAP_DAC_OVERRIDE (tests/permissions.py)."""
    from tests.permissions import mode, need_permissions, run_nandoctor

    need_permissions()
    ckpt = shutil.copytree(DEMO_RUN / "checkpoint-200", tmp_path / "checkpoint-200")
    states = ckpt / "global_step200"
    states.mkdir()
    shutil.copy(ckpt / "model-00001-of-00002.safetensors", states / "zero_pp_rank_0_mp_rank_00_model_states.safetensors")
    other = ckpt / "extras"
    other.mkdir()
    with mode(states, 0), mode(other, 0):
        result = run_nandoctor("scan", ckpt, "--json")
    data = json.loads(result.stdout)
    assert result.returncode == 3
    assert [(e["path"], e["message"]) for e in data["errors"]] == [
        (str(states), "permission denied (its DeepSpeed state files are not scanned)")]
    assert "extras/ could not be listed (permission denied); not checked for weights" in data["notes"]


@pytest.mark.parametrize("case", ["unlisted third shard", "leftover of another count"])
def test_a_numbered_shard_the_index_does_not_list_is_never_a_missing_set(tmp_path: Path, case: str) -> None:
    """Loaders read the shards the index names: a shard beside them the index does not list is not read. Of the
    listed set (the index names 1-2 of 3), the index is incomplete: NOT LOADABLE; of another count (a
    model-00003-of-00003 beside a complete 2-shard set), a leftover: a note. Both said shards 1 and 2 were missing
    (both there), the second its tensor ambiguous."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    count = 3 if case == "unlisted third shard" else 2
    weight_map = {}
    for s in range(2):
        name = f"model-{s + 1:05d}-of-{count:05d}.safetensors"
        save_file({f"layers.{s}.weight": torch.randn(4, 4)}, str(tmp_path / name))
        weight_map[f"layers.{s}.weight"] = name
    save_file({"layers.1.weight" if count == 2 else "layers.2.weight": torch.randn(4, 4)},
              str(tmp_path / "model-00003-of-00003.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    loaded = {k for shard in set(weight_map.values()) for k in load_file(str(tmp_path / shard))}
    assert loaded == {"layers.0.weight", "layers.1.weight"}  # (what the index makes a loader read)
    report = nandoctor.scan(tmp_path)
    if case == "unlisted third shard":  # the index is incomplete: layers.2.weight reaches no model
        assert report.exit_code == 3 and [p.kind for p in report.errors] == ["unloadable"], report.errors
        assert report.errors[0].message.startswith("model-00003-of-00003.safetensors is a shard of the set the index "
                                                   "lists, but the index does not list it")
        return
    assert report.exit_code == 0 and not report.errors, report.errors
    assert any(n.startswith("model-00003-of-00003.safetensors: a numbered shard of another count") for n in report.notes)
    assert sorted(report.tensors.refs.names) == ["layers.0.weight", "layers.1.weight"]


def test_a_folder_whose_weights_lie_deeper_names_them(tmp_path):
    """A false-alarm hunt scanned a Lightning project as it lies (`lightning_logs/version_N/checkpoints/…ckpt`, the
    default): "no checkpoint files found", and nothing said where they are. Two or three folders down, the folders
    holding weights are named, and the newest (last by name) is suggested."""
    from fixtures.builders import RawTensor, write_safetensors
    from tests.conftest import run_cli

    for version in (0, 1, 10):
        folder = tmp_path / "lightning_logs" / f"version_{version}" / "checkpoints"
        folder.mkdir(parents=True)
        write_safetensors(folder / "epoch=0-step=2.safetensors", {"w": RawTensor("F32", (2,), b"\0" * 8)})
    for where in (tmp_path, tmp_path / "lightning_logs"):
        done = run_cli("scan", where, "-q")
        said = " ".join((done.stdout + done.stderr).split())
        assert done.exit_code == 3 and "deeper" in said and "version_0/checkpoints/" in said, said
        assert f"nandoctor scan {tmp_path / 'lightning_logs' / 'version_10' / 'checkpoints'}" in said, said
    (tmp_path / "empty" / "a" / "b" / "c" / "d").mkdir(parents=True)
    assert "no checkpoint files found" in run_cli("scan", tmp_path / "empty", "-q").stdout


def test_a_sharded_dtype_variant_beside_the_sharded_default_is_another_model(tmp_path):
    """A false-alarm hunt: save_pretrained(max_shard_size=…) and again with variant="fp16" into one folder (two
    indexes, model.safetensors.index.json and model.safetensors.index.fp16.json): every name was "also in" the
    other set, "which one loads is ambiguous", exit 3, where from_pretrained loads either. Each set is its own
    model; a NaN in the variant is still found, naming its file."""
    import numpy as np
    from safetensors.numpy import save_file

    from tests.conftest import run_cli

    weights = {f"layers.{i}.weight": np.full((4, 4), 0.5, np.float32) for i in range(4)}
    for variant, dtype in (("", np.float32), (".fp16", np.float16)):
        shards = {f"model{variant}-0000{k + 1}-of-00002.safetensors": [f"layers.{2 * k}.weight", f"layers.{2 * k + 1}.weight"]
                  for k in range(2)}
        for shard, names in shards.items():
            save_file({n: weights[n].astype(dtype) for n in names}, tmp_path / shard)
        index = {"metadata": {}, "weight_map": {n: shard for shard, names in shards.items() for n in names}}
        (tmp_path / f"model.safetensors.index{variant}.json").write_text(json.dumps(index))
    clean = run_cli("scan", tmp_path, "-q")
    assert clean.exit_code == 0 and clean.stdout.startswith("PASS CLEAN"), clean.output
    bad = {"layers.2.weight": weights["layers.2.weight"].astype(np.float16).copy(),
           "layers.3.weight": weights["layers.3.weight"].astype(np.float16)}
    bad["layers.2.weight"][0, 0] = np.nan
    save_file(bad, tmp_path / "model.fp16-00002-of-00002.safetensors")
    found = nandoctor.scan(tmp_path)
    assert found.exit_code == 1 and [t.ref.file.rsplit("/", 1)[-1] for t in found.bad_tensors] == [
        "model.fp16-00002-of-00002.safetensors"]


def test_a_set_of_numbered_shards_under_another_name_beside_the_loaded_set_is_no_reason_it_does_not_load(tmp_path):
    """A false-alarm hunt: Mistral's consolidated-0000N-of-00002.safetensors (no index) beside the transformers set
    with its index: NOT LOADABLE, though from_pretrained never reads them. Alone, such a set still is."""
    import numpy as np
    from safetensors.numpy import save_file

    from tests.conftest import run_cli

    for k in (1, 2):
        save_file({f"layers.{k}.weight": np.ones((2, 2), np.float32)}, tmp_path / f"model-0000{k}-of-00002.safetensors")
        save_file({f"layers.{k}.attention.wq.weight": np.ones((2, 2), np.float32)},
                  tmp_path / f"consolidated-0000{k}-of-00002.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {f"layers.{k}.weight": f"model-0000{k}-of-00002.safetensors" for k in (1, 2)}}))
    (tmp_path / "config.json").write_text('{"model_type": "custom"}')  # (a model folder: from_pretrained's rules)
    done = run_cli("scan", tmp_path, "-q")
    assert done.exit_code == 0, done.output
    (tmp_path / "model.safetensors.index.json").unlink()
    for k in (1, 2):
        (tmp_path / f"model-0000{k}-of-00002.safetensors").unlink()
    alone = run_cli("scan", tmp_path, "-q")
    assert alone.exit_code == 3 and "NOT LOADABLE" in alone.stdout, alone.output


def test_an_unpadded_k_of_n_name_is_a_whole_model_not_a_shard(tmp_path):
    """A review: a complete model saved as ``fold-1-of-5.pt`` (a cross-validation series) was "one of the 5 numbered
    shards its name counts", and its folder exit 3 with "4 of 5 numbered shards missing", while torch.load loads it
    whole. Shards are named as their writers name them, both numbers padded to five digits; a set so named missing
    files is still refused."""
    import torch

    import nandoctor

    torch.save({"w": torch.ones(4, 4)}, tmp_path / "fold-1-of-5.pt")
    assert torch.load(tmp_path / "fold-1-of-5.pt", weights_only=True)["w"].shape == (4, 4)  # the oracle: it is whole
    single = nandoctor.scan(tmp_path / "fold-1-of-5.pt")
    assert single.exit_code == 0 and not any("numbered shards" in n for n in single.notes)
    assert nandoctor.scan(tmp_path).exit_code == 0
    padded = tmp_path / "set"
    padded.mkdir()
    torch.save({"w": torch.ones(4, 4)}, padded / "model-00001-of-00005.pt")
    found = nandoctor.scan(padded)
    assert found.exit_code == 3 and "4 of 5 numbered shards missing" in found.errors[0].message
