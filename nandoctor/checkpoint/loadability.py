"""Whether a checkpoint folder loads as what it is: what is missing beside tensors that all scan healthy.

A folder can hold nothing but healthy tensors and still not load, and CLEAN must mean the model loads:

- trainer state without the model: ``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth`` and
  ``trainer_state.json`` left, ``model.safetensors`` gone. ``from_pretrained`` finds no weights file, and
  Trainer's ``resume_from_checkpoint`` says "Can't find a valid checkpoint";
- numbered shards (``model-00001-of-00002.safetensors``) without the index that lists them: transformers looks
  for the index or a single ``model.safetensors`` and finds neither;
- a Trainer checkpoint without ``config.json`` (``adapter_config.json`` for adapter weights):
  ``from_pretrained`` says "Unrecognized model". Only where something says the model is a transformers model
  (a ``generation_config.json`` beside the weights, a ``config.json`` in the run's other checkpoints or at its
  top): Trainer saves a model that is not a transformers model as a bare state dict, with no config at all.

Beside those, the config files the model is built from (loadconfig.py: config.json that is not JSON, a dtype
transformers refuses, NaN in config.json or generation_config.json), and tensors stored as F4 where no quantizer
unpacks them (:func:`uncastable`, after the files are read: torch loads F4 as ``float4_e2m1fn_x2``, which it
cannot cast to the model's dtype).

Each is a problem (exit 3) naming what is missing and what to do. The shard and config rules apply to folders a
Hugging Face loader reads (a ``config.json``, or trainer files); a folder of weights alone is not judged here:
nandoctor cannot know how it is loaded. Weights kept as accelerate's FSDP state (``pytorch_model_fsdp_0/``) or
DeepSpeed ZeRO partitions (``global_stepN/``) are weights (scanned), which ``from_pretrained`` cannot read
directly: a note says how to consolidate them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nandoctor import access
from nandoctor.checkpoint import (
    adapterbeside,
    adapterkeys,
    adapters,
    architecture,
    layout,
    loadconfig,
    loaders,
    peftload,
    tokenizerfiles,
    zeronorm,
)
from nandoctor.checkpoint.jsonfiles import read_json
from nandoctor.checkpoint.roles import file_role
from nandoctor.checkpoint.steps import checkpoints_in, step_of
from nandoctor.checkpoint.trainlog import CUT_SHORT, unresumable
from nandoctor.dtypes import DTYPES, INTEGERS, TORCH_UNCASTABLE_SAFETENSORS
from nandoctor.errors import UnreadablePathError
from nandoctor.model import RefTable, ScanProblem, TensorRef
from nandoctor.verdict import CONFIG_KIND, UNLOADABLE_KIND, UNREADABLE_KIND, family_of
from nandoctor.wording import first_few, path_word

GENERATION_CONFIG, ADAPTER_CONFIG = loadconfig.GENERATION_CONFIG, loadconfig.ADAPTER_CONFIG
# Weights transformers' from_pretrained reads at a folder's top (one file, numbered shards, their index), and
# PEFT's adapter weights, which need adapter_config.json instead of config.json
_TRANSFORMERS_WEIGHTS = re.compile(r"^(?:model|pytorch_model)(?:-\d+-of-\d+)?\.(?:safetensors|bin)$")
_ADAPTER_WEIGHTS = re.compile(r"^adapter_model\.(?:safetensors|bin)$")
_MAX_SHOWN = 4


def state_only(entries: list[Path]) -> list[str]:
    """The trainer-state files among a folder's ``entries`` when it holds such files (optimizer, scheduler,
    RNG, scaler state; accelerate's ``optimizer_0/``) but no model weights; empty otherwise. By name: a
    model file that cannot be read is still the model's (its scan says why it cannot be read)."""
    if entries and layout.model_in_subfolder(entries[0].parent, entries):
        return []  # the model: FSDP sharded state, DeepSpeed ZeRO partitions
    suffixes = layout.weight_suffixes()
    state: list[str] = []
    for entry in entries:
        name = entry.name
        if name.startswith(".") or name in layout.NOT_WEIGHTS:
            continue
        if loaders.is_index_name(name):
            return []  # the model, sharded
        if entry.suffix.lower() in suffixes:
            if file_role(name) is None:
                return []
            state.append(name)
        elif layout.FSDP_OPTIMIZER_FOLDER.match(name):
            state.append(f"{name}/")
    weights = [e for e in entries if e.suffix.lower() in suffixes and not e.name.startswith(".")]
    if state and layout.models_beside_state(entries, weights):
        return []  # accelerate's save hook wrote the model into a subfolder (diffusers' unet/): scanned with it
    return sorted(state)


