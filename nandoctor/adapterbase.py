"""The local base model a PEFT adapter alone is applied to: scanned once per process, judged with the adapter.

``AutoModelForCausalLM.from_pretrained(adapter_folder)`` (and PEFT's ``AutoPeftModel``) loads the base model
adapter_config.json names and puts the adapter on it: NaN in the base makes the adapted model's ``generate`` fail as
surely as NaN in the adapter (a trial: a LoRA on a local base with one NaN weight read CLEAN, and generate died on
"probability tensor contains either inf, nan or element < 0"). So where that base is a local folder, or a repo id's
snapshot already in the Hugging Face cache (never downloaded: ``peftload.local_base``), it is scanned as ``nandoctor
scan <base>`` scans it, with the command's own options (:class:`BaseOptions`: target dtype, ``--max-abs``,
``--outlier-factor``; not ``--only``/``--exclude``, which name the adapter's tensors): by ``nandoctor.scan``, a run
scan, the training callbacks (through ``scan``) and a repair, which refuses an adapter whose base fails.

What the base's scan found goes into the adapter's report (``extra["adapter_base_scan"]``: its findings, its tensors
with findings, its problems), and ``verdict.judge`` judges those findings under the adapter's own ``--fail-on``: NaN
in the base fails the adapter with exit 1 (``BASE MODEL NON-FINITE``), a base only zeroed passes ``--fail-on
nonfinite`` as the base's own scan would. A base that could not be read, or whose scan found a problem (exit 3 for
it), is one problem of kind ``base`` (exit 3): never called clean. A base named by a repo id that is in no local
cache keeps the note that it is not scanned.

A run of adapter checkpoints and a training callback's check of each save name one base many times: its verdict is
kept for the process, by the identity of the base's files (path, size, mtime_ns, ctime_ns and inode of each weight
file its layout reads and of each file at its top: fileidentity.py) and the options it was judged with; a file that
changed, appeared or went is read again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nandoctor import access
from nandoctor import verdict as verdicts
from nandoctor.checkpoint import adapterkeys, layout, loadability, loadconfig, runs
from nandoctor.checkpoint.peftload import local_base
from nandoctor.dtypes import DTYPES
from nandoctor.errors import NandoctorError
from nandoctor.fileidentity import fingerprint
from nandoctor.model import BASE_KIND, UNLOADABLE_KIND, ScanProblem, ScanReport
from nandoctor.wording import first_few, path_word

if TYPE_CHECKING:
    from nandoctor.kernels.census import HealthLimits

Identity = tuple[tuple[str, tuple[int, int, int, int]], ...]
Shapes = dict[str, tuple[int, ...]]  # a base's floating tensors' shapes by name (the fit check's)


@dataclass(frozen=True)
class BaseOptions:
    """How the base model is scanned: the command's options that move what a scan finds (``target_dtype`` as checked:
    None for config.json's, ``"none"`` for no overflow; the health ``limits``; ``both_formats``) and where it counts."""

    device: str = "cpu"
    target_dtype: str | None = None
    limits: HealthLimits | None = None
    both_formats: bool = False
    depth: int = 0  # adapters followed to get here (a base that is itself an adapter alone: its own base is judged too)

    def key(self) -> tuple[Hashable, ...]:
        """What the base's verdict is kept under beside its folder (the device changes no count)."""
        return self.target_dtype, self.limits, self.both_formats, self.depth

    def scanner(self) -> Callable[[Path], ScanReport]:
        """The base model's folder → its judged report, as ``nandoctor scan <base>`` with these options gives it (a run
        folder's final model; the dtype its config.json loads it in where no target is given; judged within its run;
        its load dtype said), its own base not looked for."""
        def scan_base(base: Path) -> ScanReport:
            from nandoctor.checkpoint.loaddtype import NONE, annotated, implied_target
            from nandoctor.checkpoint.runcontext import judge_in_run
            from nandoctor.engine import scan

            def scan_one(checkpoint: Path) -> ScanReport:
                asked = self.target_dtype
                target = implied_target(checkpoint) if asked is None else None if asked == NONE else asked
                return scan(checkpoint, device=self.device, target_dtype=target, limits=self.limits,
                            both_formats=self.both_formats)

            resolved = runs.one_checkpoint_in(base)
            if resolved is None:
                raise runs.run_folder_error(base, lambda newest: "point base_model_name_or_path to one checkpoint of it "
                                            f"(the newest: {newest})")
            report = annotated(judge_in_run(scan_one(resolved), resolved, scan_one), resolved, self.target_dtype)
            if self.depth < _MAX_CHAIN:  # (an adapter on an adapter: PEFT loads the chain, so the last base counts)
                return with_base(report, resolved, dataclasses.replace(self, depth=self.depth + 1))
            named = loadability.adapter_base(resolved)  # (a chain this long loops: the model under it is not read)
            return report if named is None else dataclasses.replace(report, extra={**report.extra,
                                                                                   verdicts.ADAPTER_BASE: named})

        return scan_base

