"""The inference process of the local executor: a child of the node that runs jobs one by one.

It holds the pipeline (and so the loaded model) for its whole life, like a Celery worker, and
runs the same task code (:class:`dsm_node.jobs.task.JobRunner`). Decoding a hostile volume or
running the model can exhaust memory or crash native code; in a child that kills only this
process, never the node's DICOM receiver. The parent (:class:`dsm_node.jobs.executors.LocalExecutor`)
sees the death, records the job as interrupted (retried or failed with the reason) and starts a
new child.

Protocol on the pipe: the parent sends a job id (int) or None (stop); the child answers each job
with the runner's result string.
"""
from __future__ import annotations

import importlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from ..settings import Settings

log = logging.getLogger("dsm_node.jobs")

DEFAULT_PIPELINE = "dsm_node.jobs.pipeline:DSMPipeline"
_PR_SET_PDEATHSIG = 1


def load_factory(spec: str) -> Callable[[Any], Any]:
    """``module:attribute`` -> the pipeline factory, called with the child's NodeContext."""
    module, _, attr = spec.partition(":")
    factory: Callable[[Any], Any] = getattr(importlib.import_module(module), attr)
    return factory


def _die_with_parent(parent_pid: int) -> None:
    """A child must not outlive the node (kill -9 included): it would keep a job 'running'."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass

    def watch() -> None:  # also covers systems without prctl, and a parent gone before prctl
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, name="dsm-parent-watch", daemon=True).start()


def child_main(settings: Settings, pipeline: str, conn: Connection, parent_pid: int) -> None:
    # The node decides when the child stops (a job is never cut by the terminal's Ctrl-C or a
    # service manager's SIGTERM to the whole group while the node itself shuts down cleanly).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    from ..heap import return_freed_memory

    return_freed_memory()  # a spawned interpreter: the CLI's setting does not carry over
    from ..context import build_context
    from ..liveness import register
    from ..logs import configure_logging
    from .task import JobRunner

    lg = settings.logging
    configure_logging(lg.level, lg.stdout, (settings.storage.log_dir / "dsm-node.jsonl") if lg.file else None)
    ctx = build_context(settings, migrate=False)
    # The jobs this process runs carry its own identity (jobs.worker): its lock file lets a
    # restarted node take them back at once when it dies with the node (PDEATHSIG), instead of
    # waiting for the heartbeat timeout.
    register(settings.storage.data_dir)
    factory = load_factory(pipeline)
    runner = JobRunner(ctx, lambda: factory(ctx))
    try:
        _ = runner.pipeline  # load the model now rather than when the first study arrives
    except Exception:
        log.exception("the model could not be loaded; jobs will fail until this is fixed")
    log.info("inference process ready", extra={"pid": os.getpid()})
    try:
        while True:
            try:
                job_id = conn.recv()
            except EOFError:  # the node went away
                return
            if job_id is None:
                return
            try:
                result = runner(int(job_id))
            except Exception:  # the task records failures itself; answer anyway
                log.exception("job %s raised", job_id)
                result = "error"
            conn.send(result)
    finally:
        ctx.close()
