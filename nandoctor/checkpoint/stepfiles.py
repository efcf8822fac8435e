"""Run folders of step files: which files of a Lightning ``ModelCheckpoint`` folder, or of a training loop's numbered
saves, are the timeline, the last file, the final model, and which are rows of their own.

A ``ModelCheckpoint`` folder holds step files named from its template
(``epoch=0-step=100.ckpt``: the timeline, ordered by step) and, with
``save_last=True``, ``last.ckpt``: a copy of the newest file (byte for byte
when nothing changed between the two saves), or with ``save_last="link"`` a
symlink to it. ``trainer.fit(ckpt_path="last")`` resumes from the newest (by
modification time) ``.ckpt`` whose name starts with ``last`` (``last-v1.ckpt``
is the version counter's), so that one is the run's ``last`` row. A final
model file (``final.ckpt`` from ``trainer.save_checkpoint``, ``model.ckpt``, a
``model.safetensors``: see :func:`is_final_name`) is the run's final model, the
``final`` row, as ``trainer.save_model()``'s weights are for a Trainer run
(checkpoint/finalmodel.py). Every other weight file (``epoch=3.ckpt``,
``best.ckpt``, older last files, two final candidates, neither taken) is
*unplaced*: a row of its own (runs.py). Where no file names its step, files of
a ``{epoch}``-only template are placed by the ``global_step`` they were saved
at. A step, last or final checkpoint may be a ``.ckpt`` folder (Lightning's
FSDP and DeepSpeed strategies save sharded state so): a row like a file. A
``.ckpt`` file's own step is its ``global_step``, read through the restricted
unpickler (no code runs). Torch-free.

A hand-written training loop's saves (``step_500.pt``, ``ckpt-1000.pth``: one
file a save, numbered after a word that counts training) are step files too,
the step being their number: one name template is the timeline, ``last.pt``
its last row, ``final.pt`` its final model (:func:`file_step_of`).

A Lightning logger's version folder (``lightning_logs/version_N``, where ``ModelCheckpoint`` saves by default:
``trainer.log_dir/checkpoints``) is the run of the step files in its ``checkpoints/`` (:func:`version_saves`): one
step file is a run there, as the default ``save_top_k=1`` keeps one; so it is in a folder where the Lightning
training callback's files lie (checkpoint/callbacklog.py: its first save is judged within its run).
"""

from __future__ import annotations

import functools
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from nandoctor.checkpoint.lightninglogs import version_saves

LIGHTNING_SUFFIX = ".ckpt"
# Lightning's ModelCheckpoint names files from its ``filename`` template; the default and most
# custom ones hold ``step=N`` (``epoch=0-step=100.ckpt``, ``last-step=100.ckpt``, ``run-step=100-loss=0.1.ckpt``).
_LIGHTNING_FILE = re.compile(r"(?:^|[-_.=])step=(\d+)(?=[-_.=]|$)")
_MODEL_WORDS = frozenset({"model", "models", "weights", "weight", "checkpoint", "ckpt", "net", "network", "state_dict",
                          "params", "parameters"})
_EPOCH_FILE = re.compile(r"(?:^|[-_.])epoch=\d+(?=[-_.=]|\.ckpt$)")  # a ModelCheckpoint name with {epoch}, no {step}
LAST = "last"  # ModelCheckpoint.CHECKPOINT_NAME_LAST; ckpt_path="last" matches ``^last(-(\d+))?`` on the stem



# A hand-written training loop's saves, one file a save (``torch.save(state, f"step_{n}.pt")``, ``ckpt_1000.pth``,
# ``model_epoch_3.pt``, ``iter-500.safetensors``): numbered at the end of the name, after a word that says what the
# number counts. (Not ``model_1``, ``fold_3``, ``rank_0``, ``rng_state_0``: a second model, a fold, a process.)
_NUMBERED_FILE = re.compile(r"(?:^|[-_.])(?:step|steps|iter|iters|iteration|iterations|epoch|epochs|ep|ckpt|checkpoint|"
                            r"chkpt|snapshot|update|updates|round|global_step)[-_.]?(\d+)$", re.IGNORECASE)
