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

from collections.abc import Iterable
from functools import cache
from pathlib import Path

_FILE = Path(__file__).with_name("name_segments.txt")
_SHORTEST = 3  # (one- and two-letter segments, Mamba's A and D, T5's wo/wi: a near miss of those is any short name)


@cache
def _words() -> frozenset[str]:
    return frozenset(_FILE.read_text(encoding="utf-8").split())


@cache
def _wildcards() -> frozenset[str]:
    """Each segment with one position replaced by NUL (built only once a segment is unknown: ~8 ms)."""
    return frozenset(w[:i] + "\0" + w[i + 1:] for w in _words() if len(w) >= _SHORTEST for i in range(len(w)))


def near_misses(names: Iterable[str]) -> list[str]:
    """The segments of ``names`` that no transformers model uses but that differ from one of its segments in one
    character (numbers aside: layer indices), first seen first."""
    words = _words()
    unknown = [s for s in dict.fromkeys(s for name in names for s in name.split("."))
               if len(s) >= _SHORTEST and s not in words and not s.isdigit()]
    if not unknown:
        return []
    wildcards = _wildcards()
    return [s for s in unknown if any(s[:i] + "\0" + s[i + 1:] in wildcards for i in range(len(s)))]


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
