"""Donor checkpoints: their tensor references (headers only) and a finiteness check per tensor.

A donor is never scanned whole: only the tensors a repair would take from it
are read, through the same CPU kernel the scan uses. ``--from auto`` becomes
the earlier ``checkpoint-N`` siblings of the target, newest first.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from nandoctor import layout
from nandoctor.dtypes import DTYPES
from nandoctor.errors import CheckpointNotFoundError, CorruptCheckpointError, NandoctorError, RepairRefusedError
from nandoctor.model import TensorRef
from nandoctor.readers import reader_for
from nandoctor.layout import fingerprint
from nandoctor.runs import checkpoints_in, step_of

AUTO = "auto"


class CheckpointDonor:
    """A donor checkpoint on disk; implements plan.DonorCatalog."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.label = str(path)
        self.step = step_of(self.path) if self.path.is_dir() else step_of(self.path.parent)
        self._refs: dict[str, TensorRef] | None = None
        self._kernel = None
        self.fingerprints: dict[str, tuple[int, int]] = {}  # file → (size, mtime_ns) when its header was read

    def refs(self) -> Mapping[str, TensorRef]:
        if self._refs is None:
            files = layout.discover(self.path)
            if files.problems:
                first = files.problems[0]
                raise CorruptCheckpointError(first.path, first.message, first.hint or None)
            refs: dict[str, TensorRef] = {}
            for file in files.files:
                try:
                    self.fingerprints[str(file)] = fingerprint(file)
                    found = reader_for(file).read_refs(file)
                except OSError as exc:
                    raise CorruptCheckpointError(str(file), f"cannot read: {exc.strerror or exc}") from None
                for ref in found:
                    if ref.name in refs:
                        raise CorruptCheckpointError(
                            str(file), f"tensor {ref.name!r} is also in {Path(refs[ref.name].file).name}; ambiguous"
                        )
                    refs[ref.name] = ref
            self._refs = refs
        return self._refs

    def nonfinite(self, ref: TensorRef) -> int:
        from nandoctor.restore.tensorbytes import iter_elements

        spec = DTYPES[ref.dtype]
        if not spec.can_hold_nonfinite:
            return 0
        if self._kernel is None:
            from nandoctor.kernels import select_kernel

            self._kernel = select_kernel("cpu")
        kernel = self._kernel
        bad = 0
        try:
            for block in iter_elements(ref.file, ref, limit=kernel.chunk_bytes):
                if kernel.any_nonfinite(block, spec):
                    bad += kernel.count(block, spec).nonfinite
        except OSError as exc:
            raise CorruptCheckpointError(ref.file, f"cannot read tensor {ref.name!r}: {exc.strerror or exc}") from None
        except NandoctorError:
            raise
        return bad


def auto_donors(target: Path) -> list[Path]:
    """The earlier ``checkpoint-N`` siblings of ``target``, newest first."""
    target = Path(target)
    folder = target if target.is_dir() else target.parent
    step = step_of(folder)
    if step is None:
        raise RepairRefusedError(
            f"{target}: --from auto needs a target folder named checkpoint-N inside a run folder",
            "name the donors with --from <earlier checkpoint>",
        )
    earlier = [path for s, path in checkpoints_in(folder.parent) if s < step]
    if not earlier:
        raise RepairRefusedError(
            f"{target}: --from auto found no checkpoint-N before step {step} in {folder.parent}",
            "name the donors with --from <path>; the run may have deleted older checkpoints (save_total_limit)",
        )
    return [path for path in reversed(earlier)]


def resolve_donors(target: Path, donors: list[str | os.PathLike[str]]) -> list[CheckpointDonor]:
    """Donor catalogs in the order given, ``auto`` expanded in place.

    ``auto`` that finds no earlier checkpoint is an error only when no other donor is named.
    A donor may be a path or a model name in the Hugging Face / ModelScope cache.
    """
    from nandoctor import hubcache

    out: list[CheckpointDonor] = []
    auto_error: RepairRefusedError | None = None
    for donor in donors:
        if str(donor) == AUTO:
            try:
                out.extend(CheckpointDonor(p) for p in auto_donors(target))
            except RepairRefusedError as exc:
                auto_error = exc
            continue
        try:
            path, _ = hubcache.resolve(donor)
        except CheckpointNotFoundError as exc:
            raise CheckpointNotFoundError(f"donor checkpoint {exc.message}", exc.hint) from None
        out.append(CheckpointDonor(path))
    if not out and auto_error is not None:
        raise auto_error
    if not out:
        folder = target if target.is_dir() else target.parent
        also = " (or --from auto)" if step_of(folder) is not None else ""
        raise RepairRefusedError(f"{target}: no donor checkpoint given", f"add --from <earlier checkpoint>{also}")
    return out
