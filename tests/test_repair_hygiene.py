"""What a repair copies and what it matches by name (issue 14 item 8, issue 13 item 2): links leading
out of the source are kept as links, never read and copied, copies never keep setuid/setgid/sticky bits, the source's stale
``nandoctor.json`` verdict is not carried, and names made unique by a ``#n`` suffix are never matched."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from nandoctor.errors import UnrestorableError
from nandoctor.restore import repair

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

NAN = float("nan")


def pair(tmp_path: Path) -> tuple[Path, Path]:
    """A bad target folder and a clean donor folder (safetensors)."""
    clean = {"w": torch.arange(6, dtype=torch.float32), "b": torch.ones(2)}
    bad = {"w": clean["w"].clone(), "b": clean["b"].clone()}
    bad["w"][4] = NAN
    for name, tensors in (("target", bad), ("donor", clean)):
        (tmp_path / name).mkdir()
        safetensors_torch.save_file(tensors, tmp_path / name / "model.safetensors")
        (tmp_path / name / "config.json").write_text("{}")
    return tmp_path / "target", tmp_path / "donor"


def test_links_leading_outside_the_source_are_kept_as_links_never_copied(tmp_path: Path) -> None:
    """A link out of the checkpoint is never read and copied (vocab.txt → a private key puts no key in the output);
    it is kept as a link to the same file: left out, a config.json shared between runs (config.json →
    ../shared/config.json, a trial) made a "REPAIRED" folder that from_pretrained could not load."""
    target, donor = pair(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("a private key")
    (target / "docs").mkdir()
    (target / "docs" / "card.md").write_text("model card")
    os.symlink(secret, target / "vocab.txt")  # absolute link out
    os.symlink("../../secret.txt", target / "docs" / "notes.md")  # relative link out, from a subfolder
    os.symlink("docs/card.md", target / "README.md")  # a link that stays inside: carried
    result = repair(target, [donor], tmp_path / "fixed")
    assert result.ok
    out = tmp_path / "fixed"
    for rel in ("vocab.txt", "docs/notes.md"):
        assert (out / rel).is_symlink() and os.readlink(out / rel) == str(secret)
    assert (out / "README.md").read_text() == "model card" and not (out / "README.md").is_symlink()
    assert "README.md" in result.carried and "vocab.txt" not in result.carried
    assert any("2 file(s) are links out of the checkpoint folder: kept as links" in n and "cp -L" in n
               for n in result.notes), result.notes
    copies = [p for p in out.rglob("*") if p.is_file() and not p.is_symlink()]
    assert "a private key" not in "".join(p.read_text(errors="replace") for p in copies)
    proof = json.loads((out / "nandoctor-repair.json").read_text())
    assert proof["notes"] == list(result.notes)  # (a script reading --json or the proof learns it too)


def test_a_config_shared_by_link_leaves_the_repair_loadable(tmp_path: Path) -> None:
    """The trial: config.json and generation_config.json links to ../shared/ were dropped, and the "REPAIRED" folder
    failed from_pretrained ("Unrecognized model"); the source loads, so must the repair."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=2, vocab_size=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    for name in ("target", "donor"):
        model.save_pretrained(tmp_path / name)
    shared = tmp_path / "shared"
    shared.mkdir()
    for name in ("config.json", "generation_config.json"):
        os.replace(tmp_path / "target" / name, shared / name)
        os.symlink(f"../shared/{name}", tmp_path / "target" / name)
    weights = safetensors_torch.load_file(tmp_path / "target" / "model.safetensors")
    weights["model.layers.0.mlp.up_proj.weight"][0, 0] = NAN
    safetensors_torch.save_file(weights, tmp_path / "target" / "model.safetensors", metadata={"format": "pt"})
    result = repair(tmp_path / "target", [tmp_path / "donor"], tmp_path / "fixed")
    assert result.ok
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "fixed")
    assert all(torch.isfinite(p).all() for p in loaded.parameters())


