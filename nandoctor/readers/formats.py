"""What each format nandoctor reads looks like from outside, and which module reads it.

A format's name, the words messages use for it, its suffixes, its first bytes (magic) and, for DCP,
the metadata files that make a folder a checkpoint are written here once: the reader modules take
theirs from here, and the registry (``readers/__init__.py``) chooses a file's format from these
alone, importing the format's reader only when a file needs it. So a scan of safetensors files never
imports the torch, GGUF or DCP readers (their pickle machinery, dataclasses and regular expressions),
and importing this module costs next to nothing: no dataclass, no regular expression, no numpy.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

SAFETENSORS_MAX_HEADER_BYTES = 100_000_000  # the reference parser's limit
ZIP_LOCAL_MAGIC = b"PK\x03\x04"  # a zip's first local file header: how every torch.save file starts
GGUF_MAGIC = b"GGUF"
TORCH_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # the first pickle of a legacy torch file
_LEGACY_MAGIC_PICKLE_BYTES = b"\x8a\x0a" + TORCH_LEGACY_MAGIC_NUMBER.to_bytes(10, "little")  # LONG1 opcode with it


def looks_safetensors(head: bytes) -> bool:
    """An 8-byte little-endian header length within the limit, then the header's ``{``."""
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= SAFETENSORS_MAX_HEADER_BYTES and head[8:9] == b"{"


def looks_legacy_torch(head: bytes) -> bool:
    """A pickle whose first value is torch's magic number (any pickle protocol)."""
    return head[:1] == b"\x80" and _LEGACY_MAGIC_PICKLE_BYTES in head[:32]


def looks_torch(head: bytes) -> bool:
    """A torch.save zip, or a legacy torch file."""
    return head.startswith(ZIP_LOCAL_MAGIC) or looks_legacy_torch(head)


def looks_gguf(head: bytes) -> bool:
    return head[:4] == GGUF_MAGIC


DCP_METADATA_NAME = ".metadata"


def dcp_metadata_files(folder: Path) -> list[Path]:
    """A DCP checkpoint folder's ``.metadata``, or else the per-rank ``__N.metadata`` files torch writes
    without rank coordination; none: ``folder`` is no DCP checkpoint."""
    main = folder / DCP_METADATA_NAME
    if main.is_file():
        return [main]
    ranked = []
    for entry in folder.glob("__*" + DCP_METADATA_NAME):
        middle = entry.name[2 : -len(DCP_METADATA_NAME)]
        if middle.isdigit():
            ranked.append((int(middle), entry))
    return [path for _, path in sorted(ranked)]


class Format:
    """One format: ``name`` (a reader's ``format_name``), ``words`` (how messages name it), its ``suffixes``,
    ``sniff`` (whether a file's first bytes are this format; None: chosen by suffix only), ``reader``
    ("module:class" of its reader) and ``defers_crcs`` (its reader checks zip CRC-32s and can leave them
    to the caller: ``read(path, defer_crcs=True)``)."""

    __slots__ = ("defers_crcs", "name", "reader", "sniff", "suffixes", "words")

    def __init__(self, name: str, words: str, suffixes: tuple[str, ...], sniff: Callable[[bytes], bool] | None,
                 reader: str, *, defers_crcs: bool = False) -> None:
        self.name, self.words, self.suffixes, self.sniff = name, words, suffixes, sniff
        self.reader, self.defers_crcs = reader, defers_crcs

    def __repr__(self) -> str:
        return f"Format({self.name!r})"


SAFETENSORS = Format("safetensors", "safetensors", (".safetensors",), looks_safetensors,
                     "nandoctor.readers.safetensors:SafetensorsReader")
TORCH = Format("torch", "PyTorch", (".bin", ".pt", ".pth", ".ckpt"), looks_torch,
               "nandoctor.readers.torch.file:TorchReader", defers_crcs=True)
GGUF = Format("gguf", "GGUF", (".gguf",), looks_gguf, "nandoctor.readers.gguf:GGUFReader")
# A .distcp file starts like a torch zip, but only its folder's .metadata explains it: never sniffed.
DCP = Format("dcp", "torch.distributed.checkpoint", (".distcp",), None, "nandoctor.readers.dcp:DcpReader",
             defers_crcs=True)

# name -> format, in the order a file's first bytes are tried
FORMATS: dict[str, Format] = {f.name: f for f in (SAFETENSORS, TORCH, GGUF, DCP)}

__all__ = [
    "DCP", "DCP_METADATA_NAME", "FORMATS", "GGUF", "GGUF_MAGIC", "SAFETENSORS", "SAFETENSORS_MAX_HEADER_BYTES", "TORCH",
    "TORCH_LEGACY_MAGIC_NUMBER", "ZIP_LOCAL_MAGIC", "Format", "dcp_metadata_files", "looks_gguf", "looks_legacy_torch",
    "looks_safetensors", "looks_torch",
]
