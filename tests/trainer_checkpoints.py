"""Real Hugging Face checkpoints for the layout tests: a tiny Llama trained by a real ``transformers.Trainer`` on CPU
(random init, nothing downloaded), and the loader's own answer about a folder.

* :func:`trainer_run` — ``checkpoint-N`` folders as Trainer writes them (model.safetensors, config.json,
  generation_config.json, optimizer.pt with AdamW moments, scheduler.pt, rng_state.pth, trainer_state.json,
  training_args.bin).
* :func:`loads` — the oracle: does ``AutoModelForCausalLM.from_pretrained`` load the folder and ``generate`` run?
"""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 64


def tiny_llama():
    """A 2-layer Llama of hidden size 16 (about 4k parameters), random init."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config)


class _Tokens(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int) -> dict:
        ids = (torch.arange(8) + i) % VOCAB
        return {"input_ids": ids, "labels": ids.clone()}


def trainer_run(out: Path, *, steps: int = 6, save_steps: int = 2, model=None) -> Path:
    """Train ``model`` (a tiny Llama by default) with ``transformers.Trainer`` for ``steps`` steps, a
    ``checkpoint-N`` every ``save_steps``; returns ``out``."""
    from tests.pattern_runs import train

    train(out, model=tiny_llama() if model is None else model, dataset=_Tokens(), steps=steps, save_steps=save_steps,
          per_device_train_batch_size=4, learning_rate=1e-3, lr_scheduler_type="linear")
    return Path(out)


def loads(folder: Path) -> bool:
    """True when ``from_pretrained`` loads ``folder`` and ``generate`` runs on it; False when loading raises
    (transformers' OSError for missing weights, ValueError "Unrecognized model" for a missing config)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder))
    except (OSError, ValueError):
        return False
    finally:
        hf_logging.set_verbosity(verbosity)
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False, pad_token_id=0)
    return True
