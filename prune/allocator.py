"""Keep freed memory for reuse (glibc): one call before a long run of equal-sized steps.

Each Edge Pruning step allocates and frees the same large tensors (the writer
stack and its gradient, ``[W, B, S, D]``, about 1 GB each for GPT-2 small at
batch 32 x 64). glibc serves every allocation above 32 MB with a fresh ``mmap``
and returns it on ``free``, so the kernel zero-fills every page of them again
on the next step: on CPU, that page faulting was most of a large step's time
(docs/performance.md). :func:`keep_freed_memory` makes glibc take large
allocations from its heap and never give freed memory back, so the next step
reuses pages already touched. The process's resident size then stays at its
peak. ``prune run`` and ``bench/run.py step`` call it (for the Edge Pruning step
and the plain forward + backward alike).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's <malloc.h>


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve large allocations from its heap (no ``mmap``) and never to trim it.
    Process-wide, from now on. Returns False where there is no glibc (nothing changes)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # another C library (musl) or none found
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # -1 as the trim threshold: glibc reads it as the largest size, so it never trims.
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))
