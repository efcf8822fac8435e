"""What a file that is not the weights its name promises starts with: text, a web page, an LFS pointer,
another format's magic. One description for every reader, so a ``model.safetensors`` that is really an
HTML error page says so instead of quoting a header length of 8 quintillion bytes.
"""

from __future__ import annotations

from nandoctor.errors import CorruptCheckpointError
from nandoctor.readers.formats import GGUF_MAGIC, ZIP_LOCAL_MAGIC

LFS_POINTER_PREFIX = b"version https://git-lfs"
REDOWNLOAD = ("re-download the file (for a Hugging Face model: huggingface-cli download REPO_ID --force-download) "
              "and scan again")

# (magic at byte 0, what the file is, what to do); checked in order
_MAGICS: tuple[tuple[bytes, str, str], ...] = (
    (ZIP_LOCAL_MAGIC, "a zip archive (PyTorch saves .bin/.pt/.ckpt files as zip archives)",
     "if it is a PyTorch checkpoint, rename it to .pt and scan again; else " + REDOWNLOAD),
    (GGUF_MAGIC, "a GGUF file (llama.cpp)", "rename it to .gguf and scan again"),
    (b"\x93NUMPY", "a NumPy .npy array", "nandoctor does not read .npy files; " + REDOWNLOAD),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (Keras/TensorFlow weights)", "nandoctor does not read HDF5; " + REDOWNLOAD),
    (b"\x1f\x8b", "gzip-compressed data", "decompress it (gunzip) and scan the result"),
    (b"\xfd7zXZ\x00", "xz-compressed data", "decompress it (unxz) and scan the result"),
    (b"(\xb5/\xfd", "zstd-compressed data", "decompress it (unzstd) and scan the result"),
    (b"BZh", "bzip2-compressed data", "decompress it (bunzip2) and scan the result"),
)


def identify(head: bytes) -> tuple[str, str] | None:
    """(what ``head``, a file's first bytes, shows the file to be, what to do) when it is recognisably no
    checkpoint of the kind nandoctor reads: an LFS pointer, an HTML page, JSON, other text, a pickle
    that is no torch file, another format's magic; None for bytes it cannot place."""
    if head.startswith(LFS_POINTER_PREFIX):
        return ("a Git LFS pointer file, not the weights",
                "run `git lfs pull` in the repository (or download the file itself) and scan again")
    for magic, what, todo in _MAGICS:
        if head.startswith(magic):
            return what, todo
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return ("a pickle that is not a PyTorch checkpoint",
                "nandoctor never unpickles arbitrary files; if it holds weights, save them with torch.save or safetensors")
    text = _text(head)
    if text is None:
        return None
    lead = text.lstrip().lower()
    if lead.startswith(("<!doctype html", "<html", "<head", "<body", "<?xml")):
        return ("an HTML page, as a download saves when it got an error or login page instead of the file",
                REDOWNLOAD + " (a gated model needs `huggingface-cli login` first)")
    if lead.startswith(("{", "[")):
        return "JSON text", "point nandoctor at the weight files (or their folder), not at a JSON file"
    return "text", REDOWNLOAD


def _text(head: bytes) -> str | None:
    """``head`` as text when it is printable UTF-8 (a multi-byte character cut at the end is allowed)."""
    text = head.decode("utf-8", "ignore")
    if not text or len(text.encode("utf-8")) < len(head) - 3:
        return None
    return text if all(c.isprintable() or c in "\t\r\n" for c in text) else None


def preview(head: bytes, limit: int = 24) -> str:
    """The first bytes as they would be read: text in quotes (cut at ``limit`` characters), else hex."""
    text = _text(head)
    if text is not None:
        shown = " ".join(text.split())
        return repr(shown[:limit] + ("…" if len(shown) > limit else ""))
    return "bytes " + head[:8].hex(" ")


def not_a(path: str, format_name: str, head: bytes) -> CorruptCheckpointError:
    """The error for a file named as ``format_name`` whose first bytes ``head`` are something else."""
    found = identify(head)
    if found is None:
        return CorruptCheckpointError(path, f"not a {format_name} file (it starts with {preview(head)})", REDOWNLOAD)
    what, todo = found
    return CorruptCheckpointError(path, f"not a {format_name} file: it is {what} (it starts with {preview(head)})", todo)


__all__ = ["LFS_POINTER_PREFIX", "REDOWNLOAD", "identify", "not_a", "preview"]
