"""`nandoctor repair` end to end: exit codes, what is printed, what is (not) written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings

import pytest

from tests.conftest import DEMO_RUN, ROOT
from tests.conftest import run_cli as run


def copy_run(tmp_path):
    shutil.copytree(DEMO_RUN, tmp_path / "run", ignore=shutil.ignore_patterns("expected.json"))
    return tmp_path / "run"


def test_repair_demo_run_exits_0_and_the_output_scans_clean(tmp_path):
    out = tmp_path / "repaired-checkpoint-300"
    result = run("repair", DEMO_RUN / "checkpoint-300", "--from", DEMO_RUN / "checkpoint-200", "--out", out)
    assert result.exit_code == 0, result.output
    assert "✓ REPAIRED" in result.output and "✓ CLEAN" in result.output
    assert "transformer.h.21" in result.output and "step 200" in result.output
    assert "Restored per layer" in result.output
    assert (out / "nandoctor-repair.json").is_file()
    assert run("scan", out).exit_code == 0
    assert run("scan", DEMO_RUN / "checkpoint-300").exit_code == 1  # the source is untouched


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    out = tmp_path / "fixed"
    result = run("repair", DEMO_RUN / "checkpoint-300", "--from", DEMO_RUN / "checkpoint-200", "--out", out, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "PLAN COMPLETE" in result.output and "nothing written" in result.output
    assert "transformer.h.22.attn.c_proj.weight" in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_dry_run_notes_an_existing_out(tmp_path):
    result = run("repair", DEMO_RUN / "checkpoint-300", "--from", DEMO_RUN / "checkpoint-200", "--out", tmp_path, "--dry-run")
    assert result.exit_code == 0 and "already exists" in result.output


def test_dry_run_json(tmp_path):
    result = run("repair", DEMO_RUN / "checkpoint-300", "--from", DEMO_RUN / "checkpoint-200", "--dry-run", "--json")
    assert result.exit_code == 0
    plan = json.loads(result.stdout)
    assert plan["complete"] is True and len(plan["restore"]) == 18
    first = plan["restore"][0]
    assert first["donor_step"] == 200 and first["nan"] + first["posinf"] + first["neginf"] > 0


def test_repair_json_is_the_proof(tmp_path):
    out = tmp_path / "fixed"
    result = run("repair", DEMO_RUN / "checkpoint-300", "--from", DEMO_RUN / "checkpoint-200", "--out", out, "--json")
    assert result.exit_code == 0
    printed = json.loads(result.stdout)
    stored = json.loads((out / "nandoctor-repair.json").read_text())
    assert printed["files"] == stored["files"] and printed["restored"] == stored["restored"]


def test_refusal_lists_what_cannot_be_restored_and_exits_3(tmp_path):
    out = tmp_path / "fixed"
    bad_copy = tmp_path / "copy"  # a donor as bad as the target
    shutil.copytree(DEMO_RUN / "checkpoint-300", bad_copy)
    result = run("repair", DEMO_RUN / "checkpoint-300", "--from", bad_copy, "--out", out)
    assert result.exit_code == 3
    assert "Cannot be restored" in result.output and "holds 25 NaN/Inf values itself" in result.output
    assert "error:" in result.output and "no good donor" in result.output and "hint:" in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == [bad_copy]


def test_existing_out_exits_3(tmp_path):
    out = tmp_path / "fixed"
    out.mkdir()
    result = run("repair", DEMO_RUN / "checkpoint-300", "--from", DEMO_RUN / "checkpoint-200", "--out", out)
    assert result.exit_code == 3
    assert "already exists" in result.output and "Traceback" not in result.output


def test_usage_errors_exit_2(tmp_path):
    assert run("repair", DEMO_RUN / "checkpoint-300", "--from", DEMO_RUN / "checkpoint-200").exit_code == 2
    assert run("repair", DEMO_RUN / "checkpoint-300", "--out", tmp_path / "x").exit_code == 2
    assert run("repair", DEMO_RUN / "checkpoint-300", "--from", "x", "--out", tmp_path / "x", "--scope", "model").exit_code == 2


def test_missing_donor_exits_3(tmp_path):
    result = run("repair", DEMO_RUN / "checkpoint-300", "--from", tmp_path / "nope", "--out", tmp_path / "x")
    assert result.exit_code == 3 and "donor checkpoint" in result.output and "no such file or folder" in result.output


def test_a_donor_that_is_no_checkpoint_is_the_error_named(tmp_path):
    """--from a JSON file, an empty folder or a run folder: the error names the donor and why it could not be
    read (it named the target's tensors as having no good donor and said to add another --from)."""
    run_dir = copy_run(tmp_path)
    (tmp_path / "notes.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    for donor, why in ((tmp_path / "notes.json", "a JSON file"), (tmp_path / "empty", "no checkpoint files")):
        result = run("repair", run_dir / "checkpoint-300", "--from", donor, "--out", tmp_path / "o")
        assert result.exit_code == 3, result.output
        error = next(line for line in result.output.splitlines() if line.startswith("error:"))
        assert f"donor {donor} could not be read" in error and why in error, result.output
        assert "--from takes a checkpoint" in result.output
        assert not (tmp_path / "o").exists()
    result = run("repair", run_dir / "checkpoint-300", "--from", run_dir, "--out", tmp_path / "o")  # (tests/test_repair_run.py)
    assert result.exit_code == 3 and f"donor {run_dir} is a run folder, not one checkpoint" in result.output


def test_the_target_as_its_own_donor_is_refused(tmp_path):
    run_dir = copy_run(tmp_path)
    target = run_dir / "checkpoint-300"
    for donor in (str(target) + "/", target / "model-00001-of-00002.safetensors"):
        result = run("repair", target, "--from", donor, "--out", tmp_path / "o")
        assert result.exit_code == 3 and "is (part of) the checkpoint being repaired" in result.output, result.output
        assert not (tmp_path / "o").exists()


def test_from_auto_takes_donors_only_before_the_first_bad_checkpoint(tmp_path):
    run_dir = copy_run(tmp_path)
    # Poison one tensor in checkpoint-200: it becomes the run's first bad checkpoint, so auto takes every
    # tensor from checkpoint-100 (the last healthy one), none from 200, even those that look fine there.
    shard = run_dir / "checkpoint-200" / "model-00002-of-00002.safetensors"
    raw = bytearray(shard.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    begin = json.loads(raw[8 : 8 + n])["transformer.h.23.mlp.w1.weight"]["data_offsets"][0]
    raw[8 + n + begin : 8 + n + begin + 2] = b"\xc0\x7f"  # bf16 NaN
    shard.write_bytes(bytes(raw))
    out = tmp_path / "fixed"
    result = run("repair", run_dir / "checkpoint-300", "--from", "auto", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    proof = json.loads(result.stdout)
    steps = {r["tensor"]: r["donor_step"] for r in proof["restored"]}
    assert set(steps.values()) == {100}
    assert [d["step"] for d in proof["donors"]] == [100]


def test_from_auto_needs_a_checkpoint_folder(tmp_path):
    """A folder outside any run has no earlier checkpoints to take donors from; one inside a run (a model saved
    into it, e.g. ``latest/``) takes them from the run's checkpoints, as its timeline judges it."""
    run_dir = copy_run(tmp_path)
    alone = tmp_path / "latest"
    shutil.copytree(run_dir / "checkpoint-300", alone)
    result = run("repair", alone, "--from", "auto", "--out", tmp_path / "x")
    assert result.exit_code == 3 and "checkpoint-N" in result.output
    inside = run_dir / "latest"
    (run_dir / "checkpoint-300").rename(inside)
    result = run("repair", inside, "--from", "auto", "--out", tmp_path / "y")
    assert result.exit_code == 0 and "checkpoint-200" in result.output


def test_scope_layer(tmp_path):
    result = run(
        "repair", DEMO_RUN / "checkpoint-300", "--from", DEMO_RUN / "checkpoint-200", "--scope", "layer", "--dry-run", "--json"
    )
    plan = json.loads(result.stdout)
    assert len(plan["restore"]) == 24  # 3 layers × 8 tensors, norms included
    assert {r["reason"] for r in plan["restore"]} == {"bad", "layer"}


def test_hostile_names_are_escaped(tmp_path):
    from fixtures.builders import RawTensor, write_safetensors

    name = "evil\x1b[31m.weight"
    write_safetensors(tmp_path / "t.safetensors", {name: RawTensor("F32", (1,), b"\x00\x00\xc0\x7f")})
    write_safetensors(tmp_path / "d.safetensors", {name: RawTensor("F32", (1,), b"\x00\x00\x80\x3f")})
    result = run("repair", tmp_path / "t.safetensors", "--from", tmp_path / "d.safetensors", "--out", tmp_path / "o")
    assert result.exit_code == 0
    assert "\x1b" not in result.output and "evil\\x1b[31m.weight" in result.output


def test_repairing_safetensors_never_imports_torch(tmp_path):
    code = (
        "import sys\n"
        "from nandoctor.cli import main\n"
        f"sys.argv = ['nandoctor', 'repair', {str(DEMO_RUN / 'checkpoint-300')!r}, '--from', {str(DEMO_RUN / 'checkpoint-200')!r},"
        f" '--out', {str(tmp_path / 'o')!r}, '--no-progress']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr + done.stdout


def test_top_level_api(tmp_path):
    import nandoctor

    result = nandoctor.repair(str(DEMO_RUN / "checkpoint-300"), [str(DEMO_RUN / "checkpoint-200")], str(tmp_path / "o"))
    assert result.ok and len(result.plan.restorations) == 18 and result.seconds > 0
    plan = nandoctor.repair(str(DEMO_RUN / "checkpoint-300"), "auto", dry_run=True).plan
    assert {plan.donors[r.donor].step for r in plan.restorations} == {200}


def test_dry_run_refusal_exits_3(tmp_path):
    shutil.copytree(DEMO_RUN / "checkpoint-300", tmp_path / "copy")  # a donor as bad as the target
    result = run("repair", DEMO_RUN / "checkpoint-300", "--from", tmp_path / "copy", "--dry-run")
    assert result.exit_code == 3 and "REFUSED" in result.output and "Cannot be restored" in result.output


def test_hash_all_flag(tmp_path):
    out = tmp_path / "fixed"
    result = run("repair", DEMO_RUN / "checkpoint-300", "--from", DEMO_RUN / "checkpoint-200", "--out", out, "--hash-all", "--json")
    assert result.exit_code == 0
    assert all(len(f["sha256"]) == 64 for f in json.loads(result.stdout)["files"])


def test_auto_that_finds_nothing_is_no_error_when_another_donor_is_named(tmp_path):
    lone = tmp_path / "checkpoint-300"
    shutil.copytree(DEMO_RUN / "checkpoint-300", lone)  # no earlier siblings: auto finds nothing
    result = run("repair", lone, "--from", "auto", "--from", DEMO_RUN / "checkpoint-200", "--out", tmp_path / "x")
    assert result.exit_code == 0, result.output
    alone = run("repair", lone, "--from", "auto", "--out", tmp_path / "y")
    assert alone.exit_code == 3 and "--from auto found no checkpoint-N before step 300" in alone.output


def test_no_donor_hint_offers_auto_only_where_it_finds_a_donor(tmp_path):
    """"(or --from auto)" only for a target whose run has a healthy checkpoint before it: not for a folder
    outside a run, nor for a checkpoint-N whose run holds nothing earlier (auto would fail there too)."""
    from nandoctor.errors import RepairRefusedError
    from nandoctor.restore.donors import resolve_donors

    plain = tmp_path / "model"
    shutil.copytree(DEMO_RUN / "checkpoint-300", plain)
    lone = tmp_path / "run" / "checkpoint-300"
    shutil.copytree(DEMO_RUN / "checkpoint-300", lone)
    bad_copy = tmp_path / "bad-copy"
    shutil.copytree(DEMO_RUN / "checkpoint-300", bad_copy)
    for target, offered in ((plain, False), (lone, False), (DEMO_RUN / "checkpoint-300", True)):
        for donor, error in ((bad_copy, "no good donor"), (target, "is (part of) the checkpoint being repaired")):
            result = run("repair", target, "--from", donor, "--out", tmp_path / "out")  # a donor as bad as the target
            assert result.exit_code == 3 and error in result.output, result.output
            hint = next(line for line in result.output.splitlines() if line.startswith("hint:"))
            assert ("--from auto" in hint) is offered, (target, hint)
    for available in (False, True):
        try:
            resolve_donors(DEMO_RUN / "checkpoint-300", [], auto_available=available)
        except RepairRefusedError as exc:
            assert ("--from auto" in exc.hint) is available
        else:
            raise AssertionError("no donors must be refused")


def test_out_mistakes_get_their_own_messages(tmp_path):
    target = DEMO_RUN / "checkpoint-300"
    empty = run("repair", target, "--from", "auto", "--out", "")
    assert empty.exit_code == 2 and "--out is empty" in empty.output
    itself = run("repair", target, "--from", "auto", "--out", target)
    assert itself.exit_code == 3 and "--out is the checkpoint being repaired" in itself.output
    # one file of a checkpoint folder as its own --out: the folder suggested lies beside the checkpoint, not in it
    shard = target / "model-00001-of-00002.safetensors"
    file_itself = run("repair", shard, "--from", "auto", "--out", shard)
    assert file_itself.exit_code == 3 and f"--out {DEMO_RUN / 'repaired-checkpoint-300-model-00001-of-00002'}" in " ".join(
        file_itself.output.split()), file_itself.output
    (tmp_path / "sub").mkdir()
    folded = run("repair", target, "--from", "auto", "--out", tmp_path / "sub" / ".." / "fixed")
    assert folded.exit_code == 0 and f"wrote {tmp_path / 'fixed'} (" in folded.output


def test_a_donor_of_another_model_is_named_once(tmp_path):
    from fixtures.builders import RawTensor, write_safetensors

    other = tmp_path / "other.safetensors"
    write_safetensors(other, {"encoder.weight": RawTensor("F32", (2,), b"\0" * 8)})
    result = run("repair", DEMO_RUN / "checkpoint-300", "--from", other, "--out", tmp_path / "x", "--dry-run")
    assert result.exit_code == 3
    assert "has 0 of the target's 195 weight names: a different model, or another naming?" in " ".join(result.output.split())


def test_a_donor_of_another_shape_and_dtype_is_refused_over_its_shape_without_offering_allow_cast(tmp_path):
    """Target ``w`` F32 [4, 4] with a NaN, donor ``w`` F16 [2, 2]: no cast could make it fit, so the refusal
    names the shape, and neither the note nor the hint offers --allow-cast (which would refuse it again)."""
    import numpy as np
    from safetensors.numpy import save_file

    w = np.arange(16, dtype=np.float32).reshape(4, 4)
    w[0, 0] = np.nan
    save_file({"w": w}, str(tmp_path / "bad.safetensors"))
    save_file({"w": np.ones((2, 2), dtype=np.float16)}, str(tmp_path / "donor.safetensors"))
    reason = f"{tmp_path / 'donor.safetensors'}: shape [2, 2], the target's is [4, 4]"
    for extra in ((), ("--allow-cast",)):
        result = run("repair", tmp_path / "bad.safetensors", "--from", tmp_path / "donor.safetensors",
                     "--out", tmp_path / "out", "--no-progress", *extra)
        assert result.exit_code == 3, result.output
        assert "--allow-cast" not in result.output, result.output
        assert reason in " ".join(result.output.split())
    refused = run("repair", tmp_path / "bad.safetensors", "--from", tmp_path / "donor.safetensors",
                  "--out", tmp_path / "out", "--json")
    plan = json.loads(refused.stdout)
    assert [u["reasons"] for u in plan["unrestorable"]] == [[reason]] and plan["notes"] == []
    assert "--allow-cast" not in plan["errors"][0]["hint"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors", "donor.safetensors"]
    # the same donor in the target's shape is still offered to --allow-cast
    save_file({"w": np.ones((4, 4), dtype=np.float16)}, str(tmp_path / "donor.safetensors"))
    offered = run("repair", tmp_path / "bad.safetensors", "--from", tmp_path / "donor.safetensors",
                  "--out", tmp_path / "out", "--no-progress")
    assert offered.exit_code == 3 and "hint: add --allow-cast" in offered.output


@pytest.mark.integration
def test_a_sharded_dcp_tensor_restored_in_two_chunks_counts_once(tmp_path):
    """2 gloo ranks, DTensors: ``w`` Shard(0) with a NaN in one chunk, ``v`` Shard(1) with a NaN in both of its
    chunks (in two .distcp files). Two tensors are restored, as scan counts them, in three chunks; dcp.load of
    the output holds the donor's values in those chunks and the target's everywhere else."""
    pytest.importorskip("torch.distributed.checkpoint")
    import torch

    from tests.dcp_shard_dims_writer import write
    from tests.dcp_writer import torch_reference

    clean, bad, out = tmp_path / "clean", tmp_path / "bad", tmp_path / "fixed"
    write(str(clean), 0.0, plant=False)
    write(str(bad), 1.0, plant=True)
    assert sorted(p.name for p in bad.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    result = run("repair", bad, "--from", clean, "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "(2 tensor(s) restored, 2 of 2 scanned file(s) patched," in text
    rows = {line.split("│")[0].strip(): line.split("│")[1].strip()
            for line in result.output.splitlines() if line.count("│") == 5}
    assert rows == {"v": "1", "w": "1"}  # the per-layer table: tensors, not chunks
    dry = run("repair", bad, "--from", clean, "--out", tmp_path / "again", "--dry-run", "--no-progress")
    assert "plan: restore 2 tensor(s)" in dry.output
    proof = json.loads((out / "nandoctor-repair.json").read_text())
    chunks = sorted((r["tensor"], tuple(r["chunk"]["offsets"])) for r in proof["restored"])
    assert chunks == [("v", (0, 0)), ("v", (0, 4)), ("w", (0, 0))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled …: load in a single process"
        donor, source, repaired = (torch_reference(str(f)) for f in (clean, bad, out))
    expected = {name: t.clone() for name, t in source.items()}
    expected["w"][0:4] = donor["w"][0:4]
    expected["v"] = donor["v"].clone()
    assert repaired.keys() == expected.keys() == {"w", "v", "a", "b", "c", "d"}
    for name, t in expected.items():
        assert torch.equal(repaired[name].view(torch.int32), t.view(torch.int32)), name
    assert not torch.equal(donor["a"], source["a"])  # the target differs from its donor everywhere


def test_max_abs_judges_the_target_the_donors_and_the_verification(tmp_path):
    """repair --max-abs / --outlier-factor (and the API's max_abs/outlier_factor): a tensor that
    `scan --max-abs 1e4` calls exploded is restored; a donor copy above the ceiling is passed over; the plan and
    proof record the limits (repair had no such option while docs/repair.md named it)."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    import nandoctor

    rng = np.random.default_rng(0)
    good = {f"model.layers.{i}.mlp.weight": rng.normal(0, 0.02, (64, 64)).astype(np.float32) for i in range(4)}
    save_file(good, tmp_path / "good.safetensors")
    bad = dict(good)
    bad["model.layers.2.mlp.weight"] = (5e4 * np.sign(good["model.layers.2.mlp.weight"])).astype(np.float32)
    save_file(bad, tmp_path / "bad.safetensors")
    high = dict(good)
    high["model.layers.2.mlp.weight"] = (2e4 * np.sign(good["model.layers.2.mlp.weight"])).astype(np.float32)
    save_file(high, tmp_path / "high.safetensors")
    target = tmp_path / "bad.safetensors"

    plain = run("repair", target, "--from", tmp_path / "good.safetensors", "--out", tmp_path / "o0", "--json")
    assert plain.exit_code == 0 and json.loads(plain.output)["restored"] == []  # 5e4 is under the default 1e5

    result = run("repair", target, "--from", tmp_path / "high.safetensors", "--from", tmp_path / "good.safetensors",
                 "--out", tmp_path / "o1", "--max-abs", "1e4", "--json")
    assert result.exit_code == 0, result.output
    proof = json.loads(result.output)
    assert proof["health_limits"] == {"max_abs": 1e4, "outlier_factor": 1024.0}
    assert [(r["tensor"], r["donor"]) for r in proof["restored"]] == [("model.layers.2.mlp.weight", str(tmp_path / "good.safetensors"))]
    written = load_file(next((tmp_path / "o1").glob("*.safetensors")))
    np.testing.assert_array_equal(written["model.layers.2.mlp.weight"], good["model.layers.2.mlp.weight"])

    only_high = run("repair", target, "--from", tmp_path / "high.safetensors", "--out", tmp_path / "o2",
                    "--max-abs", "1e4", "--dry-run", "--json")
    assert only_high.exit_code == 3 and "exploded" in json.dumps(json.loads(only_high.output)["unrestorable"])
    assert run("repair", target, "--from", tmp_path / "good.safetensors", "--out", tmp_path / "o3",
               "--max-abs", "0").exit_code == 2

    api = nandoctor.repair(target, [tmp_path / "good.safetensors"], tmp_path / "o4", max_abs=1e4)
    assert api.ok and [r.name for r in api.plan.restorations] == ["model.layers.2.mlp.weight"]


def test_quiet_repair_prints_one_line_for_scripts(tmp_path):
    """A new user: repair had no one-line result for a script, though scan has --quiet."""
    import shutil

    from tests.conftest import DEMO_RUN, run_cli

    run = tmp_path / "run"
    shutil.copytree(DEMO_RUN, run)
    plan = run_cli("repair", run / "checkpoint-300", "--from", "auto", "--dry-run", "-q")
    assert plan.exit_code == 0 and plan.output.splitlines() == [
        f"PLAN COMPLETE {run / 'checkpoint-300'}: 18 tensor(s) to restore from 1 donor(s); nothing written"]  # (used)
    done = run_cli("repair", run / "checkpoint-300", "--from", "auto", "--out", tmp_path / "fixed", "-q")
    assert done.exit_code == 0 and done.output.splitlines() == [
        f"REPAIRED {run / 'checkpoint-300'}: 18 tensor(s) restored into {tmp_path / 'fixed'}, verified CLEAN"]
    refused = run_cli("repair", run / "checkpoint-300", "--from", "auto", "--out", tmp_path / "fixed", "-q")
    assert refused.exit_code == 3 and "error:" in refused.output and "REPAIRED" not in refused.output
    # (a new user: the only donor holds the same NaN: "REFUSED …: 0 tensor(s) to restore" said nothing of why)
    shutil.copytree(run / "checkpoint-300", tmp_path / "copy-300")
    none = run_cli("repair", run / "checkpoint-300", "--from", tmp_path / "copy-300", "--dry-run", "-q")
    assert none.exit_code == 3 and "tensor(s) have no good donor" in none.output, none.output
    # (and a selection's left-out tensors are never called clean: the full report's caveat, in the one line too)
    left = run_cli("repair", run / "checkpoint-300", "--from", "auto", "--out", tmp_path / "left", "-q",
                   "--exclude", "transformer.h.2[1-3].*")
    assert left.exit_code == 0 and "but it is clean except the" in left.output, left.output


def test_a_folder_of_separate_saves_is_told_to_repair_the_bad_file(tmp_path):
    """A new user: three .ckpt files of one model ("{epoch}-{val_loss:.2f}" without metric names: no run) were told
    `nandoctor repair FOLDER --from …`, which then refused every donor in the folder as part of the target."""
    import torch

    from tests.conftest import run_cli

    net = torch.nn.Linear(4, 4)
    for name, value in (("0-0.52.ckpt", 0.1), ("1-0.48.ckpt", 0.2), ("2-0.47.ckpt", 0.3)):
        state = {k: torch.full_like(v, value) for k, v in net.state_dict().items()}
        if value == 0.3:
            state["weight"][0, 0] = float("nan")  # (one value: poisoned, a repair's case)
        torch.save({"state_dict": state}, tmp_path / name)
    shown = " ".join(run_cli("scan", tmp_path).output.split())
    assert f"nandoctor repair {tmp_path / '2-0.47.ckpt'} --from" in shown, shown
    fixed = run_cli("repair", tmp_path / "2-0.47.ckpt", "--from", tmp_path / "1-0.48.ckpt", "--out", tmp_path.parent / "f",
                    "-q")
    assert fixed.exit_code == 0 and fixed.output.startswith("REPAIRED"), fixed.output


def test_a_dry_run_says_when_the_real_run_would_refuse_its_out(tmp_path):
    """--dry-run read PLAN COMPLETE for an --out whose folder does not exist, which the real run then refused (a
    review): the plan says so, as it does for one that exists."""
    from tests.conftest import run_cli

    run = tmp_path / "run"
    shutil.copytree(DEMO_RUN, run)
    for out, said in ((tmp_path / "no" / "out", "the folder that should hold --out does not exist"),
                      (run / "checkpoint-200", "already exists"),
                      (run / "checkpoint-200" / "sub", f"--out lies inside the donor checkpoint {run}/checkpoint-200")):
        shown = " ".join(run_cli("repair", run / "checkpoint-300", "--from", "auto", "--out", out, "--dry-run",
                                 "--no-progress").output.split())
        assert f"{said}: a repair (without --dry-run) would refuse this --out" in shown, shown
        assert not (tmp_path / "no").exists()


def test_repair_json_gives_its_exit_code_and_the_steps_that_use_it(tmp_path):
    """A review: a refusal's JSON has exit_code, the proof printed by --json had none, nor the console's next steps."""
    from tests.conftest import run_cli

    run = tmp_path / "run"
    shutil.copytree(DEMO_RUN, run)
    result = run_cli("repair", run / "checkpoint-300", "--from", "auto", "--out", run / "repaired-checkpoint-300", "--json")
    data = json.loads(result.stdout)
    assert result.exit_code == data["exit_code"] == 0
    assert data["next"][-1] == (f"mv {run}/checkpoint-300 {run}/bad-checkpoint-300 && "
                                f"mv {run}/repaired-checkpoint-300 {run}/checkpoint-300"), data["next"]
    on_disk = json.loads((run / "repaired-checkpoint-300" / "nandoctor-repair.json").read_text())
    assert "exit_code" not in on_disk  # (the proof beside the repair is unchanged)


def test_a_ceiling_raised_with_max_abs_judges_the_verification_too(tmp_path):
    """An adversarial round: `repair --max-abs 1e6` took a donor copy of 2e5 (healthy under that ceiling) and then
    refused its own output at the verification scan, which still used the default 1e5 ("fix the cause above", with
    nothing above); `scan --max-abs 1e6` of that output passes."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    good = {f"model.layers.{i}.mlp.weight": rng.normal(0, 0.02, (64, 64)).astype(np.float32) for i in range(4)}
    donor = dict(good)
    donor["model.layers.1.mlp.weight"] = good["model.layers.1.mlp.weight"] * 1e7  # (bulk ~2e5: no outliers)
    target = dict(donor)
    target["model.layers.1.mlp.weight"] = donor["model.layers.1.mlp.weight"].copy()
    target["model.layers.1.mlp.weight"][0, 0] = np.nan
    save_file(donor, tmp_path / "donor.safetensors")
    save_file(target, tmp_path / "target.safetensors")
    result = run("repair", tmp_path / "target.safetensors", "--from", tmp_path / "donor.safetensors", "--out",
                 tmp_path / "out", "--max-abs", "1e7", "--json")
    assert result.exit_code == 0, result.output
    written = next((tmp_path / "out").glob("*.safetensors"))
    assert run("scan", written, "--max-abs", "1e7").exit_code == 0
