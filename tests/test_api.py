"""The Python API: scan, scan_run, assert_finite, scan_state_dict, scan_module; lazy imports; typed errors."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import nandoctor
from fixtures.builders import RawTensor, write_safetensors
from nandoctor import verdict as verdicts

from .conftest import DEMO_RUN, ROOT

BAD = DEMO_RUN / "checkpoint-300"
GOOD = DEMO_RUN / "checkpoint-200"


def test_import_nandoctor_is_light():
    code = "import sys, nandoctor; bad = {'numpy', 'torch', 'rich', 'click'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_scan_returns_a_report_and_stays_a_function():
    report = nandoctor.scan(str(BAD), device="cpu")
    assert isinstance(report, nandoctor.ScanReport)
    assert not report.ok and report.exit_code == 1
    assert [s.layer for s in report.bad_layers] == ["transformer.h.21", "transformer.h.22", "transformer.h.23"]
    assert nandoctor.to_json(report)["summary"]["nan"] == 144
    importlib.import_module("nandoctor.engine")  # importing the engine and the restore package must not
    importlib.import_module("nandoctor.restore")  # replace the API functions scan() and repair()
    assert callable(nandoctor.repair)

    assert callable(nandoctor.scan) and nandoctor.scan(str(GOOD)).ok


def test_scan_of_a_run_folder_points_to_scan_run():
    with pytest.raises(nandoctor.UnsupportedFormatError, match="training run folder"):
        nandoctor.scan(str(DEMO_RUN))
    run = nandoctor.scan_run(str(DEMO_RUN))
    assert run.last_clean.name == "checkpoint-200" and run.first_bad.name == "checkpoint-300"
    assert run.exit_code() == 1 and nandoctor.to_json(run)["run"]["train_log"]["first_nonfinite"]["step"] == 260
    with pytest.raises(nandoctor.UnsupportedFormatError, match="not a training run folder"):
        nandoctor.scan_run(str(GOOD))


def test_assert_finite_names_bad_layers_and_the_repair_command(tmp_path):
    run_dir = tmp_path / "output"
    shutil.copytree(DEMO_RUN, run_dir)
    assert nandoctor.assert_finite(str(run_dir / "checkpoint-200")).ok
    with pytest.raises(nandoctor.NonFiniteWeightsError) as info:
        nandoctor.assert_finite(str(run_dir / "checkpoint-300"))
    err = info.value
    assert "transformer.h.21–23" in err.message and "144 NaN" in err.message
    assert f"nandoctor repair {run_dir / 'checkpoint-300'} --from auto --out {run_dir / 'repaired-checkpoint-300'}" in err.hint
    assert err.report is not None and err.report.nonfinite == 261
    assert err.exit_code == 1
    # A run folder: the newest checkpoint decides, as in the CLI.
    with pytest.raises(nandoctor.NonFiniteWeightsError, match="checkpoint-300"):
        nandoctor.assert_finite(str(run_dir))


def test_the_suggested_repair_makes_assert_finite_pass(tmp_path):
    run_dir = tmp_path / "output"
    shutil.copytree(DEMO_RUN, run_dir)
    target = run_dir / "checkpoint-300"
    with pytest.raises(nandoctor.NonFiniteWeightsError):
        nandoctor.assert_finite(str(target))
    result = nandoctor.repair(str(target), "auto", str(run_dir / "repaired-checkpoint-300"))
    assert result.ok and callable(nandoctor.repair)
    assert nandoctor.assert_finite(str(run_dir / "repaired-checkpoint-300")).ok
    # The repaired copy sits beside the run's checkpoints without joining the timeline.
    assert any("repaired-checkpoint-300" in n for n in nandoctor.scan_run(str(run_dir)).notes)


def test_assert_finite_outside_a_run_suggests_an_explicit_donor(tmp_path):
    shutil.copytree(BAD, tmp_path / "final")
    with pytest.raises(nandoctor.NonFiniteWeightsError) as info:
        nandoctor.assert_finite(str(tmp_path / "final"))
    assert "--from <an earlier clean checkpoint or the base model>" in info.value.hint


def test_assert_finite_says_overflow_beside_an_outlier(tmp_path):
    """A norm gain of 7e4 among ones: an outlier, and it overflows fp16. The error is OverflowRiskError (still a
    NonFiniteWeightsError) and says the overflow, not the outlier alone; checked for fp16, the one value is
    counted once, as the overflow (above fp16's ceiling, it is no outlier: kernels/census.count_above)."""
    path = tmp_path / "m.safetensors"
    gain = np.ones(4096, np.float32)
    gain[7] = 7e4
    write_safetensors(path, {"model.layers.3.input_layernorm.weight": RawTensor("F32", (4096,), gain.tobytes())})
    with pytest.raises(nandoctor.OverflowRiskError) as info:
        nandoctor.assert_finite(str(path), target_dtype="fp16")
    assert "outlier" not in info.value.message and "1 tensor overflows when cast to fp16" in info.value.message
    with pytest.raises(nandoctor.NonFiniteWeightsError, match=r"1 outlier tensor\(s\)"):  # (no target: the outlier)
        nandoctor.assert_finite(str(path))


def test_assert_finite_overflow_and_unreadable(tmp_path):
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"model.layers.3.mlp.weight": RawTensor("F32", (2,), np.array([1e5, 1.0], np.float32).tobytes())})
    assert nandoctor.assert_finite(str(path)).ok  # finite: fine without a target
    with pytest.raises(nandoctor.OverflowRiskError, match="overflows when cast to fp16") as info:
        nandoctor.assert_finite(str(path), target_dtype="fp16")
    assert isinstance(info.value, nandoctor.NonFiniteWeightsError)  # one except clause catches both
    assert "model.layers.3" in info.value.message
    passed = nandoctor.assert_finite(str(path), target_dtype="fp16", fail_on="nonfinite")  # returned: it passed
    # (judged by the gate it passed, as the CLI's `--fail-on nonfinite` says PASS … (reported only), exit 0)
    assert passed.exit_code == 0 and passed.ok and passed.verdict == "OVERFLOW RISK (fp16) (reported only)"
    with pytest.raises(ValueError, match="unknown target dtype"):
        nandoctor.scan(str(path), target_dtype="fp4")
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(nandoctor.UnreadableCheckpointError, match="cannot be called finite"):
        nandoctor.assert_finite(str(path))
    with pytest.raises(nandoctor.CheckpointNotFoundError):
        nandoctor.assert_finite(str(tmp_path / "nope"))


