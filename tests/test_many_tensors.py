"""Many small tensors: the columnar path (header → RefTable → engine/small.py → TensorResults → JSON) gives
exactly the job path's answers, tensor for tensor, and the planted ones."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

import nandoctor
from fixtures.builders import SPECIALS, RawTensor, bf16_bits, finite_bits, write_safetensors
from nandoctor.engine import scan, small
from nandoctor.engine import work as work_module
from nandoctor.model import TensorResults

FLOATS = {"F32": np.float32, "F64": np.float64, "F16": np.float16}


def _bits(dtype: str, values: np.ndarray) -> np.ndarray:
    """float values as ``dtype``'s bit patterns (BF16 rounded)."""
    if dtype == "BF16":
        return bf16_bits(values.astype(np.float32))
    return values.astype(FLOATS[dtype]).view({"F32": np.uint32, "F64": np.uint64, "F16": np.uint16}[dtype])


def _plant(tmp_path: Path) -> tuple[Path, dict[str, dict]]:
    """A file of ~2,400 small tensors (runs of one dtype, every size from empty up, a few large ones between)
    with NaN/±Inf, outliers, exploded values and zeros planted in known tensors; what each must report."""
    rng = np.random.default_rng(11)
    tensors: dict[str, RawTensor] = {}
    want: dict[str, dict] = {}
    dtypes = ["F32", "BF16", "F16", "F64", "C64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F8_E4M3FNUZ", "I32", "BOOL"]
    for i in range(2400):
        layer, k = divmod(i, 8)
        name = f"model.layers.{layer}.w{k}.weight"
        if i % 397 == 396:  # a large tensor between small ones: a job, and a break in the runs
            tensors[name] = RawTensor("BF16", (40000,), finite_bits("BF16", 40000, rng).tobytes())
            continue
        dtype = dtypes[(i // 23) % len(dtypes)]
        n = [1, 7, 16, 33, 100, 0, 64, 2, 300][(i * 5) % 9]
        bits = finite_bits(dtype, n, rng)
        if dtype in FLOATS or dtype == "BF16":
            values = rng.standard_normal(n) * 0.02
            plan: dict = {}
            kind = i % 13 if n else -1
            if kind == 0:  # NaN, +Inf, -Inf at known places
                where = rng.choice(n, size=min(n, 3), replace=False)
                for special, at in zip((np.nan, np.inf, -np.inf), where):
                    values[at] = special
                plan["bad"] = sorted(int(a) for a in where)
            elif kind == 1 and n >= 64:  # one outlier (1000 ≫ 2^10 × the bulk of ~0.02)
                values[n // 3] = -1000.0 if dtype != "F16" else 600.0
                plan["outlier"] = n // 3
            elif kind == 2 and dtype != "F16":  # exploded: past the 1e5 ceiling
                values[0] = 3e6
                plan["exploded"] = 1
            elif kind == 3:  # all zeros (zeroed when a sibling in another layer is not)
                values[:] = 0.0
                plan["zeroed"] = True
            elif kind == 4 and n > 4:  # some zeros
                values[1:4] = 0.0
            bits = _bits(dtype, values)
            finite = values[np.isfinite(values)]
            want[name] = {
                "nan": int(np.isnan(values).sum()), "posinf": int(np.isposinf(values).sum()),
                "neginf": int(np.isneginf(values).sum()), "first_bad": plan["bad"][0] if "bad" in plan else None,
                "zeros": int((_decoded(dtype, bits) == 0).sum()) if n else 0,
                "max_abs": float(np.abs(_decoded(dtype, bits)[np.isfinite(_decoded(dtype, bits))]).max())
                if finite.size else None,
                "exact": bool(finite.size) or not n,  # an empty tensor's None is exact; an all-NaN one's is not
                **plan,
            }
        elif dtype.startswith("F8") and n and i % 29 == 6 and SPECIALS[dtype]["nan"] is not None:
            bits[n - 1] = SPECIALS[dtype]["nan"]
            want[name] = {"nan": 1, "first_bad": n - 1}
        elif dtype == "C64" and n and i % 31 == 7:
            halves = bits.view(np.float32)
            halves[1] = np.nan  # element 0, imaginary part
            halves[2 * n - 2] = np.inf  # the last element, real part
            want[name] = {"nan": 1, "posinf": 1 if n > 1 else 0, "first_bad": 0}
        elif dtype == "C64" and n > 1 and i % 31 == 8:
            bits.view(np.float32)[:3] = 0.0  # three zero lanes: the census counts zero lanes per element, 3 // 2
            want[name] = {"complex_zeros": 1}
        tensors[name] = RawTensor(dtype, (n,) if i % 4 else (n, 1), bits.tobytes())
    tensors["optimizer.state.0.exp_avg"] = RawTensor("F32", (3,), np.array([0, np.nan, 1], np.float32).tobytes())
    tensors["model.rotary.inv_freq"] = RawTensor("F32", (2,), np.array([0, 1e6], np.float32).tobytes())
    path = tmp_path / "many.safetensors"
    write_safetensors(path, tensors)
    return path, want


def _decoded(dtype: str, bits: np.ndarray) -> np.ndarray:
    if dtype == "BF16":
        return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return bits.view(FLOATS[dtype]).astype(np.float64)


def _untimed(report) -> dict:
    """The report's JSON, its timing left out."""
    data = nandoctor.to_json(report)
    for key in ("seconds", "gb_per_s"):
        del data["summary"][key]
    return data


def _job_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """No tensor is small for the columns: every one goes the job path (which batches small ones itself)."""
    monkeypatch.setattr(small, "SMALL_REGION_BYTES", 0)


@pytest.mark.parametrize("io", ["mmap", "read"])
@pytest.mark.parametrize("parts", [37, work_module.BATCH_PARTS])
def test_columns_and_jobs_agree_tensor_for_tensor_and_find_every_planted_value(tmp_path, monkeypatch, io, parts):
    path, want = _plant(tmp_path)
    monkeypatch.setenv("NANDOCTOR_IO", io)
    monkeypatch.setattr(work_module, "BATCH_PARTS", parts)  # many batches: their bounds everywhere
    columns = scan(path, device="cpu")
    assert columns.tensors._rows.count(None) > 2000  # (most rows never became objects)
    with monkeypatch.context() as m:
        _job_path(m)
        jobs = scan(path, device="cpu")
    assert list(columns.tensors) == list(jobs.tensors)  # every field of every tensor, the refs too
    assert columns.layers == jobs.layers and columns.judgement == jobs.judgement
    assert _untimed(columns) == _untimed(jobs)

    got = {t.name: t for t in columns.tensors}
    assert len(got) == 2402
    zeroed = 0
    for name, w in want.items():
        t = got[name]
        # (an exploded value is the first bad element where the outlier pass read it: a tensor with a bulk)
        first_bad = t.first_bad if not ("exploded" in w and t.first_bad == 0) else None
        assert (t.nan, t.posinf, t.neginf, first_bad) == (
            w.get("nan", 0), w.get("posinf", 0), w.get("neginf", 0), w.get("first_bad")), name
        if "zeros" in w:
            assert (t.zeros, t.max_abs, t.max_abs_exact) == (w["zeros"], w["max_abs"], w["exact"]), name
        if "complex_zeros" in w:
            assert t.zeros == w["complex_zeros"], name
        if "outlier" in w:
            assert t.outliers is not None and (t.outliers.count, t.outliers.first) == (1, w["outlier"]), name
            assert "outlier" in t.findings, name
        if "exploded" in w:
            assert t.exploded == 1 and "exploded" in t.findings, name
        if w.get("zeroed"):
            assert t.max_abs == 0.0 and t.zeros == t.ref.numel and t.findings in ((), ("zeroed",)), name
            zeroed += t.findings == ("zeroed",)
    assert zeroed > 10
    assert sum(1 for w in want.values() if "outlier" in w) > 5 and sum(1 for w in want.values() if "bad" in w) > 20
    assert got["optimizer.state.0.exp_avg"].findings == ("nonfinite",)  # NaN counts in every role but trainer
    assert got["model.rotary.inv_freq"].findings == ()  # a buffer is never exploded
    ints = [t for t in columns.tensors if t.ref.dtype in ("I32", "BOOL")]
    assert ints and all(not t.can_hold_nonfinite and t.max_abs is None and t.max_abs_exact for t in ints)


def test_target_dtype_and_selection_keep_their_answers(tmp_path, monkeypatch):
    """--target-dtype goes the job path (overflow counts); --only/--exclude keep rows of the columns."""
    path, _ = _plant(tmp_path)
    for options in ({"target_dtype": "fp16"}, {"only": ["model.layers.1*"], "exclude": ["*w3*"]}):
        columns = nandoctor.scan(path, device="cpu", **options)
        with monkeypatch.context() as m:
            _job_path(m)
            jobs = nandoctor.scan(path, device="cpu", **options)
        assert list(columns.tensors) == list(jobs.tensors) and _untimed(columns) == _untimed(jobs)
    assert {t.name for t in columns.tensors} == {
        n for n in (t.name for t in jobs.tensors) if n.startswith("model.layers.1") and "w3" not in n}


def test_a_million_rows_need_no_object_each(tmp_path):
    """The bench file's shape at 20,000 tensors: a NaN in every 1,000th, found where it is, and the rows
    without findings never become TensorRef or TensorResult objects."""
    count = 20_000
    header = {f"layers.{i // 8}.w{i % 8}": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
              for i in range(count)}
    text = json.dumps(header, separators=(",", ":")).encode()
    values = np.full(count, 0.5, np.float32)
    values[::1000] = np.nan
    path = tmp_path / "many.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + values.tobytes())
    report = scan(path, device="cpu")
    tensors: TensorResults = report.tensors
    assert [t.name for t in report.bad_tensors] == [f"layers.{i // 8}.w{i % 8}" for i in range(0, count, 1000)]
    assert all(t.first_bad == 0 and t.nan == 1 for t in report.bad_tensors)
    made = len(tensors) - tensors._rows.count(None)
    assert made == 20 and tensors.refs._refs.count(None) == count - 20
    assert report.nan == 20 and report.exit_code == 1 and len(report.layers) == count // 8


# ---------------------------------------------------------------------------------------------
# The pieces: each the same answer as the per-tensor code it replaces


def _header_file(tmp_path: Path, text: str, data: int) -> Path:
    raw = text.encode()
    path = tmp_path / "h.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(data))
    return path


def test_compact_headers_read_as_json_reads_them(tmp_path):
    """parse_compact gives json's columns for the compact form, and None (json decides) for anything else."""
    from nandoctor.readers import safetensors as st
    from nandoctor.readers.compact_header import parse_compact

    rng = np.random.default_rng(5)
    names = ["a", "é.ü", "中文.w", "x y", "tab\\tnot", "q%s", "__metadata", "layers.0.w", "" , "a,b}c"]
    for trial in range(40):
        header: dict = {}
        offset = 0
        if trial % 3 == 0:
            header["__metadata__"] = {"format": "pt", "note": 'say "hi" \\ {}'} if trial % 2 else {}
        for i in range(int(rng.integers(0, 30))):
            dtype = ["F32", "BF16", "F8_E4M3", "I64", "F4", "BOOL"][int(rng.integers(0, 6))]
            shape = [int(d) for d in rng.integers(0, 4, int(rng.integers(0, 3)))]
            numel = int(np.prod(shape)) if shape else 1
            nbytes = numel * {"F32": 4, "BF16": 2, "F8_E4M3": 1, "I64": 8, "F4": 1, "BOOL": 1}[dtype]
            if dtype == "F4":
                shape, nbytes = [2 * numel], numel
            header[f"{names[i % len(names)]}.{i}"] = {"dtype": dtype, "shape": shape,
                                                      "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        compact = json.dumps(header, separators=(",", ":"), ensure_ascii=False)
        text = compact + " " * int(rng.integers(0, 8))
        parsed = parse_compact(text, st._BITS_KEYS)
        want, metadata = st._json_header("p", text)
        wanted = st._json_columns("p", want, metadata, 8 + len(text.encode()), 8 + len(text.encode()) + offset)
        escaped = any("\\" in json.dumps(name, ensure_ascii=False) for name in header if name != "__metadata__")
        assert (parsed is None) == escaped, compact  # a name with an escape: json's path (metadata may have them)
        if parsed is not None:
            assert (parsed.names, parsed.dtypes, parsed.shapes, parsed.metadata) == (
                wanted.names, wanted.dtypes, wanted.shapes, wanted.metadata)
            assert parsed.begins.tolist() == wanted.begins.tolist() and parsed.ends.tolist() == wanted.ends.tolist()
        table, _, got_metadata = st.read_table(_header_file(tmp_path, text, offset))
        assert table.names == wanted.names and got_metadata == metadata
        assert list(table) == [st.SafetensorsReader().read_at(_header_file(tmp_path, text, offset), 0).refs[i]
                               for i in range(len(table))]
    for other in ('{"a": {"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',  # whitespace
                  '{"a":{"shape":[1],"dtype":"F32","data_offsets":[0,4]}}',  # another key order
                  '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}}',  # an extra key
                  '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
                  '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}x', '{"a":{"dtype":"F99","shape":[1],"data_offsets":[0,4]}}',
                  '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,1000000000000000000000]}}'):
        assert parse_compact(other, st._BITS_KEYS) is None, other


@pytest.mark.parametrize("text,data,message", [
    ('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', 8,
     "duplicate key 'a'"),
    ('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}', 8,
     "tensor 'b' at byte 2 overlaps the previous tensor"),
    ('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}', 12,
     "tensor 'b' at byte 8 leaves a hole of 4 bytes"),
    ('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 2, "tensor data needs 4 bytes but the file holds 2"),
    ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}', 4, "shape [2] of F32 needs 8 bytes"),
    ('{"a":{"dtype":"F32","shape":[1],"data_offsets":[9223372036854775808,9223372036854775812]}}', 4,
     "tensor 'a' at byte 9223372036854775808 leaves a hole"),
    ('{"__metadata__":{"a":"b"},"__metadata__":{"a":"b"}}', 0, "duplicate key '__metadata__'"),
])
def test_hostile_headers_fail_as_before(tmp_path, text, data, message):
    """Overlaps, holes, duplicates, lies about sizes: refused with the message they always had (exit 3)."""
    from nandoctor.errors import CorruptCheckpointError
    from nandoctor.readers.safetensors import read_header, read_table

    path = _header_file(tmp_path, text, data)
    for read in (read_header, read_table):
        with pytest.raises(CorruptCheckpointError, match=message.replace("[", r"\[").replace("]", r"\]")):
            read(path)
    assert scan(path, device="cpu").exit_code == 3


def test_roles_and_layers_of_all_names_at_once_are_those_of_each_name():
    from nandoctor.checkpoint.roles import role_of, roles_of
    from nandoctor.layers import _layer, _natural_order, layer_groups, natural_key

    rng = np.random.default_rng(2)
    words = ["model", "layers", "h", "blk", "0", "12", "05", "weight", "bias", "attn", "attention", "optimizer",
             "callbacks", "ModelCheckpoint{'m'}", "inv_freq", "state", "", "lr_scheduler", "x\ry", "optim_state"]
    for trial in range(300):
        names = [".".join(rng.choice(words, int(rng.integers(1, 6)))) for _ in range(int(rng.integers(0, 40)))]
        if trial % 10 == 0:
            names.append("with\na line break.h.3.inv_freq")
        assert roles_of(names) == [role_of(n) for n in names]
        assert roles_of(names, "optimizer.pt") == ["optimizer"] * len(names)
        groups, keys = layer_groups(names)
        each = [_layer(n) for n in names]
        assert groups == [g for g, _, _ in each]
        assert all(keys[g] == (stack, index) for g, stack, index in each)
        distinct = list(dict.fromkeys(groups))
        assert _natural_order(distinct, keys) == sorted(distinct, key=natural_key)


def test_magnitudes_decode_as_one_by_one():
    from nandoctor.dtypes import DTYPES
    from nandoctor.kernels.census import decode_magnitudes, lane_info
    from nandoctor.kernels.targets import decode_magnitude

    rng = np.random.default_rng(0)
    for spec in DTYPES.values():
        if not spec.can_hold_nonfinite:
            continue
        limit = lane_info(spec, 1e5).limit
        bits = np.arange(limit) if limit <= 1 << 16 else rng.integers(0, limit, 5000)
        assert decode_magnitudes(spec, bits).tolist() == [decode_magnitude(spec, int(b)) for b in bits], spec.name


def test_batch_bounds_close_where_a_batch_of_parts_closes():
    def one_by_one(sizes, chunk):
        bounds, first, held = [], 0, 0
        for i, size in enumerate(sizes):
            held += size
            if held >= chunk or i + 1 - first >= work_module.BATCH_PARTS:
                bounds.append((first, i + 1))
                first, held = i + 1, 0
        return bounds + ([(first, len(sizes))] if first < len(sizes) else [])

    rng = np.random.default_rng(4)
    for _ in range(200):
        sizes = rng.choice([0, 1, 4, 100, 4000, 65535], int(rng.integers(0, 3000))).tolist()
        chunk = int(rng.choice([1, 100, 4096, 1 << 22]))
        assert work_module.batch_bounds(sizes, chunk) == one_by_one(sizes, chunk)


def test_a_ceiling_below_the_high_level_counts_exploded_values_of_small_tensors_side_by_side(tmp_path):
    """--max-abs 1: 1.5 is exploded in a small tensor read with its neighbours as when read alone (it used to
    be counted only alone: the batch's census looked for exploded values from the high level, 2.0, up)."""
    values = {f"a.{i}.w": np.array([0.5, 1.5 if i == 3 else 0.25], np.float32) for i in range(6)}
    together = tmp_path / "together.safetensors"
    write_safetensors(together, {name: RawTensor("F32", (2,), v.tobytes()) for name, v in values.items()})
    alone = tmp_path / "alone.safetensors"
    write_safetensors(alone, {"a.3.w": RawTensor("F32", (2,), values["a.3.w"].tobytes())})
    for path in (together, alone):
        report = nandoctor.scan(path, device="cpu", max_abs=1.0)
        got = {t.name: (t.exploded, t.findings) for t in report.tensors}
        assert got["a.3.w"] == (1, ("exploded",)) and report.exit_code == 1
        assert all(found == (0, ()) for name, found in got.items() if name != "a.3.w")