def problems(files: layout.CheckpointFiles) -> tuple[list[ScanProblem], list[str]]:
    """(problems, notes) about whether the folder ``files.root`` loads as the checkpoint it holds; nothing for
    a single file."""
    root = files.root
    try:
        if not access.is_dir(root):
            return _final_model_file(root), []
        entries = access.listing(root)
    except UnreadablePathError:
        return [], []  # the layout has said so already
    names = {e.name for e in entries}
    found = loadconfig.problems(root, model=_model_weights(names), adapter=any(_ADAPTER_WEIGHTS.match(n) for n in names))
    state = state_only(entries)
    if state and not _model_elsewhere(files):
        found.append(ScanProblem(
            str(root),
            f"holds trainer state ({first_few(state, _MAX_SHOWN)}) but no model weights: from_pretrained finds no model.safetensors "
            "or pytorch_model.bin, and Trainer's resume_from_checkpoint finds no valid checkpoint",
            "the model file was deleted or never written: copy model.safetensors (or the shards and their index) "
            "back from where the checkpoint was saved, or use an earlier checkpoint",
            kind=UNLOADABLE_KIND,
        ))
    # (a checkpoint-N folder's, which a resume reads: a final model's trainer_state.json is no resume's business)
    resume = unresumable(root / loaders.TRAINER_STATE) if loaders.TRAINER_STATE in names and step_of(root) is not None else None
    if resume is not None:  # (a file that parses is read: its values are the trouble, BAD CONFIG as a config's are)
        found.append(ScanProblem(
            str(root / loaders.TRAINER_STATE), f"{resume.words}; the weights were read and judged on their own",
            f"{resume.fix}, or load the weights alone (from_pretrained reads no trainer state)",
            kind=UNREADABLE_KIND if resume is CUT_SHORT else CONFIG_KIND))
    partition_problems, notes = _partitions_only(files, entries, names)
    found += partition_problems
    notes += _base_model_note(root, names)
    if ADAPTER_CONFIG in names and loaders.CONFIG in names and _model_weights(names) and _transformers_config(root):
        found += adapterbeside.problems(root, names)  # (from_pretrained puts that adapter on this model)
    if _model_weights(names):  # (the tokenizer saved beside the model: tokenizerfiles.py)
        tokenizer_problems, tokenizer_notes = _tokenizer(root)
        found += tokenizer_problems
        notes += tokenizer_notes
    trainer = loaders.TRAINER_STATE in names or _run_has(root, loaders.TRAINER_STATE)
    # save_pretrained writes generation_config.json beside config.json (a generative transformers model): the
    # one without the other is a model folder that lost its config, Trainer's or not
    saved = GENERATION_CONFIG in names and _model_weights(names)
    if not (trainer or saved or loaders.CONFIG in names or any(file_role(n) is not None for n in names)):
        return found, notes  # weights alone: how they are loaded is not for nandoctor to guess
    found += _unindexed_shards(files) + _index_without_metadata(files, names)
    unnamed, variant_notes = _weights_under_other_names(files, names)
    found += unnamed
    notes += variant_notes
    if trainer or saved:
        config_problems, config_notes = _config(root, names, trainer)
        found += config_problems
        notes += config_notes
    return found, notes


_NUMBERED = re.compile(r"^(?:model|pytorch_model)-\d+-of-\d+\.(?:safetensors|bin)$")
_VARIANT = re.compile(r"^(?:model|pytorch_model)\.(?P<variant>[\w-]+)\.(?:safetensors|bin)$|"
                      r"^(?:model\.safetensors|pytorch_model\.bin)\.index\.(?P<indexed>[\w-]+)\.json$")


def _weights_under_other_names(files: layout.CheckpointFiles, names: set[str]) -> tuple[list[ScanProblem], list[str]]:
    """A transformers model folder (config.json with a ``model_type``) whose weights lie in files from_pretrained
    never opens (``Model.safetensors``, ``pytorch_model.safetensors``, ``weights.pt``: it looks for
    loaders.LOOKED_FOR and fails, "no file named model.safetensors"): NOT LOADABLE naming them (an adversarial round's
    read CLEAN). Weights of a variant alone (``model.fp16.safetensors``) load with ``variant="fp16"`` only: a note."""
    root = files.root
    if (loaders.CONFIG not in names or loaders.first_looked_for(names) is not None
            or any(_NUMBERED.match(n) or loaders.is_index_name(n) for n in names)  # (shards: _unindexed_shards)
            or any(_ADAPTER_WEIGHTS.match(n) for n in names) or layout.model_in_subfolder(root, access.listing(root))):
        return [], []
    if not _transformers_config(root):
        return [], []  # (not a transformers config: diffusers' _class_name, timm's architecture)
    weights = sorted(f.name for f in files.files if f.parent == root and file_role(f.name) is None
                     and f.suffix.lower() in (".safetensors", ".bin", ".pt", ".pth"))
    if not weights:
        return [], []
    variants = sorted({m["variant"] or m["indexed"] for n in names if (m := _VARIANT.match(n))})
    if variants:
        return [], [f"{root}: the weights are a variant's ({', '.join(weights[:2])}): from_pretrained loads them only "
                    f"when asked for it (from_pretrained(..., variant={variants[0]!r})), and fails without"]
    wanted = "model.safetensors" if weights[0].endswith(".safetensors") else "pytorch_model.bin"
    return [ScanProblem(
        str(root), f"holds {first_few(weights, _MAX_SHOWN)} beside config.json, a name from_pretrained never opens: it "
        f"looks for {', '.join(loaders.LOOKED_FOR)} and fails (\"no file named model.safetensors\")",
        f"rename {weights[0]} to {wanted}" if len(weights) == 1 else
        "save the model again with save_pretrained (or rename its files to those from_pretrained looks for)",
        kind=UNLOADABLE_KIND)], []


