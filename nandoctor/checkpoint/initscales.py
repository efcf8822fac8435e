"""Where a training run started, as the model's own config says, for runs that blew up before their first save.

Growth (verdict.growth) needs a healthy checkpoint to measure from. A run whose learning rate was far too high
blows up within its first steps: every checkpoint it saved is already broken, and measured against the first of
them nothing grows (a real Trainer run at lr 1e2: loss 631,389 at its first log, every weight matrix's bulk at
512 to 1,024 from the first save on, each save "healthy" and the run CLEAN; eval loss 6.3e6 where an untrained
model scores 4.85). The training callbacks keep the weights at step 0 for this (baseline.py); a run scanned
without them has only what its files say:

- **the initial scale**: transformers draws every Linear and Embedding weight of a model from
  ``normal(0, initializer_range)`` (config.json; T5's widest, its shared embedding, from ``normal(0,
  initializer_factor)``), whose largest magnitude is a few times that (6.4σ covers a billion draws: 7 × the range
  is taken). A PEFT LoRA adapter starts with ``lora_A`` uniform in ±1/√in and
  ``lora_B`` at zero (adapter_config.json). Only 2-D weights are given a scale: a norm starts at 1, a bias at 0,
  and a convolution at its own initializer.
- **the untrained loss**: a language model's cross-entropy over ``vocab_size`` tokens is ln(vocab_size) where it
  guesses uniformly, a classifier's ln(num_labels). A loss that "came down" to 2,110 from 3,158 is still 435
  times that: the run never trained (:func:`untrained_loss`, used by baseline.usable_baseline).

The LoRA start is PEFT's own (an adapter is always trained from it), used as the callbacks' step-0 weights are:
where the trainer log's loss did not come down. The initializer's is a guess (a fine-tune starts from pretrained
weights, which may lie far above it), used only where the log's last loss is still 4x the untrained one: the run
never trained (baseline.usable_baseline).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from nandoctor.checkpoint.baseline import INITIAL_WEIGHTS, RunBaseline
from nandoctor.checkpoint.configvalues import positive, vocab_size
from nandoctor.checkpoint.jsonfiles import read_json
from nandoctor.errors import NandoctorError
from nandoctor.model import ScanReport

_CONFIG, _ADAPTER_CONFIG = "config.json", "adapter_config.json"
_SPREAD = 7.0  # the largest of n draws of normal(0, σ), in σ: 6.4 for a billion (taken high: growth is then smaller)
# the heads whose loss is a cross-entropy over the vocabulary, by the class name's ending
# (not *ForPreTraining: Wav2Vec2's is a contrastive loss summed over frames, ELECTRA's a per-token binary one, BERT's
# adds its next-sentence loss; a false-alarm hunt's healthy Wav2Vec2 pretraining was told it "never trained")
_LANGUAGE_HEADS = ("ForCausalLM", "LMHeadModel", "ForMaskedLM", "ForConditionalGeneration", "ForSeq2SeqLM")
# (not ForMultipleChoice: its cross-entropy is over the choices of each example, which config.json does not give; a
# review's 4-choice run was told ln 2, "worse than an untrained model", while it stood at chance, ln 4)
_LABEL_HEADS = ("ForSequenceClassification", "ForTokenClassification")


def implied_start(folder: Path, report: ScanReport) -> RunBaseline | None:
    """The weights a fresh run of the model in ``folder`` (a checkpoint folder; ``report`` its scan) started from, as
    its config implies them: the scales of its 2-D weights (the module's docstring says which); None where the
    config says nothing of the start (neither ``initializer_range`` nor T5's ``initializer_factor``, a LoRA of
    another init, another kind of adapter)."""
    from nandoctor.verdict import InitialScales

    refs = report.tensors.refs
    matrices = [i for i, (shape, role) in enumerate(zip(refs.shapes, refs.roles)) if len(shape) == 2 and role == "weight"]
    adapter = _object(folder / _ADAPTER_CONFIG)
    scales: dict[str, float] = {}
    if adapter is not None:
        # (PEFT's default LoRA init only: gaussian, PiSSA, OLoRA, LoftQ start elsewhere; another adapter type, or a
        # modules_to_save copy, owes nothing to these numbers)
        if adapter.get("peft_type", "LORA") != "LORA" or adapter.get("init_lora_weights", True) is not True:
            return None
        for i in matrices:
            name, inputs = refs.names[i], refs.shapes[i][1]
            if ".lora_A." in name and inputs > 0:
                scales[name] = 1 / math.sqrt(inputs)  # (kaiming_uniform with a=√5: the bound is 1/√fan_in)
            elif ".lora_B." in name or ".lora_embedding_A" in name:
                scales[name] = 0.0  # (zeros: growth's floor stands for them)
            elif ".lora_embedding_B" in name:
                scales[name] = _SPREAD  # (normal(0, 1))
        return RunBaseline(0, INITIAL_WEIGHTS, None, InitialScales(scales)) if scales else None
    spread = _initializer_range(_object(folder / _CONFIG))
    if spread is None:
        return None
    scales = {refs.names[i]: _SPREAD * spread for i in matrices if refs.names[i].endswith("weight")}
    return RunBaseline(0, INITIAL_WEIGHTS, None, InitialScales(scales), guessed=True) if scales else None


_DEFAULT_LABELS = 2  # (PreTrainedConfig's num_labels where config.json gives none)


def untrained_loss(folder: Path) -> float | None:
    """The loss a model of ``folder``'s config.json scores before training (it guesses uniformly): ln(vocab_size) for
    a language model's head, ln(num_labels) for a classifier's; None where the config does not say (a regression
    head, a multi-label one, an adapter, a model of no known head)."""
    config = _object(folder / _CONFIG)
    if config is None:
        return None
    architectures = config.get("architectures")
    head = architectures[0] if isinstance(architectures, list) and architectures and isinstance(
        architectures[0], str) else ""
    if head.endswith(_LANGUAGE_HEADS):
        classes = vocab_size(config)
    elif head.endswith(_LABEL_HEADS) and config.get("problem_type") in (None, "single_label_classification"):
        labels = config.get("id2label")
        # (transformers 5 leaves id2label and num_labels out of config.json at their default, 2 labels: the most common
        # fine-tune, a binary classifier at lr 1e2 with an eval loss of 1,289, read CLEAN)
        given = "id2label" in config or "num_labels" in config
        classes = (len(labels) if isinstance(labels, dict) else positive(config.get("num_labels"))) if given \
            else _DEFAULT_LABELS
    else:
        return None
    return math.log(classes) if classes is not None and classes > 1 else None


def _initializer_range(config: dict[str, Any] | None) -> float | None:
    """The standard deviation config.json draws the model's matrices with: ``initializer_range``, or T5's
    ``initializer_factor`` (its shared embedding is drawn from normal(0, factor), its projections narrower)."""
    for where in (config, (config or {}).get("text_config")):
        for key in ("initializer_range", "initializer_factor"):
            value = where.get(key) if isinstance(where, dict) else None
            if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1 << 10:
                return float(value)
    return None


def _object(path: Path) -> dict[str, Any] | None:
    try:
        data = read_json(path)
    except (OSError, ValueError, NandoctorError):  # (missing, invalid, refused: no start implied)
        return None
    return data if isinstance(data, dict) else None


__all__ = ["implied_start", "untrained_loss"]
