"""The CLI end to end: exit codes, JSON schema, one-line errors, light start-up."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from nandoctor.cli import cli
from tests.conftest import DEMO_RUN, FIXTURES, ROOT
from tests.conftest import run_cli as run


def test_clean_checkpoint_exits_0():
    result = run("scan", str(DEMO_RUN / "checkpoint-200"))
    assert result.exit_code == 0, result.output
    assert "CLEAN" in result.output


@pytest.mark.parametrize("target", ["checkpoint-300", "."], ids=["checkpoint", "run"])
def test_a_device_that_cannot_be_used_is_refused_before_any_checkpoint(target, monkeypatch):
    """--device cuda without a GPU: one error for a run folder too, never each checkpoint called incomplete."""
    from nandoctor import kernels

    monkeypatch.setitem(kernels.KERNELS, "cuda", lambda: (_ for _ in ()).throw(
        kernels.DeviceUnavailableError("--device cuda was asked for, but torch sees no CUDA GPU")))
    result = run("scan", str(DEMO_RUN / target), "--device", "cuda")
    assert result.exit_code == 3, result.output
    assert "torch sees no CUDA GPU" in result.output
    assert "incomplete" not in result.output and "unfinished" not in result.output


def test_bad_checkpoint_exits_1_and_names_layers():
    result = run("scan", str(DEMO_RUN / "checkpoint-300"))
    assert result.exit_code == 1
    assert "transformer.h.21–23" in result.output
    assert "transformer.h.22.attn.c_proj.weight" in result.output
    assert "nandoctor repair" in result.output


def test_json_schema_lists_every_tensor():
    expected = json.loads((DEMO_RUN / "expected.json").read_text())["checkpoints"]["checkpoint-300"]
    result = run("scan", str(DEMO_RUN / "checkpoint-300"), "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["schema_version"] == 3
    assert len(data["tensors"]) == expected["tensors"]
    tensors = {t["name"]: t for t in data["tensors"]}
    for name, want in expected["bad_tensors"].items():
        t = tensors[name]
        assert (t["nan"], t["posinf"], t["neginf"], t["first_bad"]["index"]) == (
            want["nan"], want["posinf"], want["neginf"], want["first_bad"])
        assert set(t) >= {"name", "file", "dtype", "shape", "nan", "posinf", "neginf", "first_bad"}
    clean = tensors["transformer.wte.weight"]
    assert (clean["nan"], clean["posinf"], clean["neginf"], clean["first_bad"]) == (0, 0, 0, None)
    layers = {entry["layer"]: entry for entry in data["layers"]}
    assert layers["transformer.h.22"]["bad_tensors"] == sum(1 for n in expected["bad_tensors"] if n.startswith("transformer.h.22."))
    assert set(layers["transformer.h.22"]) >= {"layer", "tensors", "bad_tensors", "nan", "posinf", "neginf"}
    assert data["errors"] == []
    assert data["summary"]["exit_code"] == 1 and data["summary"]["nan"] == expected["nan"]
    assert data["bad_layer_ranges"] == ["transformer.h.21–23"]


def test_missing_path_is_one_line_error_exit_3():
    result = run("scan", "/no/such/checkpoint")
    assert result.exit_code == 3
    assert result.stderr.startswith("error: /no/such/checkpoint: no such file or folder")
    assert "hint:" in result.stderr and "Traceback" not in result.output + result.stderr


def test_corrupt_file_exit_3_with_reason_in_json(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    result = run("scan", str(bad), "--json")
    assert result.exit_code == 3
    data = json.loads(result.stdout)
    assert data["summary"]["verdict"] == "UNREADABLE" and data["summary"]["ok"] is False
    assert data["errors"][0]["path"] == str(bad) and "past the end" in data["errors"][0]["message"]


def _cuda_present() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@pytest.mark.skipif(_cuda_present(), reason="needs a machine where --device cuda cannot start")
def test_an_error_that_is_not_the_checkpoints_is_not_called_unreadable():
    """No CUDA device stops the scan (exit 3), but the checkpoint is fine: ERROR, never UNREADABLE."""
    path = DEMO_RUN / "checkpoint-200"
    quiet = run("scan", str(path), "--device", "cuda", "-q")
    assert quiet.exit_code == 3 and quiet.stdout.startswith(f"FAIL ERROR {path}: ")
    data = json.loads(run("scan", str(path), "--device", "cuda", "--json").stdout)
    assert data["summary"]["verdict"] == "ERROR" and data["errors"][0]["kind"] == "error"
    missing = run("scan", "/no/such/checkpoint", "-q")
    assert missing.stdout.startswith("FAIL UNREADABLE /no/such/checkpoint: no such file or folder")


def test_unreadable_part_beats_clean_rest(tmp_path):
    import shutil

    ckpt = tmp_path / "ck"
    shutil.copytree(DEMO_RUN / "checkpoint-200", ckpt)
    shard = ckpt / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-3])  # truncated
    result = run("scan", str(ckpt))
    assert result.exit_code == 3
    assert "UNREADABLE" in result.output and "CLEAN" not in result.output


def test_usage_error_exits_2():
    assert run("scan").exit_code == 2
    assert run("scan", str(FIXTURES), "--device", "tpu").exit_code == 2


def test_hostile_names_are_escaped(tmp_path):
    import numpy as np

    from fixtures.builders import SPECIALS, RawTensor, write_safetensors

    name = "evil[bold red]x\x1b[2J\u202e.weight"
    bits = np.array([SPECIALS["F32"]["nan"], 0], np.uint32)
    write_safetensors(tmp_path / "e.safetensors", {name: RawTensor("F32", (2,), bits.tobytes())})
    result = run("scan", str(tmp_path / "e.safetensors"))
    assert result.exit_code == 1
    assert "\x1b" not in result.output and "\u202e" not in result.output
    assert "evil[bold red]x\\x1b[2J\\u202e.weight" in result.output


def test_module_entry_point_and_cli_do_not_import_torch():
    code = (
        "import sys, nandoctor.cli, nandoctor.engine, nandoctor.report.rich_report;"
        "[nandoctor.cli.cli.get_command(None, name) for name in nandoctor.cli.COMMANDS];"
        "from nandoctor.engine import scan; scan(sys.argv[1], device='auto');"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code, str(DEMO_RUN / "checkpoint-200")], check=True, cwd=ROOT)


def test_python_m_nandoctor_help():
    out = subprocess.run([sys.executable, "-m", "nandoctor", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "Exit codes" in out.stdout and "scan" in out.stdout


def test_no_color_output_has_no_escape_codes():
    out = subprocess.run(
        [sys.executable, "-m", "nandoctor", "scan", str(DEMO_RUN / "checkpoint-300")],
        capture_output=True, text=True, cwd=ROOT, env={"NO_COLOR": "1", "PATH": "/usr/bin:/bin", "TERM": "xterm"},
    )
    assert out.returncode == 1 and "\x1b[" not in out.stdout


@pytest.mark.parametrize("flag", ["--debug"])
def test_debug_shows_traceback(flag):

    result = CliRunner().invoke(cli, [flag, "scan", "/no/such"])
    assert result.exit_code != 0 and result.exception is not None


def test_narrow_terminal_keeps_names_and_the_command_whole():
    """At 80 columns names fold instead of ending in "…", and the suggested command stays one line."""
    from rich.console import Console

    from nandoctor.engine import scan
    from nandoctor.report.rich_report import render

    report = scan(DEMO_RUN / "checkpoint-300", device="cpu")
    console = Console(width=80, highlight=False, no_color=True, record=True, file=open(os.devnull, "w"))
    render(report, console)
    text = console.export_text()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines() if not line.startswith("        nandoctor repair")) <= 80
    assert f"        nandoctor repair {DEMO_RUN / 'checkpoint-300'} --from auto --out {DEMO_RUN / 'repaired-checkpoint-300'}\n" in text
    folded = "".join(line.split("│")[0].strip() for line in text.splitlines() if "│" in line)
    for t in report.bad_tensors:
        assert t.name in folded  # each name, folded over lines, reads whole in its column


def test_help_lists_every_command_without_importing_them():
    """No command module, nor rich, numpy or torch, for --help (cli/pipes.py, a few lines every command uses, is)."""
    import nandoctor.cli as cli_module

    assert set(cli_module.SUMMARIES) == set(cli_module.COMMANDS)
    code = (
        "import sys; from nandoctor.cli import main; sys.argv = ['nandoctor', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "loaded = [m for m in sys.modules if m.startswith('nandoctor.cli.') and m != 'nandoctor.cli.pipes'\n"
        "          or m in ('rich', 'numpy', 'torch')]\n"
        "print('LOADED', loaded)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "LOADED []" in out
    for name in cli_module.COMMANDS:
        assert f"  {name} " in out


def test_start_up_imports_only_what_the_command_needs():
    """``python -m nandoctor --help`` imports no API module (``nandoctor/__init__`` resolves names lazily),
    a ``--quiet`` or ``--json`` scan piped to a file never imports rich, and a scan of safetensors files
    imports no torch, GGUF or DCP reader (the registry imports a reader when a file needs it), no CRC-32
    library and no ZeRO layouts: start-up is issue 18's budget."""
    help_code = (
        "import runpy, sys; sys.argv = ['nandoctor', '--help']\n"
        "try:\n    runpy.run_module('nandoctor', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('LOADED', sorted(m for m in sys.modules if m in ('nandoctor.api', 'nandoctor.model', 'numpy', 'rich')))"
    )
    out = subprocess.run([sys.executable, "-c", help_code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "LOADED []" in out.stdout, out.stdout[-500:]
    for flag in ("--quiet", "--json"):
        scan_code = (
            "import sys; from nandoctor.cli import main\n"
            f"sys.argv = ['nandoctor', 'scan', sys.argv[1], '{flag}']\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
            "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] == 'rich'), 'EXIT', code)\n"
            "print('READERS', *sorted(m for m in sys.modules if m.startswith('nandoctor.readers')))\n"
            "print('metadata:', 'importlib.metadata' in sys.modules)\n"
            "print('CRC-32 library loaded:', 'isal' in sys.modules, 'ZeRO:', 'nandoctor.checkpoint.zero' in sys.modules)"
        )
        out = subprocess.run([sys.executable, "-c", scan_code, str(DEMO_RUN / "checkpoint-300")],
                             capture_output=True, text=True, cwd=ROOT, check=True)
        lines = out.stdout.rstrip().splitlines()
        assert lines[-4].endswith("LOADED [] EXIT 1"), out.stdout[-500:]
        # safetensors owe no CRC-32 (crc.implementation); no optimizer file, no ZeRO partitions (opener)
        assert lines[-1] == "CRC-32 library loaded: False ZeRO: False"
        # (importlib.metadata and the email package it brings cost ~9 ms: asked only where a config type is refused)
        assert lines[-2] == "metadata: False", lines[-2]
        # (--json carries the next steps, which look for a verified repair beside the checkpoint: its readers)
        beside = ["nandoctor.readers.window", "nandoctor.readers.zipentries"] if flag == "--json" else []
        assert lines[-3].split() == ["READERS", "nandoctor.readers", "nandoctor.readers.compact_header",
                                     "nandoctor.readers.formats", "nandoctor.readers.magic",
                                     "nandoctor.readers.safetensors", "nandoctor.readers.shapes", *beside], lines[-2]
    import nandoctor

    assert nandoctor.scan.__module__ == "nandoctor.api" and set(nandoctor.__all__) <= set(dir(nandoctor))
    assert len(dir(nandoctor)) == len(set(dir(nandoctor)))  # a resolved name is listed once


def test_the_exiting_command_leaves_the_interpreter_no_objects_to_collect():
    """``main`` freezes the garbage collector's objects at exit, after the other exit handlers (the
    interpreter's final collections would free every imported object one by one: issue 18's start-up
    budget), and not before: a caller that catches SystemExit still has a collector that sees them."""
    code = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: print('AT EXIT frozen:', gc.get_freeze_count() > 0))  # first in, last out\n"
        "from nandoctor.cli import main\n"
        "sys.argv = ['nandoctor', 'scan', sys.argv[1], '--quiet']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n"
        "    print('EXIT', exc.code, 'frozen:', gc.get_freeze_count() > 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(DEMO_RUN / "checkpoint-300")], capture_output=True,
                         text=True, cwd=ROOT, check=True)
    assert out.stdout.splitlines()[-2:] == ["EXIT 1 frozen: False", "AT EXIT frozen: True"], out.stdout


