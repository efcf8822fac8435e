"""Repair judged within the target's run, on real tiny transformers runs (``save_pretrained`` per step).

A tester found (trial D): a donor whose tensor grew 10^4x since the run's first healthy checkpoint (which
`scan` calls DIVERGED) was taken, and the output called CLEAN though `scan` then called it DIVERGED;
``--allow-diverged`` on a checkpoint diverged by growth alone wrote an "ALREADY CLEAN" copy of it; and a
tied ``lm_head.weight`` stored beside ``model.embed_tokens.weight`` had "no good donor" (earlier
checkpoints drop the tied copy), although the scan's next step suggested ``repair --from auto``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import nandoctor  # noqa: E402
from nandoctor.errors import RepairFailedError, RepairRefusedError, UnrestorableError  # noqa: E402
from tests.conftest import run_cli  # noqa: E402

GROWN = "model.layers.1.mlp.up_proj.weight"  # 64x32
OTHER = "model.layers.0.self_attn.q_proj.weight"


def _run(folder: Path, *, tie: bool = False, steps: tuple[int, ...] = (2, 4, 6)) -> Path:
    """checkpoint-2, -4, -6 of a tiny Llama, each a real ``save_pretrained`` after a small training-like drift."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=128, tie_word_embeddings=tie)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    for step in steps:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 1e-3)
        model.save_pretrained(folder / f"checkpoint-{step}")
    return folder


def _edit(checkpoint: Path, change) -> None:
    """Rewrite a checkpoint's model.safetensors with ``change`` applied to its tensors (metadata kept)."""
    path = checkpoint / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata=metadata)


def _scale(name: str, factor: float = 1e4):
    def change(tensors):
        tensors[name] = tensors[name] * factor  # uniform: no outlier, below the 1e5 ceiling

    return change


def _nan(name: str, index: int = 5):
    def change(tensors):
        tensors[name].view(-1)[index] = float("nan")

    return change


def _tensor(checkpoint: Path, name: str) -> torch.Tensor:
    return load_file(str(checkpoint / "model.safetensors"))[name]


def test_a_donor_tensor_grown_past_the_runs_first_healthy_checkpoint_is_refused(tmp_path):
    run = _run(tmp_path / "run")
    _edit(run / "checkpoint-4", _scale(GROWN))
    _edit(run / "checkpoint-6", _nan(GROWN))
    grown_max = float(_tensor(run / "checkpoint-4", GROWN).abs().max())
    assert 100 < grown_max < 1e5  # finite, under the ceiling: only the run says it grew
    scanned = run_cli("scan", run / "checkpoint-4", "--quiet")
    assert scanned.exit_code == 1 and scanned.output.startswith("FAIL DIVERGED") and GROWN in scanned.output

    out = tmp_path / "fixed"
    refused = run_cli("repair", run / "checkpoint-6", "--from", run / "checkpoint-4", "--out", out, "--no-progress")
    assert refused.exit_code == 3, refused.output
    assert "REPAIRED" not in refused.output and "CLEAN" not in refused.output and not out.exists()
    plan = json.loads(run_cli("repair", run / "checkpoint-6", "--from", run / "checkpoint-4", "--dry-run",
                              "--json").stdout)
    assert plan["complete"] is False and plan["restore"] == []
    (unrestorable,) = plan["unrestorable"]
    assert unrestorable["tensor"] == GROWN and unrestorable["nan"] == 1
    (reason,) = unrestorable["reasons"]
    assert reason.startswith(f"{run / 'checkpoint-4'} (step 4): diverged itself: the bulk of {GROWN} grew ")
    assert reason.endswith(f"since the run's first healthy checkpoint {run / 'checkpoint-2'}")

    # the next donor in order is healthy: taken, and the output passes `scan` in the target's place
    done = run_cli("repair", run / "checkpoint-6", "--from", run / "checkpoint-4", "--from", run / "checkpoint-2",
                   "--out", out, "--no-progress")
    assert done.exit_code == 0, done.output
    proof = json.loads((out / "nandoctor-repair.json").read_text())
    assert [(r["tensor"], r["donor_step"]) for r in proof["restored"]] == [(GROWN, 2)]
    assert torch.equal(_tensor(out, GROWN), _tensor(run / "checkpoint-2", GROWN))
    shutil.rmtree(run / "checkpoint-6")
    shutil.move(str(out), str(run / "checkpoint-6"))
    assert run_cli("scan", run / "checkpoint-6", "--quiet").exit_code == 0


