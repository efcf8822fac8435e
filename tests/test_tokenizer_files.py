"""The tokenizer saved beside a model, held to the real transformers (checkpoint/tokenizerfiles.py): a token added
without ``resize_token_embeddings`` and a tokenizer file cut short scan BAD CONFIG exactly where AutoTokenizer or a
padded ``generate`` fails; a resized model, a multimodal placeholder and a tokenizer left whole scan CLEAN.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import nandoctor
from nandoctor import verdict
from nandoctor.checkpoint import tokenizerfiles

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
from tests.trainer_checkpoints import tiny_llama  # noqa: E402  (needs torch and transformers)

TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog"]


def _tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A real BPE tokenizer trained here (no hub), 60 tokens, with bos/eos/unk."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(TEXTS * 50, trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "<s>", "</s>"]))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>")


def _oracle(folder: Path) -> str:
    """"ok", or where transformers fails: "tokenizer" (AutoTokenizer raises) or "generate" (a padded batch)."""
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    except Exception:
        return "tokenizer"
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    try:
        with torch.no_grad():
            model.generate(**batch, max_new_tokens=2, pad_token_id=tokenizer.pad_token_id)
    except IndexError:
        return "generate"
    return "ok"


@pytest.fixture(scope="module")
def padded_without_resize(tmp_path_factory) -> Path:
    """The common mistake: a pad token added to the tokenizer, the model's embeddings not resized, both saved."""
    folder = tmp_path_factory.mktemp("tok") / "model"
    tokenizer = _tokenizer()
    model = tiny_llama()
    model.resize_token_embeddings(len(tokenizer))  # (the model trained with the tokenizer as it was)
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_token_added_without_resizing_the_embeddings_is_bad_config(padded_without_resize):
    assert _oracle(padded_without_resize) == "generate"
    report = nandoctor.scan(padded_without_resize)
    assert report.exit_code == 3 and [p.kind for p in report.errors] == ["config"], report.errors
    problem = report.errors[0]
    assert problem.path.endswith("tokenizer.json")
    assert "'[PAD]' (id 60, the pad token)" in problem.message and "vocabulary of 60" in problem.message
    assert "resize_token_embeddings" in problem.hint and "tokenizer.pad_token = tokenizer.eos_token" in problem.hint
    assert verdict.weights_report(report).exit_code == 0  # (the weights are intact: a run keeps them)


def test_resized_embeddings_scan_clean(tmp_path):
    folder = tmp_path / "model"
    tokenizer = _tokenizer()
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    model = tiny_llama()
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert _oracle(folder) == "ok"
    report = nandoctor.scan(folder)
    assert report.exit_code == 0 and not report.errors, report.errors


@pytest.mark.parametrize("full_parse_bytes", [tokenizerfiles.FULL_PARSE_BYTES, 0], ids=["parsed", "ends-only"])
@pytest.mark.parametrize("cut", [0.1, 0.5, 0.97, "inner-brace"])
def test_a_tokenizer_json_cut_short_is_bad_config(padded_without_resize, tmp_path, monkeypatch, cut, full_parse_bytes):
    """Cut anywhere (even right after an inner closing brace), whether the file is parsed whole or, as a large one
    is, read at its two ends."""
    monkeypatch.setattr(tokenizerfiles, "FULL_PARSE_BYTES", full_parse_bytes)
    folder = shutil.copytree(padded_without_resize, tmp_path / "model")
    data = (folder / "tokenizer.json").read_bytes()
    end = data.rstrip().rfind(b"}", 0, len(data.rstrip()) - 1) + 1 if cut == "inner-brace" else int(len(data) * cut)
    (folder / "tokenizer.json").write_bytes(data[:end])
    assert _oracle(folder) == "tokenizer"
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and {p.kind for p in report.errors} == {"config"}, report.errors
    assert any(p.path.endswith("tokenizer.json") and "cannot be read as JSON" in p.message for p in report.errors)


