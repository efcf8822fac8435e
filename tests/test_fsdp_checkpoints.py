"""FSDP-sharded Trainer checkpoints: ``checkpoint-N/pytorch_model_fsdp_0/`` and ``optimizer_0/`` (DCP folders, as
accelerate's ``save_fsdp_model`` / ``save_fsdp_optimizer`` write them for SHARDED_STATE_DICT) scanned as part of
the checkpoint, alone and in the run's timeline; torch's own ``dcp_to_torch_save`` is the oracle."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import nandoctor
from tests.torch_helpers import flatten, report_counts, torch_counts

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")
pytest.importorskip("transformers")
from tests.trainer_checkpoints import trainer_run  # noqa: E402  (needs torch and transformers)

PLANTED = "model.layers.1.mlp.down_proj.weight"


def _as_fsdp_sharded(folder: Path, plant: bool) -> None:
    """Turn a Trainer checkpoint into what Trainer writes under FSDP with SHARDED_STATE_DICT: the model and the
    optimizer through accelerate's own save_fsdp_model / save_fsdp_optimizer, the trainer's files kept, no
    model.safetensors, optimizer.pt or config.json. ``plant``: NaN in one weight and one Adam moment."""
    import warnings

    from accelerate import Accelerator
    from accelerate.utils import FullyShardedDataParallelPlugin, save_fsdp_model, save_fsdp_optimizer
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.arange(8)[None]
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    if plant:
        with torch.no_grad():
            weight = model.get_parameter(PLANTED)
            weight[0, 3] = float("nan")
            optimizer.state[weight]["exp_avg"][1, 1] = float("inf")
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="SHARDED_STATE_DICT")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # single process: DCP says it assumes so
        save_fsdp_model(plugin, Accelerator(), model, str(folder))
        save_fsdp_optimizer(plugin, Accelerator(), optimizer, model, str(folder))
    for name in ("model.safetensors", "optimizer.pt", "config.json", "generation_config.json"):
        (folder / name).unlink()


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> Path:
    run = trainer_run(tmp_path_factory.mktemp("fsdp") / "run", steps=4)
    _as_fsdp_sharded(run / "checkpoint-2", plant=False)
    _as_fsdp_sharded(run / "checkpoint-4", plant=True)
    return run


def _oracle(folder: Path, tmp_path: Path) -> dict[str, tuple[int, int, int]]:
    """(NaN, +Inf, -Inf) of every tensor torch rebuilds from the checkpoint's DCP folders, named as nandoctor
    names them."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    counts = {}
    for sub in ("pytorch_model_fsdp_0", "optimizer_0"):
        dcp_to_torch_save(folder / sub, tmp_path / f"{sub}.pt")
        state = torch.load(tmp_path / f"{sub}.pt", weights_only=False)
        counts.update({name: torch_counts(t) for name, t in flatten(state).items() if t.is_floating_point()})
    return counts


def test_fsdp_sharded_model_and_optimizer_are_scanned_with_the_checkpoint(fsdp_run: Path, tmp_path: Path) -> None:
    bad = fsdp_run / "checkpoint-4"
    assert sorted(p.name for p in bad.iterdir() if p.is_dir()) == ["optimizer_0", "pytorch_model_fsdp_0"]
    expected = _oracle(bad, tmp_path)
    assert {n: c for n, c in expected.items() if any(c)} == {
        f"model.{PLANTED}": (1, 0, 0), f"optimizer.state.{PLANTED}.exp_avg": (0, 1, 0)}

    report = nandoctor.scan(bad, device="cpu")
    assert report.exit_code == 1 and not report.errors
    found = report_counts(report)
    assert {n: found[n] for n in expected} == expected  # every model and optimizer tensor, counted as torch counts
    assert {n for n, c in found.items() if any(c)} == {f"model.{PLANTED}", f"optimizer.state.{PLANTED}.exp_avg"}
    assert any(n.startswith("pytorch_model_fsdp_0/ holds the model as FSDP sharded state") for n in report.notes)

    clean = nandoctor.scan(fsdp_run / "checkpoint-2", device="cpu")
    assert clean.exit_code == 0 and len(clean.tensors) == len(report.tensors)


def test_fsdp_sharded_checkpoints_in_the_run_timeline(fsdp_run: Path) -> None:
    timeline = nandoctor.scan_run(fsdp_run, device="cpu")
    assert [(c.name, c.status) for c in timeline.checkpoints] == [("checkpoint-2", "clean"), ("checkpoint-4", "poisoned")]
    assert timeline.last_healthy.name == "checkpoint-2" and timeline.first_bad.name == "checkpoint-4"
    assert timeline.exit_code() == 1


def test_an_fsdp_model_folder_without_its_metadata_is_exit_3(fsdp_run: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(fsdp_run / "checkpoint-2", tmp_path / "checkpoint-2")
    (folder / "pytorch_model_fsdp_0" / ".metadata").unlink()
    report = nandoctor.scan(folder, device="cpu")
    assert report.exit_code == 3
    assert [Path(e.path).parent.name for e in report.errors] == ["pytorch_model_fsdp_0"]
    assert "without its folder's .metadata" in report.errors[0].message
