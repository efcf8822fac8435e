"""An optimizer's moments of one parameter are restored together, and a moment a step from overflowing float32 is
exploded (restore/plan.py ``moment_of``, verdict.py ``MOMENT_CEILING``).

A helper's real run (a Trainer without gradient clipping, one batch's loss scaled by 1e25): the weights stayed finite,
some exp_avg_sq overflowed to Inf and the rest reached 2e38, the exp_avg 1e22. The repair restored the Inf ones
alone and said "verified CLEAN"; resumed, the weights were NaN two steps later. Torch's own AdamW is the oracle."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from nandoctor.restore import repair  # noqa: E402
from tests.conftest import run_cli  # noqa: E402


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))


def _step(net, opt, x, y, scale: float = 1.0) -> None:
    loss = torch.nn.functional.mse_loss(net(x), y) * scale
    opt.zero_grad()
    loss.backward()
    opt.step()


def _corrupted_run(tmp_path: Path, optimizer, at: int, value: float):
    """A loop of 30 steps saving {"model", "optimizer"} every 10, one gradient element set to ``value`` at step ``at``
    (silent corruption in a reduction): (net, optimizer, x, y, the run folder)."""
    torch.manual_seed(0)
    net = _net()
    opt = optimizer(net.parameters())
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    run = tmp_path / "run"
    run.mkdir()
    for step in range(1, 31):
        loss = torch.nn.functional.mse_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        if step == at:
            net[0].weight.grad[0, 0] = value
        opt.step()
        if step % 10 == 0:
            torch.save({"model": net.state_dict(), "optimizer": opt.state_dict()}, run / f"step_{step}.pt")
    return net, opt, x, y, run


def test_an_overflowed_adam_state_is_repaired_whole_and_resumes_finite(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _net()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    run = tmp_path / "run"
    run.mkdir()
    for step in range(1, 31):
        _step(net, opt, x, y, scale=1e19 if step == 22 else 1.0)  # (one batch whose loss blew up, no clipping)
        if step % 10 == 0:
            torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "step": step}, run / f"step_{step}.pt")
    saved = torch.load(run / "step_30.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in saved["model"].values())  # (the weights are finite: no finding there)
    moments = [s for state in saved["optimizer"]["state"].values() for s in (state["exp_avg"], state["exp_avg_sq"])]
    assert max(float(m.abs().max()) for m in moments) > 1e30

    quiet = run_cli("scan", str(run / "step_30.pt"), "-q")
    assert quiet.exit_code == 1 and "optimizer moments exploded" in quiet.output, quiet.output
    result = repair(run / "step_30.pt", ["auto"], tmp_path / "fixed")
    assert result.ok
    fixed = torch.load(tmp_path / "fixed" / "step_30.pt", weights_only=True)
    net.load_state_dict(fixed["model"])
    opt.load_state_dict(fixed["optimizer"])
    for _ in range(5):  # the oracle: the resumed run stays finite
        _step(net, opt, x, y)
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_a_parameters_whole_optimizer_state_is_restored_together(tmp_path: Path) -> None:
    """An adversarial round: RMSprop(centered=True) keeps grad_avg beside square_avg; one gradient of 1e20 left
    square_avg at 1e38 (exploded) and grad_avg at 1e18. The repair restored square_avg alone, "verified CLEAN", and
    the first resumed step took the square root of square_avg - grad_avg**2 < 0: NaN. Every entry of the parameter's
    state is restored together now."""
    # (a corrupted gradient at step 22: the weight's own update is tiny)
    net, opt, x, y, run = _corrupted_run(tmp_path, lambda params: torch.optim.RMSprop(params, lr=1e-3, centered=True),
                                         at=22, value=1e20)
    result = repair(run / "step_30.pt", ["auto"], tmp_path / "fixed")
    assert result.ok
    restored = {r.name for r in result.plan.restorations}
    assert {"optimizer.state.0.square_avg", "optimizer.state.0.grad_avg"} <= restored, restored
    fixed = torch.load(tmp_path / "fixed" / "step_30.pt", weights_only=True)
    # (its step count stays the target's, as docs/repair.md says: the donor's moments resume under step 30)
    assert "optimizer.state.0.step" not in restored and float(fixed["optimizer"]["state"][0]["step"]) == 30
    net.load_state_dict(fixed["model"])
    opt.load_state_dict(fixed["optimizer"])
    for _ in range(3):  # the oracle
        _step(net, opt, x, y)
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_weights_restored_for_a_blown_up_step_say_the_optimizer_state_was_kept(tmp_path: Path) -> None:
    """An adversarial round: SGD with momentum, one gradient of 1e4 left a weight at -500 (an outlier) and its
    momentum_buffer at 1e4 (finite, no finding); the weight was restored and the buffer kept: NaN ten steps into
    the resume. The repair says so, and how to resume instead."""
    _, _, _, _, run = _corrupted_run(tmp_path, lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
                                     at=30, value=1e4)
    result = repair(run / "step_30.pt", ["auto"], tmp_path / "fixed")
    assert result.ok and "model.0.weight" in {r.name for r in result.plan.restorations}
    assert any("the optimizer state kept as it was" in n and f"resume from {run / 'step_20.pt'}" in n
               for n in result.plan.notes), result.plan.notes
