"""Celery wiring for scale-out: the node enqueues job ids, `dsm-node worker` processes run them.

Remote control (the broadcast channel) is off. Late acknowledgement + prefetch 1: a task is
acknowledged only when it has finished, so a worker killed mid-job leaves it to be delivered
again; the task is idempotent (it checks the job's state and heartbeat in the database first),
and the node's dispatcher also requeues jobs whose heartbeat went stale, so recovery does not
wait for the broker's visibility timeout.
"""
from __future__ import annotations

from typing import Any

from celery import Celery

from ..settings import Settings

TASK_NAME = "dsm_node.run_job"


def make_celery(settings: Settings) -> Celery:
    app = Celery("dsm_node", broker=settings.executor.broker_url.get_secret_value(), set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.executor.queue,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": settings.executor.visibility_timeout_s},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        # No remote control: anyone who can write to the broker could otherwise stop, reconfigure
        # or inspect the workers (broadcast('shutdown') stopped them with exit code 0). The node
        # only sends tasks; it never uses the control channel.
        worker_enable_remote_control=False,
    )
    return app


def register_task(app: Celery, run: Any) -> None:
    """Register the job task, calling ``run(job_id)`` (the same function the local executor calls)."""

    @app.task(name=TASK_NAME, bind=True, acks_late=True)  # type: ignore[untyped-decorator]  # celery has no type information
    def run_job_task(self: Any, job_id: int) -> None:
        from .task import REQUEUED

        if run(job_id) == REQUEUED:  # an unexpected error with attempts left: run it again
            self.apply_async(args=[job_id])
