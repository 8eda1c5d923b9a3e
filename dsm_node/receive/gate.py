"""What a TCP connection must get through before pynetdicom spends a thread or memory on it.

pynetdicom (3.0.4) gives every accepted socket its own threads, counts it toward
``maximum_associations`` before anything is known about the peer, leaves it without a read
timeout, and reads every PDU whole into memory at the length the peer declares (up to 4 GiB)
before looking at it. Its public API has no hook between ``accept()`` and those reads, so the
node puts its checks in front of it, in the accept path of its own server class (the documented
``AE.make_server(server_class=...)``), without patching pynetdicom:

* **at accept, before any read** (:class:`ConnectionGate`): a source address outside every
  configured peer's networks (loopback when no peers are configured) is closed at once, and so
  is a connection beyond the per-source or total cap on pending connections; no thread is
  started for it. Refusals are counted and audited (aggregated per source).
* **while pynetdicom reads** (:class:`GuardedSocket`, :class:`GuardedSSLSocket`: the accepted
  socket, wrapped; pynetdicom only calls ``recv``/``send``/``close`` and ``select`` on it): the
  peer has ``dicom.acse_timeout_s`` from the accept to deliver a complete A-ASSOCIATE-RQ of at
  most :data:`MAX_ASSOCIATE_RQ_BYTES`; afterwards every read and write has
  ``dicom.network_timeout_s``; a P-DATA-TF PDU longer than the maximum the node advertised
  (``dicom.max_pdu``) aborts the association before its body is read. The PDU headers are
  parsed from the byte stream as pynetdicom consumes it, so nothing is read twice.

A connection is *pending* from accept until its association is established; only established
associations count toward ``dicom.max_associations`` (checked by the SCP).
"""
from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ..metrics import CONNECTIONS_REFUSED, PENDING_CONNECTIONS
from ..settings import Dicom
from .access import AccessPolicy

#: Largest A-ASSOCIATE-RQ accepted (bytes after the 6-byte header). 128 presentation contexts
#: with 20 transfer syntaxes of 64 characters each fit; nothing legitimate comes close.
MAX_ASSOCIATE_RQ_BYTES = 256 * 1024
#: A-RELEASE-RQ/RP and A-ABORT PDUs have a 4-byte body (PS3.8 9.3.6-9.3.8).
MAX_SMALL_PDU_BYTES = 64
_ASSOCIATE_TYPES = (0x01, 0x02, 0x03)
_P_DATA = 0x04
_SMALL_TYPES = (0x05, 0x06, 0x07)
# A-ABORT PDU, source 2 (service provider), reason 6 (invalid PDU parameter value), PS3.8 9.3.8.
ABORT_INVALID_PDU = bytes((0x07, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x02, 0x06))


class PDUViolation(ConnectionAbortedError):
    """Raised from ``recv``: pynetdicom treats it as a closed transport connection (Evt17)."""


@dataclass
class Pending:
    """One accepted connection until its association is established or it closes."""

    address: str
    gate: ConnectionGate
    accepted_at: float = field(default_factory=time.monotonic)
    done: bool = False

    def release(self) -> None:
        self.gate._release(self)


class ConnectionGate:
    """Admission at accept time and the pending-connection accounting."""

    def __init__(self, dicom: Dicom, policy: AccessPolicy,
                 on_refused: Callable[[str, str, str], None]) -> None:
        self.max_pending = dicom.max_pending
        self.max_per_source = dicom.max_pending_per_source
        self._policy = policy
        self._on_refused = on_refused  # (address, code, reason); counted here, audited there
        self._lock = threading.Lock()
        self._per_source: Counter[str] = Counter()
        self._total = 0
        self.refused = 0

    @property
    def pending(self) -> int:
        return self._total

    def admit(self, address: str) -> Pending | None:
        """A pending slot for a connection from ``address``, or None (it must be closed now)."""
        if not self._policy.address_allowed(address):
            self._refuse(address, "address", f"source address {address} is not in any configured peer's networks"
                         if self._policy.peers else f"no peers configured: only loopback may connect, not {address}")
            return None
        with self._lock:
            if self._per_source[address] >= self.max_per_source:
                code = "pending_source"
                reason = f"{self.max_per_source} connections from {address} already waiting to associate " \
                         "(dicom.max_pending_per_source)"
            elif self._total >= self.max_pending:
                code = "pending_total"
                reason = f"{self.max_pending} connections already waiting to associate (dicom.max_pending)"
            else:
                self._per_source[address] += 1
                self._total += 1
                PENDING_CONNECTIONS.set(self._total)
                return Pending(address, self)
        self._refuse(address, code, reason)
        return None

    def dropped(self, address: str, code: str, reason: str) -> None:
        """A pending connection closed by a guard (timeout, oversized A-ASSOCIATE-RQ)."""
        self._refuse(address, code, reason)

    def _refuse(self, address: str, code: str, reason: str) -> None:
        self.refused += 1
        CONNECTIONS_REFUSED.labels(code).inc()
        self._on_refused(address, code, reason)

    def _release(self, pending: Pending) -> None:
        with self._lock:
            if pending.done:
                return
            pending.done = True
            self._per_source[pending.address] -= 1
            if self._per_source[pending.address] <= 0:
                del self._per_source[pending.address]
            self._total -= 1
            PENDING_CONNECTIONS.set(self._total)