# -- live tensors ---------------------------------------------------------------------------------

torch = pytest.importorskip("torch")


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.ModuleDict({
        "embed": torch.nn.Embedding(10, 4),
        "layers": torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(3)]),
        "norm": torch.nn.LayerNorm(4),
    })


def test_scan_module_finds_planted_values_where_they_are():
    model = tiny_model()
    model.register_buffer("position_ids", torch.arange(4))
    with torch.no_grad():
        model["layers"][1].weight[2, 3] = float("nan")
        model["layers"][1].weight[3, 0] = float("inf")
        model["layers"][2].bias[1] = float("-inf")
    report = nandoctor.scan_module(model)
    by_name = {t.name: t for t in report.tensors}
    w = by_name["layers.1.weight"]
    assert (w.nan, w.posinf, w.neginf, w.first_bad_coords) == (1, 1, 0, (2, 3))
    assert by_name["layers.2.bias"].neginf == 1
    assert not by_name["position_ids"].can_hold_nonfinite
    assert report.nonfinite == 3 and report.device == "cpu" and report.files == ()
    assert [s.layer for s in report.bad_layers] == ["layers.1", "layers.2"]
    assert json.dumps(nandoctor.to_json(report))  # same JSON shape as a file scan


def test_scan_state_dict_agrees_with_the_file_scan(tmp_path):
    from safetensors.torch import save_file

    rng = np.random.default_rng(1)
    state = {}
    for i, dtype in enumerate((torch.float32, torch.bfloat16, torch.float16, torch.float64)):
        t = torch.from_numpy(rng.standard_normal((8, 16)).astype(np.float32)).to(dtype)
        flat = t.view(-1)
        flat[rng.choice(128, 5, replace=False)] = float("nan")
        flat[rng.choice(128, 2, replace=False)] = float("inf")
        flat[rng.choice(128, 2, replace=False)] = 7e4 if dtype != torch.float16 else 6e4
        state[f"model.layers.{i}.w"] = t
    state["model.layers.4.w"] = torch.tensor([3.0, float("-inf")]).to(torch.float8_e5m2)
    path = tmp_path / "m.safetensors"
    save_file(state, str(path))

    live = nandoctor.scan_state_dict(state, target_dtype="fp16")
    disk = nandoctor.scan(str(path), target_dtype="fp16")
    key = lambda r: {t.name: (t.nan, t.posinf, t.neginf, t.first_bad, t.overflow, t.max_abs) for t in r.tensors}  # noqa: E731
    assert key(live) == key(disk)
    assert live.nonfinite == disk.nonfinite > 0


