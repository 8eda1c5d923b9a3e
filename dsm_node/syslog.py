"""Audit events as RFC 5424 syslog messages (ATNA-style: PS3.15 A.5 codes in structured data).

The XML DICOM audit message of PS3.15 A.5 is long; sites that feed an ATNA repository usually
take the event ID, type, outcome and participants. Those travel here as RFC 5424 structured
data so that any syslog collector can index them, and the SQL table keeps the full record.
"""
from __future__ import annotations

import json
import socket
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
    for key, attr in (("ActorAE", "actor_ae"), ("ActorAddress", "actor_address"), ("StudyUID", "study_uid"), ("SeriesUID", "series_uid")):
        if getattr(event, attr):
            params[key] = getattr(event, attr)
    sd = "[dicomAudit@32473 " + " ".join(f'{k}="{_sd_escape(str(v))}"' for k, v in params.items()) + "]"
    msg = json.dumps(event.detail or {}, default=str, separators=(",", ":"))
    stamp = event.time.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    line = f"<{pri}>1 {stamp} {host} {app_name[:48] or '-'} - {kind.code} {sd} {msg}"
    return line.encode("utf-8")


class SyslogSender:
    """Best effort: an unreachable collector never blocks or fails the node (the SQL row is the record)."""

    def __init__(self, cfg: Any, app_name: str) -> None:
        self._cfg = cfg
        self._app = app_name.replace(" ", "_") or "dsm-node"
        self._lock = threading.Lock()

    def send(self, event: AuditEvent, kind: EventKind) -> None:
        data = format_rfc5424(event, kind, self._app)
        try:
            if self._cfg.protocol == "udp":
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.sendto(data, (self._cfg.host, self._cfg.port))
            else:
                # RFC 6587 octet counting over TCP.
                with self._lock, socket.create_connection((self._cfg.host, self._cfg.port), timeout=2) as s:
                    s.sendall(str(len(data)).encode() + b" " + data)
        except OSError:
            pass
