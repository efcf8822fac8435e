"""The health census of torch views that do not read their storage whole and in order.

Real files written by torch.save: a transposed view (conversion scripts' ``.t()``), a permuted 3-D view, q/k/v
split from one fused storage (along dim 0 and dim 1), slices, overlapping and expanded views. Each view's
largest magnitude, zeros, exploded count and outliers (count, worst, first coordinate) are checked exactly
against torch.load(weights_only=True) + numpy; until views got their own census, every one of them scanned
"healthy" with ``max_abs`` None, whatever values they held.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import nandoctor
from nandoctor import views
from nandoctor.engine import viewcensus
from nandoctor.engine.parts import PartSpec, merge_parts, scan_part
from nandoctor.kernels.census import HealthLimits
from nandoctor.restore.donors import tensor_health
from tests.conftest import run_cli, same_report

torch = pytest.importorskip("torch")

CEILING = 1e5  # the exploded ceiling of F32 (kernels/census.py)
SPIKE = 1e4  # an outlier, not exploded: 2^10 above a bulk of 0.02 is about 20


def _weights(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator) * 0.02


def _transposed(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a view of a storage laid out transposed (what ``w.t()`` in a conversion script saves)."""
    return t.T.contiguous().T


def _save(path, tensors: dict[str, torch.Tensor]):
    torch.save(tensors, path)
    return path


def _result(report, name: str):
    return next(t for t in report.tensors if t.name == name)


def _distinct_values(t: torch.Tensor) -> np.ndarray:
    """The values of the distinct storage elements a view reads (what its counts are of), in storage order."""
    flat = torch.empty(0, dtype=t.dtype).set_(t.untyped_storage())
    index = torch.arange(flat.numel()).as_strided(t.shape, t.stride(), t.storage_offset())
    return flat[index.unique()].numpy()


def _check(result, t: torch.Tensor, outliers_at: list[tuple[int, ...]] = ()) -> None:
    """``result``'s census equals numpy's on ``t`` as torch loads it: exact largest magnitude, zeros and
    exploded count over the view's distinct elements; the planted outliers (count, worst, first coordinate)."""
    values = _distinct_values(t)
    finite = values[np.isfinite(values)]
    assert result.max_abs == float(np.abs(finite).max()) and result.max_abs_exact
    assert result.zeros == int(np.count_nonzero(finite == 0))
    assert result.exploded == int(np.count_nonzero(np.abs(finite) > CEILING))
    if not outliers_at:
        assert result.outliers is None
        return
    assert result.outliers is not None
    logical = t.numpy()
    # (an outlier is at most the ceiling: a value above it is exploded, counted there alone)
    over = (np.abs(values) >= result.outliers.threshold) & (np.abs(values) <= CEILING)
    assert result.outliers.count == len(outliers_at) == int(np.count_nonzero(over))
    first = min(outliers_at, key=lambda at: np.ravel_multi_index(at, t.shape))
    held = (np.abs(logical) >= result.outliers.threshold) & (np.abs(logical) <= CEILING)
    assert int(np.flatnonzero(held)[0]) == np.ravel_multi_index(first, t.shape)
    assert result.outliers.first == np.ravel_multi_index(first, t.shape)
    assert result.ref.coords(result.outliers.first) == first
    assert result.outliers.worst == float(values[over][np.argmax(np.abs(values[over]))])


@pytest.mark.parametrize("shape", [(48, 64), (192, 256)])  # a region read whole (< 64 KiB), and one in chunks
def test_a_transposed_view_takes_its_storage_census_with_its_own_coordinates(tmp_path, shape):
    w = _weights(*shape)
    # Storage order (column-major here) meets (10, 1) first; the view's C order meets (3, 5) first.
    w[10, 1], w[3, 5] = SPIKE, -2 * SPIKE
    w[0:6, 0] = 0.0  # (where a large tensor's sample finds a zero, whichever way it is laid out: counted exactly)
    path = _save(tmp_path / "t.bin", {"model.layers.0.mlp.down_proj.weight": _transposed(w),
                                       "model.layers.1.mlp.down_proj.weight": _weights(*shape, seed=1)})
    loaded = torch.load(path, weights_only=True)["model.layers.0.mlp.down_proj.weight"]
    assert not loaded.is_contiguous()  # what the checkpoint holds: a transposed view
    report = nandoctor.scan(path)
    result = _result(report, "model.layers.0.mlp.down_proj.weight")
    _check(result, loaded, [(10, 1), (3, 5)])
    assert result.findings == ("outlier",) and report.exit_code == 1
    plain = _result(nandoctor.scan(_save(tmp_path / "plain.bin", {"w": w})), "w")  # the same values, in order
    assert (plain.max_abs, plain.zeros, plain.bulk_scale, plain.outliers.count) == (
        result.max_abs, result.zeros, result.bulk_scale, result.outliers.count)