def test_scan_state_dict_views_complex_meta_and_extra_entries():
    base = torch.zeros(6, 4)
    base[5, 1] = float("nan")
    state = {
        "transposed": base.t(),  # a strided view: counted without a host copy, first bad in its own C order
        "complex": torch.tensor([1 + 1j, complex(0, float("inf"))], dtype=torch.complex64),
        "meta": torch.empty(3, device="meta"),
        "note": "not a tensor",
        "empty": torch.empty(0, 3),
    }
    report = nandoctor.scan_state_dict(state)
    by_name = {t.name: t for t in report.tensors}
    assert by_name["transposed"].first_bad_coords == (1, 5)
    assert (by_name["complex"].posinf, by_name["complex"].first_bad) == (1, 1)
    assert "meta" not in by_name and report.exit_code == 3  # could not be checked: never "clean"
    assert report.errors[0].path == "meta" and "meta device" in report.errors[0].message
    assert by_name["empty"].nonfinite == 0


def test_live_tensors_torch_refuses_to_view_are_counted_or_refused_never_a_traceback():
    """An adversarial round: a conj-view complex buffer (view_as_real raised), a LazyLinear before its first forward
    (its numel() raised), a float4_e2m1fn_x2 tensor (copy_kernel raised) each crashed the live scan."""

    class Filter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("kernel", torch.tensor([1 + 2j, complex(float("nan"), 4)]).conj())

    report = nandoctor.scan_module(Filter())
    assert (report.nan, report.exit_code) == (1, 1)  # (the conj view's values are its own: NaN either way)
    lazy = nandoctor.scan_module(torch.nn.Sequential(torch.nn.LazyLinear(4), torch.nn.Linear(4, 4)))
    assert lazy.exit_code == 3 and "uninitialized parameter of a lazy module" in lazy.errors[0].message
    packed = torch.zeros(2, dtype=torch.uint8).view(torch.float4_e2m1fn_x2)
    assert nandoctor.scan_state_dict({"w": packed, "b": torch.ones(2)}).exit_code == 0  # (e2m1 holds no NaN/Inf)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_scan_module_on_gpu_counts_on_the_device():
    model = tiny_model().cuda()
    with torch.no_grad():
        model["layers"][0].weight[0, 0] = float("nan")
    report = nandoctor.scan_module(model)
    assert report.device == "cuda:0" and report.nan == 1


def _kind_files(tmp_path):
    """One checkpoint per verdict kind: (path, scan kwargs for nandoctor.scan)."""
    rng = np.random.default_rng(3)

    def w(values=None, n=4096):
        bits = (rng.standard_normal(n) * 0.02).astype(np.float32)
        for i, v in (values or {}).items():
            bits[i] = v
        return RawTensor("F32", (n,), bits.tobytes())

    layers = lambda planted: {f"model.layers.{i}.mlp.weight": w(planted.get(i)) for i in range(8)}  # noqa: E731
    files = {
        "nonfinite": layers({3: {5: np.nan}}),
        "exploded": layers({3: {5: 3e30, 6: 3e30}}),
        "outlier": layers({3: {5: 1e3}}),
        "diverged": layers({i: dict.fromkeys(range(4096), np.nan) for i in range(6)}),
        "overflow": layers({3: {5: 7e4}}),
    }
    for kind, tensors in files.items():
        write_safetensors(tmp_path / f"{kind}.safetensors", tensors)
    # a run diverged by growth alone: step-2's weights x1000, finite, under every ceiling
    base = {f"model.layers.{i}.mlp.weight": (rng.standard_normal(4096) * 0.02).astype(np.float32) for i in range(8)}
    for step, scale in ((1, 1.0), (2, 1000.0)):
        (tmp_path / "grow" / f"checkpoint-{step}").mkdir(parents=True)
        write_safetensors(tmp_path / "grow" / f"checkpoint-{step}" / "model.safetensors",
                          {k: RawTensor("F32", (4096,), (v * scale).astype(np.float32).tobytes()) for k, v in base.items()})
    unreadable = tmp_path / "unreadable.safetensors"
    unreadable.write_bytes((tmp_path / "outlier.safetensors").read_bytes()[:-1])
    (tmp_path / "hash").mkdir()
    hashed = tmp_path / "hash" / "model.safetensors"
    write_safetensors(hashed, layers({}))
    (tmp_path / "manifest.json").write_text(json.dumps(nandoctor.manifest(str(tmp_path / "hash"))))
    data = bytearray(hashed.read_bytes())
    data[-3] ^= 1  # one mantissa bit of the last weight: finite, healthy, not the recorded bytes
    hashed.write_bytes(bytes(data))
    return files


