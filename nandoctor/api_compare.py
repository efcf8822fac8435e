"""The public comparison and checksum functions: ``diff``, ``manifest``, ``verify_hashes``.

Part of the public API (re-exported by ``nandoctor`` and ``nandoctor.api``), kept in its own module
so that each module of the API stays small; the heavy parts are imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nandoctor.checkpoint import hubcache
from nandoctor.errors import require_path
from nandoctor.model import PathLike, ProgressCallback

if TYPE_CHECKING:
    from nandoctor.checkpoint.hashes import HashCheck
    from nandoctor.diffs import DiffReport



def _verify(path: PathLike, manifest: PathLike | None, both_formats: bool = False) -> HashCheck:
    from nandoctor.checkpoint.hashes import verify
    from nandoctor.checkpoint.opener import open_checkpoint

    return verify(open_checkpoint(path, both_formats=both_formats), manifest)


def verify_hashes(path: PathLike, *, manifest: PathLike | None = None) -> HashCheck:
    """Check every weight file of a checkpoint against its sha256 known offline, without scanning it.

    Args:
        path: a checkpoint file or folder, or a repo id in the local Hugging Face cache (whose blob
            names are the sha256 of its LFS files).
        manifest: a manifest written by :func:`manifest` (``nandoctor manifest PATH > manifest.json``).

    Returns:
        A ``HashCheck``: ``verified`` (file, source) pairs, ``unverified`` (files with no known hash),
        ``problems`` (each mismatch, naming the file and, with a manifest, the tensors whose bytes changed;
        or, when no file has a known hash, one saying nothing was verified), ``notes``.

    Raises:
        UnsupportedFormatError: a run folder without a final model (its hint names the newest checkpoint).

    Example:
        >>> check = nandoctor.verify_hashes("ckpt/", manifest="manifest.json")
        >>> [p.message for p in check.problems]
    """
    from nandoctor.checkpoint import runs

    require_path(path, "verify_hashes")
    if manifest is not None:
        require_path(manifest, "verify_hashes", "manifest")
    resolved, _ = hubcache.resolve(path)
    found = runs.one_checkpoint_in(resolved)  # a run folder: its final model, as scan judges it
    if found is None:
        words = f", manifest={str(manifest)!r}" if manifest is not None else ""
        raise runs.run_folder_error(
            resolved, lambda newest: f"verify one of its checkpoints, e.g. the newest: nandoctor.verify_hashes({newest!r}{words})")
    return _verify(found, manifest)


def manifest(path: PathLike) -> dict[str, Any]:
    """The manifest of a checkpoint: the sha256 of every weight file and of each distinct storage span.

    Args:
        path: a checkpoint file or folder (or a cached repo id). Every file must read.

    Returns:
        A JSON-ready dict (``nandoctor_manifest``: 1, ``files``: path, bytes, sha256 and ``spans`` —
        storage key, offset, bytes, sha256, the tensors viewing it); docs/diff.md gives the schema.

    Raises:
        CorruptCheckpointError: some file could not be read.
        UnsupportedFormatError: a run folder without a final model (its hint names the newest checkpoint).

    Example:
        >>> json.dump(nandoctor.manifest("ckpt/"), open("manifest.json", "w"))
        >>> nandoctor.scan("ckpt/", manifest="manifest.json").ok
    """
    from nandoctor.checkpoint import runs
    from nandoctor.checkpoint.hashes import manifest as build
    from nandoctor.checkpoint.opener import open_checkpoint

    require_path(path, "manifest")
    resolved, _ = hubcache.resolve(path)
    found = runs.one_checkpoint_in(resolved)  # a run folder: its final model, as scan judges it
    if found is None:
        raise runs.run_folder_error(
            resolved, lambda newest: f"record one of its checkpoints, e.g. the newest: nandoctor manifest {newest} > manifest.json")
    return build(open_checkpoint(found))


def diff(
    a: PathLike,
    b: PathLike,
    *,
    progress: ProgressCallback | None = None,
    both_formats: bool = False,
    only: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> DiffReport:
    """Compare checkpoint ``a`` with reference ``b`` tensor by tensor, without loading either.

    Any formats nandoctor reads, on either side (a safetensors file against a ``.bin``, a sharded folder
    against one file). Tensors are matched by name, wrapper prefixes (``module.``, ``model.`` …)
    stripped as repair does; a tied copy (``lm_head.weight`` saved once) is not missing. Same dtype:
    bytes are compared first and values only where bytes differ; another dtype: value by value, and a
    tensor whose values are the rounding of the other side's is a ``cast``, not a change.

    Args:
        a, b: checkpoint files or folders, or repo ids in the local Hugging Face / ModelScope cache.
        progress: called with (bytes done, bytes total, current file).
        both_formats: read safetensors and ``.bin`` weights when a folder holds both.
        only, exclude: shell globs on full tensor names (as ``scan``'s ``--only``/``--exclude``), applied
            to both sides: only tensors matching an ``only`` glob (all when none), minus those matching an
            ``exclude`` glob (``exclude="optimizer_states*"`` for a Lightning ``.ckpt`` against exported
            weights). What is left out is counted in a note per side; a side left empty is exit 3.

    Returns:
        A ``DiffReport``: per tensor a ``TensorDiff`` (``status``: identical, equal, cast, changed, shape,
        only_a, only_b, tied, unreadable; changed elements, the largest absolute and relative change and
        where, NaN/Inf on one side only), layer ranges, ``exit_code`` (0 same, 1 different, 3 unreadable).

    Example:
        >>> d = nandoctor.diff("merged/", "base/")
        >>> d.exit_code, [r.label for r in d.changed_ranges]
    """
    from nandoctor.checkpoint.selection import selection
    from nandoctor.diffs import diff as _diff

    require_path(a, "diff", "a")
    require_path(b, "diff", "b")
    return _diff(a, b, progress=progress, both_formats=both_formats, selection=selection(only, exclude))
