"""Real training runs that leave real checkpoints behind, for tests that need genuine artifacts.

Nothing here is mocked: each builder drives the real library (``transformers.Trainer``,
``lightning.Trainer``) on CPU, from a config with random init (no hub access), and
returns what it wrote plus what actually happened, so a test can compare nandoctor's
verdict with the ground truth.  Plain functions, no pytest: import them from tests,
benchmarks or a REPL.

* :func:`diverging_trainer_run` — a tiny Qwen2 fine-tuned with plain SGD, no gradient
  clipping and a learning rate far too high: checkpoints go healthy → exploded but
  finite (|w| 1e10…1e20) → NaN, for every seed tried.
* :func:`generate_ok` — the user-visible oracle: does ``generate(do_sample=True)``
  on a checkpoint run, or die with ``probability tensor contains either inf, nan or
  element < 0``?
* :func:`lightning_lm_run` — a tiny language model under a real ``lightning.Trainer``, blown up by a
  learning rate far too high (finite weights, a loss of thousands) or trained.
* :func:`lightning_run` — a tiny MLP under a real ``lightning.Trainer`` with
  ``ModelCheckpoint`` (so the ``.ckpt`` files carry callback state whose
  ``kth_value`` is ``tensor(inf)``) and, optionally, NaN planted from a given step.

Why only the head diverges in :func:`diverging_trainer_run`: with the whole tiny
Qwen2 trainable, SGD at a high lr blows up in the attention logits within a step or
two and the outcome is chaotic — the CPU SDPA (flash) backward turns huge scores into
NaN while weights are only ~1e4…1e7, or, with eager attention, the residual stream
makes RMSNorm's ``x.pow(2)`` overflow, its output collapses to 0 and the network
"dies" with finite weights and zero gradients, never reaching NaN.  Which of those
happens, and how large the last finite weights are, flips with the seed or a 1 %
change of lr.  Fine-tuning only ``lm_head`` and the final ``model.norm`` (a frozen
backbone, as in head-only fine-tuning) removes that: their product sets the logit
scale, each one's gradient is proportional to the other, so SGD without clipping
grows both geometrically (max |w| ×20…50 per step) until the logits overflow float32
and the loss turns NaN.  That path is smooth, so it does not depend on the seed.
"""

from __future__ import annotations

import contextlib
import re
import statistics
from pathlib import Path

import torch

# |w| thresholds that classify a checkpoint (max over finite entries)
HEALTHY_BELOW = 100.0
EXPLODED_FROM = 1e10

# the parameters trained in diverging_trainer_run; everything else stays frozen
HEAD_PARAMETERS = ("lm_head.", "model.norm.")

_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


# ---------------------------------------------------------------------------
# transformers.Trainer: a run that genuinely diverges
# ---------------------------------------------------------------------------


def tiny_qwen2_config(**overrides):
    """A 27k-parameter Qwen2: 2 layers, hidden 32, vocab 128, untied lm_head (4,128 of them in the head)."""
    from transformers import Qwen2Config

    options = {
        "vocab_size": 128,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        # untied: the trained lm_head must not drag the frozen input embeddings along
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
    }
    options.update(overrides)
    return Qwen2Config(**options)


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' warnings and progress bars (one per save/load) for the duration."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the NaN steps are the point, not news
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


class _RandomTokens(torch.utils.data.Dataset):
    """Uniform random tokens: nothing learnable, so the loss never lets the head off the hook."""

    def __init__(self, vocab_size: int, rows: int = 64, length: int = 16, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab_size, (rows, length), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i].clone()}


def checkpoint_health(path: Path) -> dict:
    """max |w| over the finite entries of ``model.safetensors``, its NaN/Inf counts and bad tensors."""
    from safetensors.torch import load_file

    max_abs, nan, posinf, neginf, bad = 0.0, 0, 0, 0, []
    for name, tensor in sorted(load_file(str(Path(path) / "model.safetensors")).items()):
        t = tensor.float()
        finite = torch.isfinite(t)
        if finite.any():
            max_abs = max(max_abs, t[finite].abs().max().item())
        if not finite.all():
            bad.append(name)
        nan += int(torch.isnan(t).sum())
        posinf += int(torch.isposinf(t).sum())
        neginf += int(torch.isneginf(t).sum())
    return {
        "max_abs": max_abs,
        "nan": nan,
        "posinf": posinf,
        "neginf": neginf,
        "nonfinite": bool(bad),
        "bad_tensors": bad,
    }


