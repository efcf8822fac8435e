"""What Hugging Face loaders read from a folder, so that a scan reads the same files.

Three rules, each checked against the loaders' own code (transformers 5.x
``modeling_utils._get_resolved_checkpoint_files`` and ``_add_variant``; PEFT
``load_peft_weights``; sentence-transformers ``modules.json``; diffusers
``model_index.json``):

- a ``.bin`` is passed over only for the safetensors weights **of the same
  name**: ``pytorch_model[.variant].bin`` (and its shards and index) for
  ``model[.variant].safetensors`` or ``model.safetensors.index[.variant].json``;
  ``adapter_model.bin`` for ``adapter_model.safetensors``;
  ``diffusion_pytorch_model[.variant].bin`` likewise. Any other safetensors file
  (``ema.safetensors``) hides nothing: transformers would still load the ``.bin``.
- ``config.json``'s ``transformers_weights`` names the file transformers loads
  (a ``*.safetensors``, a ``*.safetensors.index.json`` or ``adapter_model.bin``);
  it must lie inside the folder (transformers refuses ``..`` too).
- ``modules.json`` (sentence-transformers: ``2_Dense/``, ``1_Pooling/``) and
  ``model_index.json`` (diffusers: ``unet/``, ``vae/`` …) name subfolders whose
  weights the loader reads: they are part of the checkpoint.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from nandoctor import access
from nandoctor.checkpoint.jsonfiles import read_json
from nandoctor.checkpoint.steps import MEGATRON_FILES
from nandoctor.errors import UnreadablePathError
from nandoctor.model import ScanProblem

CONFIG = "config.json"
TRAINER_STATE = "trainer_state.json"  # a transformers Trainer checkpoint's state and log
EXPLICIT_KEY = "transformers_weights"
MANIFESTS = ("modules.json", "model_index.json")

# The torch weight name → the safetensors name its loader prefers when both are there.
_SAFE_NAME = {"pytorch_model": "model", "adapter_model": "adapter_model", "diffusion_pytorch_model": "diffusion_pytorch_model"}
_BASES = "|".join(_SAFE_NAME)
# pytorch_model.bin, pytorch_model.fp16.bin, pytorch_model-00001-of-00002.bin, pytorch_model.fp16-00001-of-00002.bin
_BIN_FILE = re.compile(rf"^(?P<base>{_BASES})(?:\.(?P<variant>[^.]+?))?(?:-\d+-of-\d+)?\.bin$")
# pytorch_model.bin.index.json, pytorch_model.bin.index.fp16.json (``_add_variant`` puts it before .json)
_BIN_INDEX = re.compile(rf"^(?P<base>{_BASES})\.bin\.index(?:\.(?P<variant>[^.]+))?\.json$")
# Every index name a save can produce, variants included.
INDEX_FILE = re.compile(r"^.+\.(?:safetensors|bin)\.index(?:\.[^./]+)?\.json$")


def is_index_name(name: str) -> bool:
    return INDEX_FILE.match(name) is not None


_INDEX_PARTS = re.compile(r"^(?P<base>.+)\.(?P<ext>safetensors|bin)\.index(?:\.(?P<variant>[^./]+))?\.json$")


# What from_pretrained looks for in a local folder, in order (transformers' _get_resolved_checkpoint_files): the first
# one there is all it reads (its single file before its index, safetensors before torch)
LOOKED_FOR = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def first_looked_for(names: set[str]) -> str | None:
    """The weights file of LOOKED_FOR that from_pretrained reads among a folder's entry ``names``; None for none."""
    return next((name for name in LOOKED_FOR if name in names), None)


def single_file_of(index_name: str) -> str | None:
    """The one-file weights a loader reads *instead of* the shard index ``index_name`` when both are in a
    folder: transformers' ``from_pretrained`` looks for ``model[.variant].safetensors`` before
    ``model.safetensors.index[.variant].json`` (and ``pytorch_model.bin`` before its index), so a stale
    ``model.safetensors`` beside shards is what loads. None for a name that is not an index."""
    match = _INDEX_PARTS.match(index_name)
    if match is None:
        return None
    variant = f".{match['variant']}" if match["variant"] else ""
    return f"{match['base']}{variant}.{match['ext']}"