def test_the_verification_judges_the_output_within_the_targets_run(tmp_path, monkeypatch):
    """Without the donor check, the grown tensor is written, and the verification scan, judged as `scan` judges
    the output in the target's place, fails the repair: never CLEAN for what `scan` calls DIVERGED."""
    from nandoctor.restore.donors import CheckpointDonor

    run = _run(tmp_path / "run")
    _edit(run / "checkpoint-4", _scale(GROWN))
    _edit(run / "checkpoint-6", _nan(GROWN))
    # no growth known: the donor passes (raising=False: also where donors measured none)
    monkeypatch.setattr(CheckpointDonor, "scale", lambda self, ref: None, raising=False)
    with pytest.raises(RepairFailedError, match="verification scan: it would be diverged in place: the bulk of "
                                                f"{GROWN} grew"):
        nandoctor.repair(str(run / "checkpoint-6"), [str(run / "checkpoint-4")], str(tmp_path / "fixed"))
    assert not (tmp_path / "fixed").exists()


def test_allow_diverged_on_a_checkpoint_diverged_by_growth_alone_restores_nothing_and_fails(tmp_path):
    run = _run(tmp_path / "run")
    _edit(run / "checkpoint-6", _scale(GROWN))
    target = run / "checkpoint-6"
    assert run_cli("scan", target, "--quiet").exit_code == 1

    refused = run_cli("repair", target, "--from", "auto", "--out", tmp_path / "r1", "--no-progress")
    assert refused.exit_code == 3 and "diverged: the bulk of" in refused.output
    assert "--allow-diverged" not in refused.output  # the hint promises no repair that cannot be
    assert "cannot be repaired by tensor" in refused.output and "resume training from the last healthy" in refused.output

    anyway = run_cli("repair", target, "--from", "auto", "--allow-diverged", "--out", tmp_path / "r2", "--no-progress")
    assert anyway.exit_code == 3, anyway.output
    assert "ALREADY CLEAN" not in anyway.output and not (tmp_path / "r2").exists()
    assert "nothing to restore" in anyway.output and "cannot be repaired by tensor" in anyway.output
    assert "resume training from the last healthy checkpoint" in anyway.output
    dry = run_cli("repair", target, "--from", "auto", "--allow-diverged", "--dry-run", "--json")
    assert dry.exit_code == 3 and json.loads(dry.stdout)["errors"][0]["kind"] == "refused"

    # a NaN elsewhere too: restoring it would leave the growth, so it is refused as well
    _edit(target, _nan(OTHER))
    mixed = run_cli("repair", target, "--from", "auto", "--allow-diverged", "--out", tmp_path / "r3", "--no-progress")
    assert mixed.exit_code == 3 and "restoring its 1 bad tensor(s) would leave it diverged" in mixed.output
    assert not (tmp_path / "r3").exists()


def test_a_refusal_of_nan_throughout_and_growth_names_both_in_order(tmp_path):
    """A trial (SGD at lr 0.5, a spike): most weights NaN and a finite lm_head grown 0.097 to 256. The refusal read
    "32 of 39 weight tensors are NaN/Inf …; growth is no bad tensor …", contradicting itself, and named the grown
    tensor only with --allow-diverged. Now: the NaN share, then the growth with its tensor and factor, then why a
    repair by tensor cannot undo it, offering no --allow-diverged that would refuse too."""
    run = _run(tmp_path / "run")
    target = run / "checkpoint-6"

    def nan_most_and_grow(tensors):
        for name in [n for n in tensors if n.endswith("proj.weight") and n != GROWN]:
            tensors[name] = torch.full_like(tensors[name], float("nan"))
        tensors[GROWN] = tensors[GROWN] * 1e4

    _edit(target, nan_most_and_grow)
    refused = run_cli("repair", target, "--from", "auto", "--out", tmp_path / "r1", "--no-progress")
    said = " ".join(refused.output.split())
    assert refused.exit_code == 3 and not (tmp_path / "r1").exists(), said
    share = said.index("weight tensors are NaN/Inf")
    grew = said.index(f"and the bulk of {GROWN} grew ")
    assert share < grew < said.index("would leave it diverged") < said.index("cannot be repaired by tensor"), said
    assert f"since the run's first healthy checkpoint {run / 'checkpoint-2'}" in said, said
    assert "NaN/Inf; growth is no bad tensor" not in said and "--allow-diverged" not in said, said
    assert "resume training from the last healthy checkpoint" in said, said


