#!/usr/bin/env python3
"""Check that a change left nandoctor's output alone: the same scans run by two trees, compared byte for byte.

    git worktree add ../before <commit>
    python benchmarks/same_output.py ../before            # this tree against ../before
    python benchmarks/same_output.py ../before --keep     # keep bench-data/many/ for bench_many.py

Runs ``python -m nandoctor scan`` in each tree on the shipped fixtures (dtype-zoo, the demo run and its
checkpoints; JSON, --quiet, the console report, Markdown, --target-dtype) and on bench_many.py's 100,000-tensor
files (clean, and a NaN in every 1,000th), and compares stdout and the exit code. Only what must differ is
masked: the trees' own paths, and the timing (``seconds``/``gb_per_s`` in JSON, times in the console
report). Prints each case that differs and exits 1 if any does.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from bench_many import DATA, write_many  # noqa: E402

_JSON_TIMING = re.compile(r'"(seconds|gb_per_s)": [0-9.e+-]+')
_TEXT_TIMING = re.compile(r"[0-9.]+ ?(s|ms|GB/s|MB/s)\b")


def cases() -> list[tuple[str, Path, list[str]]]:
    """(label, path, scan options) of every comparison."""
    fixtures = ROOT / "fixtures"
    run = fixtures / "demo-run"
    out: list[tuple[str, Path, list[str]]] = []
    for count, nan_every in ((100_000, 0), (100_000, 1000)):
        path = DATA / f"many-{count}-nan{nan_every}.safetensors"
        if not path.exists():
            write_many(path, count, nan_every)
        out += [(f"{path.name} --json", path, ["--json"]), (f"{path.name} -q", path, ["-q"])]
    for name, path in (("dtype-zoo", fixtures / "dtype-zoo.safetensors"), ("checkpoint-100", run / "checkpoint-100"),
                       ("checkpoint-200", run / "checkpoint-200"), ("checkpoint-300", run / "checkpoint-300"),
                       ("demo-run", run)):
        out += [(f"{name} --json", path, ["--json"]), (f"{name} -q", path, ["-q"]), (f"{name} console", path, ["--all"])]
    out += [
        ("checkpoint-300 --markdown", run / "checkpoint-300", ["--markdown"]),
        ("checkpoint-300 --target-dtype bf16", run / "checkpoint-300", ["--json", "--target-dtype", "bf16"]),
        ("dtype-zoo --target-dtype fp16", fixtures / "dtype-zoo.safetensors", ["--json", "--target-dtype", "fp16"]),
        ("checkpoint-300 --only", run / "checkpoint-300", ["--json", "--only", "transformer.h.2*", "--exclude", "*ln_*"]),
        ("checkpoint-300 --outlier-factor 4", run / "checkpoint-300", ["--json", "--outlier-factor", "4"]),
    ]
    return out


def output(tree: Path, path: Path, options: list[str]) -> str:
    """What ``nandoctor scan PATH OPTIONS`` run in ``tree`` prints (both trees scan this tree's files)."""
    env = dict(os.environ, COLUMNS="160", NO_COLOR="1", TERM="dumb")
    proc = subprocess.run([sys.executable, "-m", "nandoctor", "scan", str(path), "--no-progress", *options],
                          cwd=tree, capture_output=True, env=env, check=False)
    text = proc.stdout.decode(errors="replace").replace(str(DATA), "<DATA>").replace(str(ROOT), "<TREE>")
    text = _JSON_TIMING.sub(r'"\1": 0', text) if "--json" in options else _TEXT_TIMING.sub("<time>", text)
    return f"exit {proc.returncode}\n{text}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("before", type=Path, help="the other tree (a git worktree of the commit to compare with)")
    ap.add_argument("--keep", action="store_true", help="keep bench-data/many/ afterwards")
    args = ap.parse_args()
    differ = 0
    all_cases = cases()
    for label, path, options in all_cases:
        same = output(args.before, path, options) == output(ROOT, path, options)
        differ += not same
        print(f"{'same   ' if same else 'DIFFERS'} {label}", flush=True)
    print(f"{len(all_cases) - differ} of {len(all_cases)} outputs byte-identical (paths and timing masked)")
    if not args.keep:
        shutil.rmtree(DATA, ignore_errors=True)
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
