"""Fewer malloc arenas (glibc), so freed image buffers are reused instead of kept apart.

A conversion allocates and frees hundreds of ~0.5 MB blocks a second (image files, base64 data
URLs), on the event loop thread and on the worker threads that read images. glibc gives threads
their own arenas (up to 8 per core), each keeping the pages it has freed; on the 4+4-replica
benchmark the converter's resident memory stayed ~130 MB above what it held. Two arenas:
peak RSS 401-406 MB against 428-437 MB, wall time and CPU unchanged. (A fixed mmap threshold,
which returns every large block at once, reached 390 MB but cost ~4% wall and ~2 ms of CPU per
sample in page faults and unmaps; measured with benchmarks/bench_convert.py --workload replicas.)
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_ARENA_MAX = -8  # mallopt parameter (malloc.h)


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """At most `arenas` malloc arenas for this process; False where libc is not glibc. Takes
    effect for threads that have not allocated yet: call it before the worker threads start."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # musl, macOS: no mallopt, nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))
