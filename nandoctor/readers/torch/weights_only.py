"""Which globals ``torch.load(weights_only=True)`` allows: a static table, and what a file outside it means.

nandoctor's restricted unpickler (safe_pickle.py) reads more than torch's weights-only one: an unknown global
becomes an inert placeholder (``argparse.Namespace``, numpy's ``_reconstruct``), a pathlib path its text,
``frozenset`` a frozenset. ``torch.load``'s default since torch 2.6, ``weights_only=True``, refuses a file that
names any global outside its allowlist ("Weights only load failed … Unsupported global"). :data:`ALLOWED` is that
allowlist for torch 2.13: ``torch._weights_only_unpickler._get_allowed_globals()`` and what
``torch.serialization.get_safe_globals()`` holds once ``import torch`` has run (nested tensors, device
meshes). It is written here by rule, not imported: a scan never imports torch; tests/test_load_config.py
holds it to torch's own, name for name. Names are compared as torch compares them: after pickle's Python 2
renames (``__builtin__.set`` is ``builtins.set``), which torch applies to every global.

Whether the refusal matters depends on who loads the file: transformers' ``from_pretrained`` reads
``pytorch_model.bin`` (its shards and variants) with ``weights_only=True``, PEFT reads ``adapter_model.bin``
and diffusers ``diffusion_pytorch_model.bin`` the same way (``loaders.weights_only_loader``), so such a file
will not load: a problem (NOT LOADABLE). Any other torch file (a training ``.pt``, a Lightning ``.ckpt``) is
loaded by code that picks its own ``weights_only``: a note names the first global torch's default refuses.
"""

from __future__ import annotations

import os
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from pathlib import Path
from typing import Any, BinaryIO

from nandoctor.checkpoint.loaders import unrestricted_loader, weights_only_loader
from nandoctor.model import DEFAULT_LOAD_REFUSES, UNLOADABLE_KIND, ScanProblem
from nandoctor.wording import first_few

_TYPES = ("BFloat16", "Bool", "Byte", "Char", "Double", "Float", "Half", "Int", "Long", "Short")
_STORAGES = (*_TYPES, "ComplexDouble", "ComplexFloat")
_DTYPES = (
    "bfloat16", "bool", "complex128", "complex32", "complex64", "float16", "float32", "float64",
    "float4_e2m1fn_x2", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu",
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "qint8", "qint32", "quint8",
    "quint4x2", "quint2x4", "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2",
    *(f"int{n}" for n in range(1, 8)), *(f"uint{n}" for n in range(1, 8)),
)
_REBUILDS = (
    "parameter", "parameter_with_state", "qtensor", "tensor", "tensor_v2", "tensor_v3", "sparse_tensor",
    "meta_tensor_no_storage", "nested_tensor", "wrapper_subclass", "device_tensor_from_numpy",
    "device_tensor_from_cpu_tensor",
)
_QSCHEMES = ("per_tensor_affine", "per_tensor_symmetric", "per_channel_affine", "per_channel_symmetric",
             "per_channel_affine_float_qparams")

ALLOWED: frozenset[str] = frozenset({
    "collections.OrderedDict", "collections.Counter", "_codecs.encode",
    "builtins.bytearray", "builtins.set", "builtins.complex",
    "torch.nn.parameter.Parameter", "torch.serialization._get_layout", "torch.Size", "torch.Tensor", "torch.device",
    "torch._tensor._rebuild_from_type_v2", "torch.storage.TypedStorage", "torch.storage.UntypedStorage",
    *(f"torch.{name}" for name in (*_DTYPES, *_QSCHEMES)),
    *(f"torch._utils._rebuild_{name}" for name in _REBUILDS),
    *(f"{module}.{name}Tensor" for module in ("torch", "torch.cuda") for name in _TYPES),
    *(f"{module}.{name}Tensor" for module in ("torch.sparse", "torch.cuda.sparse") for name in _TYPES if name != "Bool"),
    *(f"torch.cuda.{name}Storage" for name in _STORAGES),
    *(f"torch.{name}Storage" for name in (*_STORAGES, "QInt32", "QInt8", "QUInt2x4", "QUInt4x2", "QUInt8")),
    # registered with torch.serialization.add_safe_globals when torch is imported
    "torch.nested._internal.nested_tensor.NestedTensor", "torch.nested._internal.nested_tensor._rebuild_njt",
    "torch.distributed._mesh_layout._FlatLayout", "torch.distributed._mesh_layout._MeshLayout",
})


