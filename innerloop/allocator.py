"""Keep freed memory in the process instead of handing it back to the kernel after every call.

A Conv4 forward allocates and frees a few megabytes of activations per layer. With glibc's
defaults the freed top of the heap above 128 KiB (a threshold that only creeps up) is trimmed
back to the kernel, so the next forward faults the same pages in again, zero-filled: on this
project's 2-core CPUs the shared-prefix forward of 120 drawings took 42 ms that way and 30 ms
with the settings below (``benchmarks/bench_arithmetic.py`` prints both), which serving and
evaluation run. Meta-training throughput did not change measurably (second-order MAML,
``bench_meta_training.py``: 4.4-4.7 tasks/s either way). The cost is up to
:data:`TRIM_THRESHOLD` bytes of freed heap that the process keeps for reuse.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt(3) parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

TRIM_THRESHOLD = 64 << 20  # freed heap kept before trimming
MMAP_THRESHOLD = 32 << 20  # blocks at least this large are mapped (and unmapped) on their own

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Apply the settings once per process (children made by fork inherit them).

    ``False`` where the C library is not glibc (macOS, musl): nothing is changed there.
    """
    global _applied
    if _applied is None:
        _applied = _mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and _mallopt(
            _M_TRIM_THRESHOLD, TRIM_THRESHOLD
        )
    return _applied


def _mallopt(parameter: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(parameter, value))
