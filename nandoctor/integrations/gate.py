"""What the training callbacks share: scan a checkpoint just saved, judge it, log it, keep its verdict.

``CheckpointGate`` is framework-free (no transformers, no lightning): the
transformers ``NanDoctorCallback`` and the Lightning ``NanDoctorCheckpointCallback``
each decide *when* a checkpoint was written and *what* rotation may delete; this
module scans it (on the CPU by default: the files were just written, so they are
in the page cache, and the GPU stays with training), asks ``verdict.py`` whether it
passes, logs the one-line verdict, and writes the gate JSON. A scan that fails for
any reason is logged and reported as "not scanned": it never stops or crashes training.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from nandoctor import verdict as verdicts
from nandoctor.checkpoint.callbacklog import REPORT_NAME
from nandoctor.model import ScanReport
from nandoctor.report.json_report import gate_json, report_to_json

logger = logging.getLogger("nandoctor.integrations")


class CheckpointGate:
    """Scan saved checkpoints and remember the verdicts: ``reports``, ``last_clean``, ``first_bad``.

    Args:
        target_dtype: also count weights that overflow a cast to ``fp16``, ``bf16``, ``fp8_e4m3``, ``fp8_e5m2``.
        fail_on: which findings fail the gate (default: nonfinite, exploded, outlier, overflow).
        device: where to count (``cpu`` by default).

    Raises ValueError (an unknown ``target_dtype`` or ``fail_on``) and DeviceUnavailableError (an unknown
    ``device``, or ``cuda`` where torch sees no GPU) when it is built, never at a save.
    """

    def __init__(self, *, target_dtype: str | None = None, fail_on: str | list[str] | None = None,
                 device: str = "cpu") -> None:
        # Every option is checked here, when the callback is built: a bad one found at the first save would only
        # be logged ("never crash training"), and every save would go unchecked while rotation deletes the
        # clean checkpoints.
        from nandoctor.kernels import select_kernel

        if target_dtype is not None and target_dtype.lower() != "none":  # "none": not even config.json's dtype
            from nandoctor.kernels.targets import target

            target(target_dtype)  # ValueError naming the choices
        self.target_dtype = target_dtype
        self.fail_on = verdicts.parse_fail_on(fail_on)
        verdicts.require_target_for_overflow(self.fail_on, target_dtype)  # a gate that passes anything is a bug
        select_kernel(device)  # DeviceUnavailableError: an unknown device, or cuda without a GPU
        self.device = device
        self.reports: dict[Any, ScanReport] = {}  # the caller's key (a step, a path) → report
        self.last_clean: str | None = None  # the newest checkpoint that passed
        self.fresh_run = False  # set by a callback when training starts from scratch (keep_baseline replaces)
        self._initial: dict[Path, Any] = {}  # run folder → the initial weights' RunBaseline, until its first save
        self.start_loss: float | None = None  # the initial weights' training loss (step 0's batch), where a callback saw it
        self.first_bad: str | None = None

    def check(
        self, path: Path, key: Any, scan: Callable[[Path], ScanReport] | None = None
    ) -> tuple[bool | None, ScanReport | None]:
        """Scan ``path`` (with ``scan``, default :meth:`scan`), log its one-line verdict and record it:
        (passed, report), the report kept in ``reports[key]``; (None, None) when it could not be scanned
        (logged; training goes on)."""
        self._write_initial_baseline(path)
        try:
            report = (scan or self.scan)(path)
            # (training keeps and resumes from the weights: a config file's values — BAD CONFIG — are said, and
            # stop nothing; the checkpoint's own nandoctor.json still fails its gate until they are corrected)
            passed = verdicts.passes(verdicts.weights_report(report, self.fail_on), self.fail_on)
            line = verdicts.one_line(report, self.fail_on, label=str(path))
            (logger.info if verdicts.passes(report, self.fail_on) else logger.warning)("nandoctor: %s", line)
            if passed and report.errors:
                logger.warning("nandoctor: %s: the weights are fine; correct this before serving: %s", path,
                               report.errors[0].message)
        except Exception as exc:  # noqa: BLE001  never crash training because of the doctor
            logger.error("nandoctor: could not scan %s (%s: %s); training goes on", path, type(exc).__name__, exc)
            return None, None
        self.reports[key] = report
        self.record(str(path), passed)
        return passed, report

    def scan(self, path: Path) -> ScanReport:
        from nandoctor.api import scan

        return scan(path, device=self.device, target_dtype=self.target_dtype)

    def start(self, run: Path, fresh: bool) -> None:
        """Training starts writing checkpoints into ``run``; ``fresh``: from scratch, not resumed. An earlier run's
        baseline there (checkpoint/baseline.py) is removed before the first save is judged against it."""
        from nandoctor.checkpoint.baseline import BASELINE_NAME, read_baseline

        self.fresh_run = fresh
        try:
            if fresh and read_baseline(run) is not None:  # (only a file this module wrote)
                (Path(run) / BASELINE_NAME).unlink()
                logger.info("nandoctor: training starts from scratch: removed the earlier run's %s", BASELINE_NAME)
        except Exception as exc:  # noqa: BLE001  never crash training because of the doctor
            logger.error("nandoctor: could not remove the earlier run's %s (%s: %s)", Path(run) / BASELINE_NAME,
                         type(exc).__name__, exc)

    def keep_initial_baseline(self, runs: Iterable[Path], model: Any, prefix: str = "") -> None:
        """A fresh run: the weights training starts from, ``model``'s (scanned once), as the growth baseline of each
        run folder of ``runs`` (step 0, checkpoint/baseline.py; Lightning's ModelCheckpoint folders), when they pass;
        written into each before the first save in it is judged (:meth:`check`: the folder may not exist yet), which
        then keeps it. ``prefix``: what the saved files put before the module's own names (Lightning's
        ``state_dict.``). Errors are logged; training goes on."""
        from nandoctor.checkpoint.baseline import INITIAL_WEIGHTS, RunBaseline

        try:
            from nandoctor.api import scan_module

            report = scan_module(model)
            scales = {prefix + name: scale for name, scale in verdicts.tensor_scales(report).items()}
            for alias, name in _tied_aliases(model).items():  # (saved under each name: a state_dict lists both)
                if prefix + name in scales:
                    scales.setdefault(prefix + alias, scales[prefix + name])
            if scales and verdicts.passes(report, self.fail_on):  # (weights that fail from the start: nothing to grow from)
                kept = RunBaseline(0, INITIAL_WEIGHTS, verdicts.max_abs(report, "weight"), scales)
                self._initial.update(dict.fromkeys(map(Path, runs), kept))
        except Exception as exc:  # noqa: BLE001  never crash training because of the doctor
            logger.error("nandoctor: could not scan the initial weights for the run's baseline (%s: %s)",
                         type(exc).__name__, exc)

    def _write_initial_baseline(self, path: Path) -> None:
        """Before the first save in a run folder is judged: the initial weights' baseline kept for it, written, when
        it names every floating weight the save holds. Where the module's names are not the saved ones (a PEFT
        model's ``lora_A.default``, transformers' fused MoE experts saved per expert), nothing is written and the
        first healthy checkpoint is the baseline, as before (a review: a step-0 baseline of other names compared
        nothing and hid a LoRA grown 728x)."""
        from nandoctor.checkpoint.baseline import BASELINE_NAME, write_baseline

        run = Path(path).parent
        kept = self._initial.pop(run, None)
        if kept is None:
            return
        try:
            from nandoctor.checkpoint.opener import open_checkpoint
            from nandoctor.dtypes import DTYPES

            saved = {r.name for r in open_checkpoint(path).refs
                     if r.role == "weight" and r.dtype in DTYPES and DTYPES[r.dtype].can_hold_nonfinite}
            if not saved or not saved <= kept.scales.keys():
                logger.info("nandoctor: the saved weights are named otherwise than the module's (%s): growth is "
                            "measured against the run's first healthy checkpoint", next(iter(saved - kept.scales.keys()),
                                                                                        "none saved"))
                return
        except Exception as exc:  # noqa: BLE001  never crash training because of the doctor
            logger.error("nandoctor: could not read %s for the run's baseline (%s: %s)", path, type(exc).__name__, exc)
            return
        if self.start_loss is not None:
            kept = dataclasses.replace(kept, start_loss=self.start_loss)
        try:
            write_baseline(run, kept)
            self.fresh_run = False  # (an earlier run's baseline is gone: this one is kept from now on)
        except Exception as exc:  # noqa: BLE001  never crash training because of the doctor
            logger.error("nandoctor: could not keep the initial weights as the run's baseline in %s (%s: %s)", run,
                         type(exc).__name__, exc)
            return
        logger.info("nandoctor: growth is measured against the initial weights (kept in %s)", run / BASELINE_NAME)

    def keep_baseline(self, path: Path, report: ScanReport) -> None:
        """Keep the run's growth baseline beside its checkpoints (checkpoint/baseline.py): rotation deletes
        the first healthy checkpoint, and without it a run drifting a few times a save never looks
        diverged. Errors are logged; training goes on."""
        from nandoctor.checkpoint import baseline

        try:
            kept = remember_baseline(path, report, self.scan, fresh=self.fresh_run)
            self.fresh_run = False  # (its first save removed an earlier run's baseline; later ones keep this run's)
        except Exception as exc:  # noqa: BLE001  never crash training because of the doctor
            logger.error("nandoctor: could not keep the run's baseline beside %s (%s: %s)", path, type(exc).__name__, exc)
            return
        if kept is not None:
            logger.info("nandoctor: growth is measured against %s (kept in %s)", kept.checkpoint, baseline.BASELINE_NAME)

    def record(self, path: str, passed: bool) -> None:
        if passed:
            self.last_clean = path
        elif self.first_bad is None:
            self.first_bad = path

    def gate(self, report: ScanReport) -> dict[str, Any]:
        """The ``gate`` object of the JSON: what failed it, its exit code, whether it passed; ``weights_passed``
        where only a config file failed it (the weights are a resume point all the same)."""
        data = gate_json(self.fail_on, verdicts.exit_code(report, self.fail_on))
        if not data["passed"] and verdicts.passes(verdicts.weights_report(report, self.fail_on), self.fail_on):
            data["weights_passed"] = True
        return data

    def report_json(self, report: ScanReport) -> dict[str, Any]:
        data = report_to_json(report)
        data["gate"] = self.gate(report)
        return data


def _tied_aliases(model: Any) -> dict[str, str]:
    """The other names of ``model``'s tied parameters (GPT-2's ``lm_head.weight`` for ``transformer.wte.weight``), each
    to the name ``named_parameters()`` gives it: the module's scan names a shared tensor once, its ``state_dict()``
    (Lightning's save, a ``.bin``) under every name. A real Lightning run of a tied GPT-2 at lr 3 never kept its
    initial weights (the save held a name they lacked), measured growth from its already blown-up first save and
    passed CLEAN, the untied twin DIVERGED."""
    try:
        named = model.named_parameters(remove_duplicate=False)
    except TypeError:  # (a module of its own named_parameters: no aliases known)
        return {}
    first: dict[int, str] = {}
    aliases = {}
    for name, parameter in named:
        seen = first.setdefault(id(parameter), name)
        if seen != name:
            aliases[name] = seen
    return aliases


def remember_baseline(target: Path, report: ScanReport, scan_one: Callable[[Path], ScanReport],
                      fresh: bool = False) -> Any:
    """Keep the growth baseline of the run ``target`` (a checkpoint just saved and judged: ``report``) lies
    in (checkpoint/baseline.py), unless one from an earlier step is kept already: the first healthy
    checkpoint still on disk before it (scanned with ``scan_one``: a run resumed with the callback newly
    added), else ``target`` itself when healthy. ``fresh``: this training started from scratch (no resume), so a
    baseline kept from an earlier run in the same folder is replaced, and checkpoints left from it are not
    candidates. Returns the RunBaseline written, or None; raises OSError."""
    from nandoctor.checkpoint.baseline import INITIAL_WEIGHTS, RunBaseline, first_loss, load_baseline, write_baseline
    from nandoctor.checkpoint.runs import HEALTHY_STATUSES, place_in_run
    from nandoctor.errors import NandoctorError

    place = place_in_run(Path(target))
    if place is None or place.final:
        return None
    existing, ignored = load_baseline(place.run)  # (a fresh run's start() removed an earlier run's, if it could)
    if ignored is not None:  # (replaced below by this run's, once a healthy checkpoint is seen)
        logger.warning("nandoctor: %s", ignored)
    if existing is not None and existing.step < place.step and not fresh:
        if existing.checkpoint == INITIAL_WEIGHTS and existing.first_loss is None:  # whose run it is, once logged
            logged = first_loss(Path(target) if Path(target).is_dir() else Path(target).parent)
            if logged is not None:
                write_baseline(place.run, dataclasses.replace(existing, first_loss=logged))
        return None
    candidates: list[tuple[int, Path, ScanReport | None]] = [] if fresh else [
        (step, path, None) for step, path in place.siblings() if step < place.step
    ]
    candidates.append((place.step, Path(target), report))
    for step, path, scanned in candidates:
        if scanned is None:
            try:
                scanned = scan_one(path)
            except (NandoctorError, OSError):
                continue
        status, _ = verdicts.checkpoint_status(scanned, False, None)
        scales = verdicts.tensor_scales(scanned)
        if status in ("poisoned", "diverged"):
            return None  # the run went bad before a healthy checkpoint was seen: nothing to keep
        if status not in HEALTHY_STATUSES or not scales:
            continue
        kept = RunBaseline(step, path.name, verdicts.max_abs(scanned, "weight"), scales,
                           first_loss(path if path.is_dir() else path.parent))
        write_baseline(place.run, kept)
        return kept
    return None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (a reader never sees half a verdict), in place of whatever is at
    the name (a link or FIFO planted there is replaced, never written through: report/outfile.py, ``owned``);
    errors are logged."""
    from nandoctor.report.outfile import write_text

    try:
        write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n", owned=True)
    except (OSError, ValueError) as exc:
        logger.error("nandoctor: could not write %s (%s)", path, exc)


def passed_in(data: Any) -> bool:
    """Whether a gate JSON object (as written above) says its checkpoint's weights passed (``weights_passed``:
    they did, while a config file failed the checkpoint's gate)."""
    gate = data.get("gate") if isinstance(data, dict) else None
    return isinstance(gate, dict) and (gate.get("passed") is True or gate.get("weights_passed") is True)


def refuse_failed_resume(resumed: Path, entry: Any, instead: str, raising: bool, run: Path) -> None:
    """Training is about to resume from ``resumed``, whose gate JSON ``entry`` (as written above) failed: it would go
    on from bad weights until the next save (a trial: ``resume_from_checkpoint=True`` and ``ckpt_path="last"`` take
    the newest save, often the one that broke). ``instead`` says where to resume from; raised
    (NonFiniteWeightsError) when ``raising``, logged as an error otherwise."""
    summary = entry.get("summary") if isinstance(entry, dict) else None
    verdict = summary.get("verdict") if isinstance(summary, dict) else None
    refuse_resume(f"resuming from {resumed}, which failed nandoctor's check when it was saved"
                  f"{f' ({verdict})' if isinstance(verdict, str) else ''}: training would go on from its weights; "
                  f"{instead}", raising, run)


def refuse_resume(message: str, raising: bool, run: Path) -> None:
    """Refuse a resume for the reason ``message`` gives: NonFiniteWeightsError when ``raising``, an error logged
    otherwise."""
    if raising:
        from nandoctor.errors import NonFiniteWeightsError

        raise NonFiniteWeightsError(f"nandoctor: {message}", f"`nandoctor scan {run}` shows the run")
    logger.error("nandoctor: %s", message)


def distributed() -> Any:
    """``torch.distributed`` when this process is one of several in an initialised process group, else None."""
    try:
        import torch.distributed as dist  # torch is already loaded in any process that trains
    except ImportError:
        return None
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    return dist


__all__ = ["REPORT_NAME", "CheckpointGate", "distributed", "passed_in", "refuse_failed_resume", "refuse_resume",
           "remember_baseline", "write_json"]