_STATUS = logging.getLogger("nandoctor.status")  # (the CLI shows its INFO records on its progress bar)
_MAX_TENSORS = 16  # a base's tensors with findings kept in the report (the line names the first few)
_MAX_KEPT = 16  # base verdicts kept per process: a few bases, each under a few sets of options
_MAX_CHAIN = 4  # adapters on adapters followed to the model under them (a loop stops there)
_lock = threading.Lock()
_kept: dict[tuple[Hashable, ...], tuple[Identity, dict[str, Any], Shapes | None]] = {}


def with_base(report: ScanReport, adapter: Path, options: BaseOptions) -> ScanReport:
    """``report`` of the checkpoint ``adapter`` with its base model: for a PEFT adapter alone, the base its
    adapter_config.json names (``extra["adapter_base"]``) and, where that base is local, what its scan with
    ``options`` found (``extra["adapter_base_scan"]``; a problem of kind ``base`` where it could not be read or its
    scan found a problem), judged again under the report's gate; unchanged for any other checkpoint."""
    named = loadability.adapter_base(adapter)
    if named is None:
        return report
    extra = {**report.extra, verdicts.ADAPTER_BASE: named}
    kept = _base(adapter, named, options)
    if kept is None:  # (a repo id in no local cache: the note that it is not scanned stays)
        return dataclasses.replace(report, extra=extra)
    found, shapes = kept
    extra[verdicts.ADAPTER_BASE_SCAN] = found
    notes = tuple(n for n in report.notes if loadability.BASE_NOT_READ not in n)
    errors = report.errors
    if found.get("problem_words"):
        errors = (*errors, _problem(named, found))
    # (said once: a LoRA tensor stored transposed or of another rank is adapters.py's NOT LOADABLE already)
    plain = _plain_lora(adapter) and not any(p.kind == UNLOADABLE_KIND for p in report.errors)
    misfits = _misfits(report, shapes) if shapes and plain else []
    if misfits:
        errors = (*errors, _misfit_problem(adapter, named, misfits))
    if shapes and plain:
        notes += tuple(_resized_notes(report, shapes))
    fail_on = report.judgement.fail_on if report.judgement is not None else None
    return verdicts.judged(dataclasses.replace(report, extra=extra, notes=notes, errors=errors), fail_on)


def base_verdict(adapter: Path, named: str, options: BaseOptions) -> dict[str, Any] | None:
    """What the scan of the local base model ``named`` (as the adapter in ``adapter`` names it) found, as
    ``extra["adapter_base_scan"]`` holds it; kept for the process while the base's files keep their identity. None
    where the base is not local (a repo id in no cache, never downloaded) or is the adapter's own folder."""
    kept = _base(adapter, named, options)
    return None if kept is None else kept[0]


def _base(adapter: Path, named: str, options: BaseOptions) -> tuple[dict[str, Any], Shapes | None] | None:
    """:func:`base_verdict`, and the base's tensor shapes kept with it (None for a chain's base: an adapter's)."""
    config = loadconfig.read_object(adapter / loadability.ADAPTER_CONFIG)
    revision = config.get("revision") if isinstance(config, dict) else None
    base = local_base(named, revision)
    if base is not None and not _given_as_path(named) and not _whole(base):
        # (a repo's snapshot in the cache without its weights, or missing shards: PEFT's save and AutoConfig fetch
        # config.json alone, and from_pretrained downloads the rest; a review's healthy adapter read UNREADABLE)
        return None
    if base is None:
        folder = Path(named) if len(named) <= 4096 else None  # (no ~: neither transformers nor PEFT expands it)
        # (a local folder transformers would take that holds no config.json, or one it may not look into: from_pretrained
        # fails on it, and its scan says why)
        try:
            if folder is None or not access.is_dir(folder, refused=True):
                return None
        except (NandoctorError, OSError, ValueError):
            return None
        base = folder
    try:
        if os.path.samefile(base, adapter):
            return None
        key: tuple[Hashable, ...] = (os.path.realpath(base), *options.key())
    except OSError:
        key = (str(base), *options.key())
    now = identity(base)
    with _lock:
        kept = _kept.get(key)
    if kept is None or now is None or kept[0] != now:
        found = _scanned(base, options.scanner())
        shapes = found.pop(_SHAPES, None)
        kept = (now or (), found, shapes)
        if now is not None:  # (a base whose files could not be listed is read each time: it may come back)
            with _lock:
                _kept.pop(key, None)
                while len(_kept) >= _MAX_KEPT:
                    _kept.pop(next(iter(_kept)))
                _kept[key] = kept
    _, found, shapes = kept
    return None if found.get(_NOT_LOCAL) else ({"named": named, **found}, shapes)


