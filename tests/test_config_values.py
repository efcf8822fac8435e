"""Finite config values that break a model held to the real transformers (checkpoint/configvalues.py): each folder
scans BAD CONFIG (or NOT LOADABLE) exactly when ``from_pretrained`` raises, the logits are not finite, or a plain
``generate()`` (generation_config.json as saved) raises; the values transformers tolerates scan CLEAN and generate.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import nandoctor

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from tests.trainer_checkpoints import VOCAB, tiny_llama  # noqa: E402  (needs torch and transformers)


def _oracle(folder: Path, auto_class=None) -> str:
    """"ok", or how transformers fails on ``folder``: "load", "nan", "zero" (every logit 0, whatever the prompt) or
    "generate"."""
    auto_class = auto_class or transformers.AutoModelForCausalLM
    try:
        model = auto_class.from_pretrained(folder)
    except Exception:
        return "load"
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        try:
            if auto_class is transformers.AutoModelForCausalLM:
                logits = model(ids).logits
                if not torch.isfinite(logits).all():
                    return "nan"
                if not logits.any():
                    return "zero"
            torch.manual_seed(0)
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3)  # generation_config as saved
        except Exception:
            return "generate"  # (a forward pass that raises: generate raises the same)
    return "ok"


def _edit(folder: Path, name: str, **values) -> None:
    path = folder / name
    data = json.loads(path.read_text())
    data.update(values)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "model"
    tiny_llama().save_pretrained(folder)
    return folder


# (generation_config.json values, what transformers does: "ok" or "generate"/"load")
GENERATION = [
    ({"temperature": 0.0, "do_sample": True}, "generate"),
    ({"temperature": -1.0, "do_sample": True}, "generate"),
    ({"top_k": -1, "do_sample": True}, "generate"),
    ({"min_p": 2.0, "do_sample": True}, "generate"),
    ({"min_p": -0.5, "do_sample": True}, "generate"),
    ({"repetition_penalty": 0.0}, "generate"),
    ({"repetition_penalty": -1.0, "do_sample": True}, "generate"),
    ({"encoder_repetition_penalty": 0.0}, "generate"),
    ({"num_beams": 0}, "generate"),
    ({"bad_words_ids": [[3], [VOCAB + 5]]}, "generate"),
    ({"max_new_tokens": 0}, "load"),
    ({"no_repeat_ngram_size": 1.5}, "generate"),  # (a second adversarial round's, each CLEAN before)
    ({"top_k": True, "do_sample": True}, "generate"),
    ({"repetition_penalty": 1e-45, "do_sample": True}, "generate"),
    ({"eos_token_id": []}, "ok"),  # (generate with max_new_tokens does not index it)
    ({"exponential_decay_length_penalty": [1]}, "generate"),
    ({"bad_words_ids": [[1.5]]}, "generate"),
    ({"no_repeat_ngram_size": 2}, "ok"),
    ({"exponential_decay_length_penalty": [2, 1.01]}, "ok"),
    ({"temperature": 2, "do_sample": True}, "generate"),  # an integer where a float is checked for
    ({"temperature": 1e-40, "do_sample": True}, "generate"),  # (float32 logits / 1e-40 overflow: "probability tensor …")
    ({"repetition_penalty": 2}, "generate"),
    ({"top_k": 2.5, "do_sample": True}, "generate"),
    ({"top_p": -0.5, "do_sample": True}, "generate"),
    ({"typical_p": 0.0, "do_sample": True}, "generate"),
    ({"penalty_alpha": 0.6, "top_k": 4}, "generate"),  # contrastive search: on the Hub in transformers 5
    ({"forced_eos_token_id": VOCAB + 3}, "generate"),
    ({"forced_eos_token_id": []}, "generate"),  # (an adversarial round: its processor refuses a list of no id)
    ({"forced_eos_token_id": [[]]}, "generate"),
    ({"bos_token_id": []}, "ok"),
    ({"num_beam_groups": 2, "num_beams": 2}, "generate"),  # group beam search: on the Hub in transformers 5
    ({"sequence_bias": [[[VOCAB + 3], 2.0]]}, "generate"),
    ({"temperature": "0", "do_sample": True}, "generate"),  # (a string where a number belongs)
    ({"top_k": "50", "do_sample": True}, "generate"),
    ({"do_sample": "true", "temperature": 0.0}, "generate"),  # (generate asks `if do_sample`)
    ({"num_return_sequences": 2}, "load"),
    ({"num_return_sequences": 3, "num_beams": 2}, "load"),
    ({"early_stopping": "bogus", "num_beams": 2}, "load"),
    ({"min_length": 5.0}, "generate"),  # (an integer itself: "has to be a non-negative integer", an adversarial round)
    ({"min_new_tokens": 2.0}, "generate"),
    # tolerated: no finding
    ({"temperature": 0.0, "do_sample": False}, "ok"),
    ({"temperature": 1e-30, "do_sample": True}, "ok"),  # (tiny, but the logits / it stay finite: argmax sampling)
    ({"temperature": 1e-40, "do_sample": False}, "ok"),
    ({"temperature": 0.0}, "ok"),
    ({"top_k": -1}, "ok"),
    ({"top_k": 0, "do_sample": True}, "ok"),
    ({"top_p": 1.5, "do_sample": True}, "ok"),
    ({"min_p": 0.05, "do_sample": True}, "ok"),
    ({"repetition_penalty": 1.2, "temperature": 0.7, "top_k": 20, "do_sample": True}, "ok"),
    ({"eos_token_id": VOCAB + 5, "pad_token_id": VOCAB + 6}, "ok"),
    ({"bad_words_ids": [[3], [VOCAB - 1]]}, "ok"),
    ({"temperature": 1, "repetition_penalty": 1, "do_sample": True}, "ok"),  # (1: no processor at all)
    ({"top_k": 50.0}, "ok"),
    ({"top_p": -0.5}, "ok"),
    ({"penalty_alpha": 0.6, "top_k": 4, "do_sample": True}, "ok"),
    ({"num_return_sequences": 2, "do_sample": True}, "ok"),
    ({"num_return_sequences": 2, "num_beams": 2}, "ok"),
    ({"early_stopping": "never", "num_beams": 2}, "ok"),
    ({"num_beam_groups": 1, "num_beams": 2}, "ok"),
    ({"sequence_bias": [[[3], 2.0]]}, "ok"),
    # an adversarial round (each read CLEAN): a value of another JSON type than transformers compares or makes a
    # tensor of (the type table), where it does
    ({"max_new_tokens": "5"}, "load"),
    ({"max_new_tokens": [5]}, "load"),
    ({"num_return_sequences": "2"}, "load"),
    ({"num_return_sequences": 2.0}, "load"),
    ({"num_return_sequences": 2.0, "do_sample": True}, "generate"),
    ({"pad_token_id": "x"}, "load"),
    ({"pad_token_id": [0, 1]}, "load"),
    ({"eos_token_id": "x"}, "generate"),
    ({"eos_token_id": [2, "x"]}, "generate"),
    ({"bos_token_id": "x"}, "generate"),
    ({"forced_eos_token_id": "x"}, "generate"),
    ({"decoder_start_token_id": "x"}, "generate"),
    ({"top_k": "5"}, "generate"),  # (get_generation_mode asks `top_k > 1` without beams, sampling or not)
    ({"top_k": [5], "do_sample": True}, "generate"),
    ({"epsilon_cutoff": "0.1", "do_sample": True}, "generate"),
    ({"top_p": "0.9", "do_sample": True}, "generate"),
    ({"no_repeat_ngram_size": "2"}, "generate"),
    ({"encoder_no_repeat_ngram_size": "2"}, "generate"),
    ({"min_length": "3"}, "generate"),  # (with an eos token, as config.json's is)
    ({"min_new_tokens": "2"}, "generate"),
    ({"repetition_penalty": [1.2]}, "generate"),
    ({"max_time": "x"}, "generate"),
    ({"guidance_scale": "x"}, "generate"),
    ({"length_penalty": "x", "num_beams": 2}, "generate"),
    ({"exponential_decay_length_penalty": "x"}, "generate"),
    ({"exponential_decay_length_penalty": 5}, "generate"),
    ({"prefill_chunk_size": "4"}, "generate"),
    # values transformers refuses (GenerationConfig.validate as from_pretrained loads, or generate's processors)
    ({"cache_implementation": "mamba"}, "load"),
    ({"cache_implementation": "foo"}, "load"),
    ({"compile_config": {"fullgraph": True}}, "load"),
    ({"compile_config": {}}, "load"),
    ({"watermarking_config": {"bias": 2.0, "seeding_scheme": "nope"}}, "load"),
    ({"watermarking_config": {"greenlist_ratio": 2.0}}, "load"),
    ({"watermarking_config": {"context_width": 0}}, "load"),
    ({"watermarking_config": {"foo": 1}}, "load"),
    ({"watermarking_config": "x"}, "load"),
    ({"watermarking_config": {"ngram_len": 5, "keys": [1], "sampling_table_size": 2**25}}, "load"),
    ({"suppress_tokens": [[1]]}, "load"),
    ({"suppress_tokens": 5}, "load"),
    ({"suppress_tokens": [2], "forced_eos_token_id": 2}, "load"),
    ({"early_stopping": [1]}, "load"),
    ({"num_beams": -1}, "generate"),
    ({"num_beams": 2.5}, "generate"),
    ({"num_beams": 2.0}, "generate"),
    ({"prefill_chunk_size": 0}, "generate"),
    ({"prefill_chunk_size": -1}, "generate"),
    ({"prompt_lookup_num_tokens": 0}, "generate"),
    ({"low_memory": True, "num_beams": 2}, "generate"),
    ({"bad_words_ids": [5, 6]}, "generate"),
    ({"bad_words_ids": []}, "generate"),
    ({"sequence_bias": {"5": 1.0}}, "generate"),
    ({"sequence_bias": [[[3], 2]]}, "generate"),  # (the bias checked for a float)
    ({"suppress_tokens": list(range(VOCAB)), "do_sample": True}, "generate"),
    ({"begin_suppress_tokens": list(range(VOCAB)), "do_sample": True}, "generate"),
    ({"suppress_tokens": list(range(0, VOCAB, 2)), "begin_suppress_tokens": list(range(1, VOCAB, 2)),
      "do_sample": True}, "generate"),
    # decoding modes transformers 5 moved to the Hub, beside contrastive and group beam search
    ({"dola_layers": "low"}, "generate"),
    ({"dola_layers": "high", "do_sample": True}, "generate"),
    ({"constraints": [[5]]}, "generate"),
    ({"force_words_ids": [[5]], "num_beams": 2}, "generate"),
    # a third adversarial round's (each CLEAN): special token ids torch.tensor cannot build, an eos list of no id with no
    # pad token to stand in for it, top_h outside (0, 1]
    ({"eos_token_id": [], "pad_token_id": None}, "generate"),
    ({"eos_token_id": [[]], "pad_token_id": None}, "generate"),
    ({"eos_token_id": [2, None]}, "generate"),
    ({"eos_token_id": [[2], [3, 4]]}, "generate"),
    ({"bos_token_id": [[1], [2, 3]]}, "generate"),
    ({"decoder_start_token_id": [[1], [2, 3]]}, "generate"),
    ({"top_h": 0, "do_sample": True}, "generate"),
    ({"top_h": 1.5, "do_sample": True}, "generate"),
    ({"eos_token_id": [[2], [3]]}, "ok"),
    ({"eos_token_id": [2, True]}, "ok"),
    ({"top_h": 0}, "ok"),
    ({"top_h": 1.0, "do_sample": True}, "ok"),
    # tolerated: no finding
    ({"top_k": "5", "num_beams": 2}, "ok"),  # (read only when sampling, or without beams)
    ({"max_length": "20"}, "ok"),  # (generate(max_new_tokens=…) replaces it)
    ({"num_beams": 1.0}, "ok"),
    ({"num_return_sequences": 0}, "ok"),
    ({"eos_token_id": 2.5}, "ok"),
    ({"eos_token_id": [[2]]}, "ok"),
    ({"bos_token_id": [1, 2]}, "ok"),
    ({"pad_token_id": 2.5}, "ok"),
    ({"max_new_tokens": 2.5}, "ok"),
    ({"forced_bos_token_id": "x"}, "ok"),  # (a decoder-only model's prompt is past the first position)
    ({"exponential_decay_length_penalty": [5, 1.5]}, "ok"),
    ({"begin_suppress_tokens": [[1]]}, "ok"),
    ({"cache_implementation": "static"}, "ok"),
    ({"cache_implementation": "hybrid"}, "ok"),
    ({"cache_implementation": "paged"}, "ok"),
    ({"compile_config": None, "cache_implementation": None}, "ok"),
    ({"watermarking_config": {"bias": 2.0, "greenlist_ratio": 0.25}}, "ok"),
    ({"suppress_tokens": [2], "forced_eos_token_id": [2, 3]}, "ok"),
    ({"suppress_tokens": list(range(VOCAB))}, "ok"),  # (greedy: argmax of all -inf is token 0)
    ({"suppress_tokens": list(range(VOCAB)), "num_beams": 2}, "ok"),
    ({"suppress_tokens": list(range(VOCAB - 1)), "do_sample": True}, "ok"),
    ({"bad_words_ids": [[]]}, "ok"),
    ({"dola_layers": "low", "num_beams": 2}, "ok"),  # (DoLa extends greedy and sampling only)
    ({"dola_layers": None, "constraints": None, "force_words_ids": None, "low_memory": True}, "ok"),
    ({"low_memory": False, "num_beams": 2}, "ok"),
    ({"prompt_lookup_num_tokens": 0, "num_beams": 2}, "ok"),
    ({"prompt_lookup_num_tokens": 3, "max_matching_ngram_size": 0}, "ok"),
    ({"prefill_chunk_size": 100}, "ok"),
    ({"assistant_early_exit": 0}, "ok"),
    ({"do_sample": "yes"}, "ok"),
]


@pytest.mark.parametrize("values, expected", GENERATION, ids=[json.dumps(v) for v, _ in GENERATION])
def test_generation_config_values_are_judged_as_generate_uses_them(saved, tmp_path, values, expected):
    folder = shutil.copytree(saved, tmp_path / "model")
    _edit(folder, "generation_config.json", **values)
    assert _oracle(folder) == expected
    report = nandoctor.scan(folder)
    kinds = {p.kind for p in report.errors}
    if expected == "ok":
        assert report.exit_code == 0 and not report.errors, report.errors
        return
    assert report.exit_code == 3
    assert kinds == {"config"}, report.errors  # (from_pretrained or generate raises: the weights are intact)
    message = " ".join(p.message for p in report.errors)
    assert "generation_config.json" in " ".join(p.path for p in report.errors)
    assert next(iter(values)) in message, message  # (the first key is the one at fault)


@pytest.mark.parametrize(("values", "raises"), [({"max_length": 0}, True), ({"max_length": 1}, True),
                                               ({"max_length": 0, "max_new_tokens": 4}, False),
                                               ({"max_length": 2}, False)])  # (2: a one-token prompt generates)
def test_a_max_length_shorter_than_any_prompt_is_bad_config(saved, tmp_path, values, raises):
    """A third adversarial round: ``max_length`` 0 or 1 read CLEAN, and generate() given no length raises for every
    prompt ("Input length of input_ids is 4, but `max_length` is set to 0"). With max_new_tokens saved beside it, or at
    a length some prompt fits in, it is no finding."""
    folder = shutil.copytree(saved, tmp_path / "model")
    _edit(folder, "generation_config.json", **values)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    try:  # the oracle: generate as a quick test calls it, no length given
        model.generate(torch.tensor([[5]]), attention_mask=torch.ones(1, 1, dtype=torch.long))
        failed = False
    except ValueError as exc:
        failed = "max_length" in str(exc)
    assert failed == raises
    report = nandoctor.scan(folder)
    assert report.exit_code == (3 if raises else 0), report.errors
    if raises:
        assert [p.kind for p in report.errors] == ["config"] and "max_length is" in report.errors[0].message


# (token ids in config.json size the model too, the pad token's embedding row: judged as the model's there)
IN_CONFIG = [(v, e) for v, e in GENERATION if not {"pad_token_id", "eos_token_id", "bos_token_id"} & set(v)]


@pytest.mark.parametrize("values, expected", IN_CONFIG, ids=[json.dumps(v) for v, _ in IN_CONFIG])
def test_generation_values_in_config_json_count_where_no_generation_config_is_saved(saved, tmp_path, values, expected):
    """An adversarial round: without generation_config.json, from_pretrained builds the model's generation config from
    config.json's keys, and do_sample true with temperature 0 there (or a repetition_penalty of 0) read CLEAN while
    generate raised. Judged there as generation_config.json's values are."""
    folder = shutil.copytree(saved, tmp_path / "model")
    (folder / "generation_config.json").unlink()
    _edit(folder, "config.json", **values)
    assert _oracle(folder) == expected
    report = nandoctor.scan(folder)
    if expected == "ok":
        assert report.exit_code == 0 and not report.errors, report.errors
        return
    assert report.exit_code == 3 and {p.kind for p in report.errors} == {"config"}, report.errors
    assert all(p.path.endswith("config.json") for p in report.errors)
    assert next(iter(values)) in " ".join(p.message for p in report.errors)


