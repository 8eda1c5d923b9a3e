"""The node's HTTP side: ``/healthz`` and ``/metrics`` (and room for more pages).

Standard library server on ``http.host`` (loopback by default): it only reads, so a plain
threaded server is enough and adds no dependency. Routes live in a table; another page (the
status page) is one ``add_route`` call.

Hardening: a client has ``http.request_timeout_s`` from connecting to deliver its request line
and headers (a watchdog closes it otherwise, so half-sent requests cannot pin threads), at most
``http.max_connections`` connections are served at once (more are closed at accept), every
answer carries the standard security headers, and a 404 names no routes.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import func, select, text

from . import __version__
from .context import NodeContext
from .db.models import Delivery, DeliveryState, Job, JobState, Study, StudyState
from .jobs.machine import FAILURE_CAUSES, failure_cause
from .metrics import DELIVERIES_BY_STATE, JOBS_BY_STATE, JOBS_FAILED, REGISTRY, STUDIES_BY_STATE

log = logging.getLogger("dsm_node.http")


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes

    @classmethod
    def json(cls, status: int, payload: Any) -> Response:
        return cls(status, "application/json", json.dumps(payload, indent=2, default=str).encode() + b"\n")


Handler = Callable[[], Response]


def _states(holder: type) -> list[str]:
    if issubclass(holder, Enum):  # StudyState, JobState (dsm_node.lifecycle)
        return [state.value for state in holder]
    return [v for k, v in vars(holder).items() if k.isupper() and isinstance(v, str)]


_GAUGES = (
    (STUDIES_BY_STATE, Study, _states(StudyState)),
    (JOBS_BY_STATE, Job, _states(JobState)),
    (DELIVERIES_BY_STATE, Delivery, _states(DeliveryState)),
)
_gauge_lock = threading.Lock()


def refresh_state_gauges(ctx: NodeContext) -> None:
    """Set the by-state gauges from the database (the source of truth, possibly shared)."""
    with _gauge_lock, ctx.sessions() as session:
        for gauge, model, known in _GAUGES:
            counts = dict(session.execute(select(model.state, func.count()).group_by(model.state)).all())
            gauge.clear()
            for state in dict.fromkeys([*known, *counts]):
                gauge.labels(state=state).set(counts.get(state, 0))
        causes = dict.fromkeys([c for _, c in FAILURE_CAUSES] + ["error"], 0)
        for reason in session.scalars(select(Job.reason).where(Job.state == JobState.FAILED)):
            causes[failure_cause(reason)] += 1
        JOBS_FAILED.clear()
        for cause, n in causes.items():
            JOBS_FAILED.labels(cause=cause).set(n)


def health(ctx: NodeContext, scp_listening: Callable[[], bool] | None,
           scp_load: Callable[[], dict[str, Any]] | None = None) -> tuple[bool, dict[str, Any]]:
    """Whether the node can do its job: database reachable, SCP listening, disk above minimum.

    ``status`` is ``degraded`` (still HTTP 200: restarting would drop the associations that
    hold the slots) when every association slot or every pending-connection slot is taken."""
    database: dict[str, Any] = {"reachable": True}
    try:
        with ctx.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        database = {"reachable": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    listening = bool(scp_listening()) if scp_listening is not None else False
    storage = ctx.settings.storage
    free = shutil.disk_usage(storage.data_dir).free
    disk = {"free_bytes": free, "min_free_bytes": storage.min_free_bytes, "ok": free >= storage.min_free_bytes}
    ok = database["reachable"] and listening and disk["ok"]
    scp: dict[str, Any] = {"listening": listening, "ae_title": ctx.settings.dicom.ae_title}
    load = scp_load() if scp_load is not None and listening else None
    if load is not None:
        scp["associations"] = load
    status = "unhealthy" if not ok else ("degraded" if load and load.get("exhausted") else "ok")
    return ok, {
        "status": status,
        "version": __version__,
        "database": database,
        "scp": scp,
        "disk": disk,
    }


class HttpService:
    """Serves the route table on a background thread; ``port`` is the bound port (0 = any)."""

    name = "HTTP"

    def __init__(
        self,
        ctx: NodeContext,
        scp_listening: Callable[[], bool] | None = None,
        host: str | None = None,
        port: int | None = None,
        scp_load: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._ctx = ctx
        self._scp_listening = scp_listening
        self._scp_load = scp_load
        self.host = host if host is not None else ctx.settings.http.host
        self.port = port if port is not None else ctx.settings.http.port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.routes: dict[str, Handler] = {"/healthz": self._healthz, "/metrics": self._metrics}

    def add_route(self, path: str, handler: Handler) -> None:
        self.routes[path] = handler

    def start(self) -> None:
        if self._server is not None:
            return
        server_class = _IPv6Server if ":" in self.host else _Server
        cfg = self._ctx.settings.http
        self._server = server_class((self.host, self.port), _make_handler(self.routes),
                                    request_timeout=cfg.request_timeout_s, max_connections=cfg.max_connections)
        self.port = self._server.server_address[1]
        # A short poll keeps stop() quick (shutdown waits for the loop to look).
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="dsm-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)
        self._server = self._thread = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _healthz(self) -> Response:
        ok, payload = health(self._ctx, self._scp_listening, self._scp_load)
        return Response.json(200 if ok else 503, payload)

    def _metrics(self) -> Response:
        try:
            refresh_state_gauges(self._ctx)
        except Exception:  # noqa: BLE001 - counters are still worth serving without the database
            log.warning("state gauges not refreshed: database unavailable", exc_info=True)
            for gauge, _, _ in _GAUGES:
                gauge.clear()  # no stale values presented as current
            JOBS_FAILED.clear()
        return Response(200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))


#: Sent with every answer: no MIME sniffing, no framing, no referrer, nothing loaded from
#: elsewhere (the status page has inline CSS and no scripts).
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class _Server(ThreadingHTTPServer):
    """Threaded server with a connection cap and a deadline for each request's headers."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: Any, handler: Any, *, request_timeout: float, max_connections: int) -> None:
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self._deadlines: dict[Any, float] = {}  # open connection -> when its headers are due
        self._lock = threading.Lock()
        super().__init__(address, handler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self._lock:
            if len(self._deadlines) >= self.max_connections:
                log.warning("HTTP connection refused: %d already open (http.max_connections)", self.max_connections)
                return False
            self._deadlines[request] = time.monotonic() + self.request_timeout
        return True

    def headers_received(self, request: Any) -> None:
        with self._lock:
            if request in self._deadlines:
                self._deadlines[request] = math.inf  # answering may take its time

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._deadlines.pop(request, None)
        super().shutdown_request(request)

    def service_actions(self) -> None:
        # Called by serve_forever() between polls: close connections past their deadline
        # (their handler thread then reads EOF and ends).
        now = time.monotonic()
        with self._lock:
            late = [r for r, due in self._deadlines.items() if due < now]
            for r in late:
                self._deadlines[r] = math.inf
        for request in late:
            try:
                request.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


def _make_handler(routes: dict[str, Handler]) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        server_version = "dsm-node"
        sys_version = ""  # no Python version in the Server header

        def setup(self) -> None:
            self.timeout = self.server.request_timeout  # type: ignore[attr-defined]  # each read/write
            super().setup()

        def end_headers(self) -> None:
            for name, value in SECURITY_HEADERS.items():
                self.send_header(name, value)
            super().end_headers()

        def _respond(self, with_body: bool) -> None:
            self.server.headers_received(self.request)  # type: ignore[attr-defined]
            handler = routes.get(self.path.split("?", 1)[0])
            try:
                response = handler() if handler else Response.json(404, {"error": "not found"})
            except Exception:  # noqa: BLE001 - one broken page must not kill the server thread
                log.exception("HTTP %s failed", self.path)
                response = Response.json(500, {"error": "internal error"})
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if with_body:
                self.wfile.write(response.body)

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            self._respond(with_body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._respond(with_body=False)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
            log.debug("http %s", format % args, extra={"client": self.client_address[0]})

    return _Handler
