"""The malloc tuning applied at ``import mpcc`` (glibc only), and its opt-out."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

PROBE = "import mpcc, mpcc.runtime.allocator as a; print(a.tune_allocator())"


def _probe(setting: str) -> str:
    env = {**os.environ, "MPCC_MALLOC_TUNING": setting}
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc malloc only")
def test_import_tunes_glibc_malloc():
    assert _probe("1") == "True"


def test_tuning_can_be_turned_off():
    assert _probe("0") == "False"
