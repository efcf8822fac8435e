"""Time the opcode pre-scan (nandoctor/readers/torch/prescan.py) against the previous one (tests/prescan_oracle.py).

Inputs are built in memory: the ``data.pkl`` of a ``torch.save`` of 20,000 small tensors (needs torch), and
the many-views bombs of issue 14 item 10 (80,000 and 600,000 views of one storage, built as
tests/test_adversarial_readers.py builds them). With ``--scan`` the bombs are also written as files and
scanned end to end (each must be refused). Best of ``--runs``; the machine is shared, compare in one run.

    python benchmarks/bench_prescan.py [--runs 5] [--scan]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import best

from nandoctor.readers.torch.prescan import prescan as new_prescan
from tests.prescan_oracle import prescan as old_prescan
from tests.torch_helpers import p_global, p_int, p_storage


def torch_save_pickle(n: int) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save({f"layers.{i}.w": torch.ones(2) for i in range(n)}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        (name,) = [x for x in z.namelist() if x.endswith("/data.pkl")]
        return z.read(name)


def view_bomb(n: int) -> bytes:
    """``n`` views of one storage, as test_many_views_of_one_storage_are_refused_quickly builds them."""
    views = []
    for i in range(n):
        if i == 0:
            views.append(p_int(0) + p_global("torch._utils", "_rebuild_tensor_v2") + b"q\x01(" +
                         p_storage("0", 1024) + b"q\x00" + p_int(0) + b"K\x04\x85K\x01\x85\x89}tR")
        else:
            views.append(p_int(i) + b"h\x01(h\x00" + p_int(i % 1000) + b"K\x04\x85K\x01\x85\x89}tR")
    return b"\x80\x02}(" + b"".join(views) + b"u."



def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--scan", action="store_true", help="also scan the bombs end to end")
    args = ap.parse_args()
    cases = [("torch.save, 20,000 tensors", torch_save_pickle(20_000)),
             ("80,000 views of one storage", view_bomb(80_000)),
             ("600,000 views of one storage", view_bomb(600_000))]
    print("| input | data.pkl MB | opcodes | before s | after s | speed-up |")
    print("|---|---|---|---|---|---|")
    for label, data in cases:
        import pickletools

        ops = sum(1 for _ in pickletools.genops(data))
        old = best(lambda data=data: old_prescan(io.BytesIO(data), len(data)), max(1, args.runs // 2))
        new = best(lambda data=data: new_prescan(data, len(data)), args.runs)
        assert old_prescan(io.BytesIO(data), len(data)).float_offsets == new_prescan(data, len(data)).float_offsets
        print(f"| {label} | {len(data) / 1e6:.1f} | {ops:,} | {old:.3f} | {new:.3f} | {old / new:.1f}x |")
    if args.scan:
        from nandoctor.engine import scan
        from tests.torch_helpers import torch_zip

        with tempfile.TemporaryDirectory() as tmp:
            for label, data in cases[1:]:
                path = torch_zip(Path(tmp) / "views.pt", data, {"0": bytes(4096)})
                started = time.perf_counter()
                try:
                    report = scan(path, device="cpu")
                    outcome = f"exit {report.exit_code}"
                except Exception as exc:  # noqa: BLE001  a refusal is the expected outcome
                    outcome = f"refused: {str(exc)[:80]}"
                print(f"scan {label}: {time.perf_counter() - started:.2f} s, {outcome}")


if __name__ == "__main__":
    main()
