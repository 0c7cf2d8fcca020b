"""The converter's process environment (pipeline/procenv.py): set before numpy / pyarrow load, by
the console script and by the Prefect flow module; a caller's own value wins."""

import os
import subprocess
import sys

import pytest

from .conftest import ROOT

PROBE = ("import os, sys, pyarrow; print(pyarrow.default_memory_pool().backend_name, "
         "os.environ.get('OPENBLAS_NUM_THREADS'), 'numpy' in sys.modules)")


def _probe(first_import: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("ARROW_DEFAULT_MEMORY_POOL", "OPENBLAS_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", f"import {first_import}; {PROBE}"], cwd=ROOT, check=True,
                         capture_output=True, text=True, env={**clean, "PYTHONPATH": str(ROOT), **env})
    return out.stdout.split()


@pytest.mark.parametrize("entry", ["pipeline.cli", "flows.build_flow"])
def test_the_entry_points_set_arrows_pool_and_openblas_before_they_load(entry):
    # Arrow's C++ default pool is fixed when pyarrow loads: only an environment set before that counts.
    assert _probe(entry) == ["system", "1", "True"]


def test_a_callers_own_setting_wins():
    assert _probe("pipeline.cli", ARROW_DEFAULT_MEMORY_POOL="mimalloc", OPENBLAS_NUM_THREADS="4") == \
        ["mimalloc", "4", "True"]


def test_without_the_entry_point_arrow_keeps_its_default():
    # What the entry points change: a bare import of the library uses Arrow's own default.
    assert _probe("pipeline.writers")[0] != "system"
