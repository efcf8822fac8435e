"""Named tensor stubs + where each storage's bytes lie → validated ``TensorRef``s.

Shared by the zip and the legacy torch readers. Each storage becomes one
``Region`` shared by every tensor that views it (the scan engine reads it once
and attributes bad elements to each view). Checked here, before any byte is
read: every storage a tensor names exists and is declared the same way
everywhere; tensors sharing a storage agree on its dtype; no negative
offsets or strides; every view stays inside its storage.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from nandoctor.checkpoint.roles import OPTIMIZER, TRAINER, WEIGHT
from nandoctor.dtypes import DTYPES
from nandoctor.errors import CorruptCheckpointError
from nandoctor.model import Region, TensorRef
from nandoctor.readers.shapes import INT64_LIMIT, refused_empty_shape
from nandoctor.readers.torch.names import Walk
from nandoctor.readers.torch.rebuilds import MAX_VIEWS_PER_STORAGE
from nandoctor.readers.torch.stubs import StorageRef, TensorStub
from nandoctor.views import MAX_IRREGULAR_SPAN, census_refused
from nandoctor.wording import first_few

_MAX_LISTED = 5
# Views of one storage. Real checkpoints have one or two (tied weights), an FSDP flat parameter a few dozen;
# each view costs the scan ~0.1 ms of Python (planning, attributing bad elements, reporting), so 600,000
# views of one storage (a 10 MB pickle) once took 145 s. Past this, the file is refused, saying why (the
# registry refuses views as they are built; this counts names, which a shared tensor can multiply).


@dataclass(frozen=True)
class StorageBlock:
    """Where one storage's bytes are in the file."""

    key: str  # the storage key data.pkl uses
    label: str  # how reports name it: "data/3" (zip entry) or "storage 1404…" (legacy)
    offset: int  # absolute offset of its first byte
    nbytes: int


@dataclass
class BuiltRefs:
    refs: list[TensorRef] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tensors_by_storage: dict[str, list[str]] = field(default_factory=dict)  # storage key → tensor names
    unscannable: list[str] = field(default_factory=list)  # storages loaded but of unknown dtype: not scanned


def listed(names: list[str]) -> str:
    return first_few(names, _MAX_LISTED, quoted=True)


