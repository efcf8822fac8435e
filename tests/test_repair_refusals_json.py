"""`nandoctor repair --json` when the repair is refused or fails: one JSON object on stdout (the plan's shape with
``exit_code`` and ``errors``), the ``error:`` and ``hint:`` lines on stderr, exit 3, and nothing written.

Real files: a hostile torch pickle, a truncated safetensors file, a diverged target, an --out that exists, and a
target whose only donor has no usable copy. The oracles: ``json.loads`` of stdout, stderr's own lines, the folder
listing before and after, and for the hostile pickle the marker file its payload would have made.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_cli

torch = pytest.importorskip("torch")
st = pytest.importorskip("safetensors.torch")


def _weights(shift: float = 0.0) -> dict:
    torch.manual_seed(0)
    return {"a.weight": torch.randn(8, 8) + shift, "b.weight": torch.randn(8) + shift,
            "c.weight": torch.randn(4, 4) + shift}


def _poisoned(path: Path) -> Path:
    bad = _weights(1.0)
    bad["a.weight"][1, 1] = float("nan")
    st.save_file(bad, str(path))
    return path


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # what torch.load(weights_only=False) would run: create the marker file
        return (os.system, (f"touch {self.marker}",))


def _hostile(tmp: Path) -> tuple[list[str], str]:
    torch.save({"a.weight": torch.randn(8, 8), "evil": _Payload(tmp / "PWNED")}, tmp / "evil.pt")
    return [str(tmp / "evil.pt"), "--out", str(tmp / "ev")], "would run code"


def _truncated(tmp: Path) -> tuple[list[str], str]:
    blob = _poisoned(tmp / "whole.safetensors").read_bytes()
    (tmp / "whole.safetensors").unlink()
    (tmp / "trunc.safetensors").write_bytes(blob[:-20])
    return [str(tmp / "trunc.safetensors"), "--out", str(tmp / "tr")], "truncated"


def _diverged(tmp: Path) -> tuple[list[str], str]:
    st.save_file({f"l{i}.weight": torch.full((64,), float("nan")) for i in range(6)}, str(tmp / "div.safetensors"))
    return [str(tmp / "div.safetensors"), "--out", str(tmp / "dv")], "diverged"


def _out_exists(tmp: Path) -> tuple[list[str], str]:
    _poisoned(tmp / "bad.safetensors")
    (tmp / "taken").mkdir()
    return [str(tmp / "bad.safetensors"), "--out", str(tmp / "taken")], "already exists"


CASES = {"hostile pickle": _hostile, "truncated": _truncated, "diverged": _diverged, "out exists": _out_exists}


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _check_refusal(done, words: str) -> dict:
    """The refusal's JSON (parsed from stdout alone), checked against the error and hint lines on stderr."""
    assert done.exit_code == 3, done.output
    data = json.loads(done.stdout)
    lines = done.stderr.splitlines()
    error = next(line for line in lines if line.startswith("error: "))
    hint = next(line for line in lines if line.startswith("hint: "))
    assert words in error
    assert data["exit_code"] == 3 and data["complete"] is False and data["nandoctor_repair_plan"] == 1
    (entry,) = data["errors"]
    assert error == f"error: {entry['path']}: {entry['message']}" or error == f"error: {entry['message']}"
    assert hint == f"hint: {entry['hint']}"
    return data


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_refusal_prints_one_json_object_and_writes_nothing(tmp_path: Path, case: str) -> None:
    donor = tmp_path / "donor"
    donor.mkdir()
    st.save_file(_weights(), str(donor / "model.safetensors"))
    args, words = CASES[case](tmp_path)
    before = _listing(tmp_path)
    done = run_cli("repair", *args, "--from", donor, "--json", "--no-progress")
    data = _check_refusal(done, words)
    assert data["restore"] == [] and data["unrestorable"] == []
    assert data["source"] == args[0] and data["donors"] == [{"path": str(donor), "step": None}]
    assert data["errors"][0]["kind"] in ("refused", "unreadable")
    assert _listing(tmp_path) == before  # nothing written: no --out, no temporary folder beside it
    assert not (tmp_path / "PWNED").exists()
    if case == "out exists":  # the error names the --out it is about, its message without that path in front
        assert data["errors"][0]["path"] == str(tmp_path / "taken") and data["errors"][0]["message"] == "already exists"


def test_a_missing_donor_is_the_path_the_refusal_names(tmp_path: Path) -> None:
    """The JSON's errors[].path named the target for a --from that does not exist: the donor is what to fix."""
    _poisoned(tmp_path / "bad.safetensors")
    done = run_cli("repair", tmp_path / "bad.safetensors", "--from", tmp_path / "nope", "--out", tmp_path / "out",
                   "--json", "--no-progress")
    data = _check_refusal(done, "donor checkpoint")
    assert data["errors"][0]["path"] == str(tmp_path / "nope") and data["errors"][0]["kind"] == "unreadable"
    assert not (tmp_path / "out").exists()


def test_a_refusal_without_json_prints_nothing_on_stdout_but_the_error(tmp_path: Path) -> None:
    donor = tmp_path / "donor"
    donor.mkdir()
    st.save_file(_weights(), str(donor / "model.safetensors"))
    args, _ = _out_exists(tmp_path)
    done = run_cli("repair", *args, "--from", donor, "--no-progress")
    assert done.exit_code == 3 and done.stdout == "" and "error: " in done.stderr


def test_no_good_donor_refusal_carries_the_plan_and_the_error(tmp_path: Path) -> None:
    target = tmp_path / "bad.safetensors"
    _poisoned(target)
    donor = tmp_path / "small.safetensors"
    st.save_file({"a.weight": torch.randn(4, 4)}, str(donor))  # the right name, another shape
    before = _listing(tmp_path)
    done = run_cli("repair", target, "--from", donor, "--out", tmp_path / "fixed", "--json", "--no-progress")
    data = _check_refusal(done, "no good donor")
    assert data["errors"][0]["kind"] == "refused" and data["restore"] == []
    (u,) = data["unrestorable"]
    assert u["tensor"] == "a.weight" and u["nan"] == 1
    assert u["reasons"] == [f"{donor}: shape [4, 4], the target's is [8, 8]"]
    assert _listing(tmp_path) == before


def test_dry_run_plan_json_says_its_exit_code(tmp_path: Path) -> None:
    target = tmp_path / "bad.safetensors"
    _poisoned(target)
    donor = tmp_path / "donor.safetensors"
    st.save_file(_weights(), str(donor))
    done = run_cli("repair", target, "--from", donor, "--dry-run", "--json", "--no-progress")
    assert done.exit_code == 0, done.output
    data = json.loads(done.stdout)
    assert (data["exit_code"], data["errors"], data["complete"]) == (0, [], True)
    assert [r["tensor"] for r in data["restore"]] == ["a.weight"]
