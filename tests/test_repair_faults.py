"""Repair under faults: SIGKILL before every mutating call of a repair, a full disk, a read-only output
folder, a donor that changes during the run. Each time: the source's sha256 is unchanged, nothing (whole
or partial) appears at --out, and the error is one clear line with exit 3.

tests/test_repair_kill.py kills at the writer's named phases and at timed moments; here the kill points
are every call that changes the file system (mkdir, open for writing, copy_file_range, chmod, pwrite,
fsync, the final rename …), counted in a driver process that forks one repair per point.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from nandoctor.restore import PROOF_NAME, atomic, repair
from tests.conftest import ROOT
from tests.test_repair_kill import make_pair, temps


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path → hex)."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def torch_pair(root: Path) -> tuple[Path, Path]:
    """A torch .bin target with NaN/Inf in a plain tensor, a transposed view and a tied pair; a clean donor."""
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(3)
    good = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(64, 96, generator=g) for i in range(4)}
    emb = torch.randn(50, 16, generator=g)
    bad = {k: v.clone() for k, v in good.items()}
    bad["model.layers.1.mlp.up_proj.weight"][3, 7] = float("nan")
    base = torch.randn(96, 64, generator=g)
    bad_emb = emb.clone()
    bad_emb[2, 2] = float("inf")
    (root / "ckpt").mkdir(parents=True)
    (root / "old").mkdir()
    target_t = base.clone()
    target_t[5, 9] = -float("inf")
    torch.save({**bad, "model.layers.3.attn.o_proj.weight": target_t.t(), "transformer.wte.weight": bad_emb,
                "lm_head.weight": bad_emb}, root / "ckpt" / "pytorch_model.bin")
    torch.save({**good, "model.layers.3.attn.o_proj.weight": base.t().contiguous(), "transformer.wte.weight": emb,
                "lm_head.weight": emb}, root / "old" / "pytorch_model.bin")
    (root / "ckpt" / "config.json").write_text("{}\n")
    return root / "ckpt", root / "old"


# ---------------------------------------------------------------------------
# SIGKILL before each mutating call.
# ---------------------------------------------------------------------------

DRIVER = r'''
import builtins, json, os, shutil, signal, sys, threading
from concurrent.futures import Future
from nandoctor.restore import atomic, repair, writer


class InOrder:
    """The writer's thread pools run each task as it is submitted: the calls come in one order in every process, so
    the k-th call of a killed run is the counted run's k-th (with the copies in parallel, a kind of call could fall
    on no kill point: a flaky "every kind was a kill point", about 1 run in 15)."""

    def __init__(self, *args, **kwargs):
        pass

    def submit(self, fn, *args, **kwargs):
        future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future

    def shutdown(self, wait=True, cancel_futures=False):
        pass


writer.ThreadPoolExecutor = InOrder

target, donor, runs, mode = sys.argv[1:5]
points = json.loads(sys.argv[5]) if mode == "kill" else [0]
state = {"n": 0, "kill_at": 0, "log": [], "where": None}
lock = threading.Lock()
raw_open, raw_write, raw_close = os.open, os.write, os.close


def hit(label):
    with lock:
        state["n"] += 1
        state["log"].append(label)
        if state["n"] == state["kill_at"]:
            fd = raw_open(state["where"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            raw_write(fd, f"{state['n']} {label}".encode())
            raw_close(fd)
            os.kill(os.getpid(), signal.SIGKILL)


def wrap(owner, name, label=None, when=None):
    real = getattr(owner, name)
    def wrapped(*args, **kwargs):
        if when is None or when(*args, **kwargs):
            hit(label or name)
        return real(*args, **kwargs)
    setattr(owner, name, wrapped)


for name in ("mkdir", "copy_file_range", "pwrite", "fsync", "chmod", "rename", "replace", "truncate", "ftruncate",
             "unlink", "rmdir"):
    wrap(os, name)
wrap(shutil, "copyfile")
wrap(atomic, "rename_noreplace")
WRITING = set("wax+")
wrap(builtins, "open", "open-for-writing",
     when=lambda file, mode="r", *a, **k: bool(WRITING & set(mode)) and not str(file).endswith("where"))

results = {}
for k in points:
    parent = os.path.join(runs, f"k{k}")
    os.makedirs(parent)
    where = os.path.join(parent, "..", f"k{k}.where")
    pid = os.fork()
    if pid == 0:
        state.update(n=0, kill_at=k, log=[], where=where)
        try:
            repair(target, [donor], os.path.join(parent, "fixed"), allow_diverged=True)
            code = 0
        except BaseException as exc:
            sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
            code = 1
        if mode == "count":
            fd = raw_open(os.path.join(runs, "calls.json"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            raw_write(fd, json.dumps(state["log"]).encode())
            raw_close(fd)
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    label = open(where).read() if os.path.exists(where) else None
    results[k] = {"status": os.waitstatus_to_exitcode(status), "at": label}
print(json.dumps(results))
'''


def run_driver(target: Path, donor: Path, runs: Path, mode: str, points: list[int] | None = None) -> dict:
    args = [sys.executable, "-c", DRIVER, str(target), str(donor), str(runs), mode]
    if points is not None:
        args.append(json.dumps(points))
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return {int(k): v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_sigkill_before_every_mutating_call(tmp_path, fmt):
    target, donor = make_pair(tmp_path / "src") if fmt == "safetensors" else torch_pair(tmp_path / "src")
    sources = {"target": tree_hashes(target), "donor": tree_hashes(donor)}

    # 1. An uninterrupted run, counting the calls (and proving the count is of a repair that works).
    counted = run_driver(target, donor, tmp_path / "count", "count")
    assert counted[0]["status"] == 0
    calls = json.loads((tmp_path / "count" / "calls.json").read_text())
    reference = json.loads((tmp_path / "count" / "k0" / "fixed" / PROOF_NAME).read_text())
    assert reference["verification"]["verdict"] == "CLEAN"
    kinds = set(calls)
    assert {"mkdir", "open-for-writing", "copy_file_range", "chmod", "fsync", "rename_noreplace"} <= kinds, kinds
    if fmt == "bin":
        assert "pwrite" in kinds  # strided view elements and the zip CRC fields are written in place

    # 2. One forked repair per call, killed just before that call.
    points = list(range(1, len(calls) + 1))
    results = run_driver(target, donor, tmp_path / "runs", "kill", points)
    killed = {k: r for k, r in results.items() if r["status"] == -signal.SIGKILL}
    assert len(killed) == len(points) >= 20, {k: r for k, r in results.items() if k not in killed}
    assert {r["at"].split()[1] for r in killed.values()} == kinds  # every kind of call was a kill point

    renamed_at = calls.index("rename_noreplace") + 1  # the one call that makes the output appear
    assert renamed_at >= len(calls) - 2  # … and it is (nearly) the last: only durability fsyncs follow
    for k in points:
        parent = tmp_path / "runs" / f"k{k}"
        if k <= renamed_at:  # killed before the rename: nothing at --out, at most the temporary folder beside it
            assert not (parent / "fixed").exists(), f"something appeared at --out after a kill before call {k}"
            leftovers = os.listdir(parent)  # (and its lock file: restore/atomic.py)
            assert all(atomic.is_temp(name) for name in leftovers) and len(leftovers) <= 2, (k, leftovers)
        else:  # killed after the rename: the output is whole and verified, and nothing else is left
            proof = json.loads((parent / "fixed" / PROOF_NAME).read_text())
            # (at most the lock file, when killed between the rename and its unlink: the next repair removes it)
            assert proof["verification"]["verdict"] == "CLEAN" and temps(parent) == []
            assert all(atomic.kind(name) == "lock" for name in set(os.listdir(parent)) - {"fixed"}), k
            assert tree_hashes(parent / "fixed") == tree_hashes(tmp_path / "count" / "k0" / "fixed") | {
                PROOF_NAME: tree_hashes(parent / "fixed")[PROOF_NAME]  # the proof's timestamps differ
            }
    assert {"target": tree_hashes(target), "donor": tree_hashes(donor)} == sources  # never written

    # 3. The next repair beside a killed one removes its temporary folder and writes the same bytes.
    for k in points[:renamed_at][:: max(1, renamed_at // 8)] + [renamed_at]:
        parent = tmp_path / "runs" / f"k{k}"
        result = repair(target, [donor], parent / "fixed", allow_diverged=True)
        assert result.ok and os.listdir(parent) == ["fixed"]  # the folder and its lock file removed
        assert [f.sha256 for f in result.files] == [f["sha256"] for f in reference["files"]]


# ---------------------------------------------------------------------------
# The CLI in a child under a fault: exit 3, one error line (+ hint), nothing at --out, source unchanged.
# ---------------------------------------------------------------------------


def run_repair_cli(target: Path, donor: Path, out: Path, *, preexec_fn=None, hook: str = "",
                   timeout: int = 120) -> subprocess.CompletedProcess:
    """`nandoctor repair` in a child; ``hook`` is Python run once the temporary folder exists (phase "temp")."""
    code = textwrap.dedent('''
        import sys
        from nandoctor.restore import writer
        from nandoctor.cli import main
        HOOK, PATHS = sys.argv[4], {"target": sys.argv[1], "donor": sys.argv[2], "out": sys.argv[3]}
        real = writer.write_repair
        def write_repair(*args, **kwargs):
            def on_phase(name):
                if name == "temp" and HOOK:
                    exec(HOOK, dict(PATHS))
            kwargs["on_phase"] = on_phase
            return real(*args, **kwargs)
        writer.write_repair = write_repair
        sys.argv = ["nandoctor", "repair", sys.argv[1], "--from", sys.argv[2], "--out", sys.argv[3], "--no-progress"]
        main()
    ''')
    return subprocess.run(
        [sys.executable, "-c", code, str(target), str(donor), str(out), hook],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn,
        env={**os.environ, "NO_COLOR": "1"},
    )


def assert_clean_failure(done: subprocess.CompletedProcess, out: Path, *, reason: str = "") -> str:
    """Exit 3, one `error:` line and at most a hint, no traceback, nothing at --out or beside it."""
    assert done.returncode == 3, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines and lines[0].startswith("error:") and len(lines) <= 2, done.stderr
    assert len(lines) == 1 or lines[1].startswith("hint:")
    assert reason in lines[0], lines[0]
    assert not os.path.lexists(out)
    assert temps(out.parent) == [], "the temporary folder was left behind after an error"
    return lines[0]


@pytest.mark.parametrize("limit", [1, 300_000])
def test_file_size_limit_mid_copy(tmp_path, limit):
    """RLIMIT_FSIZE in the child: writes past ``limit`` bytes fail with EFBIG (a full disk, to the writer)."""
    target, donor = make_pair(tmp_path)  # three shards of 512 KiB
    before = tree_hashes(target)
    out = tmp_path / "fixed"
    done = run_repair_cli(target, donor, out,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert_clean_failure(done, out, reason="File too large")
    assert tree_hashes(target) == before


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


FILL_DISK = """
import os
with open(os.path.join(os.path.dirname(out), "filler"), "wb") as fh:
    try:
        while True:
            fh.write(b"\\0" * (1 << 20))
            fh.flush()
    except OSError:
        pass
