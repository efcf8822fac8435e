"""DeepSpeed ZeRO flat partitions attributed to parameter names and coordinates, held to zero_to_fp32's answers.

Folders come from tests/zero_writer.py (DeepSpeed's writer's layout and pickled
types). Where deepspeed is installed its own ``zero_to_fp32`` rebuilds each
parameter from the same files and is the oracle; otherwise the planted values
are. An integration test does the same on folders DeepSpeed itself saved.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import nandoctor
from tests.zero_writer import GROUPS, PLANTED, full_params

torch = pytest.importorskip("torch")
NAMES = [n for g in GROUPS for n in g]
LAYOUTS = [(1, 4), (2, 2), (2, 3), (3, 2), (3, 3)]


def _tally(tensors: dict) -> dict[str, tuple[int, int, int, int | None]]:
    out = {}
    for name, t in tensors.items():
        flat = t.float().reshape(-1)
        bad = (~torch.isfinite(flat)).nonzero()
        out[name] = (int(torch.isnan(flat).sum()), int(torch.isposinf(flat).sum()), int(torch.isneginf(flat).sum()),
                     int(bad[0]) if len(bad) else None)
    return out


def _oracle(folder: Path) -> dict[str, tuple[int, int, int, int | None]]:
    """zero_to_fp32's fp32 parameters where deepspeed is installed, else the planted ones."""
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except ImportError:
        return _tally(full_params(PLANTED))
    state = get_fp32_state_dict_from_zero_checkpoint(str(folder))
    return _tally({name: state[name].contiguous() for name in NAMES})


def _found(report, prefix: str) -> dict[str, tuple[int, int, int, int | None]]:
    return {t.ref.name.removeprefix(prefix): (t.nan, t.posinf, t.neginf, t.first_bad)
            for t in report.tensors if t.ref.name.startswith(prefix)}


@pytest.mark.parametrize(("stage", "world"), LAYOUTS)
def test_flat_partitions_are_named_as_zero_to_fp32_rebuilds_them(tmp_path: Path, stage: int, world: int) -> None:
    from tests.zero_writer import write

    step = write(tmp_path, stage, world)
    report = nandoctor.scan(step, device="cpu")
    assert not report.errors
    assert _found(report, "fp32.") == _oracle(tmp_path)
    assert _found(report, "fp32.")["model.layers.1.mlp.weight"] == (2, 0, 0, 1)  # (0, 1) and (3, 2)
    assert _found(report, "fp32.")["model.layers.1.mlp.bias"] == (0, 1, 0, 4)
    assert _found(report, "exp_avg_sq.")["lm_head.weight"] == (0, 0, 1, 7)  # (1, 3) of a (2, 4)
    assert set(_found(report, "exp_avg.")) == set(NAMES)
    by_name = {t.ref.name: t for t in report.tensors}
    assert by_name["fp32.model.layers.1.mlp.weight"].ref.shape == (4, 3)
    assert by_name["fp32.model.layers.1.mlp.weight"].ref.role == "optimizer"
    assert not [t for t in report.tensors if "flat_groups" in t.ref.name or "fp32_groups" in t.ref.name]
    # ZeRO-1/2 also saves the bf16 weights whole in mp_rank_00_model_states.pt (ZeRO-3: empty placeholders)
    assert (report.nan, report.posinf, report.neginf) == ((4, 2, 1) if stage <= 2 else (2, 1, 1))
    assert report.exit_code == 1
    assert any(f"ZeRO-{stage} partitions of {world} of {world} rank(s) attributed to 5 parameters" in n
               for n in report.notes)


def test_nan_in_zero3_padding_is_reported_under_no_parameter(tmp_path: Path) -> None:
    from tests.zero_writer import write

    step = write(tmp_path, 3, 2, pad_rank=1)
    report = nandoctor.scan(step, device="cpu")
    assert _found(report, "fp32.") == _tally(full_params(PLANTED))  # no parameter gained the padding's NaN
    assert [(Path(u.file).name, u.nan) for u in report.unviewed] == [("zero_pp_rank_1_mp_rank_00_optim_states.pt", 1)]
    assert report.nan == 3
    assert report.exit_code == 1