NUMBERED_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".tar")  # (.tar: torch.save's x.pth.tar, the tutorial's)


_AUXILIARY = re.compile(r"(?:^|[-_.])(?:optim|optimizer|opt|scheduler|sched|scaler|rng|ema|disc|discriminator|critic|"
                        r"state|states|trainer|training|stats|metrics)"
                        r"(?:[-_.]|$)", re.IGNORECASE)


# A loop that saves its model and its optimizer apart each time (model_100.pt and optim_100.pt): "model" numbers
# nothing on its own (model_1, model_2: two models), but beside an optimizer's saves of the same numbers it is the run's
_PAIRED_MODEL = re.compile(r"^(?:model|net|network|weights)[-_.]?(\d+)$", re.IGNORECASE)
_PAIRED_OPTIMIZER = re.compile(r"^(?:optim|optimizer|opt)[-_.]?(\d+)$", re.IGNORECASE)


def _paired_saves(entries: list[Path]) -> list[tuple[int, Path]]:
    """(step, model file) of a loop's model saves that an optimizer's saves of the same numbers pair, two or more (a
    helper's trial: model_N.pt beside optim_N.pt read as one checkpoint, all of its saves one CLEAN or POISONED
    verdict); [] otherwise."""
    def numbered(pattern: re.Pattern[str]) -> dict[int, Path]:
        found = {}
        for entry in entries:
            stem = _numbered_stem(entry)
            match = pattern.match(stem) if stem else None
            if match and is_checkpoint(entry):
                found[int(match.group(1))] = entry
        return found

    models, optimizers = numbered(_PAIRED_MODEL), numbered(_PAIRED_OPTIMIZER)
    if len(models) < 2 or set(models) != set(optimizers):
        return []
    return sorted(models.items())


def file_step_of(path: Path) -> int | None:
    """The step a step file's name gives: a Lightning ``….ckpt`` file whose name holds ``step=N``, or a training
    loop's save numbered after a word that counts (``step_100.pt``, ``ckpt-1000.pth``, ``epoch_3.safetensors``);
    else None."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == LIGHTNING_SUFFIX:
        match = _LIGHTNING_FILE.search(path.name[: -len(LIGHTNING_SUFFIX)])
    else:
        stem = _numbered_stem(path)
        if stem is None:
            return None
        match = _NUMBERED_FILE.search(stem)
    return int(match.group(1)) if match else None


def _numbered_stem(path: Path) -> str | None:
    """A loop's save's name without its suffix (``checkpoint_10.pth.tar``: without both), None for another suffix."""
    suffix = path.suffix.lower()
    if suffix not in NUMBERED_SUFFIXES:
        return None
    stem = path.name[: -len(suffix)]
    return re.sub(r"\.(?:pth|pt)$", "", stem, flags=re.IGNORECASE) if suffix == ".tar" else stem


def step_template(path: Path) -> str:
    """A step file's name with its step left out (``step_#.pt``, ``epoch=#-step=#.ckpt``): a run's step files share one."""
    return re.sub(r"\d+", "#", Path(path).name)


def one_template(steps: list[tuple[int, Path]]) -> list[tuple[int, Path]]:
    """The step files of the template most of ``steps`` share (a folder's ``step_#.pt`` saves, not the ``epoch_#.pt``
    ones beside them: two counters are no one timeline); Lightning's ``….ckpt`` files all belong (the template puts
    the epoch, a version, a metric's value into their names)."""
    numbered = [(step, path) for step, path in steps if path.suffix.lower() != LIGHTNING_SUFFIX]
    if not numbered:
        return steps
    lightning = [(step, path) for step, path in steps if path.suffix.lower() == LIGHTNING_SUFFIX]
    if lightning:
        return lightning
    templates = [step_template(path) for _, path in numbered]
    counts = Counter(templates)
    # (of two as common, the model's saves: a loop writing model_step_N.pt and optimizer_step_N.pt, or an EMA copy
    # beside each, has its timeline in the model's; an adversarial round's took the optimizer's by name order)
    kept = max(counts, key=lambda t: (counts[t], _AUXILIARY.search(t) is None, t))
    return [at for at, template in zip(numbered, templates) if template == kept]