def identity(base: Path, depth: int = 0) -> Identity | None:
    """The base model's files as they are now: each weight file its layout reads (shards, subfolders) and each file
    at its top (config.json, its index, generation_config.json …), by path and identity; None where they cannot be
    listed (its scan says why)."""
    try:
        files = set(layout.discover(base).files)
        files |= {entry for entry in access.listing(base) if layout.is_regular_file(entry)}
        own = tuple(sorted((str(f), fingerprint(f).portable()) for f in files))
    except (NandoctorError, OSError):
        return None
    named = loadability.adapter_base(base) if depth < _MAX_CHAIN else None
    under = local_base(named, None) if named is not None else None
    if under is None:
        return own
    deeper = identity(under, depth + 1)  # (a base that is an adapter: its own base's files count too)
    return None if deeper is None else own + deeper


def forget() -> None:
    """Drop every base verdict kept (tests; a long-lived process that wants its bases read again)."""
    with _lock:
        _kept.clear()


def _scanned(base: Path, scan: Callable[[Path], ScanReport]) -> dict[str, Any]:
    """The base's scan summed up for the adapter's report (findings, the tensors holding them, problems)."""
    _STATUS.info("scanning the base model %s the adapter is applied to", base)
    try:
        report = scan(base)
    except (NandoctorError, OSError) as exc:  # (refused, not found, no weights: from_pretrained fails on it too)
        message = exc.message if isinstance(exc, NandoctorError) else f"{type(exc).__name__}: {exc}"
        return {"path": str(base), "problem_words": verdicts.PROBLEM_WORDS[verdicts.UNREADABLE_KIND],
                "problems": [{"path": str(base), "message": message, "kind": verdicts.UNREADABLE_KIND}],
                "findings": [], "tensors": [], "tensor_count": 0, "flagged_tensors": 0}
    inner = verdicts.adapter_base_scan(report)
    if inner is not None:  # (the base is an adapter alone: what its own base holds is the adapted model's too)
        return _through(base, report, inner)
    if verdicts.ADAPTER_BASE in report.extra:  # (an adapter whose own base is not read here, or a chain that loops:
        return {_NOT_LOCAL: True}               # the model under it is not scanned, as a base that is not local)
    tensors = report.tensors
    rows = tensors.flagged
    found = verdicts.present(report)
    grown = verdicts.health(report) == "diverged" and not set(found) & set(verdicts.FAILING_BY_DEFAULT)
    names, findings = tensors.refs.names, tensors.findings
    return {
        "path": str(base),
        "findings": list(found),
        "target_dtype": verdicts.target_dtype(report),
        "grown": verdicts.diverged_why(report) if grown else None,
        "tensor_count": len(tensors),
        "flagged_tensors": len(rows),
        "nan": report.nan, "posinf": report.posinf, "neginf": report.neginf,
        # (its read, said beside the adapter's own: a trial's 14 GB base read cold hid behind "2.4 MB read · 0.03 s")
        "bytes": report.bytes_scanned, "seconds": round(report.seconds, 3),
        "tensors": [{"name": names[i], "findings": list(findings[i]), "nan": tensors.nan[i],
                     "posinf": tensors.posinf[i], "neginf": tensors.neginf[i],
                     "first_bad": list(t.first_bad_coords) if (t := tensors[i]).first_bad_coords else None,
                     "max_abs": tensors.max_abs[i]} for i in rows[:_MAX_TENSORS]],
        "problem_words": " + ".join(verdicts.PROBLEM_WORDS.get(k, k.upper()) for k in verdicts.problem_kinds(report)),
        "problems": [{"path": p.path, "message": p.message, "kind": p.kind} for p in report.errors],
        # (floating tensors only: a 4-bit base packs its weights into uint8 [n/2, 1], an 8-bit one into int8)
        _SHAPES: {name: shape for name, shape, dtype in zip(names, tensors.refs.shapes, tensors.refs.dtypes)
                  if dtype in DTYPES and DTYPES[dtype].can_hold_nonfinite},
    }