"""

ON_SMALL_DISK = r'''
import json, subprocess, sys, os
disk, args = sys.argv[1], json.loads(sys.argv[2])
done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
print(json.dumps({"code": done.returncode, "stderr": done.stderr, "stdout": done.stdout,
                  "left": sorted(os.listdir(disk))}))
'''


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs root and mount namespaces (unshare -m) for a small tmpfs")
@pytest.mark.parametrize("when", ["before", "during"])
def test_full_disk(tmp_path, when):
    """A real full filesystem (an 80 MiB tmpfs in a private mount namespace): refused up front when the copy
    cannot fit, and when the disk fills up during the copy (another writer), ENOSPC fails the repair cleanly."""
    target, donor = make_pair(tmp_path / "src")
    before = tree_hashes(target)
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "fixed"
    size = "65m" if when == "before" else "80m"  # "before": free space < the copy + nandoctor's 64 MiB margin
    cli = textwrap.dedent('''
        import sys
        from nandoctor.restore import writer
        from nandoctor.cli import main
        HOOK, OUT = sys.argv[4], sys.argv[3]
        real = writer.write_repair
        def write_repair(*args, **kwargs):
            kwargs["on_phase"] = lambda name: exec(HOOK, {"out": OUT}) if name == "temp" else None
            return real(*args, **kwargs)
        writer.write_repair = write_repair
        sys.argv = ["nandoctor", "repair", sys.argv[1], "--from", sys.argv[2], "--out", sys.argv[3], "--no-progress"]
        main()
    ''')
    args = [sys.executable, "-c", cli, str(target), str(donor), str(out), FILL_DISK if when == "during" else ""]
    shell = f'mount -t tmpfs -o size={size} tmpfs "$1" && exec "$2" -c "$3" "$1" "$4"'
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", shell, "sh", str(disk), sys.executable,
         ON_SMALL_DISK, json.dumps(args)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["code"] == 3, result
    assert "Traceback" not in result["stderr"] + result["stdout"]
    lines = result["stderr"].strip().splitlines()
    assert len(lines) <= 2 and lines[0].startswith("error:"), lines
    if when == "before":
        assert "free" in lines[0] and result["left"] == [], result
    else:
        assert "No space left on device" in lines[0]
        # the output is named, never the source file a copy was reading (a trial's ".../config.json: No space")
        assert lines[0].startswith(f"error: {out}: ") and "free some space" in lines[1], lines
        assert result["left"] == ["filler"], result  # no --out, no temporary folder
    assert tree_hashes(target) == before


# ---------------------------------------------------------------------------
# A read-only output folder.
# ---------------------------------------------------------------------------

_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_FOWNER = 1, 2, 3


def _without_root_overrides() -> None:
    """In the child, before exec: root loses the capabilities that ignore file permissions."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_FOWNER):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture
