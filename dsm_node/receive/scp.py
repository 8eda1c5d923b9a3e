"""The C-STORE / C-ECHO SCP: pynetdicom AE set-up, access control and the store handler.

Per C-STORE request (the hot path, kept lean):
  size limit -> SOP class policy -> element headers parsed (no pixel decode) -> UIDs validated
  -> duplicate or conflict? -> space/quota -> temp file (write + fsync) -> index row (one
  transaction) -> rename into place -> Success.
Nothing is acknowledged that is not both on disk and in the database, and nothing reaches the
spool without its row: a refused instance's temp file is deleted (see docs/receiving.md). Audit rows are written per
association (accepted/rejected/released/aborted) and per association and series (a summary of
the instances stored), failures per instance; see docs/receiving.md for the status codes.
"""
from __future__ import annotations

import gc
import logging
import socket
import socketserver
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from .. import tls as tls_mod
from ..audit import MAJOR_FAILURE, MINOR_FAILURE, SERIOUS_FAILURE
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
from ..spool import InvalidUID, Spool, SpoolFull, relative_path, validate_uid
from .access import AccessPolicy
from .dataset import (
    PROCESSED_SOP_CLASSES,
    TRANSFER_SYNTAXES,
    DatasetTooLarge,
    UnparseableDataset,
    file_meta_bytes,
    header_summary,
    int_or_none,
    parse_dataset,
    text_value,
)
from .gate import ConnectionGate, GuardedSocket, GuardedSSLSocket, StreamGuard, max_pdata_bytes
from .index import (
    IndexConflict,
    IndexUnavailable,
    InstanceRecord,
    SOPInstanceConflict,
    find_instance,
    record_instance,
    spool_usage,
)
from .throttle import RefusalAuditor

log = logging.getLogger("dsm_node.receive")

# C-STORE response statuses (PS3.4 B.2.3, PS3.7 C). See docs/receiving.md.
SUCCESS = 0x0000
SOP_CLASS_NOT_SUPPORTED = 0x0122  # dicom.other_sop_classes = reject
OUT_OF_RESOURCES = 0xA700  # free-space threshold, quota, disk full
INDEX_UNAVAILABLE = 0xA710  # out of resources: the database cannot record it (transient)
DATASET_MISMATCH = 0xA900  # SOP Class UID of the data set differs from the request's
UNPARSEABLE = 0xC210  # cannot understand: not a readable data set (truncated, garbage)
INTERNAL_ERROR = 0xC211  # cannot understand: unexpected error in the handler (same as pynetdicom's)
INVALID_UID = 0xC212  # cannot understand: a UID fails PS3.5 9.1 (nothing is written)
UID_CONFLICT = 0xC213  # cannot understand: UIDs contradict the request or what is stored (SOP UID conflict)
TOO_LARGE = 0xC214  # refused: larger than dicom.max_instance_bytes

# Refusals audited as ``instance_conflict``: the instance contradicts what is stored.
_CONFLICT_CODES = frozenset({"sop_uid_conflict", "index_conflict"})

FLUSH_INTERVAL_S = 60.0  # long associations get their per-series audit summary at least this often
STOP_GRACE_S = 5.0


class _Refused(Exception):
    def __init__(self, status: int, reason: str, code: str, *, study_uid: str | None = None,
                 series_uid: str | None = None, sop_instance_uid: str | None = None, **detail: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.code = code
        self.study_uid = study_uid
        self.series_uid = series_uid
        self.sop_instance_uid = sop_instance_uid
        self.detail = detail  # more audit detail (the stored copy's UIDs for a conflict)


@dataclass
class _Tally:
    study_uid: str | None
    count: int = 0
    bytes: int = 0
    duplicates: int = 0
    sop_classes: set[str] = field(default_factory=set)


@dataclass
class _AssocState:
    calling_ae: str
    address: str
    called_ae: str
    tls_subject: str | None = None
    started: float = field(default_factory=time.monotonic)
    last_flush: float = field(default_factory=time.monotonic)
    stored: dict[str, _Tally] = field(default_factory=dict)
    ignored: dict[str, _Tally] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=lambda: {"stored": 0, "duplicates": 0, "ignored": 0, "refused": 0, "bytes": 0})
    storage_full_audited: bool = False
    established: bool = False
    finalized: bool = False
    # incoming size of the C-STORE data set being received (EVT_PDU_RECV, DUL thread)
    incoming: int = 0
    oversize: bool = False
    guard: StreamGuard | None = None  # the connection's PDU guard (its violation, if it closed it)


def _status(code: int, comment: str | None = None) -> int | Dataset:
    if not comment:
        return code
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment.encode("ascii", "replace").decode()[:64]
    return ds


