"""The delivery loop: take back abandoned rows, claim due ones, send them, record every attempt.

Any number of these may run against one database (several node processes, or a node plus
workers): the outbox claim hands each row to one sender only. Each attempt is recorded, with
its audit event, in its own transaction as soon as the PACS has answered for that instance.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..audit import MAJOR_FAILURE, MINOR_FAILURE, SERIOUS_FAILURE, SUCCESS
from ..context import NodeContext
from ..db.engine import transaction
from ..db.models import Delivery, DeliveryState, Job, Result, Study, utcnow
from ..liveness import HOLDER, holder_gone
from ..metrics import DELIVERY_ATTEMPTS
from ..polling import PollingService
from . import outbox, stow
from .outbox import Claim
from .scu import Outcome, Outgoing, send_batch
from .targets import Target, target_for_row

log = logging.getLogger("dsm_node.delivery")


@dataclass(frozen=True)
class _Row:
    """A claimed outbox row with what sending and auditing it needs."""

    claim: Claim
    destination: str
    ae_title: str
    host: str
    port: int
    kind: str
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    path: Path
    result_deleted: bool


def lease_seconds(timeout_s: float) -> float:
    """How long a claimed row may go without news before another sender takes it back.

    The lease is renewed before each destination and after each instance; the longest silent
    stretch is connect + association + one C-STORE, each bounded by ``timeout_s``.
    """
    return 4 * timeout_s + 60


class DeliveryService(PollingService):
    """Sends due outbox rows on its own thread. ``stop()`` lets the instance being sent finish,
    gives the unsent claimed rows back and waits up to ``delivery.timeout_s`` + 10 s."""

    def __init__(
        self,
        ctx: NodeContext,
        *,
        batch_size: int = 100,
        poll_interval_s: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        poll = poll_interval_s if poll_interval_s is not None else min(1.0, ctx.settings.delivery.backoff_initial_s)
        # A pass that sent something is followed by the next at once; an idle one waits for the
        # poll interval or a wake() (after enqueueing).
        super().__init__(thread_name="dsm-delivery", interval_s=poll, logger=log, first_pass_at_once=True,
                         failure_message="delivery pass failed", stop_timeout_s=ctx.settings.delivery.timeout_s + 10)
        self._ctx = ctx
        self._batch = batch_size
        self._rng = rng or random.Random()

    def poll_once(self) -> bool:
        return self.run_once() > 0

    # One pass ---------------------------------------------------------------------------------
    def run_once(self) -> int:
        """Reclaim expired leases, then send every due row once; returns the rows attempted."""
        cfg = self._ctx.settings.delivery
        self._reclaim_expired()
        now = utcnow()
        with transaction(self._ctx.sessions) as s:
            claims = outbox.claim_due(s, now, self._batch, now + dt.timedelta(seconds=lease_seconds(cfg.timeout_s)),
                                      holder=HOLDER)
        if not claims:
            return 0
        with self._ctx.sessions() as s:
            rows = self._load(s, claims)
        unsent = {row.claim.id: row.claim for row in rows}
        attempted = 0
        try:
            for group in _by_destination(rows):
                if self.stopping:
                    break
                self._extend_lease(unsent.values())
                first = group[0]
                target = target_for_row(self._ctx.settings, first.destination, first.ae_title, first.host, first.port)
                attempted += self._send_group(target, group, unsent)
        finally:
            if unsent:  # stopping, or an error before these were tried: no attempt is charged
                with transaction(self._ctx.sessions) as s:
                    outbox.release(s, list(unsent.values()), utcnow())
        return attempted

    def _send_group(self, target: Target, rows: Sequence[_Row], unsent: dict[int, Claim]) -> int:
        by_id = {row.claim.id: row for row in rows}
        attempted = 0

        def settle(row: _Row, outcome: Outcome) -> None:
            nonlocal attempted
            self._record(row, target, outcome)
            unsent.pop(row.claim.id, None)
            attempted += 1

        items = []
        for row in rows:
            if target.problem:
                settle(row, Outcome(False, outbox.UNRESOLVED, target.problem, permanent=True))
            elif row.result_deleted:
                settle(row, Outcome(False, "file_error", "the result file was removed by retention", permanent=True))
            else:
                items.append(Outgoing(row.claim.id, row.sop_instance_uid, row.path))
        if not items:
            return attempted
        calling_ae = self._ctx.settings.delivery.calling_ae_title or self._ctx.settings.dicom.ae_title
        sender = stow.send_batch if target.kind == "stow" else send_batch
        batch = sender(target, items, calling_ae=calling_ae, timeout_s=self._ctx.settings.delivery.timeout_s)
        with contextlib.closing(batch):  # leaving early releases the association
            for item, outcome in batch:
                settle(by_id[item.delivery_id], outcome)
                self._extend_lease(unsent.values())
                if self.stopping:
                    break
        return attempted

    # Recording --------------------------------------------------------------------------------
    def _record(self, row: _Row, target: Target, outcome: Outcome) -> None:
        cfg = self._ctx.settings.delivery
        retry_in = outbox.backoff_delay(row.claim.attempt, cfg.backoff_initial_s, cfg.backoff_max_s, self._rng)
        with transaction(self._ctx.sessions) as s:
            state = outbox.record_outcome(
                s, row.claim, outcome, target, now=utcnow(), max_attempts=cfg.max_attempts, retry_in_s=retry_in
            )
            if state is None:
                log.warning(
                    "delivery %s: lease lost before the outcome was recorded (another sender took it back)",
                    row.claim.id, extra={"delivery_id": row.claim.id, "status": outcome.status},
                )
                return
            self._audit(s, row, target, outcome, state, retry_in if state == DeliveryState.PENDING else None)
        metric = "delivered" if outcome.delivered else ("dead" if state == DeliveryState.DEAD else "failed")
        DELIVERY_ATTEMPTS.labels(outcome=metric).inc()
        level = logging.INFO if outcome.delivered and not outcome.warning else logging.WARNING
        log.log(
            level, "delivery %s to %s: %s", row.claim.id, target.name, outcome.status,
            extra={"delivery_id": row.claim.id, "destination": target.name, "status": outcome.status,
                   "error": outcome.error, "attempt": row.claim.attempt, "state": state,
                   "sop_instance_uid": row.sop_instance_uid},
        )

    def _audit(
        self, session: Session, row: _Row, target: Target, outcome: Outcome, state: str, retry_in: float | None
    ) -> None:
        if outcome.delivered:
            code = MINOR_FAILURE if outcome.warning else SUCCESS
        else:
            code = SERIOUS_FAILURE
        common = dict(
            session=session, actor_ae=target.ae_title or None, actor_address=target.host or None,
            study_uid=row.study_uid, series_uid=row.series_uid, delivery_id=row.claim.id, destination=target.name,
            port=target.port, tls=target.tls is not None, status=outcome.status, error=outcome.error,
            attempt=row.claim.attempt, sop_instance_uid=row.sop_instance_uid, kind=row.kind,
        )
        self._ctx.auditor.record(
            "delivery_attempt", outcome=code, state=state,
            next_attempt_in_s=round(retry_in, 3) if retry_in is not None else None, **common,
        )
        if state == DeliveryState.DEAD:
            self._ctx.auditor.record("delivery_dead_letter", outcome=MAJOR_FAILURE, **common)

    def _reclaim_expired(self) -> None:
        """Take back rows whose lease expired, and at once those of a sender whose process ended
        (a restarted node's own predecessor: dsm_node.liveness), as interrupted attempts."""
        cfg = self._ctx.settings.delivery
        data_dir = self._ctx.settings.storage.data_dir
        with self._ctx.sessions() as s:
            ended = [h for h in outbox.holders_in_progress(s) if holder_gone(data_dir, h)]
        with transaction(self._ctx.sessions) as s:
            reclaimed = outbox.reclaim_expired(s, utcnow(), cfg.max_attempts, ended)
            if not reclaimed:
                return
            rows = {row.claim.id: row for row in self._load(s, [Claim(i, attempts) for i, _, attempts, _ in reclaimed])}
            for delivery_id, state, _, why in reclaimed:
                row = rows[delivery_id]
                target = Target(row.destination, row.ae_title, row.host, row.port)
                self._audit(s, row, target, Outcome(False, outbox.INTERRUPTED, why), state, None)
        for _, state, _, _ in reclaimed:
            DELIVERY_ATTEMPTS.labels(outcome="dead" if state == DeliveryState.DEAD else "failed").inc()
        log.warning("took back %d deliveries whose sender stopped mid-send", len(reclaimed))

    def _extend_lease(self, claims: Iterable[Claim]) -> None:
        claims = list(claims)
        if claims:
            until = utcnow() + dt.timedelta(seconds=lease_seconds(self._ctx.settings.delivery.timeout_s))
            with transaction(self._ctx.sessions) as s:
                outbox.extend_lease(s, claims, until)

    def _load(self, session: Session, claims: Sequence[Claim]) -> list[_Row]:
        attempt = {c.id: c.attempt for c in claims}
        stmt = (
            select(Delivery, Result, Study.study_uid)
            .join(Result, Delivery.result_id == Result.id)
            .join(Job, Result.job_id == Job.id)
            .join(Study, Job.study_id == Study.id)
            .where(Delivery.id.in_(list(attempt)))
            .order_by(Delivery.id)
        )
        return [
            _Row(
                claim=Claim(d.id, attempt[d.id]), destination=d.destination, ae_title=d.ae_title, host=d.host,
                port=d.port, kind=r.kind, sop_instance_uid=r.sop_instance_uid, series_uid=r.series_uid,
                study_uid=study_uid, path=self._ctx.results_dir / r.path, result_deleted=r.deleted_at is not None,
            )
            for d, r, study_uid in session.execute(stmt)
        ]


def _by_destination(rows: Sequence[_Row]) -> list[list[_Row]]:
    groups: dict[tuple[str, str, str, int], list[_Row]] = {}
    for row in rows:
        groups.setdefault((row.destination, row.ae_title, row.host, row.port), []).append(row)
    return list(groups.values())
