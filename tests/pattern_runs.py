"""Real ``transformers.Trainer`` runs of a tiny Llama on a learnable token pattern, and the oracles that judge
their checkpoints (eval loss, ``from_pretrained``'s loading report).

Unlike tests/realruns.py (random tokens: nothing to learn, so a checkpoint's loss says little), the data here
is learnable (each next token is the previous one plus ``shift``, modulo the vocabulary), so a trained
checkpoint's eval loss is far below uniform (``ln(VOCAB)`` = 4.56) and damage shows in it: a zeroed
``lm_head`` puts it back at uniform, a divergence at thousands. Plain functions, no pytest.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

VOCAB = 96
UNIFORM_LOSS = math.log(VOCAB)


class PatternTokens(torch.utils.data.Dataset):
    """Rows of ``length`` tokens, each the previous one plus ``shift`` (mod VOCAB), from random starts."""

    def __init__(self, rows: int = 64, length: int = 16, seed: int = 0, shift: int = 1):
        generator = torch.Generator().manual_seed(seed)
        start = torch.randint(0, VOCAB, (rows, 1), generator=generator)
        self.ids = (start + shift * torch.arange(length)) % VOCAB

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i].clone(), "attention_mask": torch.ones_like(self.ids[i])}


def tiny_llama(seed: int = 0):
    """A 3-layer Llama, hidden 32, untied ``lm_head`` (``lm_head.weight``, ``model.norm.weight`` and
    ``model.embed_tokens.weight`` are separate tensors in its safetensors file)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config)


def train(out_dir: str | Path, *, model=None, dataset=None, steps: int = 10, save_steps: int = 1, seed: int = 0,
          callbacks=None, **arguments) -> dict[int, float]:
    """Train ``model`` (a fresh :func:`tiny_llama`) with a real ``Trainer`` (and its ``callbacks``), a
    ``checkpoint-N`` folder every ``save_steps``; ``arguments`` go to ``TrainingArguments``. Returns the logged
    loss by step (NaN kept)."""
    from transformers import PrinterCallback, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    settings = {"output_dir": str(out_dir), "max_steps": steps, "save_steps": save_steps, "logging_steps": 1,
                "per_device_train_batch_size": 8, "report_to": "none", "use_cpu": True, "seed": seed,
                "data_seed": seed, "dataloader_num_workers": 0, "disable_tqdm": True,
                "logging_nan_inf_filter": False, "lr_scheduler_type": "constant", **arguments}
    trainer = Trainer(model=model if model is not None else tiny_llama(seed), args=TrainingArguments(**settings),
                      train_dataset=dataset if dataset is not None else PatternTokens(seed=seed), callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        trainer.train()
    finally:
        hf_logging.set_verbosity(verbosity)
    return {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}


def load(path: str | Path):
    """``AutoModelForCausalLM.from_pretrained(path)`` and its loading info (``missing_keys``, ``unexpected_keys``)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = AutoModelForCausalLM.from_pretrained(str(path), output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.eval(), info


def eval_loss(path_or_model, rows: int = 32, seed: int = 5, shift: int = 1) -> float:
    """The model's mean loss on held-out pattern rows (a checkpoint folder is loaded with ``from_pretrained``)."""
    model = path_or_model if isinstance(path_or_model, torch.nn.Module) else load(path_or_model)[0]
    ids = PatternTokens(rows, seed=seed, shift=shift).ids
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def pattern_run(out_dir: str | Path) -> Path:
    """The tests' trained run: the tiny Llama on the pattern, checkpoint-10, -20, -30 (eval loss 2.8, 0.94, 0.17)."""
    out = Path(out_dir) / "run"
    train(out, steps=30, save_steps=10, learning_rate=1e-2, optim="adamw_torch")
    return out