def _transformers_config(root: Path) -> bool:
    """Whether ``root``'s config.json is a transformers model's (an object naming its ``model_type``)."""
    config = loadconfig.read_object(root / loaders.CONFIG)
    return isinstance(config, dict) and isinstance(config.get("model_type"), str)


def adapter_base(root: Path, names: set[str] | None = None) -> str | None:
    """The base model a folder holding a PEFT adapter alone (no model weights beside it) is applied to, as its
    adapter_config.json names it; None for any other folder (``names``: its entries, when known)."""
    if names is None:
        try:
            if not access.is_dir(root):
                return None
            names = {e.name for e in access.listing(root)}
        except UnreadablePathError:
            return None
    if not any(_ADAPTER_WEIGHTS.match(n) for n in names) or _model_weights(names):
        return None
    config = loadconfig.read_object(root / ADAPTER_CONFIG)
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    return base if isinstance(base, str) and base else None


def _base_model_note(root: Path, names: set[str]) -> list[str]:
    """A PEFT adapter is applied to the base model its adapter_config.json names, which this scan does not read:
    NaN in the base makes the adapted model's generate fail as surely as NaN in the adapter."""
    base = adapter_base(root, names)
    if base is None or len(base) > 4096:  # (no path that long loads: a crafted value, said by the verdict line alone)
        return []
    return [f"{root / ADAPTER_CONFIG}: the adapter is applied to the base model {base!r}, {BASE_NOT_READ}: scan it "
            f"too (nandoctor scan {path_word(base)})"]


# the words of that note (a base that is local is scanned with the adapter, which drops it: nandoctor/adapterbase.py)
BASE_NOT_READ = "which this scan does not read"


def _final_model_file(file: Path) -> list[ScanProblem]:
    """A Lightning run's final Hugging Face model (``model.save_pretrained(run_folder)``: a model.safetensors
    beside config.json among the step files) is scanned as its weight file, the run's ``final`` row; the config
    files from_pretrained reads with it are judged as a model folder's are (they went unread)."""
    if not _run_final_file(file):
        return []
    return loadconfig.problems(file.parent, model=True, adapter=False) + _tokenizer(file.parent)[0]


def _run_final_file(file: Path) -> bool:
    """Whether ``file`` is a step-file run's final Hugging Face model (a model.safetensors or pytorch_model.bin
    beside config.json among the step files), which from_pretrained of the run folder reads."""
    if not _TRANSFORMERS_WEIGHTS.match(file.name) or not (file.parent / loaders.CONFIG).is_file():
        return False
    from nandoctor.checkpoint.stepfiles import step_folder

    run = step_folder(file.parent)
    return run is not None and run.final is not None and run.final.name == file.name


def model_folder(files: layout.CheckpointFiles) -> Path:
    """The folder from_pretrained reads for ``files``: its root, or for a step-file run's final model file, the run
    folder holding it and its config.json (a trial: a DDP-wrapped final pytorch_model.bin passed in its run and was
    NOT LOADABLE alone)."""
    root = files.root
    try:
        return root.parent if not access.is_dir(root) and _run_final_file(root) else root
    except UnreadablePathError:
        return root


def _tokenizer(root: Path) -> tuple[list[ScanProblem], list[str]]:
    config = loadconfig.read_object(root / loaders.CONFIG)
    return tokenizerfiles.check(root, config if isinstance(config, dict) else None)


def _model_weights(names: set[str]) -> bool:
    """Whether the folder entries ``names`` hold weights transformers' from_pretrained reads (one file, numbered
    shards, an index)."""
    return any(_TRANSFORMERS_WEIGHTS.match(n) or loaders.is_index_name(n) for n in names)


