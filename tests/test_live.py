"""Live scans of what users hold in memory: a loaded checkpoint dict (nested), quantized and nested tensors,
an empty mapping. torch is the oracle."""

from __future__ import annotations

import warnings

import pytest

import nandoctor

torch = pytest.importorskip("torch")
NAN, INF = float("nan"), float("inf")


def test_a_loaded_checkpoint_dict_is_walked_like_a_file():
    """`torch.load("ckpt.pt")` gives {"model": {...}, "optimizer": ..., "epoch": 3}: its tensors were skipped and
    the result called CLEAN; now every nested tensor is counted under its dotted name."""
    w = torch.zeros(4, 4)
    w[1, 2], w[3, 0] = NAN, -INF
    loaded = {"model": {"layer.weight": w, "layer.bias": torch.zeros(4)}, "history": [torch.tensor([1.0, INF])],
              "epoch": 3, "name": "run"}
    report = nandoctor.scan_state_dict(loaded)
    counts = {t.ref.name: (t.nan, t.posinf, t.neginf) for t in report.tensors}
    assert counts == {"model.layer.weight": (1, 0, 1), "model.layer.bias": (0, 0, 0), "history.0": (0, 1, 0)}
    assert report.exit_code == 1


def test_a_loaded_checkpoint_with_a_nan_learning_rate_fails_as_its_file_does(tmp_path):
    """A trial: torch.load of a checkpoint whose optimizer's lr and betas were NaN/Inf passed a live scan CLEAN,
    while the scan of the same file failed it (one step from it makes every weight NaN). The file scan's rule: only
    the rates a step uses (param_groups lr/betas/eps…, a scheduler's base_lrs); other floats stay out."""
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)  # its best = inf is its design
    optimizer.param_groups[0]["lr"] = NAN
    optimizer.param_groups[0]["betas"] = (0.9, INF)
    saved = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "plateau": plateau.state_dict(),
             "loss": NAN}
    torch.save(saved, tmp_path / "ckpt.pt")
    live, on_disk = nandoctor.scan_state_dict(saved), nandoctor.scan(str(tmp_path / "ckpt.pt"))
    bad = {t.ref.name for t in live.tensors if t.nan or t.posinf or t.neginf}
    assert bad == {"optimizer.param_groups.0.lr", "optimizer.param_groups.0.betas.1"}
    assert {t.ref.name for t in on_disk.tensors if t.nan or t.posinf or t.neginf} == bad
    assert live.exit_code == on_disk.exit_code == 1
    assert live.tensors.refs[[t.ref.name for t in live.tensors].index("optimizer.param_groups.0.lr")].role == "optimizer"
    optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["betas"] = 1e-3, (0.9, 0.999)
    assert nandoctor.scan_state_dict({**saved, "optimizer": optimizer.state_dict()}).exit_code == 0


def test_nothing_to_check_is_never_clean():
    for empty in ({}, {"epoch": 3, "note": "x"}):
        report = nandoctor.scan_state_dict(empty)
        assert report.exit_code == 3 and report.verdict == "NO TENSORS"
    assert nandoctor.scan_module(torch.nn.ReLU()).exit_code == 3


def test_quantized_and_nested_tensors_are_counted_on_their_values():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.quantize_per_tensor(torch.tensor([1.0, 2.0, 3.0]), NAN, 0, torch.qint8)
        nested = torch.nested.nested_tensor([torch.tensor([1.0, NAN]), torch.tensor([INF])])
    expected_q = int(torch.isnan(q.dequantize()).sum())
    report = nandoctor.scan_state_dict({"q": q, "nt": nested})
    counts = {t.ref.name: (t.nan, t.posinf, t.neginf) for t in report.tensors}
    assert counts == {"q": (expected_q, 0, 0), "nt.0": (1, 0, 0), "nt.1": (0, 1, 0)} and expected_q == 3
    assert report.exit_code == 1


def test_a_float8_e8m0_tensor_is_counted_not_a_crash():
    """torch has no abs (nor ==) for float8_e8m0fnu (MX scales): the live census reads it as float, and its NaN
    code (0xFF) counts as NaN, as torch itself decodes it."""
    import torch

    import nandoctor

    values = torch.ones(64)
    values[[3, 40]] = float("nan")
    module = torch.nn.Module()
    module.register_buffer("scales", values.to(torch.float8_e8m0fnu))
    report = nandoctor.scan_module(module)
    assert report.nan == int(torch.isnan(module.scales.float()).sum()) == 2


@pytest.mark.integration
def test_a_live_scan_of_dtensor_parameters_on_one_rank_reads_its_own_shards(tmp_path) -> None:
    """FSDP2 leaves DTensor parameters; the callbacks scan on process zero alone (the initial weights' baseline, a
    NaN logged). Each parameter's own shard is read: no collective (the scan raised on the DTensor's partial min)."""
    from tests.conftest import require_gloo
    from tests.dcp_writer import under_torchrun

    require_gloo()
    out = tmp_path / "verdict.txt"
    under_torchrun("tests.dtensor_live_worker", str(out))
    code, shapes = out.read_text().split(" ", 1)
    assert code == "0" and shapes.strip() == "[(2,), (2, 8)]"  # rank 0's rows of the bias and weight, healthy
