"""Audit events as RFC 5424 syslog messages (ATNA-style: PS3.15 A.5 codes in structured data).

The XML DICOM audit message of PS3.15 A.5 is long; sites that feed an ATNA repository usually
take the event ID, type, outcome and participants. Those travel here as RFC 5424 structured
data so that any syslog collector can index them, and the SQL table keeps the full record.

Transports: UDP (RFC 5426), TCP with octet counting (RFC 6587) and TLS (RFC 5425, what ATNA
asks for: TLS 1.2+, the collector's certificate verified against ``ca_file`` and its name,
optionally a client certificate). The node sends each event after its transaction committed,
from a queue on a thread of its own: a slow or unreachable collector never blocks the node (the
SQL row is the record; events that do not fit the queue are counted in the log).
"""
from __future__ import annotations

import json
import logging
import queue
import socket
import ssl
import threading
from typing import Any

from .audit import EVENTS, EventKind
from .db.models import AuditEvent

FACILITY_AUTH = 10  # security/authorization messages (RFC 5424 6.2.1)
# 32473 is the IANA private enterprise number reserved for documentation (RFC 5612); the SD-ID
# only has to be stable for collectors to parse it.
_SEVERITY = {0: 6, 4: 4, 8: 3, 12: 2}  # outcome -> informational, warning, error, critical


def event_kind(event_type: str) -> EventKind:
    return EVENTS[event_type]


def _sd_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def format_rfc5424(event: AuditEvent, kind: EventKind, app_name: str, hostname: str | None = None) -> bytes:
    pri = FACILITY_AUTH * 8 + _SEVERITY.get(event.outcome, 5)
    host = hostname or socket.gethostname() or "-"
    params: dict[str, Any] = {
        "EventID": kind.code,
        "EventName": kind.meaning,
        "EventActionCode": kind.action,
        "EventOutcomeIndicator": event.outcome,
        "EventType": event.event_type,
    }
    if kind.type_code:
        params["EventTypeCode"] = kind.type_code
    if event.chain_seq is not None:  # an external anchor for `dsm-node audit --verify --anchor`
        params["ChainSeq"] = event.chain_seq
        params["ChainHash"] = event.chain_hash
    for key, attr in (
        ("ActorAE", "actor_ae"), ("ActorAddress", "actor_address"), ("StudyUID", "study_uid"), ("SeriesUID", "series_uid")
    ):
        if getattr(event, attr):
            params[key] = getattr(event, attr)
    sd = "[dicomAudit@32473 " + " ".join(f'{k}="{_sd_escape(str(v))}"' for k, v in params.items()) + "]"
    msg = json.dumps(event.detail or {}, default=str, separators=(",", ":"))
    stamp = event.time.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    line = f"<{pri}>1 {stamp} {host} {app_name[:48] or '-'} - {kind.code} {sd} {msg}"
    return line.encode("utf-8")


log = logging.getLogger("dsm_node.audit")
QUEUE_SIZE = 10000


def tls_context(cfg: Any) -> ssl.SSLContext:
    """RFC 5425 client context: TLS 1.2+, the collector verified, optional client certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cfg.ca_file) if cfg.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.cert_file and cfg.key_file:
        ctx.load_cert_chain(str(cfg.cert_file), str(cfg.key_file))
    return ctx


class SyslogSender:
    """Best effort: an unreachable collector never blocks or fails the node (the SQL row is the record).

    ``send`` delivers at once (the ``audit --syslog`` export); ``submit`` queues for the sender
    thread (the node). TCP and TLS keep one connection open and reconnect when it breaks.
    """

    def __init__(self, cfg: Any, app_name: str) -> None:
        self._cfg = cfg
        self._app = app_name.replace(" ", "_") or "dsm-node"
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._tls = tls_context(cfg) if cfg.protocol == "tls" else None
        self._queue: queue.Queue[bytes] = queue.Queue(QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def submit(self, event: AuditEvent, kind: EventKind) -> None:
        try:
            self._queue.put_nowait(format_rfc5424(event, kind, self._app))
        except queue.Full:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("syslog queue full: %d audit events not sent (the SQL rows are kept)", self.dropped)
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dsm-syslog", daemon=True)
                self._thread.start()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the queue is empty (tests, shutdown)."""
        import time

        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self._queue.unfinished_tasks

    def _run(self) -> None:
        while True:
            data = self._queue.get()
            try:
                self._deliver(data)
            finally:
                self._queue.task_done()

    def send(self, event: AuditEvent, kind: EventKind) -> None:
        self._deliver(format_rfc5424(event, kind, self._app))

    def _deliver(self, data: bytes) -> None:
        try:
            if self._cfg.protocol == "udp":
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.sendto(data, (self._cfg.host, self._cfg.port))
                return
            # RFC 6587 / RFC 5425 octet counting: "MSG-LEN SP SYSLOG-MSG".
            frame = str(len(data)).encode() + b" " + data
            with self._lock:
                for attempt in (1, 2):  # a kept connection may have been closed by the collector
                    try:
                        if self._sock is None:
                            self._sock = self._connect()
                        self._sock.sendall(frame)
                        return
                    except OSError:
                        self._close()
                        if attempt == 2:
                            raise
        except OSError as exc:
            log.debug("syslog delivery failed: %s", exc)

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self._cfg.host, self._cfg.port), timeout=5)
        if self._tls is not None:
            try:
                sock = self._tls.wrap_socket(sock, server_hostname=self._cfg.server_name or self._cfg.host)
            except (ssl.SSLError, OSError):
                sock.close()
                raise
        return sock

    def _close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None