# Who reads each torch weight name, each with torch.load(weights_only=True): transformers' load_state_dict,
# PEFT's torch_load, diffusers' load_state_dict
_BIN_LOADERS = {"pytorch_model": "transformers' from_pretrained", "adapter_model": "PEFT's from_pretrained",
                "diffusion_pytorch_model": "diffusers' from_pretrained"}


def weights_only_loader(name: str) -> str | None:
    """The Hugging Face loader, in words, that reads the torch file ``name`` (``pytorch_model.bin``, its shards
    and variants, ``adapter_model.bin``, ``diffusion_pytorch_model.bin``) with ``torch.load(weights_only=True)``;
    None for any other name (a training ``.pt``, a ``.ckpt``: their loaders choose)."""
    match = _BIN_FILE.match(name)
    return None if match is None else _BIN_LOADERS[match["base"]]


# DeepSpeed's own files, which its checkpoint engine loads with torch.load(weights_only=False) (TorchCheckpointEngine):
# a global torch's default refuses in them is no matter to their loader
_DEEPSPEED_FILE = re.compile(r"^(?:\w+_)?(?:zero_pp_rank_\d+_)?mp_rank_\d+_(?:optim|model)_states\.pt$")


def unrestricted_loader(name: str) -> str | None:
    """The loader, in words, that reads the torch file ``name`` with ``torch.load(weights_only=False)`` (DeepSpeed's
    ZeRO and model-states files, Megatron's per-rank ``model_optim_rng.pt`` and ``distrib_optim.pt``); None for any
    other name."""
    if _DEEPSPEED_FILE.match(name):
        return "DeepSpeed's checkpoint engine"
    return "Megatron's checkpoint loader" if name in MEGATRON_FILES else None


def hidden_by(name: str, folder: Path) -> str | None:
    """The safetensors file (or index) in ``folder`` that a loader reads instead of the torch weights
    ``name``, or None when the loader would read ``name`` itself."""
    match = _BIN_FILE.match(name) or _BIN_INDEX.match(name)
    if match is None:
        return None
    safe, variant = _SAFE_NAME[match["base"]], match["variant"]
    single = f"{safe}.{variant}.safetensors" if variant else f"{safe}.safetensors"
    index = f"{safe}.safetensors.index.{variant}.json" if variant else f"{safe}.safetensors.index.json"
    for candidate in (single, index):
        if (folder / candidate).is_file():
            return candidate
    return None


def inside(root: Path, rel: str) -> Path | None:
    """``root / rel`` when it stays inside ``root`` (lexically, as transformers checks, and once links
    are followed, except into a Hugging Face cache's own blobs); None when it escapes."""
    from nandoctor.checkpoint.hubcache import blob_roots

    if not rel or os.path.isabs(rel):
        return None
    candidate = root / rel
    base = os.path.abspath(root)
    if os.path.commonpath([base, os.path.abspath(candidate)]) != base:
        return None
    try:
        resolved = candidate.resolve()
        allowed = (root.resolve(), *blob_roots(root))
    except (OSError, RuntimeError):  # RuntimeError: a link loop, before Python 3.13
        return None
    if not any(resolved == a or a in resolved.parents for a in allowed):
        return None
    # (`sub/../model.safetensors` is the folder's model.safetensors: named so, or a scan reads the one file twice,
    # doubling its counts, an adversarial round's; lexically only where that is the same file, as a link may make
    # `link/..` another folder)
    plain = Path(os.path.normpath(candidate))
    return plain if plain != candidate and os.path.realpath(plain) == str(resolved) else candidate


