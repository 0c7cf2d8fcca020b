"""Environment settings for a process that converts, read by native libraries when they load.

They must be in the environment before numpy / pyarrow are imported: the console script and the
Prefect flow module set them first thing (`apply`), and Ray shard workers get them through the
task runner's runtime_env (flows/build_flow.py). A value the caller already set is kept.
"""

from __future__ import annotations

import os

SETTINGS = {
    # numpy (imported by pyarrow) starts an OpenBLAS thread pool whose threads spin for a while after
    # start: ~0.1 s of CPU per converter. Nothing here does linear algebra.
    "OPENBLAS_NUM_THREADS": "1",
    # Arrow's default allocator (mimalloc) gives each of Arrow's threads a heap of its own and, where
    # transparent huge pages are on, backs it 2 MB at a time: writing a 300-row run's Parquet raised
    # the converter's RSS from its steady ~150 MB to ~200 MB, plus the CPU to zero those pages.
    # The C library's malloc reuses what the process already holds. Only this variable switches the
    # pool Arrow's C++ code uses; pyarrow.set_memory_pool reaches the Python-facing calls only.
    "ARROW_DEFAULT_MEMORY_POOL": "system",
}


def settings() -> dict[str, str]:
    """SETTINGS, with any value the environment already holds (e.g. for a Ray runtime_env)."""
    return {name: os.environ.get(name, value) for name, value in SETTINGS.items()}


def apply() -> None:
    for name, value in SETTINGS.items():
        os.environ.setdefault(name, value)