def test_each_help_summary_says_what_its_command_does():
    """The static summaries stay true: each names the command's subject the way its docstring does."""
    import nandoctor.cli as cli_module

    for name, summary in cli_module.SUMMARIES.items():
        command = cli_module.cli.get_command(None, name)
        assert command is not None and command.help
        first_word = command.help.split()[0].lower()
        assert summary.split()[0].lower() == first_word, (name, summary, command.help[:60])


def _demo_copy(tmp_path, name="ckpt"):
    import shutil

    return shutil.copytree(DEMO_RUN / "checkpoint-200", tmp_path / name)


def test_an_unreadable_folder_or_file_is_exit_3_with_a_report_never_click_s_exit_2(tmp_path):
    """Mode 000: click used to refuse the argument (exit 2, "Path 'x' is not readable", no report). Now the scan
    says which path and what to do, exit 3, with --json's report and --quiet's FAIL UNREADABLE line."""
    from .permissions import mode, need_permissions, permission_hint, run_nandoctor

    need_permissions()
    folder = _demo_copy(tmp_path)
    single = tmp_path / "model.safetensors"
    single.write_bytes((folder / "model-00001-of-00002.safetensors").read_bytes())
    for target in (folder, single):
        with mode(target, 0):
            data = run_nandoctor("scan", target, "--json")
            assert data.returncode == 3, data.stderr
            report = json.loads(data.stdout)
            assert report["summary"]["verdict"] == "UNREADABLE" and report["summary"]["exit_code"] == 3
            assert report["errors"] == [{"path": str(target), "message": "permission denied",
                                         "hint": permission_hint(target), "kind": "unreadable"}]
            quiet = run_nandoctor("scan", target, "--quiet")
            assert quiet.returncode == 3
            assert quiet.stdout == (f"FAIL UNREADABLE {target}: 0 tensors read; 1 part(s) unreadable "
                                    f"(first: {target}: permission denied)\n")
            console = run_nandoctor("scan", target)
            assert console.returncode == 3 and "not readable" not in console.stderr
            assert f"{target}: permission denied" in console.stdout
            assert "run nandoctor as a user who can read it" in console.stdout