@dataclass
class Explicit:
    """What ``config.json`` says about the weights: the file it names, or why that is refused."""

    path: Path | None = None
    problems: list[ScanProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def explicit_weights(root: Path) -> Explicit:
    """The file ``config.json``'s ``transformers_weights`` names, checked as transformers checks it."""
    config = root / CONFIG
    out = Explicit()
    if not config.is_file():
        return out
    try:
        data = read_json(config)
    except (OSError, ValueError) as exc:  # transformers could not read it either: no model loads from here
        out.notes.append(f"{CONFIG} cannot be read ({exc}); whether it names the weights is unknown")
        return out
    if not isinstance(data, dict) or EXPLICIT_KEY not in data:
        return out
    value = data[EXPLICIT_KEY]
    where = str(config)
    if not isinstance(value, str) or not (
        value.endswith((".safetensors", ".safetensors.index.json")) or value == "adapter_model.bin"
    ):
        out.problems.append(ScanProblem(
            where, f"{EXPLICIT_KEY} is {value!r}: not a safetensors file or index, so transformers refuses to load it",
            f"set {EXPLICIT_KEY} to the weights' file name, or remove it",
        ))
        return out
    unusable = access.unusable_name(value)
    path = inside(root, value) if unusable is None else None
    if unusable is not None:
        out.problems.append(ScanProblem(where, f"{EXPLICIT_KEY} {value[:60]!r} is not a valid file name ({unusable}); "
                                        "refused", f"set {EXPLICIT_KEY} to the weights' file name, or remove it"))
    elif path is None:
        out.problems.append(ScanProblem(
            where, f"{EXPLICIT_KEY} {value!r} points outside the checkpoint folder; refused",
            f"set {EXPLICIT_KEY} to a file inside the folder",
        ))
    elif isinstance(found := _status(path), ScanProblem):
        out.problems.append(found)
    elif found is None:
        out.problems.append(ScanProblem(where, f"{EXPLICIT_KEY} names {value!r}, which is missing",
                                        "copy the weights it names into the folder"))
    elif not stat.S_ISREG(found.st_mode):
        out.problems.append(ScanProblem(str(path), "named by transformers_weights but not a regular file; refused"))
    else:
        out.path = path
        out.notes.append(f"{CONFIG} names the weights: {value} (transformers_weights)")
    return out


@dataclass
class Subfolders:
    """Subfolders a loader's manifest names (to scan with the checkpoint), and what was wrong."""

    folders: list[Path] = field(default_factory=list)
    problems: list[ScanProblem] = field(default_factory=list)


def _manifest_paths(data: object, manifest: str) -> list[str]:
    if manifest == "modules.json" and isinstance(data, list):
        return [m["path"] for m in data if isinstance(m, dict) and isinstance(m.get("path"), str) and m["path"]]
    if manifest == "model_index.json" and isinstance(data, dict):
        # {"unet": ["diffusers", "UNet2DConditionModel"], "_class_name": …}: a component per subfolder
        return [k for k, v in data.items() if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[0]]
    return []


def manifest_subfolders(root: Path) -> Subfolders:
    """The subfolders ``modules.json`` / ``model_index.json`` name; one that escapes the folder is refused."""
    out = Subfolders()
    for manifest in MANIFESTS:
        path = root / manifest
        if not path.is_file():
            continue
        try:
            data = read_json(path)
        except (OSError, ValueError):
            continue  # the loader cannot read it either
        for rel in _manifest_paths(data, manifest):
            sub = inside(root, rel)
            if sub is None:
                out.problems.append(ScanProblem(
                    str(path), f"names the subfolder {rel!r}, which lies outside the checkpoint folder; refused",
                    f"fix {manifest} so every module is a folder inside the checkpoint",
                ))
            elif isinstance(found := _status(sub), ScanProblem):
                out.problems.append(found)
            elif found is not None and stat.S_ISDIR(found.st_mode) and sub.resolve() != root.resolve() \
                    and sub not in out.folders:
                out.folders.append(sub)
    return out


def _status(path: Path) -> os.stat_result | ScanProblem | None:
    """``path``'s status (None: not there), or the problem of a path the file system will not show."""
    try:
        return access.status(path)
    except UnreadablePathError as exc:
        return ScanProblem(exc.path, exc.reason, exc.hint)