def test_a_transposed_view_of_exploded_values_fails(tmp_path):
    """The adversarial trial's case: a whole weight of 1e30 saved through ``.t()`` scanned CLEAN."""
    w = torch.full((64, 32), 1e30)
    path = _save(tmp_path / "t.bin", {"model.layers.1.mlp.down_proj.weight": _transposed(w),
                                       "model.layers.0.mlp.down_proj.weight": _weights(64, 32)})
    report = nandoctor.scan(path)
    result = _result(report, "model.layers.1.mlp.down_proj.weight")
    _check(result, torch.load(path, weights_only=True)["model.layers.1.mlp.down_proj.weight"])
    assert result.exploded == 64 * 32 and "exploded" in result.findings
    assert report.verdict == "EXPLODED" and report.exit_code == 1


def test_a_permuted_3d_view(tmp_path):
    x = _weights(8, 16, 32)
    x[5, 3, 17], x[1, 15, 2], x[6, 0, 0] = SPIKE, SPIKE, 0.0
    view = x.permute(2, 0, 1).contiguous().permute(1, 2, 0)
    assert view.stride() == (16, 1, 128)
    path = _save(tmp_path / "p.bin", {"experts.weight": view})
    result = _result(nandoctor.scan(path), "experts.weight")
    _check(result, torch.load(path, weights_only=True)["experts.weight"], [(5, 3, 17), (1, 15, 2)])


def _fused_layers(dim: int) -> dict[str, torch.Tensor]:
    """Layer 0's q, k and v split from one fused storage along ``dim`` (no .clone()), layer 1's plain: q holds an
    outlier, k is all zeros, v holds 1e38 (everywhere along dim 0, at one place along dim 1)."""
    fused = _weights(96, 32) if dim == 0 else _weights(32, 96)
    q, k, v = fused.split([32, 32, 32], dim=dim)
    q[4, 9] = SPIKE
    k.zero_()
    if dim == 0:
        v.fill_(1e38)
    else:
        v[20, 3] = 1e38
    out = {f"model.layers.0.self_attn.{n}_proj.weight": t for n, t in zip("qkv", (q, k, v))}
    out.update({f"model.layers.1.self_attn.{n}_proj.weight": _weights(32, 32, seed=i + 1) for i, n in enumerate("qkv")})
    return out


@pytest.mark.parametrize("dim", [0, 1])
def test_q_k_v_split_from_one_fused_storage(tmp_path, dim):
    path = _save(tmp_path / "fused.bin", _fused_layers(dim))
    loaded = torch.load(path, weights_only=True)
    q, k, v = (loaded[f"model.layers.0.self_attn.{n}_proj.weight"] for n in "qkv")
    assert q.untyped_storage().data_ptr() == v.untyped_storage().data_ptr() and v.is_contiguous() == (dim == 0)
    report = nandoctor.scan(path)
    rq, rk, rv = (_result(report, f"model.layers.0.self_attn.{n}_proj.weight") for n in "qkv")
    _check(rq, q, [(4, 9)])
    _check(rk, k)
    _check(rv, v)  # (1e38: exploded, and so no outlier; a whole v of it is its own bulk anyway)
    assert rq.findings == ("outlier",)
    assert rk.max_abs == 0.0 and rk.zeros == 32 * 32 and rk.findings == ("zeroed",)
    assert rv.exploded == (32 * 32 if dim == 0 else 1) and "exploded" in rv.findings
    assert report.exit_code == 1