def step_files_kind(steps: list[tuple[int, Path]]) -> str:
    """What a run's step files are, for messages: ``Lightning …step=N….ckpt file`` or their template
    (``step_N.pt file``)."""
    numbered = [path for _, path in steps if path.suffix.lower() != LIGHTNING_SUFFIX]
    if not numbered:
        return "Lightning …step=N….ckpt file"
    return f"{step_template(numbered[-1]).replace('#', 'N')} file"


def is_last_name(path: Path) -> bool:
    """A ``.ckpt`` file ``trainer.fit(ckpt_path="last")`` would consider (``last.ckpt``, ``last-v1.ckpt``), or a
    training loop's ``last.pt`` / ``latest.pt`` beside its numbered saves, that is no step file."""
    path = Path(path)
    if file_step_of(path) is not None:
        return False
    if path.suffix == LIGHTNING_SUFFIX:
        return path.stem.startswith(LAST)
    return path.suffix.lower() in NUMBERED_SUFFIXES and path.stem.lower() in (LAST, "latest")


def is_final_name(path: Path) -> bool:
    """A name a final model is saved under, in any format: ``model`` (``model.safetensors``, ``pytorch_model.bin``,
    ``model.ckpt``), or ``final`` alone or with a word of a model's (``final.pt``, ``final_model.pt``), not from a
    ``ModelCheckpoint`` template (no ``name=value``). A ``best.ckpt``, ``epoch=3.ckpt``, a loop's ``args.pt`` or
    ``final_metrics.pt`` is no final model: a row of its own."""
    path = Path(path)
    if "=" in path.name:
        return False
    stem = path.stem.lower()
    # (by its name whatever the format: a loop's args.pt or pretrained_init.pt is no final model, a row of its own;
    # nor final_metrics.pt or final_config.pt, an adversarial round's: "final" with a word of the model's, or alone)
    if stem in ("model", "pytorch_model", "diffusion_pytorch_model"):
        return True
    words = set(re.split(r"[-_.]+", stem))
    return "final" in words and (words <= {"final", "last"} or bool(words & _MODEL_WORDS))


def is_checkpoint(entry: Path) -> bool:
    """Whether a ``.ckpt`` (or final weights) entry of a Lightning folder is a checkpoint: a file, or a
    ``.ckpt`` folder, which is how Lightning's FSDP (sharded state dict: ``.metadata``, ``*.distcp``,
    ``meta.pt``) and DeepSpeed strategies (``checkpoint/`` and ``latest``) save one. A file behind a link the
    user may not follow counts (its row's scan says it cannot be read)."""
    from nandoctor import access

    if access.is_file(entry, refused=True):
        return True
    return entry.suffix.lower() == LIGHTNING_SUFFIX and access.is_dir(entry, refused=False)


@dataclass(frozen=True)
class StepFolder:
    """A folder of step files (Lightning's, or a training loop's numbered saves), sorted out."""

    steps: tuple[tuple[int, Path], ...]  # (step, file), steps ascending
    last: Path | None = None  # what ckpt_path="last" resumes from: the newest last file
    final: Path | None = None  # the run's final model
    unplaced: tuple[str, ...] = ()  # other weight files: neither step files nor the last or final one (rows of their own)
    notes: tuple[str, ...] = ()  # what a last or final candidate is when it is not that row

    @property
    def folder(self) -> Path:
        """The folder holding the step files (a version folder's ``checkpoints/``: :func:`version_saves`)."""
        return self.steps[0][1].parent