@pytest.mark.parametrize("kind, error, message", [
    ("nonfinite", "NonFiniteWeightsError", r"nonfinite.safetensors: 1 of 8 tensors hold NaN/Inf \(1 NaN, 0 \+Inf, 0 -Inf\) in model.layers.3$"),
    ("exploded", "NonFiniteWeightsError", r"unhealthy weights \(1 exploded tensor\(s\)\) in model.layers.3; finite"),
    ("outlier", "NonFiniteWeightsError", r"unhealthy weights \(1 outlier tensor\(s\)\) in model.layers.3; finite"),
    ("diverged", "DivergedError", r"diverged.safetensors: DIVERGED: 6 of 8 weight tensors are NaN/Inf \(6 of 8 tensors hold NaN/Inf \(24,576 NaN, 0 \+Inf, 0 -Inf\); worst model.layers.0–5\); a repair would only stitch a broken model together$"),
    ("grow", "DivergedError", r"checkpoint-2: DIVERGED: the bulk of model.layers.\d.mlp.weight grew \d+x .* since the run's first healthy checkpoint; a repair"),
    ("grow/checkpoint-2", "DivergedError", r"checkpoint-2: DIVERGED: the bulk of model.layers.\d.mlp.weight grew \d+x .* since the run's first healthy checkpoint; a repair"),
    ("overflow", "OverflowRiskError", r"overflow.safetensors: 1 finite value in 1 tensor overflows when cast to fp16 \(max \|x\| 7e\+04, worst model.layers.3\)"),
    ("unreadable", "UnreadableCheckpointError", r"unreadable.safetensors: 1 part\(s\) unreadable \(first: .*truncated.* cannot be called finite$"),
    ("hash", "UnreadableCheckpointError", r"hash: 1 file fails its sha256 check \(first: .*model.safetensors: sha256 mismatch .*'model.layers.7.mlp.weight'\), so the checkpoint cannot be called finite$"),
])
def test_assert_finite_raises_the_error_of_each_verdict_kind(tmp_path, kind, error, message):
    """Every exception path of assert_finite/check against every verdict kind: the error's class, its
    message and a hint that says what to do (a diverged checkpoint: resume training, never a repair)."""
    import re

    from nandoctor.api import check

    _kind_files(tmp_path)
    suffix = "" if kind in ("hash", "grow", "grow/checkpoint-2") else ".safetensors"
    path = tmp_path / f"{kind}{suffix}"
    kwargs = {"target_dtype": "fp16", "fail_on": "overflow"} if kind == "overflow" else {}
    with pytest.raises(getattr(nandoctor, error)) as info:
        if kind == "hash":
            check(nandoctor.scan(str(path), device="cpu", manifest=str(tmp_path / "manifest.json")))
        else:
            nandoctor.assert_finite(str(path), device="cpu", **kwargs)
    assert type(info.value).__name__ == error
    assert re.search(message, info.value.message), info.value.message
    assert "None" not in info.value.message and info.value.hint
    if error == "DivergedError":
        assert isinstance(info.value, nandoctor.NonFiniteWeightsError)
        assert "nandoctor repair" not in info.value.hint
        assert info.value.hint.startswith("resume training from the last healthy checkpoint") == ("grow" in kind)
        if kind == "grow":  # (the run was scanned: its last healthy checkpoint is named, as the CLI names it)
            assert info.value.hint.startswith(f"resume training from the last healthy checkpoint "
                                              f"({tmp_path / 'grow' / 'checkpoint-1'}) with"), info.value.hint