def uncastable(files: layout.CheckpointFiles, refs_by_file: dict[Path, Sequence[TensorRef]]) -> list[ScanProblem]:
    """Tensors of the folder's top-level safetensors weights stored in a dtype that torch loads but cannot cast
    (F4: ``dtypes.TORCH_UNCASTABLE_SAFETENSORS``), in a folder from_pretrained reads whose config.json names no
    quantizer: from_pretrained casts each tensor into its parameter and fails. After the files are read (the
    dtypes are in their headers); nothing for a single file or a folder without config.json (their loader may
    unpack them)."""
    found: list[ScanProblem] = []
    for file, refs in _cast_by_from_pretrained(files, refs_by_file):
        if file.suffix != ".safetensors" or not isinstance(refs, RefTable):
            continue  # (torch files hold no F4: torch's float4_e2m1fn_x2 is read as its bytes)
        f4 = [n for n, dtype in zip(refs.names, refs.dtypes) if dtype in TORCH_UNCASTABLE_SAFETENSORS]
        if not f4:
            continue
        if not found and loadconfig.quantized(files.root):
            return []  # a quantizer unpacks fp4 itself (transformers' fp8 one: MXFP4 experts)
        found.append(ScanProblem(
            str(file),
            f"{len(f4)} tensor(s) of dtype F4 ({first_few(f4, 4, quoted=True)}): safetensors.torch loads F4 as "
            "float4_e2m1fn_x2 with half the last dimension (two 4-bit codes a byte), which torch cannot cast to any "
            "other dtype (\"copy_kernel\" not implemented), so from_pretrained fails on them; config.json names no "
            "quantization_config that would unpack them",
            "store those tensors in the model's dtype (BF16, F16 or F32), or, for a quantized checkpoint, keep the "
            "quantization_config in config.json that says how to unpack them",
            kind=UNLOADABLE_KIND,
        ))
    return found


def zero_norm_inputs(files: layout.CheckpointFiles, refs_by_file: dict[Path, Sequence[TensorRef]]) -> list[ScanProblem]:
    """BAD CONFIG where config.json's norm epsilon of 0 meets token embedding rows of zeros (zeronorm.py): the
    inputs holding those tokens (every padded batch, for the pad token's) compute NaN."""
    chosen = _cast_by_from_pretrained(files, refs_by_file)
    if not chosen:
        return []
    path = model_folder(files) / loaders.CONFIG
    config = loadconfig.read_object(path)
    return zeronorm.problems(path, config, [refs for _, refs in chosen]) if isinstance(config, dict) else []


@dataclass(frozen=True)
class StoredWeights:
    """The top-level weights from_pretrained reads in a folder, as columns (a million tensors' names are a million
    strings: gathered once for the checks below)."""

    names: list[str]
    shapes: list[tuple[int, ...]]
    dtypes: list[str]
    files: list[str]  # (each file's one string, repeated)


# What every quantizer loads as stored (a norm, an embedding, a skipped module) or keeps the shape of (FP8): the
# tensors whose shapes a model built without the quantizer still describes. A quantizer packs the rest its own way (bitsandbytes' 4-bit U8
# [n/2, 1], BitNet's 2-bit U8, GPTQ's I32 qweight), so their shapes say nothing about config.json.
_UNPACKED = frozenset({"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"})  # (FP8 weights keep their shapes)


def from_pretrained_weights(
    files: layout.CheckpointFiles, refs_by_file: dict[Path, Sequence[TensorRef]]
) -> StoredWeights:
    """The names, shapes and dtypes of the top-level weights from_pretrained reads in the folder (empty when it
    reads none)."""
    return _stored(_cast_by_from_pretrained(files, refs_by_file))


def architecture_problems(files: layout.CheckpointFiles, stored: StoredWeights) -> tuple[list[ScanProblem], list[str]]:
    """(problems, notes): from_pretrained's weights (:func:`from_pretrained_weights`) whose shapes the folder's
    config.json contradicts (architecture.py). In a quantized folder only the tensors a quantizer leaves unpacked
    are compared, and weights the model builds that are stored under a quantizer's own names are not missing."""
    if not stored.names:
        return [], []
    folder = model_folder(files)
    config = loadconfig.read_object(folder / loaders.CONFIG)
    if not isinstance(config, dict):
        return [], []  # (an unreadable or invalid config.json is its own problem)
    if not loadconfig.quantized(folder):
        return architecture.problems(folder, config, stored.names, stored.shapes, stored.files)
    kept = [i for i, dtype in enumerate(stored.dtypes) if dtype in _UNPACKED]
    return architecture.problems(folder, config, [stored.names[i] for i in kept], [stored.shapes[i] for i in kept],
                                 [stored.files[i] for i in kept], quantized=True)


# Prefixes a training wrapper puts before every parameter name: DDP / DataParallel, torch.compile
_WRAPPERS = ("module.", "_orig_mod.")
_WRAPPED_BY = {"module": "DDP or DataParallel", "_orig_mod": "torch.compile"}