@pytest.mark.parametrize("full_parse_bytes", [tokenizerfiles.FULL_PARSE_BYTES, 0], ids=["parsed", "ends-only"])
def test_a_tokenizer_json_zeroed_in_its_middle_is_bad_config(padded_without_resize, tmp_path, monkeypatch,
                                                            full_parse_bytes):
    """A run of NUL bytes (a page zeroed on disk) in the middle, where reading a large file at its ends alone
    would not look."""
    monkeypatch.setattr(tokenizerfiles, "FULL_PARSE_BYTES", full_parse_bytes)
    folder = shutil.copytree(padded_without_resize, tmp_path / "model")
    data = bytearray((folder / "tokenizer.json").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    (folder / "tokenizer.json").write_bytes(bytes(data))
    assert _oracle(folder) == "tokenizer"
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and {p.kind for p in report.errors} == {"config"}, report.errors
    problem = next(p for p in report.errors if p.path.endswith("tokenizer.json"))
    assert "cannot be read as JSON" in problem.message
    if not full_parse_bytes:
        assert f"NUL byte at offset {middle:,}" in problem.message


def test_a_large_tokenizer_json_is_read_at_its_ends_with_the_same_answer(padded_without_resize, monkeypatch):
    parsed = [p.message for p in nandoctor.scan(padded_without_resize).errors]
    monkeypatch.setattr(tokenizerfiles, "FULL_PARSE_BYTES", 0)
    assert [p.message for p in nandoctor.scan(padded_without_resize).errors] == parsed
    compact = json.dumps(json.loads((padded_without_resize / "tokenizer.json").read_text()))
    assert tokenizerfiles._head_values(compact)[0]["added_tokens"][-1]["content"] == "[PAD]"  # (save(pretty=False))


def test_a_tokenizer_config_cut_short_is_bad_config(padded_without_resize, tmp_path):
    folder = shutil.copytree(padded_without_resize, tmp_path / "model")
    text = (folder / "tokenizer_config.json").read_text()
    (folder / "tokenizer_config.json").write_text(text[: len(text) // 2])
    assert _oracle(folder) == "tokenizer"
    report = nandoctor.scan(folder)
    assert any(p.path.endswith("tokenizer_config.json") and p.kind == "config" for p in report.errors), report.errors


def test_transformers_4_added_tokens_decoder_is_read(padded_without_resize, tmp_path):
    """transformers 4.x wrote the added tokens into tokenizer_config.json (``added_tokens_decoder``, ids as keys)."""
    folder = shutil.copytree(padded_without_resize, tmp_path / "model")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {"0": {"content": "<unk>", "special": True},
                                      "61": {"content": "<|im_start|>", "special": True}}
    config["chat_template"] = "{% for m in messages %}<|im_start|>{{ m.content }}{% endfor %}"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").unlink()
    found, _ = tokenizerfiles.check(folder, json.loads((folder / "config.json").read_text()))
    assert len(found) == 1 and "'<|im_start|>' (id 61)" in found[0].message  # (special, in the chat template below)
    assert found[0].path.endswith("tokenizer_config.json")


def test_placeholders_of_a_multimodal_model_are_not_judged(padded_without_resize):
    """An image token beyond the text vocabulary is replaced before the embedding (Llava and kin): no finding."""
    config = json.loads((padded_without_resize / "config.json").read_text())
    assert tokenizerfiles.check(padded_without_resize, config)[0]
    for multimodal in ({**config, "image_token_index": 60}, {"text_config": config, "vision_config": {}},
                       {**config, "auto_map": {"AutoModelForCausalLM": "modeling.M"}},
                       {**config, "architectures": ["Wav2Vec2ForCTC"]}):  # (a CTC head embeds no token id)
        assert tokenizerfiles.check(padded_without_resize, multimodal) == ([], [])


@pytest.mark.parametrize("full_parse_bytes", [tokenizerfiles.FULL_PARSE_BYTES, 0], ids=["parsed", "bytes-only"])
def test_a_tokenizer_whose_vocabulary_is_larger_than_the_model_is_bad_config(tmp_path, monkeypatch, full_parse_bytes):
    """A real-use trial: a tokenizer of another model (or retrained) beside weights of a smaller vocabulary scanned
    CLEAN; ordinary text fails in the embedding."""
    monkeypatch.setattr(tokenizerfiles, "FULL_PARSE_BYTES", full_parse_bytes)
    folder = tmp_path / "model"
    tokenizer = _tokenizer()
    model = tiny_llama()
    model.resize_token_embeddings(40)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert _oracle(folder) == "generate"
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and [p.kind for p in report.errors] == ["config"], report.errors
    assert "pieces up to id 59 where the model's vocabulary holds 40" in report.errors[0].message


@pytest.mark.parametrize("kind", ["BPE", "WordPiece", "WordLevel", "Unigram"])
def test_the_largest_vocabulary_id_is_found_without_parsing(tmp_path, kind):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    model = {"BPE": models.BPE(unk_token="[UNK]"), "WordPiece": models.WordPiece(unk_token="[UNK]"),
             "WordLevel": models.WordLevel(unk_token="[UNK]"), "Unigram": models.Unigram()}[kind]
    trainer = {"BPE": trainers.BpeTrainer, "WordPiece": trainers.WordPieceTrainer,
               "WordLevel": trainers.WordLevelTrainer, "Unigram": trainers.UnigramTrainer}[kind](
        vocab_size=80, special_tokens=["[UNK]", "merges"])
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(TEXTS * 20 + ["merges merges"], trainer)  # ("merges" a token, as a key is named)
    for pretty in (True, False):
        tokenizer.save(str(tmp_path / "t.json"), pretty=pretty)
        raw = (tmp_path / "t.json").read_bytes()
        largest = max(tokenizer.get_vocab(with_added_tokens=False).values())
        # (WordLevel writes its unk_token after the vocabulary: not found, never a wrong id)
        found = tokenizerfiles._last_vocab_ids(raw)
        assert (max(found) if found else None) == (None if kind == "WordLevel" else largest)


@pytest.mark.parametrize("full_parse_bytes", [tokenizerfiles.FULL_PARSE_BYTES, 0], ids=["parsed", "bytes-only"])
def test_special_tokens_no_input_holds_beyond_the_vocabulary_are_a_note(padded_without_resize, tmp_path, monkeypatch,
                                                                        full_parse_bytes):
    """BART-CNN's vocab_size 50264 against its tokenizer's <mask> 50264, T5's unused sentinels, Llama 3's reserved
    tokens cut off: a review found them BAD CONFIG while a padded generate works. Only text spelling them out
    fails: a note. A pad token beyond the vocabulary stays BAD CONFIG (every padded batch)."""
    monkeypatch.setattr(tokenizerfiles, "FULL_PARSE_BYTES", full_parse_bytes)
    folder = shutil.copytree(padded_without_resize, tmp_path / "model")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = "</s>"  # (the pad token is an id inside the vocabulary now: "[PAD]" 60 is used by nothing)
    tokenizer.save_pretrained(folder)
    assert _oracle(folder) == "ok"
    report = nandoctor.scan(folder)
    assert report.exit_code == 0 and not report.errors, report.errors
    assert any("'[PAD]' (id 60)" in note and "spells one out" in note for note in report.notes), report.notes


def test_a_bart_like_vocabulary_whose_last_id_is_a_special_token_is_clean(tmp_path):
    """RoBERTa's BPE (BART-CNN, the summarization pipeline's default) holds <mask> as the vocabulary's last id,
    which is also an added special token; config.json's vocab_size leaves it out. Generate works."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(TEXTS * 50, trainers.BpeTrainer(vocab_size=60, special_tokens=["<s>", "<pad>", "</s>",
                                                                                           "<unk>"]))
    bpe.add_special_tokens(["<mask>"])  # (appended to the vocabulary: its last id)
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                                     unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    model = tiny_llama()
    model.resize_token_embeddings(len(tokenizer) - 1)  # (vocab_size without <mask>)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert _oracle(folder) == "ok"
    report = nandoctor.scan(folder)
    assert report.exit_code == 0 and not report.errors, report.errors
    assert any("'<mask>'" in note for note in report.notes)


def test_an_odd_digit_key_in_added_tokens_decoder_is_no_crash(padded_without_resize, tmp_path):
    """"²".isdigit() is True and int("²") raises, as int() does for 5,000 digits: crafted keys crashed the scan
    (internal error, no JSON)."""
    folder = shutil.copytree(padded_without_resize, tmp_path / "model")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {"\u00b2": {"content": "x", "special": True}, "9" * 5000: {"content": "y"}}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    report = nandoctor.scan(folder)
    assert report.exit_code in (0, 3) and all(p.kind == "config" for p in report.errors), report.errors


def test_a_tokenizer_file_that_is_a_link_to_nothing_is_bad_config(padded_without_resize, tmp_path):
    """A link farm whose store was removed: AutoTokenizer fails on a tokenizer.json that leads nowhere."""
    folder = shutil.copytree(padded_without_resize, tmp_path / "model")
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.json").symlink_to(tmp_path / "gone" / "tokenizer.json")
    assert _oracle(folder) == "tokenizer"
    report = nandoctor.scan(folder)
    assert any(p.kind == "config" and "broken symlink" in p.message for p in report.errors), report.errors


def test_unigram_pieces_that_spell_brackets_are_counted_once(tmp_path):
    """A piece such as "],[" (source code) must not count as two entries (a review: a false BAD CONFIG)."""
    from tokenizers import Tokenizer, models

    pieces = [("<unk>", 0.0), ("],[", -1.0), ('"', -2.0), ("\\", -3.0), ("vocab", -3.5)] + [
        (f"p{i}", -4.0 - i) for i in range(95)]
    for pretty in (True, False):  # (indented: entries counted by line; one line: by a string-aware pattern)
        Tokenizer(models.Unigram(pieces, unk_id=0)).save(str(tmp_path / "t.json"), pretty=pretty)
        assert tokenizerfiles._last_vocab_ids((tmp_path / "t.json").read_bytes()) == [99]


@pytest.mark.parametrize("full_parse_bytes", [tokenizerfiles.FULL_PARSE_BYTES, 0], ids=["parsed", "bytes-only"])
@pytest.mark.parametrize(("file", "edit"), [
    ("tokenizer.json", lambda d: d["model"].update(type="Foo")),  # (a model type this tokenizers does not know)
    ("tokenizer.json", lambda d: d.pop("model")),
    ("tokenizer.json", lambda d: d.update(model=None)),
    ("tokenizer.json", lambda d: d.update(model=[d["model"]])),
    ("tokenizer_config.json", lambda d: d.update(padding_side="middle")),
], ids=["unknown-type", "no-model", "null-model", "model-in-a-list", "padding-side"])
def test_a_tokenizer_the_library_cannot_build_is_bad_config(tmp_path, monkeypatch, file, edit, full_parse_bytes):
    """An adversarial round: a tokenizer.json that is valid JSON but no tokenizer ("data did not match any variant of
    untagged enum ModelUntagged", "Model missing"), and a padding side of "middle": AutoTokenizer raises, and each
    read CLEAN. The healthy save stays clean. A tokenizer.json too large to parse (Llama 3's, 9 MB) is read as bytes
    (its model's type from its head): the same answer, written as the tokenizers library writes it."""
    import json

    monkeypatch.setattr(tokenizerfiles, "FULL_PARSE_BYTES", full_parse_bytes)
    folder = tmp_path / "model"
    tokenizer = _tokenizer()
    model = tiny_llama()
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert nandoctor.scan(folder).exit_code == 0
    data = json.loads((folder / file).read_text())
    edit(data)
    (folder / file).write_text(json.dumps(data, indent=2, ensure_ascii=False))  # (as the tokenizers library does)
    assert _oracle(folder) == "tokenizer"
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and [e.kind for e in report.errors] == ["config"], report.errors
    assert report.errors[0].path == str(folder / file)