def test_a_run_folders_diverged_final_model_names_the_checkpoint_to_resume_from(tmp_path):
    """A trial: a run whose final model (trainer.save_model) diverged got the advice for a file made for use
    ("make the file again from a healthy source") where the CLI names the run's last healthy checkpoint."""
    import shutil

    _kind_files(tmp_path)
    run = tmp_path / "grow"
    shutil.copy(run / "checkpoint-2" / "model.safetensors", run / "model.safetensors")  # the final model
    with pytest.raises(nandoctor.DivergedError) as info:
        nandoctor.assert_finite(str(run), device="cpu")
    assert info.value.hint.startswith(f"resume training from the last healthy checkpoint ({run / 'checkpoint-1'})")


def test_a_report_that_passes_a_narrower_gate_is_returned_judged_by_it(tmp_path):
    """A reports trial: assert_finite(p, fail_on="nonfinite") on an exploded checkpoint returned (right) a report
    saying ok=False, exit_code 1 (judged by the default gate), while the CLI said PASS EXPLODED (reported only), exit 0."""
    _kind_files(tmp_path)
    report = nandoctor.assert_finite(str(tmp_path / "exploded.safetensors"), device="cpu", fail_on="nonfinite")
    assert report.ok and report.exit_code == 0 and report.judgement.reported == ("exploded",)
    assert report.judgement is not None and report.judgement.fail_on == frozenset({"nonfinite"})
    assert report.verdict == "EXPLODED (reported only)"


@pytest.mark.parametrize("fail_on", ["zeroed", "exploded", "overflow,outlier", ["outlier"], "+zeroed"])
def test_no_gate_passes_nan(tmp_path, fail_on):
    """A new user's trial: `--fail-on zeroed` (meant as "zeroed too") made a NaN checkpoint PASS, exit 0. NaN/Inf
    fails whatever fail_on names (a known, harmless NaN is left out with exclude=, which the report counts)."""
    _kind_files(tmp_path)
    with pytest.raises(nandoctor.NonFiniteWeightsError):
        nandoctor.assert_finite(str(tmp_path / "nonfinite.safetensors"), device="cpu", fail_on=fail_on,
                                target_dtype="fp16")
    report = nandoctor.scan(str(tmp_path / "nonfinite.safetensors"), device="cpu")
    assert verdicts.judge(report, frozenset({"zeroed"})).exit_code == 1  # (the judge itself, given any set)
    assert not verdicts.passes(report, frozenset()) and verdicts.exit_code(report, frozenset({"outlier"})) == 1
    with pytest.raises(nandoctor.NonFiniteWeightsError):  # (an iterator, read once: it was parsed twice, then empty)
        nandoctor.assert_finite(str(tmp_path / "nonfinite.safetensors"), device="cpu", fail_on=iter(["zeroed"]))
    excluded = nandoctor.assert_finite(str(tmp_path / "nonfinite.safetensors"), device="cpu",
                                       exclude=["model.layers.3.*"])
    assert excluded.ok and excluded.extra["excluded"]


def test_a_plus_name_adds_to_the_default_gate(tmp_path):
    """``+zeroed`` fails what the default fails and zeroed weights too; a bare list replaces the default
    (nonfinite always kept)."""
    assert verdicts.parse_fail_on("+zeroed") == verdicts.DEFAULT_FAIL_ON | {"zeroed"}
    assert verdicts.parse_fail_on("zeroed") == frozenset({"nonfinite", "zeroed"})
    assert verdicts.parse_fail_on(["+outlier", "zeroed"]) == verdicts.DEFAULT_FAIL_ON | {"zeroed"}
    _kind_files(tmp_path)
    exploded = str(tmp_path / "exploded.safetensors")
    assert nandoctor.scan(exploded, device="cpu").exit_code == 1
    with pytest.raises(nandoctor.NonFiniteWeightsError):  # (the gate's error for a failing report)
        nandoctor.assert_finite(exploded, device="cpu", fail_on="+zeroed")
    assert nandoctor.assert_finite(exploded, device="cpu", fail_on="zeroed").ok  # exploded left out: reported only


