"""`repair --only/--exclude` on real safetensors bytes: what the selection leaves out is neither judged nor
restored, in the target, the donors and the verification scan, and is carried over byte-identical."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import nandoctor
from tests.conftest import run_cli as run


def _tensors(poison: tuple[str, ...]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    tensors = {
        "model.layers.0.weight": rng.standard_normal((8, 8)).astype(np.float32),
        "model.layers.1.weight": rng.standard_normal((8, 8)).astype(np.float32),
        "optimizer.state.0.exp_avg": rng.standard_normal((8, 8)).astype(np.float32),
    }
    for name in poison:
        tensors[name][1, 2] = np.nan
    return tensors


@pytest.fixture
def pair(tmp_path):
    """A target with NaN in a weight and an optimizer moment; a donor whose moment holds NaN too."""
    target, donor = tmp_path / "target", tmp_path / "donor"
    target.mkdir()
    donor.mkdir()
    save_file(_tensors(("model.layers.1.weight", "optimizer.state.0.exp_avg")), str(target / "model.safetensors"))
    save_file(_tensors(("optimizer.state.0.exp_avg",)), str(donor / "model.safetensors"))
    return target, donor


def _bytes(path, name: str) -> bytes:
    with safe_open(str(path), "np") as f:
        return f.get_tensor(name).tobytes()


def test_exclude_repairs_the_rest_and_carries_the_excluded_tensor_byte_identical(pair, tmp_path):
    target, donor = pair
    out = tmp_path / "fixed"
    # without the selection the moment has no healthy donor: refused, nothing written
    refused = run("repair", target, "--from", donor, "--out", out, "--json")
    assert refused.exit_code == 3 and not out.exists()
    assert [u["tensor"] for u in json.loads(refused.stdout)["unrestorable"]] == ["optimizer.state.0.exp_avg"]

    result = run("repair", target, "--from", donor, "--exclude", "optimizer.*", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    proof = json.loads((out / "nandoctor-repair.json").read_text())
    assert proof["excluded"] == {"tensors": 1, "only": [], "exclude": ["optimizer.*"]}
    assert [r["tensor"] for r in proof["restored"]] == ["model.layers.1.weight"]
    assert proof["verification"]["tensors"] == 2 and proof["verification"]["verdict"] == "CLEAN"
    written = out / "model.safetensors"
    moment = _bytes(written, "optimizer.state.0.exp_avg")
    assert moment == _bytes(target / "model.safetensors", "optimizer.state.0.exp_avg")
    assert np.isnan(np.frombuffer(moment, np.float32)).sum() == 1  # still the target's NaN: not judged, not touched
    assert _bytes(written, "model.layers.1.weight") == _bytes(donor / "model.safetensors", "model.layers.1.weight")
    assert _bytes(written, "model.layers.0.weight") == _bytes(target / "model.safetensors", "model.layers.0.weight")
    # the output is what the proof says: clean under the same selection, not without it
    assert run("scan", out, "--exclude", "optimizer.*", "-q").exit_code == 0
    assert run("scan", out, "-q").exit_code == 1


def test_dry_run_plan_and_api_name_the_selection(pair):
    target, donor = pair
    result = run("repair", target, "--from", donor, "--only", "model.*", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "1 tensor(s) left out by --only 'model.*': neither judged nor restored" in result.output
    plan = json.loads(run("repair", target, "--from", donor, "--only", "model.*", "--dry-run", "--json").stdout)
    assert plan["excluded"] == {"tensors": 1, "only": ["model.*"], "exclude": []} and plan["complete"] is True
    api = nandoctor.repair(target, [donor], dry_run=True, exclude="optimizer.*").plan
    assert api.excluded == 1 and [r.name for r in api.restorations] == ["model.layers.1.weight"]
    # no selection: no "excluded" key at all (the proof's shape is unchanged for everyone else)
    assert "excluded" not in json.loads(run("repair", target, "--from", donor, "--dry-run", "--json").stdout)


def test_a_donor_honours_the_selection_too(pair, tmp_path):
    # only the moment selected: the donor's moment (NaN) is judged, and refused, on its own
    target, donor = pair
    result = run("repair", target, "--from", donor, "--only", "optimizer.*", "--dry-run", "--json")
    assert result.exit_code == 3
    (unrestorable,) = json.loads(result.stdout)["unrestorable"]
    assert "holds 1 NaN/Inf values itself" in unrestorable["reasons"][0]
    # a selection that leaves nothing is refused, as a scan's is unreadable
    nothing = run("repair", target, "--from", donor, "--only", "no.such.*", "--out", tmp_path / "x")
    assert nothing.exit_code == 3 and "leaves none of its" in nothing.output
    assert run("repair", target, "--from", donor, "--exclude", "", "--dry-run").exit_code == 2


def test_excluding_the_only_bad_tensor_never_calls_the_output_or_the_source_clean(tmp_path):
    """A trial: --exclude covering the only bad tensor printed "✓ ALREADY CLEAN … (the source itself is fine to
    use)", while `nandoctor scan OUT` failed on the NaN still there. The exit code stays 0 (clean within the
    selection, as `scan --exclude` says: docs/repair.md), and the words name what was never judged."""
    target, donor = tmp_path / "target", tmp_path / "donor"
    target.mkdir()
    donor.mkdir()
    save_file(_tensors(("optimizer.state.0.exp_avg",)), str(target / "model.safetensors"))
    save_file(_tensors(()), str(donor / "model.safetensors"))
    out = tmp_path / "fixed"
    result = run("repair", target, "--from", donor, "--exclude", "optimizer.*", "--out", out, "--no-progress")
    said = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "ALREADY CLEAN" not in said and "fine to use" not in said and "already clean" not in said
    assert "NOTHING TO RESTORE among the tensors judged" in said
    assert ("clean except the 1 tensor(s) left out by --exclude 'optimizer.*', which were not judged and still hold "
            "whatever they held, NaN/Inf included: 'optimizer.state.0.exp_avg'") in said
    assert f"nandoctor scan {out}" in said
    assert run("scan", out, "-q").exit_code == 1  # what the words now say
    assert run("scan", out, "--exclude", "optimizer.*", "-q").exit_code == 0  # what exit 0 means


def test_a_repair_with_an_exclusion_names_the_unjudged_tensors_too(pair, tmp_path):
    target, donor = pair
    result = run("repair", target, "--from", donor, "--exclude", "optimizer.*", "--out", tmp_path / "f", "--no-progress")
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "✓ REPAIRED" in said, result.output
    assert "clean except the 1 tensor(s) left out by --exclude 'optimizer.*'" in said
    assert "'optimizer.state.0.exp_avg'" in said


def test_a_selection_is_judged_as_part_of_its_whole_checkpoint(tmp_path):
    """A new user: `scan checkpoint-300 --only 'transformer.h.22.*'` of the demo (a poisoned checkpoint that repairs)
    read DIVERGED ("6 of 8 weight tensors") and refused the repair, and `scan checkpoint-200 --only …` of a healthy
    one read TENSOR NAMES CHANGED (its kept names against its neighbours' whole headers), so a refusal named
    checkpoint-100 as the resume point. The weights left out count in the share rule; neighbours are compared
    through the same selection."""
    import shutil

    from tests.conftest import DEMO_RUN
    from tests.test_markdown_report import _exploded_run

    run_dir = shutil.copytree(DEMO_RUN, tmp_path / "demo")
    narrowed = nandoctor.scan(run_dir / "checkpoint-300", only=["transformer.h.22.*"], device="cpu")
    assert narrowed.health == "poisoned" and narrowed.exit_code == 1
    assert narrowed.extra["excluded"]["tensors"] == 187 and narrowed.extra["excluded"]["weights"] == 187
    healthy = nandoctor.scan(run_dir / "checkpoint-200", only=["transformer.h.22.*"], device="cpu")
    assert healthy.exit_code == 0 and not healthy.errors, healthy.errors
    result = nandoctor.repair(run_dir / "checkpoint-300", ["auto"], tmp_path / "fixed", only=["transformer.h.22.*"])
    assert result.ok and {r.name.split(".")[2] for r in result.plan.restorations} == {"22"}
    exploded = _exploded_run(tmp_path / "x")  # (diverged by growth: refused, naming the last healthy checkpoint)
    with pytest.raises(nandoctor.RepairRefusedError) as refused:
        nandoctor.repair(exploded / "checkpoint-300", ["auto"], tmp_path / "no", only=["transformer.h.21.*"])
    assert f"({exploded / 'checkpoint-200'})" in refused.value.hint


def test_a_donor_given_as_one_shard_is_answered_with_its_folder(tmp_path):
    """A new user: `repair checkpoint-300 --from checkpoint-200/model-00001-of-00002.safetensors` said "not found"
    for every tensor of the other shard and "add an earlier clean checkpoint". The hint names the folder to give."""
    import shutil

    from tests.conftest import DEMO_RUN

    run_dir = shutil.copytree(DEMO_RUN, tmp_path / "demo")
    shard = run_dir / "checkpoint-200" / "model-00001-of-00002.safetensors"
    from nandoctor.errors import UnrestorableError

    with pytest.raises(UnrestorableError) as info:
        nandoctor.repair(run_dir / "checkpoint-300", [shard], tmp_path / "fixed")
    assert info.value.hint.startswith(f"give the checkpoint folder, not one of its shards: --from {run_dir / 'checkpoint-200'}")
    assert not (tmp_path / "fixed").exists()
