"""``dsm-node serve``: the node process, a set of independent background services.

Each service has ``start()`` (returns once it runs) and ``stop()``. They start in the order of
:func:`build_services` and stop in reverse, so the DICOM receiver, listed last, opens only when
everything downstream runs and closes first on shutdown. All hand-over between services goes
through the database, which is why a restart (even after kill -9) resumes where it stood.
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING, Protocol

from .common import add_data_dir, settings_from_args

if TYPE_CHECKING:
    from ..context import NodeContext
    from ..receive.scp import StorageSCP

log = logging.getLogger("dsm_node.serve")


class Service(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


def configure(parser: argparse.ArgumentParser) -> None:
    add_data_dir(parser)
    parser.add_argument("--port", type=int, help="DICOM listen port (dicom.port)")
    parser.add_argument("--ae-title", help="our AE title (dicom.ae_title)")
    parser.add_argument("--http-port", type=int, help="health/metrics port (http.port)")


def build_services(ctx: NodeContext) -> list[tuple[str, Service]]:
    """The node's services, labelled for messages, in start order (they stop in reverse).

    A new stage is one more ``(label, service)`` entry at its place in the data flow; the
    pipeline belongs between completeness/selection and delivery.
    """
    from ..delivery import DeliveryService
    from ..http import HttpService
    from ..jobs.dispatch import JobDispatcher
    from ..jobs.executors import make_executor
    from ..notify import Notifier
    from ..receive.scp import StorageSCP
    from ..retention import RetentionService
    from ..status_page import register as register_status_page
    from ..studies.service import StudyService

    dicom, http = ctx.settings.dicom, ctx.settings.http
    scp = StorageSCP(ctx)
    services: list[tuple[str, Service]] = []
    if http.enabled:
        http_service = HttpService(ctx, scp_listening=lambda: _listening(scp), scp_load=scp.load)
        register_status_page(http_service, ctx)
        services.append((f"HTTP on {http.host}:{http.port}", http_service))
    services += [
        ("completeness/selection", StudyService(ctx)),
        (f"jobs ({ctx.settings.executor.kind} executor)", JobDispatcher(ctx, make_executor(ctx))),
        ("delivery", DeliveryService(ctx)),
        ("notifications", Notifier(ctx)),
        ("retention", RetentionService(ctx)),
        (f"DICOM SCP on {dicom.host}:{dicom.port}", scp),
    ]
    return services


def run(args: argparse.Namespace) -> int:
    from .. import __version__
    from ..audit import SERIOUS_FAILURE, SUCCESS
    from ..context import build_context
    from ..logs import configure_logging
    from ..receive.reconcile import reconcile
    from ..settings import env_overrides_present

    settings = settings_from_args(
        args, **{"dicom.port": args.port, "dicom.ae_title": args.ae_title, "http.port": args.http_port}
    )
    log_file = settings.storage.log_dir / "dsm-node.jsonl" if settings.logging.file else None
    configure_logging(settings.logging.level, settings.logging.stdout, log_file)
    try:
        ctx = build_context(settings)
    except Exception as exc:  # noqa: BLE001 - the operator needs the reason, not a traceback
        log.exception("database unavailable")
        print(f"dsm-node: cannot open the database: {exc}", file=sys.stderr)
        return 1
    # Held for the process's life: after a crash the next start takes back this process's jobs
    # and delivery leases at once instead of waiting for their heartbeat and lease timeouts.
    from ..liveness import register

    register(settings.storage.data_dir)
    stopped_by: list[str] = []
    stop = _stop_on_signals(stopped_by)
    ctx.auditor.record("config_loaded", config_file=args.config, environment_overrides=env_overrides_present())
    ctx.auditor.record("application_start", version=__version__, pid=os.getpid())
    started: list[tuple[str, Service]] = []
    failure: str | None = None
    try:
        reconcile(ctx)
        for label, service in build_services(ctx):
            try:
                service.start()
            except OSError as exc:
                failure = f"cannot start {label}: {_why(exc)}"
                break
            started.append((label, service))
        else:
            _announce(ctx, [service for _, service in started])
            stop.wait()
    except Exception as exc:  # noqa: BLE001 - recorded and reported; the process exits non-zero
        log.exception("dsm-node failed")
        failure = f"{type(exc).__name__}: {exc}"
    finally:
        for label, service in reversed(started):
            try:
                service.stop()
            except Exception:  # noqa: BLE001 - stop the others regardless
                log.exception("stopping %s failed", label)
        ctx.auditor.record(
            "application_stop",
            outcome=SERIOUS_FAILURE if failure else SUCCESS,
            reason=failure or f"{'/'.join(stopped_by) or 'stop'} received",
        )
        ctx.close()
    if failure:
        log.error(failure)
        print(f"dsm-node: {failure}", file=sys.stderr)
        return 1
    return 0


def _stop_on_signals(stopped_by: list[str]) -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, _frame: FrameType | None) -> None:
        stopped_by.append(signal.Signals(signum).name)
        log.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()
        # A second signal ends the process at once if a service hangs while stopping.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _why(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "the port is already in use (another dsm-node or DICOM service?)"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "the address is not one of this machine's"
    return exc.strerror or str(exc)


def _listening(scp: StorageSCP) -> bool:
    try:
        scp.port  # noqa: B018 - raises while the SCP is not running
    except RuntimeError:
        return False
    return True


def _announce(ctx: NodeContext, services: list[Service]) -> None:
    from ..http import HttpService
    from ..receive.scp import StorageSCP

    dicom = ctx.settings.dicom
    http = next((s for s in services if isinstance(s, HttpService)), None)
    scp = next(s for s in services if isinstance(s, StorageSCP))
    http_part = f"http on {http.url}" if http else "http off"
    line = f"dsm-node listening on {dicom.host}:{scp.port} as {dicom.ae_title} ({http_part})"
    log.info(line)
    # stdout carries JSON lines for log collectors; the human line goes to stderr.
    print(line, file=sys.stderr, flush=True)
    delivery = ctx.settings.delivery
    if not delivery.destinations and not delivery.reply_to_caller:
        where = ctx.results_dir.resolve()
        note = (f"no delivery destination configured: results stay in {where}/<StudyInstanceUID>/r<revision>/ "
                "and nothing is sent (jobs end 'kept'); set delivery.destinations to send them to a PACS")
        log.warning(note)
        print(f"dsm-node: {note}", file=sys.stderr, flush=True)
