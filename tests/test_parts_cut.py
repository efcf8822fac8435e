"""A region larger than a part's share is cut across parts; the merged report is still the single scan's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import nandoctor
from fixtures.builders import RawTensor, write_safetensors
from nandoctor.engine import split
from nandoctor.engine.parts import Options, PartSpec, merge_parts, scan_part
from nandoctor.engine.split import plan_shares
from tests.conftest import same_report

CUT = 8 << 20  # a multiple of the CPU kernel's chunk (4 MiB) and of a cold read's (8 MiB), as CUT_BYTES is
ELEMENTS = 10 * (1 << 20)  # 40 MiB of float32: five cuts' worth, far more than the share of 2, 3 or 5 parts


@pytest.fixture(autouse=True)
def small_cuts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(split, "CUT_BYTES", CUT)  # (64 MiB in use: test files stay small)


def _planted() -> np.ndarray:
    values = np.random.default_rng(0).standard_normal(ELEMENTS).astype(np.float32)
    per_cut = CUT // 4
    for k in range(1, ELEMENTS // per_cut):  # both sides of every place a cut can fall
        values[k * per_cut - 1] = np.nan
        values[k * per_cut] = -np.inf if k % 2 else np.inf
    for at in range(per_cut // 2, ELEMENTS, per_cut):  # inside every share, whatever N
        values[at] = 3e4  # an outlier: 2^10 above the bulk, below the ceiling
        values[at + 7] = np.nan
        values[at + 1000] = 0.0
    values[ELEMENTS - 5] = -2e6  # exploded (above --max-abs), the worst outlier
    values[3] = np.inf
    return values


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cut") / "model.safetensors"
    small = np.arange(64, dtype=np.float32)
    small[5] = np.nan
    write_safetensors(path, {
        "a.small": RawTensor("F32", (64,), small.tobytes()),
        "b.embed": RawTensor("F32", (ELEMENTS // 1024, 1024), _planted().tobytes()),
        "c.small": RawTensor("F32", (8, 8), np.ones(64, np.float32).tobytes()),
    })
    return path


def _merged(path: Path, count: int, options: Options = Options()):
    parts = [(f"part-{i}", json.loads(json.dumps(scan_part(path, PartSpec(i, count), options, device="cpu"))))
             for i in range(count)]
    return parts, merge_parts(parts)


@pytest.mark.parametrize("count", [2, 3, 5])
def test_a_region_larger_than_the_share_is_cut_and_merges_to_the_single_scan(big_file: Path, count: int) -> None:
    parts, merged = _merged(big_file, count)
    single = nandoctor.scan(big_file, device="cpu")
    same_report(merged, single)
    spans = sorted(tuple(s["span"]) for _, p in parts for s in p["shares"])
    assert len(spans) == count and spans[0][0] == 0 and sum(n for _, n in spans) == ELEMENTS * 4
    assert all(start % CUT == 0 for start, _ in spans)  # element- and chunk-aligned cuts
    assert all(p["bytes_scanned"] for _, p in parts)  # every part read some of it
    embed = next(t for t in merged.tensors if t.ref.name == "b.embed")
    # (one 3e4 per cut, and the -2e6: exploded, so no outlier too)
    assert embed.outliers is not None and embed.outliers.count == ELEMENTS // (CUT // 4)
    assert embed.exploded == 1 and embed.first_bad == 3
    assert merged.bytes_scanned == single.bytes_scanned


def test_cut_regions_with_a_target_dtype(big_file: Path) -> None:
    _, merged = _merged(big_file, 3, Options(target_dtype="fp16"))
    single = nandoctor.scan(big_file, device="cpu", target_dtype="fp16")
    same_report(merged, single)
    embed = next(t for t in merged.tensors if t.ref.name == "b.embed")
    assert embed.overflow == 1  # -2e6 does not fit fp16; 3e4 does


def test_torch_bin_big_storage_is_cut_a_shared_one_is_not(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    big = torch.from_numpy(_planted())
    tied = torch.randn(3 * (1 << 20))
    tied[123] = float("nan")
    path = tmp_path / "pytorch_model.bin"
    torch.save({"embed": big, "tied.a": tied, "tied.b": tied[: 1 << 20], "bias": torch.zeros(8)}, path)
    parts, merged = _merged(path, 3)
    same_report(merged, nandoctor.scan(path, device="cpu"))
    cut = {s["key"] for _, p in parts for s in p["shares"]}
    assert len(cut) == 1  # the embedding's storage only: the storage of two views stays whole in one part


def test_plan_shares() -> None:
    assert plan_shares([10, 10, 10, 10], [False] * 4, 2) == [[(0, 0, 10)], [(0, 0, 10)], [(1, 0, 10)], [(1, 0, 10)]]
    assert plan_shares([100, 1, 1, 1], [False] * 4, 2) == [[(0, 0, 100)], [(1, 0, 1)], [(1, 0, 1)], [(1, 0, 1)]]
    assert plan_shares([0], [True], 3) == [[(0, 0, 0)]]
    whole = 4 * CUT
    assert plan_shares([whole], [True], 2) == [[(0, 0, 2 * CUT), (1, 2 * CUT, 2 * CUT)]]
    assert plan_shares([whole], [False], 2) == [[(1, 0, whole)]]  # not cuttable: whole, where its middle falls
    assert plan_shares([CUT // 2], [True], 2) == [[(1, 0, CUT // 2)]]  # no multiple of CUT inside: whole


def test_merge_refuses_shares_that_do_not_make_the_region(big_file: Path) -> None:
    parts, _ = _merged(big_file, 2)
    parts[1][1]["shares"][0]["span"][0] += CUT  # as if part 1 were cut by another plan
    with pytest.raises(nandoctor.errors.NandoctorError, match="do not make the whole region"):
        merge_parts(parts)