def step_folder(folder: Path, entries: list[Path] | None = None, *, single: bool = False) -> StepFolder | None:
    """``folder`` sorted out as a run of step files, or None when it is none: no shard index at its top, and two or
    more step files (Lightning's: or one beside a last file or a final model). A Lightning version folder with no
    weights of its own is the run of its ``checkpoints/`` (:func:`version_saves`), where one Lightning step file is a
    run (``single``)."""
    from nandoctor import access
    from nandoctor.checkpoint.callbacklog import callback_files
    from nandoctor.checkpoint.layout import INDEX_NAMES, NOT_WEIGHTS, is_weight_file, weight_suffixes
    from nandoctor.errors import UnreadablePathError

    folder = Path(folder)
    if entries is None:
        try:
            entries = access.listing(folder)
        except UnreadablePathError:
            return None  # opened as one checkpoint or file, whose scan says it cannot be read
    if any(e.name in INDEX_NAMES for e in entries):
        return None  # a sharded model at the top: one checkpoint, not a run
    suffixes = weight_suffixes()
    weights = sorted(e for e in entries if is_weight_file(e, suffixes) and not e.name.startswith(".")
                     and e.name not in NOT_WEIGHTS)
    if not weights and not single and (saves := version_saves(folder, entries)) is not None:
        run = step_folder(saves, single=True)
        return run if run is not None and run.steps[-1][1].suffix.lower() == LIGHTNING_SUFFIX else None
    steps: list[tuple[int, Path]] = []
    lasts: list[Path] = []
    finals: list[Path] = []
    others: list[Path] = []
    notes: list[str] = []
    for entry in weights:
        step = file_step_of(entry)
        if step is not None:
            if is_checkpoint(entry):
                steps.append((step, entry))
            else:  # (a dangling or looping link, a FIFO: a row of its own, whose scan says why it cannot be read)
                others.append(entry)
        elif is_last_name(entry):
            if is_checkpoint(entry):
                lasts.append(entry)
            elif entry.is_symlink():  # a dangling link: ckpt_path="last" finds nothing and starts from scratch
                notes.append(f"{entry.name} links to {os.readlink(entry)}, which does not exist: "
                             "trainer.fit(ckpt_path=\"last\") would start from scratch; remove the link")
        elif is_final_name(entry) and is_checkpoint(entry):
            finals.append(entry)
        else:  # a ModelCheckpoint template's name without a step (epoch=3.ckpt), best.ckpt: not placed
            others.append(entry)
    if not steps:
        # A ModelCheckpoint template without {step} (the docs' "{epoch}-{val_loss:.2f}"): its files are the timeline,
        # each placed by the global_step it was saved at (a helper's trial: such a folder read as one checkpoint,
        # a final.ckpt NaN throughout was "POISONED" beside its healthy saves, and every suggested repair refused)
        for entry in [e for e in others if _EPOCH_FILE.search(e.name) and is_checkpoint(e)]:
            step = saved_step(entry)
            if step is not None:
                steps.append((step, entry))
                others.remove(entry)
    if not steps:
        steps = _paired_saves(others)
        others = [e for e in others if e not in {path for _, path in steps}]
    kept = one_template(steps)
    on_timeline = {path for _, path in kept}
    others += [path for _, path in steps if path not in on_timeline]
    steps = kept
    lightning = any(path.suffix.lower() == LIGHTNING_SUFFIX for _, path in steps)
    # (one Lightning step file is a run where the training callback's files lie beside it: the callback judged that
    # save within its run, against the step-0 weights, and a later scan must too: callbacklog.py; a trial's first
    # save passed the callback CLEAN alone, and the last.ckpt of the same weights right after it was DIVERGED)
    single = single or (lightning and callback_files(entries))
    # (a loop's saves are a run from two on: one numbered file beside a model is more often a stray export)
    if not steps or (len(steps) < 2 and (not lightning or (not lasts and len(finals) != 1 and not single))):
        return None
    last = _resumed(lasts)
    others += [p for p in lasts if p != last]
    if len(lasts) > 1:
        older = [p.name for p in lasts if p != last]
        notes.append(f"{', '.join(older)}: older last checkpoint(s) (trainer.fit(ckpt_path=\"last\") resumes from "
                     f"the newest, {last.name if last else '?'}); each a row of its own, not what a resume loads")
    final = finals[0] if len(finals) == 1 else None
    if len(finals) > 1:
        others += finals
        notes.append(f"{', '.join(p.name for p in finals)} could each be the run's final model, so neither is "
                     "taken as it: each is a row of its own")
    # (two files of one step: Lightning's version counter says which is newer, -v1 after the plain name, which
    # name order puts first: '-' sorts before '.'; an adversarial round's rerun into the same folder)
    ordered = tuple(sorted(steps, key=lambda at: (at[0], _version(at[1]), at[1].name)))
    return StepFolder(ordered, last, final, tuple(sorted({p.name for p in others})), tuple(notes))


