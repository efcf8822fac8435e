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
