"""A byte window of an open file, seen as a file of its own (a DCP item inside a ``.distcp`` file).

``seek``/``read``/``tell`` are relative to the window's start and stop at its
end, so the strict zip and safetensors parsers read an embedded stream exactly
as they read a whole file; ``fileno`` is the real file's, and ``base`` says
where the window starts, for the few readers that map the file themselves.
"""

from __future__ import annotations

import io
from typing import BinaryIO


class FileWindow(io.RawIOBase):
    def __init__(self, fh: BinaryIO, base: int, size: int) -> None:
        super().__init__()
        self.fh, self.base, self.size, self.pos = fh, base, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        start = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, start + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int | None = -1) -> bytes:
        left = max(0, self.size - self.pos)
        n = left if n is None or n < 0 else min(n, left)
        self.fh.seek(self.base + self.pos)
        data = self.fh.read(n)
        self.pos += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def fileno(self) -> int:
        return self.fh.fileno()