def test_a_diverged_checkpoint_with_no_healthy_one_before_it_is_told_to_restart(tmp_path):
    """Every checkpoint of the run diverged: the hint says restart from the base model, not "resume from the last
    healthy checkpoint" (the run's scan says there is none)."""
    rng = np.random.default_rng(4)
    for step in (1, 2):
        folder = tmp_path / "run" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        write_safetensors(folder / "model.safetensors", {
            f"model.layers.{i}.mlp.weight": RawTensor("F32", (4096,), np.full(4096, np.nan, np.float32).tobytes())
            for i in range(6)} | {"model.norm.weight": RawTensor(
                "F32", (64,), (1 + rng.standard_normal(64) * 0.01).astype(np.float32).tobytes())})
    with pytest.raises(nandoctor.DivergedError) as info:
        nandoctor.assert_finite(str(tmp_path / "run" / "checkpoint-2"))
    assert info.value.hint.startswith("no healthy checkpoint before it in its run: restart from the base model")
    # (NaN throughout, nothing exploded: what made the NaN, not clipping, which spreads a NaN gradient: two trials'
    # runs had max_grad_norm 1.0 and were told to clip)
    assert "after finding what made the NaN" in info.value.hint and "lower learning rate" not in info.value.hint
    # the run folder itself: its newest decides, and the run holds no healthy checkpoint either (a new user's trial:
    # "resume training from the last healthy checkpoint" where the CLI said to restart from the base model)
    with pytest.raises(nandoctor.DivergedError) as info:
        nandoctor.assert_finite(str(tmp_path / "run"))
    assert info.value.hint.startswith("no healthy checkpoint is left in this run: restart from the base model")


def test_an_exploded_run_is_told_to_lower_the_learning_rate_or_clip(tmp_path):
    from tests.test_markdown_report import _exploded_run

    run = _exploded_run(tmp_path)
    with pytest.raises(nandoctor.DivergedError) as info:
        nandoctor.assert_finite(str(run / "checkpoint-300"))
    assert "with a lower learning rate or gradient clipping" in info.value.hint and "NaN" not in info.value.hint


def test_the_verdict_functions_take_fail_on_none_as_the_default_gate():
    from nandoctor import verdict

    report = nandoctor.scan(str(BAD), device="cpu")
    assert verdict.exit_code(report, None) == verdict.exit_code(report) == 1
    assert verdict.one_line(report, None) == verdict.one_line(report)
    assert verdict.judge(report, None) == verdict.judge(report) and not verdict.passes(report, None)


def test_a_live_model_or_state_dict_given_for_a_path_says_which_function_takes_it():
    """A trial passed a module, a dict and None where the API takes a path (and the reverse): raw TypeErrors
    from the filesystem ("expected str, bytes or os.PathLike object, not Linear") or AttributeErrors."""
    torch = pytest.importorskip("torch")
    module = torch.nn.Linear(2, 2)
    cases = [
        (lambda: nandoctor.scan(module), "nandoctor.scan_module(model)"),
        (lambda: nandoctor.assert_finite(module), "nandoctor.scan_module(model)"),
        (lambda: nandoctor.scan({"w": torch.zeros(2)}), "nandoctor.scan_state_dict(state_dict)"),
        (lambda: nandoctor.scan_run(None), "give the checkpoint's file or folder"),
        (lambda: nandoctor.diff(None, "x"), "nandoctor.diff: a must be a checkpoint path"),
        (lambda: nandoctor.repair("x", 5, "y"), "each donor"),
        (lambda: nandoctor.scan_module("ckpt/"), "nandoctor.scan(path)"),
        (lambda: nandoctor.scan_state_dict(module), "nandoctor.scan_module(module)"),
        (lambda: nandoctor.to_json("ckpt/"), "to_json(nandoctor.scan(path))"),
        (lambda: nandoctor.verify_hashes("x", manifest={"files": []}), "manifest must be a path (str or os.PathLike), not dict: give the manifest file's path"),
        (lambda: nandoctor.assert_finite("x", fail_on=1), "fail_on (--fail-on) takes finding names"),
        (lambda: nandoctor.repair("x", "auto", module), "give the path of a new folder to write"),
    ]
    for call, said in cases:
        with pytest.raises(TypeError, match=re.escape(said)):
            call()