def _checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in Path(out_dir).iterdir() if (m := _CHECKPOINT_DIR.match(p.name))]
    return sorted(found)


def diverging_trainer_run(
    out_dir: str | Path,
    *,
    steps: int = 28,
    save_steps: int = 1,
    learning_rate: float = 40.0,
    warmup_steps: int = 12,
    seed: int = 0,
    save_final: bool = False,
    dtype: torch.dtype | None = None,
    callbacks: tuple = (),
    save_total_limit: int | None = None,
) -> dict:
    """Fine-tune a tiny Qwen2's head with ``transformers.Trainer`` until it diverges.

    Plain SGD (no momentum, no weight decay), ``max_grad_norm=0`` (no clipping), a
    12-step linear warmup to lr 40 (stable below ~10), random tokens.  A full
    ``checkpoint-N`` folder (model.safetensors, config, optimizer.pt, scheduler.pt,
    rng_state.pth, trainer_state.json) lands in ``out_dir`` every ``save_steps``.
    With the defaults: steps 1–11 healthy (max |w| ≤ 26), then ×20…50 a step, 18–25
    exploded but finite (2.2e10 … 1.1e20; at 25 the logits overflow float32, so the
    loss the next step computes is NaN), 26–28 NaN in every trained value
    (``lm_head.weight`` and ``model.norm.weight``; the frozen rest stays finite).
    Seeds 0–7 all give the same shape: healthy to step 10–12, exploded from 17–19,
    NaN from 25–27.

    Returns a dict: ``checkpoints`` (per checkpoint: ``step``, ``path``, ``max_abs``
    over finite weights, ``nan``/``posinf``/``neginf`` counts, ``nonfinite``,
    ``bad_tensors``, and ``next_loss``: the loss the following training step computed
    on exactly these weights, NaN/inf when their forward pass overflows),
    ``last_healthy``, ``first_exploded`` (finite, max |w| ≥ 1e10, before any NaN/Inf),
    ``first_nonfinite`` (steps, or None), ``losses`` (logged loss per step) and
    ``trainable``/``settings`` for the record. ``save_final``: end with ``trainer.save_model()``, the
    final model at the top of ``out_dir`` beside the ``checkpoint-N`` folders (a low ``learning_rate``
    keeps the whole run healthy). ``dtype``: train (and save) the model in that dtype (``torch.bfloat16``).
    ``callbacks``: Trainer callbacks (a NanDoctorCallback); ``save_total_limit``: Trainer's rotation (only the
    checkpoints left on disk are then in ``checkpoints``).
    """
    from transformers import (
        PrinterCallback,
        Qwen2ForCausalLM,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    out_dir = Path(out_dir)
    set_seed(seed)
    model = Qwen2ForCausalLM(tiny_qwen2_config())
    if dtype is not None:
        model = model.to(dtype)
    trainable = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith(HEAD_PARAMETERS)
        if parameter.requires_grad:
            trainable.append(name)

    settings = {
        "output_dir": str(out_dir),
        "max_steps": steps,
        "per_device_train_batch_size": 8,
        "optim": "sgd",
        "learning_rate": learning_rate,
        "lr_scheduler_type": "constant_with_warmup",
        "warmup_steps": warmup_steps,
        "weight_decay": 0.0,
        "max_grad_norm": 0.0,  # 0 disables clipping: nothing stops the blow-up
        "save_strategy": "steps",
        "save_steps": save_steps,
        "save_total_limit": save_total_limit,
        "logging_steps": 1,
        # keep NaN/Inf losses in the log instead of replacing them with the running mean
        "logging_nan_inf_filter": False,
        "report_to": "none",
        "use_cpu": True,
        "seed": seed,
        "data_seed": seed,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**settings),
        train_dataset=_RandomTokens(model.config.vocab_size, seed=seed),
        callbacks=list(callbacks),
    )
    trainer.remove_callback(PrinterCallback)  # the loss log stays in trainer.state; keep pytest output clean
    with _quiet_transformers():
        trainer.train()
        if save_final:
            trainer.save_model()

    checkpoints = []
    losses = {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}
    for step, path in _checkpoints(out_dir):
        health = checkpoint_health(path)
        checkpoints.append({"step": step, "path": path, **health, "next_loss": losses.get(step + 1)})

    first_nonfinite = next((c["step"] for c in checkpoints if c["nonfinite"]), None)
    before_nan = [c for c in checkpoints if first_nonfinite is None or c["step"] < first_nonfinite]
    # healthy: small weights, and the loss the next step computed on them not 4x the run's early loss (a
    # checkpoint whose weights make a loss of 110 where the run began at 5 is no resume point, finite or not)
    early = statistics.median([losses[s] for s in sorted(losses)[:5]]) if len(losses) >= 5 else None
    healthy = [c["step"] for c in before_nan if c["max_abs"] < HEALTHY_BELOW
               and (early is None or c["next_loss"] is None or c["next_loss"] < 4 * early)]
    exploded = [c["step"] for c in before_nan if c["max_abs"] >= EXPLODED_FROM]
    return {
        "output_dir": out_dir,
        "checkpoints": checkpoints,
        "last_healthy": healthy[-1] if healthy else None,
        "first_exploded": exploded[0] if exploded else None,
        "first_nonfinite": first_nonfinite,
        "losses": losses,
        "trainable": trainable,
        "settings": {k: v for k, v in settings.items() if k != "output_dir"},
    }


