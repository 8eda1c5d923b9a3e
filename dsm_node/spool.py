"""The durable spool: received instances as files, one per SOP instance.

Layout: ``SPOOL/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``. UIDs come from
the wire and are untrusted, so every one is validated (PS3.5 9.1) before it becomes part of a
path; a valid UID is digits and dots only, so it can never climb out of the spool.

A write is durable and all-or-nothing: temp file in the target folder -> write -> fsync ->
``os.replace`` (a new folder is fsynced into its parent once, when created). A reader sees
either no file or a complete one. The receiver splits this in two (:meth:`Spool.stage`, then
:meth:`Staged.commit` once the index row is committed, or :meth:`Staged.discard` when the
instance is refused), so that a refused instance never reaches its final path. The temp file's
name carries the size and CRC-32 of its content: at start-up (:meth:`Spool.recover_temp_files`)
a complete temp file whose rename was lost to a power failure is renamed into place, every other
temp file is deleted. This gives
the durability of an fsync of the folder after every rename without its cost (a second disk
flush per instance; ``sync_rename=True`` does that instead). Free space and quota are checked
before anything is written (:class:`SpoolFull`, answered 0xA700 by the SCP).
"""
from __future__ import annotations

import errno
import logging
import os
import re
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

log = logging.getLogger("dsm_node.spool")

_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
TEMP_SUFFIX = ".tmp"
FILE_SUFFIX = ".dcm"
# .<sop>.dcm.<size>-<crc32>.<random>.tmp
_TEMP_RE = re.compile(r"\.(?P<sop>[0-9.]+)\.dcm\.(?P<size>[0-9]+)-(?P<crc>[0-9a-f]{8})\.[A-Za-z0-9_]+\.tmp")
_DIR_MODE = 0o700


class SpoolError(Exception):
    """Base class of spool errors."""


class InvalidUID(SpoolError, ValueError):
    """A UID that does not conform to PS3.5 9.1 (and must never reach a path)."""


