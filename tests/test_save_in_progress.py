"""A weight file that a save is still writing is said to be one (engine.being_written), not "re-download it".

A new user's trial: a checkpoint being copied slowly into place (as a save writes it) was exit 3 with "re-download or
re-save this file". It is exit 3 still (never clean: it was not read whole), with the hint that a save is writing it;
a file cut short that no longer changes keeps the advice to re-save it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import nandoctor
from tests.conftest import DEMO_RUN


def test_a_file_still_growing_is_a_save_in_progress_and_a_stalled_one_is_not(tmp_path: Path) -> None:
    source = next((DEMO_RUN / "checkpoint-200").glob("*.safetensors"))
    data = source.read_bytes()
    target = tmp_path / "checkpoint-300" / source.name
    target.parent.mkdir()
    started = threading.Event()

    def save_slowly() -> None:
        with open(target, "wb") as fh:
            for at in range(0, len(data), max(1, len(data) // 40)):
                fh.write(data[at : at + max(1, len(data) // 40)])
                fh.flush()
                started.set()
                time.sleep(0.05)

    writer = threading.Thread(target=save_slowly)
    writer.start()
    started.wait()
    time.sleep(0.1)
    report = nandoctor.scan(target, device="cpu")
    writer.join()
    assert report.exit_code == 3
    (problem,) = report.errors
    assert problem.hint.startswith("a save is still writing it (it changed while nandoctor looked): wait for the save "
                                   "to finish and scan again"), problem.hint
    assert nandoctor.scan(target, device="cpu").exit_code == 0  # (the save finished: the whole file reads)
    target.write_bytes(data[: len(data) // 2])  # cut short, and no longer changing
    stalled = nandoctor.scan(target, device="cpu")
    assert stalled.exit_code == 3 and "save is still writing" not in stalled.errors[0].hint
    assert stalled.errors[0].hint.startswith("re-download or re-save this file")
