"""The next command to run, as text: what a report suggests once it has found something.

Quoted for a POSIX shell so that it pastes as one line; placeholders in angle
brackets where only the user knows the answer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nandoctor import access
from nandoctor.checkpoint import hubcache, layout, runs
from nandoctor.checkpoint.steps import is_accelerate_save
from nandoctor.errors import NandoctorError
from nandoctor.model import ScanReport
from nandoctor.wording import path_word, shell_word

AUTO = "auto"


NO_AUTO_DONOR = "<an earlier clean checkpoint or the base model>"  # for the user to fill in
NO_AUTO_GGUF_DONOR = "<a clean GGUF of the same model and tensor types>"


def repair_command(report: ScanReport) -> str:
    """The ``nandoctor repair`` line that fixes ``report``'s checkpoint (with the scan's ``--only``/``--exclude``).

    ``--from auto`` only where the run context (checkpoint/runcontext.py) found a donor it would take."""
    from nandoctor import verdict

    context = verdict.run_context(report)
    donor = None if context is None else AUTO if context.get("auto") else NO_AUTO_DONOR
    return repair_command_for(_repaired_part(report), donor, selection=selection_args(report))


def _repaired_part(report: ScanReport) -> str:
    """What a repair of ``report`` takes: its target, or the one file holding every bad tensor where the folder's files
    are separate checkpoints (files sharing tensor names, each a save of its own: a new user's folder of three .ckpt
    files was told to repair the folder, which then refused the earlier files as part of it)."""
    from nandoctor.checkpoint.opener import SEPARATE

    if not any(SEPARATE in note for note in report.notes):
        return report.target
    files = {t.ref.file for t in report.bad_tensors} | {t.ref.file for t in report.unhealthy_tensors}
    return str(files.pop()) if len(files) == 1 else report.target


def selection_args(report: ScanReport) -> str:
    """The ``--only``/``--exclude`` options ``report`` was scanned with, quoted, so that the repair it suggests
    judges the same tensors (without them it would refuse over a tensor the scan left out)."""
    excluded = report.extra.get("excluded")
    if not isinstance(excluded, dict):
        return ""
    options = [("--only", p) for p in excluded.get("only", ())] + [("--exclude", p) for p in excluded.get("exclude", ())]
    return "".join(f" {option} {shell_word(pattern)}" for option, pattern in options)


def repair_command_for(target: str, donor: str | None = None, selection: str = "") -> str:
    """The ``nandoctor repair`` line for the checkpoint at ``target``, quoted for a POSIX shell.

    ``donor``: a healthy checkpoint the caller knows of, ``auto`` or a placeholder (``<…>``, unquoted);
    when None, ``auto`` for a checkpoint of a run (a ``checkpoint-N`` folder, a Lightning ``…step=N….ckpt``
    file beside others), else a placeholder. Callers that know whether auto finds a donor pass it.
    ``selection``: options to add (:func:`selection_args`). ``--out`` is always a name that is still
    free: repair refuses an existing one.
    """
    target = target.rstrip("/") or target
    split = layout.gguf_split_folder(Path(target))
    if split is not None:  # (a gguf-split file: its set is the checkpoint, repaired as the folder holding it)
        target = str(split)
    if donor is None:
        in_run = runs.place_in_run(Path(target)) is not None
        donor = AUTO if in_run else NO_AUTO_DONOR
    if donor == NO_AUTO_DONOR and (split is not None or Path(target).suffix.lower() == ".gguf"):  # (docs/gguf.md)
        donor = NO_AUTO_GGUF_DONOR
    donor_arg = donor if donor == AUTO or donor.startswith("<") else path_word(donor)  # placeholders unquoted
    if hubcache.is_snapshot(target) or Path(target).exists():
        out = path_word(free_repaired_path(Path(target)))
    else:
        out = "<new folder>"
    return f"nandoctor repair {path_word(target)} --from {donor_arg}{selection} --out {out}"


CLEAN_BASE_DONOR = "<a clean copy of the base model>"  # for the user to fill in (a base has no run to take from)


def base_model_steps(adapter: str, base: dict[str, Any], config: str | None = None) -> list[str]:
    """What to do about the PEFT adapter alone at ``adapter`` whose base model fails its own scan (``base``: the
    report's ``adapter_base_scan``, adapterbase.py): repair the base, or name a clean one; a repair of the adapter
    restores the adapter's own tensors only, and the adapted model would still compute with the base's weights.
    ``config``: where base_model_name_or_path is written, in words (a run's: each checkpoint's)."""
    path = str(base.get("path"))
    config = config or str(Path(adapter) / "adapter_config.json")
    return [f"the base model the adapter is applied to ({path}) fails its own scan: repair it from a clean copy of it "
            "with",
            f"    {repair_command_for(path, CLEAN_BASE_DONOR)}",
            f"and point base_model_name_or_path in {config} to the repaired copy (or to another clean copy of the base "
            "model), then scan the adapter again (a repair of the adapter restores its own tensors only)"]


# Loads a torch file as data (no code runs) and saves every tensor cloned: a clone owns a storage of exactly
# its own elements, so bytes no tensor views are not written again (torch.save of a view writes its whole storage).
_RESAVE = ("import sys, torch; from torch.utils._pytree import tree_map; "
           "torch.save(tree_map(lambda v: v.clone() if isinstance(v, torch.Tensor) else v, "
           "torch.load(sys.argv[1], weights_only=True)), sys.argv[2])")


DCP_RESAVE = ("load the checkpoint with torch.distributed.checkpoint.load (one process: no_dist=True), replace each "
              "tensor view in the pickled object by its .clone() (a clone keeps only the bytes it views), and save it "
              "again with torch.distributed.checkpoint.save")


def resave_command(file: str) -> str:
    """The command that re-saves the torch file ``file`` with only the bytes its tensors view, to a free name
    beside it (``view-resaved.pt``): what fixes NaN/Inf in storage bytes no tensor views, which no repair by
    tensor name can restore. A DCP ``.distcp`` item is no file torch.load reads: :data:`DCP_RESAVE` says what to do
    (a trial ran the command on one: "PytorchStreamReader failed reading zip archive")."""
    if file.endswith(".distcp"):
        return DCP_RESAVE
    path = Path(file)
    out = _free(path.with_name(f"{path.stem}-resaved{path.suffix}"))
    return f"python -c {shell_word(_RESAVE)} {path_word(file)} {path_word(out)}"


def put_in_place(target: str, repaired: Path) -> str:
    """The shell line that puts the repair at ``repaired`` (a folder) where ``target`` is, keeping the bad one as
    ``target-bad``; a Lightning file is repaired into a folder holding the file of the same name."""
    named = access.named_path(target)
    a_file = Path(target).is_file()
    source = repaired / named.name if a_file else repaired
    # (a free name: `mv X X-bad` into an existing X-bad folder would nest the checkpoint inside it, silently)
    bad: Path | str = set_aside_path(target)
    if os.path.abspath(target) == os.getcwd():  # (`.`: the working folder cannot be moved by that name)
        target, bad, source = str(named), os.path.abspath(bad), Path(os.path.abspath(source))
    line = f"mv {path_word(target)} {path_word(bad)} && mv {path_word(source)} {path_word(target)}"
    if a_file:
        # (a file repaired into a folder: its proof goes beside the file, named for it, and the emptied folder away;
        # a new user's trial: the folder left holding the proof alone was "not part of the timeline", and its scan
        # "no checkpoint files found")
        from nandoctor.checkpoint.hashes import PROOF_NAME

        proof = Path(target).with_name(f"{named.name}.{PROOF_NAME}")
        line += f" && mv {path_word(repaired / PROOF_NAME)} {path_word(proof)} && rmdir {path_word(repaired)}"
    return line


SET_ASIDE = "-bad"  # (runs.SET_ASIDE_NAME knows the names it makes)


def set_aside_path(target: str) -> str:
    """Where the next steps move a bad checkpoint aside (``bad-checkpoint-N`` for a Trainer one), spelled as
    ``target`` was, at a name still free."""
    named = access.named_path(target)
    return str(access.as_spelled(Path(_free(_outside_the_run(named, SET_ASIDE))), target))


def _outside_the_run(target: Path, suffix: str) -> Path:
    """``target`` with ``suffix`` added to its name, beside it (before it for a Trainer ``checkpoint-N``:
    ``bad-checkpoint-N``, ``repaired-checkpoint-N``, outside Trainer's ``checkpoint-*``); for a folder of accelerate's automatic naming
    (``checkpoints/checkpoint_2``), beside ``checkpoints/`` instead: accelerate's ``load_state()`` resumes the folder
    in there whose first number is the largest, and ``checkpoint_2-bad`` ties with ``checkpoint_2`` (a trial
    resumed the poisoned copy, and a ``total_limit`` rotation kept it over the healthy ones)."""
    if is_accelerate_save(target):
        return target.parent.parent / f"{target.name}{suffix}"
    if suffix and runs.is_trainer_checkpoint(target):
        # (transformers' rotation globs checkpoint-* and reads the step in checkpoint-30-bad: a new user's trial, a
        # save_total_limit rotation deleted the healthy checkpoint-20 and kept the bad copy; a repair's
        # checkpoint-30-repaired counts the same while it waits to be put in place)
        return target.with_name(f"{suffix.strip('-')}-{target.name}")
    return target.with_name(f"{target.name}{suffix}")


def verified_repair(folder: Path, target: Path | None = None, report: ScanReport | None = None,
                    proof: dict[str, Any] | None = None) -> bool:
    """True when ``folder`` holds a finished repair whose proof says its verification scan was clean and whose
    files are still those the proof lists (:func:`_as_written`); given the ``target`` it repaired, that the
    target's files are still those the repair read (a re-saved checkpoint is not the one the repair fixed:
    putting it in place would lose the new save); given the ``report`` of a scan of the target, that the repair
    judged its tensors as that scan does (a repair made with ``--exclude`` or another ``--max-abs`` left tensors
    unjudged, or judged by other limits, that this scan fails on). ``proof``: its proof, where already read."""
    from nandoctor.restore.atomic import is_temp
    from nandoctor.restore.proof import read_proof, source_unchanged

    if is_temp(folder.name):  # (a repair still writing, or killed before its rename: never finished)
        return False
    if proof is None:
        try:
            proof = read_proof(folder)
        except (OSError, ValueError):
            return False
    verification = proof.get("verification") if isinstance(proof, dict) else None
    if not (isinstance(verification, dict) and verification.get("verdict") == "CLEAN") or not _as_written(folder, proof):
        return False
    if report is not None and not _judged_alike(proof, report):
        return False
    return target is None or source_unchanged(proof, target if target.is_dir() else target.parent)


def _as_written(folder: Path, proof: dict) -> bool:
    """Whether the files the proof lists are there with the sizes it records, and nothing at the folder's top
    changed after the proof was written (a bad shard copied back into a verified repair is no verified repair)."""
    from nandoctor.checkpoint.hashes import PROOF_NAME

    try:
        # (the inode change time too: `cp -p` keeps an old mtime on a file copied back, no program sets a ctime)
        proof_stat = os.stat(folder / PROOF_NAME)
        written = max(proof_stat.st_mtime_ns, proof_stat.st_ctime_ns)
        files = proof.get("files")
        if not isinstance(files, list):
            return False
        for entry in files:
            if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
                return False
            found = os.stat(folder / entry["path"])
            if found.st_size != entry.get("bytes") or max(found.st_mtime_ns, found.st_ctime_ns) > written:
                return False
        carried = proof.get("carried")
        for name in carried if isinstance(carried, list) else ():
            if isinstance(name, str) and not os.path.lexists(folder / name):
                return False
        return all(max(os.lstat(entry).st_mtime_ns, os.lstat(entry).st_ctime_ns) <= written
                   for entry in folder.iterdir())
    except (OSError, ValueError):
        return False


def _judged_alike(proof: dict, report: ScanReport) -> bool:
    """Whether the repair's verification judged what ``report`` judges: the same --only/--exclude and limits."""
    def selection(excluded: object) -> tuple[list, list] | None:
        chosen = excluded if isinstance(excluded, dict) else {}
        globs = [chosen.get("only") or [], chosen.get("exclude") or []]
        if not all(isinstance(g, list) and all(isinstance(p, str) for p in g) for g in globs):
            return None  # (a proof not as a repair writes it: judged alike with nothing)
        return globs[0], globs[1]

    limits = report.extra.get("health_limits")
    ours = selection(proof.get("excluded"))
    return (ours is not None and ours == selection(report.extra.get("excluded"))
            and (proof.get("health_limits") or None) == (limits or None))


def use_verified_repair(target: str, name: str, final_model_folder: bool = False,
                        report: ScanReport | None = None) -> list[str]:
    """The steps that put an existing verified repair of ``target`` in place, where the suggested repair would
    have written it (:func:`repaired_path`); [] when there is none. The scan of one checkpoint and the run view
    say the same, instead of suggesting the same repair again into a ``-2`` folder. ``final_model_folder``: the
    final model at the top of a run folder, which is never moved: its files are copied over."""
    repaired = verified_repair_of(Path(target), report)
    if repaired is None:
        return []
    if hubcache.is_snapshot(target):  # (nothing is ever moved into the cache: the repair is used where it is)
        return [f"{repaired} is a verified repair of {name}; load the model from it (the cache is left as it is)"]
    if final_model_folder:
        return [f"{repaired} is a verified repair of the final model; to use it, put its repaired files in place:",
                f"    {_copy_over(target, repaired)}"]
    return [f"{repaired} is a verified repair of {name}; to use it, put it in its place:",
            f"    {put_in_place(target, repaired)}"]


def using_repair(target: str, repaired: Path) -> list[str]:
    """The steps that use the repair just written at ``repaired`` in place of ``target`` (a repair's own next
    step); [] for a hub cache snapshot, which is never written into."""
    if hubcache.is_snapshot(target):
        return []
    if Path(target).is_dir() and runs.is_run_folder(Path(target)):
        return ["to use it, put its repaired files in place (the bad ones kept as FILE.bad):",
                f"    {_copy_over(target, access.as_spelled(Path(os.path.abspath(repaired)), target))}"]
    return [f"to use it in place of {access.named_path(target).name}:",
            f"    {put_in_place(target, access.as_spelled(Path(os.path.abspath(repaired)), target))}"]


def _copy_over(target: str, repaired: Path) -> str:
    """The shell line that puts a repair of a run folder's final model in place: the run folder is never moved (its
    checkpoints are in it), so each file the repair patched is copied over the one at the top, the bad one kept as
    ``FILE.bad`` (a new user's trial: "copy its files over those at the top" was no command, and ``cp …/*`` also
    copied the proof into the run). Every weight file the proof lists, where it cannot tell which were patched."""
    from nandoctor.restore.proof import read_proof

    try:
        files = [f["path"] for f in read_proof(repaired).get("files", []) if f.get("patched", True)]
    except (OSError, ValueError, AttributeError, TypeError, KeyError, NandoctorError):
        files = []
    if not files or not all(isinstance(f, str) and "/" not in f and f not in (".", "..") for f in files):
        return f"copy the repaired weight files of {path_word(repaired)} over those at the top of {path_word(target)}"
    here, there = Path(target), Path(repaired)
    return " && ".join(f"mv {path_word(here / f)} {path_word(here / (f + '.bad'))} && cp {path_word(there / f)} "
                       f"{path_word(here / f)}" for f in files)


_MAX_PROOFS = 256  # repairs' proofs read beside a checkpoint, looking for its own (every entry is looked at)


def verified_repair_of(target: Path, report: ScanReport | None = None) -> Path | None:
    """A verified repair of ``target`` (:func:`verified_repair`): where a suggested repair writes it
    (:func:`repaired_path`), else a folder beside ``target`` whose proof names ``target`` as its source, whatever the
    ``--out`` was called (``checkpoint-300-fixed``); None when there is none. Spelled as ``target`` was."""
    conventional = repaired_path(target)
    if verified_repair(conventional, target, report):
        return conventional
    from nandoctor.checkpoint.hashes import PROOF_NAME
    from nandoctor.restore.proof import read_proof

    named = access.named_path(target)
    source = os.path.abspath(named)
    beside = {named.parent, _outside_the_run(named, "").parent}  # (accelerate's saves: their repairs lie outside)
    for folder in sorted(beside):
        try:
            entries = access.listing(folder)
        except (OSError, NandoctorError):
            continue
        read = 0
        for entry in entries:
            if entry == named or entry.name.startswith(".") or not os.path.isfile(entry / PROOF_NAME):
                continue
            read += 1
            if read > _MAX_PROOFS:
                break
            try:
                proof = read_proof(entry)
            except (OSError, ValueError):
                continue
            if isinstance(proof, dict) and _names_source(proof.get("source"), source) and verified_repair(
                    entry, target, report, proof):
                return access.as_spelled(entry, target)
    return None


def _names_source(recorded: object, source: str) -> bool:
    """Whether a proof's ``source`` is the checkpoint at ``source`` (absolute): the same path, or, where that path is
    gone (the run folder moved since: a review's ``mv out out3`` lost the verified repair), the same name; then
    verified_repair's check of the source files (sizes, times, inodes: the same files, moved) decides."""
    if not isinstance(recorded, str):
        return False
    return recorded == source or (not os.path.lexists(recorded) and Path(recorded).name == Path(source).name)


def use_verified_repair_of(target: str, report: ScanReport | None = None) -> list[str]:
    """:func:`use_verified_repair` for a scanned checkpoint (a run folder scanned is its final model, whose
    files are copied over, never moved); ``report``: that scan's, which the repair must have judged alike."""
    path = Path(target)
    return use_verified_repair(target, access.named_path(target).name, path.is_dir() and runs.is_run_folder(path), report)


def free_repaired_path(target: Path) -> str:
    """The ``--out`` :func:`repair_command_for` suggests for ``target``: :func:`repaired_path`, or a free variant."""
    return _free(repaired_path(target))


def repaired_path(target: Path) -> Path:
    """The ``--out`` a suggested repair of ``target`` writes (before ``-2``, ``-3``… for a taken name): a
    folder beside it named after it (after the model for a hub cache snapshot; a Lightning ``.ckpt`` file
    without its suffix), where the run view looks for a verified repair; for one file of a checkpoint
    folder (``run/checkpoint-40/model.safetensors``), beside that folder (``run/repaired-checkpoint-40-model``:
    not ``repaired-checkpoint-40``, which the run view would take for a repair of the whole checkpoint). Made
    from the folder names of the path (``.`` as its absolute form: access.named_path), relative when ``target``
    was."""
    return access.as_spelled(_repaired_path(access.named_path(target)), target)


def _repaired_path(target: Path) -> Path:
    if hubcache.is_snapshot(str(target)):  # never suggest writing into the cache: a folder here, named after the model
        return Path(Path(os.path.abspath(target)).parent.parent.name.split("--")[-1] + "-repaired")
    if target.is_file():
        folder = target.parent
        if _is_checkpoint_folder(folder):  # never into the checkpoint folder itself: beside it, named after both
            if runs.is_trainer_checkpoint(folder):  # (out of Trainer's checkpoint-*: _outside_the_run)
                return folder.with_name(f"repaired-{folder.name}-{target.stem}")
            return folder.with_name(f"{folder.name}-{target.stem}-repaired")
        return target.with_name(target.stem + "-repaired")
    return _outside_the_run(Path(str(target).rstrip("/")), "-repaired")


def _is_checkpoint_folder(folder: Path) -> bool:
    """A folder that is one checkpoint (a ``checkpoint-N`` of a run, or a model folder with its
    ``config.json``), whose files a repair's ``--out`` must not be put among."""
    return runs.step_of(folder) is not None or (folder / "config.json").is_file()


def _free(path: Path) -> str:
    """``path``, or ``path-2``, ``path-3``… when it exists already (repair never writes into an existing --out)."""
    candidate, n = path, 1
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return str(candidate)