class _NodeServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the node's accept path in front of it (see
    :mod:`dsm_node.receive.gate`): strangers and connections beyond the pending caps are closed
    at accept, before any read and without a thread; every other socket is wrapped in a PDU
    guard. Also: TLS handshakes off the accept loop (audited when they fail), optional
    SO_REUSEPORT, and a shutdown that does not wait for running associations."""

    daemon_threads = True
    block_on_close = False
    # The kernel's queue of connections not yet accepted (socketserver's default is 5): a burst
    # of strangers must not make a real peer's SYN wait for a retransmission.
    request_queue_size = 128

    def __init__(self, *args: Any, gate: ConnectionGate, guard_args: dict[str, Any],
                 node_tls: ssl.SSLContext | None = None, on_tls_failure: Any = None,
                 reuse_port: bool = False, **kwargs: Any) -> None:
        self._gate = gate
        self._guard_args = guard_args
        self._node_tls = node_tls
        self._on_tls_failure = on_tls_failure
        self._reuse_port = reuse_port
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        if self._reuse_port and hasattr(socket, "SO_REUSEPORT"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        # Accept only; the TLS handshake runs in the connection's own thread so that a slow or
        # hostile client cannot stall the accept loop.
        sock, address = self.socket.accept()
        return GuardedSocket.adopt(sock), address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        # Runs in the accept loop: no read, no thread, no database write (refusals are
        # audited by the RefusalAuditor's own thread).
        pending = self._gate.admit(str(client_address[0]))
        if pending is None:
            return False  # socketserver closes it
        request.guard = StreamGuard(pending, **self._guard_args)
        return True

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if self._node_tls is not None:
            guard = request.guard
            try:
                request.settimeout(max(0.01, guard.deadline - time.monotonic()))
                tls_sock = self._node_tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                if self._on_tls_failure is not None:
                    self._on_tls_failure(client_address, exc)
                try:
                    request.close()  # detached by wrap_socket; releases the pending slot
                except OSError:
                    pass
                return
            request.guard, tls_sock.guard = None, guard
            request = tls_sock
        super().process_request_thread(request, client_address)

    def shutdown(self) -> None:
        socketserver.BaseServer.shutdown(self)
        self.server_close()


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
        self.ignore_others = d.other_sop_classes == "ignore"
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
        self.tls_context = tls_mod.server_context(d.tls)
        if self.tls_context is not None:
            self.tls_context.sslsocket_class = GuardedSSLSocket  # documented SSLContext attribute
        self.max_associations = d.max_associations
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
        self._server: _NodeServer | None = None
        self._thread: threading.Thread | None = None
        self._states: dict[int, _AssocState] = {}
        self._lock = threading.Lock()

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
            server_class=_NodeServer,
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
        with self._lock:
            active = sum(1 for st in self._states.values() if st.established)
            negotiating = len(self._states) - active
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
    def _state(self, assoc: Any) -> _AssocState | None:
        return self._states.get(id(assoc))

    def _on_requested(self, event: Any) -> None:
        assoc = event.assoc
        rq = assoc.requestor.primitive
        calling = str(rq.calling_ae_title or "").strip()
        called = str(rq.called_ae_title or "").strip()
        address = str(assoc.requestor.address)
        decision = self.access.check(calling, called, address)
        if decision.allowed:
            with self._lock:
                full = len(self._states) >= self.max_associations
                if not full:
                    self._states[id(assoc)] = _AssocState(calling, address, called, self._tls_subject(assoc))
            if not full:
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
        with self._lock:
            st = self._states.pop(id(assoc), None)
        prim = assoc.acceptor.primitive
        rsd = (getattr(prim, "result", None), getattr(prim, "result_source", None), getattr(prim, "diagnostic", None))
        if rsd == (0x02, 0x03, 0x02):
            code, reason = "max_associations", f"too many connections (pynetdicom's limit {self.ae.maximum_associations})"
        else:
            code, reason = "other", f"rejected by the association layer (result/source/diagnostic {rsd})"
        ASSOCIATIONS.labels("rejected").inc()
        REJECTIONS.labels(code).inc()
        rq = assoc.requestor.primitive
        self.refusals.record("association_rejected", outcome=MINOR_FAILURE if code == "max_associations" else SERIOUS_FAILURE,
                             actor_ae=(st.calling_ae if st else str(getattr(rq, "calling_ae_title", "") or "").strip()),
                             address=str(assoc.requestor.address), reason=reason)

    def _on_established(self, event: Any) -> None:
        assoc = event.assoc
        st = self._state(assoc)
        if st is None:
            return
        st.established = True
        st.guard = self._guard_of(assoc)
        if st.guard is not None:
            st.guard.pending.release()  # from now on it counts as an association, not pending
        ASSOCIATIONS.labels("accepted").inc()
        ACTIVE_ASSOCIATIONS.inc()
        detail: dict[str, Any] = {"called_ae": st.called_ae, "accepted_contexts": len(assoc.accepted_contexts)}
        if st.tls_subject:
            detail["tls_subject"] = st.tls_subject
        self._audit("association_accepted", actor_ae=st.calling_ae, actor_address=st.address, **detail)

    def _on_released(self, event: Any) -> None:
        self._finalize(event.assoc, "association_released")

    def _on_aborted(self, event: Any) -> None:
        self._finalize(event.assoc, "association_aborted")

    def _on_conn_close(self, event: Any) -> None:
        self._finalize(event.assoc, "association_aborted", reason="connection closed without release")

    def _finalize(self, assoc: Any, event_type: str, **extra: Any) -> None:
        with self._lock:
            st = self._states.pop(id(assoc), None)
            if st is None or st.finalized or not st.established:
                return
            st.finalized = True
        ACTIVE_ASSOCIATIONS.dec()
        self._flush(st)
        outcome = 0 if event_type == "association_released" else MINOR_FAILURE
        if st.oversize:
            extra["reason"] = f"data set larger than twice dicom.max_instance_bytes ({self.max_instance_bytes})"
        if st.guard is not None and st.guard.violation:
            extra["reason"] = st.guard.violation
            outcome = SERIOUS_FAILURE
            if st.guard.code:
                REJECTIONS.labels(st.guard.code).inc()
        self._audit(event_type, outcome=outcome, actor_ae=st.calling_ae, actor_address=st.address,
                    duration_s=round(time.monotonic() - st.started, 3), **st.totals, **extra)

    def _flush(self, st: _AssocState) -> None:
        """Write the per-series summaries (``instances_stored``, ``instance_ignored``)."""
        stored, ignored = st.stored, st.ignored
        st.stored, st.ignored = {}, {}
        st.last_flush = time.monotonic()
        for series_uid, t in stored.items():
            if not (t.count or t.duplicates):
                continue
            self._audit("instances_stored", actor_ae=st.calling_ae, actor_address=st.address,
                        study_uid=t.study_uid, series_uid=series_uid, count=t.count, bytes=t.bytes,
                        duplicates=t.duplicates)
        for series_uid, t in ignored.items():
            self._audit("instance_ignored", actor_ae=st.calling_ae, actor_address=st.address,
                        study_uid=t.study_uid, series_uid=series_uid or None, count=t.count,
                        sop_classes=sorted(t.sop_classes),
                        reason="SOP class not processed (dicom.other_sop_classes=ignore): acknowledged, not stored")

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

    # DIMSE --------------------------------------------------------------------------------
    def _on_echo(self, event: Any) -> int:
        st = self._state(event.assoc)
        self._audit("echo", actor_ae=st.calling_ae if st else None, actor_address=st.address if st else None)
        return SUCCESS

    def _on_pdu_recv(self, event: Any) -> None:
        """Runs in the DUL thread: cut off a data set that grows beyond twice the size limit.

        pynetdicom keeps a data set in memory until it is complete. Up to twice
        ``max_instance_bytes`` it is received and refused with 0xC214 (a clear failure the
        sender will not retry); beyond that the association is aborted at once (memory bound).
        """
        pdu = event.pdu
        if type(pdu) is not P_DATA_TF:
            return
        st = self._states.get(id(event.assoc))
        if st is None:
            return
        for item in pdu.presentation_data_value_items:
            value = item.presentation_data_value
            if not value:
                continue
            header = value[0]
            if header & 1:  # command fragment: a new message starts
                st.incoming = 0
                continue
            st.incoming += len(value) - 1
            if st.incoming > 2 * self.max_instance_bytes and not st.oversize:
                st.oversize = True
                st.totals["refused"] += 1
                INSTANCES_RECEIVED.labels("rejected").inc()
                REJECTIONS.labels("too_large").inc()
                self._audit("instance_rejected", outcome=SERIOUS_FAILURE, actor_ae=st.calling_ae,
                            actor_address=st.address, status=f"0x{TOO_LARGE:04X}",
                            reason=f"data set larger than twice dicom.max_instance_bytes ({self.max_instance_bytes}); "
                                   "association aborted")
                # Inside a notification handler pynetdicom makes abort() non-blocking: an
                # A-ABORT goes to the peer and the association ends without buffering more.
                event.assoc.abort()
                return

    def _on_store(self, event: Any) -> int | Dataset:
        t0 = time.perf_counter()
        st = self._state(event.assoc)
        if st is None:  # cannot happen for an accepted association; be safe
            return _status(INTERNAL_ERROR, "association state missing")
        try:
            code = self._store(event, st)
            STORE_SECONDS.observe(time.perf_counter() - t0)
        except _Refused as r:
            self._refused(st, r)
            return _status(r.status, r.reason)
        except Exception as exc:
            log.exception("C-STORE handler failed", extra={"calling_ae": st.calling_ae})
            r = _Refused(INTERNAL_ERROR, f"internal error: {type(exc).__name__}", "internal")
            self._refused(st, r)
            return _status(r.status, r.reason)
        if time.monotonic() - st.last_flush > FLUSH_INTERVAL_S:
            self._flush(st)
        return code

    def _refused(self, st: _AssocState, r: _Refused) -> None:
        st.totals["refused"] += 1
        if r.status == OUT_OF_RESOURCES:
            INSTANCES_RECEIVED.labels("no_space").inc()
        else:
            INSTANCES_RECEIVED.labels("rejected").inc()
        REJECTIONS.labels(r.code).inc()
        detail = {"status": f"0x{r.status:04X}", "reason": r.reason, **r.detail}
        if r.sop_instance_uid:
            detail["sop_instance_uid"] = r.sop_instance_uid
        if r.status == OUT_OF_RESOURCES:
            # One storage_full row per association (every further instance would repeat it).
            if not st.storage_full_audited:
                st.storage_full_audited = True
                self._audit("storage_full", outcome=MAJOR_FAILURE, actor_ae=st.calling_ae, actor_address=st.address,
                            study_uid=r.study_uid, series_uid=r.series_uid, **detail)
            else:
                log.warning("instance refused", extra={"calling_ae": st.calling_ae, **detail})
            return
        event = "instance_conflict" if r.code in _CONFLICT_CODES else "instance_rejected"
        self._audit(event, outcome=SERIOUS_FAILURE, actor_ae=st.calling_ae, actor_address=st.address,
                    study_uid=r.study_uid, series_uid=r.series_uid, **detail)

    def _store(self, event: Any, st: _AssocState) -> int | Dataset:
        req = event.request
        cmd_class = str(req.AffectedSOPClassUID or "")
        cmd_instance = str(req.AffectedSOPInstanceUID or "")
        buf = req.DataSet
        buf.seek(0, 2)
        size = buf.tell()
        if size > self.max_instance_bytes:
            raise _Refused(TOO_LARGE, f"instance larger than {self.max_instance_bytes} bytes", "too_large")
        ts = str(event.context.transfer_syntax)

        if cmd_class not in PROCESSED_SOP_CLASSES:
            if not self.ignore_others:
                raise _Refused(SOP_CLASS_NOT_SUPPORTED, f"SOP class {cmd_class} not accepted by this node", "sop_class")
            study = series = None
            if ts != DeflatedExplicitVRLittleEndian:  # never inflate what is not kept
                try:
                    parsed = parse_dataset(buf, ts, self.max_instance_bytes)
                    study, series = parsed.study_uid, parsed.series_uid
                except UnparseableDataset:
                    pass
            tally = st.ignored.setdefault(series or "", _Tally(study))
            tally.count += 1
            tally.sop_classes.add(cmd_class)
            st.totals["ignored"] += 1
            INSTANCES_RECEIVED.labels("ignored").inc()
            return SUCCESS

        try:
            p = parse_dataset(buf, ts, self.max_instance_bytes)
        except DatasetTooLarge as exc:
            raise _Refused(TOO_LARGE, str(exc), "too_large") from None
        except UnparseableDataset as exc:
            raise _Refused(UNPARSEABLE, str(exc), "unparseable") from None
        study_uid, series_uid, sop_uid = p.study_uid, p.series_uid, p.sop_instance_uid
        try:
            validate_uid(sop_uid, "SOPInstanceUID")
            validate_uid(p.sop_class_uid, "SOPClassUID")
            validate_uid(study_uid, "StudyInstanceUID")
            validate_uid(series_uid, "SeriesInstanceUID")
        except InvalidUID as exc:
            raise _Refused(INVALID_UID, str(exc), "invalid_uid") from None
        assert study_uid and series_uid and sop_uid and p.sop_class_uid
        if sop_uid != cmd_instance:
            raise _Refused(UID_CONFLICT, "SOP Instance UID of the data set differs from the request's",
                           "uid_mismatch", study_uid=study_uid, series_uid=series_uid, sop_instance_uid=sop_uid)
        if p.sop_class_uid != cmd_class:
            raise _Refused(DATASET_MISMATCH, "SOP Class UID of the data set differs from the request's",
                           "sop_class_mismatch", study_uid=study_uid, series_uid=series_uid, sop_instance_uid=sop_uid)
        if not p.has_pixel_data:
            raise _Refused(UNPARSEABLE, "image without Pixel Data (truncated?)", "unparseable",
                           study_uid=study_uid, series_uid=series_uid, sop_instance_uid=sop_uid)
        rel = relative_path(study_uid, series_uid, sop_uid)
        ids = dict(study_uid=study_uid, series_uid=series_uid, sop_instance_uid=sop_uid)

        tally = st.stored.get(series_uid)
        if tally is None:
            tally = st.stored[series_uid] = _Tally(study_uid)
        # Duplicate? Only a file already at its path can be one (a stat, no query, when new).
        # Any other copy of a known SOP Instance UID is caught by the index in one transaction.
        had_file = self.spool.exists(rel)
        if had_file:
            try:
                existing = find_instance(self.ctx.engine, sop_uid)
            except IndexUnavailable as exc:
                raise _Refused(INDEX_UNAVAILABLE, "index database unavailable; retry later", "index_unavailable",
                               **ids) from exc
            if existing is not None and existing.deleted_at is None:
                conflict = existing.conflict_with(study_uid, series_uid, cmd_class)
                if conflict is not None:
                    raise self._conflict(conflict, ids)
                tally.duplicates += 1
                st.totals["duplicates"] += 1
                INSTANCES_RECEIVED.labels("duplicate").inc()
                return SUCCESS

        # Write order (the spool/index invariant): complete temp file -> index row committed ->
        # rename into place. A refusal deletes the temp file, so nothing reaches the spool that
        # has no row; a crash in between leaves a complete temp file that start-up recovery
        # renames and the spool check (fsck) indexes, or quarantines when it conflicts.
        meta = file_meta_bytes(cmd_class, sop_uid, ts, st.calling_ae)
        total = len(meta) + size
        try:
            with buf.getbuffer() as view:
                staged = self.spool.stage(rel, (meta, view), total)
        except SpoolFull as exc:
            raise _Refused(OUT_OF_RESOURCES, str(exc), "no_space", **ids) from None

        ds = p.dataset
        record = InstanceRecord(
            study_uid=study_uid,
            series_uid=series_uid,
            sop_instance_uid=sop_uid,
            sop_class_uid=cmd_class,
            transfer_syntax_uid=ts,
            path=rel,
            size_bytes=total,
            calling_ae=st.calling_ae,
            peer_address=st.address,
            modality=text_value(ds, "Modality"),
            series_number=int_or_none(text_value(ds, "SeriesNumber")),
            series_description=text_value(ds, "SeriesDescription"),
            accession_number=text_value(ds, "AccessionNumber"),
            header=lambda: header_summary(ds),
        )
        try:
            outcome = record_instance(self.ctx, record)
            if outcome.status == "duplicate":  # stored by a parallel association meanwhile
                staged.discard()
            else:
                staged.commit()
        except SOPInstanceConflict as exc:
            staged.discard()
            raise self._conflict(exc, ids) from None
        except IndexConflict as exc:
            staged.discard()
            raise _Refused(UID_CONFLICT, str(exc), "index_conflict", conflict=exc.kind, **ids) from None
        except IndexUnavailable as exc:
            staged.discard()
            log.error("index unavailable", extra={"error": str(exc), **ids})
            raise _Refused(INDEX_UNAVAILABLE, "index database unavailable; retry later", "index_unavailable", **ids) from None
        except BaseException:
            staged.discard()
            raise
        if outcome.status == "duplicate":
            tally.duplicates += 1
            st.totals["duplicates"] += 1
            INSTANCES_RECEIVED.labels("duplicate").inc()
            return SUCCESS
        tally.count += 1
        tally.bytes += total
        st.totals["stored"] += 1
        st.totals["bytes"] += total
        INSTANCES_RECEIVED.labels("stored").inc()
        BYTES_RECEIVED.inc(total)
        return SUCCESS

    @staticmethod
    def _conflict(exc: SOPInstanceConflict, ids: dict[str, str]) -> _Refused:
        """Refusal of a known SOP Instance UID under another study, series or SOP class."""
        return _Refused(UID_CONFLICT, str(exc), "sop_uid_conflict", conflict=exc.kind,
                        stored_study_uid=exc.study_uid, stored_series_uid=exc.series_uid,
                        stored_sop_class_uid=exc.sop_class_uid, **ids)