def test_a_link_farm_keeps_its_links_out(tmp_path: Path) -> None:
    """Every file a link out of the checkpoint, its weights included (``cp -rs``, git-annex, DVC): the config and
    the other files are kept as links to the same files (the output lacked config.json and would not load,
    "Unrecognized model"), never read and copied: a crafted farm's tokenizer.model → a private key puts no key in
    the output (a review found it copied)."""
    target, donor = pair(tmp_path)
    (target / "tokenizer.json").write_text('{"added_tokens": [], "model": {"type": "WordLevel", "vocab": {}, "unk_token": "u"}}')
    secret = tmp_path / "home" / ".ssh" / "id_rsa"
    secret.parent.mkdir(parents=True)
    secret.write_text("a private key")
    farm = tmp_path / "farm"
    farm.mkdir()
    for file in target.iterdir():
        os.symlink(file, farm / file.name)
    os.symlink(secret, farm / "tokenizer.model")
    result = repair(farm, [donor], tmp_path / "fixed")
    assert result.ok
    out = tmp_path / "fixed"
    for name in ("config.json", "tokenizer.json"):
        assert (out / name).is_symlink() and (out / name).read_bytes() == (target / name).read_bytes()
    assert (out / "tokenizer.model").is_symlink() and os.readlink(out / "tokenizer.model") == str(secret)
    assert not (out / "model.safetensors").is_symlink()  # (the weights: copied and patched)
    copies = [p for p in out.rglob("*") if p.is_file() and not p.is_symlink()]
    assert "a private key" not in "".join(p.read_text(errors="replace") for p in copies)
    assert any("link farm" in n and "kept as links" in n and "breaks if" in n for n in result.notes)
    # the farm's store removed: the repaired folder's config is a link to nothing, and from_pretrained fails on it
    (target / "config.json").unlink()
    from nandoctor.api import scan

    report = scan(out)
    assert report.exit_code == 3 and any(p.kind == "unloadable" and "broken symlink" in p.message and
                                         p.path.endswith("config.json") for p in report.errors), report.errors


def test_copies_never_keep_setuid_setgid_or_sticky_bits(tmp_path: Path) -> None:
    target, donor = pair(tmp_path)
    script = target / "run.sh"
    script.write_text("#!/bin/sh\n")
    os.chmod(script, 0o7755)
    os.chmod(target / "model.safetensors", 0o2644)
    os.chmod(target / "config.json", 0o1444)
    assert os.stat(script).st_mode & 0o7000 == 0o7000  # the source really has them
    assert repair(target, [donor], tmp_path / "fixed").ok
    modes = {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in (tmp_path / "fixed").iterdir()}
    assert modes["run.sh"] == 0o755 and modes["model.safetensors"] == 0o644 and modes["config.json"] == 0o644
    assert all(m & 0o7000 == 0 for m in modes.values())


def test_the_sources_gate_verdict_is_not_carried_into_the_repair(tmp_path: Path) -> None:
    target, donor = pair(tmp_path)
    (target / "nandoctor.json").write_text(json.dumps({"summary": {"verdict": "NON-FINITE", "ok": False}}))
    (target / "sub").mkdir()
    (target / "sub" / "nandoctor.json").write_text("{}")  # not the gate file: only the folder's own is
    result = repair(target, [donor], tmp_path / "fixed")
    assert result.ok and not (tmp_path / "fixed" / "nandoctor.json").exists()
    assert (tmp_path / "fixed" / "sub" / "nandoctor.json").exists()
    assert any(n.startswith("nandoctor.json: the scan verdict of the unrepaired source") for n in result.notes)
    assert (target / "nandoctor.json").exists()  # the source is untouched


def colliding(bad_key: str | None) -> dict:
    """``{"a.b": x, "a": {"b": y}}``: both flatten to ``a.b``; the reader names the second ``a.b#2``."""
    x, y = torch.zeros(3), torch.ones(3)
    if bad_key == "a.b":
        x[0] = NAN
    elif bad_key == "a.b#2":
        y[1] = NAN
    return {"a.b": x, "a": {"b": y}, "c": torch.full((2,), 2.0)}


