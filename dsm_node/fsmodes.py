"""File modes of what the node writes: at most 0640 for files, 0750 for folders.

The database, the logs and the result files (a SEG or SR carries the patient's name and ID)
must not become world-readable because the node was started from a shell with umask 022.
Outside systemd (``UMask=0027`` there) nothing else guarantees it, so every entry point
tightens the process umask first (``restrict_umask``); it never loosens a stricter one. Child
processes (the inference process) inherit it.
"""
from __future__ import annotations

import os
from pathlib import Path

MASK = 0o027  # no group write, nothing for others


def restrict_umask() -> int:
    """Add MASK to the process umask; return the previous one."""
    previous = os.umask(MASK)
    os.umask(previous | MASK)
    return previous


def tighten(*paths: Path) -> None:
    """Drop group-write and all 'others' bits from existing paths (created under a looser umask
    by an earlier version or by hand)."""
    for path in paths:
        try:
            mode = path.stat().st_mode & 0o7777
            if mode & MASK:
                os.chmod(path, mode & ~MASK)
        except OSError:
            pass