def test_a_path_below_a_folder_no_one_may_search_says_so_in_every_output(tmp_path):
    """The path itself cannot even be looked at: the scan cannot start; exit 3 with the one error (not "no such
    file"), the JSON report of a scan that could not start, and the quiet line."""
    from .permissions import mode, need_permissions, permission_hint, run_nandoctor

    need_permissions()
    locked = tmp_path / "locked"
    inner = _demo_copy(locked, "inner") if locked.mkdir() is None else None
    assert inner is not None
    with mode(locked, 0):
        plain = run_nandoctor("scan", inner)
        assert plain.returncode == 3
        assert plain.stderr == f"error: {inner}: permission denied\nhint: {permission_hint(inner)}\n"
        quiet = run_nandoctor("scan", inner, "--quiet")
        assert (quiet.returncode, quiet.stdout) == (3, f"FAIL UNREADABLE {inner}: permission denied\n")
        data = run_nandoctor("scan", inner, "--json")
        report = json.loads(data.stdout)
        assert data.returncode == 3 and report["summary"]["verdict"] == "UNREADABLE"
        assert report["errors"][0]["message"] == "permission denied"
        shard = inner / "model-00001-of-00002.safetensors"
        one = run_nandoctor("scan", shard, "--quiet")
        assert (one.returncode, one.stdout) == (3, f"FAIL UNREADABLE {shard}: permission denied\n")


