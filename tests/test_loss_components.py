"""A Lightning run that logs only the terms of its objective (a VAE's ``kl_loss`` and ``recon_loss``): no term is
"the loss".

A trial: a real VAE with a KL warm-up logged both terms with CSVLogger; nandoctor took ``kl_loss`` (the first in
name order) as the run's loss, whose rise by design tripped the loss-jump rule, so a healthy run had no "last
healthy" checkpoint and ``repair --from auto`` refused with five healthy step files at hand. The objective is one
of the known loss keys, the one loss column, or the one named as a total; components alone are watched for NaN/Inf
only (checkpoint/trainlog._objective). A real ``lightning.Trainer`` writes the run; its own held-out ELBO is the
oracle that the run is healthy.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import nandoctor
from nandoctor.checkpoint.trainlog import read_metrics_csv

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning")

pytestmark = pytest.mark.integration


class _VAE(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.enc = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
        self.dec = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))

    def terms(self, x):
        mu, log_var = self.enc(x).chunk(2, -1)
        z = mu + torch.randn_like(mu) * (0.5 * log_var).exp()
        recon = (self.dec(z) - x).pow(2).sum(-1).mean()
        kl = (-0.5 * (1 + log_var - mu**2 - log_var.exp()).sum(-1)).mean()
        return recon, kl

    def training_step(self, batch, index):
        (x,) = batch
        recon, kl = self.terms(x)
        self.log("recon_loss", recon)
        self.log("kl_loss", kl)
        return recon + min(1.0, self.global_step / 150) * kl  # KL warm-up: the logged KL term rises by design

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), 3e-3)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory) -> tuple[Path, list[float]]:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    root = tmp_path_factory.mktemp("vae")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 4, generator=gen) @ torch.randn(4, 16, generator=gen)
    x += 0.1 * torch.randn(1024, 16, generator=gen)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:896]), batch_size=64, shuffle=True)
    torch.manual_seed(0)
    trainer = L.Trainer(max_steps=300, default_root_dir=root, logger=CSVLogger(root), accelerator="cpu",
                        callbacks=[ModelCheckpoint(dirpath=root / "ckpts", every_n_train_steps=50, save_top_k=-1)],
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=5)
    trainer.fit(_VAE(), data)
    elbos = []
    for step in range(50, 301, 50):
        [file] = (root / "ckpts").glob(f"*step={step}.ckpt")
        model = _VAE()
        model.load_state_dict(torch.load(file, weights_only=False)["state_dict"])
        torch.manual_seed(0)
        with torch.no_grad():
            recon, kl = model.terms(x[896:])
        elbos.append(float(recon + kl))
    return root, elbos


def test_components_alone_are_no_objective_and_a_healthy_run_stays_healthy(vae_run, tmp_path) -> None:
    root, elbos = vae_run
    assert all(later < earlier * 1.5 for earlier, later in zip(elbos, elbos[1:]))  # the oracle: no divergence
    [csv] = root.glob("lightning_logs/version_*/metrics.csv")
    table = read_metrics_csv(csv)
    assert table is not None and (table.loss_key, table.watched) == (None, ("kl_loss", "recon_loss"))

    run = nandoctor.scan_run(root / "ckpts", device="cpu")
    assert [c.status for c in run.checkpoints] == ["clean"] * 6 and run.exit_code() == 0
    log = run.log
    assert log is not None and log.loss_jump_step is None and log.logged == ("kl_loss", "recon_loss")

    newest = next((root / "ckpts").glob("*step=300.ckpt"))  # one NaN in it: the run's donors are all healthy
    state = torch.load(newest, weights_only=False)
    state["state_dict"]["dec.2.weight"][0, 0] = float("nan")
    torch.save(state, newest)
    run = nandoctor.scan_run(root / "ckpts", device="cpu")
    assert run.first_bad.name == newest.name and run.last_clean.name.endswith("step=250.ckpt")
    repaired = nandoctor.repair(newest, "auto", tmp_path / "out")
    assert repaired.ok and repaired.verification.exit_code == 0


def test_a_nan_in_any_component_is_where_the_log_broke(tmp_path) -> None:
    rows = "step,kl_loss,recon_loss,val_loss\n0,0.1,9.0,\n5,0.4,nan,\n10,0.5,3.0,\n0,,,7.0\n"
    (tmp_path / "metrics.csv").write_text(rows)
    table = read_metrics_csv(tmp_path / "metrics.csv")
    assert table is not None and table.loss_key is None
    log = table.train_log()
    assert log is not None and (log.first_nonfinite_step, log.first_nonfinite_keys) == (5, ("recon_loss",))


@pytest.mark.parametrize(("columns", "objective"), [
    (["kl_loss", "recon_loss", "train_total_loss"], "train_total_loss"),
    (["d_loss", "g_loss"], None),  # a GAN's two players: neither is the objective
    (["my_loss"], "my_loss"),  # the one loss column
    (["aux_loss", "loss"], "loss"),  # a known key wins
    (["train/loss_step", "train/loss_epoch"], "train/loss_step"),  # on_step + on_epoch: one objective, twice
])
def test_the_objective_column(tmp_path, columns, objective) -> None:
    (tmp_path / "metrics.csv").write_text("step," + ",".join(columns) + "\n1," + ",".join("1.0" for _ in columns) + "\n")
    table = read_metrics_csv(tmp_path / "metrics.csv")
    assert table is not None and table.loss_key == objective and set(table.watched) == set(columns)


def test_a_metrics_csv_read_in_part_is_not_judged(tmp_path) -> None:
    """An adversarial trial: a quote that never closes made every later row one field, and the log read as finite
    to step 499 where rows 500-599 held NaN. A log that cannot be read whole is not judged (its error says why); a
    byte-order mark an editor added is read through."""
    ok = "".join(f"{s},{2.0 - s / 1000:.4f}\n" for s in range(500))
    bad = "".join(f"{s},nan\n" for s in range(500, 600))
    (tmp_path / "metrics.csv").write_text("step,train_loss\n" + ok + '499,"1.5\n' + bad)
    log = read_metrics_csv(tmp_path / "metrics.csv").train_log()
    assert log is not None and log.error is not None and "never closes" in log.error and log.first_nonfinite_step is None
    (tmp_path / "metrics.csv").write_text("\ufeffstep,train_loss\n" + ok + bad)
    log = read_metrics_csv(tmp_path / "metrics.csv").train_log()
    assert log is not None and log.error is None and log.first_nonfinite_step == 500


@pytest.mark.parametrize("between", ["\n", "\n\n\n", '500,"a\nb"\n'])
def test_blank_lines_or_a_closed_quote_do_not_end_the_read(tmp_path, between) -> None:
    """A review: one blank line (which csv.DictReader skips) read as a torn last line, and every row after it was
    dropped with no error: the NaN from step 500 on vanished from the log. Blank lines, and a quoted field that
    spans lines and closes, are read through; a torn last line (one line end in an unclosed quote) keeps what came
    before it."""
    ok = "".join(f"{s},{2.0 - s / 1000:.4f}\n" for s in range(500))
    bad = "".join(f"{s},nan\n" for s in range(500, 600))
    (tmp_path / "metrics.csv").write_text("step,train_loss\n" + ok + between + bad)
    log = read_metrics_csv(tmp_path / "metrics.csv").train_log()
    assert log is not None and log.error is None and log.first_nonfinite_step == 500 and log.last_step == 599
    (tmp_path / "metrics.csv").write_text("step,train_loss\n" + ok + '500,"1.5\n')  # (a torn last line)
    log = read_metrics_csv(tmp_path / "metrics.csv").train_log()
    assert log is not None and log.error is None and log.last_step == 499 and log.first_nonfinite_step is None