class SpoolFull(SpoolError):
    """Below the free-space threshold or over the quota: the instance is refused (0xA700)."""

    def __init__(self, message: str, *, reason: str, free_bytes: int | None = None, used_bytes: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason  # "min_free_bytes" | "quota_bytes" | "disk_full"
        self.free_bytes = free_bytes
        self.used_bytes = used_bytes


def uid_problem(uid: object) -> str | None:
    """Why ``uid`` is not a valid UID (PS3.5 9.1), or None when it is."""
    if not isinstance(uid, str):
        return f"not a string ({type(uid).__name__})"
    if uid == "":
        return "empty"
    if len(uid) > 64:
        return f"longer than 64 characters ({len(uid)})"
    if not _UID_RE.fullmatch(uid):
        if set(uid) - set("0123456789."):
            return "characters other than digits and dots"
        if uid.startswith(".") or uid.endswith(".") or ".." in uid:
            return "empty component"
        return "component with a leading zero"
    return None


def validate_uid(uid: object, what: str = "UID") -> str:
    """Return ``uid`` if it is a valid UID, otherwise raise :class:`InvalidUID` naming ``what``."""
    problem = uid_problem(uid)
    if problem is not None:
        shown = repr(uid)[:80]
        raise InvalidUID(f"invalid {what} {shown}: {problem}")
    return uid  # type: ignore[return-value]


def relative_path(study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
    """The spool path of an instance, relative to the spool root (POSIX separators)."""
    validate_uid(study_uid, "StudyInstanceUID")
    validate_uid(series_uid, "SeriesInstanceUID")
    validate_uid(sop_instance_uid, "SOPInstanceUID")
    return f"{study_uid}/{series_uid}/{sop_instance_uid}{FILE_SUFFIX}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_relative(rel: str) -> tuple[str, str, str]:
    """Split a spool path and re-validate every component (defence in depth)."""
    parts = rel.split("/")
    if len(parts) != 3 or not parts[2].endswith(FILE_SUFFIX):
        raise InvalidUID(f"not a spool path: {rel!r}")
    study, series, name = parts
    sop = name[: -len(FILE_SUFFIX)]
    validate_uid(study, "StudyInstanceUID")
    validate_uid(series, "SeriesInstanceUID")
    validate_uid(sop, "SOPInstanceUID")
    return study, series, sop


class Spool:
    """Durable file store for received instances.

    ``used_bytes`` is a callable returning the bytes currently held (normally the sum of the
    index); the spool adds what it writes itself and re-reads the callable every
    ``refresh_s`` seconds, so deletions by retention are picked up without a per-instance
    query. Without it the spool walks its folder once at start-up.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        fsync: bool = True,
        min_free_bytes: int = 0,
        quota_bytes: int | None = None,
        used_bytes: Callable[[], int] | None = None,
        refresh_s: float = 10.0,
        sync_rename: bool = False,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        # fsync the folder after every rename as well (a second disk flush per instance).
        # Off by default: recover_temp_files() redoes a rename lost to a power failure.
        self.sync_rename = sync_rename
        self.min_free_bytes = min_free_bytes
        self.quota_bytes = quota_bytes
        self._used_fn = used_bytes
        self._refresh_s = refresh_s
        self._lock = threading.Lock()
        self._known_dirs: set[str] = set()
        self._used: int | None = None
        self._used_at = 0.0
        self._pending = 0  # bytes being written right now (reserved by check_space)

    # Space -------------------------------------------------------------------------------
    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def used_bytes(self) -> int:
        """Bytes held by the spool (cached; see the class docstring)."""
        now = time.monotonic()
        with self._lock:
            if self._used is None or (self._used_fn is not None and now - self._used_at > self._refresh_s):
                self._used = self._used_fn() if self._used_fn is not None else self._walk_size()
                self._used_at = now
            return self._used

    def _walk_size(self) -> int:
        total = 0
        for rel in self.iter_files():
            try:
                total += (self.root / rel).stat().st_size
            except OSError:
                pass
        return total

    def check_space(self, incoming: int, *, reserve: bool = False) -> None:
        """Raise :class:`SpoolFull` if ``incoming`` more bytes would cross a limit.

        With ``reserve`` the bytes are counted as pending (atomically with the quota check)
        until :meth:`_release` is called, so parallel writers cannot overshoot the quota.
        """
        if self.min_free_bytes:
            free = self.free_bytes()
            if free - incoming < self.min_free_bytes:
                raise SpoolFull(
                    f"free disk space {free} B minus {incoming} B is below storage.min_free_bytes "
                    f"({self.min_free_bytes} B)",
                    reason="min_free_bytes",
                    free_bytes=free,
                )
        used = self.used_bytes() if self.quota_bytes is not None else 0
        with self._lock:
            if self.quota_bytes is not None and used + self._pending + incoming > self.quota_bytes:
                raise SpoolFull(
                    f"spool holds {used} B; {incoming} B more would exceed storage.quota_bytes ({self.quota_bytes} B)",
                    reason="quota_bytes",
                    used_bytes=used,
                )
            if reserve:
                self._pending += incoming

    def _release(self, reserved: int) -> None:
        with self._lock:
            self._pending -= reserved

    def _account(self, delta: int) -> None:
        with self._lock:
            if self._used is not None:
                self._used += delta

    # Paths -------------------------------------------------------------------------------
    def path(self, rel: str) -> Path:
        _check_relative(rel)
        return self.root / rel

    def exists(self, rel: str) -> bool:
        return self.path(rel).is_file()

    def _ensure_dir(self, rel_dir: str) -> tuple[Path, list[Path]]:
        """The folder ``rel_dir``, created when missing; (folder, the folders created, deepest first)."""
        target = self.root / rel_dir
        if rel_dir in self._known_dirs:
            return target, []
        created: list[Path] = []
        probe = target
        while not probe.is_dir():
            created.append(probe)
            probe = probe.parent
        made: list[Path] = []
        for folder in reversed(created):
            try:
                folder.mkdir(mode=_DIR_MODE)
                made.insert(0, folder)
            except FileExistsError:
                continue
        if self.fsync and created:
            # A new folder's name lives in its parent: make the chain durable once.
            for folder in reversed(created):
                _fsync_dir(folder.parent)
        with self._lock:
            if len(self._known_dirs) > 10000:
                self._known_dirs.clear()
            self._known_dirs.add(rel_dir)
        return target, made

    def _forget_dirs(self, folders: list[Path]) -> None:
        """Remove ``folders`` (deepest first) where empty: those a refused write created."""
        for folder in folders:
            rel = folder.relative_to(self.root).as_posix()
            with self._lock:
                self._known_dirs.discard(rel)
            try:
                folder.rmdir()
            except OSError:  # not empty: another instance uses it now
                return

    # Writing -----------------------------------------------------------------------------
    def write(self, rel: str, chunks: Iterable[bytes | bytearray | memoryview], size: int | None = None) -> Path:
        """Durably write ``chunks`` as the file ``rel``; replace an existing file atomically.

        :meth:`stage` + :meth:`Staged.commit`. On any error nothing is left behind and the
        exception is re-raised (out-of-space errors from the OS become :class:`SpoolFull`).
        """
        staged = self.stage(rel, chunks, size)
        try:
            return staged.commit()
        except BaseException:
            try:
                os.unlink(staged.tmp)
            except OSError:
                pass
            raise

    def stage(self, rel: str, chunks: Iterable[bytes | bytearray | memoryview], size: int | None = None) -> Staged:
        """Write ``chunks`` to a complete, fsynced temp file beside ``rel``; not yet visible.

        The caller records the instance and then calls :meth:`Staged.commit` (rename into
        place) or :meth:`Staged.discard` (delete). Until then the final path is untouched, so a
        refused instance never appears in the spool, and a parallel copy of the same instance
        is never overwritten by one that turns out to be a duplicate. Checks free space and
        quota first (``size`` = total bytes, computed when omitted); the bytes stay reserved
        until commit or discard. The temp file's name carries the expected size and CRC-32 of
        the content, so that start-up recovery can finish a rename lost to a crash or a power
        failure (see :meth:`recover_temp_files`).
        """
        _check_relative(rel)
        parts = list(chunks)
        total = size if size is not None else sum(len(c) for c in parts)
        self.check_space(total, reserve=True)
        folder_rel, name = rel.rsplit("/", 1)
        tmp: str | None = None
        try:
            crc = 0
            for chunk in parts:
                crc = zlib.crc32(chunk, crc)
            folder, created = self._ensure_dir(folder_rel)
            prefix = f".{name}.{total}-{crc:08x}."
            try:
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=TEMP_SUFFIX)
            except FileNotFoundError:  # pruned meanwhile (retention, a refused write): make it again
                with self._lock:
                    self._known_dirs.discard(folder_rel)
                folder, created = self._ensure_dir(folder_rel)
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=TEMP_SUFFIX)
            with open(fd, "wb", closefd=True) as fh:
                for chunk in parts:
                    fh.write(chunk)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
            staged = Staged(self, rel, Path(tmp), folder / name, total, created)
            tmp = None
            return staged
        except OSError as exc:
            self._release(total)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFull(f"disk full while writing {rel}: {exc.strerror}", reason="disk_full") from exc
            raise
        except BaseException:
            self._release(total)
            raise
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    def remove(self, rel: str) -> None:
        """Delete a spool file (used when the index refused it); missing is fine."""
        path = self.path(rel)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return
        self._account(-size)
        if self.fsync:
            _fsync_dir(path.parent)

    # Start-up ----------------------------------------------------------------------------
    def recover_temp_files(self) -> tuple[list[str], list[str]]:
        """Finish or remove the temp files of interrupted writes; return (promoted, removed).

        A temp file whose size and CRC-32 match the values in its name was completely written
        and fsynced; if its final file is missing, the rename was lost (power failure before
        the directory entry reached the disk) and is redone. Every other temp file is
        incomplete and deleted: it was never acknowledged.
        """
        promoted: list[str] = []
        removed: list[str] = []
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for name in filenames:
                if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
                    continue
                full = Path(dirpath) / name
                target = self._complete_temp(full)
                try:
                    if target is not None and not target.exists():
                        os.replace(full, target)
                        if self.fsync:
                            _fsync_dir(target.parent)
                        promoted.append(target.relative_to(self.root).as_posix())
                    else:
                        full.unlink()
                        removed.append(full.relative_to(self.root).as_posix())
                except FileNotFoundError:
                    pass
        if promoted or removed:
            log.warning("spool recovery: %d interrupted write(s) completed, %d incomplete temp file(s) removed",
                        len(promoted), len(removed))
        return promoted, removed

    def clean_temp_files(self) -> list[str]:
        """Recover temp files (see :meth:`recover_temp_files`); return the removed ones."""
        return self.recover_temp_files()[1]

    @staticmethod
    def _complete_temp(path: Path) -> Path | None:
        """The final path if ``path`` is a complete temp file, else None."""
        m = _TEMP_RE.fullmatch(path.name)
        if m is None or uid_problem(m.group("sop")) is not None:
            return None
        size, crc = int(m.group("size")), int(m.group("crc"), 16)
        try:
            if path.stat().st_size != size:
                return None
            value = 0
            with open(path, "rb") as fh:
                while block := fh.read(1 << 20):
                    value = zlib.crc32(block, value)
        except OSError:
            return None
        if value != crc:
            return None
        return path.parent / f"{m.group('sop')}{FILE_SUFFIX}"

    def iter_files(self) -> Iterator[str]:
        """Relative paths of the complete instance files (``study/series/sop.dcm``)."""
        root = self.root
        try:
            studies = list(os.scandir(root))
        except FileNotFoundError:
            return
        for study in studies:
            if not study.is_dir(follow_symlinks=False) or uid_problem(study.name):
                continue
            for series in os.scandir(study.path):
                if not series.is_dir(follow_symlinks=False) or uid_problem(series.name):
                    continue
                for entry in os.scandir(series.path):
                    name = entry.name
                    if (
                        name.endswith(FILE_SUFFIX)
                        and entry.is_file(follow_symlinks=False)
                        and uid_problem(name[: -len(FILE_SUFFIX)]) is None
                    ):
                        yield f"{study.name}/{series.name}/{name}"


class Staged:
    """A complete temp file waiting for its index row: :meth:`commit` or :meth:`discard` it."""

    def __init__(self, spool: Spool, rel: str, tmp: Path, final: Path, size: int,
                 created_dirs: list[Path] | None = None) -> None:
        self.spool = spool
        self.created_dirs = created_dirs or []  # folders this write created (removed on discard)
        self.rel = rel
        self.tmp = tmp
        self.final = final
        self.size = size
        self._open = True

    def commit(self) -> Path:
        """Rename the temp file into place (replacing an existing file atomically).

        If the rename itself fails, the complete temp file is left where it is: its index row
        may be committed already, and start-up recovery finishes the rename.
        """
        if not self._open:
            raise RuntimeError(f"{self.rel}: already committed or discarded")
        self._open = False
        spool = self.spool
        try:
            try:
                old = self.final.stat().st_size
            except FileNotFoundError:
                old = 0
            os.replace(self.tmp, self.final)
            if spool.fsync and spool.sync_rename:
                _fsync_dir(self.final.parent)
            spool._account(self.size - old)
            return self.final
        finally:
            spool._release(self.size)

    def discard(self) -> None:
        """Delete the temp file, and the folders made for it when they stay empty: the instance
        was refused (or is a duplicate). Idempotent."""
        if not self._open:
            return
        self._open = False
        self.spool._release(self.size)
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass
        except OSError as exc:  # start-up recovery and fsck deal with what stays behind
            log.error("could not remove a staged spool file", extra={"path": self.rel, "error": str(exc)})
            return
        self.spool._forget_dirs(self.created_dirs)
