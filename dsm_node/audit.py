"""The audit trail: one SQL row per event, mirrored to the JSON log and optionally to syslog.

Every stage writes here. Event types map to the DICOM audit message vocabulary (PS3.15 A.5)
so that an ATNA repository can take the syslog export as it is.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from .db.engine import transaction
from .db.models import AuditEvent, utcnow

log = logging.getLogger("dsm_node.audit")

SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = 0, 4, 8, 12


@dataclass(frozen=True)
class EventKind:
    code: str  # PS3.15 A.5 EventID (DCM)
    meaning: str
    action: str  # EventActionCode: C create, R read, U update, D delete, E execute
    type_code: str | None = None  # EventTypeCode (DCM), where PS3.15 defines one


APPLICATION_ACTIVITY = ("110100", "Application Activity")
INSTANCES_ACCESSED = ("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = ("110104", "DICOM Instances Transferred")
STUDY_DELETED = ("110105", "DICOM Study Deleted")
EXPORT = ("110106", "Export")
SECURITY_ALERT = ("110113", "Security Alert")
USER_AUTHENTICATED = ("110114", "User Authenticated")

EVENTS: dict[str, EventKind] = {
    "application_start": EventKind(*APPLICATION_ACTIVITY, "E", "110120"),
    "application_stop": EventKind(*APPLICATION_ACTIVITY, "E", "110121"),
    "config_loaded": EventKind(*APPLICATION_ACTIVITY, "E"),
    "association_accepted": EventKind(*USER_AUTHENTICATED, "E", "110122"),
    "association_released": EventKind(*USER_AUTHENTICATED, "E", "110123"),
    "association_aborted": EventKind(*USER_AUTHENTICATED, "E", "110123"),
    "association_rejected": EventKind(*SECURITY_ALERT, "E", "110126"),
    "connection_refused": EventKind(*SECURITY_ALERT, "E", "110126"),
    "echo": EventKind(*APPLICATION_ACTIVITY, "E"),
    "instance_stored": EventKind(*INSTANCES_TRANSFERRED, "C"),
    "instances_stored": EventKind(*INSTANCES_TRANSFERRED, "C"),
    "instance_rejected": EventKind(*INSTANCES_TRANSFERRED, "C"),
    "instance_ignored": EventKind(*INSTANCES_TRANSFERRED, "C"),
    "storage_full": EventKind(*SECURITY_ALERT, "E", "110130"),
    "spool_reconciled": EventKind(*INSTANCES_ACCESSED, "U"),
    "study_complete": EventKind(*INSTANCES_ACCESSED, "R"),
    "study_revision": EventKind(*INSTANCES_ACCESSED, "U"),
    "series_selected": EventKind(*INSTANCES_ACCESSED, "R"),
    "series_not_selected": EventKind(*INSTANCES_ACCESSED, "R"),
    "study_no_eligible_series": EventKind(*INSTANCES_ACCESSED, "R"),
    "job_transition": EventKind(*INSTANCES_ACCESSED, "E"),
    "job_interrupted": EventKind(*INSTANCES_ACCESSED, "E"),
    "result_created": EventKind(*INSTANCES_ACCESSED, "C"),
    "export": EventKind(*EXPORT, "R"),
    "delivery_attempt": EventKind(*INSTANCES_TRANSFERRED, "R"),
    "delivery_dead_letter": EventKind(*INSTANCES_TRANSFERRED, "R"),
    "delivery_resend": EventKind(*INSTANCES_TRANSFERRED, "U"),
    "retention_deleted": EventKind(*STUDY_DELETED, "D"),
    "security_alert": EventKind(*SECURITY_ALERT, "E", "110129"),
}


class Auditor:
    """Writes audit events. Pass ``session`` to make the event part of a larger transaction."""

    def __init__(self, sessions: sessionmaker[Session], syslog: Any | None = None) -> None:
        self._sessions = sessions
        self._syslog = syslog

    def record(
        self,
        event_type: str,
        *,
        outcome: int = SUCCESS,
        actor_ae: str | None = None,
        actor_address: str | None = None,
        study_uid: str | None = None,
        series_uid: str | None = None,
        session: Session | None = None,
        **detail: Any,
    ) -> AuditEvent:
        kind = EVENTS[event_type]  # KeyError = a programming error: unknown event type
        event = AuditEvent(
            time=utcnow(),
            event_type=event_type,
            event_code=kind.code,
            event_action=kind.action,
            outcome=outcome,
            actor_ae=actor_ae,
            actor_address=actor_address,
            study_uid=study_uid,
            series_uid=series_uid,
            detail=detail,
        )
        if session is not None:
            session.add(event)
        else:
            with transaction(self._sessions) as s:
                s.add(event)
        level = logging.INFO if outcome == SUCCESS else logging.WARNING
        log.log(
            level,
            event_type,
            extra={
                "event": {
                    "type": event_type,
                    "code": kind.code,
                    "outcome": outcome,
                    "actor_ae": actor_ae,
                    "actor_address": actor_address,
                    "study_uid": study_uid,
                    "series_uid": series_uid,
                    **detail,
                }
            },
        )
        if self._syslog is not None:
            self._syslog.send(event, kind)
        return event


def query_events(
    session: Session,
    *,
    since: Any | None = None,
    event_type: str | None = None,
    study_uid: str | None = None,
    limit: int | None = None,
) -> list[AuditEvent]:
    stmt = select(AuditEvent).order_by(AuditEvent.time, AuditEvent.id)
    if since is not None:
        stmt = stmt.where(AuditEvent.time >= since)
    if event_type is not None:
        stmt = stmt.where(AuditEvent.event_type == event_type)
    if study_uid is not None:
        stmt = stmt.where(AuditEvent.study_uid == study_uid)
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))
