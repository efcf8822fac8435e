"""`nandoctor merge` of part files with a key dropped or retyped at every level merge reads: refused with exit 3
naming the file and what is wrong, never an internal error (the tester's 40+ TypeError/KeyError/AttributeError)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fixtures.builders import RawTensor, write_safetensors
from nandoctor.engine import split
from nandoctor.engine.parts import Options, PartSpec, scan_part
from tests.conftest import run_cli

REFUSED = "not a nandoctor part"


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The two real parts of a checkpoint whose 16 MiB tensor is cut across them (shares, census, tally) beside
    a tensor with +Inf and an outlier (a tensor result with ``outliers``)."""
    folder = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(0)
    big = rng.standard_normal(4 << 20).astype(np.float32)
    big[100], big[3 << 20] = np.nan, 3e4
    mid = rng.standard_normal(1 << 16).astype(np.float32)
    mid[7], mid[9] = 3e4, np.inf
    path = folder / "model.safetensors"
    write_safetensors(path, {"a.big": RawTensor("F32", big.shape, big.tobytes()),
                             "b.mid": RawTensor("F32", mid.shape, mid.tobytes())})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(split, "CUT_BYTES", 8 << 20)  # (64 MiB in use: the test file stays small)
        made = [json.loads(json.dumps(scan_part(path, PartSpec(i, 2), Options(), device="cpu"))) for i in range(2)]
    assert made[0]["shares"] and made[1]["shares"] and made[1]["tensors"][0]["outliers"] is not None
    return made


def with_every_list_filled(part: dict[str, Any]) -> dict[str, Any]:
    """``part`` with one entry in each list a real part of this checkpoint leaves empty, as a scan writes them
    (unviewed storage bytes, problems, experts, a share's histogram), so that their keys are fuzzed too."""
    part = copy.deepcopy(part)
    part["unviewed"] = [{"file": part["target"], "storage": "3", "nan": 1, "posinf": 0, "neginf": 0, "kind": "storage"}]
    problem = {"path": part["target"], "message": "cannot read it", "hint": "check it", "kind": "unreadable",
               "tensors": ["a.weight"]}
    part["problems"], part["checkpoint_problems"] = [problem], [dict(problem)]
    part["tensors"][0]["experts"] = [1, 0]
    part["shares"][0]["census"]["histogram"] = [0] * 256  # F32: 2^8 biased exponents
    return part


def keys(value: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every value in ``value`` (a list: its first item stands for all)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*at, key)
            yield from keys(item, (*at, key))
    elif isinstance(value, list) and value:
        yield (*at, 0)
        yield from keys(value[0], (*at, 0))


def retyped(value: Any) -> Any:
    """A value of another JSON type, which no key of a part allows."""
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return 7
    if value is None:
        return "none"
    return [1] if isinstance(value, dict) else {"x": 1}


def merged(tmp_path: Path, first: dict[str, Any], second: dict[str, Any]):
    files = [tmp_path / "part-0.json", tmp_path / "part-1.json"]
    for file, part in zip(files, (first, second)):
        file.write_text(json.dumps(part))
    return run_cli("merge", *files, "--json"), files[1]  # (errors on stderr; -q puts its FAIL line on stdout)


def mappings(part: dict[str, Any]) -> set[tuple[Any, ...]]:
    """Paths whose keys are data, not a part's keys (fingerprints: file → fingerprint)."""
    return {("fingerprints", file) for file in part["fingerprints"]}


@pytest.mark.parametrize("filled", [False, True], ids=["real", "every-list-filled"])
def test_every_key_dropped_or_retyped_is_refused_naming_the_file(tmp_path, parts, filled):
    first, second = parts[0], with_every_list_filled(parts[1]) if filled else parts[1]
    base, _ = merged(tmp_path, first, second)
    assert base.exit_code == (3 if filled else 1) and REFUSED not in base.output  # (filled: its problems)
    tried = 0
    for path in keys(second):
        for how in ("drop", "retype"):
            if how == "drop" and (isinstance(path[-1], int) or path in mappings(second)):
                continue  # a list item or a mapping's entry is data: coverage and identity checks judge them
            mutated = copy.deepcopy(second)
            holder = mutated
            for step in path[:-1]:
                holder = holder[step]
            if how == "drop":
                del holder[path[-1]]
            else:
                holder[path[-1]] = retyped(holder[path[-1]])
            result, file = merged(tmp_path, first, mutated)
            tried += 1
            where = ".".join(map(str, path))
            if path == ("given",) and how == "drop":  # optional: the API's parts do not name it
                assert result.exit_code == base.exit_code, where
                continue
            assert result.exit_code == 3, (how, where, result.output)
            assert f"error: {file}: {REFUSED}" in result.stderr, (how, where, result.stderr)
            if path != ("format",):
                assert "or from another version: " in result.stderr and "hint: re-run that part" in result.stderr
    assert tried > (100 if filled else 80)


def test_a_missing_key_and_a_wrong_type_are_named(tmp_path, parts):
    no_tensors = {k: v for k, v in parts[1].items() if k != "tensors"}  # the tester's KeyError
    result, file = merged(tmp_path, parts[0], no_tensors)
    assert result.stderr.startswith(f"error: {file}: not a nandoctor part file, or from another version: "
                                    "the file has no 'tensors'\nhint: re-run that part")
    wrong = copy.deepcopy(parts[1])
    wrong["tensors"][0]["outliers"]["worst"] = "big"
    result, file = merged(tmp_path, parts[0], wrong)
    assert result.exit_code == 3 and 'tensors[0].outliers.worst is "big", not a number' in result.stderr


@pytest.mark.parametrize(("where", "value", "words"), [
    (("shares", 0, "census", "high_max"), 1 << 40, "holds a magnitude that is not one of F32"),
    (("shares", 0, "census", "histogram"), [1, 2, 3], "holds a histogram that is not one of F32's exponents"),
    (("shares", 0, "census", "high_segments"), [[1 << 40, 16384, 1]], "holds a segment outside the region"),
    (("shares", 0, "census", "high_max"), 10 ** 30, "shares[0].census.high_max is 1000000000000000000000000000000, "
                                                    "beyond a 64-bit integer"),
    (("part",), 5, "part 5 of 2 does not exist"),
    (("options", "max_abs"), -1, "options: --max-abs must be a positive finite number; got -1"),
])
def test_values_merge_would_fail_on_are_refused(tmp_path, parts, where, value, words):
    """Right types, values no scan writes (a census wider than F32, a histogram of another dtype, a part out of
    range, an option the scan refuses): refused, not a struct.error or numpy broadcast error."""
    first, second = copy.deepcopy(parts[0]), copy.deepcopy(parts[1])
    for part in (first, second) if where[0] == "options" else (second,):
        holder = part
        for step in where[:-1]:
            holder = holder[step]
        holder[where[-1]] = value
    result, file = merged(tmp_path, first, second)
    named = file if where[0] != "options" else file.with_name("part-0.json")
    assert result.exit_code == 3 and f"error: {named}: {REFUSED} file, or from another version: " in result.stderr
    assert words in result.stderr, result.stderr