def wrapped_names(files: layout.CheckpointFiles, names: Sequence[str]) -> list[ScanProblem]:
    """NOT LOADABLE for from_pretrained's weights (``names``: :func:`from_pretrained_weights`) whose every name
    carries a training wrapper's prefix (``torch.save(ddp_model.state_dict())``, a compiled model's):
    from_pretrained strips only the model's own base prefix, finds none of the names it builds, and initializes
    every weight at random."""
    if not names or not all(name.startswith(_WRAPPERS) for name in names):
        return []
    prefix, rest = "", names[0]
    while rest.startswith(_WRAPPERS):  # (module._orig_mod.: a compiled model inside DDP)
        wrapper = next(w for w in _WRAPPERS if rest.startswith(w))
        prefix, rest = prefix + wrapper, rest[len(wrapper):]
    return [ScanProblem(
        str(files.root), f"every weight name starts with a training wrapper's prefix ({names[0]!r}: {prefix!r} from "
        f"{' inside '.join(_WRAPPED_BY[w] for w in reversed(prefix.split('.')) if w)}): from_pretrained finds none of the names "
        "its model has and initializes every weight at random, so the model is not this checkpoint",
        f"save the unwrapped model (model.module for DDP, model._orig_mod for torch.compile: "
        f"unwrapped.save_pretrained(...)), or rename the tensors without {prefix!r}", kind=UNLOADABLE_KIND)]


def adapter_problems(files: layout.CheckpointFiles, refs_by_file: dict[Path, Sequence[TensorRef]]) -> list[ScanProblem]:
    """A PEFT adapter at the folder's top whose LoRA tensors are not all loaded as stored (adapterkeys.py), whose
    LoRA ranks or target modules its adapter_config.json contradicts (adapters.py), or that lacks modules PEFT
    builds LoRA on in its base model (peftload.py)."""
    stored = [(path, refs) for path, refs in refs_by_file.items()
              if path.parent == files.root and _ADAPTER_WEIGHTS.match(path.name)]
    if not stored:
        return []
    config = loadconfig.read_object(files.root / ADAPTER_CONFIG)
    if not isinstance(config, dict):
        return []  # (missing or invalid: its own problem)
    weights = _stored(stored)
    return (empty_weights(files.root, weights) or adapterkeys.problems(files.root, config, weights.names)
            or adapters.rank_problems(files.root, config, weights.names, weights.shapes)
            or adapters.config_problems(files.root, config, weights.names)
            or peftload.problems(files.root, config, weights.names, weights.shapes))  # (the one that may build: last)


def empty_weights(root: Path, stored: StoredWeights, loader: str = "PEFT") -> list[ScanProblem]:
    """NOT LOADABLE where LoRA tensors are stored with no elements: what a ZeRO-3 or FSDP save writes of parameters
    it did not gather (an adapter's every lora_A/lora_B); the loader's model holds them full-size, so it refuses the
    file ("size mismatch … torch.Size([0])"). A LoRA tensor is never empty by design (a model's weight may be:
    DINOv3's register_tokens of num_register_tokens 0; the built model judges those, architecture.py)."""
    empty = [name for name, shape, dtype in zip(stored.names, stored.shapes, stored.dtypes)
             if 0 in shape and DTYPES[dtype].can_hold_nonfinite and adapters.is_lora(name)]
    if not empty:
        return []
    return [ScanProblem(
        str(root), f"{len(empty)} weight(s) stored empty ({first_few(empty, 3)}): {architecture.UNGATHERED}; {loader} "
        "refuses them (size mismatch), so it does not load", architecture.GATHER_HINT, kind=UNLOADABLE_KIND)]



def _stored(weights: Sequence[tuple[Path, Sequence[TensorRef]]]) -> StoredWeights:
    """Every tensor's name, shape and dtype in ``weights``' files, read from their columns (no object per tensor)."""
    stored = StoredWeights([], [], [], [])
    for file, refs in weights:
        table = refs if isinstance(refs, RefTable) else RefTable.of(refs)
        stored.names.extend(table.names)
        stored.shapes.extend(table.shapes)
        stored.dtypes.extend(table.dtypes)
        stored.files.extend([str(file)] * len(table.names))
    return stored


def cast_to_float(files: layout.CheckpointFiles, refs_by_file: dict[Path, Sequence[TensorRef]]) -> list[TensorRef]:
    """Integer tensors that from_pretrained casts into float parameters, in a folder it reads whose model is not
    quantized (loadconfig.quantized): a model weight (a ``….weight`` or ``….bias``, or one whose siblings in the
    other layers are float) stored as an integer dtype. transformers casts a stored tensor to its parameter's
    dtype, so the model computes with whole numbers (an int8 weight of a quantized checkpoint that lost its
    quantization_config gave NaN logits in a trial), and an I32 100000 loads as Inf in a float16 model: such a
    folder is NOT LOADABLE (:func:`integer_weights`), and the scan also judges each such tensor as the float it
    becomes (engine/intcast.py). Integer buffers (``position_ids``) keep their dtype and are left alone, and so
    is a single file or a folder without config.json (their loader is not known)."""
    found: list[TensorRef] = []
    for _, refs in _cast_by_from_pretrained(files, refs_by_file):
        table = refs if isinstance(refs, RefTable) else RefTable.of(refs)
        if _WHOLE_NUMBERS.isdisjoint(table.dtypes):
            continue  # (one C pass: a float model's files hold no integer tensor)
        floats = {family_of(n) for n, d in zip(table.names, table.dtypes) if DTYPES[d].can_hold_nonfinite}
        found += [table[i] for i, (name, dtype, role) in enumerate(zip(table.names, table.dtypes, table.roles))
                  if dtype in _WHOLE_NUMBERS and role == "weight"
                  and (name.rsplit(".", 1)[-1] in ("weight", "bias") or family_of(name) in floats)]
    return found if found and not loadconfig.quantized(files.root) else []  # a quantizer loads them its own way