# ---------------------------------------------------------------------------
# the user-visible oracle: can the checkpoint still sample?
# ---------------------------------------------------------------------------

_NONFINITE_MESSAGE = re.compile(r"\b(inf|nan)\b", re.IGNORECASE)


def generate_ok(checkpoint_dir: str | Path, *, dtype: torch.dtype | None = None, seed: int = 0) -> bool:
    """True when ``generate(do_sample=True, max_new_tokens=5)`` runs on the checkpoint.

    False when it raises a RuntimeError about inf/nan — in practice
    ``probability tensor contains either `inf`, `nan` or element < 0`` from
    ``torch.multinomial``.  Any other error propagates: it is not the verdict asked for.

    ``dtype`` loads the weights in another dtype, as when serving in half precision:
    ``torch.float16`` turns every |w| > 65504 into inf on load.  Exploded-but-finite
    float32 weights mostly still generate (huge finite logits make a one-hot softmax,
    not an error); in float16 they never do.
    """
    from transformers import AutoModelForCausalLM

    options = {} if dtype is None else {"dtype": dtype}
    with _quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(str(checkpoint_dir), **options)
    model.eval()
    input_ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    torch.manual_seed(seed)  # sampling is random; keep the oracle repeatable
    try:
        with torch.no_grad():
            model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=True,
                max_new_tokens=5,
                pad_token_id=model.config.pad_token_id,
            )
    except RuntimeError as error:
        if _NONFINITE_MESSAGE.search(str(error)):
            return False
        raise
    return True


# ---------------------------------------------------------------------------
# lightning.Trainer: .ckpt files with callback state, optionally poisoned
# ---------------------------------------------------------------------------

POISONED_PARAMETER = "net.2.weight"  # the middle Linear of _TinyMLP; index [0, 0] gets the NaN

_STEP_IN_NAME = re.compile(r"step=(\d+)")


def _tiny_mlp_module(learning_rate: float, optimizer: str = "sgd"):
    """Build the LightningModule class lazily: importing this file must not need lightning."""
    import lightning

    class _TinyMLP(lightning.LightningModule):
        """8 → 32 → 32 → 1 regression MLP; logs ``train_loss`` every step for ModelCheckpoint."""

        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(8, 32),
                torch.nn.Tanh(),
                torch.nn.Linear(32, 32),
                torch.nn.Tanh(),
                torch.nn.Linear(32, 1),
            )

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss, on_step=True, on_epoch=False)
            return loss

        def configure_optimizers(self):
            if optimizer == "adam":  # moments (exp_avg, exp_avg_sq) in optimizer_states: NaN there too
                return torch.optim.Adam(self.parameters(), lr=learning_rate)
            return torch.optim.SGD(self.parameters(), lr=learning_rate)

    return _TinyMLP


def _plant_nan_callback(poison_at: int):
    import lightning

    class _PlantNaN(lightning.Callback):
        """After optimizer step ``poison_at``, write NaN into one weight.

        Runs in on_train_batch_end, before ModelCheckpoint (Lightning orders checkpoint
        callbacks last), so a checkpoint saved at exactly that step holds the single
        planted NaN; from the next step the NaN loss's gradients spread it through
        every parameter, as a real NaN would.
        """

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == poison_at:
                with torch.no_grad():
                    pl_module.get_parameter(POISONED_PARAMETER)[0, 0] = float("nan")

    return _PlantNaN()


