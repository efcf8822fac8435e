"""Repo ids (``Qwen/Qwen-1_8B``) → a snapshot folder already in a local cache. Never downloads.

Hugging Face: ``$HF_HUB_CACHE`` (or the legacy ``$HUGGINGFACE_HUB_CACHE``),
else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else
``~/.cache/huggingface/hub``; a repo lives in ``models--org--name/`` with
``refs/<branch>`` holding a commit hash and ``snapshots/<hash>/`` holding
symlinks into ``blobs/``.

ModelScope: ``$MODELSCOPE_CACHE``, else ``~/.cache/modelscope/hub``; a repo
lives in ``models/org/name`` (``.`` in the name written as ``___``), or
directly in ``org/name`` for older clients. Files are stored in place.

A local path always wins: :func:`resolve` only looks in the caches when
``target`` does not exist on disk and looks like a repo id.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from nandoctor import access
from nandoctor.errors import CheckpointNotFoundError, UnreadablePathError

# org/name, or a bare legacy name (gpt2), optionally @revision (branch, tag or commit hash).
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*(?:@[\w.\-/]+)?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
DEFAULT_REVISION = "main"


@dataclass(frozen=True)
class CacheHit:
    """Where a repo id was found."""

    repo_id: str
    path: Path  # the snapshot folder to scan
    cache: str  # "huggingface" or "modelscope"
    revision: str | None  # the commit hash of a Hugging Face snapshot


def looks_like_repo_id(target: str) -> bool:
    """``org/name`` or ``name`` (with an optional ``@revision``); never ``./x``, ``/x`` or ``x/../y``, nor a
    file name with a weight file's suffix (``model.safetensors``: a missing file, not a model to fetch)."""
    if not target or ".." in target or target.startswith(("/", "~", ".")) or "\\" in target:
        return False
    if target.lower().endswith(_FILE_SUFFIXES):
        return False
    return bool(_REPO_ID.match(target))


# A missing path ending like a weight file is a file, never a repo id to look up in the caches
_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".distcp", ".json")


def split_revision(target: str) -> tuple[str, str | None]:
    repo_id, _, revision = target.partition("@")
    return repo_id, revision or None


def hf_cache_dir() -> Path:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = Path(os.environ["XDG_CACHE_HOME"]).expanduser() if os.environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def modelscope_cache_dir() -> Path:
    if os.environ.get("MODELSCOPE_CACHE"):
        return Path(os.environ["MODELSCOPE_CACHE"]).expanduser()
    return Path.home() / ".cache" / "modelscope" / "hub"


def hf_repo_folder(repo_id: str, cache: Path | None = None) -> Path:
    return (cache or hf_cache_dir()) / ("models--" + repo_id.replace("/", "--"))


def find_hf(repo_id: str, revision: str | None = None, cache: Path | None = None) -> CacheHit | None:
    """The snapshot of ``repo_id`` at ``revision`` (default ``main``) in the Hugging Face cache.

    Raises when the repo is cached but the revision cannot be pinned down; returns
    None when the repo is not cached at all.
    """
    folder = hf_repo_folder(repo_id, cache)
    snapshots = folder / "snapshots"
    if not access.is_dir(snapshots):
        return None
    wanted = revision or DEFAULT_REVISION
    ref = folder / "refs" / wanted
    commit: str | None = None
    if access.is_file(ref):
        commit = _read_ref(repo_id, ref)
    elif is_commit(wanted):
        commit = wanted
    elif revision is None:
        # No refs/main (a cache copied by hand, or a download by commit only): one snapshot is unambiguous.
        found = sorted(p.name for p in access.listing(snapshots) if is_commit(p.name) and access.is_dir(p))
        if len(found) == 1:
            commit = found[0]
        elif found:
            raise CheckpointNotFoundError(
                f"{repo_id}: the Hugging Face cache at {folder} has {len(found)} snapshots and no refs/main",
                f"pick one with {repo_id}@<revision>: {', '.join(found[:5])}",
            )
    if commit is None or not access.is_dir(snapshots / commit):
        raise CheckpointNotFoundError(
            f"{repo_id}@{wanted}: revision not in the Hugging Face cache at {folder}",
            "nandoctor never downloads; fetch it first with "
            f"`huggingface-cli download {repo_id} --revision {wanted}`, or pass a local path",
        )
    return CacheHit(repo_id, snapshots / commit, "huggingface", commit)