# (a BOOL weight too: a mask saved in place of a weight, `t > 0` in a conversion script, loads as 0.0/1.0: a trial's
# was CLEAN where the same weight as U8 was NOT LOADABLE)
_WHOLE_NUMBERS = INTEGERS | {"BOOL"}


def integer_weights(root: Path, cast: Sequence[TensorRef]) -> list[ScanProblem]:
    """The NOT LOADABLE problem of the model weights :func:`cast_to_float` found stored as integers."""
    if not cast:
        return []
    names = [ref.name for ref in cast]
    dtypes = sorted({ref.dtype for ref in cast})
    return [ScanProblem(
        str(root), f"{len(names)} model weight(s) stored as integers ({', '.join(dtypes)}: {first_few(names, 3)}) "
        "where config.json names no quantizer: from_pretrained casts them to the model's float dtype as they are, "
        "so the model computes with whole numbers (and values past the float dtype's range become Inf)",
        "a quantized checkpoint needs its quantization_config in config.json (or quantize_config.json beside it); "
        "otherwise save the float weights from their source", kind=UNLOADABLE_KIND)]




def _cast_by_from_pretrained(
    files: layout.CheckpointFiles, refs_by_file: dict[Path, Sequence[TensorRef]]
) -> list[tuple[Path, Sequence[TensorRef]]]:
    """The weight files at the top of a folder from_pretrained reads (a config.json beside model weights): each
    stored tensor is cast into its parameter's dtype there, unless config.json names a quantizer (which the
    callers ask only once they found something: loadconfig.quantized reads config.json). Nothing for a single
    file or a folder without config.json."""
    root = model_folder(files)
    if root != files.root:  # (a run's final model file: the one file from_pretrained reads there)
        return [(file, refs) for file, refs in refs_by_file.items() if file == files.root]
    try:
        names = {e.name for e in access.listing(root)} if access.is_dir(root) else set()
    except UnreadablePathError:
        return []
    if loaders.CONFIG not in names or not _model_weights(names):
        return []
    chosen = [(file, refs) for file, refs in refs_by_file.items()
              if file.parent == root and file.suffix in (".safetensors", ".bin") and file_role(file.name) is None]
    loaded = _first_found(files, names)
    return chosen if loaded is None else [(file, refs) for file, refs in chosen if file in loaded]


def _index_without_metadata(files: layout.CheckpointFiles, names: set[str]) -> list[ScanProblem]:
    """NOT LOADABLE when the shard index from_pretrained reads (loaders.first_looked_for) has no ``metadata``
    object: transformers takes ``index["metadata"]`` and adds to it (KeyError, TypeError; an adversarial round's
    hand-written index of a weight_map alone read CLEAN). (An index that cannot be read is the layout's problem.)"""
    name = loaders.first_looked_for(names)
    if name is None or not loaders.is_index_name(name) or loaders.CONFIG not in names:
        return []
    if all(index.has_metadata for index in files.indexes if index.path.name == name):
        return []
    return [ScanProblem(
        str(files.root / name), "has no \"metadata\" object beside its weight_map: transformers' from_pretrained reads "
        "index[\"metadata\"] and fails (KeyError) before it loads a weight",
        'add "metadata": {"total_size": <the bytes of all shards>} to the index (save_pretrained writes it)',
        kind=UNLOADABLE_KIND)]


def _first_found(files: layout.CheckpointFiles, names: set[str]) -> set[Path] | None:
    """The weight files from_pretrained reads at the folder's top (loaders.first_looked_for: the file, or the shards its
    index lists; a model.safetensors holding part of a model beside the whole model's shards loads as that part, the
    rest at random: an adversarial round's scan had compared their union with config.json); None when it finds none
    of them (config.json's ``transformers_weights``, another name: the files read are taken as they are)."""
    name = loaders.first_looked_for(names)
    if name is None:
        return None
    if not loaders.is_index_name(name):
        return {files.root / name}
    return {index.path.parent / shard for index in files.indexes if index.path.name == name
            for shard in set(index.weight_map.values())}  # (a path per shard, not per tensor)