def lightning_run(
    out_dir: str | Path,
    *,
    poison_at: int | None = None,
    steps: int = 12,
    every_n_train_steps: int = 2,
    learning_rate: float = 0.05,
    keep_last: bool = True,
    seed: int = 0,
    optimizer: str = "sgd",
    callbacks: tuple = (),
    save_top_k: int = -1,
    monitor: str | None = "train_loss",
    save_last: bool | str = False,
    save_final: str | None = None,
    ckpt_path: str | None = None,
    devices: int = 1,
    logger_folder: bool = False,
) -> list[Path]:
    """Train a tiny MLP with a real ``lightning.Trainer`` on CPU; return its ``.ckpt`` paths by step.

    ``out_dir/checkpoints/epoch=E-step=S.ckpt`` every ``every_n_train_steps`` steps
    (``ModelCheckpoint(monitor="train_loss", mode="min", save_top_k=-1)``, so each
    file carries the callback's ``best_model_score``/``current_score``/``kth_value``
    tensors), ``out_dir/logs/version_0/metrics.csv`` from CSVLogger.  All load with
    ``torch.load(weights_only=True)``.

    Callback state: with ``save_top_k=-1`` the monitored callback's ``kth_value`` is
    the worst train_loss so far — finite in a clean run.  ``keep_last`` (default) adds
    a second, unmonitored ``ModelCheckpoint`` (``out_dir/last``, newest file only),
    like Lightning's default one: its ``kth_value`` stays ``tensor(inf)`` and is
    stored in every ``.ckpt``, clean or not — a non-finite tensor that is not a weight.

    With ``poison_at=k``, NaN is written into ``net.2.weight[0, 0]`` right after
    optimizer step k: checkpoints before k are clean, the one at k (when k is a save
    step) holds exactly that NaN, later ones are NaN throughout, and the logged
    train_loss is NaN — which ModelCheckpoint records as ``tensor(inf)``.

    ``optimizer="adam"`` stores Adam moments in ``optimizer_states``; ``callbacks`` are added to the
    Trainer (after the planting one); ``save_top_k``/``monitor`` configure the first ModelCheckpoint
    (``save_top_k=1, monitor=None``: only the newest file is kept, as Lightning's default one does).
    ``save_last`` is that ModelCheckpoint's (``True``: a ``last.ckpt`` saved with each file; ``"link"``: a
    symlink to the newest file). ``save_final`` names a file written into ``checkpoints/`` after ``fit``:
    ``trainer.save_checkpoint(name)`` for a ``.ckpt``, the module's ``state_dict`` for a ``.safetensors``.
    ``ckpt_path`` is ``fit``'s (``"last"``: resume from the run's last.ckpt). ``devices`` > 1: DDP on gloo, in the
    processes torchrun started (tests/ddp_lightning_worker.py). ``logger_folder``: the first ModelCheckpoint gets no
    ``dirpath``, so it saves where Lightning does by default, into the logger's version folder
    (``out_dir/logs/version_N/checkpoints/``, beside ``metrics.csv`` and ``hparams.yaml``; ``N`` counts the runs
    into ``out_dir``), where ``save_final`` goes too.
    """
    import lightning
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    out_dir = Path(out_dir)
    extra = list(callbacks)
    torch.manual_seed(seed)  # the only randomness is the init; seed_everything would also set env vars
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 8, generator=generator)
    y = torch.sin(x).sum(dim=1, keepdim=True)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=False)

    checkpoint = ModelCheckpoint(
        dirpath=None if logger_folder else out_dir / "checkpoints",
        filename="{epoch}-{step}",
        every_n_train_steps=every_n_train_steps,
        save_top_k=save_top_k,
        monitor=monitor,
        mode="min",
        save_last=save_last,
    )
    callbacks = [checkpoint, *extra]
    if keep_last:
        # Lightning's default kind of checkpoint callback: no monitor, so its kth_value is never
        # compared and stays tensor(inf); its state rides along in every .ckpt written
        last = ModelCheckpoint(
            dirpath=out_dir / "last", filename="last-{step}", every_n_train_steps=every_n_train_steps
        )
        callbacks.append(last)
    if poison_at is not None:
        callbacks.insert(0, _plant_nan_callback(poison_at))
    with _quiet_lightning():
        trainer = lightning.Trainer(
            accelerator="cpu",
            devices=devices,
            strategy="ddp" if devices > 1 else "auto",
            max_steps=steps,
            logger=CSVLogger(out_dir, name="logs"),
            callbacks=callbacks,
            log_every_n_steps=1,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        module = _tiny_mlp_module(learning_rate, optimizer)()
        trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path)
        saves = Path(checkpoint.dirpath)  # (out_dir/checkpoints, or the logger's version_N/checkpoints)
        if save_final is not None and save_final.endswith(".safetensors"):
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in module.state_dict().items()}, saves / save_final)
        elif save_final is not None:
            trainer.save_checkpoint(saves / save_final)

    saved = saves.glob("*.ckpt")
    found = [(int(m.group(1)), p) for p in saved if (m := _STEP_IN_NAME.search(p.name))]
    return [p for _, p in sorted(found)]


