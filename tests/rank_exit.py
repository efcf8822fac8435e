"""How a test's torchrun worker leaves once its work is done and written.

Under load, gloo's or DeepSpeed's C++ threads sometimes abort the process at interpreter teardown
("terminate called without an active exception", SIGABRT) after everything the test reads was
written; torchrun then reports the rank as failed. Leaving through a barrier, the process group torn
down, and ``os._exit`` (no C++ static destructors) makes a finished worker exit 0 every time. Only
for the success path: a worker that failed must still exit non-zero.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


def leave_together() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()  # a rank tearing gloo down while the other still works can abort it
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def as_rank(body: Callable[[], None]) -> None:
    """Run ``body`` in this torchrun process with a gloo process group, then leave together with the other ranks
    (a failing rank tears its group down and raises, so torchrun reports it)."""
    import torch.distributed as dist

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dist.init_process_group("gloo")
    try:
        body()
    except BaseException:
        dist.destroy_process_group()
        raise
    leave_together()
