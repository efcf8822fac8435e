"""Repo ids resolved offline in fake Hugging Face / ModelScope caches built in tmp_path (real symlinked blobs)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from fixtures.builders import SPECIALS, RawTensor, write_safetensors, write_sharded
from nandoctor.checkpoint import hubcache
from nandoctor.errors import CheckpointNotFoundError

from .conftest import run_cli as run

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OLD_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "MODELSCOPE_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the default caches live under an empty home
    monkeypatch.chdir(tmp_path)




def _tensors(bad: bool) -> dict[str, RawTensor]:
    out = {}
    for i in range(3):
        bits = np.zeros(16, dtype=np.uint32)
        if bad and i == 1:
            bits[5] = SPECIALS["F32"]["nan"]
        out[f"model.layers.{i}.mlp.weight"] = RawTensor("F32", (4, 4), bits.tobytes())
    return out


def make_hf_repo(cache: Path, repo_id: str, *, bad: bool, commit: str = COMMIT, ref: str | None = "main") -> Path:
    """The real layout: blobs named by hash, snapshots/<commit>/ holding relative symlinks to them."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    staging = cache.parent / f"staging-{commit}"
    write_sharded(staging, _tensors(bad), shards=2)
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in sorted(staging.iterdir()):
        blob = repo / "blobs" / f"{commit[:8]}-{file.name}.blob"
        shutil.move(file, blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / file.name)
    shutil.rmtree(staging)
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def test_repo_id_found_in_hf_hub_cache_through_symlinked_shards(tmp_path, monkeypatch):
    cache = tmp_path / "hf"
    snapshot = make_hf_repo(cache, "Qwen/Qwen-1_8B", bad=True)
    assert (snapshot / "model-00001-of-00002.safetensors").is_symlink()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))

    result = run("scan", "Qwen/Qwen-1_8B", "--json")
    assert result.exit_code == 1, result.output
    data = json.loads(result.output)
    assert data["errors"] == []  # the symlinks into ../../blobs were followed, not refused
    assert data["summary"]["nan"] == 1
    assert data["bad_layer_ranges"] == ["model.layers.1"]
    assert any("huggingface cache" in n and COMMIT in n for n in data["notes"])


