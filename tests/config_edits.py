"""config.json edited in place, for the tests that judge a checkpoint by what its config says."""

from __future__ import annotations

import json
from pathlib import Path

GONE = object()  # an edit's value: delete the key


def edited(folder: Path, edits: dict) -> Path:
    """``folder`` with its config.json's keys set to ``edits``' values (``GONE``: deleted)."""
    data = json.loads((folder / "config.json").read_text())
    for key, value in edits.items():
        if value is GONE:
            data.pop(key, None)
        else:
            data[key] = value
    (folder / "config.json").write_text(json.dumps(data))
    return folder


# a tiny causal LM's sizes, as the config tests build them (every model type below takes these keys)
TINY_SIZES = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def saved_tiny_models(tmp_path_factory, model_types: tuple[str, ...]) -> dict[str, Path]:
    """A tiny causal LM of each of ``model_types`` (TINY_SIZES, seeded), saved by save_pretrained, by model type."""
    import torch
    import transformers

    folders = {}
    for model_type in model_types:
        torch.manual_seed(0)
        folder = tmp_path_factory.mktemp(model_type) / "model"
        config = transformers.AutoConfig.for_model(model_type, **TINY_SIZES)
        transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
        folders[model_type] = folder
    return folders


def config_refused(folder: Path) -> bool:
    """Whether transformers' AutoConfig.from_pretrained refuses ``folder``'s config.json (the oracle's first step)."""
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        transformers.AutoConfig.from_pretrained(folder)
    except Exception:  # noqa: BLE001 - the oracle: any refusal
        return True
    return False