def test_every_command_taking_a_checkpoint_says_which_path_it_may_not_read(tmp_path):
    """repair (target, donor, --out's folder), diff, manifest, merge, scan --manifest: exit 3, the path and the
    permission problem named with what to do; never a usage error or an internal error."""
    from .permissions import mode, need_permissions, run_nandoctor

    need_permissions()
    good = _demo_copy(tmp_path, "good")
    bad = tmp_path / "bad"
    import shutil

    shutil.copytree(DEMO_RUN / "checkpoint-300", bad)
    closed = _demo_copy(tmp_path, "closed")
    part = tmp_path / "part-0.json"
    part.write_text("{}")
    locked = tmp_path / "locked"
    locked.mkdir()
    manifest = tmp_path / "manifest.json"
    manifest.write_text("{}")
    cases = [
        (["repair", closed, "--from", good, "--out", tmp_path / "o1"], closed),
        (["repair", bad, "--from", closed, "--out", tmp_path / "o2"], closed),
        (["diff", closed, good], closed),
        (["diff", good, closed], closed),
        (["manifest", closed], closed),
        (["merge", part], part),
        (["scan", good, "--verify-hashes", "--manifest", manifest], manifest),
    ]
    with mode(closed, 0), mode(part, 0), mode(manifest, 0):
        for args, named in cases:
            result = run_nandoctor(*args)
            out = result.stdout + result.stderr
            assert result.returncode == 3, (args, out)
            assert f"{named}: " in out and "permission denied" in out, (args, out)
            assert "run nandoctor as a user who can read it" in out, (args, out)
            assert "internal error" not in out and "Usage:" not in out and "Traceback" not in out
    with mode(locked, 0o555):  # --out in a folder that cannot be written
        result = run_nandoctor("repair", bad, "--from", good, "--out", locked / "fixed")
        assert result.returncode == 3 and str(locked) in result.stderr and "Traceback" not in result.stderr