def test_large_views_are_measured_piece_by_piece_as_a_large_tensor_is(tmp_path, monkeypatch):
    """Views over 64 KiB get the census a tensor that size gets (largest magnitude exact from 2.0 up, zeros
    counted where its sample finds one), read in pieces (here 64 KiB: eight a view) in storage order."""
    monkeypatch.setattr(viewcensus, "PIECE_BYTES", 64 << 10)
    fused = _weights(768, 512)
    q, k, v = (part.T for part in fused.split(256, dim=0))  # (512, 256) views, transposed and partial
    k[300, 2] = SPIKE  # early in storage (column 2), late in the view's C order
    k[10, 200] = -2 * SPIKE
    k[0:6, 0] = 0.0  # the first lanes in storage: in the sample
    v[5, 5] = 1e30
    path = _save(tmp_path / "big.bin", {f"model.layers.0.attn.{n}.weight": t for n, t in zip("qkv", (q, k, v))})
    loaded = torch.load(path, weights_only=True)
    report = nandoctor.scan(path)
    _check(_result(report, "model.layers.0.attn.k.weight"), loaded["model.layers.0.attn.k.weight"],
           [(300, 2), (10, 200)])
    _check(_result(report, "model.layers.0.attn.v.weight"), loaded["model.layers.0.attn.v.weight"])  # (1e30: exploded)
    plain = _result(report, "model.layers.0.attn.q.weight")  # below 2.0: sampled, as a large tensor's is
    assert not plain.max_abs_exact and 0 < plain.max_abs <= float(loaded["model.layers.0.attn.q.weight"].abs().max())
    assert plain.outliers is None and plain.exploded == 0 and plain.findings == ()


def test_a_slice_is_measured_on_its_own_elements(tmp_path):
    big = _weights(100, 64)
    big[0, 0] = 1e30  # in the storage, outside the slice: not the slice's
    big[13, 9] = SPIKE
    rows = _weights(400)
    rows[250] = 0.0
    path = _save(tmp_path / "s.bin", {"model.layers.0.mlp.up_proj.weight": big[10:30, 5:50],
                                       "model.layers.0.mlp.up_proj.bias": rows[200:300]})
    loaded = torch.load(path, weights_only=True)
    report = nandoctor.scan(path)
    sliced = _result(report, "model.layers.0.mlp.up_proj.weight")
    _check(sliced, loaded["model.layers.0.mlp.up_proj.weight"], [(3, 4)])
    assert sliced.exploded == 0 and sliced.max_abs == np.float32(SPIKE)
    bias = _result(report, "model.layers.0.mlp.up_proj.bias")
    _check(bias, loaded["model.layers.0.mlp.up_proj.bias"])
    assert bias.zeros == 1


def test_overlapping_and_expanded_views_count_their_distinct_elements(tmp_path):
    base = _weights(300)
    base[150] = 1e30  # read by both overlapping slices
    base[50] = SPIKE  # read by a and (twice) by the as_strided view
    row = _weights(1, 16)
    row[0, 11] = SPIKE
    tensors = {
        "a.weight": base[0:200],
        "b.weight": base[100:300],
        "c.weight": base.as_strided((20, 10), (5, 1)),  # overlapping rows: not nested
        "e.weight": row.expand(8, 16),  # stride 0
    }
    path = _save(tmp_path / "o.bin", tensors)
    loaded = torch.load(path, weights_only=True)
    report = nandoctor.scan(path)
    assert not views.is_nested(_result(report, "c.weight").ref)
    # (the 1e30 at base[150], a's (150,) and b's (50,), is exploded: no outlier)
    for name, outliers in (("a.weight", [(50,)]), ("b.weight", []), ("c.weight", [(9, 5)]),
                           ("e.weight", [(0, 11)])):
        _check(_result(report, name), loaded[name], outliers)
    assert [_result(report, n).exploded for n in ("a.weight", "b.weight", "c.weight")] == [1, 1, 0]
    # 50 is read at (9, 5) and (10, 0) of c: counted once, placed at the first
    assert _result(report, "c.weight").outliers.count == 1


