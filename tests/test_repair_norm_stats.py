"""A norm's running statistics are restored together (restore/plan.py ``needed_tensors``).

A helper's real run (a timm-style loop: conv, BatchNorm, EMA): a convolution's weight blown up by 1e30 and a
training step after it left the BatchNorm's ``running_var`` Inf and its ``running_mean`` at 5e29, just under the
running statistics' ceiling. The repair restored the weight and ``running_var`` from a healthy save and kept the
target's ``running_mean``: verified CLEAN, and the repaired model's eval-mode loss was 1e29 (the oracle below)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from nandoctor.restore import repair  # noqa: E402


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))


def _eval_loss(state: dict, x: torch.Tensor, y: torch.Tensor) -> float:
    net = _net()
    net.load_state_dict(state)
    net.eval()
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(net(x), y))


@pytest.mark.parametrize("scope", ["tensor", "layer"])
def test_a_batchnorms_statistics_are_restored_together(tmp_path: Path, scope: str) -> None:
    torch.manual_seed(0)
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    torch.save({"epoch": 4, "state_dict": net.state_dict()}, tmp_path / "best.pth.tar")
    healthy = _eval_loss(net.state_dict(), x, y)
    with torch.no_grad():
        net[0].weight.mul_(1e30)
    net[1].momentum = 0.5
    for _ in range(2):  # training steps after it: the BatchNorm's statistics absorb the blown-up activations
        net(x)
    stats = net.state_dict()
    assert torch.isinf(stats["1.running_var"]).any() and stats["1.running_mean"].abs().max() < 1e30
    assert stats["1.running_mean"].abs().max() > 1e20
    torch.save({"epoch": 9, "state_dict": stats}, tmp_path / "last.pth.tar")

    result = repair(tmp_path / "last.pth.tar", [str(tmp_path / "best.pth.tar")], tmp_path / "fixed", scope=scope)
    assert result.ok
    restored = {r.name for r in result.plan.restorations}
    assert {"state_dict.1.running_mean", "state_dict.1.running_var", "state_dict.1.num_batches_tracked"} <= restored
    fixed = torch.load(tmp_path / "fixed" / "last.pth.tar", weights_only=True)["state_dict"]
    assert _eval_loss(fixed, x, y) == pytest.approx(healthy, rel=1e-4)  # the oracle: the healthy model's loss


def test_the_batchnorm_after_a_restored_weight_gets_its_statistics_restored_too(tmp_path: Path) -> None:
    """An adversarial round: one conv weight flipped to 3e4 and training-mode passes after it left the BatchNorm's
    statistics finite (running_var 5.7e8, under every ceiling); the repair restored the weight alone, verified CLEAN,
    and the BatchNorm still normalised by the blown-up statistics. The norm that follows a restored weight in the
    state dict's order is restored with it."""
    torch.manual_seed(0)
    net = _net()
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))
    for _ in range(3):
        net(x)  # (its statistics settle)
    torch.save({"state_dict": net.state_dict()}, tmp_path / "step_20.pt")
    healthy = _eval_loss(net.state_dict(), x, y)
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] = 3e4
    for _ in range(3):
        net(x)
    stats = net.state_dict()
    assert torch.isfinite(stats["1.running_var"]).all() and stats["1.running_var"].max() > 1e5
    torch.save({"state_dict": stats}, tmp_path / "step_30.pt")
    result = repair(tmp_path / "step_30.pt", ["auto"], tmp_path / "fixed")
    assert result.ok
    assert {"state_dict.0.weight", "state_dict.1.running_var"} <= {r.name for r in result.plan.restorations}
    fixed = torch.load(tmp_path / "fixed" / "step_30.pt", weights_only=True)["state_dict"]
    assert _eval_loss(fixed, x, y) == pytest.approx(healthy, rel=1e-4)  # the oracle


def test_the_batchnorm_two_modules_after_a_restored_weight_is_restored_too(tmp_path: Path) -> None:
    """An adversarial round: a depthwise-separable block (dw conv, pw conv, BatchNorm) with the dw conv's weight
    flipped to 3e4: the BatchNorm is two modules after it in the state dict, and its statistics were kept."""
    def block() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, groups=4), torch.nn.Conv2d(4, 8, 1), torch.nn.BatchNorm2d(8),
                                   torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))

    torch.manual_seed(0)
    net = block()
    x = torch.randn(16, 4, 8, 8)
    for _ in range(3):
        net(x)
    torch.save({"state_dict": net.state_dict()}, tmp_path / "step_20.pt")
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] = 3e4
    for _ in range(3):
        net(x)
    assert net.state_dict()["2.running_var"].max() > 1e5
    torch.save({"state_dict": net.state_dict()}, tmp_path / "step_30.pt")
    result = repair(tmp_path / "step_30.pt", ["auto"], tmp_path / "fixed")
    assert result.ok and "state_dict.2.running_var" in {r.name for r in result.plan.restorations}


def test_the_batchnorm_of_a_restored_weights_block_is_restored_whatever_the_files_order(tmp_path: Path) -> None:
    """A review: safetensors keeps its names sorted (bn before conv), so "the norm after the weight" found nothing."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    conv, bn = torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)
    x = torch.randn(16, 3, 8, 8)
    for _ in range(3):
        bn(conv(x))
    state = {**{f"block.conv.{k}": v for k, v in conv.state_dict().items()},
             **{f"block.bn.{k}": v for k, v in bn.state_dict().items()}}
    (tmp_path / "step_20").mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "step_20" / "model.safetensors"))
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = 3e4
    for _ in range(3):
        bn(conv(x))
    state = {**{f"block.conv.{k}": v for k, v in conv.state_dict().items()},
             **{f"block.bn.{k}": v for k, v in bn.state_dict().items()}}
    (tmp_path / "step_30").mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "step_30" / "model.safetensors"))
    result = repair(tmp_path / "step_30", [str(tmp_path / "step_20")], tmp_path / "fixed")
    assert result.ok and {"block.conv.weight", "block.bn.running_var"} <= {r.name for r in result.plan.restorations}


def test_a_batchnorm_before_the_restored_weight_in_a_sequential_keeps_its_statistics(tmp_path: Path) -> None:
    """A new user's run: Sequential(Linear, BatchNorm1d, ReLU, Linear, BatchNorm1d, …) with +Inf in the second
    Linear's weight (net.3): the repair also rolled back net.1's running statistics, a BatchNorm *before* it whose
    weight and bias stayed the target's (a BatchNorm half one step, half another), where the docs say the norm that
    follows is restored. The one after (net.4) is; net.1 keeps the target's statistics, in either file format."""
    from safetensors.torch import save_file

    def net() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 8),
                                   torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3))

    torch.manual_seed(0)
    model, x = net(), torch.randn(32, 6)
    for _ in range(3):
        model(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(3):
        model(x * 2)  # (the statistics move between the saves)
    after = model.state_dict()
    after["3.weight"][0, 0] = float("inf")
    for fmt in ("pt", "safetensors"):
        folder = tmp_path / fmt
        for step, state in ((20, before), (30, after)):
            (folder / f"step_{step}").mkdir(parents=True)
            if fmt == "pt":
                torch.save(state, folder / f"step_{step}" / "model.pt")
            else:
                save_file({k: v.contiguous() for k, v in state.items()}, str(folder / f"step_{step}" / "model.safetensors"))
        result = repair(folder / "step_30", [str(folder / "step_20")], folder / "fixed")
        restored = {r.name for r in result.plan.restorations}
        assert result.ok and {"3.weight", "4.running_mean", "4.running_var"} <= restored, restored
        assert not any(name.startswith("1.") for name in restored), restored