def test_a_repair_says_which_subfolder_of_the_source_it_could_not_carry_over(tmp_path):
    """A non-weight subfolder of the source no one may list (logs/ at mode 000) is named in a note, not skipped
    in silence (os.walk's default); the weights are repaired and verified as usual."""
    import shutil

    from .permissions import mode, need_permissions, run_nandoctor

    need_permissions()
    bad = shutil.copytree(DEMO_RUN / "checkpoint-300", tmp_path / "bad")
    good = shutil.copytree(DEMO_RUN / "checkpoint-200", tmp_path / "good")
    (bad / "logs").mkdir()
    (bad / "logs" / "events.txt").write_text("x")
    with mode(bad / "logs", 0):
        result = run_nandoctor("repair", bad, "--from", good, "--out", tmp_path / "fixed")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "  note: logs/: permission denied; not carried over" in result.stdout.splitlines()
    assert not (tmp_path / "fixed" / "logs").exists()


def _doc_table(heading: str) -> list[str]:
    """The first column of the table under ``heading`` in docs/json.md (the backticked value of each row)."""
    import re

    text = (ROOT / "docs" / "json.md").read_text(encoding="utf-8")
    section = re.split(rf"^#+ {re.escape(heading)}\n", text, flags=re.M)[1]
    section = re.split(r"^#", section, flags=re.M)[0]
    return [m[1] for m in re.finditer(r"^\| `([^`]+)` \|", section, flags=re.M)]


def _subclasses(cls: type) -> list[type]:
    return [cls, *(s for sub in cls.__subclasses__() for s in _subclasses(sub))]


