"""C-STORE SCU: send a batch of result files to one destination over one association.

Every file gets an :class:`Outcome`, yielded as soon as it is known so that the caller can
record it before the next one is sent (a crash mid-batch then repeats only unrecorded files).
``status`` is the DIMSE status as hex (``0x0000``, ``0xB000``, ``0xA700`` ...) when the peer
answered, otherwise one word for what went wrong before or instead of an answer:

    refused, timeout, unreachable, tls_error, connect_failed   no transport connection
    rejected                                                  A-ASSOCIATE-RJ (reason in error)
    aborted                                                   A-ABORT, or the connection dropped
    no_context                                                the SOP class / transfer syntax was not accepted
    file_error                                                the result file is missing or not the expected instance
    error                                                     anything else (the message says what)
"""
from __future__ import annotations

import errno
import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context

from ..tls import client_context
from .targets import Target

log = logging.getLogger("dsm_node.delivery")

# pynetdicom converts between these when sending, so any of them may be offered for such a file.
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True)
class Outgoing:
    delivery_id: int
    sop_instance_uid: str
    path: Path


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    status: str
    error: str | None = None
    permanent: bool = False  # retrying cannot help (the file is gone): dead-letter at once

    @property
    def warning(self) -> bool:
        return self.delivered and self.status not in ("0x0000", "HTTP 200")  # C-STORE or STOW-RS success


def send_batch(
    target: Target, items: Sequence[Outgoing], *, calling_ae: str, timeout_s: float
) -> Iterator[tuple[Outgoing, Outcome]]:
    """Send ``items`` to ``target``; yield (item, outcome) for every item, in order.

    Stopping the iteration early releases the association; items not yet yielded were not sent.
    """
    sendable: list[tuple[Outgoing, UID, UID]] = []
    for item in items:
        checked = _check_file(item)
        if isinstance(checked, Outcome):
            yield item, checked
        else:
            sendable.append((item, *checked))
    if not sendable:
        return

    contexts = _presentation_contexts([(sop_class, syntax) for _, sop_class, syntax in sendable])
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    tls_args = None
    if target.tls is not None:
        try:
            # The receiving side's BCP 195 profile; the server's name or IP must be in its certificate.
            tls_args = (client_context(target.tls), target.host)
        except OSError as exc:  # a missing or unreadable certificate, key or CA file
            failure = Outcome(False, "tls_error", f"cannot set up TLS for {target.name}: {exc}")
            for item, _, _ in sendable:
                yield item, failure
            return

    connected = threading.Event()
    started = time.monotonic()
    try:
        assoc = ae.associate(
            target.host, target.port, contexts=contexts, ae_title=target.ae_title, tls_args=tls_args,
            evt_handlers=[(evt.EVT_CONN_OPEN, lambda event: connected.set())],
        )
    except Exception as exc:  # e.g. a value pynetdicom refuses; each attempt must still count
        log.exception("association request to %s failed", target.address)
        failure = Outcome(False, "error", f"cannot request an association with {target.address}: {exc!r}")
        for item, _, _ in sendable:
            yield item, failure
        return
    if not assoc.is_established:
        failure = _association_failure(assoc, connected.is_set(), time.monotonic() - started, timeout_s, target)
        for item, _, _ in sendable:
            yield item, failure
        return

    lost: Outcome | None = None
    try:
        for message_id, (item, _, _) in enumerate(sendable, start=1):
            if lost is None and not assoc.is_established:
                lost = Outcome(False, "aborted", f"association with {target.address} ended before this instance was sent")
            if lost is not None:
                yield item, lost
                continue
            outcome = _store(assoc, item, message_id, timeout_s)
            if not outcome.delivered and outcome.status in ("aborted", "timeout"):
                lost = Outcome(
                    False, outcome.status, f"association with {target.address} was lost earlier in the batch ({outcome.error})"
                )
            yield item, outcome
    finally:
        if assoc.is_established:  # a lost association was already ended by pynetdicom
            assoc.release()


def _check_file(item: Outgoing) -> tuple[UID, UID] | Outcome:
    """(SOP class, transfer syntax) of a result file, or why it cannot be sent."""
    try:
        meta = read_file_meta_info(item.path)
        sop_class, sop_instance, syntax = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID
    except FileNotFoundError:
        return Outcome(False, "file_error", f"result file {item.path} does not exist", permanent=True)
    except Exception as exc:  # unreadable or not DICOM Part 10
        return Outcome(False, "file_error", f"result file {item.path} is unreadable: {exc}", permanent=True)
    if sop_instance != item.sop_instance_uid:
        return Outcome(
            False, "file_error", f"{item.path} holds SOP instance {sop_instance}, expected {item.sop_instance_uid}",
            permanent=True,
        )
    return UID(sop_class), UID(syntax)