def _through(base: Path, report: ScanReport, inner: dict[str, Any]) -> dict[str, Any]:
    """The scan of a base that is itself a PEFT adapter alone (``report``), with what its own base's scan (``inner``)
    found: PEFT's AutoPeftModel loads the chain, so NaN under it is the adapted model's (a trial: an adapter on an
    adapter on a base with NaN read CLEAN, "its base model scanned too: 8 tensors healthy", its logits NaN)."""
    own = _scanned(base, lambda _: dataclasses.replace(report, extra={
        k: v for k, v in report.extra.items() if k not in (verdicts.ADAPTER_BASE, verdicts.ADAPTER_BASE_SCAN)}))
    own.pop(_SHAPES, None)  # (the adapter's LoRA tensors: nothing the outer adapter's shapes are compared with)
    problems = [p for p in own["problems"] if p["kind"] != BASE_KIND] + list(inner.get("problems", ()))
    return {**own, "findings": list(dict.fromkeys([*own["findings"], *inner.get("findings", ())])),
            "tensor_count": own["tensor_count"] + inner.get("tensor_count", 0),
            "flagged_tensors": own["flagged_tensors"] + inner.get("flagged_tensors", 0),
            "nan": own["nan"] + inner.get("nan", 0), "posinf": own["posinf"] + inner.get("posinf", 0),
            "neginf": own["neginf"] + inner.get("neginf", 0), "bytes": own["bytes"] + inner.get("bytes", 0),
            "seconds": round(own["seconds"] + inner.get("seconds", 0.0), 3),
            "tensors": (own["tensors"] + list(inner.get("tensors", ())))[:_MAX_TENSORS],
            "problem_words": own["problem_words"] or inner.get("problem_words", ""), "problems": problems,
            "grown": own["grown"] or inner.get("grown"), "through": inner.get("path")}


_SHAPES = "_shapes"  # (the base's tensor shapes by name, kept with its verdict for the fit check; not in any report)
_NOT_LOCAL = "_not_local"  # (kept for a base whose model is not read here: an adapter on a base that is not local)


def _given_as_path(named: str) -> bool:
    """Whether ``base_model_name_or_path`` names a folder as it stands (a path), not a repo id found in a cache."""
    try:
        return access.is_dir(Path(named), refused=False)
    except (NandoctorError, OSError, ValueError):
        return False


def _whole(base: Path) -> bool:
    """Whether the cached snapshot ``base`` holds weights, and every shard its index lists."""
    try:
        found = layout.discover(base)
    except (NandoctorError, OSError, ValueError):
        return False
    return bool(found.files) and not any(not (index.path.parent / shard).exists() for index in found.indexes
                                         for shard in set(index.weight_map.values()))
_LORA_PART = re.compile(r"^(?P<module>.+)\.lora_(?P<part>A|B)(?:\.[^.]+)?\.weight$")


def _misfits(report: ScanReport, shapes: Shapes) -> list[str]:
    """The adapter's tensors that do not fit its base model's (``shapes``): a LoRA matrix whose input (A) or output
    (B) size is no dimension of the module it adapts, a copy PEFT keeps of a module (``modules_to_save``, saved under
    the module's own name) of another shape. PEFT's load raises "size mismatch" on them (a trial: a LoRA trained for
    hidden size 32 named a base of 1,024 and read CLEAN, "its base model scanned too: 111 tensors healthy")."""
    wrong = []
    for name, shape in zip(report.tensors.refs.names, report.tensors.refs.shapes):
        bare = name.removeprefix(adapterkeys.PREFIX)
        lora = _LORA_PART.match(bare)
        if lora is not None:
            # (lora_A's input size only: lora_B's output of an LM head or embedding is the vocabulary, which a
            # resize_token_embeddings before training changes, as PEFT's load expects)
            module = lora["module"]
            base = shapes.get(f"{module}.weight", shapes.get(f"{module}.base_layer.weight"))
            if lora["part"] == "A" and base is not None and len(base) == 2 and len(shape) == 2 and shape[1] not in base:
                wrong.append(f"{bare} {list(shape)} (the base's {module}.weight is {list(base)})")
        elif bare in shapes and len(shape) == 2 == len(shapes[bare]) and shape[1] != shapes[bare][1]:
            # (a module copy's rows may be a resized vocabulary or a new head's labels: its width is the base's)
            wrong.append(f"{bare} {list(shape)} (the base's is {list(shapes[bare])})")
    return wrong