def test_a_view_too_irregular_for_a_census_is_named_not_called_healthy(tmp_path, monkeypatch):
    monkeypatch.setattr(views, "MAX_IRREGULAR_SPAN", 64)
    base = _weights(300)
    base[10] = 1e30
    path = _save(tmp_path / "o.bin", {"c.weight": base.as_strided((20, 10), (5, 1)), "d.weight": base[0:50]})
    report = nandoctor.scan(path)
    irregular, sliced = _result(report, "c.weight"), _result(report, "d.weight")
    assert irregular.max_abs is None and irregular.findings == ()
    assert [n for n in report.notes if "no health census" in n and "'c.weight'" in n]
    assert "'d.weight'" not in " ".join(report.notes)  # a slice is nested: it has its census
    assert sliced.exploded == 1 and report.exit_code == 1
    console = run_cli("scan", path, "--no-progress").output
    assert "no health census" in console and "c.weight" in console
    assert [n for n in json.loads(run_cli("scan", path, "--json").output)["notes"] if "'c.weight'" in n]
    # alone, it passes (nothing found), but is never called healthy
    alone = _save(tmp_path / "alone.bin", {"c.weight": base.as_strided((20, 10), (5, 1))})
    console = run_cli("scan", alone, "--no-progress").output
    assert "finite and healthy" not in console and "1 tensor finite but not checked for health (c.weight" in console
    assert "not checked for health" in run_cli("scan", alone, "--quiet").output


def test_json_and_console_report_the_views_findings(tmp_path):
    path = _save(tmp_path / "fused.bin", _fused_layers(0))
    out = run_cli("scan", path, "--json", "--no-progress")
    entries = {t["name"]: t for t in json.loads(out.output)["tensors"]}
    q, k, v = (entries[f"model.layers.0.self_attn.{n}_proj.weight"] for n in "qkv")
    assert q["outliers"]["count"] == 1 and q["outliers"]["first"] == {"index": 4 * 32 + 9, "coords": [4, 9]}
    assert q["max_abs"] == float(np.float32(SPIKE)) and q["findings"] == ["outlier"]
    assert k["max_abs"] == 0.0 and k["zeros"] == 1024 and k["findings"] == ["zeroed"]
    assert v["max_abs"] == float(np.float32(1e38)) and v["exploded"] == 1024 and "exploded" in v["findings"]
    assert out.exit_code == 1
    console = run_cli("scan", path, "--no-progress")
    assert console.exit_code == 1 and "EXPLODED" in console.output
    for name in ("model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.q_proj.weight",
                 "model.layers.0.self_attn.k_proj.weight"):
        assert name in console.output


def test_a_split_scan_gives_the_views_the_same_census(tmp_path):
    path = _save(tmp_path / "fused.bin", {**_fused_layers(1), "lm_head.weight": _transposed(_weights(128, 64))})
    parts = [(f"part-{i}", json.loads(json.dumps(scan_part(path, PartSpec(i, 2))))) for i in range(2)]
    same_report(merge_parts(parts), nandoctor.scan(path))


def test_repair_restores_a_bad_view_and_passes_over_a_donor_whose_view_is_bad(tmp_path):
    name = "model.layers.1.mlp.down_proj.weight"
    good = _weights(64, 32)
    exploded = good.clone()
    exploded[3, 4] = 1e30
    sibling = {"model.layers.0.mlp.down_proj.weight": _weights(64, 32, seed=1)}
    target = _save(tmp_path / "target.bin", {name: _transposed(exploded), **sibling})
    bad = good.clone()
    bad[7] = 2e30
    bad_donor = _save(tmp_path / "bad.bin", {name: _transposed(bad), **sibling})
    good_donor = _save(tmp_path / "good.bin", {name: _transposed(good), **sibling})
    bad_ref = next(r for r in nandoctor.scan(bad_donor).tensors if r.name == name).ref
    assert not bad_ref.is_contiguous and "exploded" in (tensor_health(bad_ref, HealthLimits()) or "")
    result = nandoctor.repair(target, [bad_donor, good_donor], tmp_path / "repaired")
    assert result.ok
    (restored,) = result.plan.restorations
    assert restored.name == name and "exploded" in restored.findings and restored.donor == 1
    repaired = torch.load(tmp_path / "repaired" / "target.bin", weights_only=True)
    assert torch.equal(repaired[name], good) and not repaired[name].is_contiguous()
    assert result.verification.exit_code == 0


