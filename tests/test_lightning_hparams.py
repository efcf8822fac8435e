"""A Lightning checkpoint's saved hyperparameters are the config its module is built from (load_from_checkpoint:
``cls(**hyper_parameters)``): a NaN among them is BAD CONFIG, as a NaN in config.json is.

An adversarial round: ``hyper_parameters["eps"] = nan`` loaded, built ``LayerNorm(eps=nan)`` and every output was
NaN, while the scan passed CLEAN. The oracle is Lightning's own load_from_checkpoint and a forward pass.
"""

from __future__ import annotations

import math

import pytest

L = pytest.importorskip("lightning")
torch = pytest.importorskip("torch")

import nandoctor  # noqa: E402

pytestmark = pytest.mark.integration


class Normed(L.LightningModule):
    def __init__(self, hidden: int = 8, eps: float = 1e-5, limit: float = math.inf, fill_value: float = 0.0,
                 scale: float = 1.0, multiplier: float = 1.0):
        super().__init__()
        self.save_hyperparameters()
        self.lin = torch.nn.Linear(hidden, hidden)
        self.norm = torch.nn.LayerNorm(hidden, eps=eps)

    def forward(self, x):
        out = self.norm(self.lin(x)) * self.hparams.scale * self.hparams.multiplier
        return out.clamp(max=self.hparams.limit)

    def training_step(self, batch, _):
        return self(batch).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _saved(path, **hyper):
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(Normed(**hyper), torch.utils.data.DataLoader(torch.randn(4, 8), batch_size=2))
    trainer.save_checkpoint(path)
    return path


def _forward_finite(path) -> bool:
    model = Normed.load_from_checkpoint(path)
    with torch.no_grad():
        return bool(torch.isfinite(model(torch.randn(2, 8))).all())


@pytest.mark.parametrize("hyper, said", [({"multiplier": float("nan")}, "hyper_parameters.multiplier is NaN"),
                                         ({"scale": float("inf")}, "hyper_parameters.scale is inf"),
                                         ({"eps": -1.0}, "hyper_parameters.eps is -1 (a norm's epsilon")])
def test_other_harmful_hyperparameters_are_bad_config(tmp_path, hyper, said):
    """An adversarial round: multiplier = nan, scale = inf and eps = -1 passed CLEAN while the module built from them
    computed NaN; an infinite epsilon (the norm's output 0, finite) is left alone, as in config.json."""
    bad = _saved(tmp_path / "bad.ckpt", **hyper)
    assert not _forward_finite(bad)  # the oracle
    report = nandoctor.scan(bad, device="cpu")
    assert report.exit_code == 3 and report.errors[0].message.startswith(said), report.errors
    infinite_eps = _saved(tmp_path / "eps.ckpt", eps=math.inf)
    assert _forward_finite(infinite_eps) and nandoctor.scan(infinite_eps, device="cpu").exit_code == 0


def test_a_nan_hyperparameter_is_bad_config_and_an_infinite_bound_is_not(tmp_path):
    bad = _saved(tmp_path / "bad.ckpt", eps=float("nan"))
    assert not _forward_finite(bad)  # the oracle: the module built from the saved hyperparameters computes NaN
    report = nandoctor.scan(bad, device="cpu")
    assert report.exit_code == 3 and [p.kind for p in report.errors] == ["config"]
    assert report.errors[0].message.startswith("hyper_parameters.eps is NaN: load_from_checkpoint builds the model")
    good = _saved(tmp_path / "good.ckpt")  # (limit = inf: a bound, by design, as an infinite bound in config.json)
    assert _forward_finite(good) and nandoctor.scan(good, device="cpu").exit_code == 0
    # a NaN no arithmetic reads (a missing-value marker: a review's datamodule fill_value) is left alone
    marker = _saved(tmp_path / "marker.ckpt", fill_value=float("nan"))
    assert _forward_finite(marker) and nandoctor.scan(marker, device="cpu").exit_code == 0


def test_an_infinite_bound_or_switch_is_no_harm():
    """Infinity is the usual "off" of a bound (max_grad_norm, gradient_clip_val, an early-stop threshold): left alone
    where a scale or a temperature of Infinity is harm."""
    from nandoctor.readers.torch.names import harmful_setting

    for key in ("max_grad_norm", "gradient_clip_val", "early_stop_threshold", "limit"):
        assert harmful_setting(key, math.inf) is None, key
    assert harmful_setting("scale", math.inf) == "inf" and harmful_setting("temperature", -math.inf) == "-inf"


def test_settings_no_arithmetic_reads_are_no_harm():
    """A review: lr_decay_steps = inf ("never"), a pretrained_path of NaN (a sweep table's empty cell), log_eps = -8
    (the epsilon is 10**log_eps), an exploration epsilon_greedy were BAD CONFIG; the model built computed nothing NaN."""
    from nandoctor.readers.torch.names import harmful_setting

    for key, value in (("lr_decay_steps", math.inf), ("pretrained_path", math.nan), ("log_eps", -8.0),
                       ("epsilon_greedy", -1.0), ("eps_clip", -1.0), ("seed", math.nan), ("best_val_acc", math.nan)):
        assert harmful_setting(key, value) is None, key
    assert harmful_setting("layer_norm_eps", -1.0) is not None and harmful_setting("tau", math.nan) == "NaN"