class StreamGuard:
    """The limits of one connection, applied to the bytes pynetdicom reads."""

    def __init__(self, pending: Pending, *, acse_timeout: float, network_timeout: float,
                 max_pdata: int) -> None:
        self.pending = pending
        self.deadline = pending.accepted_at + acse_timeout
        self.network_timeout = network_timeout
        self.max_pdata = max_pdata
        self.associate_received = False  # the first PDU (A-ASSOCIATE-RQ) is complete
        self.violation: str | None = None  # why the guard closed the connection
        self.code: str | None = None  # its metrics label
        self._header = b""
        self._body_left = 0

    def before_read(self, sock: socket.socket) -> None:
        if self.associate_received:
            return
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self._fail(sock, "associate_timeout", "no complete A-ASSOCIATE-RQ within dicom.acse_timeout_s", abort=False)
        sock.settimeout(remaining)

    def timed_out(self, sock: socket.socket) -> None:
        if not self.associate_received:
            self._fail(sock, "associate_timeout", "no complete A-ASSOCIATE-RQ within dicom.acse_timeout_s",
                       abort=False, raise_=False)
        else:
            self.violation = self.violation or "read timed out (dicom.network_timeout_s) in the middle of a PDU"

    def feed(self, sock: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._body_left:
                take = min(self._body_left, len(view))
                self._body_left -= take
                view = view[take:]
                if not self._body_left:
                    self._pdu_complete(sock)
                continue
            need = 6 - len(self._header)
            self._header += bytes(view[:need])
            view = view[need:]
            if len(self._header) == 6:
                pdu_type, _, length = struct.unpack(">BBL", self._header)
                self._header = b""
                self._check(sock, pdu_type, length)
                self._body_left = length
                if not length:
                    self._pdu_complete(sock)

    def _check(self, sock: socket.socket, pdu_type: int, length: int) -> None:
        if not self.associate_received or pdu_type in _ASSOCIATE_TYPES:
            if length > MAX_ASSOCIATE_RQ_BYTES:
                self._fail(sock, "associate_too_large",
                           f"association PDU of {length} bytes (limit {MAX_ASSOCIATE_RQ_BYTES})",
                           abort=self.associate_received)
        elif pdu_type == _P_DATA and length > self.max_pdata:
            self._fail(sock, "pdu_too_large",
                       f"P-DATA-TF PDU of {length} bytes exceeds the advertised maximum of {self.max_pdata} "
                       "(dicom.max_pdu)", abort=True)
        elif pdu_type in _SMALL_TYPES and length > MAX_SMALL_PDU_BYTES:
            self._fail(sock, "pdu_too_large", f"PDU type 0x{pdu_type:02X} of {length} bytes", abort=True)

    def _pdu_complete(self, sock: socket.socket) -> None:
        if not self.associate_received:
            self.associate_received = True
            sock.settimeout(self.network_timeout)

    def _fail(self, sock: socket.socket, code: str, reason: str, *, abort: bool, raise_: bool = True) -> None:
        self.violation = reason
        self.code = code
        if not self.associate_received:
            self.pending.gate.dropped(self.pending.address, code, reason)
        if abort:
            try:
                sock.settimeout(1.0)
                sock.sendall(ABORT_INVALID_PDU)
            except OSError:
                pass
        if raise_:
            raise PDUViolation(reason)


class _GuardedMixin:
    """``recv``/``close`` of a socket subclass, guarded by a :class:`StreamGuard`."""

    guard: StreamGuard | None = None

    def recv(self, bufsize: int, flags: int = 0) -> bytes:  # type: ignore[override]
        guard = self.guard
        if guard is None:
            return super().recv(bufsize, flags)  # type: ignore[misc]
        guard.before_read(self)  # type: ignore[arg-type]
        try:
            data = super().recv(bufsize, flags)  # type: ignore[misc]
        except TimeoutError:
            guard.timed_out(self)  # type: ignore[arg-type]
            raise
        guard.feed(self, data)  # type: ignore[arg-type]
        return data

    def close(self) -> None:
        guard = self.guard
        if guard is not None:
            guard.pending.release()
        super().close()  # type: ignore[misc]


class GuardedSocket(_GuardedMixin, socket.socket):
    """A plain accepted socket under a guard."""

    @classmethod
    def adopt(cls, sock: socket.socket) -> GuardedSocket:
        timeout = sock.gettimeout()
        guarded = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        guarded.settimeout(timeout)
        return guarded


class GuardedSSLSocket(_GuardedMixin, ssl.SSLSocket):
    """The TLS socket the node's server context creates (``SSLContext.sslsocket_class``)."""


def max_pdata_bytes(dicom: Dicom) -> int:
    """The P-DATA-TF limit: the advertised maximum, or (unlimited) twice the instance limit."""
    if dicom.max_pdu:
        return dicom.max_pdu
    return min(2 * dicom.max_instance_bytes + 1024, 0xFFFFFFFF)
