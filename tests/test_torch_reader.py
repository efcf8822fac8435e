"""The torch reader against torch itself: files made by torch.save (zip and legacy), planted NaN/Inf,
exact counts per tensor compared with torch.load + isnan/isposinf/isneginf."""

from __future__ import annotations

import collections
import json
import math
import os
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nandoctor.engine import scan
from nandoctor.readers import reader_for
from nandoctor.readers.torch.file import TorchReader
from tests.torch_helpers import (
    flatten,
    legacy_file,
    p_dict,
    p_int,
    p_storage,
    p_str,
    p_tensor,
    p_tuple,
    pickle_bytes,
    report_counts,
    torch_counts,
    write_zip,
)

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
NAN, INF = float("nan"), float("inf")
DATA = Path(__file__).resolve().parent / "data"


def planted_state_dict() -> dict:
    """Every kind of tensor torch writes, with NaN/Inf at known places."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 16, generator=g)
    w[2, 5], w[7, 0], w[0, 15] = NAN, INF, -INF
    emb = torch.randn(10, 4, generator=g)
    emb[3, 1] = NAN
    big = torch.zeros(100)
    big[95] = NAN  # outside the saved slice: only the storage holds it
    big[4] = INF
    sd = collections.OrderedDict()
    sd["model.layers.0.mlp.up_proj.weight"] = w
    sd["model.layers.0.mlp.up_proj.weight_t"] = w.t()  # transposed view of the same storage
    sd["model.layers.0.slice"] = w[1:4, 3:9]  # non-contiguous slice holding w[2, 5]
    sd["model.layers.0.column"] = w[:, 0]  # strided column holding w[7, 0]
    sd["transformer.wte.weight"] = emb
    sd["lm_head.weight"] = emb  # tied: the same tensor under two names
    sd["tied_flat"] = emb.view(-1)  # another tensor on the same storage
    sd["head"] = big[:10]  # a slice saved alone: the whole 100-float storage is written
    sd["half"] = torch.tensor([1.0, NAN, -INF, INF, 2.0], dtype=torch.float16)
    sd["bf16_param"] = torch.nn.Parameter(torch.tensor([NAN, 1.0, INF, NAN], dtype=torch.bfloat16))
    sd["f64"] = torch.tensor([[0.0, -INF], [NAN, 1.0]], dtype=torch.float64)
    sd["c64"] = torch.tensor([complex(NAN, 1.0), complex(1.0, INF), 3 + 0j], dtype=torch.complex64)
    sd["c128"] = torch.tensor([complex(0.0, -INF)], dtype=torch.complex128)
    sd["fp8_e4m3"] = torch.tensor([0.5, NAN, 1.0], dtype=torch.float32).to(torch.float8_e4m3fn)
    sd["fp8_e5m2"] = torch.tensor([INF, -INF, NAN, 0.25], dtype=torch.float32).to(torch.float8_e5m2)
    sd["ints"] = torch.arange(6, dtype=torch.int64).reshape(2, 3)
    sd["mask"] = torch.tensor([True, False])
    sd["u16"] = torch.tensor([1, 2, 3], dtype=torch.int32).to(torch.uint16)
    sd["nested"] = {"list": [torch.tensor([NAN]), (torch.tensor([1.0, INF]), "text")], 7: torch.ones(2)}
    return sd


def _first_bad(t) -> int | None:
    if t.is_complex():
        flat = torch.view_as_real(t).reshape(-1, 2)
        bad = ~torch.isfinite(flat).all(dim=1)
    elif t.is_floating_point():
        bad = ~torch.isfinite(t.float().reshape(-1))
    else:
        return None
    idx = torch.nonzero(bad)
    return int(idx[0]) if len(idx) else None


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_counts_match_torch_for_every_tensor(tmp_path: Path, zip_format: bool) -> None:
    path = tmp_path / "pytorch_model.bin"
    sd = planted_state_dict()
    if not zip_format:  # torch cannot load these back from a legacy file, so there is no oracle
        for name in ("fp8_e4m3", "fp8_e5m2", "u16"):
            del sd[name]
    torch.save(sd, path, _use_new_zipfile_serialization=zip_format)
    report = scan(path, device="cpu")
    loaded = flatten(torch.load(path, weights_only=True))

    assert not report.errors
    assert report_counts(report) == {name: torch_counts(t) for name, t in loaded.items()}
    by_name = {t.name: t for t in report.tensors}
    for name, t in loaded.items():
        assert by_name[name].ref.shape == tuple(t.shape), name
        assert by_name[name].first_bad == _first_bad(t), name
    # The planted values, spelled out (a wrong oracle would not hide a wrong reader).
    assert report_counts(report)["model.layers.0.mlp.up_proj.weight"] == (1, 1, 1)
    assert report_counts(report)["model.layers.0.slice"] == (1, 0, 0)
    assert report_counts(report)["model.layers.0.column"] == (0, 1, 0)
    assert by_name["model.layers.0.mlp.up_proj.weight_t"].first_bad_coords == (0, 7)  # w[7, 0] = +Inf
    assert report_counts(report)["lm_head.weight"] == report_counts(report)["transformer.wte.weight"] == (1, 0, 0)
    assert report_counts(report)["head"] == (0, 1, 0)
    if zip_format:
        assert report_counts(report)["fp8_e4m3"] == (1, 0, 0)
        assert report_counts(report)["fp8_e5m2"] == (1, 1, 1)
    assert report_counts(report)["nested.list.1.0"] == (0, 1, 0)
    assert report_counts(report)["nested.7"] == (0, 0, 0)
    # Bytes no tensor views: big[95] is only in the storage.
    assert [(u.nan, u.posinf, u.neginf) for u in report.unviewed] == [(1, 0, 0)]
    # Totals count tied copies once: lm_head.weight and tied_flat are transformer.wte.weight's elements, and
    # weight_t is up_proj.weight's elements in another order.
    tied = {"lm_head.weight", "tied_flat", "model.layers.0.mlp.up_proj.weight_t"}
    assert report.nan == sum(c[0] for n, c in report_counts(report).items() if n not in tied) + 1
    assert len(report.bad_tensors) - len(report.distinct_bad_tensors) == 3
    assert report.exit_code == 1


def test_dtypes_and_views_map_onto_storage_regions(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(planted_state_dict(), path)
    refs = {r.name: r for r in TorchReader().read(path).refs}
    expected = {
        "half": "F16", "bf16_param": "BF16", "f64": "F64", "c64": "C64", "c128": "C128",
        "fp8_e4m3": "F8_E4M3", "fp8_e5m2": "F8_E5M2", "ints": "I64", "mask": "BOOL", "u16": "U16",
        "head": "F32",
    }
    assert {n: refs[n].dtype for n in expected} == expected
    # Tied weights and views share one Region object: the engine reads the storage once.
    assert refs["lm_head.weight"].region is refs["transformer.wte.weight"].region is refs["tied_flat"].region
    slice_ref = refs["model.layers.0.slice"]
    assert (slice_ref.storage_offset, slice_ref.strides) == (1 * 16 + 3, (16, 1))
    assert refs["model.layers.0.mlp.up_proj.weight_t"].strides == (1, 16)
    assert refs["head"].region.nbytes == 400 and refs["head"].shape == (10,)
    # The region is the storage's bytes, in place: reading them gives torch's values.
    with zipfile.ZipFile(path) as z:
        raw = z.read(next(n for n in z.namelist() if n.endswith(f"/{refs['half'].region.key}")))
    with open(path, "rb") as fh:
        fh.seek(refs["half"].region.offset)
        assert fh.read(refs["half"].region.nbytes) == raw


def test_real_old_legacy_file() -> None:
    """A file torch 0.4-era code wrote (Python 2 strings, cuda:0 storages), shipped by lpips."""
    path = DATA / "legacy" / "lpips-v0.1-alex.pth"
    report = scan(path, device="cpu")
    loaded = flatten(torch.load(path, weights_only=True, map_location="cpu"))
    assert not report.errors
    assert report_counts(report) == {n: torch_counts(t) for n, t in loaded.items()}
    assert [t.ref.shape for t in report.tensors] == [tuple(t.shape) for t in loaded.values()]
    assert any("legacy" in n for n in report.notes)


def test_legacy_storage_views_like_old_torch(tmp_path: Path) -> None:
    """Old torch wrote storage views as (view key, offset, size) in the persistent id."""
    root = np.arange(10, dtype=np.float32)
    root[7] = np.nan
    root[1] = np.inf
    view = p_tuple([p_str("v1"), p_int(4), p_int(6)])
    obj = pickle_bytes(p_dict([
        (p_str("whole"), p_tensor(p_storage("r", 10, legacy=True), 0, (10,), (1,))),
        (p_str("windowed"), p_tensor(p_storage("r", 10, legacy=True, legacy_view=view), 1, (3,), (1,))),
    ]))
    path = legacy_file(tmp_path / "old.pt", obj, [("r", root.tobytes(), 10)])
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["windowed"].isnan(), torch.tensor([False, False, True]))  # the oracle agrees
    report = scan(path, device="cpu")
    assert report_counts(report) == {"whole": (1, 1, 0), "windowed": (1, 0, 0)}
    assert {t.name: t.first_bad for t in report.tensors} == {"whole": 1, "windowed": 2}


def _swap(raw: bytes, width: int) -> bytes:
    return np.frombuffer(raw, dtype=f"<u{width}").astype(f">u{width}").tobytes() if width > 1 else raw


def test_big_endian_file_is_byteswapped(tmp_path: Path) -> None:
    values = {
        "f32": torch.tensor([1.0, NAN, -INF, 2.0]),
        "bf16": torch.tensor([INF, 1.0, NAN], dtype=torch.bfloat16),
        "c64": torch.tensor([complex(1.0, NAN)], dtype=torch.complex64),
        "f64": torch.tensor([-INF, 0.5], dtype=torch.float64),
    }
    little = tmp_path / "little.pt"
    torch.save(values, little)
    # Which storage holds which tensor: torch.save numbers storages in order of first use.
    lanes = {"0": 4, "1": 2, "2": 4, "3": 8}
    items = []
    with zipfile.ZipFile(little) as z:
        for info in z.infolist():
            data = z.read(info.filename)
            tail = info.filename.split("/", 1)[1]
            if tail == "byteorder":
                data = b"big"
            elif tail.startswith("data/"):
                data = _swap(data, lanes[tail[5:]])
            items.append((info.filename, data))
    big = tmp_path / "big.pt"
    write_zip(big, items)
    loaded = torch.load(big, weights_only=True)  # torch swaps back: the oracle
    assert torch.isnan(loaded["f32"][1]) and torch.isneginf(loaded["f32"][2])
    report = scan(big, device="cpu")
    assert not report.errors
    assert report_counts(report) == {n: torch_counts(t) for n, t in loaded.items()}
    assert report_counts(report)["f32"] == (1, 0, 1)
    assert all(t.ref.region.byteorder == "big" for t in report.tensors)


def test_optimizer_state_named_per_parameter(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model(torch.randn(5, 4)).sum().backward()
    plain = torch.optim.Adam(model.parameters())
    named = torch.optim.Adam(model.named_parameters())
    for opt in (plain, named):
        opt.step()
    state = plain.state_dict()
    state["state"][1]["exp_avg_sq"][0] = NAN
    state["state"][2]["exp_avg"][1, 1] = INF
    (tmp_path / "a").mkdir()
    torch.save(state, tmp_path / "a" / "optimizer.pt")
    report = scan(tmp_path / "a" / "optimizer.pt", device="cpu")
    counts = report_counts(report)
    assert counts["optimizer.state.1.exp_avg_sq"] == (1, 0, 0)
    assert counts["optimizer.state.2.exp_avg"] == (0, 1, 0)
    assert "optimizer.state.0.step" in counts
    expected = flatten(torch.load(tmp_path / "a" / "optimizer.pt", weights_only=True), "optimizer")
    assert counts == {n: torch_counts(t) for n, t in expected.items()}

    nstate = named.state_dict()
    assert nstate["param_groups"][0]["param_names"] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    nstate["state"][1]["exp_avg_sq"][0] = NAN
    torch.save(nstate, tmp_path / "opt.pt")  # not a Trainer side file: no prefix
    report = scan(tmp_path / "opt.pt", device="cpu")
    counts = report_counts(report)
    assert counts["state.0.bias.exp_avg_sq"] == (1, 0, 0)
    assert {n for n in counts if n.startswith("state.")} == {
        f"state.{p}.{m}" for p in ("0.weight", "0.bias", "1.weight", "1.bias") for m in ("step", "exp_avg", "exp_avg_sq")
    }
    assert any("param_names" in n for n in report.notes)


def test_lightning_checkpoint_with_unknown_classes(tmp_path: Path) -> None:
    """A .ckpt carrying a user class (as Lightning's hparams do): a placeholder, never imported."""
    module = tmp_path / "user_hparams_mod.py"
    marker = tmp_path / "imported.marker"
    module.write_text(textwrap.dedent(f"""
        import pathlib
        if pathlib.Path({str(tmp_path)!r}, "armed").exists():
            pathlib.Path({str(marker)!r}).write_text("the reader imported me")
        class AttributeDict(dict):
            pass
        class Config:
            def __init__(self):
                self.lr = 0.1
    """))
    ckpt = tmp_path / "epoch=3.ckpt"
    save = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(tmp_path)!r})
        import user_hparams_mod as m
        lin = torch.nn.Linear(3, 2)
        with torch.no_grad():
            lin.weight[1, 2] = float("nan")
        opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
        lin(torch.randn(2, 3)).sum().backward(); opt.step()
        hp = m.AttributeDict(lr=0.1, config=m.Config())
        torch.save({{"epoch": 3, "global_step": 12, "state_dict": {{"model." + k: v for k, v in lin.state_dict().items()}},
                    "optimizer_states": [opt.state_dict()], "hparams_type": m.AttributeDict,
                    "hyper_parameters": hp}}, {str(ckpt)!r})
    """)
    subprocess.run([sys.executable, "-c", save], check=True, cwd=tmp_path)
    (tmp_path / "armed").write_text("")
    report = scan(ckpt, device="cpu")
    assert not marker.exists() and "user_hparams_mod" not in sys.modules
    counts = report_counts(report)
    assert counts["state_dict.model.weight"] == (1, 0, 0)
    assert "optimizer_states.0.state.0.momentum_buffer" in counts
    assert not report.errors and report.exit_code == 1
    note = next(n for n in report.notes if "placeholder" in n)
    assert "user_hparams_mod.AttributeDict" in note and "user_hparams_mod.Config" in note


def test_tensors_inside_unknown_objects_are_found(tmp_path: Path) -> None:
    """A tensor held by an unknown class is still scanned (walked through the placeholder)."""
    obj = pickle_bytes(p_dict([
        (p_str("holder"), b"c" + b"somepkg.mod\nHolder\n" + b")\x81"  # NEWOBJ with no args
         + p_dict([(p_str("weight"), p_tensor(p_storage("0", 2), 0, (2,), (1,)))]) + b"b"),  # BUILD
    ]))
    path = tmp_path / "holder.pt"
    from tests.torch_helpers import torch_zip

    torch_zip(path, obj, {"0": np.array([NAN, 1.0], dtype=np.float32).tobytes()})
    report = scan(path, device="cpu")
    assert report_counts(report) == {"holder.weight": (1, 0, 0)}
    assert any("somepkg.mod.Holder" in n for n in report.notes)


def test_rng_state_with_numpy_globals(tmp_path: Path) -> None:
    import random

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    path = tmp_path / "rng_state.pth"
    torch.save(state, path)
    with pytest.raises(Exception):  # torch's safe loader refuses it: that is why placeholders exist
        torch.load(path, weights_only=True)
    report = scan(path, device="cpu")
    assert not report.errors and report.exit_code == 0
    assert [(t.name, t.ref.dtype) for t in report.tensors] == [("rng_state.cpu", "U8")]
    assert not any("placeholder" in n for n in report.notes)  # expected in every Trainer checkpoint: no note
    other = tmp_path / "extra.pt"  # numpy arrays anywhere else are worth a note: nandoctor does not scan them
    torch.save(state, other)
    assert any("numpy" in n and "placeholder" in n for n in scan(other, device="cpu").notes)


def test_tensor_saved_alone_and_registry(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"  # misnamed: the content decides the reader
    torch.save(torch.tensor([1.0, NAN]), path)
    assert reader_for(path).format_name == "torch"
    report = scan(path, device="cpu")
    assert report_counts(report) == {"tensor": (1, 0, 0)}


def _zip64_everywhere(src: Path, dst: Path) -> None:
    """Re-write a torch zip with every size and offset in ZIP64 fields (what torch does past 4 GB)."""
    out, central = bytearray(), bytearray()
    with zipfile.ZipFile(src) as z:
        infos = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    for name, data in infos:
        raw = name.encode()
        crc = zipfile.crc32(data)
        offset = len(out)
        local_extra = struct.pack("<HHQQ", 1, 16, len(data), len(data))
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 45, 0, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                           len(raw), len(local_extra)) + raw + local_extra + data
        extra = struct.pack("<HHQQQ", 1, 24, len(data), len(data), offset)
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 45, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF,
                               0xFFFFFFFF, len(raw), len(extra), 0, 0, 0, 0, 0xFFFFFFFF) + raw + extra
    cd_offset = len(out)
    out += central
    z64_at = len(out)
    out += struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, len(infos), len(infos), len(central), cd_offset)
    out += struct.pack("<4sIQI", b"PK\x06\x07", 0, z64_at, 1)
    out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    dst.write_bytes(bytes(out))


def test_zip64_records(tmp_path: Path) -> None:
    src, dst = tmp_path / "small.pt", tmp_path / "zip64.pt"
    torch.save({"a": torch.tensor([NAN, 1.0, INF]), "b": torch.ones(3, dtype=torch.float16)}, src)
    _zip64_everywhere(src, dst)
    with zipfile.ZipFile(dst) as z:  # Python's zip reader and torch accept it: the oracle
        assert z.testzip() is None
    loaded = torch.load(dst, weights_only=True)
    report = scan(dst, device="cpu")
    assert not report.errors
    assert report_counts(report) == {n: torch_counts(t) for n, t in loaded.items()} == {
        "a": (1, 1, 0), "b": (0, 0, 0)}


def test_reader_works_without_torch(tmp_path: Path) -> None:
    zip_path, legacy_path = tmp_path / "z.bin", tmp_path / "l.bin"
    sd = {"w": torch.tensor([[1.0, NAN], [INF, 2.0]]).t(), "p": torch.nn.Parameter(torch.tensor([-INF]))}
    torch.save(sd, zip_path)
    torch.save(sd, legacy_path, _use_new_zipfile_serialization=False)
    code = textwrap.dedent(f"""
        import json, sys
        sys.modules["torch"] = None  # any `import torch` now fails
        from nandoctor.engine import scan
        out = {{}}
        for p in ({str(zip_path)!r}, {str(legacy_path)!r}):
            r = scan(p, device="cpu")
            out[p] = [[t.name, t.nan, t.posinf, t.neginf, t.first_bad] for t in r.tensors] + [len(r.errors)]
        print(json.dumps(out))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    out = json.loads(result.stdout)
    # w = [[1, nan], [inf, 2]].t() = [[1, inf], [nan, 2]]: +Inf at flat index 1 comes first.
    expected = [["w", 1, 1, 0, 1], ["p", 0, 0, 1, 0], 0]
    assert out[str(zip_path)] == out[str(legacy_path)] == expected