def test_a_processors_nan_mean_or_zero_std_is_bad_config(saved, tmp_path):
    """An adversarial round: an audio classifier whose preprocessor_config.json held a NaN mean, or a std of 0, gave
    logits [nan, nan, nan] (AutoFeatureExtractor normalizes every input with them) and scanned CLEAN."""
    folder = shutil.copytree(saved, tmp_path / "model")
    processor = {"feature_extractor_type": "ASTFeatureExtractor", "do_normalize": True, "mean": -4.27, "std": 4.57}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    assert nandoctor.scan(folder).exit_code == 0
    for bad, said in (({"mean": float("nan")}, "mean is NaN"), ({"std": 0.0}, "std holds 0"), ({"std": 1e-40}, "std holds 0"),
                      ({"image_std": [0.5, 0.0, 0.5]}, "image_std holds 0")):
        (folder / "preprocessor_config.json").write_text(json.dumps({**processor, **bad}))
        report = nandoctor.scan(folder)
        assert report.exit_code == 3 and report.errors[0].kind == "config" and said in report.errors[0].message
    (folder / "preprocessor_config.json").write_text(json.dumps({**processor, "std": 0.0, "do_normalize": False}))
    assert nandoctor.scan(folder).exit_code == 0  # (not normalized: the std is never used)


