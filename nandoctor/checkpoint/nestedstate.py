"""A weights file from_pretrained reads whose state dict lies one level down: it finds none of the weights.

``torch.save({"model": model.state_dict(), "epoch": 3}, "pytorch_model.bin")`` beside config.json (a training loop's
save under the name from_pretrained reads): transformers' ``load_state_dict`` returns the outer dict, whose keys
(``model``, ``epoch``) are no parameter's, so from_pretrained finds none of the weights and initializes every one at
random. The model loads and every stored value reads finite (an adversarial round: CLEAN). The reader says where the
state dict lies (readers/torch/statedicts.py); a file scanned alone, or beside no config.json, is left alone: its
loader is not known.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from nandoctor.checkpoint.loaders import weights_only_loader
from nandoctor.checkpoint.renaming import unnest_command
from nandoctor.model import ScanProblem
from nandoctor.verdict import UNLOADABLE_KIND


def problems(nested: dict[Path, str], loaded: Iterable[str]) -> list[ScanProblem]:
    """NOT LOADABLE for each file of ``loaded`` (those from_pretrained reads in a folder beside config.json:
    loadability.from_pretrained_weights) whose state dict lies under a key (``nested``: file → that key)."""
    if not nested:
        return []
    found = []
    for file in sorted({Path(name) for name in set(loaded)} & set(nested)):  # (``loaded``: a name per tensor)
        key = nested[file]
        loader = weights_only_loader(file.name) or "from_pretrained"
        found.append(ScanProblem(
            str(file), f"holds no tensor at the top of its dict: the weights lie inside {key!r} (a training loop's "
            f"torch.save({{{key!r}: state_dict, …}})); {loader} takes the file's top-level dict for the state dict, "
            "finds none of the weights in it and initializes every one at random, so the model is not this checkpoint",
            f"save the state dict itself as the file: {unnest_command(str(file), key)} (or save the model with "
            "save_pretrained)", kind=UNLOADABLE_KIND))
    return found


__all__ = ["problems"]