def _generates(folder: Path) -> torch.nn.Module:
    """The oracle: transformers loads the folder, its lm_head is its embeddings, and sampling runs."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder))
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied again
    torch.manual_seed(0)
    out = model.generate(torch.tensor([[1, 2, 3]]), do_sample=True, max_new_tokens=4, pad_token_id=0)
    assert out.shape == (1, 7)
    return model


def _tied_copy_with_nan(run: Path, step: int = 6) -> Path:
    """The tester's tiex checkpoint: the tied lm_head.weight stored beside the embeddings, one NaN in it."""
    def change(tensors):
        assert "lm_head.weight" not in tensors  # save_pretrained dropped the tied copy
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
        tensors["lm_head.weight"].view(-1)[5] = float("nan")

    _edit(run / f"checkpoint-{step}", change)
    return run / f"checkpoint-{step}"


def test_a_tied_lm_head_stored_with_a_nan_is_restored_from_its_partner(tmp_path):
    run = _run(tmp_path / "run", tie=True)
    target = _tied_copy_with_nan(run)
    with safe_open(str(run / "checkpoint-4" / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()  # no donor holds it by name
    report = nandoctor.scan(str(target))
    assert report.exit_code == 1 and report.extra["run"]["auto"] is True  # the scan's next step: --from auto

    out = tmp_path / "fixed"
    done = run_cli("repair", target, "--from", "auto", "--out", out, "--no-progress")
    assert done.exit_code == 0, done.output
    assert "lm_head.weight is tied to model.embed_tokens.weight" in done.output
    proof = json.loads((out / "nandoctor-repair.json").read_text())
    (restored,) = proof["restored"]
    assert (restored["tensor"], restored["donor_tensor"], restored["nan"]) == ("lm_head.weight",
                                                                                "model.embed_tokens.weight", 1)
    assert restored["donor"] == str(target) and proof["donors"][-1] == {"path": str(target), "step": None, "own": True}
    weights = load_file(str(out / "model.safetensors"))
    source = load_file(str(target / "model.safetensors"))
    assert torch.equal(weights["lm_head.weight"], source["model.embed_tokens.weight"])
    assert all(torch.equal(weights[k], source[k]) for k in source if k != "lm_head.weight")
    assert run_cli("scan", out, "--quiet").exit_code == 0
    _generates(out)


def test_a_bad_embedding_beside_its_healthy_tied_copy_is_restored_from_that_copy(tmp_path):
    """The reverse of the case above (a trial): the embedding held the NaN, the stored lm_head copy was healthy. It
    was restored from an older donor, the two then differed, and transformers loaded them untied (the newer head,
    the older embedding). The copy holds this step's very values: the embedding is restored from it."""
    run = _run(tmp_path / "run", tie=True)

    def change(tensors):
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
        tensors["model.embed_tokens.weight"].view(-1)[7] = float("nan")

    _edit(run / "checkpoint-6", change)
    target, out = run / "checkpoint-6", tmp_path / "fixed"
    done = run_cli("repair", target, "--from", "auto", "--out", out, "--no-progress")
    assert done.exit_code == 0, done.output
    (restored,) = json.loads((out / "nandoctor-repair.json").read_text())["restored"]
    assert (restored["tensor"], restored["donor_tensor"], restored["donor"]) == (
        "model.embed_tokens.weight", "lm_head.weight", str(target))
    weights, source = load_file(str(out / "model.safetensors")), load_file(str(target / "model.safetensors"))
    assert torch.equal(weights["model.embed_tokens.weight"], source["lm_head.weight"])
    assert all(torch.equal(weights[k], source[k]) for k in source if k != "model.embed_tokens.weight")
    assert torch.equal(_generates(out).lm_head.weight, source["lm_head.weight"])


def test_a_tied_pair_both_bad_takes_one_donor_tensor_for_both(tmp_path):
    run = _run(tmp_path / "run", tie=True)
    target = _tied_copy_with_nan(run)
    _edit(target, _nan("model.embed_tokens.weight", 9))
    out = tmp_path / "fixed"
    done = run_cli("repair", target, "--from", "auto", "--out", out, "--no-progress")
    assert done.exit_code == 0, done.output
    proof = json.loads((out / "nandoctor-repair.json").read_text())
    assert sorted((r["tensor"], r["donor_tensor"], r["donor_step"]) for r in proof["restored"]) == [
        ("lm_head.weight", "model.embed_tokens.weight", 4), ("model.embed_tokens.weight", "model.embed_tokens.weight", 4)]
    weights = load_file(str(out / "model.safetensors"))
    donor = _tensor(run / "checkpoint-4", "model.embed_tokens.weight")
    assert torch.equal(weights["lm_head.weight"], donor) and torch.equal(weights["model.embed_tokens.weight"], donor)
    _generates(out)


def _zero(name: str):
    def change(tensors):
        tensors[name] = torch.zeros_like(tensors[name])  # a broken copy: training never zeroes a whole weight

    return change


def test_a_zeroed_weight_is_restored_from_a_donor_and_the_rest_stays_byte_identical(tmp_path):
    """A weight all zero since the run's earlier checkpoint (the scan's ``zeroed`` warning) is restored from
    the newest donor whose copy is not all zero; every other tensor keeps its bytes."""
    run = _run(tmp_path / "run")
    _edit(run / "checkpoint-6", _zero(OTHER))
    scanned = nandoctor.scan(run / "checkpoint-6")
    assert [t.name for t in scanned.tensors if "zeroed" in t.findings] == [OTHER]
    out = tmp_path / "fixed"
    result = nandoctor.repair(run / "checkpoint-6", "auto", out)
    assert result.ok and [(r.name, r.findings) for r in result.plan.restorations] == [(OTHER, ("zeroed",))]
    repaired, source = load_file(str(out / "model.safetensors")), load_file(str(run / "checkpoint-6" / "model.safetensors"))
    assert torch.equal(repaired[OTHER], load_file(str(run / "checkpoint-4" / "model.safetensors"))[OTHER])
    assert all(torch.equal(repaired[n], source[n]) for n in source if n != OTHER)
    assert not any("zeroed" in t.findings for t in nandoctor.scan(out).tensors)


def test_a_zeroed_weight_without_a_donor_copy_refuses_the_repair(tmp_path):
    """Every donor's copy all zero too: the zeroed tensor has no good donor, as a NaN one without one has, and the
    repair is refused (nothing written): a copy left with it would fail the gate (a review: a "REPAIRED" copy whose
    zeroed weight still broke the model). A donor that holds it restores both."""
    run = _run(tmp_path / "run")
    pristine = load_file(str(run / "checkpoint-2" / "model.safetensors"))
    for step in (2, 4, 6):
        _edit(run / f"checkpoint-{step}", _zero(OTHER))

    def poison(tensors):
        tensors[GROWN][3, 5] = float("nan")

    _edit(run / "checkpoint-6", poison)
    # (every checkpoint holding it zeroed, none is healthy: --from auto has no donor, and says where the run broke)
    with pytest.raises(RepairRefusedError, match="found no healthy checkpoint before step 6.*the first bad one is checkpoint-2"):
        nandoctor.repair(run / "checkpoint-6", "auto", tmp_path / "fixed")
    with pytest.raises(UnrestorableError, match=f"have no good donor: '{OTHER}'"):  # (a donor all zero there too)
        nandoctor.repair(run / "checkpoint-6", [run / "checkpoint-4"], tmp_path / "fixed")
    assert not (tmp_path / "fixed").exists()
    source = tmp_path / "source"
    source.mkdir()
    save_file(pristine, str(source / "model.safetensors"), metadata={"format": "pt"})
    result = nandoctor.repair(run / "checkpoint-6", [source], tmp_path / "fixed")
    assert result.ok and sorted(r.name for r in result.plan.restorations) == sorted([GROWN, OTHER])
    assert torch.equal(load_file(str(tmp_path / "fixed" / "model.safetensors"))[OTHER], pristine[OTHER])


def test_a_clean_first_checkpoint_repaired_from_auto_is_an_unchanged_verified_copy(tmp_path):
    """Nothing to restore needs no donor: --from auto finding no earlier checkpoint was a refusal (exit 3) for a
    clean checkpoint, while any named donor gave ALREADY CLEAN (a script loading --out broke on the first save)."""
    run = _run(tmp_path / "run")
    result = run_cli("repair", str(run / "checkpoint-2"), "--from", "auto", "--out", str(tmp_path / "copy"))
    assert result.exit_code == 0 and "ALREADY CLEAN" in result.output, result.output
    assert (tmp_path / "copy" / "model.safetensors").read_bytes() == (run / "checkpoint-2" / "model.safetensors").read_bytes()
    _edit(run / "checkpoint-2", _zero(OTHER))  # a zeroed tensor without a donor: refused, as a NaN one is
    zeroed = run_cli("repair", str(run / "checkpoint-2"), "--from", "auto", "--out", str(tmp_path / "zeroed"))
    said = " ".join(zeroed.output.split())
    assert zeroed.exit_code == 3 and "have no good donor" in said and OTHER in said, said
    assert "ALREADY CLEAN" not in said and not (tmp_path / "zeroed").exists()

    def poison(tensors):
        tensors[GROWN][0, 0] = float("nan")

    _edit(run / "checkpoint-2", poison)  # a NaN tensor and no donor: a refusal, nothing written
    refused = run_cli("repair", str(run / "checkpoint-2"), "--from", "auto", "--out", str(tmp_path / "none"))
    assert refused.exit_code == 3 and not (tmp_path / "none").exists()


def test_auto_without_a_healthy_donor_says_why_each_earlier_checkpoint_is_none(tmp_path):
    """A trial: an earlier checkpoint that could not be read was left unsaid ("found no healthy checkpoint")."""
    run = shutil.copytree(Path(__file__).parent.parent / "fixtures" / "demo-run", tmp_path / "run")
    for name in ("checkpoint-100", "checkpoint-200"):
        shard = run / name / "model-00002-of-00002.safetensors"
        shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(nandoctor.NandoctorError) as raised:
        nandoctor.repair(run / "checkpoint-300", "auto", tmp_path / "fixed")
    message = str(raised.value)
    assert "checkpoint-100 is unreadable" in message and "checkpoint-200 is unreadable" in message
    assert "runs past the end" in message and "make the unreadable checkpoint readable" in raised.value.hint
    assert not (tmp_path / "fixed").exists()


@pytest.mark.parametrize("donors", [["auto"], ["checkpoint-4", "checkpoint-2"]], ids=["auto", "given"])
def test_a_nan_weight_is_never_restored_from_an_all_zero_copy(tmp_path, donors):
    """A trial: checkpoint-4's copy of a weight was all zero (a broken copy), checkpoint-6's held a NaN; the repair
    restored the zeros ("REPAIRED", exit 0, a dead MLP), though checkpoint-2 held a good copy. The zero copy is
    refused like a NaN one, and the next donor's is taken."""
    run = _run(tmp_path / "run")
    _edit(run / "checkpoint-4", _zero(OTHER))
    _edit(run / "checkpoint-6", _nan(OTHER))
    args = [a if a == "auto" else str(run / a) for a in donors]
    done = run_cli("repair", str(run / "checkpoint-6"), *[x for a in args for x in ("--from", a)],
                   "--out", str(tmp_path / "fixed"))
    assert done.exit_code == 0, done.output
    restored = _tensor(tmp_path / "fixed", OTHER)
    assert torch.equal(restored, _tensor(run / "checkpoint-2", OTHER)) and torch.count_nonzero(restored) > 0
    proof = json.loads((tmp_path / "fixed" / "nandoctor-repair.json").read_text())
    assert [Path(r["donor"]).name for r in proof["restored"]] == ["checkpoint-2"]


def test_a_donor_of_another_model_is_named_in_a_note(tmp_path):
    """A trial's mistyped --from: a Mistral donor for a Llama target (names, shapes and dtypes alike) was taken with no
    word. Its config.json names another model: the plan says so (the repair itself stands: the tensors fit)."""
    from transformers import MistralConfig, MistralForCausalLM

    run = _run(tmp_path / "run")
    _edit(run / "checkpoint-6", _nan(OTHER))
    config = MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           num_key_value_heads=2, vocab_size=128, tie_word_embeddings=False)
    MistralForCausalLM(config).save_pretrained(tmp_path / "mistral")
    result = nandoctor.repair(run / "checkpoint-6", [tmp_path / "mistral"], tmp_path / "fixed")
    assert result.ok
    said = [n for n in result.plan.notes if "names another model" in n]
    assert len(said) == 1 and "'mistral'" in said[0] and "'llama'" in said[0], result.plan.notes
    same = nandoctor.repair(run / "checkpoint-6", [run / "checkpoint-4"], tmp_path / "fixed2")
    assert same.ok and not [n for n in same.plan.notes if "another model" in n]


def test_a_run_folder_given_as_donor_is_refused_naming_the_checkpoint_to_give(tmp_path):
    """A trial gave the run folder as --from: the hint said "scan one of them, e.g. …/checkpoint-2" (the run's oldest).
    It names the newest checkpoint before the target, and --from auto."""
    run = _run(tmp_path / "run")
    _edit(run / "checkpoint-6", _nan(OTHER))
    refused = run_cli("repair", run / "checkpoint-6", "--from", run, "--out", tmp_path / "fixed")
    said = " ".join(refused.output.split())
    assert refused.exit_code == 3 and "is a run folder, not one checkpoint" in said, said
    assert f"--from {run / 'checkpoint-4'} is its newest before the target" in said and "--from auto" in said
    assert not (tmp_path / "fixed").exists()


def test_a_donor_from_another_run_of_the_same_model_is_named_in_a_note(tmp_path):
    """A trial's mistyped --from named another run of the same architecture (names, shapes, config alike): one NaN
    was repaired with unrelated weights, with no word. The donor's copy is compared with the target's intact values
    (an earlier checkpoint of the run agrees closely; another run's is uncorrelated)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from nandoctor.restore.likeness import UNRELATED, correlation

    run = _run(tmp_path / "run")
    _edit(run / "checkpoint-6", _nan(OTHER))
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=128, tie_word_embeddings=False)
    torch.manual_seed(1)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "other_run")
    result = nandoctor.repair(run / "checkpoint-6", [tmp_path / "other_run"], tmp_path / "fixed")
    assert result.ok
    said = [n for n in result.plan.notes if "is unlike the target's own values" in n]
    assert len(said) == 1 and said[0].startswith(f"{OTHER}: the copy from {tmp_path / 'other_run'}"), result.plan.notes
    # (a new user's trial: the note was in no proof or JSON, and the result read ✓ REPAIRED): kept, and said at the end
    proof = json.loads((tmp_path / "fixed" / "nandoctor-repair.json").read_text())
    assert proof["donor_doubts"] == said and said[0] in proof["notes"]
    console = run_cli("repair", run / "checkpoint-6", "--from", tmp_path / "other_run", "--out", tmp_path / "fixed3")
    out = " ".join(console.output.split())
    assert console.exit_code == 0 and "⚠ REPAIRED" in out and "✓ REPAIRED" not in out
    assert "but a donor may not be this model's" in out
    as_json = json.loads(run_cli("repair", run / "checkpoint-6", "--from", tmp_path / "other_run", "--out",
                                 tmp_path / "fixed4", "--json").output)
    assert as_json["donor_doubts"] == said
    same = nandoctor.repair(run / "checkpoint-6", [run / "checkpoint-2"], tmp_path / "fixed2")
    assert same.ok and not [n for n in same.plan.notes if "unlike" in n] and not same.plan.doubts
    assert json.loads((tmp_path / "fixed2" / "nandoctor-repair.json").read_text())["donor_doubts"] == []
    (restored,) = same.plan.restorations
    r = correlation(restored.target_ref.file, restored.target_ref, restored.donor_ref.file, restored.donor_ref)
    assert r is not None and r > 0.99 > UNRELATED  # (the run's own earlier copy: the same weights, drifted a little)


def test_a_weight_nan_throughout_is_never_restored_from_an_all_zero_copy(tmp_path):
    """A review: a weight NaN throughout (the usual NaN step) has no finite value to compare with, and a broken all-zero
    copy was taken for it."""
    run = _run(tmp_path / "run")
    _edit(run / "checkpoint-4", _zero(OTHER))

    def all_nan(tensors):
        tensors[OTHER] = torch.full_like(tensors[OTHER], float("nan"))

    _edit(run / "checkpoint-6", all_nan)
    result = nandoctor.repair(run / "checkpoint-6", "auto", tmp_path / "fixed")
    assert result.ok and torch.equal(_tensor(tmp_path / "fixed", OTHER), _tensor(run / "checkpoint-2", OTHER))


def test_an_outlier_in_the_target_does_not_make_its_own_run_s_donor_unlike(tmp_path):
    """A review: one value of 500 among weights of 0.02 (a bit flip's outlier, the very value a repair restores) made
    Pearson's r of the run's own earlier copy 0.00, and the note called it unlike. Ranks are compared."""
    run = _run(tmp_path / "run")

    def outlier(tensors):
        tensors[OTHER].view(-1)[7] = 500.0

    _edit(run / "checkpoint-6", outlier)
    result = nandoctor.repair(run / "checkpoint-6", [run / "checkpoint-4"], tmp_path / "fixed")
    assert result.ok and [r.name for r in result.plan.restorations] == [OTHER]
    assert not [n for n in result.plan.notes if "unlike" in n], result.plan.notes


def test_a_repair_that_restores_every_weight_from_one_donor_says_it_is_the_donor(tmp_path):
    """A helper's trial: ``--allow-diverged`` on a checkpoint NaN throughout restored every weight from checkpoint-12
    and read ✓ REPAIRED, with nothing in the proof: the result was checkpoint-12's weights under step 30's trainer
    state. It reads ⚠ REPAIRED and says so, in the console and the proof's donor_doubts; a repair of a few tensors
    does not."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from tests.conftest import DEMO_RUN, run_cli

    run = tmp_path / "run"
    for step in (100, 200):
        shutil.copytree(DEMO_RUN / f"checkpoint-{step}", run / f"checkpoint-{step}")
    shutil.copytree(DEMO_RUN / "checkpoint-200", run / "checkpoint-300")
    for shard in (run / "checkpoint-300").glob("*.safetensors"):
        tensors = load_file(str(shard))
        save_file({k: torch.full_like(v, float("nan")) for k, v in tensors.items()}, str(shard), metadata={"format": "pt"})
    done = run_cli("repair", run / "checkpoint-300", "--from", run / "checkpoint-200", "--out", tmp_path / "fixed",
                   "--no-progress", "--allow-diverged")
    text = " ".join(done.output.split())
    assert done.exit_code == 0 and "⚠ REPAIRED" in text and "✓ REPAIRED" not in text, done.output
    assert "but every weight tensor (" in text and "model under" in text and "not a repair of it" in text
    # (its next steps put the copy in place only with that said: a trial's merged LoRA "repaired" from its base)
    assert "weights almost throughout (see the doubt above): put it in place only if that is the model you want" in text
    proof = json.loads((tmp_path / "fixed" / "nandoctor-repair.json").read_text())
    assert proof["donor_doubts"] and proof["donor_doubts"][0].startswith("every weight tensor")
    few = run_cli("repair", DEMO_RUN / "checkpoint-300", "--from", DEMO_RUN / "checkpoint-200", "--out",
                  tmp_path / "few", "--no-progress")
    assert few.exit_code == 0 and "✓ REPAIRED" in few.output and "every weight tensor" not in few.output
    assert "put it in place only if" not in few.output


def test_a_repair_whose_kept_tensors_are_the_donors_already_says_the_result_is_the_donor(tmp_path):
    """A helper's trial: a model merged from a LoRA adapter (only its target modules differ from the base model) with
    NaN in those modules, repaired from the base model as the scan's hint offered ("an earlier clean checkpoint or
    the base model"): ✓ REPAIRED, no doubt, and the result was the base model whole (diff: SAME)."""
    import numpy as np

    from fixtures.builders import RawTensor, write_safetensors

    rng = np.random.default_rng(0)
    base = {f"model.layers.{i}.{part}.weight": rng.standard_normal(256).astype(np.float32) * 0.02
            for i in range(2) for part in ("self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj")}
    merged = {name: values + (0.01 if "q_proj" in name else 0.0) for name, values in base.items()}
    merged["model.layers.1.self_attn.q_proj.weight"][:64] = np.nan
    merged["model.layers.0.self_attn.q_proj.weight"][3] = np.nan
    for folder, tensors in (("base", base), ("merged", merged)):
        write_safetensors(tmp_path / folder / "model.safetensors",
                          {k: RawTensor("F32", (16, 16), v.astype(np.float32).tobytes()) for k, v in tensors.items()})
    result = run_cli("repair", str(tmp_path / "merged"), "--from", str(tmp_path / "base"), "--out", str(tmp_path / "o"))
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "⚠ REPAIRED" in said, result.output
    assert f"but the 4 weight tensor(s) it kept hold {tmp_path / 'base'}'s bytes already" in said
    proof = json.loads((tmp_path / "o" / "nandoctor-repair.json").read_text())
    assert proof["donor_doubts"] and "bytes already" in proof["donor_doubts"][0]
    # a repair from a donor whose kept tensors differ (an earlier checkpoint of the fine-tune) has no such doubt
    earlier = {name: values + (0.009 if "q_proj" in name else 0.0) + 1e-4 for name, values in base.items()}
    write_safetensors(tmp_path / "earlier" / "model.safetensors",
                      {k: RawTensor("F32", (16, 16), v.astype(np.float32).tobytes()) for k, v in earlier.items()})
    again = run_cli("repair", str(tmp_path / "merged"), "--from", str(tmp_path / "earlier"), "--out", str(tmp_path / "o2"))
    assert again.exit_code == 0 and "bytes already" not in again.output


def test_the_donor_already_doubt_sees_through_a_cast_and_spares_a_backup_copy(tmp_path):
    """An adversarial round: a bf16 model merged from an fp32 base, repaired from it with --allow-cast, read ✓
    REPAIRED and was the base cast to bf16 (the byte comparison missed the cast). A review: a backup copy of the
    target (the same tensors, one scaled by 1e30 in the target) drew the doubt, every element of the damaged tensor
    differing; it compares only the target's healthy elements now."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    rng = np.random.default_rng(1)
    base = {f"model.layers.{i}.{part}.weight": torch.from_numpy(rng.standard_normal((16, 16)).astype(np.float32) * 0.02)
            for i in range(2) for part in ("self_attn.q_proj", "mlp.up_proj")}
    tuned = "model.layers.1.self_attn.q_proj.weight"  # (the one module the adapter changed, NaN after the merge)
    merged = {k: (v + (0.01 * torch.randn(16, 16) if k == tuned else 0)).to(torch.bfloat16) for k, v in base.items()}
    merged[tuned][0, :8] = float("nan")
    for name, tensors in (("base", base), ("merged", merged)):
        (tmp_path / name).mkdir()
        save_file(tensors, str(tmp_path / name / "model.safetensors"))
    said = " ".join(run_cli("repair", str(tmp_path / "merged"), "--from", str(tmp_path / "base"), "--allow-cast",
                            "--out", str(tmp_path / "o"), "-q").output.split())
    assert said.startswith("REPAIRED") and "3 weight tensor(s) it kept hold" in said, said

    backup = {k: v.clone() for k, v in base.items()}
    damaged = {k: v.clone() for k, v in base.items()}
    damaged["model.layers.0.mlp.up_proj.weight"] *= 1e30
    for name, tensors in (("backup", backup), ("damaged", damaged)):
        (tmp_path / name).mkdir()
        save_file(tensors, str(tmp_path / name / "model.safetensors"))
    again = run_cli("repair", str(tmp_path / "damaged"), "--from", str(tmp_path / "backup"), "--out",
                    str(tmp_path / "o2"), "-q")
    assert again.exit_code == 0 and "bytes already" not in again.output, again.output


def test_a_repair_that_gives_back_the_donor_whole_says_so_where_the_restored_tensors_were_nan_throughout(tmp_path):
    """A real-training trial: a LoRA run went NaN and its merged model had every tensor the adapter changed NaN
    throughout; repaired from the base model (the only donor of its names) it read "✓ REPAIRED, verified CLEAN" with
    no word, and was the base model byte for byte: the fine-tune gone. With nothing finite left to compare, the
    restored tensors cannot tell a fine-tune from a backup copy; the repair says that the result is the donor whole."""
    import json

    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    rng = np.random.default_rng(2)
    base = {f"model.layers.{i}.{part}.weight": torch.from_numpy(rng.standard_normal((16, 16)).astype(np.float32) * 0.02)
            for i in range(4) for part in ("self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj", "mlp.down_proj")}
    merged = {k: v.clone() for k, v in base.items()}
    for i in range(3):  # (the adapter's target modules, NaN once it diverged and was merged: under a quarter)
        merged[f"model.layers.{i}.self_attn.q_proj.weight"].fill_(float("nan"))
    for name, tensors in (("base", base), ("merged", merged)):
        (tmp_path / name).mkdir()
        save_file(tensors, str(tmp_path / name / "model.safetensors"))
    result = run_cli("repair", str(tmp_path / "merged"), "--from", str(tmp_path / "base"), "--out",
                     str(tmp_path / "o"), "--no-progress")
    said = " ".join(result.output.split())
    assert "the 13 weight tensor(s) it kept hold" in said and "were NaN/Inf throughout" in said, said
    assert "that training is gone from the result" in said
    out = load_file(str(tmp_path / "o" / "model.safetensors"))
    assert all(torch.equal(out[k], base[k]) for k in base)  # the oracle: the result is the base model whole
    proof = json.loads((tmp_path / "o" / "nandoctor-repair.json").read_text())
    assert any("NaN/Inf throughout" in d for d in proof["donor_doubts"])
