"""The C-STORE / C-ECHO SCP: pynetdicom AE set-up, life cycle and the event handlers.

Per C-STORE request (the hot path, kept lean):
  size limit -> SOP class policy -> element headers parsed (no pixel decode) -> UIDs validated
  (:mod:`.decision`) -> duplicate or conflict? -> space/quota -> temp file (write + fsync) ->
  index row (one transaction) -> rename into place (:mod:`.store`) -> Success.
Nothing is acknowledged that is not both on disk and in the database, and nothing reaches the
spool without its row: a refused instance's temp file is deleted (see docs/receiving.md). Audit
rows are written per association (accepted/rejected/released/aborted) and per association and
series (a summary of the instances stored, kept by :mod:`.ledger`), failures per instance; the
status codes are :class:`.status.StoreStatus` (see docs/receiving.md).

The pieces: :mod:`.access` (who may associate), :mod:`.gate` and :mod:`.server` (the accept
path and the PDU guard), :mod:`.decision` (the store decision), :mod:`.store` (spool + index),
:mod:`.ledger` (per-association bookkeeping), :mod:`.throttle` (aggregated refusal audit).
"""
from __future__ import annotations

import gc
import logging
import ssl
import threading
import time
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import Verification

from .. import tls as tls_mod
from ..audit import MINOR_FAILURE, SERIOUS_FAILURE
from ..context import NodeContext
from ..metrics import (
    ACTIVE_ASSOCIATIONS,
    ASSOCIATION_LIMIT,
    ASSOCIATIONS,
    BYTES_RECEIVED,
    INSTANCES_RECEIVED,
    REJECTIONS,
    STORE_SECONDS,
)
from ..spool import Spool
from .access import AccessPolicy
from .dataset import TRANSFER_SYNTAXES
from .decision import Ignore, Refusal, StorePolicy, StoreRequest
from .gate import ConnectionGate, GuardedSSLSocket, StreamGuard, max_pdata_bytes
from .index import spool_usage
from .ledger import AssociationLedger, AuditRow, Ledgers, refusal_detail
from .server import NodeServer
from .status import StoreStatus, response
from .store import InstanceStore
from .throttle import RefusalAuditor

log = logging.getLogger("dsm_node.receive")

STOP_GRACE_S = 5.0