def test_a_pad_token_outside_the_vocabulary_breaks_batched_generation(saved, tmp_path):
    """An added [PAD] (id = vocab_size) without resize_token_embeddings, in generation_config.json: generate() of one
    prompt works, a batch raises IndexError once a sequence ends before the others (a trial: CLEAN). With an
    eos_token_id outside the vocabulary nothing ends early: tolerated (the GENERATION table's case)."""
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 5, 7], [1, 9, 11]])
    model = AutoModelForCausalLM.from_pretrained(saved)
    first = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False)[:, 3].tolist()
    assert first[0] != first[1]
    folder = shutil.copytree(saved, tmp_path / "model")
    _edit(folder, "generation_config.json", eos_token_id=first[0], pad_token_id=VOCAB)
    model = AutoModelForCausalLM.from_pretrained(folder)
    with pytest.raises(IndexError):  # the oracle
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and {p.kind for p in report.errors} == {"config"}
    assert f"pad_token_id is {VOCAB}, outside the vocabulary" in report.errors[0].message


# (config.json values, what transformers does)
MODEL = [
    ({"return_dict": False}, "generate"),  # (an adversarial round: every forward raises AttributeError)
    ({"rms_norm_eps": -10.0}, "nan"),
    ({"rms_norm_eps": -1e-3}, "nan"),  # (below the mean square of an embedding: NaN at the first norm)
    # (-1e-6 and 0 change nothing here but where an embedding row is all zeros, as this model's pad row is: every padded
    # batch NaN, test_a_norm_epsilon_of_zero_with_a_zero_pad_row_is_bad_config)
    ({"final_logit_softcapping": 0.0, "attn_logit_softcapping": 0.0, "sliding_window": 0}, "ok"),  # Llama reads none
    ({"rms_norm_eps": 1e-5}, "ok"),
    # (an adversarial round's, each CLEAN before: an epsilon past float32's range is Inf as the norm adds it, every
    # logit 0; hand-written keys save_pretrained never writes; a decoder marked encoder-decoder)
    ({"rms_norm_eps": 1e39}, "zero"),
    ({"attn_implementation": "flash_attention_9"}, "load"),
    ({"attn_implementation": "EAGER"}, "load"),
    ({"attn_implementation": "paged|sdpa"}, "ok"),
    ({"attn_implementation": "eager"}, "ok"),
    ({"quantization_config": {}}, "load"),
    ({"quantization_config": "bnb"}, "load"),
    ({"quantization_config": {"quant_method": None}}, "load"),
    ({"quantization_config": None}, "ok"),
    ({"quantization_config": {"quant_method": "no-such-method"}}, "ok"),  # (transformers warns and skips it)
    ({"is_encoder_decoder": True}, "generate"),
    # (a later round's: null or 0 as return_dict return tuples, model(ids).logits raises, though generate works, a
    # review's; generate asks `if is_encoder_decoder`, so "false" is true)
    ({"return_dict": None}, "generate"),
    ({"return_dict": 0}, "generate"),
    ({"return_dict": "true"}, "ok"),
    ({"is_encoder_decoder": "false"}, "generate"),
    ({"is_encoder_decoder": False}, "ok"),
]


