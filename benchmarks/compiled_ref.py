"""The machine's limit for a scan: a minimal compiled single-pass reference (read + bf16 exponent test).

``bench_scan.py`` shows it as the ``c-ref`` row, so the table says how close nandoctor
is to what compiled code does on this machine, not only to numpy. The C program
is written to a temporary folder and built with ``cc -O2`` when a C compiler is
there (skipped, with a note, when not). It ``pread``s each file in 4 MiB chunks
into one reused buffer per thread (chunks dealt round-robin to ``threads``
threads) and tests every 64-bit word for bf16 lanes whose exponent is all ones
(NaN/Inf): ``((w & 0x7F80..) + 0x0080..) & 0x8000..`` sets a lane's top bit
exactly when its exponent bits are all set, with no carry between lanes. It
counts the chunks holding one: a check with no census, no per-tensor work and
no Python.

    python benchmarks/compiled_ref.py FILE...   # build, run once, print JSON
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (4u << 20)
typedef struct { int fd; off_t size; int id, threads; long flagged; } job_t;

static void *scan(void *arg) {
    job_t *job = arg;
    uint64_t *buf = aligned_alloc(64, CHUNK);
    const uint64_t mask = 0x7F807F807F807F80ull, low = 0x0080008000800080ull, top = 0x8000800080008000ull;
    for (off_t at = (off_t)job->id * CHUNK; at < job->size; at += (off_t)job->threads * CHUNK) {
        size_t want = (size_t)(job->size - at < CHUNK ? job->size - at : CHUNK), got = 0;
        while (got < want) {
            ssize_t n = pread(job->fd, (char *)buf + got, want - got, at + got);
            if (n <= 0) { perror("pread"); exit(2); }
            got += (size_t)n;
        }
        uint64_t acc = 0;
        for (size_t i = 0; i < want / 8; i++) acc |= ((buf[i] & mask) + low) & top;
        job->flagged += acc != 0;
    }
    free(buf);
    return NULL;
}

int main(int argc, char **argv) {
    int threads = atoi(argv[1]);
    long flagged = 0; double bytes = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int f = 2; f < argc; f++) {
        int fd = open(argv[f], O_RDONLY);
        struct stat st;
        if (fd < 0 || fstat(fd, &st)) { perror(argv[f]); return 2; }
        pthread_t tid[64]; job_t jobs[64];
        for (int t = 0; t < threads; t++) {
            jobs[t] = (job_t){fd, st.st_size, t, threads, 0};
            pthread_create(&tid[t], NULL, scan, &jobs[t]);
        }
        for (int t = 0; t < threads; t++) { pthread_join(tid[t], NULL); flagged += jobs[t].flagged; }
        bytes += (double)st.st_size;
        close(fd);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double seconds = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("{\"seconds\": %.6f, \"bytes\": %.0f, \"flagged_chunks\": %ld}\n", seconds, bytes, flagged);
    return 0;
}
"""


def compiler() -> str | None:
    """The C compiler to build with (``cc``, else ``gcc`` or ``clang``), or None."""
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def build(folder: Path) -> Path | None:
    """Write and build the reference in ``folder``; None (and a note on stderr) when it cannot be built."""
    cc = compiler()
    if cc is None:
        print("c-ref: no C compiler (cc/gcc/clang) found; the compiled reference row is skipped", file=sys.stderr)
        return None
    source, binary = folder / "cref.c", folder / "cref"
    source.write_text(SOURCE)
    done = subprocess.run([cc, "-O2", "-pthread", "-o", str(binary), str(source)], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"c-ref: build failed, row skipped:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return binary


def run(binary: Path, files: list[Path], threads: int = 2) -> dict:
    """One run over ``files``: {"seconds", "bytes", "flagged_chunks"} as the program measured them."""
    out = subprocess.run([str(binary), str(threads), *map(str, files)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        built = build(Path(tmp))
        if built is None:
            raise SystemExit(1)
        print(json.dumps(run(built, [Path(a) for a in sys.argv[1:]])))
