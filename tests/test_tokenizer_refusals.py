"""Tokenizer files that are valid JSON but that AutoTokenizer (or apply_chat_template) refuses, held to the real
transformers and tokenizers (checkpoint/tokenizerrefusals.py): an adversarial round found each scanned CLEAN. Each
edit of a fresh save is BAD CONFIG naming its file exactly where the oracle raises; fresh saves of real tokenizers
(BPE, byte-level GPT-2, WordPiece BERT, with a chat template using transformers' tags) stay CLEAN.
"""

from __future__ import annotations

import inspect
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import nandoctor
from nandoctor.checkpoint import tokenizerfiles, tokenizerrefusals

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("jinja2")
from tests.trainer_checkpoints import tiny_llama  # noqa: E402  (needs torch and transformers)

TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog"]
TEMPLATE = ("{% for m in messages %}{% if loop.index > 9 %}{% break %}{% endif %}{% if m['role'] == 'assistant' %}"
            "{% generation %}{{ m['content'] }}{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}{% endfor %}")


def _oracle(folder: Path) -> str:
    """"ok", or "tokenizer" where AutoTokenizer.from_pretrained or apply_chat_template raises."""
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        if tokenizer.chat_template:
            tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                                          return_assistant_tokens_mask=True, return_dict=True)
    except Exception:
        return "tokenizer"
    return "ok"


def _bpe() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(TEXTS * 50, trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "<s>", "</s>"]))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>", chat_template=TEMPLATE)


def _bert(folder: Path) -> Any:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted({w for t in TEXTS for w in t.split()})]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    return transformers.BertTokenizer(vocab_file=str(folder / "vocab.txt"))


