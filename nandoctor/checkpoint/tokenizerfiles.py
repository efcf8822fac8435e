"""The tokenizer files beside a model's weights, as ``AutoTokenizer.from_pretrained`` reads them.

A model that loads still does not generate when the tokenizer saved with it is broken:

- a tokenizer file that is not valid JSON (a save or a copy cut short): ``tokenizer_config.json`` and
  ``tokenizer.json`` are read by every load, ``special_tokens_map.json`` and ``added_tokens.json`` where
  tokenizer_config.json has no ``added_tokens_decoder`` (transformers 5.25's rule); AutoTokenizer raises
  JSONDecodeError;
- a vocabulary larger than the model's (a tokenizer of another model, or retrained): ordinary text fails;
- a token whose id lies at or beyond the model's vocabulary (config.json's ``vocab_size``: the rows of the
  embedding from_pretrained builds), which ``tokenizer.add_special_tokens({"pad_token": "[PAD]"})`` or
  ``add_tokens`` leaves without ``model.resize_token_embeddings(len(tokenizer))``. Text holding the token
  (every padded batch, for the pad token; every chat, for a chat template's) fails in the embedding lookup:
  IndexError on the CPU, a device-side assert on CUDA. Judged for text models only: a multimodal model's image
  or audio placeholder tokens may lie beyond its text vocabulary (they are replaced before the lookup), and
  a model with its own code (``auto_map``) embeds as it likes.

The model loads: BAD CONFIG (``verdict.CONFIG_KIND``), and the weights keep their verdict. A tokenizer.json over
1 MiB (Llama 3's is 9 MB, Gemma's 34: parsing it whole would cost every scan 0.1-1 s) is read as bytes, not
parsed: its ``added_tokens`` from its head (the tokenizers library writes them before the vocabulary), the
vocabulary's largest id from where that library writes it (in id order: the last entry), and its last bytes,
which close the JSON object (at the start of a line, in the indented form it writes) unless the file was cut short.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from nandoctor import access
from nandoctor.checkpoint.configvalues import positive
from nandoctor.checkpoint.jsonfiles import read_ends, read_json
from nandoctor.errors import UnreadablePathError
from nandoctor.model import ScanProblem
from nandoctor.verdict import CONFIG_KIND
from nandoctor.wording import first_few

TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
ADDED_TOKENS = "added_tokens.json"
FULL_PARSE_BYTES = 1 << 20
_MAX_BYTES = 256 << 20  # (Gemma's tokenizer.json, among the largest, is 34 MB)
_TAIL_BYTES = 64
_SHOWN = 3
# config.json keys of configs that are no model of their own (a dict, like a sub-model's config)
_NOT_SUB_MODELS = {"quantization_config", "compression_config", "rope_scaling", "rope_parameters"}
_PLACEHOLDER_KEY = re.compile(r"(?:image|video|audio|vision|speech)_token")
_HINT = (" from the base model or from where the checkpoint was saved (a save or a copy cut short leaves it "
         "truncated)")


def problems(root: Path, config: dict[str, Any] | None) -> list[ScanProblem]:
    """What in the tokenizer files of the model folder ``root`` (whose config.json is ``config``) stops the
    tokenizer loading or the model embedding what it gives; nothing for a folder without them."""
    found: list[ScanProblem] = []
    tokens: dict[int, tuple[str, str]] = {}  # id -> (file, token)
    tokenizer_config = _read(root / TOKENIZER_CONFIG, found)
    decoder = tokenizer_config.get("added_tokens_decoder") if isinstance(tokenizer_config, dict) else None
    if isinstance(decoder, dict):
        for key, token in decoder.items():
            if isinstance(key, str) and key.isdigit():
                tokens.setdefault(int(key), (TOKENIZER_CONFIG, _content(token)))
    else:  # (transformers reads these two only then)
        _read(root / SPECIAL_TOKENS_MAP, found)
        added = _read(root / ADDED_TOKENS, found)
        if isinstance(added, dict):
            for token, number in added.items():
                if _int(number):
                    tokens.setdefault(number, (ADDED_TOKENS, token))
    added, largest = _tokenizer_json(root / TOKENIZER, found)
    for token in added:
        if isinstance(token, dict) and _int(token.get("id")):
            tokens.setdefault(token["id"], (TOKENIZER, _content(token)))
    vocab = _text_vocab(config)
    if vocab is not None and largest is not None and largest >= vocab:
        found.append(ScanProblem(
            str(root / TOKENIZER),
            f"has a vocabulary up to id {largest:,} where the model's holds {vocab:,} (config.json's vocab_size, the "
            "embedding's rows): ordinary text gives ids the embedding does not have, and fails in it (IndexError: "
            "index out of range; a device-side assert on CUDA)",
            "save the tokenizer the model was trained with beside it (this one is another model's, or retrained), or "
            "resize the model's embeddings to it (model.resize_token_embeddings(len(tokenizer))) and train them",
            kind=CONFIG_KIND,
        ))
        tokens = {}  # (the added tokens lie beyond it too: said once)
    outside = sorted(number for number in tokens if number >= vocab) if vocab is not None else []
    if outside:
        pad = tokenizer_config.get("pad_token") if isinstance(tokenizer_config, dict) else None
        pad = _content(pad) if isinstance(pad, dict) else pad
        said = [f"{tokens[n][1]!r} (id {n}{', the pad token' if tokens[n][1] == pad else ''})" for n in outside]
        found.append(ScanProblem(
            str(root / tokens[outside[0]][0]),
            f"gives {len(outside)} token(s) an id at or beyond the model's vocabulary of {vocab:,} (config.json's "
            f"vocab_size, the embedding's rows): {first_few(said, _SHOWN)}; text holding one (every padded batch, "
            "for the pad token) fails in the embedding (IndexError: index out of range; a device-side assert on "
            "CUDA)",
            "resize the model's embeddings to the tokenizer before saving (model.resize_token_embeddings("
            "len(tokenizer)), then save_pretrained), or save the tokenizer the model was trained with",
            kind=CONFIG_KIND,
        ))
    return found


def _read(path: Path, found: list[ScanProblem]) -> Any:
    """The JSON in a small tokenizer file, None when there is none; a problem added to ``found`` when
    AutoTokenizer would fail on it."""
    try:
        if not access.exists(path):
            return None
        data = read_json(path)
    except (UnreadablePathError, OSError):
        return None  # (not to be read: the folder's listing says so)
    except ValueError as exc:
        found.append(_invalid(path, str(exc)))
        return None
    if not isinstance(data, dict):
        found.append(_invalid(path, f"it holds a JSON {'array' if isinstance(data, list) else 'value'}, not an object"))
        return None
    return data


def _tokenizer_json(path: Path, found: list[ScanProblem]) -> tuple[list[Any], int | None]:
    """tokenizer.json's ``added_tokens`` and its vocabulary's largest id (parsed whole when small; else read as
    bytes, its tail checked, its added tokens parsed from its head and the largest id taken where the tokenizers
    library writes it: the vocabulary is written in id order)."""
    try:
        if not access.exists(path):
            return [], None
        _, _, size = read_ends(path, _TAIL_BYTES, 0)
    except (UnreadablePathError, OSError):
        return [], None
    except ValueError as exc:
        found.append(_invalid(path, str(exc)))
        return [], None
    if size <= FULL_PARSE_BYTES:
        data = _read(path, found)
        if not isinstance(data, dict):
            return [], None
        added = data.get("added_tokens")
        model = data.get("model")
        vocab = model.get("vocab") if isinstance(model, dict) else None
        ids = [v for v in vocab.values() if _int(v)] if isinstance(vocab, dict) else []
        largest = max(ids) if ids else (len(vocab) - 1 if isinstance(vocab, list) and vocab else None)  # (Unigram)
        return (added if isinstance(added, list) else []), largest
    if size > _MAX_BYTES:
        return [], None  # (no tokenizer is that large: not judged)
    try:
        raw = read_ends(path, size, 0)[0]
    except (OSError, ValueError):
        return [], None
    text = raw[-_TAIL_BYTES:].rstrip()
    if not text.endswith(b"}") or (raw[:2] in (b"{\n", b"{\r") and not re.search(rb"(?:^|\n)}$", text)):
        found.append(_invalid(path, "it is cut short: its last bytes do not close its JSON object"))
        return [], None
    window = 1 << 20
    while True:
        added, complete = _added_in_head(raw[:window].decode("utf-8", "replace"))
        if complete or window >= len(raw):
            return added, _last_vocab_id(raw)
        window *= 4


def _last_vocab_id(raw: bytes) -> int | None:
    """The id of the last entry of a large tokenizer.json's vocabulary (its largest: the tokenizers library writes
    BPE, WordPiece and WordLevel vocabularies in id order), found without parsing: the entry before BPE's
    ``"merges": [``, or the one that ends the file's last objects (WordPiece, WordLevel). None for another
    layout (Unigram's list of pieces)."""
    at = len(raw)
    while True:  # ("merges" may be a token too: "merges": 1234 in the vocabulary; the key opens a list)
        at = raw.rfind(b'"merges"', 0, at)
        if at < 0:
            break
        if re.match(rb'"merges"\s*:\s*\[', raw[at:at + 64]):
            before = re.search(rb'"\s*:\s*(\d+)\s*\}\s*,\s*$', raw[max(0, at - 512):at])
            return int(before.group(1)) if before else None
    tail = re.search(rb'"\s*:\s*(\d+)\s*\}\s*\}\s*\}\s*$', raw[-512:])
    return int(tail.group(1)) if tail else None


def _added_in_head(text: str) -> tuple[list[Any], bool]:
    """(added_tokens, whether that answer is final) from the start of a tokenizer.json: its top-level keys are
    walked in order until ``added_tokens``; (``[]``, False) when the text ends first."""
    decoder = json.JSONDecoder()
    position = len(text) - len(text.lstrip())
    if not text.startswith("{", position):
        return [], True  # (a tokenizer.json of another JSON type: AutoTokenizer's parse says so)
    position += 1
    try:
        while True:
            position = _skip_space(text, position)
            if text.startswith("}", position):
                return [], True
            key, position = decoder.raw_decode(text, position)
            position = _skip_space(text, position)
            if not text.startswith(":", position):
                return [], True
            value, position = decoder.raw_decode(text, _skip_space(text, position + 1))
            if key == "added_tokens":
                return (value if isinstance(value, list) else []), True
            position = _skip_space(text, position)
            if text.startswith(",", position):
                position += 1
    except (ValueError, RecursionError):
        return [], False  # the head ends inside a value (or the file is not JSON: its tail check's business)


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _text_vocab(config: dict[str, Any] | None) -> int | None:
    """config.json's ``vocab_size`` where it is the embedding every token id goes through: a text model's
    top-level one, without sub-models, placeholder tokens or code of its own."""
    if not isinstance(config, dict) or "auto_map" in config or "decoder_vocab_size" in config:
        return None
    if any(isinstance(value, dict) and ("model_type" in value or key.endswith("_config")) and key not in _NOT_SUB_MODELS
           for key, value in config.items()):
        return None
    if any(_PLACEHOLDER_KEY.search(key) for key in config):
        return None
    return positive(config.get("vocab_size"))


def _content(token: Any) -> str:
    return str(token.get("content", "?")) if isinstance(token, dict) else str(token)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _invalid(path: Path, why: str) -> ScanProblem:
    return ScanProblem(str(path), f"is not valid JSON ({why}): AutoTokenizer.from_pretrained raises on it "
                       "(JSONDecodeError), so the model loads without the tokenizer saved with it",
                       f"copy {path.name}{_HINT}", kind=CONFIG_KIND)