def test_hf_home_and_default_locations(tmp_path, monkeypatch):
    make_hf_repo(tmp_path / "hfhome" / "hub", "org/clean", bad=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    assert run("scan", "org/clean", "--quiet").exit_code == 0

    monkeypatch.delenv("HF_HOME")
    make_hf_repo(tmp_path / "home" / ".cache" / "huggingface" / "hub", "org/other", bad=True)
    result = run("scan", "org/other", "--quiet")
    assert result.exit_code == 1 and "NON-FINITE" in result.output


def test_revision_comes_from_refs_main_and_can_be_picked(tmp_path, monkeypatch):
    cache = tmp_path / "hf"
    make_hf_repo(cache, "org/m", bad=True, commit=OLD_COMMIT, ref=None)  # an older, bad snapshot
    make_hf_repo(cache, "org/m", bad=False, commit=COMMIT)  # refs/main points at the clean one
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert run("scan", "org/m", "-q").exit_code == 0
    assert run("scan", f"org/m@{OLD_COMMIT}", "-q").exit_code == 1
    missing = run("scan", "org/m@v2", "-q")
    assert missing.exit_code == 3 and "revision not in the Hugging Face cache" in missing.output


def test_several_snapshots_without_refs_is_ambiguous(tmp_path, monkeypatch):
    cache = tmp_path / "hf"
    make_hf_repo(cache, "org/m", bad=False, commit=COMMIT, ref=None)
    make_hf_repo(cache, "org/m", bad=True, commit=OLD_COMMIT, ref=None)
    with pytest.raises(CheckpointNotFoundError, match="2 snapshots and no refs/main"):
        hubcache.find_hf("org/m", cache=cache)


def test_not_cached_exits_3_and_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    result = run("scan", "Qwen/Qwen-1_8B")
    assert result.exit_code == 3
    assert str(tmp_path / "hf" / "models--Qwen--Qwen-1_8B") in result.output
    assert str(tmp_path / "ms") in result.output
    assert "never downloads" in result.output
    assert "Traceback" not in result.output


def test_modelscope_cache_with_escaped_dots(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    folder = tmp_path / "ms" / "models" / "Qwen" / "Qwen2___5-0___5B"
    write_sharded(folder, _tensors(bad=True), shards=2)
    result = run("scan", "Qwen/Qwen2.5-0.5B", "--json")
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["summary"]["nan"] == 1 and any("modelscope cache" in n for n in data["notes"])


def test_local_path_wins_over_repo_id(tmp_path, monkeypatch):
    cache = tmp_path / "hf"
    make_hf_repo(cache, "org/m", bad=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    write_sharded(tmp_path / "org" / "m", _tensors(bad=False), shards=1)  # ./org/m exists locally
    result = run("scan", "org/m", "--json")
    assert result.exit_code == 0
    assert not any("cache" in n for n in json.loads(result.output)["notes"])


def test_symlink_leaving_the_blobs_is_still_refused(tmp_path, monkeypatch):
    cache = tmp_path / "hf"
    snapshot = make_hf_repo(cache, "org/m", bad=False)
    outside = tmp_path / "elsewhere.safetensors"
    write_safetensors(outside, {"x": RawTensor("F32", (1,), b"\0" * 4)})
    shard = snapshot / "model-00002-of-00002.safetensors"
    shard.unlink()
    os.symlink(outside, shard)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    result = run("scan", "org/m", "--json")
    assert result.exit_code == 3
    assert any("outside the checkpoint folder" in e["message"] for e in json.loads(result.output)["errors"])


@pytest.mark.parametrize(
    "text, expected",
    [("Qwen/Qwen-1_8B", True), ("gpt2", True), ("org/m@main", True), ("./x", False), ("/abs/x", False),
     ("a/b/c", False), ("a/../b", False), ("", False), ("~/m", False)],
)
def test_what_looks_like_a_repo_id(text, expected):
    assert hubcache.looks_like_repo_id(text) is expected


def test_repair_takes_cached_model_names_and_never_suggests_writing_into_the_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf"
    make_hf_repo(cache, "acme/tiny-bad", bad=True)
    clean_snapshot = make_hf_repo(cache, "acme/tiny-clean", bad=False, commit="c" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    scanned = run("scan", "acme/tiny-bad")
    assert scanned.exit_code == 1
    assert "--out tiny-bad-repaired" in scanned.output and "snapshots/" + COMMIT + "-repaired" not in scanned.output

    fixed = run("repair", "acme/tiny-bad", "--from", "acme/tiny-clean", "--out", "tiny-bad-repaired")
    assert fixed.exit_code == 0, fixed.output
    assert run("scan", "tiny-bad-repaired", "-q").exit_code == 0
    names = sorted(p.name for p in clean_snapshot.iterdir())
    assert sorted(p.name for p in (tmp_path / "tiny-bad-repaired").iterdir()) == sorted(names + ["nandoctor-repair.json"])


def test_a_mistyped_path_is_called_a_missing_path_first(tmp_path, monkeypatch):
    result = run("scan", "ck/does-not-exist")
    assert result.exit_code == 3
    assert result.output.startswith("error: ck/does-not-exist: no such file or folder (nor a model of that name")
    assert "check the path" in result.output


def test_a_local_folder_named_like_an_org_does_not_hide_a_cached_model(tmp_path, monkeypatch):
    """A review: a folder Qwen/ holding Qwen2-0.5B (hf download --local-dir) made `scan Qwen/Qwen2.5-0.5B` answer
    "did you mean Qwen/Qwen2-0.5B?" instead of scanning the cached model; a name neither on disk nor cached is
    still a typo of the local folder, without a download hint."""
    cache = tmp_path / "hf"
    make_hf_repo(cache, "Qwen/Qwen2.5-0.5B", bad=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    (tmp_path / "Qwen" / "Qwen2-0.5B").mkdir(parents=True)
    result = run("scan", "Qwen/Qwen2.5-0.5B", "--quiet")
    assert result.exit_code == 1 and "NON-FINITE" in result.output, result.output
    missing = run("scan", "Qwen/Qwen2.5-0.6B", "--quiet")
    assert missing.exit_code == 3 and "did you mean Qwen/Qwen2.5-0.5B" not in missing.output
    assert "hf download" not in missing.output and "Qwen/Qwen2-0.5B" in missing.output, missing.output


def test_a_mistyped_local_path_is_answered_with_what_its_folder_holds(tmp_path, monkeypatch):
    """demo-run/checkpoint-30 beside demo-run/checkpoint-300 is a typo, not a hub model: the hint names the close
    match (it suggested `hf download demo-run/checkpoint-30`); a folder of no similar name says so, and is not
    looked up either (`gate/missing_typo` beside a folder `gate` suggested `hf download gate/missing_typo`); a path
    whose folder does not exist, or a bare name, keeps the hub hint."""
    from nandoctor.checkpoint import hubcache
    from nandoctor.errors import CheckpointNotFoundError

    for name in ("checkpoint-100", "checkpoint-300"):
        (tmp_path / "run" / name).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    for given, hint in (("run/checkpoint-30", "did you mean run/checkpoint-300?"),
                        ("run/zzz", "check the path: run holds no zzz"),
                        ("zzz", "check the path: the current folder holds no zzz; if it is a hub model"),
                        (str(tmp_path / "run" / "checkpoint-10"), f"did you mean {tmp_path / 'run' / 'checkpoint-100'}?"),
                        # (a new user: checkpoint-99 among saves by step was "did you mean checkpoint-5?": the nearest
                        # step first)
                        ("run/checkpoint-290", "did you mean run/checkpoint-300? (run also holds checkpoint-100)"),
                        ("nosuch/model", "hf download nosuch/model"),
                        # (a new user: the local fact first, not a download instruction for a mistyped local path)
                        ("nosuch/model", "check the path: the current folder holds no nosuch; if it is a hub model")):
        with pytest.raises(CheckpointNotFoundError) as caught:
            hubcache.resolve(given)
        assert hint in caught.value.hint, (given, caught.value.hint)
        assert ("hf download" in caught.value.hint) is given.startswith(("nosuch", "zzz"))
