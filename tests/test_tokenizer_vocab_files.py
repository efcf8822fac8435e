"""Tokenizers saved without tokenizer.json, held to the real transformers (checkpoint/tokenizerfiles.py): GPT-2's
vocab.json + merges.txt and BERT's vocab.txt, from which AutoTokenizer builds the tokenizer. Ids beyond config.json's
vocab_size scan BAD CONFIG exactly where the forward pass with the tokenizer's ids raises IndexError (an adversarial
round found both CLEAN); vocabularies that fit, a RoBERTa-like ``<mask>`` at the last id and a tokenizer.json beside
them (which transformers reads first) scan CLEAN.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import nandoctor

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXT = "hello world"


def _byte_symbols() -> list[str]:
    """GPT-2's 256 byte symbols, in its order."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def _gpt2(folder: Path, vocab_size: int, *, filler: int = 60, mask: bool = False) -> Path:
    """A tiny GPT-2 and a byte-level BPE vocabulary written as vocab.json + merges.txt: 256 bytes, ``filler``
    tokens, then the merges of "hello world" (the last 9 ids), and ``<mask>`` after them where ``mask``."""
    config = transformers.GPT2Config(vocab_size=vocab_size, n_positions=32, n_embd=16, n_layer=1, n_head=2,
                                     bos_token_id=256, eos_token_id=256)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    vocab = {s: i for i, s in enumerate(_byte_symbols())}
    vocab.update({f"<extra_{k}>": 256 + k for k in range(filler)})
    pairs = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "w"), ("o", "r"), ("Ġw", "or"), ("l", "d"),
             ("Ġwor", "ld")]
    for a, b in pairs:
        vocab[a + b] = len(vocab)
    settings = {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<extra_0>", "eos_token": "<extra_0>"}
    if mask:
        vocab["<mask>"] = len(vocab)
        settings["mask_token"] = "<mask>"
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=2, sort_keys=True, ensure_ascii=False))  # (its save)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in pairs) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    return folder


def _bert(folder: Path, vocab_size: int, *, unused: int = 150, ending: str = "\n") -> Path:
    """A tiny BERT and a vocab.txt of the five specials, ``unused`` fillers, then "hello", "world"."""
    config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    transformers.BertForMaskedLM(config).save_pretrained(folder)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"[unused{i}]" for i in range(unused)), "hello", "world"]
    (folder / "vocab.txt").write_text("\n".join(words) + ending)
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    return folder


def _forward(folder: Path) -> str:
    """"ok", or "IndexError" where the model fails on the ids its tokenizer gives for ordinary text."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder)
    try:
        with torch.no_grad():
            model(**tokenizer(TEXT, return_tensors="pt"))
    except IndexError:
        return "IndexError"
    return "ok"


@pytest.mark.parametrize(("make", "file", "largest", "size"), [
    (_gpt2, "vocab.json", 324, 300), (_bert, "vocab.txt", 156, 100)], ids=["gpt2-vocab-json", "bert-vocab-txt"])
def test_slow_vocabulary_beyond_the_model_is_bad_config(tmp_path, make, file, largest, size):
    folder = make(tmp_path / "model", size)
    assert not (folder / "tokenizer.json").exists()
    assert _forward(folder) == "IndexError"
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and [p.kind for p in report.errors] == ["config"], report.errors
    assert report.errors[0].path == str(folder / file)
    assert f"pieces up to id {largest} where the model's vocabulary holds {size}" in report.errors[0].message


@pytest.mark.parametrize(("make", "size", "options"), [
    (_gpt2, 325, {}), (_bert, 157, {}), (_bert, 157, {"ending": "\n\n"}), (_bert, 157, {"ending": "\r\n"}),
    (_gpt2, 325, {"mask": True})], ids=["gpt2", "bert", "bert-blank-last-line", "bert-crlf", "roberta-like-mask"])
def test_slow_vocabulary_that_fits_is_clean(tmp_path, make, size, options):
    """A blank line ending vocab.txt is a token no text is split into; a ``<mask>`` named mask_token at id
    vocab_size (BART-CNN) fails only in text that spells it out: a note."""
    folder = make(tmp_path / "model", size, **options)
    assert _forward(folder) == "ok"
    report = nandoctor.scan(folder)
    assert report.exit_code == 0 and not report.errors, report.errors
    if options.get("mask"):
        assert any("'<mask>' (id 325)" in note for note in report.notes), report.notes


def test_tokenizer_json_is_read_before_the_slow_files(tmp_path):
    """transformers builds from tokenizer.json where it is there: a larger vocab.json beside it is not used."""
    folder = _gpt2(tmp_path / "model", 325)
    transformers.AutoTokenizer.from_pretrained(folder).save_pretrained(tmp_path / "fast")
    big = _gpt2(tmp_path / "big", 325, filler=100)
    (folder / "vocab.json").write_bytes((big / "vocab.json").read_bytes())
    (folder / "tokenizer.json").write_bytes((tmp_path / "fast" / "tokenizer.json").read_bytes())
    assert _forward(folder) == "ok"
    report = nandoctor.scan(folder)
    assert report.exit_code == 0 and not report.errors, report.errors
    (folder / "tokenizer.json").unlink()
    assert _forward(folder) == "IndexError"
    assert nandoctor.scan(folder).exit_code == 3
