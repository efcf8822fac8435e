"""One exception family for nandoctor.

Every error carries a one-line ``message`` that names the file (and tensor
when there is one) and a ``hint`` that tells the user what to do next. The CLI
prints both and exits with ``exit_code``; the Python API simply raises them.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_NONFINITE = 1
EXIT_USAGE = 2
EXIT_UNREADABLE = 3


class NandoctorError(Exception):
    """Base class: a problem the user can act on."""

    exit_code = EXIT_UNREADABLE
    default_hint = ""
    # What a report that could not be made says for it (``FAIL UNREADABLE path: …``, the JSON verdict):
    # UNREADABLE only for the checkpoint itself (no such path, a refused or corrupt file); ERROR otherwise
    verdict_word = "ERROR"
    path: str | None = None  # the file or folder the message is about, where not the target (a JSON error's "path")

    def __init__(self, message: str, hint: str | None = None, *, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = self.default_hint if hint is None else hint
        if path is not None:
            self.path = path

    def __str__(self) -> str:  # keeps the hint visible for API users too
        return f"{self.message} ({self.hint})" if self.hint else self.message


class CheckpointNotFoundError(NandoctorError):
    verdict_word = "UNREADABLE"
    default_hint = "check the path; nandoctor takes a file, a checkpoint folder or a run folder"


class UnsupportedFormatError(NandoctorError):
    verdict_word = "UNREADABLE"
    default_hint = (
        "nandoctor reads .safetensors, PyTorch .bin/.pt/.pth/.ckpt, GGUF .gguf files and folders of them"
    )


class CheckpointsElsewhereError(UnsupportedFormatError):
    """A folder with no checkpoint at its top whose subfolders hold some (named in the message, one to scan in the
    hint): nothing here was unreadable, so its verdict says where to look, not ``UNREADABLE`` (a trial read
    ``FAIL UNREADABLE`` for a Lightning project whose files were healthy); still exit 3, nothing was checked."""

    verdict_word = "NO CHECKPOINT"


class CorruptCheckpointError(NandoctorError):
    """The bytes do not form a valid checkpoint (truncated, inconsistent, tampered)."""

    verdict_word = "UNREADABLE"
    default_hint = "re-download or re-save this file; if it came from training, use an earlier checkpoint"
    path: str  # (always given: the file whose bytes are wrong)

    def __init__(self, path: str, reason: str, hint: str | None = None) -> None:
        super().__init__(f"{path}: {reason}", hint)
        self.path = path
        self.reason = reason


class UnreadablePathError(CorruptCheckpointError):
    """The file system refused to show a path (no permission to read or list it, an I/O error): nothing is
    wrong with the checkpoint's bytes as far as anyone knows, and nothing is called clean."""

    default_hint = "check the path's permissions and those of the folders above it, or run nandoctor as a user who can read it"


class UnsafeCheckpointError(CorruptCheckpointError):
    """The file asks for something that would run code; it is refused, never loaded."""

    default_hint = (
        "do not load this file with torch.load(weights_only=False); "
        "if you trust its source, re-save its weights as safetensors"
    )


class FileChangedError(CorruptCheckpointError):
    default_hint = "something wrote to the checkpoint while it was read; wait for the writer to finish and scan again"


class NonFiniteWeightsError(NandoctorError):
    """Raised by :func:`nandoctor.assert_finite` when a checkpoint holds NaN/Inf."""

    exit_code = EXIT_NONFINITE

    def __init__(self, message: str, hint: str | None = None, report: object | None = None) -> None:
        super().__init__(message, hint)
        self.report = report


class OverflowRiskError(NonFiniteWeightsError):
    """Raised by :func:`nandoctor.assert_finite` with a target dtype: finite weights a cast would turn into Inf/NaN."""


class DivergedError(NonFiniteWeightsError):
    """Raised by :func:`nandoctor.assert_finite` when the checkpoint is diverged (most weights NaN/Inf or
    exploded, or its weights' bulk grew far past its run's first healthy checkpoint): the message is the
    DIVERGED reason, the hint what to do instead of a repair (resume training, or re-make a converted file)."""


class UnreadableCheckpointError(CorruptCheckpointError):
    """Raised by :func:`nandoctor.assert_finite` when part of a checkpoint could not be read: never called finite."""

    def __init__(self, path: str, reason: str, hint: str | None = None, report: object | None = None) -> None:
        super().__init__(path, reason, hint)
        self.report = report


class RepairRefusedError(NandoctorError):
    default_hint = "add an earlier checkpoint with --from, or use --scope layer"


class OutputExistsError(NandoctorError):
    """``--out`` names something that exists; ``path`` is it (what a JSON error names)."""

    default_hint = "choose a new --out path; nandoctor never writes over an existing folder"

    def __init__(self, path: str, why: str = "already exists", hint: str | None = None) -> None:
        super().__init__(f"{path}: {why}", hint)
        self.path = path


class UnrestorableError(RepairRefusedError):
    """Some tensor that must be restored has no good donor; ``plan`` says what failed where."""

    def __init__(self, message: str, hint: str | None = None, plan: object | None = None) -> None:
        super().__init__(message, hint)
        self.plan = plan


class RepairFailedError(NandoctorError):
    """Writing or verifying a repaired checkpoint failed; nothing was left at the output path."""

    default_hint = "nothing was written at --out; fix the cause above and run the repair again"


class ReportNotWrittenError(NandoctorError):
    """stdout would not take a command's report (a full disk, an I/O error): no fault of the checkpoint, nor of
    nandoctor; the command's work is done and its exit code stands."""

    default_hint = ("the exit code is still the command's own (a scan's is its verdict); to read the report, send "
                    "stdout where it can be written (a disk with space, another file) and run the command again")


class DeviceUnavailableError(NandoctorError):
    default_hint = "use --device cpu, or install a CUDA build of torch"


class ManifestError(NandoctorError):
    """A ``--manifest`` file that cannot be read or is not a manifest: an error of the input, not of the
    checkpoint (``FAIL ERROR``, exit 3)."""

    default_hint = "write one from a good copy with: nandoctor manifest CHECKPOINT > manifest.json"


class ReportWriteError(NandoctorError):
    """A report file (``--html``) could not be written; the scan itself is not affected: its report is
    still printed, then this error, and the command exits 3."""

    default_hint = "give a path in a folder that exists and that you can write to"


def require_path(value: object, function: str, argument: str = "path") -> None:
    """TypeError unless ``value`` is a path (``str`` or ``os.PathLike``), saying which function takes a live
    model or state dict instead: the API's path arguments are handed to the filesystem, where a module
    gave "expected str, bytes or os.PathLike object, not Linear"."""
    import os

    if isinstance(value, (str, os.PathLike)):
        return
    if argument in ("out", "manifest"):
        instead = "give the path of a new folder to write" if argument == "out" else "give the manifest file's path"
    elif hasattr(value, "named_parameters"):
        instead = "for a live model use nandoctor.scan_module(model)"
    elif hasattr(value, "items"):
        instead = "for a state dict of live tensors use nandoctor.scan_state_dict(state_dict)"
    else:
        instead = "give the checkpoint's file or folder"
    what = "a path" if argument in ("out", "manifest") else "a checkpoint path"
    raise TypeError(f"nandoctor.{function}: {argument} must be {what} (str or os.PathLike), not "
                    f"{type(value).__name__}: {instead}")