@contextlib.contextmanager
def _quiet_lightning():
    """Hide Lightning's start-up banner and its single-process dataloader advice."""
    import logging
    import warnings

    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*")  # lightning vs newer torch, not ours
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# ---------------------------------------------------------------------------
# lightning.Trainer: a tiny language model, blown up by its learning rate or trained
# ---------------------------------------------------------------------------

LM_VOCAB = 128  # an untrained model scores ln(128) = 4.85


class Sequences(torch.utils.data.Dataset):
    """Arithmetic sequences of token ids: a pattern a tiny model learns in a few dozen steps."""

    def __init__(self, n: int = 256, length: int = 16):
        generator = torch.Generator().manual_seed(0)
        starts = torch.randint(0, LM_VOCAB, (n,), generator=generator)
        steps = torch.randint(1, 4, (n,), generator=generator)
        self.x = (starts[:, None] + steps[:, None] * torch.arange(length)[None]) % LM_VOCAB

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.x[i], "attention_mask": torch.ones_like(self.x[i]), "labels": self.x[i].clone()}


def lightning_lm_run(
    out_dir: str | Path,
    learning_rate: float,
    *,
    steps: int = 40,
    logger: str = "csv_apart",
    save_last: bool = False,
    save_top_k: int = -1,
    monitor: str | None = None,
    callbacks: tuple = (),
    ckpt_path: str | None = None,
    tied: bool = False,
) -> tuple[object, Path]:
    """Train a tiny language model (embedding, MLP, head; AdamW) under a real ``lightning.Trainer`` on CPU, as a
    real-training trial did: at lr 1e2 its loss goes from 4.9 at step 0 to about 1e6 at step 5, every weight stays
    finite, and the saves' eval loss is thousands where an untrained model scores 4.85; at lr 1e-3 it trains. Saves
    every 10 steps (``ModelCheckpoint(save_top_k, monitor, save_last)``), the loss logged every 5. ``logger``:
    ``"csv_apart"`` a ``CSVLogger`` in ``out_dir + "_logs"`` (no metrics.csv near the checkpoints, saved into
    ``out_dir``), ``"default"`` Lightning's default TensorBoard logger, the checkpoints in its
    ``out_dir/lightning_logs/version_0/checkpoints`` (no metrics.csv either). ``tied``: the head's weight is the
    embedding's (GPT-2's tie: the saved state_dict holds it under both names). Returns (trainer, checkpoint folder)."""
    import lightning
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    class _TinyLM(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.embed, self.head = torch.nn.Embedding(LM_VOCAB, 64), torch.nn.Linear(64, LM_VOCAB)
            self.mlp = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.LayerNorm(128), torch.nn.GELU(),
                                           torch.nn.Linear(128, 64))
            if tied:
                self.head.weight = self.embed.weight

        def training_step(self, batch, _):
            x = batch["input_ids"]
            logits = self.head(self.mlp(self.embed(x[:, :-1])))
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, LM_VOCAB), x[:, 1:].reshape(-1))
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=learning_rate)

    default = logger == "default"
    checkpoint = ModelCheckpoint(dirpath=None if default else out_dir, every_n_train_steps=10, save_top_k=save_top_k,
                                 monitor=monitor, save_last=save_last)
    torch.manual_seed(0)
    with _quiet_lightning():
        trainer = lightning.Trainer(
            max_steps=steps, accelerator="cpu", log_every_n_steps=5, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=out_dir,
            logger=True if default else CSVLogger(str(out_dir) + "_logs"), callbacks=[checkpoint, *callbacks])
        trainer.fit(_TinyLM(), torch.utils.data.DataLoader(Sequences(), batch_size=8, shuffle=True),
                    ckpt_path=ckpt_path)
    return trainer, Path(checkpoint.dirpath)
