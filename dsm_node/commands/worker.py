"""``dsm-node worker``: a Celery worker that runs inference jobs (one per GPU).

It needs the node's database (PostgreSQL for several machines) and the same spool and results
folders (a shared filesystem at ``storage.data_dir``). The model is loaded once, before the
worker takes its first task; the solo pool keeps it in this process.

Remote control is off (see dsm_node.jobs.celery_app). The worker stops cleanly (exit 0) on
SIGTERM/SIGINT/SIGQUIT only; if it stops for any other reason it exits 1, so that a service
manager restarting "on failure" (systemd ``Restart=on-failure``) brings it back.
"""
from __future__ import annotations

import argparse
import socket
import sys
from typing import Any

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
    return run_worker(app, [
        "worker",
        "--pool=solo",
        "--concurrency=1",
        f"--queues={settings.executor.queue}",
        f"--loglevel={args.loglevel}",
        f"--hostname={name}",
        "--without-gossip",
        "--without-mingle",
    ])


def run_worker(app: Any, argv: list[str]) -> int:
    """Run the Celery worker; its exit status: 0 only when a stop signal ended it."""
    from celery import signals

    signalled: list[str] = []

    def on_shutting_down(sig: Any = None, **_: Any) -> None:
        signalled.append(str(sig))

    signals.worker_shutting_down.connect(on_shutting_down, weak=False)
    code = int(app.start(argv=argv) or 0)
    if code:
        return code
    if not signalled:
        print("dsm-node worker: stopped without a stop signal (remote control or an internal error); "
              "exit status 1 so that the service manager restarts it", file=sys.stderr)
        return 1
    return 0
