"""The fast indented JSON writer matches ``json.dumps(indent=2)`` byte for byte, iterators included."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from nandoctor.report.jsontext import iter_json


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randint(-(10**20), 10**20)
    if kind == 2:
        return rng.choice([0.0, -0.0, 1.5e-300, float("nan"), float("inf"), -float("inf"), rng.random()])
    if kind == 3:
        return "".join(chr(rng.randrange(0, 0x3000)) for _ in range(rng.randrange(5)))
    if kind in (4, 5):
        return rng.randint(0, 3) if kind == 4 else ""
    if kind == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 7:
        return tuple(_random_value(rng, depth + 1) for _ in range(rng.randrange(3)))
    keys = ["a", "b\n", "é", '"q"', 1, 2.5, True, None]
    return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def test_matches_json_dumps_on_random_values() -> None:
    rng = random.Random(1)
    for _ in range(2000):
        value = _random_value(rng)
        assert "".join(iter_json(value)) == json.dumps(value, indent=2)


def test_iterators_are_encoded_as_lists() -> None:
    data = {"a": [1, {"x": []}], "t": ({"n": i} for i in range(3)), "e": iter([])}
    want = {"a": [1, {"x": []}], "t": [{"n": i} for i in range(3)], "e": []}
    assert "".join(iter_json(data)) == json.dumps(want, indent=2)


def test_refuses_what_json_refuses() -> None:
    for bad in ({"x": object()}, {(1, 2): 3}):
        try:
            "".join(iter_json(bad))
        except TypeError:
            continue
        raise AssertionError(f"{bad!r} was encoded")


def test_lazy_tensor_entries_match_the_report_dicts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The CLI's lazy report writes the common tensor entry straight from the result: the same bytes."""
    import numpy as np

    import nandoctor
    from nandoctor.report.json_report import report_to_json

    values = {
        "clean": np.array([0.5, -2.0], np.float32),
        "nan": np.array([1.0, np.nan], np.float32),
        "zero": np.zeros((2, 3), np.float32),
        "ints": np.arange(4, dtype=np.int32),
        "scalar": np.array(3.0, np.float32),
        "empty": np.zeros((0,), np.float32),
        "big": np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32),
    }
    report = nandoctor.scan_state_dict(values)
    lazy = "".join(iter_json(report_to_json(report, lazy=True)))
    assert lazy == json.dumps(report_to_json(report), indent=2)
    report = nandoctor.scan(str(Path(__file__).resolve().parent.parent / "fixtures" / "dtype-zoo.safetensors"))
    assert "".join(iter_json(report_to_json(report, lazy=True))) == json.dumps(report_to_json(report), indent=2)


def test_column_batches_write_what_the_dicts_write() -> None:
    """The tensor list written a batch at a time from the columns (a field with one value across a batch
    written once): the same bytes as the dicts, whatever odd value sits in a column."""
    import dataclasses

    import numpy as np

    from nandoctor.model import Outliers, Region, ScanReport, TensorRef, TensorResult
    from nandoctor.report.json_report import report_to_json
    from nandoctor.verdict import judged

    rng = random.Random(3)

    def result(i: int) -> TensorResult:
        name = rng.choice(["a", "b%s", "100%", "é\n\"x\"", "layers.3.w"]) + f".{i}"
        shape = rng.choice([(1,), (2, 3), (), (0,), (True,), (1.0,)]) if i % 97 == 0 else (i % 3 + 1,)
        ref = TensorRef(name, "F32", shape, Region("f%.safetensors", 4 * i, 4, "F32", name))
        value = rng.choice([0.0, -0.0, 0.5, 2.5e-40, float("nan"), float("inf"), None, np.float64(0.25)]) \
            if i % 13 == 0 else 0.125
        fields = {"max_abs": value, "zeros": True if i % 401 == 0 else i % 2, "bulk_scale": None if i % 5 else 0.5}
        if i % 211 == 0:
            fields["outliers"] = Outliers(1, -3.5, 0, 2.0)
        if i % 307 == 0:
            fields.update(nan=1, first_bad=0)
        return dataclasses.replace(TensorResult(ref), **fields)

    for count in (1, 5, 1100, 2100):
        rows = [result(i) for i in range(count)]
        report = judged(ScanReport("t", ("f",), tuple(rows), ()))
        assert "".join(iter_json(report_to_json(report, lazy=True))) == json.dumps(report_to_json(report), indent=2)
    assert "".join(iter_json([{"x": report_to_json(report, lazy=True)["tensors"]}])) == json.dumps(
        [{"x": report_to_json(report)["tensors"]}], indent=2)  # the list deeper than the report puts it
