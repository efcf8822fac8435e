"""Readers turn one checkpoint file into tensor references (byte ranges), never tensors.

``READERS`` is a static registry (format name → reader), filled when this
package is imported: a reader that fails to import is a bug that surfaces at
once, never a file silently called "not a format nandoctor knows".
``reader_for`` picks a reader by the file's first bytes (magic), falling back
to its suffix, so a misnamed file is still read by the right reader or refused
clearly. Every reader has one method that matters, ``read(path) -> ReadResult``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from nandoctor.errors import UnsupportedFormatError
from nandoctor.model import ReadResult
from nandoctor.readers import magic
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


def _builtin_readers() -> dict[str, CheckpointReader]:
    from nandoctor.readers.dcp import DcpReader
    from nandoctor.readers.gguf import GGUFReader
    from nandoctor.readers.safetensors import SafetensorsReader
    from nandoctor.readers.torch.file import TorchReader

    readers: tuple[CheckpointReader, ...] = (SafetensorsReader(), TorchReader(), GGUFReader(), DcpReader())
    return {reader.format_name: reader for reader in readers}


READERS: dict[str, CheckpointReader] = _builtin_readers()


def supported_suffixes() -> tuple[str, ...]:
    return tuple(s for r in READERS.values() for s in r.suffixes)


# How messages name the format a file's suffix promises
_FORMAT_WORDS = {"safetensors": "safetensors", "torch": "PyTorch", "gguf": "GGUF", "dcp": "torch.distributed.checkpoint"}


def reader_for(path: Path) -> CheckpointReader:
    """The reader for ``path``, chosen by content first, then by suffix. An LFS pointer is refused here, as
    what it is, whatever its name."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    suffix = path.suffix.lower()
    promised = next((name for name, reader in READERS.items() if suffix in reader.suffixes), None)
    if head.startswith(LFS_POINTER_PREFIX):
        raise magic.not_a(str(path), _FORMAT_WORDS.get(promised or "", "checkpoint"), head)
    if promised == "dcp":  # starts like a torch zip, but only its .metadata explains it
        return READERS["dcp"]
    for reader in READERS.values():
        if reader.sniff(head):
            return reader
    if promised is None:
        raise UnsupportedFormatError(f"{path}: not a checkpoint format nandoctor knows")
    return READERS[promised]  # which, finding no format of its own, says what the file is (magic.not_a)


def read_file(path: Path, *, defer_crcs: bool = False) -> ReadResult:
    """``path`` read by the reader its content (or suffix) calls for.

    ``defer_crcs``: the readers that check zip CRC-32s (torch, DCP) leave those checks in the result's
    ``owed`` rather than read every storage a second time; the caller must make them (the scan does, in
    its own pass over the bytes)."""
    from nandoctor.readers.dcp import DcpReader
    from nandoctor.readers.torch.file import TorchReader

    reader = reader_for(path)
    if defer_crcs and isinstance(reader, (TorchReader, DcpReader)):
        return reader.read(path, defer_crcs=True)
    return reader.read(path)
