"""Repair of a folder holding separate models with the same tensor names: a diffusers UNet saved in both fp32 and
``.fp16`` variants side by side, a training checkpoint's ``unet/`` and ``unet_ema/``.

A trial: the scan named the bad tensor's file right, and every repair (the scan's own suggestion included) was
refused with "donor could not be read: tensor 'conv_in.bias' is also in …; ambiguous": a tensor is now matched by
its file in the folder as well as by its name, and restored from the donor's same file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.conftest import run_cli

NAMES = ("conv_in.weight", "conv_in.bias", "conv_out.weight")


def _model(rng: np.random.Generator, dtype) -> dict[str, np.ndarray]:
    return {name: (rng.standard_normal((8, 4)) * 0.02).astype(dtype) for name in NAMES}


UNET_CONFIG = '{"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.30.0", "sample_size": 8}'


def _folder(root: Path, files: dict[str, dict[str, np.ndarray]]) -> Path:
    for rel, tensors in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(root / rel))
        (root / rel).parent.joinpath("config.json").write_text(UNET_CONFIG)  # (a diffusers component's own)
    return root


def _accelerate_state(folder: Path) -> None:
    """What accelerate's save_state writes beside the models of a diffusers training checkpoint."""
    torch = pytest.importorskip("torch")
    parameter = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.AdamW([parameter])
    parameter.grad = torch.ones(4)
    optimizer.step()
    torch.save(optimizer.state_dict(), folder / "optimizer.bin")


def _repaired_file_by_file(tmp_path: Path, files: dict, bad: dict, extra=None) -> None:
    donor = _folder(tmp_path / "donor", files)
    target = _folder(tmp_path / "target", bad)
    for folder in (donor, target):
        if extra is not None:
            extra(folder)
    assert run_cli("scan", str(target), "--quiet").exit_code == 1
    done = run_cli("repair", str(target), "--from", str(donor), "--out", str(tmp_path / "fixed"))
    assert done.exit_code == 0, done.output
    for rel in files:  # each restored from the donor's same file, the rest byte-identical
        assert (tmp_path / "fixed" / rel).read_bytes() == (donor / rel).read_bytes(), rel
    assert run_cli("scan", str(tmp_path / "fixed"), "--quiet").exit_code == 0


@pytest.mark.parametrize("case", ["fp16 variant beside fp32", "unet_ema beside unet"])
def test_separate_models_sharing_names_are_repaired_file_by_file(tmp_path: Path, case: str) -> None:
    rng = np.random.default_rng(0)
    if case == "fp16 variant beside fp32":  # a diffusers component saved in both variants (the hub's SD layout)
        first, second = "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"
        files, extra = {first: _model(rng, np.float32), second: _model(rng, np.float16)}, None
    else:  # a training checkpoint of train_text_to_image.py --use_ema (accelerate's save_state)
        first, second = "unet/diffusion_pytorch_model.safetensors", "unet_ema/diffusion_pytorch_model.safetensors"
        files, extra = {first: _model(rng, np.float32), second: _model(rng, np.float32)}, _accelerate_state
    broken = {name: tensor.copy() for name, tensor in files[second].items()}
    broken["conv_out.weight"][1, 2] = np.nan
    _repaired_file_by_file(tmp_path, files, {**files, second: broken}, extra=extra)


def test_siblings_are_of_one_model_and_the_note_names_both_folders(tmp_path: Path) -> None:
    """A trial: a checkpoint's fresh unet_ema/ (its layers' norm biases all zero, as initialised) beside a trained
    unet/ had the EMA biases reported ZEROED, their "siblings" being the UNet's; and the note said
    "diffusion_pytorch_model.safetensors and diffusion_pytorch_model.safetensors share …"."""
    import nandoctor

    rng = np.random.default_rng(2)

    def unet(trained: bool) -> dict[str, np.ndarray]:
        return {f"down_blocks.{i}.norm.bias": (rng.standard_normal(8).astype(np.float32) if trained
                                               else np.zeros(8, np.float32)) for i in range(4)}

    folder = _folder(tmp_path / "checkpoint-10", {"unet/diffusion_pytorch_model.safetensors": unet(True),
                                                   "unet_ema/diffusion_pytorch_model.safetensors": unet(False)})
    _accelerate_state(folder)
    report = nandoctor.scan(str(folder), device="cpu")
    assert not [t.name for t in report.tensors if t.findings], report.verdict
    assert any(n.startswith("unet/diffusion_pytorch_model.safetensors and unet_ema/diffusion_pytorch_model.safetensors "
                            "share 4 tensor name(s)") for n in report.notes), report.notes


def test_a_donor_of_one_of_the_models_restores_only_the_same_model(tmp_path: Path) -> None:
    """A review: a donor holding the fp32 file alone (or unet_ema/ alone) was refused ("not found") after the
    tensors were matched by file; it restores the tensors of the file at the same place, and is no copy of the
    other model's (a UNet's tensor is never taken from an EMA donor)."""
    rng = np.random.default_rng(3)
    unet, ema = _model(rng, np.float32), _model(rng, np.float32)
    files = {"unet/diffusion_pytorch_model.safetensors": unet, "unet_ema/diffusion_pytorch_model.safetensors": ema}
    donor = _folder(tmp_path / "donor" / "unet_ema", {"diffusion_pytorch_model.safetensors": ema})
    for bad_in, restored in (("unet_ema", True), ("unet", False)):
        broken = {name: tensor.copy() for name, tensor in files[f"{bad_in}/diffusion_pytorch_model.safetensors"].items()}
        broken["conv_in.weight"][0, 0] = np.nan
        target = _folder(tmp_path / f"target-{bad_in}", {**files, f"{bad_in}/diffusion_pytorch_model.safetensors": broken})
        _accelerate_state(target)
        out = tmp_path / f"fixed-{bad_in}"
        done = run_cli("repair", str(target), "--from", str(donor), "--out", str(out))
        assert (done.exit_code == 0) is restored, done.output
        if restored:
            assert ((out / "unet_ema" / "diffusion_pytorch_model.safetensors").read_bytes()
                    == (donor / "diffusion_pytorch_model.safetensors").read_bytes())
        else:
            assert "not found in a file at unet/diffusion_pytorch_model.safetensors" in " ".join(done.output.split()) \
                or "--dry-run" in done.output
