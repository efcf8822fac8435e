"""Readers turn one checkpoint file into tensor references (byte ranges), never tensors.

Each format registers a :class:`CheckpointReader` in ``READERS``; ``reader_for``
picks one by the file's first bytes (magic), falling back to its suffix, so a
misnamed file is still read by the right reader or refused clearly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from nandoctor.errors import CorruptCheckpointError, UnsupportedFormatError
from nandoctor.model import TensorRef


class CheckpointReader(Protocol):
    format_name: str
    suffixes: tuple[str, ...]

    def sniff(self, head: bytes) -> bool:
        """True when the file's first bytes look like this format."""

    def read_refs(self, path: Path) -> list[TensorRef]:
        """Validate the file and return its tensors; raise a CorruptCheckpointError otherwise."""


READERS: dict[str, CheckpointReader] = {}

LFS_POINTER_PREFIX = b"version https://git-lfs"


def register(reader: CheckpointReader) -> CheckpointReader:
    READERS[reader.format_name] = reader
    return reader


def _load_builtin_readers() -> None:
    # Imported here so that each reader module registers itself exactly once.
    from nandoctor.readers import safetensors  # noqa: F401

    try:
        from nandoctor.readers import torchfile  # noqa: F401
    except ImportError:  # the torch reader lands in its own module; absent is fine
        pass


def supported_suffixes() -> tuple[str, ...]:
    _load_builtin_readers()
    return tuple(s for r in READERS.values() for s in r.suffixes)


def reader_for(path: Path) -> CheckpointReader:
    """The reader for ``path``, chosen by content first, then by suffix."""
    _load_builtin_readers()
    with open(path, "rb") as fh:
        head = fh.read(64)
    if head.startswith(LFS_POINTER_PREFIX):
        raise CorruptCheckpointError(
            str(path),
            "this is a Git LFS pointer file, not the weights",
            hint="run `git lfs pull` in the repository (or download the file itself) and scan again",
        )
    for reader in READERS.values():
        if reader.sniff(head):
            return reader
    suffix = path.suffix.lower()
    for reader in READERS.values():
        if suffix in reader.suffixes:
            return reader
    raise UnsupportedFormatError(f"{path}: not a checkpoint format nandoctor knows")
