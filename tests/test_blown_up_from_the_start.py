"""A run that blew up from its first steps has no healthy checkpoint to measure growth against: most of its weights
held at magnitudes no training makes (verdict.HUGE_BULK) is DIVERGED on its own.

A trial on a real Lightning run (a BatchNorm conv net, Adam at lr 1e4): its first kept checkpoint held every weight
at 2e4-8e4 (the largest real parameter measured anywhere is 9,151) and read CLEAN, the next POISONED (two tensors
over the 1e5 ceiling), and a repair from the first certified a model whose eval loss was 1,512 (a healthy twin's:
about 1). The oracle is the model's own loss on its data, loaded with Lightning's load_from_checkpoint.
"""

from __future__ import annotations

import pytest

L = pytest.importorskip("lightning")
torch = pytest.importorskip("torch")

import nandoctor  # noqa: E402
from tests.conftest import run_cli  # noqa: E402

pytestmark = pytest.mark.integration


class ConvNet(L.LightningModule):
    def __init__(self, lr: float = 1e-2):
        super().__init__()
        self.save_hyperparameters()
        nn = torch.nn
        self.f = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                               nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.f(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def _data():
    generator = torch.Generator().manual_seed(1)
    y = torch.randint(0, 4, (64,), generator=generator)
    return torch.randn(64, 3, 8, 8, generator=generator) + y[:, None, None, None], y


def _run(folder, lr: float):
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.manual_seed(0)
    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False,
                        callbacks=[ModelCheckpoint(dirpath=folder, every_n_train_steps=4, save_top_k=-1)])
    trainer.fit(ConvNet(lr), loader)
    return folder


def _loss(path) -> float:
    model = ConvNet.load_from_checkpoint(path).eval()
    x, y = _data()
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(model.f(x), y))


def test_weights_blown_up_from_the_first_steps_are_diverged_and_a_healthy_twin_is_clean(tmp_path):
    blown = _run(tmp_path / "blown", 1e4)
    first = sorted(blown.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)[0]
    assert _loss(first) > 100  # the oracle: the model is useless (a healthy twin's loss is about 1)
    report = nandoctor.scan(first, device="cpu")
    assert report.health == "diverged" and report.exit_code == 1, nandoctor.verdict.one_line(report)
    assert "weight tensors hold their values at 4096 or more" in nandoctor.verdict.one_line(report)
    run = nandoctor.scan_run(str(blown), device="cpu")
    assert run.last_healthy is None and run.exit_code() == 1
    refused = run_cli("repair", str(sorted(blown.glob("*.ckpt"))[-1]), "--from", "auto", "--out", str(tmp_path / "x"))
    assert refused.exit_code != 0 and not (tmp_path / "x").exists()  # (no healthy donor, and a diverged target)

    healthy = _run(tmp_path / "healthy", 1e-2)
    for checkpoint in healthy.glob("*.ckpt"):
        assert _loss(checkpoint) < 5
        assert nandoctor.scan(checkpoint, device="cpu").exit_code == 0
    assert nandoctor.scan_run(str(healthy), device="cpu").exit_code() == 0


def test_a_small_model_in_raw_units_is_no_blown_up_run(tmp_path):
    """A trial: a house-price linear regression fitted in dollars holds its weight and bias at 5.7e3-5.9e4 by design
    (predictions within a few percent), and was DIVERGED. Two tensors are no network blown up from its first steps."""
    model = torch.nn.Linear(5, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[28600.0, 15000.0, 9000.0, 5700.0, -8000.0]]))
        model.bias.fill_(59000.0)
    torch.save(model.state_dict(), tmp_path / "price.pt")
    report = nandoctor.scan(tmp_path / "price.pt", device="cpu")
    assert report.exit_code == 0 and report.health == "healthy", nandoctor.verdict.one_line(report)



def test_values_meant_above_the_ceiling_get_the_max_abs_that_passes_them(tmp_path):
    """A new user's trial: a linear regression on house prices in dollars, fitted in closed form (R² 0.98, its bias
    3.8e5), read "EXPLODED … make the file again from a healthy source", with no word of --max-abs. The next steps
    name the ceiling that passes it, and a scan with it passes."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, generator=generator)
    prices = 380_000 + x @ torch.tensor([130_000.0, 40_000.0, -20_000.0]) + 5_000 * torch.randn(256, generator=generator)
    model = torch.nn.Linear(3, 1)
    solution = torch.linalg.lstsq(torch.cat([x, torch.ones(256, 1)], 1), prices[:, None]).solution
    with torch.no_grad():
        model.weight.copy_(solution[:3].T)
        model.bias.copy_(solution[3])
        predicted = model(x)[:, 0]
    assert 1 - float(((predicted - prices) ** 2).sum() / ((prices - prices.mean()) ** 2).sum()) > 0.95  # the oracle
    torch.save(model.state_dict(), tmp_path / "price_model.pt")
    result = run_cli("scan", str(tmp_path / "price_model.pt"))
    assert result.exit_code == 1 and "scan with --max-abs 1e6" in " ".join(result.output.split()), result.output
    assert run_cli("scan", str(tmp_path / "price_model.pt"), "--max-abs", "1e6").exit_code == 0
