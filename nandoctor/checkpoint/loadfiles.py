"""The small files beside the weights that decide how they load and run: what a manifest records besides them.

The weights alone do not make the model: ``from_pretrained`` builds it from config.json (a
``layer_norm_epsilon`` changed from 1e-5 to 1.0 changes every forward pass), finds the weights through the
shard index, generates by generation_config.json, applies an adapter by adapter_config.json, and the
tokenizer files decide which ids reach the embeddings. A manifest that verified the weight files alone would
pass a checkpoint whose config was edited since, so ``nandoctor manifest`` records these files' sha256 too
(checkpoint/hashes.py). The names are those the other checks read (loaders.py, loadconfig.py,
tokenizerfiles.py), plus the tokenizer vocabularies and processor configs ``AutoTokenizer`` /
``AutoProcessor`` load, which nandoctor does not parse, and the code ``trust_remote_code`` runs (the folder's
``*.py``: an adversarial round edited ``modeling_my.py`` to make the logits NaN and the manifest still verified).

Looked for in the checkpoint folder and in each folder holding its weights or index (a diffusers
pipeline's ``unet/``); a single weight file has none of its own (the files beside it may be another model's).
"""

from __future__ import annotations

from pathlib import Path

from nandoctor.checkpoint import layout, loadconfig, tokenizerfiles
from nandoctor.checkpoint.loaders import CONFIG, MANIFESTS
from nandoctor.checkpoint.opener import Checkpoint

LOAD_FILE_NAMES = (
    CONFIG, loadconfig.GENERATION_CONFIG, loadconfig.ADAPTER_CONFIG, "quantize_config.json", *MANIFESTS,
    tokenizerfiles.TOKENIZER, tokenizerfiles.TOKENIZER_CONFIG, tokenizerfiles.SPECIAL_TOKENS_MAP,
    tokenizerfiles.ADDED_TOKENS, tokenizerfiles.CHAT_TEMPLATE,
    # tokenizer vocabularies and processors AutoTokenizer / AutoProcessor read, not parsed by nandoctor
    "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json", "vocab.txt", "merges.txt",
    "preprocessor_config.json", "processor_config.json", "chat_template.json",
)
# what from_pretrained(trust_remote_code=True) imports and runs (config.json's auto_map names modules of the folder,
# which import their siblings) and the chat templates apply_chat_template reads: recorded by pattern
_PATTERNS = ("*.py", "additional_chat_templates/*.jinja")


def load_files(checkpoint: Checkpoint) -> list[Path]:
    """The regular files of :data:`LOAD_FILE_NAMES` and the shard indexes the checkpoint was read through, in
    its folder and the folders of its weights; none for a single weight file."""
    if not checkpoint.path.is_dir():
        return []
    root = checkpoint.path
    folders = {root, *(f.parent for f in checkpoint.files.files), *(i.path.parent for i in checkpoint.files.indexes)}
    inside = sorted(f for f in folders if f == root or root in f.parents)
    found = {folder / name for folder in inside for name in LOAD_FILE_NAMES}
    found |= {f for folder in inside for pattern in _PATTERNS for f in folder.glob(pattern)}
    found |= {index.path for index in checkpoint.files.indexes}
    # (regular files only: hashing a FIFO would wait forever for a writer)
    return sorted(f for f in found if layout.is_regular_file(f))


__all__ = ["LOAD_FILE_NAMES", "load_files"]