def _fail(path: str, reason: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(path, reason)


def _check_declarations(path: str, stubs: list[StorageRef]) -> dict[str, StorageRef]:
    """One declaration per storage key: torch would silently use the first of conflicting ones."""
    first: dict[str, StorageRef] = {}
    for stub in stubs:
        seen = first.setdefault(stub.key, stub)
        if (seen.storage_type, seen.numel) != (stub.storage_type, stub.numel):
            raise _fail(
                path,
                f"storage {stub.key!r} is declared twice with different types or sizes "
                f"({seen.storage_type.name}×{seen.numel} and {stub.storage_type.name}×{stub.numel})",
            )
    return first


def _byteorder_of(path: str, byteorder: str, storage: StorageRef, view_dtype: str, who: str) -> str:
    """The byte order a view of ``storage`` reads its bytes in, as torch gives them to it.

    A big-endian zip is byte-swapped on load by the storage's *declared* type (``storage.byteswap(dtype)``):
    in units of its element size, half that for complex types, and never for a 1-byte type or an untyped
    storage (torch loads those as uint8). A view whose lanes are that unit reads big-endian; a view of a
    storage torch never swaps reads the bytes as they lie; a float view whose lanes differ from the swap
    unit (a float16 view of a swapped float32 storage) reads shuffled bytes: refused, never guessed.
    """
    if byteorder == "little":
        return "little"
    declared = DTYPES[storage.storage_type.dtype]
    unit = 1 if storage.storage_type.untyped else declared.itemsize // declared.lanes_per_element
    if unit == 1:
        return "little"
    view = DTYPES[view_dtype]
    if not view.can_hold_nonfinite or view.lane_bits // 8 == unit:
        return "big"
    raise _fail(
        path,
        f"{who} views a big-endian {storage.storage_type.name} as {view_dtype}: torch swaps its bytes in "
        f"{unit}-byte units, so the {view_dtype} values it loads are the bytes shuffled; refused",
    )


# torch's packed quantized dtypes (their tensors name them by storage type): values a byte
_PACKED = {"quint4x2": 2, "quint2x4": 4, "QUInt4x2Storage": 2, "QUInt2x4Storage": 4}


def _overlapping(stub: TensorStub) -> bool:
    """True when two positions of the view read the same storage element (expand, as_strided)."""
    dims = sorted((st, n) for n, st in zip(stub.size, stub.stride) if n > 1)
    reach = 0  # furthest element offset the smaller-stride dims can reach
    for stride, n in dims:
        if stride <= reach:
            return True
        reach += (n - 1) * stride
    return False


def _role(name: str, walked: Walk) -> str:
    """The role the pickle's structure gives a tensor (an optimizer state dict's, by its shape; trainer state:
    roles.pickle_role); the rest from names."""
    if name in walked.optimizer:
        return OPTIMIZER
    return TRAINER if name in walked.trainer else WEIGHT


def build_refs(
    path: str,
    walked: Walk,
    declared: list[StorageRef],
    blocks: dict[str, StorageBlock],
    byteorder: str,
) -> BuiltRefs:
    """Turn the walked tensors into TensorRefs; raise CorruptCheckpointError on anything out of bounds."""
    storages = _check_declarations(path, declared)
    out = BuiltRefs()

    dtypes: dict[str, tuple[str, str]] = {}  # storage key → (dtype, first tensor name)
    orders: dict[str, str] = {}  # storage key → the byte order its views read
    for named in walked.tensors:
        key = named.tensor.storage.key
        seen = dtypes.setdefault(key, (named.tensor.dtype, named.name))
        if seen[0] != named.tensor.dtype:
            raise _fail(
                path,
                f"storage {key!r} is viewed as {seen[0]} by {seen[1]!r} and as {named.tensor.dtype} by "
                f"{named.name!r}; torch refuses to save such files",
            )
        orders[key] = _byteorder_of(path, byteorder, named.tensor.storage, named.tensor.dtype, f"tensor {named.name!r}")
    views = Counter(named.tensor.storage.key for named in walked.tensors)
    crowded = [(key, n) for key, n in views.items() if n > MAX_VIEWS_PER_STORAGE]
    if crowded:
        key, n = crowded[0]
        raise _fail(
            path,
            f"storage {key!r} is viewed by {n:,} tensors (more than {MAX_VIEWS_PER_STORAGE:,}; a checkpoint has a "
            "few per storage): refused rather than spent minutes on, view by view",
        )
    bare_only = [s for s in walked.storages if s.storage.key not in dtypes]
    for bare in bare_only:
        dtypes.setdefault(bare.storage.key, (bare.storage.storage_type.dtype, bare.name))

    regions: dict[str, Region] = {}
    for key, (dtype, _) in dtypes.items():
        block = blocks.get(key)
        if block is None:
            raise _fail(path, f"data.pkl refers to storage {key!r} but the file holds no bytes for it")
        itemsize = DTYPES[dtype].itemsize
        usable = block.nbytes - block.nbytes % itemsize  # a trailing partial element is no element
        order = orders.get(key) or _byteorder_of(path, byteorder, storages[key], dtype, f"storage {key!r}")
        regions[key] = Region(path, block.offset, usable, dtype, block.label, byteorder=order)

    overlapping: list[str] = []
    uncensused: list[str] = []  # floating views too irregular for a health census of their own (views.py)
    for named in walked.tensors:
        stub = named.tensor
        region = regions[stub.storage.key]
        itemsize = DTYPES[stub.dtype].itemsize
        base, limit = 0, region.nbytes // itemsize
        if stub.storage.view is not None:  # legacy storage views: a window of the root storage
            _, view_offset, view_size = stub.storage.view
            root_itemsize = DTYPES[stub.storage.storage_type.dtype].itemsize
            start_bytes, size_bytes = view_offset * root_itemsize, view_size * root_itemsize
            if start_bytes % itemsize or start_bytes + size_bytes > region.nbytes:
                raise _fail(path, f"tensor {named.name!r}: its storage view lies outside storage {stub.storage.key!r}")
            base, limit = start_bytes // itemsize, (start_bytes + size_bytes) // itemsize
        where = f"tensor {named.name!r} ({region.key})"
        if any(n < 0 for n in stub.size):
            raise _fail(path, f"{where}: negative size {stub.size}")
        if any(s < 0 for s in stub.stride):
            raise _fail(path, f"{where}: negative stride {stub.stride}; torch never writes those")
        if stub.storage_offset < 0:
            raise _fail(path, f"{where}: negative storage offset {stub.storage_offset}")
        refused = refused_empty_shape(stub.size)
        if refused is None and max((*stub.stride, stub.storage_offset), default=0) >= INT64_LIMIT:
            refused = f"stride {list(stub.stride)} or storage offset {stub.storage_offset} does not fit int64"
        if refused is not None:
            raise _fail(path, f"{where}: {refused}")
        numel = math.prod(stub.size)
        packed = _PACKED.get(stub.torch_dtype)
        if packed is not None:
            # (quint4x2 / quint2x4: two or four integers a byte, no NaN/Inf; its scale is read apart. Its elements
            # counted one a byte reached past its storage: a false UNREADABLE of a file torch loads)
            start, nbytes = base + stub.storage_offset // packed, -(-numel // packed)
            if start + nbytes > limit:
                raise _fail(path, f"{where}: {numel} packed {stub.torch_dtype} values need {nbytes} bytes from element "
                            f"{start} of a storage holding {limit}")
            out.refs.append(TensorRef(named.name, stub.dtype, (nbytes,), region, start, (1,),
                                      role=_role(named.name, walked)))
            out.tensors_by_storage.setdefault(stub.storage.key, []).append(named.name)
            continue
        overlaps = False
        if numel:
            last = base + stub.storage_offset + sum((n - 1) * s for n, s in zip(stub.size, stub.stride))
            if last >= limit:
                raise _fail(
                    path,
                    f"{where}: view (offset {stub.storage_offset}, size {list(stub.size)}, stride "
                    f"{list(stub.stride)}) reaches element {last} of a storage holding {limit}",
                )
            overlaps = _overlapping(stub)
            if overlaps:
                overlapping.append(named.name)
        ref = TensorRef(named.name, stub.dtype, stub.size, region, base + stub.storage_offset, stub.stride,
                        role=_role(named.name, walked))
        if overlaps and DTYPES[stub.dtype].can_hold_nonfinite and census_refused(ref):
            uncensused.append(named.name)
        out.refs.append(ref)
        out.tensors_by_storage.setdefault(stub.storage.key, []).append(named.name)

    for bare in bare_only:
        if bare.storage.key in out.tensors_by_storage:
            continue
        region = regions[bare.storage.key]
        n = region.nbytes // DTYPES[region.dtype].itemsize
        out.refs.append(TensorRef(bare.name, region.dtype, (n,), region, 0, (1,), role=_role(bare.name, walked)))
        out.tensors_by_storage[bare.storage.key] = [bare.name]

    if overlapping:
        out.notes.append(
            f"{len(overlapping)} tensor(s) read some storage elements more than once (expanded or "
            f"as_strided views): their counts and census are of distinct storage elements: {listed(overlapping)}"
        )
    if uncensused:
        out.notes.append(
            f"{len(uncensused)} tensor(s) are overlapping views spanning more than {MAX_IRREGULAR_SPAN:,} "
            "storage elements: they get no health census (largest magnitude, zeros, exploded values, outliers) and "
            f"are not known to be healthy: {listed(uncensused)}; re-save them with .contiguous() and scan again"
        )
    # Storages the pickle loads but no tensor nandoctor walked views: torch still builds them (a tensor
    # kept somewhere the walker does not look), so they are scanned whole, or, when their dtype is
    # unknown (untyped storages take it from the tensor), reported as unreadable: never left out quietly.
    unreached = sorted(set(storages) - set(dtypes))
    scanned_whole = []
    for key in unreached:
        storage_type = storages[key].storage_type
        block = blocks.get(key)
        if storage_type.untyped or block is None:
            out.unscannable.append(key)
            continue
        itemsize = DTYPES[storage_type.dtype].itemsize
        region = Region(path, block.offset, block.nbytes - block.nbytes % itemsize, storage_type.dtype, block.label,
                        byteorder=_byteorder_of(path, byteorder, storages[key], storage_type.dtype, f"storage {key!r}"))
        name = f"<storage {key}>"
        out.refs.append(TensorRef(name, storage_type.dtype, (region.nbytes // itemsize,), region, 0, (1,)))
        out.tensors_by_storage[key] = [name]
        scanned_whole.append(name)
    reread = []
    # A typed storage (FloatStorage …) viewed only as another dtype (a _rebuild_tensor_v3 int32 view of
    # float bytes): torch.save never writes that, but a crafted file could hide a float view from the
    # walker behind it. The bytes are also scanned as the type the file declares.
    for key, declared_storage in storages.items():
        storage_type = declared_storage.storage_type
        if storage_type.untyped or key not in dtypes or dtypes[key][0] == storage_type.dtype:
            continue
        if not DTYPES[storage_type.dtype].can_hold_nonfinite or blocks.get(key) is None:
            continue
        block = blocks[key]
        itemsize = DTYPES[storage_type.dtype].itemsize
        region = Region(path, block.offset, block.nbytes - block.nbytes % itemsize, storage_type.dtype,
                        f"{block.label} as {storage_type.dtype}",
                        byteorder=_byteorder_of(path, byteorder, declared_storage, storage_type.dtype, f"storage {key!r}"))
        name = f"<storage {key} as {storage_type.dtype}>"
        out.refs.append(TensorRef(name, storage_type.dtype, (region.nbytes // itemsize,), region, 0, (1,)))
        reread.append(name)
    if reread:
        out.notes.append(
            f"{len(reread)} storage(s) the file declares as floats are viewed only as another dtype (torch.save "
            f"never writes that); also scanned as declared: {listed(reread)}"
        )
    if scanned_whole:
        out.notes.append(
            f"{len(scanned_whole)} storage(s) the pickle loads are viewed by no tensor nandoctor could name "
            f"(kept in an object it does not walk); scanned whole: {listed(scanned_whole)}"
        )
    return out
