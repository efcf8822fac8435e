"""Readers turn one checkpoint file into tensor references (byte ranges), never tensors.

Which formats there are, and how a file's first bytes and suffix show its format, is
``formats.FORMATS``; a format's reader is imported only when a file needs it (``reader``), so a
safetensors scan never pays for the torch, GGUF or DCP readers. A reader that fails to import
raises there (an ImportError, reported as an internal error), never a file silently called "not a
format nandoctor knows": the format is chosen before its reader is imported, and
``tests/test_readers.py`` imports every registered reader. ``reader_for`` picks a reader by the
file's first bytes (magic), falling back to its suffix, so a misnamed file is still read by the
right reader or refused clearly. Every reader has one method that matters, ``read(path) -> ReadResult``.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Protocol, cast

from nandoctor.errors import UnsupportedFormatError
from nandoctor.model import ReadResult, ScanProblem
from nandoctor.readers import magic
from nandoctor.readers.formats import FORMATS
from nandoctor.readers.magic import LFS_POINTER_PREFIX


class CheckpointReader(Protocol):
    # Read-only members: a reader's class attributes (a tuple of four suffixes …) satisfy them as they are.
    @property
    def format_name(self) -> str: ...

    @property
    def suffixes(self) -> tuple[str, ...]: ...

    def sniff(self, head: bytes) -> bool:
        """True when the file's first bytes look like this format."""

    def read(self, path: Path) -> ReadResult:
        """Validate the file and return its tensors, notes and in-file problems.

        Raises a NandoctorError (CorruptCheckpointError, UnsafeCheckpointError …) when the
        file cannot be read at all.
        """


class DeferringReader(CheckpointReader, Protocol):
    """A reader of a format whose ``defers_crcs`` is set (torch, DCP)."""

    def read(self, path: Path, *, defer_crcs: bool = False) -> ReadResult: ...


_READERS: dict[str, CheckpointReader] = {}  # format name -> its reader, once imported


def reader(format_name: str) -> CheckpointReader:
    """The reader of the format ``format_name`` (a key of ``FORMATS``), its module imported on first use."""
    found = _READERS.get(format_name)
    if found is None:
        module, _, name = FORMATS[format_name].reader.partition(":")
        found = _READERS[format_name] = getattr(importlib.import_module(module), name)()
    return found


def supported_suffixes() -> tuple[str, ...]:
    return tuple(s for f in FORMATS.values() for s in f.suffixes)


def reader_for(path: Path) -> CheckpointReader:
    """The reader for ``path``, chosen by content first, then by suffix. An LFS pointer is refused here, as
    what it is, whatever its name."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    suffix = path.suffix.lower()
    promised = next((f for f in FORMATS.values() if suffix in f.suffixes), None)
    if head.startswith(LFS_POINTER_PREFIX):
        raise magic.not_a(str(path), promised.words if promised else "checkpoint", head)
    if promised is not None and promised.sniff is None:  # chosen by its suffix alone (DCP)
        return reader(promised.name)
    for known in FORMATS.values():
        if known.sniff is not None and known.sniff(head):
            return reader(known.name)
    if promised is None:
        raise UnsupportedFormatError(f"{path}: not a checkpoint format nandoctor knows")
    return reader(promised.name)  # which, finding no format of its own, says what the file is (magic.not_a)


def read_file(path: Path, *, defer_crcs: bool = False) -> ReadResult:
    """``path`` read by the reader its content (or suffix) calls for.

    ``defer_crcs``: the readers that check zip CRC-32s (torch, DCP) leave those checks in the result's
    ``owed`` rather than read every storage a second time; the caller must make them (the scan does, in
    its own pass over the bytes)."""
    found = reader_for(path)
    if defer_crcs and FORMATS[found.format_name].defers_crcs:
        result = cast(DeferringReader, found).read(path, defer_crcs=True)
    else:
        result = found.read(path)
    misnamed = misnamed_problem(path, found.format_name)
    return result if misnamed is None else dataclasses.replace(result, problems=(*result.problems, misnamed))


# Who loads each format by its name, and what a file of each format is renamed to when it is misnamed
_LOADERS = {"safetensors": "transformers, safetensors.load_file", "torch": "torch.load", "gguf": "llama.cpp"}
_RENAME_TO = {"safetensors": "model.safetensors", "torch": "pytorch_model.bin (or .pt)", "gguf": "model.gguf"}


def misnamed_problem(path: Path, content: str) -> ScanProblem | None:
    """A file whose suffix promises one format and whose bytes are another's: nandoctor reads the bytes, but
    the loader a user points at it goes by the name (transformers and ``safetensors.load_file`` fail on a
    torch zip named ``model.safetensors``, ``torch.load`` on safetensors bytes named ``.bin``), so the
    checkpoint will not load as it is: a problem (exit 3), never CLEAN. A GGUF file named ``.bin`` is left
    alone: llama.cpp reads GGUF by its bytes."""
    promised = next((f for f in FORMATS.values() if path.suffix.lower() in f.suffixes), None)
    if promised is None or promised.name == content or (content == "gguf" and promised.name == "torch"):
        return None  # (llama.cpp, GGUF's loader, goes by the bytes: GGUF files were long shipped as .bin)
    what = FORMATS[content].words
    return ScanProblem(
        str(path),
        f"named as a {promised.words} file ({path.suffix}) but its bytes are a {what} file: nandoctor read it as "
        f"{what}, but a loader that goes by the name ({_LOADERS.get(promised.name, 'its loader')}) fails on it",
        f"rename it to match its content ({_RENAME_TO.get(content, 'the right suffix')}), or re-save it in the "
        f"format its name promises",
    )