def read_only_parent(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    yield parent
    parent.chmod(0o755)


def test_read_only_output_folder_leaves_nothing(tmp_path, read_only_parent):
    target, donor = make_pair(tmp_path)
    before = tree_hashes(target)
    out = read_only_parent / "fixed"
    done = run_repair_cli(target, donor, out, preexec_fn=_without_root_overrides)
    assert done.returncode == 3 and "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("error:") and len(lines) <= 2 and str(read_only_parent) in lines[0]
    assert os.listdir(read_only_parent) == []
    assert tree_hashes(target) == before


def test_read_only_output_folder_error_is_clear(tmp_path, read_only_parent):
    target, donor = make_pair(tmp_path)
    out = read_only_parent / "fixed"
    done = run_repair_cli(target, donor, out, preexec_fn=_without_root_overrides)
    line = assert_clean_failure(done, out)
    assert "internal error" not in line and "Permission denied" in line


# ---------------------------------------------------------------------------
# A donor that changes while the repair runs (after it was planned and checked finite).
# ---------------------------------------------------------------------------

DONOR_SHARD = "model-00001-of-00003.safetensors"  # holds model.layers.1, which the repair restores


def _rewrite_donor_data(fill: str) -> str:
    return textwrap.dedent(f"""
        import os, numpy as np
        path = os.path.join(donor, {DONOR_SHARD!r})
        n = int.from_bytes(open(path, "rb").read(8), "little")
        size = os.path.getsize(path) - 8 - n
        with open(path, "r+b") as fh:
            fh.seek(8 + n)
            fh.write(np.full(size // 4, {fill}, np.float32).tobytes())
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    """)


DONOR_CHANGES = {
    "poisoned": (_rewrite_donor_data("np.nan"), "verification"),
    "truncated": (f"import os; os.truncate(os.path.join(donor, {DONOR_SHARD!r}), 100)", "past the end"),
    "deleted": ("import shutil; shutil.rmtree(donor)", "No such file"),  # save_total_limit rotating it away
}


@pytest.mark.parametrize("change", sorted(DONOR_CHANGES))
def test_donor_changed_during_the_run(tmp_path, change):
    target, donor = make_pair(tmp_path)
    before = tree_hashes(target)
    out = tmp_path / "fixed"
    hook, reason = DONOR_CHANGES[change]
    done = run_repair_cli(target, donor, out, hook=hook)
    assert_clean_failure(done, out, reason=reason)
    assert tree_hashes(target) == before


def test_donor_rewritten_with_other_finite_values_is_refused(tmp_path):
    """The donor was checked finite at planning; then a writer replaces its bytes with other finite values
    (e.g. a half-written save). The repair must not bless bytes it never checked."""
    target, donor = make_pair(tmp_path)
    before = tree_hashes(target)
    out = tmp_path / "fixed"
    done = run_repair_cli(target, donor, out, hook=_rewrite_donor_data("7.0"))
    assert_clean_failure(done, out, reason="changed")
    assert tree_hashes(target) == before


def test_unchanged_donor_control(tmp_path):
    """The control for the tests above: the same child with a hook that changes nothing repairs (exit 0)."""
    target, donor = make_pair(tmp_path)
    out = tmp_path / "fixed"
    done = run_repair_cli(target, donor, out, hook="pass")
    assert done.returncode == 0, done.stderr
    assert json.loads((out / PROOF_NAME).read_text())["verification"]["verdict"] == "CLEAN"
    restored = np.frombuffer((out / DONOR_SHARD).read_bytes()[-4 * 65536:], np.float32)
    assert np.isfinite(restored).all()