def _model_elsewhere(files: layout.CheckpointFiles) -> bool:
    """Model weights among the files read beyond the folder's top (config.json's ``transformers_weights``,
    a manifest's subfolders), not optimizer state."""
    return any(file_role(f.name) is None and not layout.FSDP_OPTIMIZER_FOLDER.match(f.parent.name)
               for f in files.files if f.parent != files.root)


def _unindexed_shards(files: layout.CheckpointFiles) -> list[ScanProblem]:
    """Complete sets of numbered safetensors or ``.bin`` shards at the folder's top that no index lists (an
    incomplete set is a problem of the layout's already)."""
    # a path per shard, not per tensor: an index lists each shard once per tensor it holds
    indexed = {index.path.parent / shard for index in files.indexes for shard in set(index.weight_map.values())}
    unlisted = [f for f in files.files if f.parent == files.root and f not in indexed
                and f.suffix.lower() in (".safetensors", ".bin")]
    # (a set under another name beside weights from_pretrained loads — Mistral's consolidated-0000N-of-… beside the
    # transformers set — is never read by it: no reason the folder does not load)
    loaded_elsewhere = bool(files.indexes) or any(
        f.parent == files.root and f.name in ("model.safetensors", "pytorch_model.bin") for f in files.files)
    found = []
    for (stem, count, ext), present in layout.numbered_shards(unlisted).items():
        total = int(count)
        if set(present) != set(range(1, total + 1)):
            continue
        shards = [present[k] for k in sorted(present)]
        base, _, variant = stem.partition(".")  # model.fp16-00001-of-00002.safetensors: variant fp16
        if loaded_elsewhere and base not in ("model", "pytorch_model"):
            continue
        index = f"{base}{ext}.index{'.' + variant if variant else ''}.json"
        found.append(ScanProblem(
            str(shards[0]),
            f"{total} numbered shards ({shards[0].name} …) but no {index} that lists them: "
            f"transformers' from_pretrained cannot load them (it looks for {index} or a single {base}{ext})",
            f"copy {index} from where the checkpoint was saved (or write one: its weight_map names the shard of "
            "each tensor)",
            kind=UNLOADABLE_KIND,
        ))
    return found


def _config(root: Path, names: set[str], trainer: bool = True) -> tuple[list[ScanProblem], list[str]]:
    """A Trainer checkpoint's weights at its top without the config their loader needs: a problem where
    something says the model is a transformers (or PEFT) model, else a note."""
    if any(_ADAPTER_WEIGHTS.match(n) for n in names) and not any(_TRANSFORMERS_WEIGHTS.match(n) for n in names):
        needed, loader = ADAPTER_CONFIG, "PEFT's from_pretrained"
    elif _model_weights(names):
        needed, loader = loaders.CONFIG, "from_pretrained"
    else:
        return [], []  # no weights a Hugging Face loader reads at its top (FSDP state, DeepSpeed partitions)
    if needed in names:
        return [], []
    evidence = ("generation_config.json beside the weights" if GENERATION_CONFIG in names and needed == loaders.CONFIG
                else _where_run_has(root, needed))
    if evidence is None and needed == loaders.CONFIG:
        return [], [f"no {needed}: from_pretrained cannot load this folder (\"Unrecognized model\"); expected when the "
                    "trained model is not a transformers model (Trainer then saves its bare state dict), else copy "
                    f"{needed} from the base model"]
    why = f" ({evidence} says it had one)" if evidence else ""
    return [ScanProblem(
        str(root / needed),
        f"{'a Trainer checkpoint' if trainer else 'a model folder'} without {needed}{why}: {loader} cannot load it"
        + (" (\"Unrecognized model\")" if needed == loaders.CONFIG else ""),
        f"copy {needed} from the run's other checkpoints or the base model into the folder",
        kind=UNLOADABLE_KIND,
    )], []


def _run_has(root: Path, name: str) -> bool:
    """Whether another ``checkpoint-N`` folder of the run ``root`` lies in holds ``name``."""
    return _where_run_has(root, name, top=False) is not None


def _where_run_has(root: Path, name: str, *, top: bool = True) -> str | None:
    """Which other ``checkpoint-N`` folder of the run that ``root`` (a ``checkpoint-N`` folder) lies in holds
    ``name``, or the run folder's top (``top``), in words; None when none does."""
    if step_of(root) is None:
        return None
    run = root.parent
    if top and _model_config(run / name):
        return f"the run's {name}"
    try:
        siblings = [folder for _, folder in checkpoints_in(run) if folder.name != root.name]
    except UnreadablePathError:
        return None
    held = next((s for s in siblings if _model_config(s / name)), None)
    return None if held is None else f"{held.name}/{name}"


