"""The reader registry: a file's format chosen from ``readers.formats`` alone, its reader imported only when
a file needs it, and every registered reader importable and true to its entry (so one that fails to import
fails a test, and a scan, never calls a file "not a format nandoctor knows")."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nandoctor import readers
from nandoctor.errors import UnsupportedFormatError
from nandoctor.readers import reader, reader_for, supported_suffixes
from nandoctor.readers.formats import FORMATS

ROOT = Path(__file__).resolve().parent.parent
SHARD = ROOT / "fixtures" / "demo-run" / "checkpoint-300" / "model-00001-of-00002.safetensors"
LEGACY = Path(__file__).resolve().parent / "data" / "legacy" / "lpips-v0.1-alex.pth"
GGUF_HEAD = b"GGUF" + (3).to_bytes(4, "little") + bytes(16)


def _heads(tmp_path: Path) -> dict[str, bytes]:
    """First bytes of real files of each kind (and of things that are none)."""
    zipped = tmp_path / "a.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    return {"safetensors": SHARD.read_bytes()[:64], "torch zip": zipped.read_bytes()[:64],
            "torch legacy": LEGACY.read_bytes()[:64], "gguf": GGUF_HEAD, "html": b"<!DOCTYPE html><html>",
            "empty": b""}


def test_every_registered_reader_imports_and_is_true_to_its_format(tmp_path):
    heads = _heads(tmp_path)
    for name, known in FORMATS.items():
        found = reader(name)  # imports it: a reader that cannot be imported fails here
        module, _, class_name = known.reader.partition(":")
        assert (type(found).__module__, type(found).__name__) == (module, class_name)
        assert found.format_name == name and found.suffixes == known.suffixes
        for what, head in heads.items():  # the reader's own sniff is its format's
            assert found.sniff(head) == (known.sniff is not None and known.sniff(head)), (name, what)
    assert [n for n in FORMATS if FORMATS[n].sniff is not None and FORMATS[n].sniff(heads["torch zip"])] == ["torch"]
    assert [n for n in FORMATS if FORMATS[n].sniff is not None and FORMATS[n].sniff(heads["torch legacy"])] == ["torch"]
    assert supported_suffixes() == (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".distcp")


def test_a_reader_is_imported_only_when_a_file_needs_it(tmp_path):
    gguf_named_bin = tmp_path / "model.bin"  # content decides: GGUF, though the suffix says PyTorch
    gguf_named_bin.write_bytes(GGUF_HEAD)
    code = (
        "import sys\nfrom pathlib import Path\nfrom nandoctor.readers import reader_for\n"
        "def loaded():\n"
        "    return ' '.join(sorted(m.removeprefix('nandoctor.readers.') for m in sys.modules\n"
        "                           if m.startswith('nandoctor.readers.') and m.split('.')[2] in\n"
        "                           ('safetensors', 'torch', 'gguf', 'dcp', 'dcp_metadata', 'zipentries')))\n"
        "print('START', loaded())\n"
        "for path in sys.argv[1:]:\n"
        "    print(reader_for(Path(path)).format_name, loaded())\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(SHARD), str(gguf_named_bin)], capture_output=True,
                         text=True, cwd=ROOT, check=True)
    assert out.stdout.splitlines() == ["START ", "safetensors safetensors", "gguf gguf safetensors"], out.stderr


def test_a_reader_that_fails_to_import_is_an_error_never_an_unknown_format(tmp_path, monkeypatch):
    path = tmp_path / "model.gguf"
    path.write_bytes(GGUF_HEAD)
    monkeypatch.setattr(readers, "_READERS", {})  # none imported yet
    monkeypatch.setitem(sys.modules, "nandoctor.readers.gguf", None)  # importing it now raises ImportError
    with pytest.raises(ImportError):
        reader_for(path)
    misnamed = tmp_path / "model.safetensors"  # its content, not its name, still decides
    shutil.copy(path, misnamed)
    with pytest.raises(ImportError):
        readers.read_file(misnamed)
    unknown = tmp_path / "notes.txt"  # only a file of no format of ours is called that
    unknown.write_bytes(b"hello")
    with pytest.raises(UnsupportedFormatError, match="not a checkpoint format nandoctor knows"):
        reader_for(unknown)


@pytest.mark.parametrize("content, name", [("torch", "model.safetensors"), ("safetensors", "pytorch_model.bin"),
                                           ("safetensors", "model.gguf"), ("torch", "model.gguf")])
def test_a_file_whose_bytes_are_another_format_than_its_name_never_passes(tmp_path, content, name):
    """nandoctor reads the bytes, but transformers, safetensors.load_file, torch.load and llama.cpp go by the
    name (or fail on the bytes): the checkpoint will not load as it is, so it is a problem (exit 3), not CLEAN;
    the tensors are still counted (here: one NaN)."""
    from safetensors.numpy import save_file

    from tests.conftest import run_cli

    values = np.array([1.0, np.nan, 2.0], np.float32)
    path = tmp_path / name
    if content == "torch":
        torch = pytest.importorskip("torch")
        torch.save({"w": torch.from_numpy(values)}, path)
    else:
        save_file({"w": values}, path)
    data = json.loads(run_cli("scan", "--json", str(path)).stdout)
    assert data["summary"]["exit_code"] == 3 and data["summary"]["nan"] == 1
    assert "its bytes are a" in data["errors"][0]["message"] and "rename it" in data["errors"][0]["hint"]


def test_a_gguf_file_named_bin_is_read_without_a_problem(tmp_path):
    """llama.cpp reads GGUF by its bytes, and GGUF files were long shipped as .bin: no problem for that name."""
    from tests.conftest import run_cli
    from tests.gguf_files import write

    path = write(tmp_path / "ggml-model-f32.bin", [("blk.0.attn_q.weight", np.ones((4, 32), np.float32), None)])
    result = run_cli("scan", "--json", str(path))
    assert result.exit_code == 0 and not json.loads(result.stdout)["errors"]
