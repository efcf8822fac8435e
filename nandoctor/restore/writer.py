"""Write a planned repair: copy the source, patch the restored tensors' bytes, verify, move into place.

Same dtype and shape mean same byte length, so each output shard is the
source shard with some byte ranges replaced by donor bytes (copying.py: a
shard is copied, patched and hashed in one pass, several shards at once, one
per core). Headers, metadata, the index and every untouched tensor stay
byte-identical. Everything happens in a temporary folder beside ``out`` (see
atomic.py); each shard is fsynced in the background, the copy is re-scanned,
the proof's comparisons read only the restored extents (moved.py), and only a
clean, verified folder is renamed onto ``out``. The source is only ever opened
for reading.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
import stat
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from nandoctor.access import unreadable
from nandoctor.checkpoint.hubcache import blob_roots
from nandoctor.errors import NandoctorError, OutputExistsError, RepairFailedError, RepairRefusedError
from nandoctor.fileidentity import FileIdentity, fingerprint, within
from nandoctor.kernels.census import HealthLimits
from nandoctor.model import ScanReport, TensorRef
from nandoctor.restore import atomic, stale
from nandoctor.restore.copying import copy_file as _copy_file
from nandoctor.restore.copying import write_weight
from nandoctor.restore.moved import proof_diff
from nandoctor.restore.plan import RepairPlan, Restoration
from nandoctor.restore.proof import PROOF_NAME, RepairResult, WrittenFile, write_proof
from nandoctor.restore.tensorbytes import copy_elements, same_elements
from nandoctor.wording import path_word

# The verdict the training callback (integrations/transformers.py, REPORT_NAME) writes into a checkpoint
# folder: a repaired copy that carried the source's would read as bad to a resumed run and be rotated away.
GATE_REPORT = "nandoctor.json"

Progress = Callable[[int, int, str], None]  # (bytes done, bytes total, what)
Phase = Callable[[str], None]  # "temp", "copied", "verified", "hashed", "proof", "synced", "renamed"


@dataclass(frozen=True)
class Source:
    """What the repair copies: the target's root and which of its files hold the scanned weights."""

    root: Path  # the target folder, or the folder of a single-file target
    single_file: Path | None  # set when the target is one file: only it is copied
    weights: tuple[Path, ...]  # the scanned weight files (patched when a restoration lands there)
    left_out: tuple[Path, ...] = ()  # weights in another format that the scan skipped: not carried over
    # top-level folders not carried over: a run's checkpoint-N folders when its final model is repaired
    # (the repair is of the model at the top; a copy of the whole run would read as a run again)
    skip_dirs: tuple[str, ...] = ()


def _noop(*_: object) -> None:
    return None


def check_out_of_donors(out: Path, donor_roots: list[Path]) -> None:
    """Refuse an --out inside a donor checkpoint: a repair writes into no checkpoint it reads."""
    for root in donor_roots:
        if not root.is_dir():
            continue  # a single-file donor: --out beside it writes into no checkpoint
        if within(out.parent, root):
            raise _refused(out, f"--out lies inside the donor checkpoint {root}",
                           "choose an --out outside every checkpoint the repair reads (e.g. beside the target)")


def _refused(where: Path, why: str, hint: str) -> RepairRefusedError:
    """A refusal of --out (or of the folder that would hold it): ``where`` is what a JSON error's ``path`` names,
    not the target the repair is of (a tester's: a read-only --out's error named the target)."""
    return RepairRefusedError(f"{where}: {why}", hint, path=str(where))


def tidy_out(out: str | os.PathLike[str]) -> Path:
    """``out`` as an absolute path, with ``..`` folded away when that names the same place (``../x``
    printed as written reads badly); a path through a link and ``..`` keeps its form."""
    plain = Path(out).absolute()
    folded = Path(os.path.abspath(out))
    return folded if os.path.realpath(folded) == os.path.realpath(plain) else plain