def _model_config(path: Path) -> bool:
    """Whether the file ``path`` is there, and, for a config, a model's config as its loader writes it: a JSON object naming a ``model_type`` or
    ``architectures`` (transformers), ``peft_type`` (PEFT) or ``_class_name`` (diffusers). A run's own
    config.json of hyperparameters (a common habit beside a custom model) is no evidence of a model config."""
    if not access.is_file(path, refused=False):
        return False
    if path.name not in (loaders.CONFIG, ADAPTER_CONFIG):
        return True  # (trainer_state.json and the like: being there is the evidence)
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return True  # unreadable: still the file a loader would need (its own problem elsewhere)
    return isinstance(data, dict) and any(key in data for key in ("model_type", "architectures", "peft_type", "_class_name"))


def _partitions_only(
    files: layout.CheckpointFiles, entries: list[Path], names: set[str]
) -> tuple[list[ScanProblem], list[str]]:
    """(problems, notes) for a folder whose model weights are only accelerate's FSDP sharded state or DeepSpeed's
    ZeRO partitions (ZeRO-3 saves them instead of model.safetensors unless its config says
    ``stage3_gather_16bit_weights_on_model_save``). Scanned either way; ``from_pretrained`` reads neither. In a
    Trainer checkpoint (a resume point: Trainer resumes from them) a note says how to write a loadable copy; a
    model folder that is no checkpoint (``save_model``'s output, a run's final model) holds a config.json to be
    loaded with its weights, and does not load: a problem (exit 3) with the command that writes them beside it."""
    root = files.root
    if _model_weights(names) or any(_ADAPTER_WEIGHTS.match(n) for n in names):
        return [], []
    fsdp, zero = layout.partition_folders(root, entries)
    if not (fsdp or zero):
        return [], []
    held = {*fsdp, *zero}
    if any(file_role(f.name) is None and f.parent != root and f.relative_to(root).parts[0] not in held
           and not layout.FSDP_OPTIMIZER_FOLDER.match(f.relative_to(root).parts[0])
           for f in files.files if f.is_relative_to(root)):
        return [], []  # (the model lies in a folder config.json or a manifest names: read from there)
    folder, words = (fsdp[0], "FSDP sharded state") if fsdp else (zero[0], "DeepSpeed ZeRO partitions")
    resume_point = step_of(root) is not None or (loaders.TRAINER_STATE in names and not _runs_inside(root))
    if not fsdp and not any("zero_pp_rank_" in f.name for f in files.files if f.parent.name == folder):
        # (a DeepSpeed save without ZeRO partitions: the whole module in mp_rank_XX_model_states.pt, which
        # zero_to_fp32 cannot consolidate, a helper found; the note named it all the same)
        return [], [f"{folder}/ holds the model as DeepSpeed model states (mp_rank_XX_model_states.pt, scanned): "
                    "DeepSpeed's load_checkpoint resumes from it, from_pretrained cannot read it; for a loadable model, "
                    "load the file's \"module\" state dict into the model and save_pretrained it"]
    if resume_point or loaders.CONFIG not in names:  # (no config.json: no from_pretrained folder, nothing to load)
        command = _consolidate_command(root, fsdp, "OUT_FOLDER")
        return [], [f"{folder}/ holds the model as {words} (scanned): Trainer resumes from it, from_pretrained "
                    f"cannot read it; for a loadable model: {command} (and config.json beside it)"]
    setting = ("or save with fsdp_state_dict_type FULL_STATE_DICT" if fsdp else
               'or save with "stage3_gather_16bit_weights_on_model_save": true in the DeepSpeed config')
    return [ScanProblem(
        str(root),
        f"holds config.json but its model weights only as {words} ({folder}/, scanned): from_pretrained finds "
        "no model.safetensors or pytorch_model.bin, so the model does not load",
        f"write the weights beside config.json: {_consolidate_command(root, fsdp, str(root))}; {setting} "
        "(then save_model writes model.safetensors)",
        kind=UNLOADABLE_KIND,
    )], []


def _consolidate_command(root: Path, fsdp: list[str], out: str) -> str:
    """The command that writes the model held as partitions in ``root`` as model.safetensors into ``out``."""
    target = out if out == "OUT_FOLDER" else path_word(out)
    if fsdp:
        return f"accelerate merge-weights {path_word(root / fsdp[0])} {target}"
    script = root / "zero_to_fp32.py"  # (DeepSpeed saves its consolidation script beside the partitions)
    program = path_word(script) if access.is_file(script, refused=True) else "-m deepspeed.utils.zero_to_fp32"
    return f"python {program} {path_word(root)} {target} --safe_serialization"


def _runs_inside(root: Path) -> bool:
    """Whether ``root`` holds ``checkpoint-N`` folders: the top of a run, where save_model writes the final model."""
    try:
        return bool(checkpoints_in(root))
    except UnreadablePathError:
        return False


__all__ = ["problems", "state_only", "uncastable"]
