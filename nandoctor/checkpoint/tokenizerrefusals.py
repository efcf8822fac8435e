"""Values in a model's tokenizer files that are valid JSON but that ``AutoTokenizer.from_pretrained`` (or
``apply_chat_template``) refuses, held to transformers 5.25 and tokenizers 0.23 (tests/test_tokenizer_refusals.py).
An adversarial round found each scanned CLEAN; the model loads, but not with the tokenizer saved with it. BAD CONFIG.

- tokenizer.json: a ``version`` other than "1.0" ("Unknown tokenizer version"); a normalizer, pre-tokenizer,
  post-processor or decoder ``type`` the library does not have ("data did not match any variant of untagged enum"),
  inside a Sequence too; a flag of theirs (or of a BPE model) the library reads as a boolean holding another JSON
  value (``"add_prefix_space": "yes"``); a BPE merge whose parts or result its vocabulary does not hold ("Token `x`
  out of vocabulary"). Merges are checked where the file is parsed whole (up to 1 MiB, tokenizerfiles.py), the rest
  in a large file's head too;
- tokenizer_config.json / special_tokens_map.json: a special token (bos … mask) that is no string or token object
  (an id such as 256: "has to be either str or AddedToken"); extra (``additional``) special tokens that are no list
  or object; an ``added_tokens_decoder`` key that is no integer, or an entry that is no token object;
- a chat template that does not compile (jinja2's TemplateSyntaxError from ``apply_chat_template``): checked with
  jinja2 where it is installed and a template exists, in an environment with transformers' extensions.

Only what the library refuses is judged: a newer library's component type is refused by this one as well, which the
message says.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from nandoctor.model import CONFIG_KIND, ScanProblem
from nandoctor.wording import first_few

VERSION = "1.0"  # (the only tokenizer.json version the tokenizers library reads)
# the component types of tokenizers 0.23, by tokenizer.json key, and the key of a Sequence's members
COMPONENTS: dict[str, tuple[str, frozenset[str]]] = {
    "normalizer": ("normalizers", frozenset({
        "BertNormalizer", "ByteLevel", "Lowercase", "NFC", "NFD", "NFKC", "NFKD", "Nmt", "Precompiled", "Prepend",
        "Replace", "Sequence", "Strip", "StripAccents"})),
    "pre_tokenizer": ("pretokenizers", frozenset({
        "BertPreTokenizer", "ByteLevel", "CharDelimiterSplit", "Digits", "FixedLength", "Metaspace", "Punctuation",
        "Sequence", "Split", "UnicodeScripts", "Whitespace", "WhitespaceSplit"})),
    "post_processor": ("processors", frozenset({
        "BertProcessing", "ByteLevel", "RobertaProcessing", "Sequence", "TemplateProcessing"})),
    "decoder": ("decoders", frozenset({
        "BPEDecoder", "ByteFallback", "ByteLevel", "CTC", "Fuse", "Metaspace", "Replace", "Sequence", "Strip",
        "WordPiece"})),
}
_BYTE_LEVEL = ("add_prefix_space", "trim_offsets", "use_regex")
# the flags the library reads as booleans (null too is refused for most; only other values are judged here)
FLAGS: dict[str, dict[str, tuple[str, ...]]] = {
    "normalizer": {"BertNormalizer": ("clean_text", "handle_chinese_chars", "strip_accents", "lowercase"),
                   "Strip": ("strip_left", "strip_right")},
    "pre_tokenizer": {"ByteLevel": _BYTE_LEVEL, "Digits": ("individual_digits",), "Metaspace": ("split",),
                      "Split": ("invert",)},
    "post_processor": {"ByteLevel": _BYTE_LEVEL},  # (RobertaProcessing takes "yes" for its flags: not judged)
    "decoder": {"ByteLevel": _BYTE_LEVEL, "CTC": ("cleanup",), "WordPiece": ("cleanup",), "Metaspace": ("split",)},
    "model": {"BPE": ("fuse_unk", "byte_fallback", "ignore_merges")},
}
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
EXTRA_KEYS = ("extra_special_tokens", "additional_special_tokens")
_SHOWN = 3
_TOKENIZER_HINT = (" from the base model or from where the tokenizer was saved (this one was edited, or written by a "
                   "tokenizers library newer than the one that loads it)")


def tokenizer_json(path: Path, data: dict[str, Any], *, merges: bool) -> list[ScanProblem]:
    """What the tokenizers library refuses in tokenizer.json ``data`` (the whole file, or a large one's head:
    its values before the model's vocabulary); ``merges``: data holds the BPE merges and vocabulary."""
    why: list[str] = []
    version = data.get("version", VERSION)
    if version != VERSION:
        why.append(f"its version is {_shown(version)} where the library reads \"{VERSION}\" only")
    for key, (members, types) in COMPONENTS.items():
        why += _component(key, data.get(key), members, types)
    model = data.get("model")
    if isinstance(model, dict):
        why += _flags("model", model)
        if merges and model.get("type") == "BPE":
            why += _merges(model)
    if not why:
        return []
    return [ScanProblem(str(path), f"is refused by the tokenizers library: {first_few(why, _SHOWN)}: "
                        "AutoTokenizer.from_pretrained raises on it, so the model loads without the tokenizer saved "
                        "with it", f"copy {path.name}{_TOKENIZER_HINT}", kind=CONFIG_KIND)]


def _component(key: str, value: Any, members: str, types: frozenset[str]) -> list[str]:
    """Why the tokenizer.json component ``key`` (a Sequence's members walked) is refused."""
    why: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if isinstance(kind, str) and kind not in types:
            why.append(f"its {key} type {_shown(kind)} is none the library has ({', '.join(sorted(types))})")
        if kind == "Sequence" and isinstance(item.get(members), list):
            stack += item[members]
        why += _flags(key, item)
    return why


def _flags(key: str, item: dict[str, Any]) -> list[str]:
    kind = item.get("type")
    names = FLAGS.get(key, {}).get(kind, ()) if isinstance(kind, str) else ()
    return [f"its {key}'s {name} is {_shown(item[name])}, where the library reads true or false"
            for name in names if name in item and item[name] is not None and not isinstance(item[name], bool)]


def _merges(model: dict[str, Any]) -> list[str]:
    """The first BPE merge the library refuses: one whose parts, or the token they make (the second part's
    continuing_subword_prefix dropped), the vocabulary does not hold; a merge that is no pair ("a b" or [a, b])."""
    vocab, merges = model.get("vocab"), model.get("merges")
    if not isinstance(vocab, dict) or not isinstance(merges, list):
        return []
    prefix = model.get("continuing_subword_prefix")
    cut = len(prefix.encode()) if isinstance(prefix, str) else 0
    for number, merge in enumerate(merges):
        pair = merge.split(" ") if isinstance(merge, str) else merge
        if not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            return [f"its merge #{number} ({_shown(merge)}) is no pair of tokens"]
        first, second = pair
        try:
            made = first + second.encode()[cut:].decode()
        except UnicodeDecodeError:
            made = None  # (the library panics there: not said, as not confirmed for every case)
        missing = next((t for t in (first, second, made) if t is not None and t not in vocab), None)
        if missing is not None:
            return [f"its merge #{number} ({first!r}, {second!r}) needs {missing!r}, which its vocabulary does not "
                    "hold (\"out of vocabulary\")"]
    return []


def settings(config_path: Path, config: dict[str, Any], map_path: Path, special_map: dict[str, Any] | None
             ) -> list[ScanProblem]:
    """What transformers refuses among the special tokens of tokenizer_config.json (``config``) and of
    special_tokens_map.json (``special_map``: None where transformers does not read it, which is where
    tokenizer_config.json holds an ``added_tokens_decoder``; its values win over the config's)."""
    found: list[ScanProblem] = []
    for key in SPECIAL_KEYS:
        if special_map is not None and key in special_map:
            if not isinstance(special_map[key], (str, dict, type(None))):
                found.append(_special(map_path, key, special_map[key], "a string or a token object"))
        elif key in config and not (config[key] is None or isinstance(config[key], str) or (
                isinstance(config[key], dict) and config[key].get("__type") == "AddedToken")):
            found.append(_special(config_path, key, config[key],
                                  'a string or a token object marked "__type": "AddedToken"'))
    # (the map's extra tokens where it is read and holds them, else the config's: a review's string in the map read
    # CLEAN, AutoTokenizer raised)
    in_map = special_map is not None and any(k in special_map for k in EXTRA_KEYS)
    source, source_path = (special_map, map_path) if in_map and special_map is not None else (config, config_path)
    extra_key = EXTRA_KEYS[1] if EXTRA_KEYS[1] in source and not source.get(EXTRA_KEYS[0]) else EXTRA_KEYS[0]
    extra = source.get(extra_key)
    if not (extra is None or isinstance(extra, (list, dict))):
        found.append(ScanProblem(str(source_path), f"{extra_key} is {_shown(extra)}: AutoTokenizer.from_pretrained "
                                 "raises TypeError (extra special tokens are a list of tokens, or an object of named "
                                 "ones)", f"write {extra_key} as a list ([{_shown(extra)}]) or remove it",
                                 kind=CONFIG_KIND))
    if "added_tokens_decoder" in config:  # (transformers reads it where the key is there, null too)
        why = _decoder(config["added_tokens_decoder"])
        if why:
            found.append(ScanProblem(
                str(config_path), f"added_tokens_decoder {why}: AutoTokenizer.from_pretrained raises on it (its "
                "keys are token ids, its values token objects)",
                f"copy {config_path.name} from the base model or where the tokenizer was saved", kind=CONFIG_KIND))
    return found


def _decoder(decoder: Any) -> str | None:
    """Why transformers refuses the ``added_tokens_decoder`` value, if it does."""
    if not isinstance(decoder, dict):
        return f"is a JSON {'array' if isinstance(decoder, list) else 'value'}, not an object"
    for key, token in decoder.items():
        try:
            int(key)  # (transformers' own reading: " 7" and "+7" pass, "²" and 5,000 digits do not)
        except ValueError:
            return f"has the key {_shown(key)}, which is no integer"
        if not isinstance(token, dict):  # (a token object's unknown fields are ignored: not judged)
            return f"has {_shown(token)} at key {_shown(key)}, not a token object"
    return None


def _special(path: Path, key: str, value: Any, wanted: str) -> ScanProblem:
    return ScanProblem(str(path), f"{key} is {_shown(value)}: AutoTokenizer.from_pretrained raises TypeError (a "
                       f"special token is {wanted})", f"write {key} as the token's text (\"<|endoftext|>\"), not its "
                       "id or a bare object", kind=CONFIG_KIND)


def chat_templates(templates: list[tuple[Path, str]]) -> list[ScanProblem]:
    """The chat templates (where each was read, its text) that do not compile as apply_chat_template compiles
    them; none where jinja2 is not installed (transformers needs it for them too)."""
    found: list[ScanProblem] = []
    for path, text in templates:
        why = _template_error(text)
        if why is not None:
            found.append(ScanProblem(str(path), f"holds a chat template that does not compile ({why}): "
                                     "apply_chat_template raises TemplateSyntaxError",
                                     "correct the template's syntax (jinja2's message says where), or copy it from "
                                     "the base model", kind=CONFIG_KIND))
    return found


@functools.lru_cache(maxsize=64)  # (a run's checkpoints share their template)
def _template_error(text: str) -> str | None:
    try:
        import jinja2  # (only where a template exists: ~20 ms)
        from jinja2 import ext, nodes, sandbox
    except ImportError:
        return None

    class Generation(ext.Extension):  # transformers' {% generation %} … {% endgeneration %} (AssistantTracker)
        tags = {"generation"}  # noqa: RUF012  (jinja2 reads it from the class)

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_generation"), [], [], body).set_lineno(lineno)

    environment = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                         extensions=[Generation, ext.loopcontrols])
    try:
        environment.compile(text)
    except jinja2.TemplateSyntaxError as exc:
        return f"{exc.message}, line {exc.lineno}"
    return None


def _shown(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)[:40]


__all__ = ["COMPONENTS", "FLAGS", "chat_templates", "settings", "tokenizer_json"]
