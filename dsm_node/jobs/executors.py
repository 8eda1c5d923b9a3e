"""One executor interface, two implementations: in-process (default) and Celery workers.

Both only carry a job id; the job itself, its state and its inputs live in the database and the
shared spool, and the same task code (:func:`dsm_node.jobs.task.run_job`) runs it.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Callable, Protocol

from ..context import NodeContext
from .task import REQUEUED

log = logging.getLogger("dsm_node.jobs")


class Executor(Protocol):
    name: str

    def submit(self, job_id: int) -> str:
        """Hand a job over; return a task id. Submitting twice is harmless (the task is idempotent)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class LocalExecutor:
    """Runs jobs one at a time in a thread of the node process; the model is loaded once, lazily."""

    name = "local"

    def __init__(self, ctx: NodeContext, run: Callable[[int], object], warm: Callable[[], object] | None = None) -> None:
        self._ctx = ctx
        self._run = run
        self._warm = warm
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._pending: set[int] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, job_id: int) -> str:
        with self._lock:
            if job_id not in self._pending:
                self._pending.add(job_id)
                self._queue.put(job_id)
        return f"local-{job_id}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="dsm-local-executor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        if self._warm is not None:
            try:
                self._warm()  # load the model now rather than when the first study arrives
            except Exception:
                log.exception("the model could not be loaded; jobs will fail until this is fixed")
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            with self._lock:
                self._pending.discard(job_id)
            try:
                outcome = self._run(job_id)
            except Exception:  # the task records failures itself; never let the loop die
                log.exception("job %s raised", job_id)
                continue
            if outcome == REQUEUED:  # an unexpected error with attempts left: run it again
                self.submit(job_id)


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


def make_executor(ctx: NodeContext) -> Executor:
    """The executor the settings ask for. The local one loads the model on its first job."""
    if ctx.settings.executor.kind == "celery":
        return CeleryExecutor(ctx)
    from .pipeline import DSMPipeline
    from .task import JobRunner

    runner = JobRunner(ctx, lambda: DSMPipeline(ctx))
    return LocalExecutor(ctx, runner, warm=lambda: runner.pipeline)