@pytest.mark.parametrize("bad_key", ["a.b", "a.b#2"])
def test_a_name_made_unique_by_a_suffix_in_the_target_is_never_matched(tmp_path: Path, bad_key: str) -> None:
    torch.save(colliding(bad_key), tmp_path / "target.bin")
    torch.save(colliding(None), tmp_path / "donor.bin")
    with pytest.raises(UnrestorableError) as caught:
        repair(tmp_path / "target.bin", [tmp_path / "donor.bin"], tmp_path / "fixed")
    (unrestorable,) = caught.value.plan.unrestorable
    assert unrestorable.name == bad_key
    assert "names two tensors of the target (made unique by a #n suffix)" in unrestorable.reasons[0]
    assert not (tmp_path / "fixed").exists()


def test_a_name_made_unique_by_a_suffix_in_the_donor_is_never_matched(tmp_path: Path) -> None:
    target = {"a.b": torch.zeros(3), "c": torch.full((2,), 2.0)}
    target["a.b"][2] = NAN
    torch.save(target, tmp_path / "target.bin")
    torch.save(colliding(None), tmp_path / "donor.bin")  # which of its two tensors is "a.b" is not the model's
    with pytest.raises(UnrestorableError) as caught:
        repair(tmp_path / "target.bin", [tmp_path / "donor.bin"], tmp_path / "fixed")
    assert "names two tensors there (made unique by a #n suffix)" in caught.value.plan.unrestorable[0].reasons[0]
    # A plain donor works: the refusal is about the name, not the tensor.
    torch.save({"a.b": torch.zeros(3), "c": torch.full((2,), 2.0)}, tmp_path / "plain.bin")
    result = repair(tmp_path / "target.bin", [tmp_path / "donor.bin", tmp_path / "plain.bin"], tmp_path / "fixed")
    assert result.ok
    assert torch.equal(torch.load(tmp_path / "fixed" / "target.bin", weights_only=True)["a.b"], torch.zeros(3))


def test_a_donor_holding_few_of_the_targets_names_is_named_even_when_it_restores_all(tmp_path: Path) -> None:
    """docs/repair.md: a donor that lacks most of the target's names is named in a note (a trial's donor of 1 of 48
    names, which restored the one bad tensor, got none: the note came only with a tensor left unrestored)."""
    tensors = {f"layer{i}.weight": torch.full((4,), float(i + 1)) for i in range(6)}
    bad = {k: v.clone() for k, v in tensors.items()}
    bad["layer0.weight"][1] = NAN
    safetensors_torch.save_file(bad, tmp_path / "target.safetensors")
    safetensors_torch.save_file({"layer0.weight": tensors["layer0.weight"]}, tmp_path / "donor.safetensors")
    result = repair(tmp_path / "target.safetensors", [tmp_path / "donor.safetensors"], tmp_path / "fixed")
    assert result.ok
    assert any("has 1 of the target's 6 weight names" in n for n in result.plan.notes), result.plan.notes


def test_empty_folders_of_the_source_are_carried_over(tmp_path: Path) -> None:
    """A tester's: empty folders (a run's logs/ before its first event) vanished from the output, with no note, where
    every other thing left out is named; a repair loses nothing of the source. The repair stays verified in place."""
    from nandoctor.hints import verified_repair

    target, donor = pair(tmp_path)
    for folder in ("emptydir", "logs/empty", "runs/a/b"):
        (target / folder).mkdir(parents=True)
    (target / "logs" / "events.txt").write_text("x")
    result = repair(target, [donor], tmp_path / "fixed")
    assert result.ok
    folders = sorted(str(p.relative_to(tmp_path / "fixed")) for p in (tmp_path / "fixed").rglob("*") if p.is_dir())
    assert folders == ["emptydir", "logs", "logs/empty", "runs", "runs/a", "runs/a/b"]
    assert verified_repair(tmp_path / "fixed", target)
