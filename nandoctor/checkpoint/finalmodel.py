"""A run's final model: the weights ``Trainer.save_model()`` writes at the top of the run folder.

After training, ``output/`` usually holds ``checkpoint-5 … checkpoint-40/`` *and* ``model.safetensors``
(+ ``config.json``) beside them. That folder is a run (checkpoint/runs.py scans it as a timeline) whose
last row is ``final``: the top-level model, judged like every checkpoint (its growth against the run).
It is what a user ships, so it decides the run's exit code. The same folder is also one checkpoint:
``nandoctor.scan()`` and ``nandoctor repair`` take its top-level model, with ``--from auto`` donors from
the run's healthy checkpoints (restore/donors.py).

The final row's step: the ``global_step`` of a top-level ``trainer_state.json`` (``trainer.save_state()``
writes one) when it is at or after the newest checkpoint's step, else unknown (``null`` in the JSON), and
the row is ordered after every checkpoint either way.

A Lightning run's final model is one file beside its step files (``trainer.save_checkpoint("final.ckpt")``,
a ``model.safetensors``: checkpoint/stepfiles.py); :func:`final_model` gives the path to scan either way
(the run folder, or that file).
"""

from __future__ import annotations

import re
from pathlib import Path

from nandoctor.checkpoint.incomplete import TRAINER_STATE, incomplete_reasons

FINAL = "final"  # the final model's row name in the timeline and the JSON


def holds_weights(entries: list[Path]) -> bool:
    """Whether a folder's own entries include weights (a weight file or a shard index) at its top."""
    from nandoctor import access
    from nandoctor.checkpoint.layout import INDEX_NAMES, weight_suffixes

    suffixes = weight_suffixes()
    return any(
        e.name in INDEX_NAMES
        or (e.suffix.lower() in suffixes and not e.name.startswith(".") and access.is_file(e, refused=True))
        for e in entries
    )


# What makes a folder a model, not any file of a weight suffix: the config a loader builds it from, or weight files named
# as the loaders name them (save_model()'s, save_pretrained's, PEFT's, diffusers', Mistral's, any shard, a GGUF, a shard
# index). Trials: eval/predictions.pt and eval/metrics.pt decided a run as a model saved into it; a run's top holding a
# predictions.pt or training_args.bin alone was "the final model", failing a healthy run with a repair that could not work
_MODEL_FILES = re.compile(r"^(?:(?:model|pytorch_model|adapter_model|diffusion_pytorch_model|consolidated)"
                          r"(?:[-.][\w.-]*)?\.(?:safetensors|bin|pt|pth|ckpt|gguf)|[^/]+\.gguf|[^/]+\.index\.json)$")
_MODEL_CONFIGS = frozenset({"config.json", "adapter_config.json", "model_index.json", "params.json"})


def looks_like_model(entries: list[Path]) -> bool:
    """Whether a folder's ``entries`` make a model a loader reads (a model saved into a run's folder, a run's final
    model at its top), not only other torch files."""
    return any(e.name in _MODEL_CONFIGS or _MODEL_FILES.match(e.name) for e in entries)


def loose_files(folder: Path) -> list[Path]:
    """The weight files at a run folder's top that are no final model (:func:`looks_like_model` does not hold): rows of
    their own, judged as files off a step-file run's timeline are (runs.py)."""
    from nandoctor import access
    from nandoctor.checkpoint.layout import NOT_WEIGHTS, is_weight_file, weight_suffixes

    try:
        entries = access.listing(folder)
    except OSError:
        return []
    if looks_like_model(entries):
        return []
    suffixes = weight_suffixes()
    return sorted(e for e in entries if is_weight_file(e, suffixes) and not e.name.startswith(".")
                  and e.name not in NOT_WEIGHTS and access.is_file(e, refused=True))


def final_model(folder: Path) -> Path | None:
    """What to scan as the final model of the run at ``folder``: its one final file for a Lightning run,
    else ``folder`` itself when it holds weights at its top (for any folder that does, run or not); None
    when there are none."""
    from nandoctor.checkpoint.stepfiles import step_folder

    try:
        if not Path(folder).is_dir():
            return None
        entries = list(Path(folder).iterdir())
    except OSError:
        return None
    lightning = step_folder(Path(folder), entries)
    if lightning is not None:
        return lightning.final
    return Path(folder) if holds_weights(entries) and looks_like_model(entries) else None


def has_final_model(folder: Path) -> bool:
    """Whether ``folder`` holds weights at its top (the run's final model, when it is a run folder; for a
    Lightning run, its final file)."""
    return final_model(folder) is not None


def final_step(folder: Path) -> int | None:
    """The ``global_step`` of the folder's top-level ``trainer_state.json``, else None."""
    from nandoctor.checkpoint.jsonfiles import read_json

    state = Path(folder) / TRAINER_STATE
    if not state.is_file():
        return None
    try:
        step = read_json(state).get("global_step")
    except (OSError, ValueError, AttributeError):
        return None  # an unreadable state file: the timeline's trainer log reports it
    return step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None


def final_reasons(folder: Path) -> list[str]:
    """Why the top-level model looks half-written. Only files count: the run's ``tmp-checkpoint-N``
    folders beside it are incomplete checkpoints of the timeline, not part of the final model."""
    return incomplete_reasons(Path(folder), expect_trainer_state=False, files_only=True)
