"""``dsm-node worker``: a Celery worker that runs inference jobs (one per GPU).

It needs the node's database (PostgreSQL for several machines) and the same spool and results
folders (a shared filesystem at ``storage.data_dir``). The model is loaded once, before the
worker takes its first task; the solo pool keeps it in this process.
"""
from __future__ import annotations

import argparse
import socket

from .common import add_data_dir, settings_from_args


def configure(parser: argparse.ArgumentParser) -> None:
    add_data_dir(parser)
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: inference.device)")
    parser.add_argument("--name", default=None, help="worker name (default: dsm@HOST-PID)")
    parser.add_argument("--loglevel", default="INFO")


def run(args: argparse.Namespace) -> int:
    import os

    from ..context import build_context
    from ..jobs.celery_app import make_celery, register_task
    from ..jobs.pipeline import DSMPipeline
    from ..jobs.task import JobRunner
    from ..logs import configure_logging

    settings = settings_from_args(args, **{"inference.device": args.device})
    configure_logging(settings.logging.level, settings.logging.stdout, None)
    from ..liveness import register

    ctx = build_context(settings)
    register(settings.storage.data_dir)  # the node takes back our job at once if we die
    runner = JobRunner(ctx, lambda: DSMPipeline(ctx))
    _ = runner.pipeline  # load the model before taking work, so the first job is not slow
    app = make_celery(settings)
    register_task(app, runner)
    name = args.name or f"dsm@{socket.gethostname()}-{os.getpid()}"
    app.worker_main(
        [
            "worker",
            "--pool=solo",
            "--concurrency=1",
            f"--queues={settings.executor.queue}",
            f"--loglevel={args.loglevel}",
            f"--hostname={name}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return 0