def _resized_notes(report: ScanReport, shapes: Shapes) -> list[str]:
    """A module copy (``modules_to_save``) with more or fewer rows than the base's module, its width the base's: a
    vocabulary resized before training, or a head of other labels. It loads only onto a base resized to it first (a
    trial: PeftModel.from_pretrained on the base as saved raised "size mismatch", the adapter read CLEAN unsaid)."""
    resized = []
    for name, shape in zip(report.tensors.refs.names, report.tensors.refs.shapes):
        bare = name.removeprefix(adapterkeys.PREFIX)
        base = shapes.get(bare)
        if base is not None and len(shape) == 2 == len(base) and shape[1] == base[1] and shape[0] != base[0]:
            resized.append((bare, shape[0], base[0]))
    if not resized:
        return []
    rows = resized[0][1]
    copies = first_few([f"{bare} ({n:,} rows; the base's {m:,})" for bare, n, m in resized], 3)
    return [f"the adapter's copies of modules differ in rows from its base's (a resized vocabulary, or a head of "
            f"other labels): {copies}; PeftModel.from_pretrained onto the base as saved raises \"size mismatch\": "
            f"resize the base first (model.resize_token_embeddings({rows}), or num_labels={rows} for a head); "
            f"AutoPeftModelForCausalLM resizes only to a tokenizer of {rows:,} tokens saved beside the adapter"]


# LoRA variants whose stored matrices are not the module's sizes (BD-LoRA's blocks, QA-LoRA's pooled inputs)
_RESHAPING = ("use_bdlora", "use_qalora")


def _plain_lora(adapter: Path) -> bool:
    """Whether the adapter in ``adapter`` is a LoRA whose matrices span its modules' sizes (not BD-LoRA or QA-LoRA,
    whose lora_A or lora_B hold a block or a pooled share of them, nor another kind of adapter)."""
    config = loadconfig.read_object(adapter / loadability.ADAPTER_CONFIG)
    return (isinstance(config, dict) and config.get("peft_type", "LORA") == "LORA"
            and not any(config.get(key) for key in _RESHAPING))


def _misfit_problem(adapter: Path, named: str, misfits: list[str]) -> ScanProblem:
    """The adapter's tensors that do not fit the base it names, as its NOT LOADABLE problem."""
    return ScanProblem(
        str(adapter / loadability.ADAPTER_CONFIG), f"{len(misfits)} of the adapter's tensor(s) do not fit the base "
        f"model it names ({named!r}): {first_few(misfits, 3)}; PEFT's load raises \"size mismatch\", so the adapted "
        "model does not load", "point base_model_name_or_path in adapter_config.json to the model the adapter was "
        "trained on (its sizes are the adapter's)", kind=UNLOADABLE_KIND)


def _problem(named: str, found: dict[str, Any]) -> ScanProblem:
    """The base that could not be read, or whose scan found a problem, as the adapter's problem (exit 3)."""
    first = found["problems"][0]
    unread = found["problem_words"] == verdicts.PROBLEM_WORDS[verdicts.UNREADABLE_KIND]
    said = "could not be read" if unread else f"fails its own scan ({found['problem_words']})"
    return ScanProblem(
        found["path"], f"the base model adapter_config.json names ({named!r}), which from_pretrained of the adapter "
        f"loads and puts the adapter on, {said}: {first['path']}: {first['message']}",
        f"scan it (nandoctor scan {path_word(found['path'])}) and fix what it says, or point base_model_name_or_path "
        "in adapter_config.json to a base model that loads; the adapter's own tensors are judged here", kind=BASE_KIND)


__all__ = ["BaseOptions", "base_verdict", "forget", "identity", "with_base"]