def check_out(out: Path, source: Source) -> None:
    """Refuse, touching nothing, an --out that exists, has no parent, or lies inside the source."""
    where = source.single_file if source.single_file is not None else source.root
    if os.path.lexists(out) and os.path.realpath(out) == os.path.realpath(where):
        from nandoctor.hints import free_repaired_path  # (never inside a checkpoint folder: beside it)

        raise _refused(out, "--out is the checkpoint being repaired; a repair never writes over its source",
                       f"choose a new folder, e.g. --out {path_word(free_repaired_path(where))}")
    if os.path.lexists(out):
        raise OutputExistsError(str(out))
    from nandoctor.checkpoint.layout import weight_suffixes

    # (a single file's repair is a folder holding it: fixed.safetensors/ made load_file fail; a sharded Lightning
    # checkpoint is itself a folder named …step=N.ckpt, and its repair a folder of that kind)
    if source.single_file is not None and out.suffix.lower() in weight_suffixes():
        raise _refused(out, f"--out names the folder the repair creates (it will hold {source.single_file.name} and the "
                       f"repair's proof), but ends in {out.suffix}, a weight file's suffix",
                       f"choose a folder name, e.g. --out {path_word(out.with_suffix(''))}")
    if not out.parent.is_dir():
        if os.path.lexists(out.parent):
            raise _refused(out.parent, "is a file, not a folder that could hold --out",
                           "choose an --out inside an existing folder")
        raise _refused(out.parent, "the folder that should hold --out does not exist", "create it first")
    if source.single_file is None and within(out.parent, source.root):
        raise _refused(out, "--out lies inside the checkpoint being repaired",
                       "choose an --out outside the source folder (e.g. beside it)")


