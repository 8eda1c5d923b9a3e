"""One executor interface, two implementations: the node's own inference process (default) and
Celery workers.

Both only carry a job id; the job itself, its state and its inputs live in the database and the
shared spool, and the same task code (:class:`dsm_node.jobs.task.JobRunner`) runs it, in a
process that loads the model once: the local executor's child process or a Celery worker.
"""
from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from typing import Any, Protocol

from ..context import NodeContext
from .task import REQUEUED

log = logging.getLogger("dsm_node.jobs")


class Executor(Protocol):
    name: str

    def submit(self, job_id: int) -> str:
        """Hand a job over; return a task id. Submitting twice is harmless (the task is idempotent)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def supervises(self, holder: str | None) -> bool:
        """True while this executor watches the process that holds a job as ``holder`` and
        will itself record that process's end: the dispatcher's reaper leaves such jobs alone."""


class LocalExecutor:
    """Runs jobs one at a time in the node's inference process (a child, see
    :mod:`dsm_node.jobs.child`), which loads the model once, when it starts.

    A crash or an out-of-memory kill of the child never stops the node: the job is recorded as
    interrupted and retried or failed with the reason (``executor.max_attempts``), and the next
    job starts a new child.
    """

    name = "local"
    # At shutdown a running job gets this long to finish; then the child is stopped and the job,
    # left running with a stale heartbeat, is resumed at the next start (deterministic UIDs make
    # the re-run harmless). Short, so that the node stops well within its service timeout.
    STOP_GRACE_S = 10.0

    def __init__(self, ctx: NodeContext, pipeline: str | None = None) -> None:
        from .child import DEFAULT_PIPELINE

        self._ctx = ctx
        self._pipeline = pipeline or DEFAULT_PIPELINE
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._pending: set[int] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._proc: Any = None
        self._conn: Any = None
        self._stopping = threading.Event()
        self._watched_pid: int | None = None  # the child running a job, until its end is recorded

    def submit(self, job_id: int) -> str:
        with self._lock:
            if job_id not in self._pending:
                self._pending.add(job_id)
                self._queue.put(job_id)
        return f"local-{job_id}"

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="dsm-local-executor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=self.STOP_GRACE_S + 5)
        self._end_child()

    @property
    def child_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.is_alive() else None

    def supervises(self, holder: str | None) -> bool:
        # The child's holder is host:pid:token (dsm_node.liveness). Its pid cannot be reused while
        # it is watched: the child is joined (reaped) only inside _run_in_child. Without this the
        # dispatcher's reaper, seeing the dead child's lock file free, recorded the same crash a
        # second time and requeued the job beside the executor's own retry.
        from ..liveness import HOSTNAME

        pid = self._watched_pid
        if pid is None or not holder:
            return False
        parts = holder.split(":")
        return len(parts) >= 2 and parts[0] == HOSTNAME and parts[1] == str(pid)

    def _loop(self) -> None:
        self._spawn()  # loads the model now rather than when the first study arrives
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            with self._lock:
                self._pending.discard(job_id)
            try:
                if self._run_in_child(job_id) == REQUEUED:
                    self.submit(job_id)
            except Exception:  # never let the loop die
                log.exception("job %s: the inference process could not run it", job_id)

    def _spawn(self) -> None:
        import multiprocessing
        import os

        from .child import child_main

        mp = multiprocessing.get_context("spawn")  # never fork a process full of threads
        parent, child = mp.Pipe()
        proc = mp.Process(target=child_main, args=(self._ctx.settings, self._pipeline, child, os.getpid()),
                          name="dsm-inference", daemon=True)
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        log.info("inference process started", extra={"pid": proc.pid})

    def _run_in_child(self, job_id: int) -> str:
        try:
            return self._watch_child(job_id)
        finally:
            self._watched_pid = None

    def _watch_child(self, job_id: int) -> str:
        if self._proc is None or not self._proc.is_alive():
            self._spawn()
        self._watched_pid = self._proc.pid
        try:
            self._conn.send(job_id)
        except OSError:  # died before taking the job: a new child takes it
            self._spawn()
            self._watched_pid = self._proc.pid
            self._conn.send(job_id)
        grace_until = None
        while True:
            try:
                if self._conn.poll(0.5):
                    return str(self._conn.recv())
            except (EOFError, OSError):
                pass
            if not self._proc.is_alive():
                self._proc.join()
                if self._stopping.is_set():
                    return "stopped"  # the job's heartbeat goes stale; the next start resumes it
                reason = f"the inference process died ({_describe_exit(self._proc.exitcode)})"
                log.error("job %s: %s", job_id, reason)
                from .task import interrupted

                return interrupted(self._ctx, job_id, reason)
            if self._stopping.is_set():
                grace_until = grace_until or time.monotonic() + self.STOP_GRACE_S
                if time.monotonic() > grace_until:
                    self._end_child()
                    return "stopped"

    def _end_child(self) -> None:
        proc, conn = self._proc, self._conn
        if proc is None:
            return
        try:
            conn.send(None)
        except OSError:
            pass
        proc.join(2)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        conn.close()
        self._proc = self._conn = None


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        name = signal.Signals(-code).name
        return f"killed by {name}" + (": out of memory?" if name == "SIGKILL" else "")
    return f"exit status {code}"


class CeleryExecutor:
    """Sends job ids to Celery workers (`dsm-node worker`) through the Redis broker."""

    name = "celery"

    def __init__(self, ctx: NodeContext) -> None:
        from .celery_app import TASK_NAME, make_celery

        self._app = make_celery(ctx.settings)
        self._task_name = TASK_NAME
        self._queue = ctx.settings.executor.queue

    def submit(self, job_id: int) -> str:
        result = self._app.send_task(self._task_name, args=[job_id], queue=self._queue)
        return str(result.id)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self._app.close()

    def supervises(self, holder: str | None) -> bool:
        return False  # a worker's end is only seen through its lock file or heartbeat (the reaper)


def make_executor(ctx: NodeContext) -> Executor:
    """The executor the settings ask for. The local one starts its inference process (which
    loads the model) when the dispatcher starts it."""
    if ctx.settings.executor.kind == "celery":
        return CeleryExecutor(ctx)
    return LocalExecutor(ctx)
