"""Which holders of jobs and delivery leases are gone: one lock file per process.

A process that runs jobs or sends deliveries (``dsm-node serve``, ``dsm-node worker``) has an
identity, :data:`HOLDER` = ``host:pid:token`` (the token tells apart two incarnations that got
the same pid, as a restarted container does), written into the rows it holds
(``jobs.worker``, ``deliveries.claimed_by``). At start it :func:`register` s: it creates
``DATA_DIR/run/<holder>.lock`` and keeps an exclusive ``flock`` on it for its whole life. The
kernel drops that lock when the process ends, however it ends (kill -9 included).

:func:`holder_gone` is therefore a certain answer, with no timeout to wait for: a holder on
this host whose lock file exists and can be locked by someone else has ended. A restarted node
uses it to take back at once the jobs and leases of its dead predecessor. Anything it cannot be
sure of -- a holder on another host (a file lock on a network filesystem may be local to each
client), a holder without a lock file (another data directory, an older version) -- is left to
the heartbeat and lease timeouts, as before.
"""
from __future__ import annotations

import fcntl
import logging
import os
import re
import secrets
import socket
import time
from pathlib import Path

log = logging.getLogger("dsm_node.liveness")

HOSTNAME = socket.gethostname()
HOLDER = f"{HOSTNAME}:{os.getpid()}:{secrets.token_hex(3)}"
STALE_LOCK_FILE_S = 7 * 86400  # lock files of ended processes are removed after this long

_held: dict[Path, int] = {}  # lock file -> fd, for as long as this process lives
_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]")


def run_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "run"


def lock_path(data_dir: Path, holder: str) -> Path:
    return run_dir(data_dir) / f"{_UNSAFE.sub('_', holder)}.lock"


def register(data_dir: Path) -> bool:
    """Hold this process's lock file under ``data_dir`` (idempotent); False when impossible
    (then other processes fall back to the heartbeat and lease timeouts for our rows)."""
    path = lock_path(data_dir, HOLDER)
    if path in _held:
        return True
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.write(fd, f"{HOLDER}\n".encode())
    except OSError as exc:
        log.warning("liveness lock file %s not created (%s): a restart will wait for heartbeat and lease "
                    "timeouts instead", path, exc)
        return False
    _held[path] = fd
    _prune(data_dir)
    return True


def holder_gone(data_dir: Path, holder: str | None) -> bool:
    """True only when ``holder`` certainly ended: same host, lock file present and free."""
    if not holder or holder == HOLDER or holder.split(":", 1)[0] != HOSTNAME:
        return False
    path = lock_path(data_dir, holder)
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False  # no lock file: cannot tell
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # held: the process lives
    finally:
        os.close(fd)  # closing releases our probe lock
    return True


def _prune(data_dir: Path) -> None:
    """Remove lock files of processes that ended long ago (their rows were taken back since)."""
    cutoff = time.time() - STALE_LOCK_FILE_S
    for path in run_dir(data_dir).glob("*.lock"):
        try:
            if path in _held or path.stat().st_mtime > cutoff:
                continue
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink()
        except OSError:
            pass
        finally:
            os.close(fd)
