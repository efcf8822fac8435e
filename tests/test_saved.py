"""Verify on save: 2 gloo ranks around a real ``dcp.save``, each checking only the files it wrote, agreeing on one verdict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nandoctor.engine.owned import owner, writer_rank

pytest.importorskip("torch")


def test_files_are_owned_by_the_rank_that_wrote_them() -> None:
    assert [writer_rank(Path(n)) for n in ("__0_0.distcp", "__12_3.distcp", "bf16_zero_pp_rank_5_mp_rank_00_optim_states.pt",
                                           "mp_rank_00_model_states.pt", ".metadata")] == [0, 12, 5, None, None]
    assert [owner(Path(n), 4) for n in ("__6_0.distcp", "mp_rank_00_model_states.pt", "__3_0.distcp")] == [2, 0, 3]


def _run(tmp_path: Path, plant: str) -> list[dict]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tests.saved_worker", str(tmp_path), plant]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=180, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((tmp_path / f"verdict-{r}.json").read_text()) for r in range(2)]


@pytest.mark.integration
def test_ranks_check_their_own_files_and_agree(tmp_path: Path) -> None:
    clean = _run(tmp_path / "clean", "none")
    assert [(v["exit_code"], v["rank_codes"], v["read"]) for v in clean] == [
        (0, [0, 0], ["__0_0.distcp"]), (0, [0, 0], ["__1_0.distcp"])]
    bad = _run(tmp_path / "bad", "nan1")
    assert [(v["exit_code"], v["rank_codes"], v["own_code"]) for v in bad] == [(1, [0, 1], 0), (1, [0, 1], 1)]
    assert bad[0]["bad"] == {} and bad[1]["bad"] == {"model.weight": [1, 32]}  # global [5, 2] of 8×6



@pytest.mark.integration
def test_target_dtype_counts_overflow_on_each_rank_as_a_single_scan_does(tmp_path: Path) -> None:
    """7e4 in rank 1's half of an fp32 bias: finite and healthy, but Inf once cast to fp16."""
    import nandoctor
    from tests.saved_worker import tensor_row

    ranks = _run(tmp_path, "big1")
    plain = [(v["exit_code"], v["rank_codes"], v["own_code"], v["target_dtype"]) for v in ranks]
    assert plain == [(0, [0, 0], 0, None), (0, [0, 0], 0, None)]  # without a target dtype it passes
    fp16 = [v["fp16"] for v in ranks]
    assert [(v["exit_code"], v["rank_codes"], v["own_code"], v["target_dtype"]) for v in fp16] == [
        (1, [0, 1], 0, "fp16"), (1, [0, 1], 1, "fp16")]  # the same agreed code on every rank
    assert [{n: (t["overflow"], t["findings"]) for n, t in v["tensors"].items()} for v in fp16] == [
        {"model.weight": (0, []), "model.bias": (0, [])}, {"model.weight": (0, []), "model.bias": (1, ["overflow"])}]

    single = nandoctor.scan(tmp_path / "ckpt", device="cpu", target_dtype="fp16")
    assert (single.exit_code, single.extra["target_dtype"]) == (1, "fp16")
    expected = {t.ref.name: tensor_row(t) for t in single.tensors}
    assert _added_up([v["tensors"] for v in fp16]) == expected
    assert expected["model.bias"]["overflow"] == 1 and expected["model.bias"]["findings"] == ["overflow"]
    assert _added_up([v["tensors"] for v in ranks]) == {
        t.ref.name: tensor_row(t) for t in nandoctor.scan(tmp_path / "ckpt", device="cpu").tensors}


def _added_up(per_rank: list[dict]) -> dict:
    """The ranks' results of each tensor (each rank's share of its chunks) as one: counts added, the largest
    magnitude, the findings of any rank (in the order verdict.py gives them)."""
    order = ["nonfinite", "exploded", "outlier", "zeroed", "overflow"]
    out: dict = {}
    for tensors in per_rank:
        for name, row in tensors.items():
            if name not in out:
                out[name] = dict(row)
                continue
            total = out[name]
            for key in ("nan", "posinf", "neginf", "overflow", "exploded", "zeros"):
                total[key] += row[key]
            total["max_abs"] = max(total["max_abs"], row["max_abs"])
            total["findings"] = [f for f in order if f in total["findings"] or f in row["findings"]]
    return out