def _gpt2(folder: Path) -> Any:
    from tokenizers import ByteLevelBPETokenizer

    trained = ByteLevelBPETokenizer()
    trained.train_from_iterator(TEXTS * 50, vocab_size=300, special_tokens=["<|endoftext|>"])
    folder.mkdir(parents=True, exist_ok=True)
    trained.save_model(str(folder))
    return transformers.GPT2Tokenizer(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"))


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tok") / "model"
    tokenizer = _bpe()
    model = tiny_llama()
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _json(file: str, edit: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        path = folder / file
        data = json.loads(path.read_text()) if path.exists() else {}
        edit(data)
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    return apply


def _template(folder: Path) -> None:
    (folder / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }{% endfor %}")


REFUSED = {  # (file the problem names, the edit)
    "merge-oov": ("tokenizer.json", _json("tokenizer.json", lambda d: d["model"]["merges"].append(["zz9", "qq8"]))),
    "merge-result-oov": ("tokenizer.json", _json("tokenizer.json", lambda d: d["model"]["merges"].append(["e", "h"]))),
    "merge-not-a-pair": ("tokenizer.json", _json("tokenizer.json", lambda d: d["model"]["merges"].append("a  b"))),
    "normalizer-type": ("tokenizer.json", _json("tokenizer.json", lambda d: d.update(normalizer={"type": "Nope"}))),
    "sequence-member-type": ("tokenizer.json", _json("tokenizer.json", lambda d: d.update(
        pre_tokenizer={"type": "Sequence", "pretokenizers": [{"type": "Whitespace"}, {"type": "Nope"}]}))),
    "add-prefix-space-yes": ("tokenizer.json", _json("tokenizer.json", lambda d: d.update(
        pre_tokenizer={"type": "ByteLevel", "add_prefix_space": "yes", "trim_offsets": True, "use_regex": True}))),
    "byte-fallback-1": ("tokenizer.json", _json("tokenizer.json", lambda d: d["model"].update(byte_fallback=1))),
    "version": ("tokenizer.json", _json("tokenizer.json", lambda d: d.update(version="9.9"))),
    "eos-int": ("tokenizer_config.json", _json("tokenizer_config.json", lambda d: d.update(eos_token=2))),
    "bos-dict-without-type": ("tokenizer_config.json", _json("tokenizer_config.json", lambda d: d.update(
        bos_token={"content": "<s>"}))),
    "mask-list": ("tokenizer_config.json", _json("tokenizer_config.json", lambda d: d.update(mask_token=["<s>"]))),
    "additional-string": ("tokenizer_config.json", _json("tokenizer_config.json", lambda d: d.update(
        additional_special_tokens="<s>"))),
    "decoder-key": ("tokenizer_config.json", _json("tokenizer_config.json", lambda d: d.update(
        added_tokens_decoder={"abc": {"content": "<x>", "special": True}}))),
    "decoder-value": ("tokenizer_config.json", _json("tokenizer_config.json", lambda d: d.update(
        added_tokens_decoder={"0": "<unk>"}))),
    "map-eos-int": ("special_tokens_map.json", _json("special_tokens_map.json", lambda d: d.update(eos_token=2))),
    # (the map is read where tokenizer_config.json holds no added_tokens_decoder: a review's string there read CLEAN)
    "map-additional-string": ("special_tokens_map.json", lambda f: (
        _json("tokenizer_config.json", lambda d: d.pop("added_tokens_decoder", None))(f),
        _json("special_tokens_map.json", lambda d: d.update(additional_special_tokens="x"))(f))),
    "template-syntax": ("tokenizer_config.json", lambda f: (f / "chat_template.jinja").unlink() or _json(
        "tokenizer_config.json", lambda d: d.update(chat_template="{% for m in messages %}{{ m['content'] }{% endfor %}"))(f)),
    "template-file-syntax": ("chat_template.jinja", _template),
}


@pytest.mark.parametrize("full_parse_bytes", [tokenizerfiles.FULL_PARSE_BYTES, 0], ids=["parsed", "bytes-only"])
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_tokenizer_file_autotokenizer_refuses_is_bad_config(saved, tmp_path, monkeypatch, case, full_parse_bytes):
    monkeypatch.setattr(tokenizerfiles, "FULL_PARSE_BYTES", full_parse_bytes)
    file, edit = REFUSED[case]
    if full_parse_bytes == 0 and case.startswith("merge"):
        pytest.skip("merges are checked where tokenizer.json is parsed whole (up to 1 MiB)")
    folder = shutil.copytree(saved, tmp_path / "model")
    edit(folder)
    assert _oracle(folder) == "tokenizer"
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and [p.kind for p in report.errors] == ["config"], report.errors
    assert report.errors[0].path == str(folder / file)


@pytest.mark.parametrize("full_parse_bytes", [tokenizerfiles.FULL_PARSE_BYTES, 0], ids=["parsed", "bytes-only"])
@pytest.mark.parametrize("kind", ["bpe", "bert", "gpt2", "bpe-legacy-files", "bpe-accepted-values"])
def test_fresh_saves_of_real_tokenizers_are_clean(tmp_path, monkeypatch, kind, full_parse_bytes):
    """What transformers accepts stays CLEAN: its own saves, transformers 4's special_tokens_map.json with token
    objects, ids as " 7" keys, an extra-tokens object, additional_special_tokens null, version "1.0", null flags
    where the library takes them."""
    monkeypatch.setattr(tokenizerfiles, "FULL_PARSE_BYTES", full_parse_bytes)
    folder = tmp_path / "model"
    tokenizer = {"bert": _bert, "gpt2": _gpt2}.get(kind, lambda _: _bpe())(tmp_path / "files")
    model = tiny_llama()
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if kind == "bpe-legacy-files":
        (folder / "special_tokens_map.json").write_text(json.dumps({
            "bos_token": {"content": "<s>", "lstrip": False, "normalized": False, "rstrip": False,
                          "single_word": False}, "eos_token": "</s>", "additional_special_tokens": ["<s>"]}))
    if kind == "bpe-accepted-values":
        _json("tokenizer_config.json", lambda d: d.update(
            added_tokens_decoder={" 1": {"content": "<s>", "special": True, "__type": "AddedToken"}},
            additional_special_tokens=None,
            extra_special_tokens={"image_token": "<s>"}, pad_token=None,
            mask_token={"__type": "AddedToken", "content": "</s>", "special": True}))(folder)
        _json("tokenizer.json", lambda d: d.update(version="1.0", normalizer={
            "type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True, "strip_accents": None,
            "lowercase": False}))(folder)
    assert _oracle(folder) == "ok"
    report = nandoctor.scan(folder)
    assert report.exit_code != 3 and not report.errors, report.errors  # (a resized embedding's rows may be outliers)


def _library_types(module: Any, base: str) -> set[str]:
    return {name for name, cls in inspect.getmembers(module, inspect.isclass)
            if name != base and issubclass(cls, getattr(module, base))}


def test_the_component_types_are_the_installed_librarys():
    """COMPONENTS holds the types the tokenizers library builds (a class each, named as its ``type``)."""
    from tokenizers import decoders, normalizers, pre_tokenizers, processors

    library = {"normalizer": _library_types(normalizers, "Normalizer"),
               "pre_tokenizer": _library_types(pre_tokenizers, "PreTokenizer"),
               "post_processor": _library_types(processors, "PostProcessor"),
               "decoder": _library_types(decoders, "Decoder")}
    assert {key: set(types) for key, (_, types) in tokenizerrefusals.COMPONENTS.items()} == library


@pytest.mark.parametrize(("key", "kind", "flag"), [
    (key, kind, flag) for key, kinds in tokenizerrefusals.FLAGS.items() for kind, flags in kinds.items()
    for flag in flags])
def test_each_flag_is_one_the_library_refuses_as_a_string(key, kind, flag):
    from tokenizers import Tokenizer, models

    data = json.loads(Tokenizer(models.BPE(vocab={"a": 0}, merges=[])).to_str())
    extra = {"Split": {"pattern": {"String": " "}, "behavior": "Isolated"},
             "RobertaProcessing": {"sep": ["</s>", 1], "cls": ["<s>", 0]},
             "CTC": {"pad_token": "<pad>", "word_delimiter_token": "|"}, "WordPiece": {"prefix": "##"}}
    if key == "model":
        data["model"][flag] = "yes"
    else:
        data[key] = {"type": kind, **extra.get(kind, {}), flag: "yes"}
    with pytest.raises(Exception, match="expected a boolean|did not match"):
        Tokenizer.from_str(json.dumps(data))
    assert tokenizerrefusals.tokenizer_json(Path("tokenizer.json"), data, merges=True)
