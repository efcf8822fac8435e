"""The archive format version of a torch zip, judged as torch's own reader judges it.

``PyTorchStreamReader`` (caffe2/serialize/inline_container.cc) reads the record
``.data/version`` if the archive has one, else ``version`` (a missing one: "Expected
hasRecord("version")"), parses it with ``std::stoull`` (leading whitespace, an
optional sign, decimal digits, anything after them ignored; a value past 64 bits is
refused, a negative one wraps and is taken as a signed 64-bit number) and refuses a
version outside ``kMinSupportedFileFormatVersion`` … ``kMaxSupportedFileFormatVersion``
(caffe2/serialize/versions.h: 1 … 10 in torch 2.13). torch.load fails on such a file
before it reads anything else, so the model will not load: it is refused here too,
never scanned as if it would. tests/test_torch_version_record.py holds this to torch.load.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from nandoctor.errors import CorruptCheckpointError

MIN_VERSION, MAX_VERSION = 1, 10  # torch 2.13's kMinSupportedFileFormatVersion, kMaxSupportedFileFormatVersion
RECORDS = (".data/version", "version")  # the order torch looks for them in
_STOULL = re.compile(rb"[ \t\n\v\f\r]*([+-]?)([0-9]+)")  # what std::stoull reads; the rest is ignored
_HINT_RESAVE = ("load it with the torch that wrote it and re-save it with torch.save, or re-download it; "
                "a zip re-packed by another tool loses or changes the records torch needs")


def record_name(names: Collection[str]) -> str | None:
    """The version record torch reads among the archive's (case-folded) entry names; None when it has none."""
    return next((name for name in RECORDS if name in names), None)


def parse(raw: bytes) -> int | None:
    """The version ``std::stoull`` reads from the record's bytes, as torch's signed 64-bit number; None where
    stoull throws (no digits, or more than 64 bits)."""
    found = _STOULL.match(raw.split(b"\0", 1)[0])  # the record is read as a C string: it ends at a NUL
    if found is None:
        return None
    magnitude = int(found.group(2))
    if magnitude >= 1 << 64:
        return None
    value = (-magnitude if found.group(1) == b"-" else magnitude) % (1 << 64)
    return value - (1 << 64) if value >= 1 << 63 else value


def check(path: str, prefix: str, name: str | None, raw: bytes) -> None:
    """Raise CorruptCheckpointError, naming the file and what torch.load says, unless torch reads the archive's
    version record ``name`` (None: it has none) holding ``raw``; ``prefix`` is the archive's folder."""
    if name is None:
        raise CorruptCheckpointError(
            path,
            f"the archive has no version record ({prefix}version); torch.load refuses it "
            "(Expected hasRecord(\"version\") to be true), so this model will not load",
            _HINT_RESAVE,
        )
    version = parse(raw)
    shown = raw[:40].decode("latin-1").strip()
    if version is None:
        raise CorruptCheckpointError(
            path,
            f"its version record {prefix}{name} holds {shown!r}, which is no version number; torch.load refuses it "
            "(Couldn't parse the version), so this model will not load",
            _HINT_RESAVE,
        )
    if not MIN_VERSION <= version <= MAX_VERSION:
        bound = "maximum" if version > MAX_VERSION else "minimum"
        raise CorruptCheckpointError(
            path,
            f"its version record {prefix}{name} says format version {version}; torch reads versions "
            f"{MIN_VERSION} to {MAX_VERSION} and torch.load refuses it (Attempted to read a PyTorch file with "
            f"version {version}, but the {bound} supported version for reading is "
            f"{MAX_VERSION if version > MAX_VERSION else MIN_VERSION}), so this model will not load",
            _HINT_RESAVE,
        )