def test_a_missing_rank_file_is_exit_3_naming_it(tmp_path: Path) -> None:
    from tests.zero_writer import write

    step = write(tmp_path, 2, 3)
    (step / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    report = nandoctor.scan(step, device="cpu")
    assert report.exit_code == 3
    [problem] = report.errors
    assert "2 ranks" not in problem.message and "1 rank file(s) are missing" in problem.message
    assert "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt" in problem.message
    # ranks 0 and 2 are still attributed: lm_head.weight's -Inf lies in rank 2's partition of group 0
    assert _found(report, "exp_avg_sq.")["lm_head.weight"] == (0, 0, 1, 7)


def test_a_missing_model_states_file_is_exit_3_and_leaves_flat_names(tmp_path: Path) -> None:
    from tests.zero_writer import write

    step = write(tmp_path, 2, 2)
    (step / "mp_rank_00_model_states.pt").unlink()
    report = nandoctor.scan(step, device="cpu")
    assert report.exit_code == 3
    assert any("mp_rank_00_model_states.pt is missing" in p.message for p in report.errors)
    assert not _found(report, "fp32.")
    assert report.nan == 2 and report.posinf == 1  # still scanned, under the flat names (the bf16 copy is gone)


_TRAIN = textwrap.dedent("""
    import sys, torch, deepspeed
    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cfg = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": int(sys.argv[1])},
           "zero_force_ds_cpu_optimizer": False}
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
    engine.backward(engine(torch.randn(2, 5)).sum()); engine.step()
    engine.save_checkpoint(sys.argv[2], tag="global_step1")
    # Leave through a barrier and without interpreter teardown: under load, ZeRO-3's threads sometimes
    # abort at exit ("terminate called without an active exception") after the save is complete.
    import os
    torch.distributed.barrier()
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(0)
""")


@pytest.mark.integration
@pytest.mark.parametrize("stage", [2, 3])
def test_folders_deepspeed_saved_are_attributed_as_zero_to_fp32_reads_them(tmp_path: Path, stage: int) -> None:
    pytest.importorskip("deepspeed")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    script = tmp_path / "train.py"
    script.write_text(_TRAIN)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(stage), str(tmp_path / "ds")]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    step = tmp_path / "ds" / "global_step1"
    # plant NaN at flat elements 3 and 33 of rank 1's first group (through DeepSpeed's own classes: trusted)
    rank1 = step / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    saved = torch.load(rank1, weights_only=False)
    key = "fp32_flat_groups" if stage == 3 else "single_partition_of_fp32_groups"
    with torch.no_grad():
        for at in (3, 30):
            saved["optimizer_state_dict"][key][0][at] = float("nan")
    torch.save(saved, rank1)
    state = get_fp32_state_dict_from_zero_checkpoint(str(tmp_path / "ds"))
    names = ["0.weight", "0.bias", "2.weight", "2.bias"]
    expected = _tally({n: state[n].contiguous() for n in names})
    report = nandoctor.scan(step, device="cpu")
    assert not report.errors
    assert _found(report, "fp32.") == expected
    assert sum(v[0] for v in expected.values()) == 2 and report.nan == 2