class StorageSCP:
    """The node's receiving side. ``start()`` returns at once; ``stop()`` ends it."""

    def __init__(self, ctx: NodeContext, *, reuse_port: bool = False) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        d = self.settings.dicom
        # pynetdicom's standard event logging runs per PDU and per DIMSE message; the node
        # logs its own JSON events instead (documented pynetdicom option, process-wide).
        _config.LOG_HANDLER_LEVEL = "none"
        self.access = AccessPolicy(d)
        self.policy = StorePolicy.from_settings(d)
        self.max_instance_bytes = d.max_instance_bytes
        self._reuse_port = reuse_port
        storage = self.settings.storage
        self.spool = Spool(
            ctx.spool_dir,
            fsync=storage.fsync,
            min_free_bytes=storage.min_free_bytes,
            quota_bytes=storage.quota_bytes,
            used_bytes=lambda: spool_usage(ctx.engine),
        )
        self.store = InstanceStore(ctx, self.spool)
        self.tls_context = tls_mod.server_context(d.tls)
        if self.tls_context is not None:
            self.tls_context.sslsocket_class = GuardedSSLSocket  # documented SSLContext attribute
        self.max_associations = d.max_associations
        self.ledgers = Ledgers(d.max_associations)
        self.refusals = RefusalAuditor(self._audit)
        self.gate = ConnectionGate(d, self.access, self._on_connection_refused)
        ae = AE(ae_title=d.ae_title)
        ae.maximum_pdu_size = d.max_pdu
        # pynetdicom counts every connection, established or not, toward its own limit; the
        # node counts established associations only (in _on_requested) and caps connections
        # still waiting to associate separately, so pynetdicom's limit is only a backstop.
        ae.maximum_associations = d.max_associations + d.max_pending + 16
        ae.acse_timeout = d.acse_timeout_s
        ae.dimse_timeout = d.dimse_timeout_s
        ae.network_timeout = d.network_timeout_s
        ae.require_called_aet = False  # checked (and audited) by AccessPolicy
        ae.require_calling_aet = []
        ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
        self.ae = ae
        self._server: NodeServer | None = None
        self._thread: threading.Thread | None = None

    # Life cycle ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the SCP is not running")
        return int(self._server.server_address[1])

    def start(self) -> None:
        if self._server is not None:
            return
        d = self.settings.dicom
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_PDU_RECV, self._on_pdu_recv),
        ]
        self.spool.used_bytes()  # prime the quota counter before the first association
        # Everything allocated so far (modules, pydicom dictionaries, SQLAlchemy metadata, the
        # AE's presentation contexts) lives as long as the process: move it out of the cyclic
        # garbage collector's reach. Without this every full collection walks it (~0.2 s,
        # about once per 200 instances received, measured); documented Python API.
        gc.freeze()
        server = self.ae.make_server(
            (d.host, d.port),
            ae_title=d.ae_title,
            evt_handlers=handlers,
            server_class=NodeServer,
            gate=self.gate,
            guard_args={"acse_timeout": d.acse_timeout_s, "network_timeout": d.network_timeout_s,
                        "max_pdata": max_pdata_bytes(d)},
            node_tls=self.tls_context,
            on_tls_failure=self._on_tls_failure,
            reuse_port=self._reuse_port,
        )
        ASSOCIATION_LIMIT.set(d.max_associations)
        self.refusals.start()
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="dsm-storescp", daemon=True)
        self._thread.start()
        log.info("storage SCP listening", extra={"host": d.host, "port": self.port, "ae_title": d.ae_title,
                                                  "tls": self.tls_context is not None})

    def stop(self, timeout: float = STOP_GRACE_S) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # no new connections
        deadline = time.monotonic() + timeout
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in server.active_associations:
            assoc.abort()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.refusals.stop()
        log.info("storage SCP stopped")

    def load(self) -> dict[str, Any]:
        """Slots in use, for /healthz: ``exhausted`` when no association or pending slot is free."""
        active, negotiating = self.ledgers.counts()
        pending = self.gate.pending
        return {
            "active": active + negotiating,
            "max_associations": self.max_associations,
            "pending": pending,
            "max_pending": self.gate.max_pending,
            "refused_connections": self.gate.refused,
            "exhausted": active + negotiating >= self.max_associations or pending >= self.gate.max_pending,
        }

    # Association events -------------------------------------------------------------------
    def _on_requested(self, event: Any) -> None:
        assoc = event.assoc
        rq = assoc.requestor.primitive
        calling = str(rq.calling_ae_title or "").strip()
        called = str(rq.called_ae_title or "").strip()
        address = str(assoc.requestor.address)
        decision = self.access.check(calling, called, address)
        if decision.allowed:
            if self.ledgers.open(assoc, AssociationLedger(calling, address, called, self._tls_subject(assoc))):
                return
            # Only associations count, never connections still negotiating: transient.
            rsd, code, outcome = (0x02, 0x03, 0x02), "max_associations", MINOR_FAILURE
            reason = f"too many associations (dicom.max_associations={self.max_associations})"
        else:
            rsd, code, outcome, reason = decision.reject, decision.code, SERIOUS_FAILURE, decision.reason
        assoc.acse.send_reject(*rsd)
        ASSOCIATIONS.labels("rejected").inc()
        REJECTIONS.labels(code).inc()
        self.refusals.record("association_rejected", address=address, reason=reason, outcome=outcome,
                             actor_ae=calling, called_ae=called)
        assoc.kill()  # as pynetdicom does after its own rejections: wait for the peer to close

    def _on_rejected(self, event: Any) -> None:
        # Rejections by pynetdicom itself (our own ones never trigger EVT_REJECTED).
        assoc = event.assoc
        ledger = self.ledgers.discard(assoc)
        prim = assoc.acceptor.primitive
        rsd = (getattr(prim, "result", None), getattr(prim, "result_source", None), getattr(prim, "diagnostic", None))
        if rsd == (0x02, 0x03, 0x02):
            code, reason = "max_associations", f"too many connections (pynetdicom's limit {self.ae.maximum_associations})"
        else:
            code, reason = "other", f"rejected by the association layer (result/source/diagnostic {rsd})"
        ASSOCIATIONS.labels("rejected").inc()
        REJECTIONS.labels(code).inc()
        rq = assoc.requestor.primitive
        calling = ledger.calling_ae if ledger else str(getattr(rq, "calling_ae_title", "") or "").strip()
        self.refusals.record("association_rejected", outcome=MINOR_FAILURE if code == "max_associations" else SERIOUS_FAILURE,
                             actor_ae=calling, address=str(assoc.requestor.address), reason=reason)

    def _on_established(self, event: Any) -> None:
        assoc = event.assoc
        ledger = self.ledgers.get(assoc)
        if ledger is None:
            return
        ledger.established = True
        ledger.guard = self._guard_of(assoc)
        if ledger.guard is not None:
            ledger.guard.pending.release()  # from now on it counts as an association, not pending
        ASSOCIATIONS.labels("accepted").inc()
        ACTIVE_ASSOCIATIONS.inc()
        detail: dict[str, Any] = {"called_ae": ledger.called_ae, "accepted_contexts": len(assoc.accepted_contexts)}
        if ledger.tls_subject:
            detail["tls_subject"] = ledger.tls_subject
        self._audit("association_accepted", actor_ae=ledger.calling_ae, actor_address=ledger.address, **detail)

    def _on_released(self, event: Any) -> None:
        self._finalize(event.assoc, "association_released")

    def _on_aborted(self, event: Any) -> None:
        self._finalize(event.assoc, "association_aborted")

    def _on_conn_close(self, event: Any) -> None:
        self._finalize(event.assoc, "association_aborted", reason="connection closed without release")

    def _finalize(self, assoc: Any, event_type: str, **extra: Any) -> None:
        ledger = self.ledgers.close(assoc)
        if ledger is None:
            return
        ACTIVE_ASSOCIATIONS.dec()
        self._write(ledger.take_summaries())
        if ledger.guard is not None and ledger.guard.violation and ledger.guard.code:
            REJECTIONS.labels(ledger.guard.code).inc()
        self._write([ledger.closing_row(event_type, self.max_instance_bytes, **extra)])

    def _on_tls_failure(self, client_address: Any, exc: BaseException) -> None:
        address = str(client_address[0]) if isinstance(client_address, tuple) else str(client_address)
        ASSOCIATIONS.labels("rejected").inc()
        REJECTIONS.labels("tls").inc()
        self.refusals.record("association_rejected", address=address, outcome=SERIOUS_FAILURE,
                             reason=f"TLS handshake failed: {type(exc).__name__}: {str(exc)[:200]}")

    def _on_connection_refused(self, address: str, code: str, reason: str) -> None:
        self.refusals.record("connection_refused", address=address, reason=reason, outcome=SERIOUS_FAILURE, code=code)

    @staticmethod
    def _guard_of(assoc: Any) -> StreamGuard | None:
        sock = getattr(getattr(assoc, "dul", None), "socket", None)
        return getattr(getattr(sock, "socket", None), "guard", None)

    @staticmethod
    def _tls_subject(assoc: Any) -> str | None:
        sock = getattr(getattr(assoc, "dul", None), "socket", None)
        raw = getattr(sock, "socket", None)
        return tls_mod.peer_subject(raw) if isinstance(raw, ssl.SSLSocket) else None

    def _audit(self, event_type: str, **kwargs: Any) -> None:
        try:
            self.ctx.auditor.record(event_type, **kwargs)
        except Exception as exc:  # the database may be down: never let auditing kill an association
            log.error("audit write failed", extra={"event_type": event_type, "error": f"{type(exc).__name__}: {exc}"[:300]})

    def _write(self, rows: list[AuditRow]) -> None:
        for row in rows:
            self._audit(row.event_type, **row.detail)

    # DIMSE --------------------------------------------------------------------------------
    def _on_echo(self, event: Any) -> int:
        ledger = self.ledgers.get(event.assoc)
        self._audit("echo", actor_ae=ledger.calling_ae if ledger else None,
                    actor_address=ledger.address if ledger else None)
        return int(StoreStatus.SUCCESS)

    def _on_pdu_recv(self, event: Any) -> None:
        """Runs in the DUL thread: cut off a data set that grows beyond twice the size limit.

        pynetdicom keeps a data set in memory until it is complete. Up to twice
        ``max_instance_bytes`` it is received and refused with 0xC214 (a clear failure the
        sender will not retry); beyond that the association is aborted at once (memory bound).
        """
        pdu = event.pdu
        if type(pdu) is not P_DATA_TF:
            return
        ledger = self.ledgers.get(event.assoc)
        if ledger is None:
            return
        values = (item.presentation_data_value for item in pdu.presentation_data_value_items)
        if not ledger.feed_pdata(values, 2 * self.max_instance_bytes):
            return
        INSTANCES_RECEIVED.labels("rejected").inc()
        REJECTIONS.labels("too_large").inc()
        self._audit("instance_rejected", outcome=SERIOUS_FAILURE, actor_ae=ledger.calling_ae,
                    actor_address=ledger.address, status=f"0x{StoreStatus.TOO_LARGE:04X}",
                    reason=f"data set larger than twice dicom.max_instance_bytes ({self.max_instance_bytes}); "
                           "association aborted")
        # Inside a notification handler pynetdicom makes abort() non-blocking: an A-ABORT goes
        # to the peer and the association ends without buffering more.
        event.assoc.abort()

    def _on_store(self, event: Any) -> int | Dataset:
        t0 = time.perf_counter()
        ledger = self.ledgers.get(event.assoc)
        if ledger is None:  # cannot happen for an accepted association; be safe
            return response(StoreStatus.INTERNAL_ERROR, "association state missing")
        try:
            self._store(StoreRequest.from_event(event), ledger)
            STORE_SECONDS.observe(time.perf_counter() - t0)
        except Refusal as r:
            self._refused(ledger, r)
            return response(r.status, r.reason)
        except Exception as exc:
            log.exception("C-STORE handler failed", extra={"calling_ae": ledger.calling_ae})
            internal = Refusal(StoreStatus.INTERNAL_ERROR, f"internal error: {type(exc).__name__}", "internal")
            self._refused(ledger, internal)
            return response(internal.status, internal.reason)
        if ledger.flush_due():
            self._write(ledger.take_summaries())
        return int(StoreStatus.SUCCESS)

    def _store(self, request: StoreRequest, ledger: AssociationLedger) -> None:
        """Store, count a duplicate or ignore ``request``; raises :class:`Refusal`."""
        decision = self.policy.decide(request)
        if isinstance(decision, Ignore):
            ledger.record_ignored(decision.series_uid, decision.study_uid, decision.sop_class_uid)
            INSTANCES_RECEIVED.labels("ignored").inc()
            return
        ledger.series(decision.series_uid, decision.study_uid)  # summaries keep first-seen order
        kept = self.store.keep(decision, ledger.calling_ae, ledger.address)
        if kept.duplicate:
            ledger.record_duplicate(decision.series_uid, decision.study_uid)
            INSTANCES_RECEIVED.labels("duplicate").inc()
            return
        ledger.record_stored(decision.series_uid, decision.study_uid, kept.bytes)
        INSTANCES_RECEIVED.labels("stored").inc()
        BYTES_RECEIVED.inc(kept.bytes)

    def _refused(self, ledger: AssociationLedger, r: Refusal) -> None:
        no_space = r.status == StoreStatus.OUT_OF_RESOURCES
        INSTANCES_RECEIVED.labels("no_space" if no_space else "rejected").inc()
        REJECTIONS.labels(r.code).inc()
        row = ledger.record_refused(r)
        if row is not None:
            self._write([row])
        else:  # one storage_full row per association; the repeats are logged
            log.warning("instance refused", extra={"calling_ae": ledger.calling_ae, **refusal_detail(r)})