def test_t5s_legacy_architecture_name_is_no_decoder_only_model(tmp_path):
    """A review: Google's t5-small config.json names "T5WithLMHeadModel" with is_encoder_decoder true; the decoder-only
    check (names ending LMHeadModel) read it BAD CONFIG while from_pretrained builds T5ForConditionalGeneration."""
    t5 = _fresh(tmp_path / "t5", "t5", vocab_size=64, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8,
               decoder_start_token_id=0)
    _edit(t5, "config.json", architectures=["T5WithLMHeadModel"])
    assert _oracle(t5, transformers.AutoModelForSeq2SeqLM) == "ok"
    assert nandoctor.scan(t5).exit_code == 0


@pytest.mark.parametrize("values, expected", MODEL, ids=[json.dumps(v) for v, _ in MODEL])
def test_config_values_that_make_the_forward_pass_nan(saved, tmp_path, values, expected):
    folder = shutil.copytree(saved, tmp_path / "model")
    _edit(folder, "config.json", **values)
    _judged_as_the_oracle(folder, values, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_norm_epsilon_of_zero_with_a_zero_pad_row_is_bad_config(tmp_path, dtype):
    """An adversarial round: rms_norm_eps 0 in a model whose pad token's embedding row is zeros (transformers makes it
    so for every model initialized with a pad_token_id, and training keeps it): an unpadded prompt generates, every
    padded batch computes NaN (0 / 0 in the first norm, spread by the attention). CLEAN before. The same epsilon
    without a zero row, and a model adding position embeddings before its first norm (GPT-2), scan clean as they
    work; a negative epsilon too small to matter but for a zero row is the same finding."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, pad_token_id=0)
    model = transformers.LlamaForCausalLM(config).to(dtype)
    assert not model.model.embed_tokens.weight[0].any()  # (padding_idx: zeros)
    folder = tmp_path / "llama"
    model.save_pretrained(folder)
    ids = torch.tensor([[0, 0, 5, 6], [3, 4, 5, 6]])
    for eps, bad in ((0.0, True), (-1e-6, True), (1e-46, True), (1e-44, False), (1e-6, False)):  # (1e-46: 0 in float32)
        _edit(folder, "config.json", rms_norm_eps=eps)
        loaded = transformers.LlamaForCausalLM.from_pretrained(folder)
        with torch.no_grad():  # the oracle
            assert torch.isfinite(loaded(ids[1:]).logits).all()
            assert torch.isfinite(loaded(ids, attention_mask=(ids != 0).long()).logits).all() != bad
        report = nandoctor.scan(folder)
        if not bad:
            assert report.exit_code == 0, report.errors
            continue
        assert report.exit_code == 3 and [p.kind for p in report.errors] == ["config"], report.errors
        assert f"rms_norm_eps is {eps}" in report.errors[0].message
        assert "(id 0 (the pad token))" in report.errors[0].message
    unpadded = tmp_path / "unpadded"  # (no zero row: an epsilon of 0 divides by no zero)
    with torch.no_grad():
        model.model.embed_tokens.weight[0] = 0.5
    model.save_pretrained(unpadded)
    _edit(unpadded, "config.json", rms_norm_eps=0.0)
    assert _oracle(unpadded) == "ok" and nandoctor.scan(unpadded).exit_code == 0
    (folder / "config.json").write_text((folder / "config.json").read_text().replace(
        '"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-06, "norm_eps": 1' + "0" * 400))  # (a review: OverflowError, exit 3)
    assert '"norm_eps": 1000' in (folder / "config.json").read_text() and nandoctor.scan(folder).exit_code == 0
    gpt2 = _fresh(tmp_path / "gpt2", "gpt2", vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32)
    zeroed = transformers.GPT2LMHeadModel.from_pretrained(gpt2)
    with torch.no_grad():
        zeroed.transformer.wte.weight[0] = 0.0
    zeroed.save_pretrained(gpt2)
    _edit(gpt2, "config.json", layer_norm_epsilon=0.0)
    assert _oracle(gpt2) == "ok" and nandoctor.scan(gpt2).exit_code == 0


@pytest.mark.parametrize("model_type", ["gpt_neox", "phi"])
def test_a_layer_norm_epsilon_of_zero_with_a_constant_embedding_row_is_bad_config(tmp_path, model_type):
    """A LayerNorm subtracts the row's mean before it divides: with an epsilon of 0 a token whose embedding row is one
    value throughout (not only zeros) makes 0 / 0 in the first norm, NaN everywhere (GPT-NeoX and Phi: rotary, no
    position embedding added first). Only zero rows were judged (an RMSNorm's case), so this read CLEAN. A constant row
    beside an epsilon that is no zero, and an RMSNorm model's constant row, stay clean as they work."""
    sizes = {"gpt_neox": {"num_attention_heads": 2}, "phi": {"num_attention_heads": 2, "resid_pdrop": 0.0}}[model_type]
    folder = _fresh(tmp_path / model_type, model_type, vocab_size=64, hidden_size=16, intermediate_size=32,
                    num_hidden_layers=2, max_position_embeddings=32, **sizes)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        model.get_input_embeddings().weight[9] = 0.3
    model.save_pretrained(folder)
    key = next(k for k in json.loads((folder / "config.json").read_text()) if k.startswith("layer_norm_eps"))
    assert _oracle(folder) == "ok" and nandoctor.scan(folder).exit_code == 0  # (its own epsilon: a healthy model)
    _edit(folder, "config.json", **{key: 0.0})
    assert _oracle(folder) == "nan"  # (the prompt holds token 9)
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and [p.kind for p in report.errors] == ["config"], report.errors
    assert f"{key} is 0.0 and 1 row(s)" in report.errors[0].message and "(id 9)" in report.errors[0].message
    assert "constant" in report.errors[0].message
    llama = tmp_path / "llama"
    rms = tiny_llama()
    with torch.no_grad():
        rms.model.embed_tokens.weight[9] = 0.3
        rms.model.embed_tokens.weight[0] = 0.5  # (its pad row of zeros is the RMSNorm's own case, above)
    rms.save_pretrained(llama)
    _edit(llama, "config.json", rms_norm_eps=0.0)
    assert _oracle(llama) == "ok" and nandoctor.scan(llama).exit_code == 0


def _fresh(folder: Path, model_type: str, **sizes) -> Path:
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(model_type, **sizes)
    auto = transformers.AutoModelForSeq2SeqLM if config.is_encoder_decoder else transformers.AutoModelForCausalLM
    auto.from_config(config).save_pretrained(folder)
    return folder


def test_gemma2_softcap_of_zero_and_gpt2_negative_epsilon(tmp_path):
    gemma = _fresh(tmp_path / "gemma2", "gemma2", vocab_size=64, hidden_size=16, intermediate_size=32,
                   num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    assert _oracle(gemma) == "ok" and nandoctor.scan(gemma).exit_code == 0
    _edit(gemma, "config.json", final_logit_softcapping=0.0)
    assert _oracle(gemma) == "nan"
    report = nandoctor.scan(gemma)
    assert report.exit_code == 3 and "final_logit_softcapping is 0" in report.errors[0].message
    _edit(gemma, "config.json", final_logit_softcapping=None, attn_logit_softcapping=None)  # null: off, fine
    assert _oracle(gemma) == "ok" and nandoctor.scan(gemma).exit_code == 0

    gpt2 = _fresh(tmp_path / "gpt2", "gpt2", vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32)
    _edit(gpt2, "config.json", layer_norm_epsilon=-1.0)
    assert _oracle(gpt2) == "nan"
    assert [p.kind for p in nandoctor.scan(gpt2).errors] == ["config"]


def test_an_encoder_decoders_decoder_start_token_outside_the_vocabulary(tmp_path):
    t5 = _fresh(tmp_path / "t5", "t5", vocab_size=64, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8,
               decoder_start_token_id=0)
    assert _oracle(t5, transformers.AutoModelForSeq2SeqLM) == "ok" and nandoctor.scan(t5).exit_code == 0
    _edit(t5, "generation_config.json", decoder_start_token_id=64)
    assert _oracle(t5, transformers.AutoModelForSeq2SeqLM) == "generate"
    report = nandoctor.scan(t5)
    assert report.exit_code == 3 and "decoder_start_token_id is 64" in report.errors[0].message


@pytest.mark.parametrize("model_type, values, expected", [
    ("mistral", {"sliding_window": 0}, "generate"),
    ("mistral", {"sliding_window": -1}, "generate"),
    ("mistral", {"sliding_window": 1}, "ok"),
    ("mixtral", {"num_experts_per_tok": 16}, "generate"),
    ("mixtral", {"num_experts_per_tok": 8}, "ok"),
    ("qwen2_moe", {"num_experts_per_tok": 99}, "generate"),
    ("granite", {"logits_scaling": 0}, "nan"),  # (the logits are divided by it)
    ("granite", {"logits_scaling": 0.5}, "ok"),
    # (beyond float32's range, or 1 over it: an adversarial round's, CLEAN before; 1e30 multiplies to no Inf here)
    ("granite", {"logits_scaling": 1e-40}, "nan"),
    ("granite", {"embedding_multiplier": 1e40}, "nan"),
    ("granite", {"residual_multiplier": 1e39}, "nan"),
    ("cohere", {"logit_scale": 1e40}, "nan"),
    ("granite", {"logits_scaling": 1e-30}, "ok"),
])
def test_config_values_that_make_the_forward_pass_raise(tmp_path, model_type, values, expected):
    folder = _fresh(tmp_path / model_type, model_type, vocab_size=64, hidden_size=16, intermediate_size=32,
                    num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                    num_local_experts=8, num_experts=8, moe_intermediate_size=16, shared_expert_intermediate_size=16,
                    num_experts_per_tok=2, max_position_embeddings=64)
    _edit(folder, "config.json", **values)
    _judged_as_the_oracle(folder, values, expected)


@pytest.mark.parametrize(("model_type", "kv", "expected"), [
    ("llama", 3, "generate"), ("qwen2", 3, "generate"), ("llama", 2, "ok"), ("llama", 4, "ok"), ("qwen2", 1, "ok"),
])
def test_key_value_heads_that_do_not_divide_the_heads_are_a_bad_config(tmp_path, model_type, kv, expected):
    """An adversarial round: 4 attention heads over 3 key/value heads, the weights saved as config.json describes them
    (no shape disagrees), loaded and read CLEAN while every forward pass raised ("The size of tensor a (4) must match
    the size of tensor b (3)"): grouped-query attention shares each key/value head among heads / kv_heads query heads.
    Key/value heads that divide the heads (2, 4 of them, or 1) stay CLEAN."""
    folder = _fresh(tmp_path / model_type, model_type, vocab_size=64, hidden_size=32, intermediate_size=64,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=kv, head_dim=8,
                    max_position_embeddings=64)
    _judged_as_the_oracle(folder, {"num_key_value_heads": kv}, expected)


def _judged_as_the_oracle(folder: Path, values: dict, expected: str) -> None:
    """The config.json ``values`` of ``folder`` scan CLEAN where transformers works, else BAD CONFIG naming them."""
    assert _oracle(folder) == expected
    report = nandoctor.scan(folder)
    if expected == "ok":
        assert report.exit_code == 0, report.errors
        return
    assert report.exit_code == 3 and [p.kind for p in report.errors] == ["config"], report.errors
    key = next(iter(values))
    message = report.errors[0].message
    assert f"{key} is {values[key]}" in message or f"{key} is {json.dumps(values[key])}" in message, message


@pytest.mark.parametrize("rope, nan", [
    ({"rope_type": "linear", "factor": 0.0}, True),
    ({"rope_type": "yarn", "factor": 0.0, "original_max_position_embeddings": 64}, True),
    ({"rope_type": "llama3", "factor": 0.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 64}, True),
    ({"rope_type": "linear", "factor": 2.0}, False),
    ({"rope_type": "dynamic", "factor": 0.0}, False),  # (only past max_position_embeddings)
])
def test_a_rope_scaling_factor_of_zero_makes_the_logits_nan(saved, tmp_path, rope, nan):
    """A trial: linear or yarn rope scaling with factor 0 loads and gives NaN logits from ~20 tokens on (the
    frequencies are divided by it); CLEAN before."""
    from transformers import AutoModelForCausalLM

    folder = shutil.copytree(saved, tmp_path / "model")
    _edit(folder, "config.json", rope_parameters={**rope, "rope_theta": 10000.0})
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(folder)(torch.tensor([list(range(1, 30))])).logits
    assert bool(torch.isnan(logits).any()) == nan  # the oracle
    report = nandoctor.scan(folder)
    if not nan:
        assert report.exit_code == 0, report.errors
        return
    assert report.exit_code == 3 and [p.kind for p in report.errors] == ["config"], report.errors
    assert "rope_parameters.factor is 0" in report.errors[0].message


def test_a_generation_config_of_another_json_type_is_bad_config(saved, tmp_path):
    """A JSON list or string in generation_config.json: from_pretrained raises ("'list' object is not a mapping");
    text that is no JSON at all is passed over (generate's defaults): CLEAN, as transformers loads it."""
    for text, expected in (("[1, 2]", "load"), ('"x"', "load"), ("{oops", "ok")):
        folder = shutil.copytree(saved, tmp_path / f"m{len(text)}")
        (folder / "generation_config.json").write_text(text)
        assert _oracle(folder) == expected
        report = nandoctor.scan(folder)
        if expected == "ok":
            assert report.exit_code == 0, report.errors
        else:
            assert report.exit_code == 3 and [e.kind for e in report.errors] == ["config"], report.errors
            assert "not an object" in report.errors[0].message


@pytest.mark.parametrize("where, theta, expected", [
    ("rope_parameters", 0.0, "nan"), ("rope_parameters", -10000.0, "nan"), ("top only", 0.0, "nan"),
    ("top", 0.0, "ok"),  # (beside rope_parameters, transformers 5 reads theirs)
    ("rope_parameters", 1.0, "ok"),
])
def test_a_rotary_base_of_zero_or_less_is_bad_config(saved, tmp_path, where, theta, expected):
    """Held to eager attention (CPU SDPA turns NaN queries into garbage that is finite)."""
    folder = shutil.copytree(saved, tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    if where == "top only":
        del config["rope_parameters"]
    (config["rope_parameters"] if where == "rope_parameters" else config)["rope_theta"] = theta
    (folder / "config.json").write_text(json.dumps(config))
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
    with torch.no_grad():
        finite = bool(torch.isfinite(model(torch.tensor([[1, 5, 9, 3]])).logits).all())
    assert ("ok" if finite else "nan") == expected
    report = nandoctor.scan(folder)
    if expected == "ok":
        assert report.exit_code == 0, report.errors
    else:
        assert report.exit_code == 3 and [p.kind for p in report.errors] == ["config"], report.errors
        assert f"rope_theta is {theta}" in report.errors[0].message


def test_a_temperature_that_overflows_a_language_model_s_logits_is_bad_config(saved, tmp_path):
    """A review: logits of 20 divided by a temperature of 5e-38 (above float32's smallest normal) are Inf and
    sampling's softmax NaN: "probability tensor contains either inf, nan". Below 2^-123 every logit above 32 overflows,
    where a language model's largest ones lie (the tiny test model's are under 1: its generate is not the oracle)."""
    from transformers.generation.logits_process import TemperatureLogitsWarper

    scores = TemperatureLogitsWarper(5e-38)(None, torch.tensor([[20.0, 1.0, -3.0]]))
    assert torch.isnan(torch.softmax(scores, dim=-1)).all()  # the oracle: transformers' own processor
    folder = shutil.copytree(saved, tmp_path / "model")
    _edit(folder, "generation_config.json", temperature=5e-38, do_sample=True)
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and [p.kind for p in report.errors] == ["config"]
    assert "the logits divided by it overflow float32" in report.errors[0].message


# generation_config.json files as the Hub's models ship them (their token ids, outside the tiny model's vocabulary:
# an eos_token_id there is tolerated), and one GenerationConfig of transformers 4 wrote with every default
HUB_GENERATION_CONFIGS = {
    "llama-3.1": {"bos_token_id": 128000, "do_sample": True, "eos_token_id": [128001, 128008, 128009],
                  "temperature": 0.6, "top_p": 0.9, "transformers_version": "4.42.3"},
    "qwen2.5": {"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
                "repetition_penalty": 1.05, "temperature": 0.7, "top_p": 0.8, "top_k": 20,
                "transformers_version": "4.37.0"},
    "mistral": {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "transformers_version": "4.34.0"},
    "gemma-2": {"_from_model_config": True, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": [1, 107],
                "pad_token_id": 0, "transformers_version": "4.42.4"},
    "gemma-3": {"cache_implementation": "hybrid", "do_sample": True, "eos_token_id": [1, 106], "pad_token_id": 0,
                "top_k": 64, "top_p": 0.95, "bos_token_id": 2},
    "phi-3": {"bos_token_id": 1, "eos_token_id": [32000, 32001, 32007], "pad_token_id": 32000},
    "4.x defaults": {"max_length": 20, "min_length": 0, "do_sample": False, "early_stopping": False, "num_beams": 1,
                     "temperature": 1.0, "top_k": 50, "top_p": 1.0, "typical_p": 1.0, "repetition_penalty": 1.0,
                     "length_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0,
                     "bad_words_ids": None, "num_return_sequences": 1, "output_scores": False,
                     "return_dict_in_generate": False, "forced_bos_token_id": None, "forced_eos_token_id": None,
                     "remove_invalid_values": False, "exponential_decay_length_penalty": None, "suppress_tokens": None,
                     "begin_suppress_tokens": None, "diversity_penalty": 0.0, "num_beam_groups": 1,
                     "penalty_alpha": None, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "guidance_scale": None,
                     "low_memory": None, "dola_layers": None, "constraints": None, "force_words_ids": None,
                     "watermarking_config": None, "compile_config": None, "cache_implementation": None,
                     "prefill_chunk_size": None, "prompt_lookup_num_tokens": None, "sequence_bias": None,
                     "stop_strings": None, "token_healing": False, "bos_token_id": 1, "eos_token_id": 2,
                     "pad_token_id": 0},
}


@pytest.mark.parametrize("name", list(HUB_GENERATION_CONFIGS))
def test_hub_generation_configs_stay_clean(saved, tmp_path, name):
    folder = shutil.copytree(saved, tmp_path / "model")
    (folder / "generation_config.json").write_text(json.dumps(HUB_GENERATION_CONFIGS[name], indent=2))
    assert _oracle(folder) == "ok"
    report = nandoctor.scan(folder)
    assert report.exit_code == 0 and not report.errors, report.errors


def test_a_value_of_another_json_type_names_the_key_the_value_and_the_type(saved, tmp_path):
    folder = shutil.copytree(saved, tmp_path / "model")
    _edit(folder, "generation_config.json", max_new_tokens="5", top_k="5")
    report = nandoctor.scan(folder)
    message = " ".join(p.message for p in report.errors)
    assert 'max_new_tokens is "5", where transformers expects a number' in message  # (from_pretrained raises)
    assert 'top_k is "5", where transformers expects an integer' in message  # (generate raises)


def test_the_cache_implementations_are_transformers_own():
    from transformers.generation.configuration_utils import ALL_CACHE_IMPLEMENTATIONS

    from nandoctor.checkpoint.configvalues import CACHE_IMPLEMENTATIONS

    assert set(CACHE_IMPLEMENTATIONS) == set(ALL_CACHE_IMPLEMENTATIONS) | {"paged"}


def test_the_hub_moved_decoding_modes_are_transformers_own():
    """The modes judged as moved to the Hub (DoLa, constrained, contrastive, group beam search) are those
    transformers maps to a Hub repository."""
    from transformers.generation.utils import GENERATION_MODES_MAPPING

    moved = {mode.name for mode, where in GENERATION_MODES_MAPPING.items() if "/" in where}
    assert moved == {"DOLA_GENERATION", "CONTRASTIVE_SEARCH", "GROUP_BEAM_SEARCH", "CONSTRAINED_BEAM_SEARCH"}


@pytest.mark.parametrize(("family", "key", "value"), [("gptj", "rotary_dim", 64), ("codegen", "rotary_dim", 12),
                                                      ("gpt_neox", "rotary_pct", 2.0),
                                                      ("gpt_neox", "rope_parameters.partial_rotary_factor", 2.0)])
def test_rotary_dimensions_past_a_head_s_are_a_bad_config(tmp_path, family, key, value):
    """A false-alarm hunt's GPT-J saved with rotary_dim 64 over heads of 8 read CLEAN; generate raises a size
    mismatch. A head's own rotary_dim (8) or share (0.25) stays clean."""
    import torch
    import transformers

    config_class, model_class, sizes = {
        "gptj": (transformers.GPTJConfig, transformers.GPTJForCausalLM, dict(n_embd=32, n_layer=2, n_head=4)),
        "codegen": (transformers.CodeGenConfig, transformers.CodeGenForCausalLM,
                    dict(n_embd=32, n_layer=2, n_head=4, n_ctx=64)),
        "gpt_neox": (transformers.GPTNeoXConfig, transformers.GPTNeoXForCausalLM,
                     dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)),
    }[family]
    torch.manual_seed(0)
    folder = tmp_path / family
    healthy = {"rotary_dim": 8}.get(key, 0.25)
    model_class(config_class(vocab_size=64, **sizes, **{key.rpartition(".")[2]: healthy})).save_pretrained(folder)
    assert nandoctor.scan(folder).exit_code == 0
    data = json.loads((folder / "config.json").read_text())
    if key == "rotary_pct":  # (an older save: the share at the top level, no rope_parameters)
        data.pop("rope_parameters")
    elif key.startswith("rope_parameters."):
        data["rope_parameters"] = {**data["rope_parameters"], "partial_rotary_factor": value}
    (folder / "config.json").write_text(json.dumps({**data, **({} if "." in key else {key: value})}))
    model = model_class.from_pretrained(folder)
    with pytest.raises(RuntimeError, match="size of tensor"):  # the oracle
        model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2, do_sample=False)
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and [e.kind for e in report.errors] == ["config"], report.errors
    assert f"{key} is {value}" in report.errors[0].message


@pytest.mark.parametrize(("family", "key", "value"), [("llama", "rms_norm_eps", 1), ("llama", "initializer_range", 0),
                                                      ("gpt2", "layer_norm_epsilon", 1),
                                                      ("gemma2", "final_logit_softcapping", 30),
                                                      ("llama", "eos_token_id", 2.0), ("llama", "bos_token_id", True),
                                                      ("llama", "eos_token_id", [2.0]), ("llama", "use_cache", 1),
                                                      ("llama", "use_cache", None)])
def test_an_integer_where_transformers_wants_a_float_is_a_bad_config(tmp_path, family, key, value):
    """An adversarial round: transformers 5's configs are strict dataclasses, and a field typed float refuses a JSON
    integer ("Field 'rms_norm_eps' expected float, got int"): a softcap written 30, an epsilon written 1, read CLEAN;
    so do a token id written 2.0 or true (every *_token_id is an integer) and a use_* flag written 1 or null."""
    import torch

    config_class, model_class, sizes = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                  dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)),
        "gpt2": (transformers.GPT2Config, transformers.GPT2LMHeadModel, dict(n_embd=32, n_layer=2, n_head=4)),
        "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM,
                   dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=8)),
    }[family]
    torch.manual_seed(0)
    folder = tmp_path / family
    model_class(config_class(vocab_size=64, **sizes)).save_pretrained(folder)
    assert nandoctor.scan(folder).exit_code == 0
    data = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**data, key: value}))
    with pytest.raises(Exception, match="expected"):  # the oracle ("expected float, got int", "expected int, …")
        model_class.from_pretrained(folder)
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and [e.kind for e in report.errors] == ["config"], report.errors
    assert f"{key} is {json.dumps(value)}" in report.errors[0].message