def write_repair(
    plan: RepairPlan,
    source: Source,
    out: str | os.PathLike[str],
    *,
    source_report: ScanReport,
    progress: Progress | None = None,
    on_phase: Phase | None = None,
    notes: tuple[str, ...] = (),
    hash_all: bool = False,
    inputs: Mapping[str, FileIdentity] | None = None,
    judge: Callable[[ScanReport], ScanReport] | None = None,
    target_dtype: str | None = None,
    limits: HealthLimits | None = None,
) -> RepairResult:
    """Build the repaired checkpoint at ``out``; raises (leaving nothing at ``out``) when it cannot.

    Every patched weight file is hashed (sha256) for the proof; with ``hash_all`` the unpatched
    copies too (hashed while copying, from the copy's own buffer: the CPU time of sha256 is the
    whole extra cost). ``inputs`` maps every source and donor file that was read when the repair was
    planned to its identity then (fileidentity.py: size, times, inode): a file that changes, or is replaced,
    before the output is in place fails the repair, because its new bytes were never checked. ``judge``: the
    verification scan judged as a scan of the output in the source's place would be (within its run:
    checkpoint/runcontext.py)."""
    started = time.perf_counter()
    out = tidy_out(out)
    inputs = inputs or {}
    progress, phase = progress or _noop, on_phase or _noop
    check_out(out, source)
    # Weight files are copied (and hashed, and patched) one per core: sha256 and the copy's reads and writes
    # release the GIL. Each is written back to disk by its own thread, so a waiting fsync holds no copying slot.
    copier = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="nandoctor-copy")
    syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nandoctor-fsync")
    building: atomic.TempFolder | None = None  # (made inside the try: an interrupt right after never leaves it)
    try:
        try:
            stale.clean_stale(out.parent)
            copies, copy_notes, linked, folders = _copy_list(source)
            _check_space(out.parent, sum(size for _, _, size in copies))
            building = atomic.make_temp(out)  # locked while this process lives (stale.py leaves it alone)
        except OSError as exc:  # e.g. a read-only parent folder, a full disk: nothing was created
            raise RepairFailedError(
                f"{out}: {exc.strerror or exc} while creating the repair's temporary folder and its lock beside it "
                f"({path_word(exc.filename or out.parent)})", _cannot_write_hint(exc), path=str(out),
            ) from exc
        temp = building.path
        phase("temp")
        for rel in folders:  # (every one, the empty ones too: a training script may count on its logs/ being there)
            (temp / rel).mkdir(parents=True, exist_ok=True)
        for rel, leads_to in linked:  # (a link farm's links out: kept as links, their targets never read)
            (temp / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(leads_to, temp / rel)
        writes = _writes_by_copy(plan, source, temp)
        futures: dict[Path, Future[tuple[Path, str | None]]] = {}
        syncing: list[Future[None]] = []
        # The files that are hashed (CPU-bound) go first, largest first, so the kernel copies of the rest fill
        # the gaps and no core is left with one big hash at the end.
        for rel, is_weight, _size in sorted(copies, key=lambda c: (not (c[1] and (hash_all or writes.get(temp / c[0]))),
                                                                   -c[2])):
            if is_weight:
                futures[rel] = copier.submit(_write_one, source, rel, temp, writes.get(temp / rel, []), hash_all)
            else:
                futures[rel] = copier.submit(_copy_one, source, rel, temp)
        carried: list[str] = []
        weights: list[Path] = []
        hashes: dict[Path, str | None] = {}
        total, done = sum(size for _, _, size in copies), 0
        for rel, is_weight, size in copies:  # in order: progress and errors as a serial copy gives them
            copy, digest = futures[rel].result()
            if is_weight:
                weights.append(copy)
                hashes[copy] = digest
                syncing.append(syncer.submit(atomic.fsync_path, copy))
            else:
                carried.append(str(rel))
            done += size
            progress(done, total, f"copying {rel}")
        phase("copied")
        verification = _verify(plan, source, temp, source_report, progress, judge, target_dtype, limits)
        diffs = proof_diff(plan, source.single_file or source.root, _source_refs(plan, source, source_report),
                           lambda file: str(_target_copy(source, temp, file)))
        phase("verified")
        for synced in syncing:
            synced.result()
        phase("hashed")
        files = tuple(
            WrittenFile(str(p.relative_to(temp)), p.stat().st_size, hashes.get(p), bool(writes.get(p))) for p in weights
        )
        result = RepairResult(
            plan=plan,
            out=str(out),
            verification=verification,
            files=files,
            carried=tuple(carried),
            left_out=tuple(str(p.relative_to(source.root)) for p in source.left_out),
            proof=str(out / PROOF_NAME),
            seconds=time.perf_counter() - started,
            notes=notes + tuple(copy_notes),
            diffs=diffs,
            source_files=_within(inputs, source.root),
        )

        write_proof(result, temp / PROOF_NAME)
        phase("proof")
        atomic.fsync_tree(temp)
        phase("synced")
        _check_unchanged(inputs)  # the last moment before the output appears
        atomic.move_into_place(building, out)
        phase("renamed")
    except (OSError, NandoctorError) as exc:
        if building is None:
            raise
        if atomic.vanished(building):  # whatever failed first (a copy, the verification scan, the rename)
            raise _removed_meanwhile(building, out) from exc
        if not isinstance(exc, OSError):
            raise
        if exc.errno in _NO_SPACE:  # the disk being written, never the source a copy read
            raise RepairFailedError(
                f"{out}: {exc.strerror or exc} while writing the repair (the disk filled up after the space check); "
                "nothing was left there",
                _cannot_write_hint(exc), path=str(out),
            ) from exc
        where = os.fsdecode(exc.filename) if exc.filename else str(out)
        raise RepairFailedError(f"{where}: {exc.strerror or exc} while writing the repair", path=where) from exc
    finally:
        for pool in (copier, syncer):
            pool.shutdown(wait=True, cancel_futures=True)  # no thread may still use temp when it is removed
        if building is not None:
            atomic.discard(building)  # removed unless it is at --out now; its lock let go
    with contextlib.suppress(OSError):  # the folder is in place; only its durability across a power cut is weaker
        atomic.fsync_path(out.parent)
    return result


def _removed_meanwhile(building: atomic.TempFolder, out: Path) -> RepairFailedError:
    return RepairFailedError(
        f"{building.path}: the repair's temporary folder was removed by another process while the repair was being "
        f"written; nothing was left at {out}",
        f"something else cleans {out.parent} (a tmp cleaner, or an older nandoctor's repair into the same folder from "
        "another container or node, which takes a temporary folder whose process it cannot see for a dead one): "
        "stop it or choose another --out folder, then repair again",
    )


def _copy_list(
    source: Source,
) -> tuple[list[tuple[Path, bool, int]], list[str], list[tuple[Path, str]], list[Path]]:
    """(path relative to the root, is a scanned weight file, size) of every file to copy, notes on what is not
    carried over (links to folders, FIFOs, an earlier repair's proof), (path, target) of the links a link
    farm's output keeps as links, and every subfolder carried over (relative, parents first), empty ones included:
    they were dropped from the output with no word (a tester's)."""
    weights = {p.absolute() for p in source.weights}
    left_out = {p.absolute() for p in source.left_out}
    if source.single_file is not None:
        path = source.single_file
        return [(Path(path.name), True, os.stat(path).st_size)], [], [], []
    found: list[tuple[Path, bool, int]] = []
    notes: list[str] = []
    allowed = (source.root.resolve(), *blob_roots(source.root))
    # A checkpoint whose weights are themselves links out of it is a link farm (``cp -rs``, git-annex, DVC): its
    # config and tokenizer are links out too, and the model does not load without them. They are kept as links
    # to the same files, never read: a crafted farm's tokenizer.model → ~/.ssh/id_rsa puts no key in the output
    # (a link to it, as the source holds); the weights are copied, as the scan read them.
    farm = any(p.is_symlink() and not _leads_inside(p, allowed) for p in source.weights)
    linked: list[tuple[Path, str]] = []
    folders: list[Path] = []

    def unlisted(exc: OSError) -> None:  # a subfolder the user may not list: said, never skipped in silence
        where = Path(exc.filename) if exc.filename else source.root
        if where == source.root:  # the source itself: nothing can be copied
            raise unreadable(where, exc)
        notes.append(f"{where.relative_to(source.root)}/: {unreadable(where, exc).reason}; not carried over")
        with contextlib.suppress(ValueError):  # (nor made, empty, as if it held nothing)
            folders.remove(where.relative_to(source.root))

    for folder, dirs, names in os.walk(source.root, onerror=unlisted):
        here = Path(folder)
        for d in sorted(dirs):
            if (here / d).is_symlink():
                notes.append(f"{(here / d).relative_to(source.root)}: a link to a folder; not carried over")
        dirs[:] = sorted(
            d for d in dirs if not atomic.is_temp(d) and not (here / d).is_symlink()
            and not (here == source.root and d in source.skip_dirs)
        )
        folders.extend((here / d).relative_to(source.root) for d in dirs)
        for name in sorted(names):
            path = here / name
            absolute = path.absolute()
            rel = path.relative_to(source.root)
            if absolute in left_out or atomic.is_temp(name) or rel == Path(PROOF_NAME):
                continue  # an earlier repair's proof is replaced by this one's
            if rel == Path(GATE_REPORT):
                notes.append(f"{rel}: the scan verdict of the unrepaired source; not carried over (it would call "
                             "the repaired checkpoint bad)")
                continue
            try:
                info = os.stat(path)  # follows symlinks (Hugging Face cache snapshots are links to blobs)
            except OSError as exc:
                if absolute in weights or not path.is_symlink():
                    raise RepairFailedError(f"{path}: cannot read ({exc.strerror})") from None
                # A dangling link or a link loop beside the weights (a README.md → nowhere): there is
                # nothing to copy, as with a FIFO; the scan never read it either.
                notes.append(f"{rel}: a link to nothing readable ({exc.strerror}); not carried over")
                continue
            if not stat.S_ISREG(info.st_mode):
                notes.append(f"{rel}: not a regular file; not carried over")
                continue
            if absolute not in weights and path.is_symlink() and not _leads_inside(path, allowed):
                # A link out of the checkpoint (tokenizer.json → ~/.ssh/id_rsa) would copy a file the
                # checkpoint does not hold into a folder the user may share: kept as a link to the same file,
                # never read. Left out, a config.json shared between runs (config.json → ../shared/) made a
                # "REPAIRED" folder that from_pretrained could not load. Scanned weights are copied: the scan
                # read them and the verification re-reads the copies.
                linked.append((rel, os.path.realpath(path)))
                continue
            found.append((rel, absolute in weights, info.st_size))
    if linked:
        shown = ", ".join(str(rel) for rel, _ in linked[:4]) + (" …" if len(linked) > 4 else "")
        store = os.path.commonpath([os.path.dirname(target) for _, target in linked])
        why = ", as its weights are (a link farm: cp -rs, git-annex, DVC)" if farm else " folder"
        notes.append(f"{len(linked)} file(s) are links out of the checkpoint{why}: kept as links to the same files in "
                     f"{store}, not copied ({shown}); the repaired folder breaks if {store} is removed: check what they "
                     "point to, then copy them in with cp -L to make it stand alone")
    missing = weights - {(source.root / rel).absolute() for rel, w, _ in found if w}
    if missing:
        raise RepairFailedError(f"{sorted(missing)[0]}: scanned weight file not found under {source.root}")
    return found, notes, linked, folders


def _within(inputs: Mapping[str, FileIdentity], root: Path) -> dict[str, FileIdentity]:
    """The identity of the source's files read for the plan, by path relative to the source: the proof
    records them, so that a repair is offered only for the checkpoint as it was (hints.verified_repair)."""
    found = {}
    for path, recorded in inputs.items():
        try:
            found[str(Path(path).absolute().relative_to(root.absolute()))] = recorded
        except ValueError:
            continue  # (a donor's)
    return found


def _leads_inside(path: Path, allowed: tuple[Path, ...]) -> bool:
    """True when the link ``path`` ends in one of ``allowed`` (the source, a cache snapshot's blobs)."""
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    return any(root in resolved.parents for root in allowed)


def _check_unchanged(inputs: Mapping[str, FileIdentity]) -> None:
    """Refuse to go on when a file read for the plan changed since (a training run still saving,
    ``save_total_limit`` rotating a donor away): its new bytes were never checked."""
    for path, before in inputs.items():
        try:
            now = fingerprint(path)
        except OSError as exc:
            raise RepairFailedError(
                f"{path}: {exc.strerror or exc} (it was read when the repair was planned)",
                "something removed it during the repair; make sure nothing writes the checkpoints, then repair again",
            ) from None
        if now != before:
            raise RepairFailedError(
                f"{path}: changed during the repair (its size, times or inode differ from when it was planned: "
                "rewritten, or replaced by another file)",
                "wait until whatever writes it has finished (a training run saving or rotating checkpoints), "
                "then repair again",
            )


SPARE_BYTES = 64 << 20  # left free beside the repaired checkpoint (the proof, the file system's own needs)


def _check_space(parent: Path, needed: int) -> None:
    free = shutil.disk_usage(parent).free
    if free < needed + SPARE_BYTES:
        # sizes in the unit that fits each (a small checkpoint on a nearly full disk: "needs 0.00 GB" said nothing)
        from nandoctor.report.rich_report import human_bytes

        raise _refused(parent, f"the repaired checkpoint needs {human_bytes(needed)} and {human_bytes(SPARE_BYTES)} "
                       f"to spare, but only {human_bytes(free)} are free", _NO_SPACE_HINT)


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NO_SPACE_HINT = "free some space or choose an --out on another disk"


def _cannot_write_hint(exc: OSError) -> str:
    """What to do when --out's folder would not take the repair, by what the file system said (its errno): a full
    disk is no folder the user may not write to (a tester's ENOSPC at the lock file read "a folder you can write to")."""
    if exc.errno in _NO_SPACE:
        return _NO_SPACE_HINT
    if exc.errno == errno.EROFS:
        return "its file system is mounted read-only: choose an --out on another one"
    return "choose an --out in a folder you can write to"


def _copy_one(source: Source, rel: Path, temp: Path) -> tuple[Path, str | None]:
    """Copy a file that is not a scanned weight file (config, tokenizer …) in the kernel; (its copy, None)."""
    src = source.root / rel
    dst = temp / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    _copy_file(src, dst)
    _chmod_like(src, dst)
    return dst, None


def _write_one(source: Source, rel: Path, temp: Path, restorations: list[Restoration],
               hash_all: bool) -> tuple[Path, str | None]:
    """Copy, patch and (when patched or ``hash_all``) hash one weight file; (its copy, its sha256)."""
    src = source.single_file if source.single_file is not None else source.root / rel
    dst = temp / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    # This module's own references, looked up now: the tests replace them here to inject faults.
    digest = write_weight(src, dst, restorations, hash_it=hash_all, copy=_copy_file, write_elements=copy_elements)
    _chmod_like(src, dst)
    return dst, digest


def _chmod_like(src: Path, dst: Path) -> None:
    # The source's permission bits, but owner-writable: the new folder is the user's (Hugging Face cache
    # blobs are read-only). Never setuid/setgid/sticky (``& 0o777``, as cp).
    os.chmod(dst, (os.stat(src).st_mode & 0o777) | stat.S_IWUSR)


def _target_copy(source: Source, temp: Path, file: str) -> Path:
    """Where a source weight file's copy lies in the temporary folder."""
    if source.single_file is not None:
        return temp / source.single_file.name
    return temp / Path(file).absolute().relative_to(source.root.absolute())


def _writes_by_copy(plan: RepairPlan, source: Source, temp: Path) -> dict[Path, list[Restoration]]:
    """The restorations that write bytes, by the copy of the file they land in."""
    by_file: dict[Path, list[Restoration]] = {}
    for restoration in plan.writes:
        by_file.setdefault(_target_copy(source, temp, restoration.target_ref.file), []).append(restoration)
    return by_file


def _source_refs(plan: RepairPlan, source: Source, source_report: ScanReport) -> list[TensorRef]:
    """Every tensor of the source: the scan's, or with ``--only``/``--exclude`` its headers read again
    (cheap: no tensor data), since a tensor left out of the scan may share a restored storage; for a sharded
    source (DCP) too, since the scan reports a chunked tensor whole and the bytes are its stored chunks."""
    sharded = any(p.suffix == ".distcp" or "zero_pp_rank_" in p.name for p in source.weights)
    if plan.selection is None and not sharded:
        return [t.ref for t in source_report.tensors]
    from nandoctor.checkpoint.opener import open_checkpoint

    opened = open_checkpoint(source.single_file or source.root)
    return [ref for refs in opened.refs_by_file.values() for ref in refs]


def _verify(plan: RepairPlan, source: Source, temp: Path, source_report: ScanReport, progress: Progress,
            judge: Callable[[ScanReport], ScanReport] | None = None, target_dtype: str | None = None,
            limits: HealthLimits | None = None) -> ScanReport:
    """Re-scan what was written (judged by ``judge``: as in the source's place; overflow counted for
    ``target_dtype``, the dtype the source's config.json loads it in; by the repair's health ``limits``, as its
    target and donors were), and check every restored tensor now holds its donor's bytes."""
    from nandoctor import verdict
    from nandoctor.engine import scan

    scanned = temp / source.single_file.name if source.single_file is not None else temp
    report = scan(scanned, device="cpu", progress=progress, selection=plan.selection,  # --only/--exclude
                  target_dtype=target_dtype, limits=limits)
    if judge is not None:
        report = judge(report)
    if not report.ok:
        if report.errors:
            problem = report.errors[0].message
        elif report.health == "diverged":
            problem = f"it would be diverged in place: {verdict.diverged_why(report)}"
        else:
            problem = f"{report.verdict} ({report.nonfinite:,} non-finite values remain)"
        raise RepairFailedError(f"{plan.target}: the repaired copy failed its verification scan: {problem}")
    if sorted(t.name for t in source_report.tensors) != sorted(t.name for t in report.tensors):
        raise RepairFailedError(f"{plan.target}: the repaired copy does not hold the same tensors as the source")
    written = {(t.ref.file, t.name): t.ref for t in report.tensors}
    for r in plan.restorations:
        copy = str(_target_copy(source, temp, r.target_ref.file))
        # A box of a chunked tensor (pieces.py) is no tensor of the report: the copy holds it at the same bytes.
        ref = written.get((copy, r.name)) if r.box is None else relocated(r.target_ref, copy)
        if ref is None or not same_elements(copy, ref, r.donor_ref.file, r.donor_ref, cast=r.cast):
            raise RepairFailedError(
                f"{r.target_ref.file}: tensor {r.name!r} would not hold its donor's bytes after the repair",
                "it shares storage with another restored tensor whose donor disagrees; repair them from one donor",
            )
    return report


def relocated(ref: TensorRef, file: str) -> TensorRef:
    """``ref`` read from ``file`` (a copy with the same layout) instead of its own file."""
    return dataclasses.replace(ref, region=dataclasses.replace(ref.region, file=file))