# The pickle opcodes torch's weights-only unpickler runs (torch 2.13, _weights_only_unpickler.Unpickler.load); any
# other is "Unsupported operand": protocol 0/1's text opcodes, protocol 4/5's FRAME, MEMOIZE, SHORT_BINUNICODE and
# STACK_GLOBAL, LONG4 (an int of 256 bytes or more), BINBYTES (a bytes object). tests/test_load_config.py holds
# the table to torch's source.
TORCH_OPCODES = frozenset({
    "APPEND", "APPENDS", "BINFLOAT", "BINGET", "BININT", "BININT1", "BININT2", "BINPERSID", "BINPUT", "BINUNICODE",
    "BUILD", "EMPTY_DICT", "EMPTY_LIST", "EMPTY_SET", "EMPTY_TUPLE", "GLOBAL", "LONG1", "LONG_BINGET",
    "LONG_BINPUT", "MARK", "NEWFALSE", "NEWOBJ", "NEWTRUE", "NONE", "PROTO", "REDUCE", "SETITEM", "SETITEMS",
    "SHORT_BINSTRING", "STOP", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
})


def opcode_problems(path: str, pickled: bytes | BinaryIO, count: int = 1, loader: str | None = None) -> list[ScanProblem]:
    """A problem when the ``count`` pickles in ``pickled`` (a Hugging Face weight file's data.pkl, or a legacy
    file from its start, whose five pickles torch reads one after another: only in such a file, which a loader
    reads with ``weights_only=True``) hold an opcode torch's weights-only unpickler does not run:
    ``torch.save(…, pickle_protocol=4)`` and the like. Read once more, opcode by opcode, only for such files
    (their pickles are kilobytes: the tensors are elsewhere), and only once the unpickler has read them whole."""
    hint = ("re-save it with torch.save's default protocol (torch.save(state_dict, path), no pickle_protocol=), or "
            "with model.save_pretrained(…), which writes safetensors")
    if loader is not None:  # (a DCP tensor item: what re-saves it is dcp.save)
        hint = "save the checkpoint again with torch.distributed.checkpoint.save, which pickles with the protocol it reads"
    loader = loader or weights_only_loader(Path(path).name)
    if loader is None:
        return []
    import io
    import pickletools

    stream = io.BytesIO(pickled) if isinstance(pickled, (bytes, bytearray)) else pickled
    unsupported: dict[str, None] = {}
    try:
        for _ in range(count):
            for opcode, _, _ in pickletools.genops(stream):
                if opcode.name not in TORCH_OPCODES:
                    unsupported[opcode.name] = None
    except ValueError:
        return []  # malformed: the unpickler has said so already
    if not unsupported:
        return []
    return [ScanProblem(
        path,
        f"its pickle uses the opcode(s) {first_few(list(unsupported), 3)}, which torch.load(weights_only=True) does "
        f"not run ('Unsupported operand': a pickle protocol other than 2, or a huge int or bytes object in it); "
        f"{loader} loads {os.path.basename(path)} with weights_only=True, so the model will not load",
        hint,
        kind=UNLOADABLE_KIND,
    )]


def protocol_notes(path: str, pickled: bytes | BinaryIO, loader: str | None = None) -> list[str]:
    """A note for a torch file no Hugging Face loader reads (opcode_problems judges those) pickled with protocol 4 or
    more (``torch.save(…, pickle_protocol=4)``): its FRAME opcodes make ``torch.load``'s default (weights_only=True)
    fail with "Unsupported operand 149", so a script that loads it plainly fails (a zoo trial: CLEAN without a
    word). Told by the PROTO opcode at its start: no second read of the pickle."""
    if loader is not None or weights_only_loader(Path(path).name) is not None or unrestricted_loader(Path(path).name):
        return []
    if isinstance(pickled, (bytes, bytearray)):
        head = bytes(pickled[:2])
    else:
        at = pickled.tell()
        head = pickled.read(2)
        pickled.seek(at)
    if len(head) < 2 or head[0] != 0x80 or head[1] < 4:
        return []
    return [f"{os.path.basename(path)}: {DEFAULT_LOAD_REFUSES} refuses this file: it is pickled with protocol "
            f"{head[1]}, whose FRAME opcodes torch's weights-only unpickler does not run ('Unsupported operand 149'); "
            "load it with weights_only=False only if you trust its source, or re-save it with torch.save's default "
            "protocol"]


