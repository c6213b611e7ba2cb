"""Keep freed memory in the process between protocol steps (glibc malloc).

A secure inference allocates and frees about a gigabyte of tensors per
BERT-base layer, in three threads. glibc's defaults hand freed arena heaps
and large blocks back to the kernel, so every inference faults the same
pages in again: measured 270k minor faults and ~0.7 s of kernel time per
layer on two cores, about a third of the run. Raising the trim threshold,
the top pad and the mmap threshold makes glibc keep that memory for reuse,
and one arena for all threads (set at ``import mpcc``, before threads
allocate) lets the party threads of every run reuse the same memory.

The cost: the process keeps its peak heap (at most what one inference used)
instead of returning it. Set ``MPCC_MALLOC_TUNING=0`` to leave malloc alone.
Elsewhere than glibc this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["tune_allocator"]

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
KEEP_FREE_BYTES = 2 ** 31 - 1      # never trim the heap top below this
TOP_PAD_BYTES = 64 << 20           # >= glibc's per-thread heap size: empty thread heaps are kept
MMAP_THRESHOLD_BYTES = 32 << 20    # glibc's maximum: blocks below it come from the (kept) heaps

_state: dict[str, bool] = {}


def tune_allocator() -> bool:
    """Apply the settings once per process; returns whether they are in effect."""
    if "tuned" in _state:
        return _state["tuned"]
    tuned = False
    if os.environ.get("MPCC_MALLOC_TUNING", "1") != "0" and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            tuned = all(mallopt(option, value) == 1 for option, value in (
                (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (M_TRIM_THRESHOLD, KEEP_FREE_BYTES),
                (M_TOP_PAD, TOP_PAD_BYTES), (M_ARENA_MAX, 1)))
        except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
            tuned = False
    _state["tuned"] = tuned
    return tuned
