"""Checksums: a checkpoint's weight files against the sha256 recorded for them, offline.

Where an expected sha256 comes from, without any network:

- a Hugging Face cache snapshot: each file is a link into ``blobs/``, and an
  LFS file's blob is named by its sha256 (64 hex digits; git-stored small files
  have 40-digit sha1 names and are not weights);
- a repaired checkpoint's ``nandoctor-repair.json`` records its shards' sha256;
- a manifest written by ``nandoctor manifest PATH > manifest.json``: the sha256
  of every weight file plus the sha256 of every distinct storage span (a
  safetensors tensor, a torch storage that several tensors may view), so a
  mismatch names the tensors whose bytes changed; and the sha256 of the small
  files that decide how the weights load (config.json, the shard index, the
  tokenizer files: loadfiles.py), checked only against a manifest (``load_files``;
  a manifest written before it records none, and the check says so).

Files are hashed in parallel (hashlib releases the GIL on large updates), each
streamed through one reused buffer. A mismatch is a ``ScanProblem`` (kind
``hash``): the scan exits 3 and names file and tensor. A checkpoint none of whose
weight files has a recorded sha256 is one too (kind ``unverified``): a check that
verified nothing never passes as one that verified everything.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nandoctor.access import unreadable
from nandoctor.checkpoint import layout
from nandoctor.checkpoint.hubcache import is_snapshot
from nandoctor.checkpoint.jsonfiles import read_json
from nandoctor.checkpoint.loadfiles import load_files
from nandoctor.checkpoint.opener import Checkpoint
from nandoctor.errors import CorruptCheckpointError, ManifestError, NandoctorError
from nandoctor.model import Region, ScanProblem
from nandoctor.wording import path_word

MANIFEST_SCHEMA = 1
_SAVED_AFTER = 2.0  # seconds a file's time may pass its proof's (coarse file system clocks) and still be the repair's
PROOF_NAME = "nandoctor-repair.json"  # the repair proof's file name: defined here, where hash checks read it; restore/ writes it
READ_BYTES = 8 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Expected:
    """The sha256 a file should have, and who says so."""

    sha256: str
    source: str  # "huggingface cache blob name", "nandoctor-repair.json", "manifest <path>"
    spans: tuple[dict[str, Any], ...] = ()  # a manifest's per-storage hashes of this file
    resaved: bool = False  # a file put in place beside its own proof and written after it: a mismatch is a new save


@dataclass
class HashCheck:
    """What ``--verify-hashes`` found: checked files, mismatches as problems, unverifiable files as notes."""

    verified: list[tuple[str, str]] = field(default_factory=list)  # (file, source) that matched
    load_files: list[str] = field(default_factory=list)  # config, index, tokenizer files that match the manifest
    load_files_failed: list[str] = field(default_factory=list)  # … changed, lost or added since (each a problem)
    unverified: list[str] = field(default_factory=list)  # weight files with no recorded sha256
    problems: list[ScanProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bytes_hashed: int = 0
    seconds: float = 0.0


def sha256_file(path: str | os.PathLike[str], offset: int = 0, length: int | None = None) -> str:
    """The sha256 of a file (or of ``length`` bytes from ``offset``), streamed through one buffer."""
    digest = hashlib.sha256()
    buffer = bytearray(min(READ_BYTES, length) if length is not None else READ_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        fh.seek(offset)
        left = length
        while left is None or left > 0:
            want = len(buffer) if left is None else min(len(buffer), left)
            n = fh.readinto(view[:want])
            if not n:
                if left is not None:
                    raise CorruptCheckpointError(str(path), f"the file ended {left:,} bytes before the span at {offset:,}")
                break
            digest.update(view[:n])
            if left is not None:
                left -= n
    return digest.hexdigest()


def sha256_files(paths: Iterable[Path], workers: int | None = None) -> dict[Path, str | OSError]:
    """Each file's sha256, files hashed in parallel (one per core); an unreadable file maps to its error."""
    paths = list(paths)

    def one(path: Path) -> str | OSError:
        try:
            return sha256_file(path)
        except OSError as exc:
            return exc

    workers = max(1, min(len(paths), workers or os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nandoctor-sha256") as pool:
        return dict(zip(paths, pool.map(one, paths)))


def _relative(checkpoint: Checkpoint, file: Path) -> str:
    root = checkpoint.path if checkpoint.path.is_dir() else checkpoint.path.parent
    try:
        return file.relative_to(root).as_posix()
    except ValueError:
        return file.name


def _spans(checkpoint: Checkpoint, file: Path) -> list[tuple[Region, list[str]]]:
    """The distinct storage spans of ``file`` (tensors sharing a torch storage are one span), in file order."""
    spans: dict[tuple[str, int, int], tuple[Region, list[str]]] = {}
    for ref in checkpoint.refs_by_file.get(file, []):
        key = (ref.region.key, ref.region.offset, ref.region.nbytes)
        spans.setdefault(key, (ref.region, []))[1].append(ref.name)
    return sorted(spans.values(), key=lambda s: s[0].offset)


def manifest(checkpoint: Checkpoint, workers: int | None = None) -> dict[str, Any]:
    """The manifest of a checkpoint: sha256 per weight file and per storage span (``nandoctor manifest``)."""
    from nandoctor import __version__
    from nandoctor.verdict import CONFIG_KIND, UNLOADABLE_KIND

    # (a config or tokenizer file's values, or a folder that would not load as it is: its weight files were read, and
    # their hashes are what a manifest records)
    unread = [p for p in checkpoint.problems if p.kind not in (CONFIG_KIND, UNLOADABLE_KIND)]
    if unread:
        first = unread[0]
        raise CorruptCheckpointError(first.path, f"cannot record hashes of a checkpoint that does not read: {first.message}",
                                     first.hint or "a manifest records a good checkpoint; fix or re-download it first")
    files = list(checkpoint.refs_by_file)
    digests = sha256_files(files, workers)

    def span_hashes(file: Path) -> list[dict[str, Any]]:
        return [
            {"storage": region.key, "offset": region.offset, "bytes": region.nbytes,
             "sha256": sha256_file(file, region.offset, region.nbytes), "tensors": names}
            for region, names in _spans(checkpoint, file)
        ]

    workers = max(1, min(len(files), workers or os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nandoctor-sha256") as pool:
        spans = dict(zip(files, pool.map(span_hashes, files)))
    entries = []
    for file in files:
        digest = digests[file]
        if isinstance(digest, OSError):
            raise CorruptCheckpointError(str(file), f"cannot read it: {digest.strerror or digest}")
        entries.append({"path": _relative(checkpoint, file), "bytes": file.stat().st_size, "sha256": digest,
                        "spans": spans[file]})
    loading = load_files(checkpoint)
    loading_digests = sha256_files(loading, workers)
    load_entries = []
    for file in loading:
        digest = loading_digests[file]
        if isinstance(digest, OSError):
            raise CorruptCheckpointError(str(file), f"cannot read it: {digest.strerror or digest}")
        load_entries.append({"path": _relative(checkpoint, file), "bytes": file.stat().st_size, "sha256": digest})
    return {
        "nandoctor_manifest": MANIFEST_SCHEMA,
        "nandoctor_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "root": os.path.abspath(checkpoint.path),
        "files": entries,
        "load_files": load_entries,  # (a later key of schema 1: a manifest without it verifies the weights alone)
    }


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A manifest file, checked for shape before use (it may come from anywhere); ManifestError (exit 3,
    naming the file) when it cannot be read or is not a manifest."""
    try:
        data = read_json(Path(path))
    except PermissionError as exc:  # there, but not to be read: what to do about permissions
        denied = unreadable(path, exc)
        raise ManifestError(f"{path}: cannot read the manifest: {denied.reason}", denied.hint) from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ManifestError(f"{path}: not a nandoctor manifest ({exc})") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("nandoctor_manifest") != MANIFEST_SCHEMA or not isinstance(files, list):
        raise ManifestError(f"{path}: not a nandoctor manifest (no \"nandoctor_manifest\": 1 with a files list)")
    loading = data.get("load_files", [])
    if not isinstance(loading, list):
        raise ManifestError(f"{path}: not a nandoctor manifest (\"load_files\" is no list)")
    for entry in [*files, *loading]:
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str)
                and isinstance(entry.get("sha256"), str) and _SHA256.match(entry["sha256"])):
            raise ManifestError(f"{path}: manifest entry {str(entry)[:80]!r} has no path and sha256")
    for entry in loading:  # (hashed where they point: a crafted path must not reach outside the checkpoint)
        where = Path(entry["path"])
        if where.is_absolute() or ".." in where.parts:
            raise ManifestError(f"{path}: manifest entry {entry['path'][:80]!r} is not a path inside the checkpoint")
    return data


def expected_hashes(checkpoint: Checkpoint, manifest_path: str | os.PathLike[str] | None = None) -> dict[Path, Expected]:
    """Every weight file of the checkpoint whose sha256 is known offline, with where it is known from.
    A manifest wins over a repair proof, which wins over a cache blob name. A file put in place beside its own proof
    and written after it is ``resaved``: a mismatch there is a new save (a Lightning last.ckpt saved again by the next
    training step: a new user's trial read HASH MISMATCH, "restore it from a good copy"), a match still verified (a
    copy made with plain cp: its file written after its proof)."""
    out: dict[Path, Expected] = {}
    by_relative = {_relative(checkpoint, f): f for f in checkpoint.files.files}
    folder = checkpoint.path if checkpoint.path.is_dir() else checkpoint.path.parent
    if is_snapshot(folder):
        for file in checkpoint.files.files:
            blob = Path(os.path.realpath(file))
            if file.is_symlink() and blob.parent.name == "blobs" and _SHA256.match(blob.name):
                out[file] = Expected(blob.name, "Hugging Face cache blob name")
    # (a folder's repair proof; a single file put in place keeps its proof beside it, FILE.nandoctor-repair.json:
    # hints.put_in_place)
    # (each proof with the files its entries name: a folder's by their paths in it, a file's by its name alone)
    proofs = [(folder / PROOF_NAME, by_relative)] + [
        (f.with_name(f"{f.name}.{PROOF_NAME}"), {f.name: f}) for f in checkpoint.files.files]
    for proof, named in proofs:
        if not proof.is_file():
            continue
        data = read_json(proof)
        # (a file put in place beside its own proof may be saved again where it lies, as Lightning's last.ckpt is; a
        # repaired folder is not written into by training, and a plain cp of it gives every file a new time)
        written = proof.stat().st_mtime if proof.name != PROOF_NAME else None
        for entry in data.get("files", []) if isinstance(data, dict) else []:
            found = named.get(str(entry.get("path"))) if isinstance(entry, dict) else None
            if found is not None and isinstance(entry.get("sha256"), str) and _SHA256.match(entry["sha256"]):
                resaved = written is not None and found.stat().st_mtime > written + _SAVED_AFTER
                out[found] = Expected(entry["sha256"], proof.name, resaved=resaved)
    if manifest_path is not None:
        for entry in read_manifest(manifest_path)["files"]:
            listed = by_relative.get(entry["path"])
            if listed is not None:
                spans = tuple(s for s in entry.get("spans", []) if isinstance(s, dict))
                out[listed] = Expected(entry["sha256"], f"manifest {manifest_path}", spans)
    return out


def _changed_spans(file: Path, expected: Expected) -> list[str]:
    """The tensors of ``file`` whose span no longer has the manifest's sha256."""
    names: list[str] = []
    for span in expected.spans:
        try:
            offset, length = int(span["offset"]), int(span["bytes"])
            if sha256_file(file, offset, length) != span["sha256"]:
                names += [str(n) for n in span.get("tensors", [])] or [f"storage {span.get('storage')}"]
        except (KeyError, TypeError, ValueError, OSError, NandoctorError):
            names.append(f"storage {span.get('storage')!s} (its span cannot be read)")
    return names


def verify(checkpoint: Checkpoint, manifest_path: str | os.PathLike[str] | None = None,
           workers: int | None = None) -> HashCheck:
    """Hash every weight file whose sha256 is known; a mismatch (or a file the manifest names but the
    checkpoint lacks) is a problem naming file and tensor."""
    started = time.perf_counter()
    check = HashCheck()
    expected = expected_hashes(checkpoint, manifest_path)
    if manifest_path is not None:
        present = {_relative(checkpoint, f) for f in checkpoint.files.files}
        for entry in read_manifest(manifest_path)["files"]:
            if entry["path"] not in present:
                check.problems.append(ScanProblem(entry["path"], f"listed in the manifest {manifest_path} but not in the checkpoint",
                                                  "the checkpoint lost a file; re-download or re-save it", kind="hash"))
        _verify_load_files(checkpoint, manifest_path, check, workers)
    unknown = [f for f in checkpoint.files.files if f not in expected]
    check.unverified = [str(f) for f in unknown]
    if unknown and not expected:  # a check that verified nothing must not pass as one that verified everything
        check.problems.append(ScanProblem(
            str(checkpoint.path),
            f"no weight file has a recorded sha256, so nothing was verified ({len(unknown)} file(s), e.g. {unknown[0].name})",
            f"record the hashes from a good copy with `nandoctor manifest {path_word(checkpoint.path)} > manifest.json` and "
            "scan with --manifest manifest.json, or scan the repo id from the Hugging Face cache (its blob names are the "
            "sha256); without --verify-hashes the scan does not check hashes",
            kind="unverified",
        ))
    elif unknown:
        check.notes.append(f"{len(unknown)} weight file(s) have no recorded sha256 and were not verified "
                           f"(e.g. {unknown[0].name}); record one with: nandoctor manifest PATH > manifest.json")
    digests = sha256_files(expected, workers)
    for file, want in expected.items():
        got = digests[file]
        if isinstance(got, OSError):
            check.problems.append(ScanProblem(str(file), f"cannot hash it: {got.strerror or got}"))
            continue
        check.bytes_hashed += file.stat().st_size
        if got == want.sha256:
            check.verified.append((str(file), want.source))
            continue
        if want.resaved:
            check.unverified.append(str(file))
            check.notes.append(f"{file.name}: saved again after the repair proof that records it (training went on): "
                               "its bytes are a new save's, not the repair's; record them with: "
                               f"nandoctor manifest {path_word(file)} > manifest.json")
            continue
        tensors = _changed_spans(file, want)
        where = f"; changed tensor(s): {', '.join(repr(t) for t in tensors[:8])}" + (" …" if len(tensors) > 8 else "") \
            if tensors else ""
        check.problems.append(ScanProblem(
            str(file),
            f"sha256 mismatch against the {want.source}: expected {want.sha256[:16]}…, got {got[:16]}…{where}",
            "the file is not the one recorded: re-download it (a cache blob) or restore it from a good copy",
            kind="hash",
        ))
    resaved = [f for f, want in expected.items() if want.resaved and str(f) in check.unverified]
    if resaved and not check.verified and not check.problems:  # (verifying nothing still fails: the note says why)
        check.problems.append(ScanProblem(
            str(checkpoint.path), f"no weight file holds the bytes recorded for it: {resaved[0].name} was saved again "
            "after its repair proof, so nothing was verified",
            f"record the hashes of this save with `nandoctor manifest {path_word(checkpoint.path)} > manifest.json` and "
            "scan with --manifest manifest.json", kind="unverified"))
    check.seconds = time.perf_counter() - started
    return check


def _verify_load_files(checkpoint: Checkpoint, manifest_path: str | os.PathLike[str], check: HashCheck,
                       workers: int | None) -> None:
    """The config, index and tokenizer files against the manifest's ``load_files``: a changed, lost or added one
    is a problem (kind ``hash``) naming it; a manifest written before they were recorded, a note saying that
    only the weight files were verified."""
    recorded = read_manifest(manifest_path).get("load_files")
    present = {_relative(checkpoint, f): f for f in load_files(checkpoint)}
    if recorded is None:
        if present:
            check.notes.append(
                f"the manifest {manifest_path} records the weight files only (written before nandoctor recorded the "
                f"files that decide how they load): {_listed(present)} not verified; record a new manifest from a "
                "good copy to cover them")
        return
    root = checkpoint.path if checkpoint.path.is_dir() else checkpoint.path.parent
    wanted = {entry["path"]: entry["sha256"] for entry in recorded}
    record = ("if the change was meant, record a new manifest: "
              f"nandoctor manifest {path_word(checkpoint.path)} > manifest.json")
    for relative in sorted(set(present) - set(wanted)):
        check.load_files_failed.append(relative)
        check.problems.append(ScanProblem(
            str(present[relative]), f"not in the manifest {manifest_path}: added since it was recorded, and it "
            "decides how the weights load", f"remove it if it does not belong; {record}", kind="hash"))
    files = {relative: root / relative for relative in wanted}
    digests = sha256_files([f for f in files.values() if layout.is_regular_file(f)], workers)
    for relative, want in wanted.items():
        got = digests.get(files[relative])
        if got != want:
            check.load_files_failed.append(relative)
        if got is None:
            check.problems.append(ScanProblem(
                str(files[relative]), f"listed in the manifest {manifest_path} but not in the checkpoint (it decides "
                "how the weights load)", "restore it from the good copy the manifest was recorded from", kind="hash"))
        elif isinstance(got, OSError):
            check.problems.append(ScanProblem(str(files[relative]), f"cannot hash it: {got.strerror or got}", kind="hash"))
        elif got != want:
            check.problems.append(ScanProblem(
                str(files[relative]),
                f"changed since the manifest {manifest_path} was recorded (sha256 expected {want[:16]}…, got "
                f"{got[:16]}…): it decides how the weights load, so the model may load or compute differently",
                f"restore it from the good copy the manifest was recorded from; {record}", kind="hash"))
        else:
            check.load_files.append(relative)


def _listed(files: dict[str, Path]) -> str:
    names = sorted(files)
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