def is_commit(text: str) -> bool:
    """Exactly 40 lower-case hex digits (``fullmatch``: ``$`` would also let a trailing newline through)."""
    return _COMMIT.fullmatch(text) is not None


_MAX_REF_BYTES = 256


def _read_ref(repo_id: str, ref: Path) -> str:
    """The commit ``refs/<revision>`` holds, read as huggingface_hub reads it: the whole file, unstripped.

    huggingface_hub joins the file's exact text onto ``snapshots/``; anything but a 40-digit hash (a
    newline, spaces, ``../``) names a different folder there, or none, so it is refused, not tidied up.
    """
    try:
        with open(ref, "rb") as fh:
            raw = fh.read(_MAX_REF_BYTES + 1)
    except OSError as exc:
        raise CheckpointNotFoundError(f"{ref}: cannot read ({exc.strerror or exc})") from None
    text = raw.decode("utf-8", errors="replace")
    if len(raw) > _MAX_REF_BYTES or not is_commit(text):
        shown = text[:60] + ("…" if len(text) > 60 else "")
        raise CheckpointNotFoundError(
            f"{ref}: holds {shown!r}, not a 40-character commit hash; refused ({repo_id}'s cache is damaged "
            "or was edited by hand)",
            f"re-download it (`hf download {repo_id}`), or name a snapshot: {repo_id}@<40-digit commit>",
        )
    return text


def modelscope_candidates(repo_id: str, cache: Path | None = None) -> list[Path]:
    root = cache or modelscope_cache_dir()
    org, _, name = repo_id.rpartition("/")
    names = [name.replace(".", "___"), name] if "." in name else [name]
    out = []
    for base in (root / "models", root):
        for n in names:
            out.append(base / org / n if org else base / n)
    return out


def find_modelscope(repo_id: str, cache: Path | None = None) -> CacheHit | None:
    for candidate in modelscope_candidates(repo_id, cache):
        if access.is_dir(candidate) and access.listing(candidate):
            return CacheHit(repo_id, candidate, "modelscope", None)
    return None


def is_snapshot(folder: str | os.PathLike[str]) -> bool:
    """True for a Hugging Face cache snapshot folder (``models--x--y/snapshots/<rev>``)."""
    folder = Path(os.path.abspath(folder))  # "." or a relative path still names its parents
    return folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--")


def blob_roots(folder: Path) -> tuple[Path, ...]:
    """Folders outside ``folder`` its files may legitimately link into.

    A Hugging Face snapshot (``models--x--y/snapshots/<rev>/``) is a folder of
    symlinks into ``models--x--y/blobs/``; layout's "shards stay inside the
    folder" check accepts these targets, and nothing else outside.
    """
    folder = Path(os.path.abspath(folder))
    if not is_snapshot(folder):
        return ()
    blobs = folder.parent.parent / "blobs"
    try:
        return (blobs.resolve(),) if blobs.is_dir() else ()
    except OSError:
        return ()


def _nearby(path: Path) -> tuple[str, bool] | None:
    """For a missing path whose folder exists: (a hint, whether it names a similar name there); else None."""
    if "\\" in str(path) and os.sep == "/":  # (a Windows path, bad\model.safetensors: one odd name here)
        posix = Path(str(path).replace("\\", "/"))
        if os.path.lexists(posix):
            return f"did you mean {posix}? (on this system folders are separated by /, not \\)", True
    parent = path.parent
    try:
        if not access.is_dir(parent):
            return None
        names = [entry.name for entry in access.listing(parent)]
    except (OSError, UnreadablePathError):
        return None
    import difflib

    # (a one-character slip first, checkpoint-30 for checkpoint-300; then the save nearest in step; then any likeness)
    close = (difflib.get_close_matches(path.name, names, n=3, cutoff=0.9) or _nearest_steps(path.name, names)
             or difflib.get_close_matches(path.name, names, n=3, cutoff=0.6))
    shown = parent / close[0] if close and str(parent) not in ("", ".") else (close[0] if close else "")
    if close:
        where = "this folder" if str(parent) in ("", ".") else str(parent)
        also = f" ({where} also holds {', '.join(close[1:])})" if close[1:] else ""
        return f"did you mean {shown}?{also}", True
    return f"check the path: {'the current folder' if str(parent) in ('', '.') else parent} holds no {path.name}", False