def torch_name(module: str, name: str) -> str:
    """The global ``module.name`` as torch's weights-only unpickler names it (pickle's Python 2 renames)."""
    if (module, name) in NAME_MAPPING:
        module, name = NAME_MAPPING[(module, name)]
    elif module in IMPORT_MAPPING:
        module = IMPORT_MAPPING[module]
    return f"{module}.{name}"


def refuses(module: str, name: str) -> bool:
    """Whether ``torch.load(weights_only=True)`` refuses a pickle that names the global ``module.name``."""
    return refused_name(module, name) is not None


def refused_name(module: str, name: str) -> str | None:
    """The global ``module.name`` as torch names it when refusing it (``builtins.frozenset`` for protocol 2's
    ``__builtin__.frozenset``), or None when ``torch.load(weights_only=True)`` allows it."""
    full = torch_name(module, name)
    return None if full in ALLOWED else full


def judged(path: str, refused: tuple[str, ...], quiet: frozenset[str] = frozenset()) -> tuple[list[ScanProblem], list[str]]:
    """(problems, notes) for the torch file ``path`` whose pickle names the globals ``refused`` (in order of
    first use) that torch's default load refuses: a problem where a Hugging Face loader reads the file with
    ``weights_only=True``, else a note (none where every refused global is in ``quiet``: expected there)."""
    if not refused:
        return [], []
    name = os.path.basename(path)
    globals_ = first_few(list(refused), 3)
    loader = weights_only_loader(Path(path).name)
    if loader is None:
        if set(refused) <= quiet or unrestricted_loader(name):  # (its loader passes weights_only=False)
            return [], []
        # (Lightning's load_from_checkpoint and Trainer.fit(ckpt_path=…) leave weights_only to torch: a trial's run
        # with a pathlib path among its hyper-parameters could not be resumed)
        who = (" (Lightning's load_from_checkpoint and Trainer.fit(ckpt_path=…) too, unless given weights_only=False)"
               if name.endswith(".ckpt") else "")
        return [], [f"{name}: {DEFAULT_LOAD_REFUSES} refuses this file{who}: it pickles {globals_}, "
                    "outside torch's allowlist; load it with weights_only=False only if you trust its source "
                    "(nandoctor read it with inert stand-ins)"]
    return [ScanProblem(
        path,
        f"pickles {globals_}, which torch.load(weights_only=True) refuses (\"Weights only load failed … Unsupported "
        f"global\"); {loader} loads {name} with weights_only=True, so the model will not load (nandoctor read the "
        "file with inert stand-ins)",
        "re-save the weights alone (model.save_pretrained(…), or torch.save(model.state_dict(), …) with no other "
        "objects in the file); if you trust the file, load it once with torch.load(weights_only=False) to do that",
        kind=UNLOADABLE_KIND,
    )], []


def key_problems(path: str, root: Any) -> list[ScanProblem]:
    """A Hugging Face weights file (``weights_only_loader``) whose state dict has a key that is no string (``7``,
    ``b"x"``): torch.load(weights_only=True) returns it, and from_pretrained raises on it as it matches names (an
    adversarial round: CLEAN). Other torch files' keys are their loaders' business."""
    loader = weights_only_loader(Path(path).name)
    if loader is None or not isinstance(root, dict):
        return []
    odd = [key for key in dict.keys(root) if not isinstance(key, str)]
    if not odd:
        return []
    shown = first_few([f"{key!r} ({type(key).__name__})" for key in odd[:3]], 3)
    return [ScanProblem(
        path, f"its state dict has {len(odd)} key(s) that are no string ({shown}): {loader} matches the weights to the "
        "model by name and raises on such a key, so the model will not load",
        "re-save the state dict with string keys only (model.save_pretrained(…), or torch.save of "
        "model.state_dict())", kind=UNLOADABLE_KIND)]