def test_documented_verdict_words_and_statuses_are_exactly_what_the_code_emits(tmp_path):
    """docs/json.md lists every word `summary.verdict` is made of and every run `status`: no more, no fewer."""
    import dataclasses

    from nandoctor import errors, verdict
    from nandoctor.checkpoint import runs
    from nandoctor.engine import scan as engine_scan
    from nandoctor.model import ScanProblem

    findings = [verdict.FINDING_WORDS[f] for f in verdict.FAIL_ON_CHOICES if f in verdict.FINDING_WORDS]
    stopped = sorted({cls.verdict_word for cls in _subclasses(errors.NandoctorError)})  # a scan that could not start
    report = verdict.judged(engine_scan(DEMO_RUN / "checkpoint-300", device="cpu"))
    empty = runs.RunReport("run", ())
    half = runs.RunCheckpoint(1, "run/checkpoint-1", runs.INCOMPLETE, None)
    diverged = runs.RunCheckpoint(2, "run/checkpoint-2", runs.DIVERGED, report)
    ambiguous = runs.RunReport("run", (), problems=("checkpoint-3 and checkpoint-03 are all step 3",))
    run_words = [empty.verdict, runs.row_verdict(half), runs.row_verdict(diverged).removeprefix(report.verdict).strip(),
                 ambiguous.verdict]
    assert run_words == ["EMPTY", "INCOMPLETE", "(DIVERGED)", "AMBIGUOUS RUN"]
    assert verdict.one_line(report).startswith("FAIL NON-FINITE (POISONED) ")  # --quiet's health case
    emitted = [verdict.CLEAN_WORDS, *findings, verdict.DIVERGED_WORDS, verdict.OVERFLOW_WORDS.format(dtype="fp16"),
               *verdict.PROBLEM_WORDS.values(), verdict.BASE_WORDS.format("…"), *stopped, *run_words, "(POISONED)",
               verdict.ALSO_REPORTED.format("…").strip(), verdict.REPORTED_ONLY.strip(), verdict.USAGE_WORDS]
    assert sorted(_doc_table("Verdict words")) == sorted(dict.fromkeys(emitted))
    # every problem kind a report can hold has its word (a ScanProblem's kinds, from its docstring's list)
    kinds = set(re.findall(r"``(\w+)`` \(", ScanProblem.__doc__ or ""))
    assert set(verdict.PROBLEM_WORDS) == kinds == {"unreadable", "hash", "names", "selection", "unverified", "empty",
                                                   "unloadable", "config", "base"}
    statuses = (runs.INCOMPLETE, runs.UNREADABLE, runs.DIVERGED, runs.POISONED, runs.OVERFLOW, runs.CLEAN)
    assert _doc_table("Checkpoint statuses") == list(statuses)
    # what a real run emits is among them
    data = json.loads(run("scan", str(DEMO_RUN), "--json").stdout)
    assert {c["status"] for c in data["run"]["checkpoints"]} <= set(statuses)
    assert data["summary"]["verdict"] == "NON-FINITE"
    # findings the gate leaves out are marked so, with the documented suffixes
    # (NaN/Inf fails under any gate: the suffixes shown with a zeroed weight, which the default only reports)
    from tests.test_console_findings import _file

    zeroed = verdict.judged(engine_scan(_file(tmp_path, "zeroed"), device="cpu"))
    assert verdict.judge(zeroed, frozenset({"exploded"})).words == "ZEROED (reported only)"
    unread = dataclasses.replace(zeroed, errors=(ScanProblem("x", "gone"), ScanProblem("y", "changed", kind="hash")))
    assert verdict.judge(unread, frozenset({"exploded"})).words == "UNREADABLE + HASH MISMATCH (also reported: ZEROED)"