def _roped(folder, rope=None):
    """A tiny Phi-3 (longrope) or Llama (other rope types) with ``rope`` merged into its rope_parameters."""
    import torch

    torch.manual_seed(0)
    sizes = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 max_position_embeddings=64, pad_token_id=0)
    phi3 = rope is None or rope.get("rope_type") == "longrope"
    model = transformers.Phi3ForCausalLM(transformers.Phi3Config(**sizes)) if phi3 else \
        transformers.LlamaForCausalLM(transformers.LlamaConfig(**sizes))
    model.save_pretrained(folder)
    if rope is not None:
        data = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**data, "rope_parameters": {**data["rope_parameters"], **rope}}))
    return folder


@pytest.mark.parametrize(("rope", "raised"), [
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 0.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 32}, ZeroDivisionError),
    ({"rope_type": "longrope", "short_factor": [1.0] * 7 + [0.0], "long_factor": [1.0] * 8,
      "original_max_position_embeddings": 32}, None),  # (loads: every logit NaN)
    ({"rope_type": "longrope", "short_factor": [1.0, 1.0], "long_factor": [1.0, 1.0],
      "original_max_position_embeddings": 32}, Exception),
    ({"rope_type": "linear", "factor": 1e-40}, None),
])
def test_rope_settings_that_raise_or_make_nan_are_a_bad_config(tmp_path, rope, raised):
    """An adversarial round: llama3's low/high_freq_factor 0 (ZeroDivisionError in the build), a longrope factor of 0
    or lists of the wrong length (NaN logits, or transformers' rope validation), a linear factor of 1e-40 (NaN): each
    read CLEAN. Healthy longrope lists (a head's rotary dimensions / 2 of them) stay clean."""
    import torch

    healthy = _roped(tmp_path / "healthy", {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [1.5] * 8,
                                           "original_max_position_embeddings": 32})
    assert nandoctor.scan(healthy).exit_code == 0
    transformers.AutoModelForCausalLM.from_pretrained(healthy)
    folder = _roped(tmp_path / "bad", rope)
    if raised is not None:  # the oracle
        with pytest.raises(raised):
            transformers.AutoModelForCausalLM.from_pretrained(folder)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
        with torch.no_grad():
            assert not torch.isfinite(model(torch.tensor([[1, 2, 3, 4]])).logits).all()
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and [e.kind for e in report.errors] == ["config"], report.errors


