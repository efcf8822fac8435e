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

