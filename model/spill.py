"""File-backed arrays for large volumes: the data lives in a file, memory holds only the pages
in use.

A 1,000-slice CT is 500 MB of int16 HU, and the node needs it whole only once (the resampling to
the model grid); later stages read a few planes (key images, overlays) or boxes (mean HU of a
finding). Held in anonymous memory, it stays resident for the whole job and sets the peak.
Instead, :func:`file_backed` gives a NumPy array mapped on an already-unlinked temporary file
(``MAP_SHARED``, so every write goes to the page cache and the file, and nothing is left on disk
whatever happens to the process); :func:`release` drops the pages the process has touched from
its resident set once a pass is over. Reading them again costs a page-cache hit or a disk read,
never a different value.

The folder must be on a disk: a tmpfs (``/tmp`` on many distributions) is memory itself.
"""
from __future__ import annotations

import mmap
import os
import tempfile
from pathlib import Path

import numpy as np


def file_backed(shape: tuple[int, ...], dtype: np.dtype | type, directory: str | os.PathLike[str]) -> np.ndarray:
    """A zero-filled array of ``shape`` and ``dtype`` whose data is an unlinked file in ``directory``."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if size == 0:
        return np.zeros(shape, dtype=dtype)
    with tempfile.TemporaryFile(dir=directory, prefix="dsm-spill-") as fh:
        # Blocks reserved now: a write through the mapping to a sparse file on a full disk is a
        # SIGBUS that kills the process; this is an OSError (ENOSPC) with a reason instead.
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fh.fileno(), 0, size)
            else:  # macOS: a sparse file (the blocks are allocated as pages are written)
                fh.truncate(size)
        except OSError as exc:
            raise OSError(exc.errno, f"no room for a {size / 2**20:.0f} MB file-backed array in {directory}: "
                                     f"{exc.strerror}") from None
        # The mapping keeps the file alive after the descriptor is closed; the file has no name.
        return np.memmap(fh, dtype=dtype, mode="r+", shape=shape)


def mapping_of(array: np.ndarray) -> mmap.mmap | None:
    """The shared file mapping an array (or a view of one) lives in, if any."""
    base: object = array
    while base is not None:
        found = getattr(base, "_mmap", None)
        if isinstance(found, mmap.mmap):
            return found
        if isinstance(base, mmap.mmap):
            return base
        base = getattr(base, "base", None)
    return None


def release(array: np.ndarray) -> bool:
    """Drop the resident pages of a :func:`file_backed` array (or a view of one) from this
    process; the data stays in the file. False (and nothing done) for an in-memory array."""
    mapping = mapping_of(array)
    if mapping is None or mapping.closed or not hasattr(mmap, "MADV_DONTNEED"):
        return False  # in memory, or a platform without madvise (the pages then stay resident)
    # MADV_DONTNEED on a shared file mapping unmaps the pages without losing data: dirty pages
    # are already in the page cache and are written back to the file by the kernel.
    mapping.madvise(mmap.MADV_DONTNEED)
    return True


def chunks(view: np.ndarray, chunk_bytes: int = 16 << 20) -> list[slice]:
    """Ranges along the first axis of ``view`` that each span about ``chunk_bytes`` of the
    underlying array. The page cache maps a file in folios (up to a whole slice), so a
    coronal plane that reads one row per slice touches every slice: bounded residency needs
    steps measured in the distance between consecutive first-axis elements, not in the bytes
    the view itself holds."""
    n = len(view) if view.ndim else 0
    step = max(1, chunk_bytes // max(1, abs(view.strides[0]) if view.ndim else 1))
    return [slice(a, min(a + step, n)) for a in range(0, n, step)]


def copy_out(view: np.ndarray, chunk_bytes: int = 16 << 20) -> np.ndarray:
    """An in-memory copy of ``view`` (e.g. one plane of a file-backed volume), read in chunks
    along its first axis (:func:`chunks`) with the pages released after each. An in-memory
    ``view`` is returned as it is."""
    if mapping_of(view) is None:
        return view
    out = np.empty(view.shape, dtype=view.dtype)
    if view.ndim == 0:
        out[...] = view
        return out
    for part in chunks(view, chunk_bytes):
        out[part] = view[part]
        release(view)
    return out