def test_numpy_arrays_in_a_live_state_dict_are_counted_as_a_files_are():
    """A loaded checkpoint's numpy arrays (a NaN running_mean, a longdouble, a big-endian copy) passed
    scan_state_dict CLEAN while the same dict saved by torch.save failed (a trial's find)."""
    torch = pytest.importorskip("torch")
    state = {"w": torch.ones(3), "stats": {"mean": np.array([1.0, np.nan, np.inf], dtype=np.float32),
                                           "ld": np.array([np.nan], dtype=np.longdouble),
                                           "be": np.array([1.0, -np.inf], dtype=">f8"), "ids": np.arange(3)},
             "step": 3}
    report = nandoctor.scan_state_dict(state)
    counted = {t.name: (t.nan, t.posinf, t.neginf) for t in report.tensors}
    assert counted == {"w": (0, 0, 0), "stats.mean": (1, 1, 0), "stats.ld": (1, 0, 0), "stats.be": (0, 0, 1)}
    assert report.exit_code == 1


@pytest.mark.parametrize("fail_on", [None, "nonfinite"])
@pytest.mark.parametrize("what", ["checkpoint-300", "checkpoint-200", "."])
def test_to_json_is_what_scan_json_prints_gate_included(what, fail_on):
    """nandoctor.to_json(scan(...)) / to_json(scan_run(...)) is the dict `nandoctor scan --json` prints, its
    gate included (it had none: code moved from the CLI's JSON to the API met a KeyError), timings aside."""
    from tests.conftest import DEMO_RUN, run_cli

    path = DEMO_RUN / what
    report = nandoctor.scan_run(path) if what == "." else nandoctor.scan(path)
    data = json.loads(json.dumps(nandoctor.to_json(report, fail_on)))
    args = ["scan", path, "--json"] + (["--fail-on", fail_on] if fail_on else [])
    printed = json.loads(run_cli(*args).output)

    def untimed(value):
        if isinstance(value, dict):
            return {k: untimed(v) for k, v in value.items() if k not in ("seconds", "gb_per_s")}
        return [untimed(v) for v in value] if isinstance(value, list) else value

    assert untimed(data) == untimed(printed)
    assert data["gate"]["exit_code"] == printed["summary"]["exit_code"] == (0 if what == "checkpoint-200" else 1)


def test_assert_finite_places_nan_and_other_findings_apart(tmp_path):
    """A docs audit: "1 of 3 tensors hold NaN/Inf … in model.layers.0–1" while layer 0 held only an exploded weight.
    The NaN count is said alone, the other findings beside it, and the layers as the unhealthy ones."""
    rng = np.random.default_rng(0)
    layer0 = rng.standard_normal(64).astype(np.float32) * 0.02
    layer0[5] = 1e30
    layer1 = rng.standard_normal(64).astype(np.float32) * 0.02
    layer1[7] = np.nan
    path = tmp_path / "m.safetensors"
    healthy = {f"model.layers.{i}.mlp.weight": RawTensor("F32", (8, 8), (rng.standard_normal(64) * 0.02)
                                                         .astype(np.float32).tobytes()) for i in range(2, 8)}
    write_safetensors(path, {
        "model.layers.0.mlp.weight": RawTensor("F32", (8, 8), layer0.tobytes()),
        "model.layers.1.mlp.weight": RawTensor("F32", (8, 8), layer1.tobytes()), **healthy,
    })
    with pytest.raises(nandoctor.NonFiniteWeightsError) as caught:
        nandoctor.assert_finite(path)
    message = caught.value.message
    assert "1 of 8 tensors hold NaN/Inf (1 NaN, 0 +Inf, 0 -Inf); also 1 exploded" in message
    assert message.endswith("; unhealthy layers: model.layers.0–1")


def test_a_run_reads_ok_as_a_scan_report_does():
    """A fresh user's trial: `if not run.ok:` (as README's `report.ok`) never fired on a poisoned run, ok being a
    method (a bound method is always true). It is true or false as it stands, and still callable with a gate."""
    from tests.conftest import DEMO_RUN

    run = nandoctor.scan_run(str(DEMO_RUN), device="cpu")
    assert not run.ok and run.ok == False and run.ok() is False  # noqa: E712  (the comparison is the point)
    assert run.ok(frozenset({"zeroed"})) is False  # (NaN fails under every gate)
