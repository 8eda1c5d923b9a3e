"""Webhooks: a JSON POST when a job's results are delivered and when a job fails (a dead letter
included), as mercure notifies on success and on error.

The audit trail is the notifier's outbox, so no table is added and nothing is lost in a
restart: every job outcome already is a ``job_transition`` event (to_state delivered/failed),
and every notification attempt becomes a ``webhook_attempt`` event naming the webhook and
that outcome event; the last one (sent, or given up after ``max_attempts``) says
``final: true``. A notification is pending while an outcome event of the last ``lookback_h``
hours has no final attempt for a webhook that wants it; attempts are retried with the
delivery's back-off rule. The payload carries study/series/result UIDs and no patient name or
ID; its ``id`` (node AE + outcome event id) lets a receiver drop duplicates (two nodes on one
database could both send one).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import random
import threading
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select

from .audit import MAJOR_FAILURE, SERIOUS_FAILURE, SUCCESS
from .context import NodeContext
from .db.models import AuditEvent, Job, utcnow
from .delivery.outbox import backoff_delay
from .delivery.web import auth_headers, connect, failure_word

log = logging.getLogger("dsm_node.notify")

EVENT_NAMES = {"delivered": "job.delivered", "failed": "job.failed"}


class Notifier:
    """Background loop: send due notifications, record each attempt."""

    def __init__(self, ctx: NodeContext, rng: random.Random | None = None) -> None:
        self._ctx = ctx
        self._rng = rng or random.Random()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self._ctx.settings.notifications.webhooks:
            return  # nothing configured: no thread
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="dsm-notify", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float | None = None) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s if timeout_s is not None else self._ctx.settings.notifications.timeout_s + 5)
            self._thread = None

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.run_once()
            except Exception:  # a database or network hiccup must not end notifications
                log.exception("notification pass failed")
            self._stopping.wait(self._ctx.settings.notifications.poll_interval_s)

    # One pass -----------------------------------------------------------------------------------
    def run_once(self) -> int:
        """Send every due notification once; returns the number of attempts made."""
        cfg = self._ctx.settings.notifications
        if not cfg.webhooks:
            return 0
        now = utcnow()
        since = now - dt.timedelta(hours=cfg.lookback_h)
        with self._ctx.sessions() as s:
            outcomes = [e for e in s.scalars(select(AuditEvent).where(
                AuditEvent.event_type == "job_transition", AuditEvent.time >= since).order_by(AuditEvent.id))
                if (e.detail or {}).get("to_state") in EVENT_NAMES]
            history = _history(s.scalars(select(AuditEvent).where(
                AuditEvent.event_type == "webhook_attempt", AuditEvent.time >= since)))
            s.expunge_all()
        attempts = 0
        for event in outcomes:
            state = event.detail["to_state"]
            for hook in cfg.webhooks:
                if state not in hook.events or self._stopping.is_set():
                    continue
                count, last, final = history.get((hook.name, event.id), (0, None, False))
                if final:
                    continue
                if last is not None:
                    wait = backoff_delay(count, cfg.backoff_initial_s, cfg.backoff_max_s, self._rng)
                    if now < last + dt.timedelta(seconds=wait):
                        continue
                self._attempt(hook, event, count + 1)
                attempts += 1
        return attempts

    def _attempt(self, hook, event: AuditEvent, attempt: int) -> None:
        cfg = self._ctx.settings.notifications
        payload = self._payload(event)
        status, error = post_json(hook, payload, cfg.timeout_s)
        sent = status.startswith("HTTP 2")
        final = sent or attempt >= cfg.max_attempts
        outcome = SUCCESS if sent else (MAJOR_FAILURE if final else SERIOUS_FAILURE)
        self._ctx.auditor.record(
            "webhook_attempt", outcome=outcome, study_uid=event.study_uid, series_uid=event.series_uid,
            webhook=hook.name, url=hook.url, source_event_id=event.id, event=payload["event"],
            job_id=payload["job"]["id"], attempt=attempt, status=status, error=error, final=final,
        )
        level = logging.INFO if sent else logging.WARNING
        log.log(level, "webhook %s for event %s: %s%s", hook.name, event.id, status, " (given up)" if final and not sent else "")

    def _payload(self, event: AuditEvent) -> dict[str, Any]:
        """What the receiver gets: identifiers and states only, never patient name or ID."""
        d = event.detail or {}
        payload: dict[str, Any] = {
            "id": f"{self._ctx.settings.dicom.ae_title}-{event.id}",
            "event": EVENT_NAMES[d["to_state"]],
            "time": event.time.isoformat(),
            "node": {"ae_title": self._ctx.settings.dicom.ae_title},
            "study_instance_uid": event.study_uid,
            "series_instance_uid": event.series_uid,
            "job": {"id": d.get("job_id"), "revision": d.get("revision"), "state": d["to_state"],
                    "reason": d.get("reason")},
        }
        with self._ctx.sessions() as s:
            job = s.get(Job, d.get("job_id")) if d.get("job_id") is not None else None
            if job is not None:
                payload["job"]["model_version"] = job.model_version
                payload["results"] = [
                    {"kind": r.kind, "sop_class_uid": r.sop_class_uid, "sop_instance_uid": r.sop_instance_uid,
                     "series_instance_uid": r.series_uid,
                     "deliveries": [{"destination": x.destination, "state": x.state, "status": x.last_status}
                                    for x in r.deliveries]}
                    for r in job.results
                ]
                payload["lesions"] = (job.summary or {}).get("lesions", [])
        return payload


def _history(events) -> dict[tuple[str, int], tuple[int, dt.datetime, bool]]:
    """(webhook, source event id) -> (attempts so far, time of the last one, final reached)."""
    out: dict[tuple[str, int], tuple[int, dt.datetime, bool]] = {}
    for e in events:
        d = e.detail or {}
        key = (d.get("webhook"), d.get("source_event_id"))
        count, last, final = out.get(key, (0, e.time, False))
        out[key] = (count + 1, max(last, e.time), final or bool(d.get("final")))
    return out


def post_json(hook, payload: dict[str, Any], timeout_s: float) -> tuple[str, str | None]:
    """POST ``payload`` to the hook; ("HTTP <code>" or a transport word, error text or None)."""
    body = json.dumps(payload).encode()
    sent = False
    try:
        conn, path = connect(hook.url, hook.web_tls, timeout_s)
    except OSError as exc:
        return "tls_error", f"cannot set up TLS for {hook.url}: {exc}"
    try:
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body)),
                   "User-Agent": "dsm-node", **auth_headers(hook.auth)}
        query = urlsplit(hook.url).query
        conn.request("POST", (path or "/") + (f"?{query}" if query else ""), body=body, headers=headers)
        sent = True
        response = conn.getresponse()
        response.read()
    except Exception as exc:  # transport problem: retried
        return failure_word(exc, sent), f"{type(exc).__name__}: {exc}"[:500]
    finally:
        conn.close()
    status = f"HTTP {response.status}"
    return status, None if 200 <= response.status < 300 else f"{hook.url} answered {response.status} {response.reason}"