def _presentation_contexts(pairs: Sequence[tuple[UID, UID]]) -> list[PresentationContext]:
    """One context per SOP class and stored encoding. Uncompressed files offer both little
    endian syntaxes (pynetdicom converts); a compressed file offers only its own syntax,
    because re-encoding a result here would change it behind the writer's back."""
    offers: dict[tuple[UID, frozenset[UID]], list[UID]] = {}
    for sop_class, syntax in pairs:
        offered = [syntax, *(s for s in _UNCOMPRESSED if s != syntax)] if syntax in _UNCOMPRESSED else [syntax]
        offers.setdefault((sop_class, frozenset(offered)), offered)
    return [build_context(sop_class, offered) for (sop_class, _), offered in offers.items()]


def _store(assoc: Association, item: Outgoing, message_id: int, timeout_s: float) -> Outcome:
    started = time.monotonic()
    try:
        rsp = assoc.send_c_store(item.path, msg_id=message_id)
    except OSError as exc:
        return Outcome(False, "file_error", f"cannot read {item.path}: {exc}", permanent=True)
    except ValueError as exc:
        if "presentation context" in str(exc):  # the peer accepted no context for this class / encoding
            return Outcome(False, "no_context", str(exc))
        return Outcome(False, "error", f"cannot send {item.path}: {exc}")
    except Exception as exc:  # a file pydicom cannot decode, or a pynetdicom failure
        log.exception("C-STORE of %s failed", item.sop_instance_uid)
        return Outcome(False, "error", f"cannot send {item.path}: {exc!r}")
    if "Status" not in rsp:
        timed_out = time.monotonic() - started >= timeout_s * 0.95
        word = "timeout" if timed_out else "aborted"
        detail = f"no C-STORE response within {timeout_s:g} s" if timed_out else "association aborted without a C-STORE response"
        return Outcome(False, word, detail)
    status = int(rsp.Status)
    text = f"0x{status:04X}"
    comment = str(rsp.get("ErrorComment", "") or "").strip()
    if status == 0x0000:
        return Outcome(True, text)
    if status == 0x0001 or 0xB000 <= status <= 0xBFFF:  # warnings: the instance was stored
        return Outcome(True, text, f"stored with warning {text}{': ' + comment if comment else ''}")
    return Outcome(False, text, f"C-STORE failed with status {text}{': ' + comment if comment else ''}")


def _association_failure(assoc: Association, connected: bool, elapsed: float, timeout_s: float, target: Target) -> Outcome:
    where = target.address
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        return Outcome(False, "rejected", f"{where} rejected the association: {rj.result_str}, {rj.source_str}, {rj.reason_str}")
    if not connected:
        reason = _CONNECT_ERRORS.pop(assoc.dul.ident)
        return Outcome(False, _connect_word(reason, elapsed, timeout_s), f"cannot connect to {where}: {reason or 'no detail'}")
    if assoc.acceptor.primitive is not None and assoc.acceptor.primitive.result == 0x00:
        return Outcome(False, "no_context", f"{where} accepted none of the proposed presentation contexts")
    if elapsed >= timeout_s * 0.95:
        return Outcome(False, "timeout", f"{where} did not answer the association request within {timeout_s:g} s")
    return Outcome(False, "aborted", f"{where} aborted the association request")


_ERRNO = re.compile(r"\[Errno (-?\d+)\]")


def _connect_word(reason: str | None, elapsed: float, timeout_s: float) -> str:
    if reason:
        if "SSL" in reason or "certificate" in reason.lower():
            return "tls_error"
        number = _ERRNO.search(reason)
        if number and int(number.group(1)) == errno.ECONNREFUSED:
            return "refused"
        if "timed out" in reason:
            return "timeout"
        if number and int(number.group(1)) in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "unreachable"
    elif elapsed >= timeout_s * 0.95:
        return "timeout"
    return "connect_failed"


class _ConnectErrors(logging.Handler):
    """pynetdicom tells why a TCP or TLS connection failed only in a log record, written by the
    association's DUL thread. Keeping the last such message per thread lets an outcome say
    "Connection refused" or "certificate verify failed" instead of a bare "aborted"."""

    _PREFIX = "TCP Initialisation Error:"
    _KEEP = 256

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self._lock = threading.Lock()
        self._by_thread: dict[int, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(self._PREFIX) and record.thread is not None:
            with self._lock:
                if len(self._by_thread) >= self._KEEP:  # failures of other pynetdicom users
                    self._by_thread.clear()
                self._by_thread[record.thread] = message[len(self._PREFIX):].strip()

    def pop(self, thread_id: int | None) -> str | None:
        with self._lock:
            return self._by_thread.pop(thread_id, None) if thread_id is not None else None


_CONNECT_ERRORS = _ConnectErrors()
logging.getLogger("pynetdicom.transport").addHandler(_CONNECT_ERRORS)