def test_an_index_entry_for_a_rebuilt_buffer_no_shard_holds_is_a_note(tmp_path):
    """An adversarial round: an old conversion's index still mapping model.layers.0.self_attn.rotary_emb.inv_freq
    (a buffer the model computes) read UNREADABLE, exit 3; from_pretrained ignores the entry, loads and generates."""
    import torch

    torch.manual_seed(0)
    folder = tmp_path / "sharded"
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    )).save_pretrained(folder, max_shard_size="20KB")
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    index["weight_map"]["model.layers.0.self_attn.rotary_emb.inv_freq"] = first
    index_path.write_text(json.dumps(index))
    model = transformers.LlamaForCausalLM.from_pretrained(folder)  # the oracle
    model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2, do_sample=False)
    report = nandoctor.scan(folder)
    assert report.exit_code == 0, report.errors
    assert any("rotary_emb.inv_freq" in note and "loaders ignore the entries" in note for note in report.notes)
    index["weight_map"]["model.layers.0.mlp.lost.weight"] = first  # (a weight no shard holds: still a problem)
    index_path.write_text(json.dumps(index))
    assert nandoctor.scan(folder).exit_code == 3


def test_zeros_that_break_gemma2_granite_and_t5_are_a_bad_config(tmp_path):
    """An adversarial round: gemma2's query_pre_attn_scalar 0 (the build raises ZeroDivisionError), granite's
    embedding_multiplier 0 (every logit 0: the output ignores the prompt), residual_multiplier 0 (the layers add
    nothing) and attention_multiplier 0 (uniform attention: the query weights unused), T5's relative_attention_max_distance within
    its exact buckets (generate raises on a longer input) each read CLEAN. The healthy saves stay clean."""
    import torch

    torch.manual_seed(0)
    sizes = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    cases = [
        (transformers.Gemma2ForCausalLM(transformers.Gemma2Config(**sizes, num_key_value_heads=2, head_dim=8)),
         {"query_pre_attn_scalar": 0}),
        *((transformers.GraniteForCausalLM(transformers.GraniteConfig(**sizes)), {key: 0.0})
          for key in ("embedding_multiplier", "residual_multiplier", "attention_multiplier")),
        (transformers.CohereForCausalLM(transformers.CohereConfig(**sizes)), {"logit_scale": 0.0}),
        (transformers.T5ForConditionalGeneration(transformers.T5Config(
            vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0)),
         {"relative_attention_max_distance": 8}),
    ]
    for n, (model, edit) in enumerate(cases):
        folder = tmp_path / str(n)
        model.save_pretrained(folder)
        assert nandoctor.scan(folder).exit_code == 0
        data = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**data, **edit}))
        key = next(iter(edit))
        if key == "query_pre_attn_scalar":  # the oracles
            with pytest.raises(ZeroDivisionError):
                type(model).from_pretrained(folder)
        elif key in ("embedding_multiplier", "logit_scale"):
            loaded = type(model).from_pretrained(folder)
            with torch.no_grad():
                assert float(loaded(torch.tensor([[1, 2, 3]])).logits.abs().max()) == 0.0
        elif key == "residual_multiplier":  # (the last token's logits whatever came before it)
            loaded = type(model).from_pretrained(folder)
            with torch.no_grad():
                assert torch.allclose(loaded(torch.tensor([[1, 2, 3]])).logits[0, -1],
                                      loaded(torch.tensor([[3]])).logits[0, -1], atol=1e-6)
                assert not torch.allclose(model(torch.tensor([[1, 2, 3]])).logits[0, -1],
                                          model(torch.tensor([[3]])).logits[0, -1], atol=1e-6)
        elif key == "attention_multiplier":
            # (eager attention: as a model whose query weights are zero, a plain average; torch 2.13's causal SDPA,
            # the default, computes NaN at a scale of 0)
            loaded, eager, blind = (type(model).from_pretrained(folder, attn_implementation=attention)
                                    for attention in ("sdpa", "eager", "eager"))
            for layer in blind.model.layers:
                layer.self_attn.scaling = model.config.attention_multiplier
                layer.self_attn.q_proj.weight.data.zero_()
            with torch.no_grad():
                prompt = torch.tensor([[1, 2, 3, 4]])
                assert torch.allclose(eager(prompt).logits, blind(prompt).logits, atol=1e-5)
                assert not torch.allclose(model(prompt).logits, eager(prompt).logits, atol=1e-5)
                logits = loaded(prompt).logits
                assert not torch.isfinite(logits).all() or torch.allclose(logits, blind(prompt).logits, atol=1e-5)
        else:
            loaded = type(model).from_pretrained(folder)
            with pytest.raises(IndexError):
                loaded.generate(torch.arange(1, 41).reshape(1, 40) % 60 + 1, max_new_tokens=2, do_sample=False)
        report = nandoctor.scan(folder)
        assert report.exit_code == 3 and [e.kind for e in report.errors] == ["config"], (key, report.errors)
        assert f"{key} is" in report.errors[0].message
