"""Names one flipped bit away from the names transformers' models use: a cheap reason to build the model.

A bit flip in a safetensors header renames a tensor (``transformer.wpe.weight`` → ``transformer.wpd.weight``):
from_pretrained then initialises the real one at random and ignores the stored one, while every value reads
finite. Inside a layer stack the other layers show the hole (architecture.py); outside one (a position embedding, a
pooler, a classifier head) nothing in the checkpoint does. So the name segments of every model transformers 5.25
builds (name_segments.txt: each architecture of its auto mappings built on the meta device, written by
``python -m nandoctor.checkpoint.namevocab``) are the reference: a stored segment that is none of them but differs
from one in exactly one character is suspected, and architecture.py builds the model to see whether the name it
needs is the one stored. Real names that are in no model of the list cost at most a build, never a finding.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache
from itertools import pairwise
from pathlib import Path

_FILE = Path(__file__).with_name("name_segments.txt")
# The characters one flipped bit makes of a dot, and so the dots one flipped bit makes of them (n, /, *, …): only
# these join or split segments, so that a real name of two known words (base_model) is no near miss
_DOT_FLIPPED = frozenset(chr(ord(".") ^ (1 << bit)) for bit in range(7)) - {"."}
_SHORTEST = 3  # (one- and two-letter segments, Mamba's A and D, T5's wo/wi: a near miss of those is any short name)


_NUMBER_TAIL = re.compile(r"^(.*\D)\d+$")


def _numbered(segment: str) -> str:
    """``segment`` with a trailing number made ``#`` (``expert_#``, ``conv#``): which of a model's numbered siblings
    it is depends on the model's size, not its kind (NLLB-MoE's expert_8 is no near miss of expert_0); a number out
    of its siblings' pattern is architecture.py's to suspect."""
    match = _NUMBER_TAIL.match(segment)
    return f"{match.group(1)}#" if match else segment


@cache
def _words() -> frozenset[str]:
    words = _FILE.read_text(encoding="utf-8").split()
    return frozenset(words) | {_numbered(w) for w in words}


@cache
def _wildcards() -> frozenset[str]:
    """Each segment with one position replaced by NUL (built only once a segment is unknown: ~8 ms)."""
    return frozenset(w[:i] + "\0" + w[i + 1:] for w in _words() if len(w) >= _SHORTEST for i in range(len(w)))


def known(segment: str) -> bool:
    """Whether a name segment is one a transformers model uses (a number, a layer index, is)."""
    return _known(segment, _words())


def _known(segment: str, words: frozenset[str]) -> bool:
    return segment in words or segment.isdigit() or _numbered(segment) in words


def near_misses(names: Iterable[str]) -> list[str]:
    """The parts of ``names`` that no transformers model uses but that one changed character makes one of its
    names' (numbers aside: layer indices), first seen first: a segment one character from a known one
    (``wpd``), two known segments whose dot became another character (``ln_f*weight``), or two parts of one
    known segment that a character turned into a dot split (``position_embeddi.gs``)."""
    words = _words()

    def known(segment: str) -> bool:  # (the words looked up once: every segment of every name is asked)
        return _known(segment, words)

    segments = [name.split(".") for name in dict.fromkeys(names)]
    if all(known(s) for parts in segments for s in parts):
        return []
    wildcards = _wildcards()
    found: dict[str, None] = {}
    for parts in segments:
        for s in parts:
            if known(s) or s in found:
                continue
            n = _numbered(s)
            if (len(n) >= _SHORTEST and any(n[:i] + "\0" + n[i + 1:] in wildcards for i in range(len(n)))) or any(
                    s[i] in _DOT_FLIPPED and known(s[:i]) and known(s[i + 1:]) for i in range(1, len(s) - 1)):
                found[s] = None
        for a, b in pairwise(parts):
            if not (known(a) and known(b)) and any(f"{a}{c}{b}" in words for c in _DOT_FLIPPED):
                found[f"{a}.{b}"] = None
    return list(found)


def one_character_apart(a: str, b: str) -> bool:
    """Whether the names ``a`` and ``b`` have one length and differ in exactly one character."""
    return len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1


def main() -> None:  # pragma: no cover - run by hand when transformers changes (about a minute)
    """Write name_segments.txt from the installed transformers: every model class of its auto mappings, built from
    its config class's defaults (at most two layers) on the meta device."""
    import contextlib
    import io
    import warnings

    import torch
    import transformers
    from transformers.models.auto import modeling_auto
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    warnings.simplefilter("ignore")
    classes = {(model_type, name) for attribute in dir(modeling_auto)
               if attribute.startswith("MODEL_") and attribute.endswith("_MAPPING_NAMES")
               for model_type, names in getattr(modeling_auto, attribute).items()
               for name in (names if isinstance(names, (list, tuple)) else [names])}
    segments: set[str] = set()
    for model_type, name in sorted(classes):
        cls = getattr(transformers, name, None)
        if cls is None:
            continue
        try:
            config = transformers.AutoConfig.for_model(model_type)
            for key in ("num_hidden_layers", "num_layers", "n_layer", "encoder_layers", "decoder_layers"):
                if isinstance(getattr(config, key, None), int) and getattr(config, key) > 2:
                    setattr(config, key, 2)
            with torch.device("meta"), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                model = cls(config)
        except Exception:  # noqa: BLE001 - (a class needing another config or an extra: not in the list)
            continue
        segments.update(s for key in model.state_dict() for s in key.split(".") if not s.isdigit())
    _FILE.write_text("".join(f"{s}\n" for s in sorted(segments)), encoding="utf-8")
    print(f"{len(segments)} segments of {len(classes)} model classes written to {_FILE}")


if __name__ == "__main__":  # pragma: no cover
    main()