def test_views_that_would_reread_their_storage_many_times_over_are_judged_on_it_and_their_nan_counted(
        tmp_path, monkeypatch):
    """A fuzzer's 4.8 MB file of 10,000 overlapping slices t[i:] of one 1M-float storage took 30-100 s: each view
    was measured on its own. Past VIEW_READ_FACTOR x its storage the views are judged on their storage's census
    (a note says so); their NaN/Inf are still counted exactly (torch is the oracle)."""
    from nandoctor.engine import scan as engine_scan
    from nandoctor.engine import viewcensus

    monkeypatch.setattr(viewcensus, "VIEW_READ_FLOOR", 1 << 20)
    storage = torch.randn(65_536)
    storage[60_000] = float("nan")
    views = {f"v{i}": storage[i * 100:] for i in range(100)}
    torch.save(views, tmp_path / "views.pt")
    report = engine_scan(tmp_path / "views.pt")
    assert {t.name: t.nan for t in report.tensors} == {name: int(torch.isnan(v).sum()) for name, v in views.items()}
    assert all(t.max_abs is not None for t in report.tensors)  # every view judged: on its own or on its storage
    assert any("tensor view(s) judged on their whole storage" in note for note in report.notes)
    assert report.exit_code == 1  # the NaN fails, census or not
    # a trial's find: an exploded value in a view past the budget passed CLEAN; the storage's census bounds it
    healthy = torch.randn(65_536)
    healthy[65_000] = 1e30
    torch.save({f"v{i}": healthy[i * 100:] for i in range(100)}, tmp_path / "hidden.pt")
    hidden = engine_scan(tmp_path / "hidden.pt")
    assert hidden.exit_code == 1 and all("exploded" in t.findings for t in hidden.tensors)


def test_an_overlapping_view_too_wide_to_map_is_refused_and_its_storage_s_other_views_still_scanned(tmp_path):
    """An adversarial round: a plain torch.save of a 9M-element bf16 storage viewed whole (`full`) and by an
    overlapping as_strided view too wide to map (`o`): the refusal came while reading, and every view of the storage
    read 0 NaN, `full` included, "finite but not checked". Refused before reading now: `full` holds the storage's
    NaN and Inf as torch.load gives them, `o` is named as not scanned (exit 3) and never called finite."""
    torch = pytest.importorskip("torch")

    n = 9 << 20
    storage = torch.zeros(n, dtype=torch.bfloat16)
    storage[n - 1], storage[(4 << 20) + 1] = float("nan"), float("inf")
    other = torch.zeros(100)
    other[7] = float("nan")
    path = tmp_path / "overlap.pt"
    torch.save({"o": storage.as_strided((2, n - 4), (4, 1)), "full": storage, "other": other}, path)
    loaded = torch.load(path, weights_only=True)  # the oracle
    assert (int(loaded["full"].isnan().sum()), int(loaded["full"].isinf().sum())) == (1, 1)

    report = nandoctor.scan(path, device="cpu")
    counts = {t.name: (t.nan, t.posinf, t.neginf) for t in report.tensors}
    assert counts["full"] == (1, 1, 0) and counts["other"] == (1, 0, 0)
    assert counts["o"] == (1, 1, 0)  # (the storage elements within its span: no exact count, so a problem too)
    assert report.exit_code == 3
    assert [e.message for e in report.errors if "tensor 'o' is an overlapping view" in e.message]
    line = nandoctor.verdict.one_line(report)
    assert "finite" not in line, line
    assert not report.unviewed  # (none said to lie in bytes no tensor views: o's span holds them)
    # a storage with no NaN/Inf: such a view holds none for sure, no refusal (exit 0)
    clean = tmp_path / "clean.pt"
    torch.save({"o": torch.zeros(n).as_strided((2, n - 4), (4, 1))}, clean)
    assert nandoctor.scan(clean, device="cpu").exit_code == 0
