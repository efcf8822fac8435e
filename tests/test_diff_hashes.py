"""--verify-hashes: a tampered file against its HF-cache blob name, a manifest, and a repair proof; repair's diff."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import nandoctor
from nandoctor.cli import cli
from nandoctor.readers import read_file
from nandoctor.restore import proof


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"model.layers.{i}.mlp.weight": torch.randn(32, 16, generator=g) for i in range(4)}


def _poke(path: Path, name: str, index: int = 0) -> None:
    """Change one finite element of ``name`` to another finite value (a scan alone cannot see it)."""
    ref = next(r for r in read_file(path).refs if r.name == name)
    data = bytearray(path.read_bytes())
    data[ref.region.offset + index * 4] ^= 0x01  # lowest mantissa bit of an fp32
    path.write_bytes(bytes(data))


def _snapshot(tmp_path: Path) -> Path:
    """A Hugging Face cache laid out by hand: snapshots/<rev>/model.safetensors → blobs/<sha256>."""
    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    staging = tmp_path / "staging.safetensors"
    save_file(_weights(), staging)
    digest = hashlib.sha256(staging.read_bytes()).hexdigest()
    staging.rename(repo / "blobs" / digest)
    (snap / "model.safetensors").symlink_to(os.path.relpath(repo / "blobs" / digest, snap))
    (snap / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    return snap


def test_hf_cache_blob_name_verified_and_tampering_caught(tmp_path: Path) -> None:
    snap = _snapshot(tmp_path)
    runner = CliRunner()
    ok = runner.invoke(cli, ["scan", str(snap), "--verify-hashes", "--json", "--no-progress"])
    assert ok.exit_code == 0, ok.output
    (verified,) = json.loads(ok.output)["hashes"]["verified"]
    assert verified == {"file": str(snap / "model.safetensors"), "source": "Hugging Face cache blob name"}
    check = nandoctor.verify_hashes(snap)
    assert [s for _, s in check.verified] == ["Hugging Face cache blob name"] and not check.problems
    _poke(Path(os.path.realpath(snap / "model.safetensors")), "model.layers.2.mlp.weight")
    plain = runner.invoke(cli, ["scan", str(snap), "--no-progress"])
    assert plain.exit_code == 0  # finite and healthy: only the hash can tell
    bad = runner.invoke(cli, ["scan", str(snap), "--verify-hashes", "--no-progress"])
    assert bad.exit_code == 3 and "sha256 mismatch" in bad.output and "model.safetensors" in bad.output


def test_manifest_names_the_changed_tensor(tmp_path: Path) -> None:
    save_file(_weights(), tmp_path / "model.safetensors")
    runner = CliRunner()
    made = runner.invoke(cli, ["manifest", str(tmp_path / "model.safetensors")])
    assert made.exit_code == 0, made.output
    data = json.loads(made.output)
    (tmp_path / "manifest.json").write_text(made.output)
    (entry,) = data["files"]
    assert entry["sha256"] == hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest()
    assert sorted(n for s in entry["spans"] for n in s["tensors"]) == sorted(_weights())
    args = ["scan", str(tmp_path / "model.safetensors"), "--manifest", str(tmp_path / "manifest.json"), "--no-progress"]
    assert runner.invoke(cli, args).exit_code == 0
    _poke(tmp_path / "model.safetensors", "model.layers.1.mlp.weight", index=7)
    bad = runner.invoke(cli, args)
    assert bad.exit_code == 3
    assert "'model.layers.1.mlp.weight'" in bad.output and "model.layers.0.mlp.weight" not in bad.output


def test_manifest_of_torch_file_hashes_each_storage_once(tmp_path: Path) -> None:
    sd = _weights()
    sd["lm_head.weight"] = sd["model.layers.0.mlp.weight"]  # one storage, two names
    torch.save(sd, tmp_path / "model.bin")
    data = nandoctor.manifest(tmp_path / "model.bin")
    spans = data["files"][0]["spans"]
    assert len(spans) == 4 and sorted(map(len, (s["tensors"] for s in spans))) == [1, 1, 1, 2]
    (tmp_path / "m.json").write_text(json.dumps(data))
    ref = next(r for r in read_file(tmp_path / "model.bin").refs if r.name == "lm_head.weight")
    raw = bytearray((tmp_path / "model.bin").read_bytes())
    raw[ref.region.offset + 5] ^= 0x01
    (tmp_path / "model.bin").write_bytes(bytes(raw))  # the zip CRC-32 now fails too: still exit 3
    check = nandoctor.verify_hashes(tmp_path / "model.bin", manifest=tmp_path / "m.json")
    (problem,) = check.problems
    assert "'model.layers.0.mlp.weight'" in problem.message and "'lm_head.weight'" in problem.message


def test_missing_file_and_bad_manifest(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    save_file(_weights(), folder / "model.safetensors")
    data = nandoctor.manifest(folder)
    data["files"].append(dict(data["files"][0], path="model-extra.safetensors"))
    (tmp_path / "m.json").write_text(json.dumps(data))
    check = nandoctor.verify_hashes(folder, manifest=tmp_path / "m.json")
    assert [p.path for p in check.problems] == ["model-extra.safetensors"]
    (tmp_path / "junk.json").write_text('{"files": 3}')
    out = CliRunner().invoke(cli, ["scan", str(folder), "--manifest", str(tmp_path / "junk.json"), "--no-progress"])
    assert out.exit_code == 3 and "not a nandoctor manifest" in out.output and "Traceback" not in out.output
    # a manifest that is missing or not JSON: one error naming it (never an internal error), and not the
    # checkpoint's fault: ERROR, not UNREADABLE
    (tmp_path / "torn.json").write_text('{"nandoctor_manifest": 1, "files": [')
    for manifest, said in ((tmp_path / "gone.json", "cannot read the manifest"), (tmp_path / "torn.json", "not a nandoctor manifest")):
        quiet = CliRunner().invoke(cli, ["scan", str(folder), "--manifest", str(manifest), "-q"])
        assert quiet.exit_code == 3 and "internal error" not in quiet.output
        assert quiet.stdout.startswith(f"FAIL ERROR {folder}: {manifest}: {said}")


def test_repair_proof_hashes_and_its_diff(tmp_path: Path) -> None:
    donor, target = tmp_path / "donor", tmp_path / "target"
    donor.mkdir()
    target.mkdir()
    clean = _weights()
    save_file(clean, donor / "model.safetensors")
    moved = {k: v + 1 for k, v in clean.items()}  # trained on since the donor
    moved["model.layers.2.mlp.weight"][3, 4] = float("nan")
    save_file(moved, target / "model.safetensors")
    result = nandoctor.repair(target, [donor], tmp_path / "fixed")
    assert result.ok
    record = proof.read_proof(tmp_path / "fixed")
    source_diff = record["diff"]["source"]
    assert source_diff["differ_tensors"] == ["model.layers.2.mlp.weight"] and source_diff["only_restored_differ"]
    (donor_diff,) = record["diff"]["donors"]
    # Against a donor only the restored tensors are compared (not the whole donor: docs/repair.md)
    assert donor_diff["restored_identical"] and donor_diff["compared"] == "restored"
    assert donor_diff["tensors"] == donor_diff["identical"] == 1 and donor_diff["differ"] == 0
    assert not nandoctor.verify_hashes(tmp_path / "fixed").problems
    assert nandoctor.verify_hashes(tmp_path / "fixed").verified[0][1] == "nandoctor-repair.json"
    _poke(tmp_path / "fixed" / "model.safetensors", "model.layers.0.mlp.weight")
    (problem,) = nandoctor.verify_hashes(tmp_path / "fixed").problems
    assert "nandoctor-repair.json" in problem.message


def test_verified_files_are_counted_on_the_verdict_line_and_a_mismatch_is_called_one(tmp_path: Path) -> None:
    """The success line counts the files (never prints the list); a changed file is HASH MISMATCH (exit 3) in
    every output, never UNREADABLE: it was read, only its bytes are not the ones recorded."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    weights = _weights()
    save_file({k: weights[k] for k in list(weights)[:2]}, folder / "model-00001-of-00002.safetensors")
    save_file({k: weights[k] for k in list(weights)[2:]}, folder / "model-00002-of-00002.safetensors")
    (tmp_path / "m.json").write_text(json.dumps(nandoctor.manifest(folder)))
    runner = CliRunner()
    base = ["scan", str(folder), "--manifest", str(tmp_path / "m.json"), "--no-progress"]
    ok = runner.invoke(cli, base)
    assert ok.exit_code == 0
    assert "✓ CLEAN: all 4 tensors finite and healthy; hashes: all 2 weight files match their recorded sha256" in ok.output
    assert "[{" not in ok.output and "'file'" not in ok.output
    assert runner.invoke(cli, [*base, "-q"]).output == (
        f"PASS CLEAN {folder}: 4 tensors healthy; hashes: all 2 weight files match their recorded sha256\n")

    _poke(folder / "model-00002-of-00002.safetensors", "model.layers.3.mlp.weight")
    bad = runner.invoke(cli, base)
    assert bad.exit_code == 3 and "UNREADABLE" not in bad.output and "Could not be read" not in bad.output
    assert ("✗ FAIL HASH MISMATCH: 4 tensors read; hashes: 1 of 2 weight files match their recorded sha256; "
            "1 file fails its sha256 check") in bad.output
    assert "restore them from a good copy (or re-download them), then scan again" in bad.output
    quiet = runner.invoke(cli, [*base, "-q"])
    assert quiet.exit_code == 3 and quiet.output.startswith(f"FAIL HASH MISMATCH {folder}: 4 tensors read; ")
    data = json.loads(runner.invoke(cli, [*base, "--json"]).output)
    assert data["summary"]["verdict"] == "HASH MISMATCH" and data["summary"]["exit_code"] == 3
    assert [e["kind"] for e in data["errors"]] == ["hash"]
    assert data["hashes"]["verified"] == [{"file": str(folder / "model-00001-of-00002.safetensors"),
                                           "source": f"manifest {tmp_path / 'm.json'}"}]
    assert data["hashes"]["unverified"] == []
    markdown = runner.invoke(cli, [*base, "--markdown"])
    assert markdown.exit_code == 3 and markdown.output.startswith("## nandoctor: ❌ FAIL HASH MISMATCH\n")
    assert "### Problems (exit 3)" in markdown.output
    html = tmp_path / "r.html"
    assert runner.invoke(cli, [*base, "--html", str(html), "-q"]).exit_code == 3
    assert "✗ FAIL HASH MISMATCH" in html.read_text() and "UNREADABLE" not in html.read_text()


