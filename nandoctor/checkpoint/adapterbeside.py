"""adapter_config.json left in a folder that holds a whole model (config.json and its weights).

With peft installed, transformers' ``from_pretrained(folder)`` (4.3x and 5.x: ``find_adapter_config_file``, then
``maybe_load_adapters``) looks for adapter_config.json first: beside config.json it loads the model the folder
holds, then ``load_adapter(folder)`` puts the adapter on it. That is the layout of a base model shipped with its
adapter; it is also what a model merged from its adapter (``merge_and_unload``) and saved into the adapter's
output folder leaves, and then the LoRA update is applied twice (an adversarial round's: logits 0.15 off the
merged model's, peft issue #1381). Without the adapter's weights beside it, ``load_adapter`` raises
FileNotFoundError and nothing loads; an adapter_config.json that is no JSON object raises as it is read. Without
peft the file is passed over: the folder's model loads alone. Checked with transformers 5.25 and peft 0.21
(tests/test_adapter_beside_model.py).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from nandoctor import access
from nandoctor.checkpoint import loadconfig, loaders
from nandoctor.checkpoint.adapterkeys import PREFIX
from nandoctor.checkpoint.peftload import local_base
from nandoctor.errors import NandoctorError
from nandoctor.model import RefTable, ScanProblem
from nandoctor.readers import read_file
from nandoctor.verdict import UNLOADABLE_KIND

ADAPTER_CONFIG = loadconfig.ADAPTER_CONFIG
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_LORA_A = re.compile(r"^(?P<module>.+)\.lora_(?:embedding_)?A(?:\.weight)?$")
_COMPARED = 2  # (targeted weights compared with the base's: a merged model differs in every one)
_LOADS = "with peft installed, transformers' from_pretrained of this folder finds adapter_config.json beside config.json"
_MOVE = f"move {ADAPTER_CONFIG} and the adapter's weights out of the folder (save a merged model into a folder of its own)"


def problems(root: Path, names: set[str]) -> list[ScanProblem]:
    """NOT LOADABLE where ``root`` (its entries ``names``: config.json and the weights from_pretrained reads among
    them) also holds adapter_config.json that from_pretrained cannot read, without the adapter's weights, or beside
    a model that is not the adapter's base: the module's docstring says why."""
    path = root / ADAPTER_CONFIG
    config = loadconfig.read_object(path)
    if config is None:
        return []
    held = [name for name in _ADAPTER_WEIGHTS if name in names]
    if not isinstance(config, dict):  # (beside adapter weights, loadconfig.py says so already)
        return [] if held else [ScanProblem(
            str(path), f"{_LOADS} and reads it, and it is no JSON object: from_pretrained raises before the model "
            "loads", f"remove {ADAPTER_CONFIG} from the folder", kind=UNLOADABLE_KIND)]
    if not held:
        return [ScanProblem(
            str(path), f"{_LOADS}: it loads the model here, then the adapter (load_adapter), whose weights "
            "(adapter_model.safetensors) are not here: FileNotFoundError, and the model does not load",
            f"remove {ADAPTER_CONFIG} from the folder (a merged model saved into the adapter's folder: the model here "
            "loads alone then), or put the adapter's weights back beside it if the model here is its base model",
            kind=UNLOADABLE_KIND)]
    named = config.get("base_model_name_or_path")
    base = local_base(named, config.get("revision"))
    if base is not None and base.resolve() == root.resolve():
        return []  # (the adapter names this very folder as its base)
    differing = _differing(root, base, root / held[0]) if base is not None else None
    if not differing:
        # (the model here is the adapter's base model, shipped with it: it loads as such; or nothing tells, the base not
        # here to compare with: a base shipped with its adapter loads too, so only bytes that differ are a finding, a
        # review's shipped base read NOT LOADABLE)
        return []
    which = f"; the model here is not its base model {named!r} ({differing[0]} differs)"
    return [ScanProblem(
        str(path), f"{_LOADS}: it loads the model here, then puts the adapter beside it on top (load_adapter){which}: "
        "a model merged from this adapter (merge_and_unload saved into its folder) gets the LoRA update twice",
        f"{_MOVE}; keep them beside the model only when it is the adapter's base model", kind=UNLOADABLE_KIND)]


def _differing(root: Path, base: Path, adapter: Path) -> list[str] | None:
    """The weights of modules the adapter holds LoRA for (a few) whose bytes differ between the model in ``root`` and
    the base model in ``base``; None where they cannot be compared (a torch file, a name neither stores)."""
    try:
        table = read_file(adapter).refs
    except (NandoctorError, OSError):
        return None
    names = [t.name for t in table] if not isinstance(table, RefTable) else table.names
    weights = [f"{m['module'].removeprefix(PREFIX)}.weight" for name in names if (m := _LORA_A.match(name))
               and ".base_layer" not in name][:_COMPARED]
    differing = []
    for weight in weights:
        here, there = _stored_bytes(root, weight), _stored_bytes(base, weight)
        if here is None or there is None:
            return None
        if here != there:
            differing.append(weight)
    return differing if weights else None


def _stored_bytes(folder: Path, name: str) -> bytes | None:
    """A digest of the tensor ``name`` as stored (dtype, shape, bytes) in the safetensors weights from_pretrained
    reads in ``folder``; None where it is not there or not in safetensors."""
    try:
        found = loaders.first_looked_for({p.name for p in access.listing(folder)})
        if found == "model.safetensors.index.json":
            shard = json.loads((folder / found).read_text()).get("weight_map", {}).get(name)
            file = folder / shard if isinstance(shard, str) else None
        else:
            file = folder / found if found == "model.safetensors" else None
        if file is None:
            return None
        table = read_file(file).refs
        if not isinstance(table, RefTable) or name not in table.names:
            return None
        i = table.names.index(name)
        digest = hashlib.sha256(f"{table.dtypes[i]}{table.shapes[i]}".encode())
        with open(file, "rb") as stream:
            stream.seek(table.offsets[i])
            left = table.nbytes[i]
            while left > 0:  # (in pieces: a large model's projection is hundreds of MB)
                piece = stream.read(min(left, 1 << 24))
                if not piece:
                    return None
                digest.update(piece)
                left -= len(piece)
        return digest.digest()
    except (NandoctorError, OSError, ValueError, AttributeError):
        return None


__all__ = ["problems"]