def _nearest_steps(name: str, names: list[str]) -> list[str]:
    """For a missing ``checkpoint-N`` (``step-N``, ``checkpoint_N``: steps.step_of), the saves of the same naming
    nearest in step, nearest first: a new user's ``checkpoint-99`` among checkpoint-5 … -30 was "did you mean
    checkpoint-5?", where the spelling's likeness says nothing of which save was meant."""
    from nandoctor.checkpoint.steps import step_of_name

    def step(save: str) -> int | None:  # (by the name alone: a global_stepN among its likes is a save too)
        return step_of_name(save, global_steps=True)

    wanted = step(name)
    if wanted is None:
        return []
    stem = name[: -len(str(wanted))]
    steps = [(abs(found - wanted), -found, other) for other in names
             if (found := step(other)) is not None and other.startswith(stem)]
    return [other for _, _, other in sorted(steps)[:3]]


def resolve(target: str | os.PathLike[str]) -> tuple[Path, CacheHit | None]:
    """``target`` as a path to scan: the path itself when it exists, else its cached snapshot.

    Raises :class:`CheckpointNotFoundError` (exit code 3) naming every place it looked.
    """
    text = os.fspath(target)
    path = Path(text)
    if access.exists(path) or access.is_link(path):  # (a path the system will not show: exit 3, saying so)
        return path, None
    nearby = _nearby(path)
    if not looks_like_repo_id(text):
        raise CheckpointNotFoundError(f"{text}: no such file or folder", nearby[0] if nearby else None)
    repo_id, revision = split_revision(text)
    hit = find_hf(repo_id, revision)
    if hit is None and revision is None:
        hit = find_modelscope(repo_id)
    if hit is not None:
        return hit.path, hit
    # (not cached: a missing path in a folder that exists, other than the current one, is a typo of a local path,
    # demo-run/checkpoint-30 beside demo-run/checkpoint-300, or gate/missing beside a folder gate: no download hint)
    if nearby is not None and (nearby[1] or str(path.parent) not in ("", ".")):
        raise CheckpointNotFoundError(f"{text}: no such file or folder", nearby[0])
    looked = [str(hf_repo_folder(repo_id))]
    if revision is None:
        looked += [str(p) for p in modelscope_candidates(repo_id)[:2]]
    # (the local fact first: a new user's typo of a local path read as a download instruction)
    local = nearby[0] if nearby is not None else _first_missing(path)
    raise CheckpointNotFoundError(
        f"{text}: no such file or folder (nor a model of that name in the Hugging Face or ModelScope cache: "
        f"looked in {', '.join(looked)})",
        f"{local}; if it is a hub model, nandoctor never downloads: fetch it first "
        f"(`hf download {repo_id}`, `huggingface-cli download {repo_id}` or `modelscope download --model {repo_id}`) "
        "or set HF_HUB_CACHE / HF_HOME / MODELSCOPE_CACHE to where it is",
    )


def _first_missing(path: Path) -> str:
    """"check the path: FOLDER holds no PART" for the first part of ``path`` that does not exist."""
    at = Path(path.anchor) if path.is_absolute() else Path()
    for part in path.parts[1:] if path.is_absolute() else path.parts:
        if not access.exists(at / part):
            where = "the current folder" if str(at) in ("", ".") else str(at)
            return f"check the path: {where} holds no {part}"
        at = at / part
    return "check the path"