def test_verify_hashes_that_verifies_nothing_fails_and_says_how_to_get_hashes(tmp_path: Path) -> None:
    """No file with a recorded sha256: exit 3, NOTHING VERIFIED, and how to record hashes, in every output;
    some files without one: a pass that counts them."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    save_file(_weights(), folder / "model.safetensors")
    runner = CliRunner()
    base = ["scan", str(folder), "--verify-hashes", "--no-progress"]
    rich = runner.invoke(cli, base)
    assert rich.exit_code == 3
    assert "✗ FAIL NOTHING VERIFIED: 4 tensors read; --verify-hashes verified nothing: no weight file has a recorded sha256" \
        in rich.output
    assert "nandoctor manifest" in rich.output and "Hugging Face cache" in rich.output
    quiet = runner.invoke(cli, [*base, "-q"])
    assert quiet.exit_code == 3 and quiet.output.count("\n") == 1
    assert quiet.output.startswith(f"FAIL NOTHING VERIFIED {folder}: 4 tensors read; --verify-hashes verified nothing")
    assert "`nandoctor manifest PATH > manifest.json`" in quiet.output and "Hugging Face cache" in quiet.output
    data = json.loads(runner.invoke(cli, [*base, "--json"]).output)
    assert data["summary"]["verdict"] == "NOTHING VERIFIED" and data["gate"]["exit_code"] == 3
    (error,) = data["errors"]
    assert error["kind"] == "unverified" and "nandoctor manifest" in error["hint"]
    assert data["hashes"]["verified"] == [] and data["hashes"]["unverified"] == [str(folder / "model.safetensors")]
    markdown = runner.invoke(cli, [*base, "--markdown"]).output
    assert markdown.startswith("## nandoctor: ❌ FAIL NOTHING VERIFIED\n") and "nandoctor manifest" in markdown

    # two files, one recorded: verified, the other counted as not verified (a note too), exit 0
    save_file(_weights(1), folder / "extra.safetensors")
    manifest = nandoctor.manifest(folder)
    manifest["files"] = [f for f in manifest["files"] if f["path"] == "model.safetensors"]
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    partly = runner.invoke(cli, ["scan", str(folder), "--manifest", str(tmp_path / "m.json"), "--no-progress", "-q"])
    assert partly.exit_code == 0
    assert partly.output.endswith("hashes: 1 of 2 weight files match their recorded sha256 (1 not verified: no sha256 recorded)\n")


def test_manifest_implies_verify_hashes(tmp_path: Path) -> None:
    """`--manifest` alone verifies (docs/cli.md): a changed file fails without --verify-hashes."""
    save_file(_weights(), tmp_path / "model.safetensors")
    (tmp_path / "m.json").write_text(json.dumps(nandoctor.manifest(tmp_path / "model.safetensors")))
    _poke(tmp_path / "model.safetensors", "model.layers.0.mlp.weight")
    result = CliRunner().invoke(cli, ["scan", str(tmp_path / "model.safetensors"), "--manifest", str(tmp_path / "m.json"), "-q"])
    assert result.exit_code == 3 and result.output.startswith("FAIL HASH MISMATCH ")


def test_manifest_records_the_files_that_decide_how_the_weights_load(tmp_path: Path) -> None:
    """A GPT-2 saved by save_pretrained (two shards, their index, config.json, generation_config.json, a
    tokenizer): the manifest records those files' sha256 too, so a config.json edited since
    (layer_norm_epsilon 1e-5 → 1.0: every forward pass changes, every weight byte the same) fails the check,
    naming the file; as do a tokenizer file changed, the index lost and a file added. A manifest written before
    (no ``load_files``) still verifies the weights and says what it did not verify."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    folder = tmp_path / "gpt2"
    config = transformers.GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder, max_shard_size="20KB")
    vocab = {f"t{i}": i for i in range(31)} | {"[UNK]": 31}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(folder)
    assert (folder / "model.safetensors.index.json").is_file() and (folder / "tokenizer.json").is_file()
    data = nandoctor.manifest(folder)
    recorded = {e["path"] for e in data["load_files"]}
    assert {"config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
            "tokenizer_config.json"} <= recorded
    assert data["load_files"][0]["sha256"] == hashlib.sha256((folder / data["load_files"][0]["path"]).read_bytes()).hexdigest()
    (tmp_path / "m.json").write_text(json.dumps(data))
    old = {k: v for k, v in data.items() if k != "load_files"}  # as the earlier version wrote it
    (tmp_path / "old.json").write_text(json.dumps(old))
    runner = CliRunner()

    def scan(manifest: str, *more: str):
        return runner.invoke(cli, ["scan", str(folder), "--manifest", str(tmp_path / manifest), "--no-progress", *more])

    ok = scan("m.json")
    assert ok.exit_code == 0, ok.output
    assert f"and the {len(recorded)} config/index/tokenizer file(s) the manifest records" in " ".join(ok.output.split())

    saved = (folder / "config.json").read_text()
    edited = json.loads(saved)
    edited["layer_norm_epsilon"] = 1.0
    (folder / "config.json").write_text(json.dumps(edited))
    bad = scan("m.json")
    out = " ".join(bad.output.split())
    assert bad.exit_code == 3 and "HASH MISMATCH" in out, out
    assert f"{folder / 'config.json'}: changed since the manifest {tmp_path / 'm.json'} was recorded" in out
    assert "restore it from the good copy the manifest was recorded from" in out
    assert f"hashes: all {len(data['files'])} weight files match their recorded sha256" in out  # (no weight file fails)
    found = json.loads(scan("m.json", "--json").output)
    assert [e["path"] for e in found["errors"]] == [str(folder / "config.json")]
    assert found["errors"][0]["kind"] == "hash" and found["hashes"]["load_files"]["failed"] == ["config.json"]

    # the earlier manifest: the weights verified and said so, config.json said not to be (never silently passed)
    earlier = scan("old.json")
    out = " ".join(earlier.output.split())
    assert earlier.exit_code == 0 and "all 2 weight files match their recorded sha256" in out, out
    assert f"the manifest {tmp_path / 'old.json'} records the weight files only" in out and "config.json" in out
    (folder / "config.json").write_text(saved)

    tokenizer = (folder / "tokenizer.json").read_text()
    (folder / "tokenizer.json").write_text(tokenizer.replace('"t1"', '"x1"'))
    assert "tokenizer.json: changed since the manifest" in " ".join(scan("m.json").output.split())
    (folder / "tokenizer.json").write_text(tokenizer)
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    added = " ".join(scan("m.json").output.split())
    assert "chat_template.jinja: not in the manifest" in added and "added since it was recorded" in added
    (folder / "chat_template.jinja").unlink()
    # (the code trust_remote_code runs: an adversarial round edited modeling_my.py to make the logits NaN and the
    # manifest still verified)
    (folder / "modeling_my.py").write_text("SCALE = 1.0\n")
    coded = nandoctor.manifest(folder)
    assert "modeling_my.py" in {e["path"] for e in coded["load_files"]}
    (tmp_path / "coded.json").write_text(json.dumps(coded))
    (folder / "modeling_my.py").write_text("SCALE = float('nan')\n")
    edited_code = " ".join(scan("coded.json").output.split())
    assert "modeling_my.py: changed since the manifest" in edited_code, edited_code
    (folder / "modeling_my.py").unlink()
    (folder / "generation_config.json").unlink()
    lost = scan("m.json")
    assert lost.exit_code == 3 and "generation_config.json: listed in the manifest" in " ".join(lost.output.split())