def test_cli_scan_of_a_bin(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from nandoctor.cli import cli

    clean, bad = tmp_path / "clean.bin", tmp_path / "bad.bin"
    torch.save({"w": torch.ones(4)}, clean)
    torch.save({"model.layers.3.mlp.up_proj.weight": torch.tensor([NAN, 1.0])}, bad)
    runner = CliRunner()
    assert runner.invoke(cli, ["scan", str(clean), "--no-progress"]).exit_code == 0
    result = runner.invoke(cli, ["scan", str(bad), "--no-progress", "--json"])
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert [(t["name"], t["nan"]) for t in data["tensors"]] == [("model.layers.3.mlp.up_proj.weight", 1)]
    assert math.isclose(data["summary"]["nan"], 1)


def test_random_views_match_torch(tmp_path: Path) -> None:
    """Slices with steps, permutes and narrow views of random shapes: counts and first bad element as torch says."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=30, deadline=None, derandomize=True)
    @hypothesis.given(
        shape=st.lists(st.integers(1, 6), min_size=1, max_size=3),
        plants=st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from([NAN, INF, -INF])), max_size=6),
        dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
        steps=st.lists(st.integers(1, 3), min_size=3, max_size=3),
        starts=st.lists(st.integers(0, 3), min_size=3, max_size=3),
        perm_seed=st.integers(0, 5),
        keep_base=st.booleans(),
    )
    def check(shape, plants, dtype, steps, starts, perm_seed, keep_base) -> None:
        base = torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape)
        flat = base.view(-1)
        for pos, value in plants:
            flat[pos % flat.numel()] = value
        base = base.to(dtype)
        view = base[tuple(slice(min(a, n - 1), None, s) for a, s, n in zip(starts, steps, base.shape))]
        dims = list(range(view.dim()))
        dims = dims[perm_seed % len(dims):] + dims[: perm_seed % len(dims)]
        view = view.permute(*dims)
        sd = {"view": view, "base": base} if keep_base else {"view": view}
        path = tmp_path / "v.pt"
        torch.save(sd, path)
        report = scan(path, device="cpu")
        loaded = torch.load(path, weights_only=True)
        assert report_counts(report) == {n: torch_counts(t) for n, t in loaded.items()}
        assert {t.name: t.first_bad for t in report.tensors} == {n: _first_bad(t) for n, t in loaded.items()}
        seen_by_base = torch_counts(base)
        unviewed = (sum(u.nan for u in report.unviewed), sum(u.posinf for u in report.unviewed),
                    sum(u.neginf for u in report.unviewed))
        expected_unviewed = (0, 0, 0) if keep_base else tuple(a - b for a, b in zip(seen_by_base, torch_counts(view)))
        assert unviewed == expected_unviewed

    check()


def test_a_bad_crc_is_a_problem_of_the_read(tmp_path: Path) -> None:
    """A corrupt storage is reported with the read, so no caller can take its tensors as sound."""
    from tests.torch_helpers import entry_offset, flip_byte

    path = tmp_path / "donor.pt"
    torch.save({"w": torch.ones(4)}, path)
    read = TorchReader().read(path)
    assert [r.name for r in read.refs] == ["w"] and not read.problems
    flip_byte(path, entry_offset(path, "/data/0"))
    assert any("CRC-32" in p.message for p in TorchReader().read(path).problems)


def test_tensor_kept_as_numpy_is_reported_unread(tmp_path: Path) -> None:
    """XLA/MPS tensors are saved as numpy copies, not storages: the file is not called clean."""
    from tests.torch_helpers import p_call, p_global, torch_zip

    blob = pickle_bytes(p_dict([
        (p_str("w"), p_call(p_global("torch._utils", "_rebuild_device_tensor_from_numpy"),
                            [p_str("numpy bytes"), p_global("torch", "float32"), p_str("xla:0"), b"\x89"])),
    ]))
    report = scan(torch_zip(tmp_path / "xla.pt", blob, {}), device="cpu")
    assert report.exit_code == 3
    assert "_rebuild_device_tensor_from_numpy" in report.errors[0].message


def test_complex32_counts_each_element_once(tmp_path: Path) -> None:
    """torch.complex32 (chalf) is two fp16 lanes an element; torch saves it with _rebuild_tensor_v3.
    An element with a NaN real part and an infinite imaginary one is one NaN element, never two findings."""
    real = torch.randn(40, 3)
    imag = torch.randn(40, 3)
    real[2, 1], imag[2, 1], imag[7, 0], real[30, 2] = float("nan"), float("inf"), -float("inf"), 500.0
    c = torch.complex(real, imag).to(torch.complex32)
    path = tmp_path / "chalf.pt"
    torch.save({"c": c, "c_t": c.T}, path)
    report = scan(path, device="cpu", target_dtype="fp8_e4m3")
    loaded = torch.load(path, weights_only=True)
    assert report_counts(report) == {n: torch_counts(t) for n, t in loaded.items()} == {"c": (1, 0, 1), "c_t": (1, 0, 1)}
    by_name = {t.name: t for t in report.tensors}
    assert by_name["c"].ref.dtype == "C32" and by_name["c"].first_bad == 2 * 3 + 1
    assert by_name["c_t"].first_bad == 0 * 40 + 7  # c[7, 0] comes first in the transposed view's C order
    assert by_name["c"].overflow == 1 and by_name["c"].max_abs == 500.0  # 500 > 464: lost in fp8_e4m3


def test_a_whole_pickled_module_is_named_as_its_state_dict(tmp_path):
    """``torch.save(model)`` pickles ``model._modules["0"]._parameters["weight"]``; the report names it
    ``0.weight``, as ``model.state_dict()`` (and a user) does, with exact counts."""
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        model[0].weight[1, 2] = float("nan")
        model[2].weight[0, 0] = float("-inf")
    path = tmp_path / "model.pt"
    torch.save(model, path)
    from nandoctor import scan

    report = scan(path, device="cpu")
    assert [t.name for t in report.tensors] == list(model.state_dict())
    assert {t.name: (t.nan, t.neginf, t.first_bad) for t in report.tensors if t.nan or t.neginf} == {
        "0.weight": (1, 0, 6), "2.weight": (0, 1, 0)}


def test_a_transposed_view_of_the_same_elements_is_counted_once_in_the_totals(tmp_path: Path) -> None:
    """``w`` and ``w.t()`` (and a permuted 3-d view) saved together view the same elements: each is listed with
    its own counts, the totals count them once; a slice (partly overlapping) is added, as documented."""
    full = torch.zeros(6, 4)
    full[1, 2] = NAN
    full[4, 0] = float("inf")
    cube = torch.zeros(2, 3, 4)
    cube[1, 2, 3] = NAN
    path = tmp_path / "views.pt"
    torch.save({"full": full, "t": full.t(), "slice": full[3:], "cube": cube, "perm": cube.permute(2, 0, 1)}, path)
    report = scan(path, device="cpu")
    counts = report_counts(report)
    assert counts["t"] == counts["full"] == (1, 1, 0) and counts["slice"] == (0, 1, 0)
    assert counts["perm"] == counts["cube"] == (1, 0, 0)
    assert (report.nan, report.posinf) == (1 + 1, 1 + 1)  # full once, its slice added, cube once