_VERSION = re.compile(r"-v(\d+)$")


def _version(path: Path) -> int:
    """The version counter ModelCheckpoint adds to a name it already wrote (``…-v1.ckpt``), 0 without one."""
    found = _VERSION.search(Path(path).stem)
    return int(found.group(1)) if found else 0


def _resumed(lasts: list[Path]) -> Path | None:
    """The last file Lightning resumes from: the newest by modification time (a link's target's, as
    fsspec reads it)."""
    dated = []
    for path in lasts:
        try:
            dated.append((path.stat().st_mtime_ns, path.name, path))
        except OSError:  # not to be looked at: still a candidate (alone, it is the last row, reported unreadable)
            dated.append((-1, path.name, path))
    return max(dated)[2] if dated else None


# Lightning's FSDP strategy saves a sharded checkpoint as a folder: the tensors through torch.distributed.checkpoint,
# everything else (global_step, loops, callbacks) in this file beside them
SHARDED_META = "meta.pt"


def saved_step(file: Path) -> int | None:
    """The ``global_step`` a Lightning ``.ckpt`` file (or a sharded ``.ckpt`` folder's ``meta.pt``) was saved at,
    read through the restricted unpickler (inert stand-ins only); None for another format or when it cannot be
    read (the scan reports why). Read once per version of the file: a folder of a ``{epoch}``-only template is
    sorted out (step_folder) several times a scan, each time placing every file by it."""
    if Path(file).suffix != LIGHTNING_SUFFIX:
        return None
    from nandoctor import access

    try:
        if access.is_dir(file, refused=False):
            file = Path(file) / SHARDED_META
        found = os.stat(file)
    except OSError:
        return None
    return _saved_step(os.fspath(file), found.st_size, found.st_mtime_ns, found.st_ino)


@functools.lru_cache(maxsize=4096)
def _saved_step(file: str, size: int, mtime_ns: int, inode: int) -> int | None:  # (the stat's fields: the cache's key)
    from nandoctor.errors import NandoctorError
    from nandoctor.readers.torch.file import read_object

    try:
        state = read_object(Path(file))
    except (NandoctorError, OSError, ValueError):
        return None
    step = state.get("global_step") if isinstance(state, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None


_COMPARE_BYTES = 1 << 20


def same_file(a: Path, b: Path) -> str | None:
    """How file ``a`` is file ``b``: ``"link"`` (a symlink or hard link to it), ``"copy"`` (the same bytes),
    or None when it is not (or either cannot be read)."""
    try:
        if os.path.samefile(a, b):
            return "link"
        if os.stat(a).st_size != os.stat(b).st_size:
            return None
        with open(a, "rb") as fa, open(b, "rb") as fb:
            while True:
                block = fa.read(_COMPARE_BYTES)
                if block != fb.read(_COMPARE_BYTES):
                    return None
                if not block:
                    return "copy"
    except OSError:
        return None


__all__ = [
    "LAST",
    "LIGHTNING_SUFFIX",
    "NUMBERED_SUFFIXES",
    "SHARDED_META",
    "StepFolder",
    "file_step_of",
    "is_checkpoint",
    "is_final_name",
    "is_last_name",
    "one_template",
    "same_file",
    "saved_step",
    "step_files_kind",
    "step_folder",
    "step_template",
]