def test_every_zero_optimizer_file_is_an_optimizer_file_to_the_opener() -> None:
    """The opener imports zero.py only for a checkpoint with an optimizer file (roles.file_role), so every
    name zero.OPTIM_FILE takes must be one; names that are not ZeRO's are told apart by OPTIM_FILE itself."""
    from nandoctor.checkpoint import zero
    from nandoctor.checkpoint.roles import OPTIMIZER, file_role

    for name in ("zero_pp_rank_0_mp_rank_00_optim_states.pt", "bf16_zero_pp_rank_15_mp_rank_07_optim_states.pt",
                 "zero_pp_rank_123_mp_rank_04_optim_states.pt"):
        assert zero.OPTIM_FILE.match(name) and file_role(name) == OPTIMIZER, name
    for name in ("optimizer.pt", "mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        assert not zero.OPTIM_FILE.match(name), name


def test_a_missing_zero3_per_rank_model_states_file_is_exit_3_naming_it(tmp_path: Path) -> None:
    """ZeRO-3 saves a model states file per rank, and DeepSpeed's load_checkpoint on a rank needs its own: one
    missing passed CLEAN (ZeRO/parts trial)."""
    from tests.zero_writer import write

    step = write(tmp_path, 3, 3)
    assert sorted(p.name for p in step.glob("zero_pp_rank_*_model_states.pt"))[2:] == ["zero_pp_rank_2_mp_rank_00_model_states.pt"]
    (step / "zero_pp_rank_2_mp_rank_00_model_states.pt").unlink()
    report = nandoctor.scan(step, device="cpu")
    assert report.exit_code == 3
    assert any("1 model states file(s) are missing: zero_pp_rank_2_mp_rank_00_model_states.pt" in p.message
               for p in report.errors)


@pytest.mark.parametrize(("stage", "world"), [(1, 4), (2, 3)])
def test_moments_longer_than_the_saved_fp32_partition_are_still_named(tmp_path: Path, stage: int, world: int) -> None:
    """DeepSpeed saves the last rank's fp32 partition without its tail padding but the moments of the padded one
    (checked against real deepspeed 0.19.8): the moments were left under flat names, a NaN in them named by no
    parameter. They are named as the fp32 partition is; NaN in their padding is bytes no tensor views."""
    from tests.zero_writer import stage_enum, write

    step = write(tmp_path, stage, world, padded_moments=True)
    last = step / f"bf16_zero_pp_rank_{world - 1}_mp_rank_00_optim_states.pt"
    with stage_enum():  # (our own file, pickled with DeepSpeed's stage enum: loaded and saved again with it)
        state = torch.load(last, weights_only=False)
        moments = state["optimizer_state_dict"]["base_optimizer_state"]["state"]
        padded = [g for g in moments if moments[g]["exp_avg_sq"].numel() > state["optimizer_state_dict"][
            "single_partition_of_fp32_groups"][g].numel()]
        assert padded, "the layout must have a padded last partition"
        g = padded[0]
        moments[g]["exp_avg_sq"][-1] = float("nan")  # in the padding
        torch.save(state, last)
    report = nandoctor.scan(step, device="cpu")
    assert not report.errors
    assert set(_found(report, "exp_avg.")) == set(_found(report, "exp_avg_sq.")) == set(NAMES)
    assert _found(report, "exp_avg_sq.")["lm_head.weight"] == (0, 0, 1, 7)
    assert [(Path(u.file).name, u.nan) for u in report.unviewed] == [(last.name, 1)]


@pytest.mark.parametrize(("stage", "world"), [(1, 4), (2, 2), (3, 3)])
def test_master_weights_are_judged_as_weights_and_second_moments_never_negative(tmp_path: Path, stage, world,
                                                                                    monkeypatch) -> None:
    """A trial on real ZeRO-1/2 runs: a 1e30 and a bit-flipped (x 2^20) fp32 master weight and a negative exp_avg_sq
    passed CLEAN, while one resumed step put 1e30 (and NaN) in the weights and zero_to_fp32's model scanned
    EXPLODED / OUTLIERS. The master weights are the weights a resumed run and zero_to_fp32 take; a second moment is
    never negative."""
    from collections import OrderedDict

    from tests import zero_writer
    from tests.zero_writer import write

    # (a weight large enough to have a bulk an outlier stands out from: nandoctor's MIN_OUTLIER_ELEMENTS)
    monkeypatch.setattr(zero_writer, "GROUPS", [OrderedDict([*GROUPS[0].items(), ("model.layers.2.mlp.weight", (64, 48))]),
                                                GROUPS[1]])
    flipped = float(full_params({})["model.layers.2.mlp.weight"][9, 7]) * 2.0 ** 12  # (below the 1e5 ceiling)
    planted = {"model.layers.1.mlp.weight": [((3, 0), 1e30)], "model.layers.2.mlp.weight": [((9, 7), flipped)]}
    step = write(tmp_path, stage, world, planted=planted, planted_state={"model.layers.1.mlp.bias": [((2,), -3.0)]})
    try:  # the oracle: DeepSpeed's own consolidation holds the planted values where nandoctor names them
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(tmp_path))
        assert float(state["model.layers.1.mlp.weight"][3, 0]) == pytest.approx(1e30)
        assert float(state["model.layers.2.mlp.weight"][9, 7]) == pytest.approx(flipped)
    except ImportError:
        pass
    report = nandoctor.scan(step, device="cpu")
    found = {t.ref.name: t.findings for t in report.tensors if t.findings and t.ref.role == "optimizer"}
    assert found == {"fp32.model.layers.1.mlp.weight": ("exploded",), "fp32.model.layers.2.mlp.weight": ("outlier",),
                     "exp_avg_sq.model.layers.1.mlp.bias": ("exploded",)}
    by_name = {t.ref.name: t for t in report.tensors}
    assert by_name["exp_avg_sq.model.layers.1.mlp.bias"].exploded == 1  # its one negative value
    assert by_name["fp32.model.layers.2.mlp.weight"].outliers.count == 1
    assert by_name["exp_avg.model.layers.1.mlp.weight"].findings == ()  # (moments are never judged by magnitude)
    assert report.exit_code == 1


@pytest.mark.parametrize(("stage", "world"), [(2, 2), (3, 2)])
def test_large_values_cut_between_ranks_are_judged_as_the_whole_parameter_is(tmp_path: Path, stage, world,
                                                                              monkeypatch) -> None:
    """A trial on real ZeRO runs: 16 legitimately large values of one parameter (a position-embedding row), cut 8
    and 8 between two ranks, were 16 outliers (each rank's piece measured against its own bulk, where 8 are too few
    to be it), while the same tensor saved whole, and zero_to_fp32's, were CLEAN. As many as the whole tensor's
    bulk count (k = 9 here) are its bulk."""
    from collections import OrderedDict

    from tests import zero_writer
    from tests.zero_writer import write

    monkeypatch.setattr(zero_writer, "GROUPS", [OrderedDict([("model.pos", (4096,))]), GROUPS[1]])
    planted = {"model.pos": [((i,), 1e4) for i in range(2040, 2056)]}  # (the partitions meet at 2048)
    step = write(tmp_path, stage, world, planted=planted, planted_state={})
    report = nandoctor.scan(step, device="cpu")
    assert [t.ref.name for t in report.tensors if t.findings] == [] and report.exit_code == 0
    lone = {"model.pos": [((100,), 1e4)]}  # one such value is an outlier, wherever it lies
    step = write(tmp_path / "lone", stage, world, planted=lone, planted_state={})
    found = {t.ref.name: t.findings for t in nandoctor.scan(step, device="cpu").tensors if t.findings}
    assert found.get("fp32.model.pos") == ("outlier",)