@pytest.mark.parametrize("output", ["--json", "--all"])
def test_a_reader_that_closes_the_pipe_early_leaves_the_exit_code_the_verdict_s(tmp_path, output):
    """`nandoctor scan CKPT | head -1`: the rest of the output is dropped, no traceback, and the exit code is
    still the verdict's (rich used to exit 1, "findings", for a clean checkpoint)."""
    import numpy as np
    from safetensors.numpy import save_file

    for bad in (False, True):
        tensors = {f"model.layers.{i}.w": np.full(4, 0.5, np.float32) for i in range(3000)}  # output > a pipe's 64 KiB
        if bad:
            tensors["model.layers.7.w"][1] = np.nan
        path = tmp_path / f"{'bad' if bad else 'clean'}.safetensors"
        save_file(tensors, path)
        process = subprocess.Popen([sys.executable, "-m", "nandoctor", "scan", str(path), output, "--no-progress"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        assert process.stdout is not None and process.stderr is not None
        process.stdout.read(10)
        process.stdout.close()  # the reader goes away, as head does
        stderr = process.stderr.read().decode()
        assert process.wait(timeout=60) == (1 if bad else 0), stderr
        assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_a_folder_whose_only_file_cannot_be_read_says_nothing_fits_the_load_dtype(tmp_path):
    """config.json loads the weights as bfloat16 and the one weight file is garbage: the quiet line said
    "0 tensors read; fits bf16" (a trial), a claim about weights nothing read."""
    from .permissions import run_nandoctor

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"dtype": "float16"}')
    (folder / "model.safetensors").write_bytes(b"\x29\xaf" * 50)
    quiet = run_nandoctor("scan", folder, "--quiet")
    assert quiet.returncode == 3 and quiet.stdout.startswith(f"FAIL UNREADABLE {folder}: 0 tensors read; 1 part(s)")
    assert "fits" not in quiet.stdout


def test_every_option_of_every_command_is_documented():
    """Each command's options are in docs/ (cli.md, or the command's own page): a new option without docs,
    or docs naming an option a command lacks (repair.md named --max-abs before repair had it), fails here."""
    import re

    from nandoctor.cli import cli

    docs = {p.stem: p.read_text() for p in (ROOT / "docs").glob("*.md")}
    everything = "\n".join(docs.values())
    import click

    ctx = click.Context(cli)
    commands = {name: cli.get_command(ctx, name) for name in cli.list_commands(ctx)}
    assert {"scan", "repair", "diff"} <= set(commands)
    for name, command in commands.items():
        page = docs.get(name, "") + docs["cli"]
        for param in command.params:
            for opt in param.opts:
                if opt.startswith("--") and opt not in ("--help", "--debug"):
                    assert re.search(re.escape(opt) + r"(?![\w-])", page), f"{name} {opt} is not in docs/cli.md or docs/{name}.md"
    repair = commands["repair"]
    options = {o for p in repair.params for o in p.opts}
    shown = {opt for command_line in re.findall(r"nandoctor repair [^`#\n]*", everything + (ROOT / "README.md").read_text())
             for opt in re.findall(r"(?<![\w-])--[a-z][a-z-]+", command_line)}
    assert {"--from", "--out", "--dry-run"} <= shown
    for opt in shown:
        assert opt in options, f"the docs show nandoctor repair {opt}, which repair does not take"


@pytest.mark.parametrize("command", ["scan", "repair", "diff", "manifest", "merge"])
def test_every_help_line_fits_a_terminal(command):
    """A new-user review: `repair --help` printed examples of 99 and 106 characters (wrapped mid-word by terminals)."""
    from nandoctor.cli import COMMANDS

    assert command in COMMANDS
    shown = CliRunner().invoke(cli, [command, "--help"], terminal_width=100)
    assert shown.exit_code == 0
    long = [line for line in shown.output.splitlines() if len(line) > 100]
    assert not long, long


@pytest.mark.parametrize("typed, said", [
    ("gate", "the gate is a scan's exit code (0: safe to load), e.g. `nandoctor scan PATH --quiet"),
    ("scna", "Did you mean 'scan'?"),
    ("repiar", "Did you mean 'repair'?"),
])
def test_an_unknown_command_says_what_to_type(typed, said):
    """Two trials typed `nandoctor gate PATH` (the README's "gate" is a scan's exit code) and got "No such command";
    a typo of a command is answered with the command."""
    result = run(typed, "ckpt")
    assert result.exit_code == 2 and said in result.output and "Traceback" not in result.output
