"""The audit trail: one SQL row per event, mirrored to the JSON log and optionally to syslog.

Every stage writes here. Event types map to the DICOM audit message vocabulary (PS3.15 A.5)
so that an ATNA repository can take the syslog export as it is.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from . import audit_chain
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
    "instance_conflict": EventKind(*INSTANCES_TRANSFERRED, "C"),
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
    "webhook_attempt": EventKind(*APPLICATION_ACTIVITY, "E"),  # a job-outcome notification (no patient data)
    "retention_deleted": EventKind(*STUDY_DELETED, "D"),
    "security_alert": EventKind(*SECURITY_ALERT, "E", "110129"),
}


class Auditor:
    """Writes audit events. Pass ``session`` to make the event part of a larger transaction.

    Each row gets its place in the hash chain (:mod:`dsm_node.audit_chain`) when its
    transaction commits; only then is it written to the JSON log and handed to syslog, so that
    nothing leaves the node for an event that was rolled back.
    """

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
            self._add(session, event)
        else:
            with transaction(self._sessions) as s:
                self._add(s, event)
        return event

    def _add(self, session: Session, event: AuditEvent) -> None:
        session.add(event)
        audit_chain.pending(session).append(event)
        session.info.setdefault(_PUBLISH, []).append((self, event))

    def publish(self, event: AuditEvent) -> None:
        """After commit: the JSON log line, and syslog (queued, never blocking the caller)."""
        kind = EVENTS[event.event_type]
        level = logging.INFO if event.outcome == SUCCESS else logging.WARNING
        log.log(
            level,
            event.event_type,
            extra={
                "event": {
                    "type": event.event_type,
                    "code": kind.code,
                    "outcome": event.outcome,
                    "actor_ae": event.actor_ae,
                    "actor_address": event.actor_address,
                    "study_uid": event.study_uid,
                    "series_uid": event.series_uid,
                    **(event.detail or {}),
                    "chain_seq": event.chain_seq,
                    "chain_hash": event.chain_hash,
                }
            },
        )
        if self._syslog is not None:
            self._syslog.submit(event, kind)


_PUBLISH = "dsm_audit_publish"


@sa_event.listens_for(Session, "before_commit")
def _seal_before_commit(session: Session) -> None:
    audit_chain.seal(session)


@sa_event.listens_for(Session, "after_commit")
def _publish_after_commit(session: Session) -> None:
    published = session.info.pop(_PUBLISH, [])
    session.info.pop(audit_chain._PENDING, None)
    for auditor, event in published:
        try:
            auditor.publish(event)
        except Exception:  # noqa: BLE001 - the row is committed; a log/syslog hiccup is not fatal
            log.exception("audit event not published")


@sa_event.listens_for(Session, "after_rollback")
def _forget_after_rollback(session: Session) -> None:
    session.info.pop(_PUBLISH, None)
    session.info.pop(audit_chain._PENDING, None)


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
