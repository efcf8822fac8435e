"""The tokenizer files beside a model's weights, as ``AutoTokenizer.from_pretrained`` reads them.

A model that loads still does not generate when the tokenizer saved with it is broken:

- a tokenizer file that is not valid JSON (a save or a copy cut short): ``tokenizer_config.json`` and
  ``tokenizer.json`` are read by every load, ``special_tokens_map.json`` and ``added_tokens.json`` where
  tokenizer_config.json has no ``added_tokens_decoder`` (transformers 5.25's rule); AutoTokenizer raises
  JSONDecodeError. BAD CONFIG;
- a vocabulary whose ordinary (not special) ids reach beyond the model's (a tokenizer of another model, or
  retrained): ordinary text fails. BAD CONFIG. Without tokenizer.json, transformers builds the tokenizer from the
  files of a tokenizer written without the tokenizers library, read here alike: ``vocab.json`` (GPT-2, RoBERTa:
  token to id; ``merges.txt`` holds no ids) or else ``vocab.txt`` (BERT: a token a line, its id the line's
  number). A SentencePiece ``tokenizer.model`` is not read (its ids are the converter's: XLM-R shifts them, T5
  appends sentinels; and transformers needs the sentencepiece package for it);
- a token whose id lies at or beyond the model's vocabulary (config.json's ``vocab_size``: the rows of the
  embedding from_pretrained builds), which ``tokenizer.add_special_tokens({"pad_token": "[PAD]"})`` or
  ``add_tokens`` leaves without ``model.resize_token_embeddings(len(tokenizer))``, where inputs hold it: a token
  added as ordinary text, the pad/BOS/EOS/UNK/SEP/CLS token, one tokenizer.json's padding or post-processor
  inserts, one the chat template writes. Such an input fails in the embedding lookup (IndexError on the CPU, a
  device-side assert on CUDA). BAD CONFIG. A special token nothing uses beyond the vocabulary (BART-CNN's
  ``<mask>``, T5's unused sentinels, Llama 3's reserved tokens cut off) fails only in text that spells it out:
  a note.

Judged for text models that embed token ids only: a multimodal model's image or audio placeholder tokens may lie
beyond its text vocabulary (replaced before the lookup), a CTC model (Wav2Vec2) embeds no token at all, and a
model with its own code (``auto_map``) embeds as it likes. The model loads, so the weights keep their verdict.

A tokenizer.json over 1 MiB (Llama 3's is 9 MB, Gemma's 34: parsing it whole would cost every scan 0.1-1 s) is
read as bytes, not parsed: its top-level values before the model (added tokens, padding, post-processor) and the
model's type (written before its vocabulary) from its head, its vocabulary's last ids from where the tokenizers
library writes them (in id order: the entries before BPE's merges, or at the end of a WordPiece file), its last
bytes, which close the JSON object (at the start of a line, in the indented form it writes) unless the file was
cut short; and a NUL byte anywhere in it (a zeroed page, a copy gone wrong) makes it unreadable too. A large
file damaged elsewhere in a way that still reads as text (a digit changed, a bracket lost) is not seen: that is
the price of not parsing it.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nandoctor import access
from nandoctor.checkpoint import tokenizerrefusals
from nandoctor.checkpoint.configvalues import embeds_token_ids, positive
from nandoctor.checkpoint.jsonfiles import read_ends, read_json
from nandoctor.errors import UnreadablePathError
from nandoctor.model import ScanProblem
from nandoctor.verdict import CONFIG_KIND
from nandoctor.wording import first_few

TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
ADDED_TOKENS = "added_tokens.json"
CHAT_TEMPLATE = "chat_template.jinja"
VOCAB_JSON = "vocab.json"
VOCAB_TXT = "vocab.txt"
FULL_PARSE_BYTES = 1 << 20
_MAX_BYTES = 256 << 20  # (Gemma's tokenizer.json, among the largest, is 34 MB)
_TAIL_BYTES = 64
_VOCAB_TAIL_BYTES = 64 << 10  # the vocabulary's last entries: the largest ids among them
_UNIGRAM_VOCAB = re.compile(rb'"vocab"\s*:\s*\[')
_PIECE = re.compile(rb'\[\s*"(?:[^"\\]|\\.)*"\s*,\s*[-+0-9.eE]+\s*\]')  # (one of Unigram's ["piece", score])
_ID_DIGITS = 10  # (ids are u32 in the tokenizers library; a longer run of digits is no id, and int() refuses 4,300)
_ENTRY_ID = re.compile(rb'(?<!\\)"\s*:\s*(\d{1,%d})\s*[,}]' % _ID_DIGITS)  # ("token": 123, in a vocabulary)
_SHOWN = 3
_NAMED_TOKENS = ("pad_token", "bos_token", "eos_token", "unk_token", "sep_token", "cls_token")
# config.json keys of configs that are no model of their own (a dict, like a sub-model's config)
_NOT_SUB_MODELS = {"quantization_config", "compression_config", "rope_scaling", "rope_parameters"}
_PLACEHOLDER_KEY = re.compile(r"(?:image|video|audio|vision|speech)_token")
_HINT = (" from the base model or from where the checkpoint was saved (a save or a copy cut short leaves it "
         "truncated)")


@dataclass(frozen=True)
class _Token:
    file: str  # where it was read
    content: str
    special: bool


@dataclass(frozen=True)
class _TokenizerJson:
    """What tokenizer.json (or the vocabulary file read without it, ``file``) says of its ids: its added tokens,
    the ids of its vocabulary (all of them for a small file, the last entries' for a large one: the largest are
    among them), and the ids its padding and post-processor put into inputs."""

    added: list[Any] = field(default_factory=list)
    vocab_ids: list[int] = field(default_factory=list)
    used_ids: set[int] = field(default_factory=set)
    file: str = TOKENIZER


def check(root: Path, config: dict[str, Any] | None) -> tuple[list[ScanProblem], list[str]]:
    """(problems, notes) of the tokenizer files of the model folder ``root`` (whose config.json is ``config``):
    what stops the tokenizer loading or the model embedding the inputs it makes; nothing without them."""
    found: list[ScanProblem] = []
    tokens: dict[int, _Token] = {}
    tokenizer_config = _read(root / TOKENIZER_CONFIG, found)
    settings = tokenizer_config if isinstance(tokenizer_config, dict) else {}
    found += _sides(root / TOKENIZER_CONFIG, settings)
    decoder = settings.get("added_tokens_decoder")
    special_map = None if "added_tokens_decoder" in settings else _read(root / SPECIAL_TOKENS_MAP, found)
    found += tokenizerrefusals.settings(root / TOKENIZER_CONFIG, settings, root / SPECIAL_TOKENS_MAP,
                                        None if "added_tokens_decoder" in settings else special_map or {})
    if isinstance(decoder, dict):
        for key, token in decoder.items():
            if isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= _ID_DIGITS:  # ("²"; 5,000 digits)
                tokens.setdefault(int(key), _Token(TOKENIZER_CONFIG, _content(token), _special(token)))
    else:  # (transformers reads these two only then)
        settings = {**settings, **(special_map if isinstance(special_map, dict) else {})}  # (the map's win)
        added = _read(root / ADDED_TOKENS, found)
        if isinstance(added, dict):
            special_tokens = _special_contents(settings)
            for token, number in added.items():
                if _int(number):
                    tokens.setdefault(number, _Token(ADDED_TOKENS, token, token in special_tokens))
    templates = _chat_templates(root, settings)
    found += tokenizerrefusals.chat_templates([t for t in templates if t[0].name == CHAT_TEMPLATE] or templates)
    vocab = _text_vocab(config)
    tokenizer = _tokenizer_json(root / TOKENIZER, found, ids=vocab is not None)  # (read for its validity either way)
    if vocab is None:
        return found, []
    if not _present(root / TOKENIZER):  # (transformers builds the tokenizer from the older files then)
        tokenizer = _vocabulary_file(root, _special_contents(settings), tokens)
    for token in tokenizer.added:
        if isinstance(token, dict) and _int(token.get("id")):
            tokens.setdefault(token["id"], _Token(TOKENIZER, _content(token), _special(token)))
    special_ids = {n for n, t in tokens.items() if t.special}
    largest = max((n for n in tokenizer.vocab_ids if n not in special_ids), default=None)
    if largest is not None and largest >= vocab:
        found.append(ScanProblem(
            str(root / tokenizer.file),
            f"has ordinary vocabulary pieces up to id {largest:,} where the model's vocabulary holds {vocab:,} "
            "(config.json's vocab_size, the embedding's rows): text the tokenizer splits into one of them fails in "
            "the embedding (IndexError: index out of range; a device-side assert on CUDA)",
            "save the tokenizer the model was trained with beside it (this one is another model's, or retrained), or "
            "resize the model's embeddings to it (model.resize_token_embeddings(len(tokenizer))) and train them",
            kind=CONFIG_KIND,
        ))
        return found, []  # (the added tokens lie beyond it too: said once)
    outside = sorted(n for n in tokens if n >= vocab)
    named, template = _named(settings), "\n".join(text for _, text in templates)
    roles = {n: _role(tokens[n].content, named) for n in outside}
    used = [n for n in outside if not tokens[n].special or roles[n] or n in tokenizer.used_ids
            or (tokens[n].content and tokens[n].content in template)]
    if used:
        said = [f"{tokens[n].content!r} (id {n}{f', the {roles[n]} token' if roles[n] else ''})" for n in used]
        found.append(ScanProblem(
            str(root / tokens[used[0]].file),
            f"gives {len(used)} token(s) that inputs hold an id at or beyond the model's vocabulary of {vocab:,} "
            f"(config.json's vocab_size, the embedding's rows): {first_few(said, _SHOWN)}; an input holding one "
            "(every padded batch, for the pad token) fails in the embedding (IndexError: index out of range; a "
            "device-side assert on CUDA)",
            "resize the model's embeddings to the tokenizer before saving (model.resize_token_embeddings("
            "len(tokenizer)), then save_pretrained), or save the tokenizer the model was trained with"
            + ("; for the pad token alone, tokenizer.pad_token = tokenizer.eos_token (an id the model has) and "
               "tokenizer.save_pretrained(...) needs no retraining" if any(roles[n] == "pad" for n in used) else ""),
            kind=CONFIG_KIND,
        ))
    unused = [n for n in outside if n not in used]
    notes = [f"{root / tokens[unused[0]].file}: {len(unused)} special token(s) that no setting, processor or chat "
             f"template puts into inputs have ids at or beyond the model's vocabulary of {vocab:,} "
             f"({first_few([f'{tokens[n].content!r} (id {n})' for n in unused], _SHOWN)}): text that spells one out "
             "fails in the embedding"] if unused else []
    return found, notes


def _read(path: Path, found: list[ScanProblem]) -> Any:
    """The JSON in a small tokenizer file, None when there is none; a problem added to ``found`` when
    AutoTokenizer would fail on it."""
    try:
        if _absent(path, found):
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


def _vocabulary_file(root: Path, special: set[str], tokens: dict[int, _Token]) -> _TokenizerJson:
    """The ordinary ids of the vocabulary transformers builds a tokenizer from where there is no tokenizer.json:
    ``vocab.json`` (token to id), else ``vocab.txt`` (a token a line, read as transformers reads it: universal
    newlines, a line's id its number), as its ``load_vocab_and_merges`` prefers them. Entries that name a special
    token (a RoBERTa ``<mask>`` at the last id) go into ``tokens`` as special, judged as added ones are. Nothing
    where neither is there or neither reads (transformers' own fallback then)."""
    entries: dict[str, int] = {}
    name = VOCAB_JSON
    try:
        if _present(root / VOCAB_JSON):
            data = read_json(root / VOCAB_JSON)
            entries = {k: v for k, v in data.items() if _int(v)} if isinstance(data, dict) else {}
        elif _present(root / VOCAB_TXT):
            name = VOCAB_TXT
            raw = read_ends(root / VOCAB_TXT, _MAX_BYTES, 0)[0]
            with io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8") as lines:  # (transformers' open(…, "r"))
                entries = {line.rstrip("\n"): number for number, line in enumerate(lines)}
    except (UnreadablePathError, OSError, ValueError):  # (UnicodeDecodeError too: transformers drops the file)
        return _TokenizerJson(file=name)
    for token, number in entries.items():
        if token in special:
            tokens.setdefault(number, _Token(name, token, True))
    # (an empty line of vocab.txt, one ending it included, is a token no text is split into)
    return _TokenizerJson(vocab_ids=[n for t, n in entries.items() if t and t not in special], file=name)


def _present(path: Path) -> bool:
    try:
        return access.exists(path)
    except (UnreadablePathError, OSError):
        return True  # (there, but not to be listed: not replaced by another file)


def _tokenizer_json(path: Path, found: list[ScanProblem], *, ids: bool) -> _TokenizerJson:
    """tokenizer.json as transformers reads it (a problem added to ``found`` where that fails): parsed whole when
    small, else read as bytes (the module's docstring says how); ``ids``: its vocabulary's ids are wanted."""
    try:
        if _absent(path, found):
            return _TokenizerJson()
        _, _, size = read_ends(path, _TAIL_BYTES, 0)
    except (UnreadablePathError, OSError):
        return _TokenizerJson()
    except ValueError as exc:
        found.append(_invalid(path, str(exc)))
        return _TokenizerJson()
    if size <= FULL_PARSE_BYTES:
        data = _read(path, found)
        if not isinstance(data, dict):
            return _TokenizerJson()
        model = data.get("model")
        why = _unbuilt_model(model)
        if why is not None:
            found.append(_unbuildable(path, why))
            return _TokenizerJson()
        found += tokenizerrefusals.tokenizer_json(path, data, merges=True)
        vocab = model.get("vocab") if isinstance(model, dict) else None
        listed = [v for v in vocab.values() if _int(v)] if isinstance(vocab, dict) else (
            [len(vocab) - 1] if isinstance(vocab, list) and vocab else [])  # (Unigram: a list of pieces)
        return _TokenizerJson(_list(data.get("added_tokens")), listed, _used_ids(data))
    if size > _MAX_BYTES:
        return _TokenizerJson()  # (no tokenizer is that large: not judged)
    try:
        raw = read_ends(path, size, 0)[0]
    except (OSError, ValueError):
        return _TokenizerJson()
    text = raw[-_TAIL_BYTES:].rstrip()
    if not text.endswith(b"}") or (raw[:2] in (b"{\n", b"{\r") and not re.search(rb"(?:^|\n)}$", text)):
        found.append(_invalid(path, "it is cut short: its last bytes do not close its JSON object"))
        return _TokenizerJson()
    if not raw.lstrip(b" \t\r\n").startswith(b"{"):  # (a BOM, another JSON value: not an object, which the parse wants)
        found.append(_invalid(path, "it does not begin with a JSON object ('{')"))
        return _TokenizerJson()
    damage = _damage(raw)
    if damage is not None:
        found.append(_invalid(path, damage))
        return _TokenizerJson()
    window = 1 << 20
    while True:
        head, complete = _head_values(raw[:window].decode("utf-8", "replace"))
        if complete or window >= len(raw):
            why = _unbuilt_model(head.get("model")) if complete else None
            if why is not None:
                found.append(_unbuildable(path, why))
                return _TokenizerJson()
            if complete:
                found += tokenizerrefusals.tokenizer_json(path, head, merges=False)
            return _TokenizerJson(_list(head.get("added_tokens")), _last_vocab_ids(raw) if ids else [], _used_ids(head))
        window *= 4


def _damage(raw: bytes) -> str | None:
    """Why the bytes of a large tokenizer.json cannot be JSON where storage or a copy zeroed part of it: a NUL
    byte, which JSON text never holds, not even inside a string (~2 ms for Gemma's 34 MB, a memchr; checking
    the whole file is UTF-8 would cost ~25 ms for Llama 3's, so other overwritten bytes are not seen)."""
    nul = raw.find(b"\0")
    if nul >= 0:
        return f"it holds a NUL byte at offset {nul:,}, which JSON text never does: part of it was overwritten"
    return None


def _last_vocab_ids(raw: bytes) -> list[int]:
    """The ids of the last entries of a large tokenizer.json's vocabulary (the largest are among them: the
    tokenizers library writes BPE, WordPiece and WordLevel vocabularies in id order), found without parsing: the
    entries before BPE's ``"merges": [``, or those that end the file (WordPiece); for Unigram's list of
    ``[piece, score]`` entries, the last one's place, counted. Empty for another layout (WordLevel's unk_token
    written after its vocabulary)."""
    at = len(raw)
    while True:  # ("merges" may be a token too: "merges": 1234 in the vocabulary; the key opens a list)
        at = raw.rfind(b'"merges"', 0, at)
        if at < 0:
            break
        if re.match(rb'"merges"\s*:\s*\[', raw[at:at + 64]):
            window = raw[max(0, at - _VOCAB_TAIL_BYTES):at]
            return _entry_ids(window) if re.search(rb"\d\s*\}\s*,\s*$", window) else []
    window = raw[-_VOCAB_TAIL_BYTES:]
    if re.search(rb"\d\s*\}\s*\}\s*\}\s*$", window):
        return _entry_ids(window)
    at, opened = len(raw), None
    while opened is None:  # Unigram: "vocab": [["piece", score], …] ("vocab" may be a piece too: the key opens a list)
        at = raw.rfind(b'"vocab"', 0, at)
        if at < 0:
            return []
        opened = _UNIGRAM_VOCAB.match(raw, at)
    start = opened.end()
    space = _leading_space(raw, start)  # (before the first entry)
    if b"\n" in space:  # indented, as the tokenizers library writes: each entry opens a line of the first's indent
        count = raw.count(space[space.rindex(b"\n"):] + b"[", start)  # (a piece holds no raw newline: 0.1 s faster)
    else:
        count = sum(1 for _ in _PIECE.finditer(raw, start))  # (whole entries: a piece may spell "],[")
    return [count - 1] if count else []  # (a piece's id is its place in the list)


def _leading_space(raw: bytes, start: int) -> bytes:
    """The whitespace in ``raw`` from ``start`` on."""
    end = start
    while end < len(raw) and raw[end] in b" \t\r\n":
        end += 1
    return raw[start:end]


def _entry_ids(window: bytes) -> list[int]:
    """The ids of the vocabulary entries in ``window``, which ends with the vocabulary (from its key on, where the
    window holds it: the model's other settings before it are no entries)."""
    keys = list(re.finditer(rb'"vocab"\s*:\s*\{', window))
    return [int(n) for n in _ENTRY_ID.findall(window, keys[-1].end() if keys else 0)]


def _head_values(text: str) -> tuple[dict[str, Any], bool]:
    """(the top-level values of a tokenizer.json before its model: added_tokens, padding, post_processor …, and
    the model's own settings before its vocabulary (its type), whether that answer is final) from its start,
    walked key by key; not final when the text ends first."""
    values: dict[str, Any] = {}
    try:  # (the caller has checked that the text opens an object)
        model_at = _members(text, _skip_space(text, 0) + 1, values, "model")
        if model_at is not None:
            if text.startswith("{", model_at):  # (its vocabulary and merges: the bulk of the file, never parsed)
                model: dict[str, Any] = {}
                _members(text, model_at + 1, model, "vocab", "merges")
                values["model"] = model
            else:
                values["model"] = json.JSONDecoder().raw_decode(text, model_at)[0]
    except (ValueError, RecursionError):
        return values, False  # the head ends inside a value (or the file is not JSON: its tail check's business)
    return values, True


def _members(text: str, position: int, values: dict[str, Any], *stops: str) -> int | None:
    """Where the value of the first key in ``stops`` starts in the JSON object of ``text`` whose ``{`` ends before
    ``position`` (None when the object ends first), the members before it put into ``values``. ValueError where the
    text ends inside a member."""
    decoder = json.JSONDecoder()
    while True:
        position = _skip_space(text, position)
        if text.startswith("}", position):
            return None
        key, position = decoder.raw_decode(text, position)
        position = _skip_space(text, position)
        if not text.startswith(":", position):
            return None
        position = _skip_space(text, position + 1)
        if key in stops:
            return position
        value, position = decoder.raw_decode(text, position)
        if isinstance(key, str):
            values[key] = value
        position = _skip_space(text, position)
        if text.startswith(",", position):
            position += 1


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _used_ids(data: dict[str, Any]) -> set[int]:
    """The ids tokenizer.json's padding and post-processor put into inputs of their own (pad, BOS/EOS, CLS/SEP)."""
    used: set[int] = set()
    padding = data.get("padding")
    if isinstance(padding, dict) and _int(padding.get("pad_id")):
        used.add(padding["pad_id"])
    processors = [data.get("post_processor")]
    while processors:
        processor = processors.pop()
        if not isinstance(processor, dict):
            continue
        processors += _list(processor.get("processors"))  # (a Sequence of processors)
        specials = processor.get("special_tokens")
        for special in specials.values() if isinstance(specials, dict) else ():  # TemplateProcessing
            used.update(n for n in _list(special.get("ids") if isinstance(special, dict) else None) if _int(n))
        for key in ("sep", "cls"):  # BertProcessing, RobertaProcessing: [token, id]
            pair = processor.get(key)
            if isinstance(pair, list) and len(pair) == 2 and _int(pair[1]):
                used.add(pair[1])
    return used


def _text_vocab(config: dict[str, Any] | None) -> int | None:
    """config.json's ``vocab_size`` where it is the embedding every token id goes through: a text model's
    top-level one, without sub-models, placeholder tokens, a CTC head (Wav2Vec2's vocab_size sizes its output,
    it embeds no token) or code of its own."""
    if not isinstance(config, dict) or "auto_map" in config or "decoder_vocab_size" in config:
        return None
    if any(isinstance(value, dict) and ("model_type" in value or key.endswith("_config")) and key not in _NOT_SUB_MODELS
           for key, value in config.items()):
        return None
    if any(_PLACEHOLDER_KEY.search(key) for key in config):
        return None
    if not embeds_token_ids(config):
        return None
    return positive(config.get("vocab_size"))


def _named(settings: dict[str, Any]) -> dict[str, str]:
    """The tokens tokenizer_config.json (or special_tokens_map.json) names pad, BOS, EOS …, by role: inputs hold
    them."""
    return {key.removesuffix("_token"): _content(value) if isinstance(value, dict) else value for key in _NAMED_TOKENS
            if isinstance(value := settings.get(key), (str, dict))}


def _special_contents(settings: dict[str, Any]) -> set[str]:
    """The tokens the settings make special, as transformers counts them when it reads added_tokens.json: the
    named ones (mask included) and the extra (``additional``) special tokens."""
    special = {_content(v) if isinstance(v, dict) else v for k in tokenizerrefusals.SPECIAL_KEYS
               if isinstance(v := settings.get(k), (str, dict))}
    for key in tokenizerrefusals.EXTRA_KEYS:
        extra = settings.get(key)
        special.update(_content(v) if isinstance(v, dict) else v for v in (
            extra.values() if isinstance(extra, dict) else _list(extra)) if isinstance(v, (str, dict)))
    return special


def _role(content: str, named: dict[str, str]) -> str | None:
    """The role (``pad``, ``eos`` …) the token ``content`` is named for, if any."""
    return next((role for role, token in named.items() if token == content), None)


def _chat_templates(root: Path, settings: dict[str, Any]) -> list[tuple[Path, str]]:
    """The chat templates, each with the file it was read from: tokenizer_config.json's (one, or several by name),
    then chat_template.jinja's (which transformers prefers where it is there)."""
    template = settings.get("chat_template")
    parts = [template] if isinstance(template, str) else [
        t["template"] for t in _list(template) if isinstance(t, dict) and isinstance(t.get("template"), str)]
    found = [(root / TOKENIZER_CONFIG, part) for part in parts]
    try:
        if access.exists(root / CHAT_TEMPLATE):
            found.append((root / CHAT_TEMPLATE, read_ends(root / CHAT_TEMPLATE, 1 << 20, 0)[0].decode("utf-8", "replace")))
    except (UnreadablePathError, OSError, ValueError):
        pass
    return found


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _special(token: Any) -> bool:
    return isinstance(token, dict) and token.get("special") is True


def _content(token: Any) -> str:
    return str(token.get("content", "?")) if isinstance(token, dict) else str(token)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _absent(path: Path, found: list[ScanProblem]) -> bool:
    """Whether there is no file at ``path`` to read; a link to nothing is a problem added to ``found`` (AutoTokenizer
    fails on it: a link farm whose store was removed)."""
    if access.exists(path):
        return False
    broken = access.broken_link(path)
    if broken is not None:
        found.append(_invalid(path, broken[0]))
    return True


_MODEL_TYPES = frozenset({"BPE", "WordPiece", "WordLevel", "Unigram"})  # (the tokenizers library's four models)
_SIDES = ("padding_side", "truncation_side")  # (a tokenizer pads and truncates on the left or the right, nothing else)


def _unbuilt_model(model: Any) -> str | None:
    """Why a tokenizer.json's ``model`` (None where it has none) is no model the tokenizers library builds: JSON,
    but "data did not match any variant of untagged enum ModelUntagged", "Model missing" (an adversarial round's
    read CLEAN); None when it is one. (A model without a type is tried as each: not judged.)"""
    if model is None:
        return "it holds no model"
    if not isinstance(model, dict):
        return f"its model is a JSON {'array' if isinstance(model, list) else 'value'}, not an object"
    kind = model.get("type")
    if kind is not None and kind not in _MODEL_TYPES:
        return f"its model's type is {json.dumps(kind)[:40]}, where the library has {', '.join(sorted(_MODEL_TYPES))}"
    return None


def _unbuildable(path: Path, why: str) -> ScanProblem:
    return ScanProblem(str(path), f"is no tokenizer the tokenizers library builds ({why}): AutoTokenizer.from_pretrained "
                       "raises on it, so the model loads without the tokenizer saved with it",
                       f"copy {path.name}{_HINT}", kind=CONFIG_KIND)


def _sides(path: Path, settings: dict[str, Any]) -> list[ScanProblem]:
    """A padding or truncation side other than left or right (AutoTokenizer raises ValueError as it loads)."""
    return [ScanProblem(str(path), f"{key} is {json.dumps(settings[key])[:40]}: AutoTokenizer.from_pretrained raises "
                        "ValueError (a side is \"left\" or \"right\")", f"set {key} to \"left\" or \"right\"",
                        kind=CONFIG_KIND)
            for key in _SIDES if key in settings and settings[key] not in ("left", "right")]


def _invalid(path: Path, why: str) -> ScanProblem:
    return ScanProblem(str(path), f"cannot be read as JSON ({why}): AutoTokenizer.from_pretrained raises on it, so "
                       "the model loads without the tokenizer saved with it", f"copy {path.name}{_HINT}",
                       kind=CONFIG_KIND)


__all__ = ["FULL_PARSE_BYTES", "check"]
