"""Give freed memory back to the system (glibc's allocator).

glibc serves allocations above a threshold with their own ``mmap`` and returns them on free,
smaller ones from its heap, which it rarely shrinks. The threshold starts at 128 KiB but
rises, after the first large block is freed, up to 32 MiB: from then on NumPy's multi-megabyte
temporaries (a slab of scores, a plane of masks) come from the heap, and after a long series
the heap keeps hundreds of MB it no longer uses. Measured with ``dsm-node infer`` on a
600-slice study: peak RSS 2548 MB with the rising threshold, 2072 MB with a fixed 1 MiB one
(docs/memory.md). A fixed threshold also stops the rise.
"""
from __future__ import annotations

import ctypes

#: mallopt parameter number of M_MMAP_THRESHOLD (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20


def return_freed_memory(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; False where the C library is not
    glibc (musl, macOS: nothing to do, or nothing we can do)."""
    try:
        # The process's own symbols: libc is loaded already (no library search, which runs
        # ldconfig in a subprocess, at every command's start).
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))
