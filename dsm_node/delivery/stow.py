"""STOW-RS sender: the same contract as :func:`.scu.send_batch`, over DICOMweb.

Each file is one ``POST {url}/studies`` with a ``multipart/related; type="application/dicom"``
body (PS3.18 10.5), on one keep-alive connection per batch, so that every instance gets its
own answer and outcome, recorded before the next is sent (the outbox's exactly-once rule).
The answer (PS3.18 10.5.3):

    200                     stored                          delivered, "HTTP 200"
    202 + instance in 00081199 (ReferencedSOPSequence)      delivered with warning, "HTTP 202"
    202 + instance in 00081198 (FailedSOPSequence)          failed, "HTTP 202", its FailureReason
    409 / 4xx / 5xx         failed (retried like a DIMSE failure status), "HTTP <code>"

Transport problems use the C-STORE sender's words (refused, timeout, unreachable, tls_error,
aborted, connect_failed); once the connection is lost the rest of the batch gets the same
outcome without being sent.
"""
from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from .scu import Outcome, Outgoing, _check_file
from .targets import Target
from .web import auth_headers, connect, failure_word

log = logging.getLogger("dsm_node.delivery")

_REFERENCED, _FAILED = "00081199", "00081198"
_SOP_INSTANCE, _FAILURE_REASON, _WARNING_REASON = "00081155", "00081197", "00081196"


def send_batch(
    target: Target, items: Sequence[Outgoing], *, calling_ae: str, timeout_s: float
) -> Iterator[tuple[Outgoing, Outcome]]:
    """POST each item to ``target.web.url``/studies; yield (item, outcome) in order."""
    del calling_ae  # DICOMweb has no AE titles
    web = target.web
    sendable: list[Outgoing] = []
    for item in items:
        checked = _check_file(item)
        if isinstance(checked, Outcome):
            yield item, checked
        else:
            sendable.append(item)
    if not sendable:
        return
    try:
        conn, path = connect(web.url, web.web_tls, timeout_s)
    except OSError as exc:  # an unreadable CA or client certificate
        failure = Outcome(False, "tls_error", f"cannot set up TLS for {web.url}: {exc}")
        for item in sendable:
            yield item, failure
        return
    headers = {"Accept": "application/dicom+json", **auth_headers(web.auth)}
    lost: Outcome | None = None
    try:
        for item in sendable:
            if lost is not None:
                yield item, lost
                continue
            outcome = _post(conn, f"{path}/studies", headers, item, web.url)
            if not outcome.delivered and not outcome.status.startswith("HTTP") and outcome.status != "file_error":
                lost = Outcome(False, outcome.status, f"connection to {web.url} lost earlier in the batch ({outcome.error})")
            yield item, outcome
    finally:
        conn.close()


def _post(conn, path: str, headers: dict[str, str], item: Outgoing, url: str) -> Outcome:
    try:
        data = Path(item.path).read_bytes()
    except OSError as exc:
        return Outcome(False, "file_error", f"cannot read {item.path}: {exc}", permanent=True)
    boundary = f"dsm-{uuid.uuid4().hex}"
    body = b"".join([f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), data,
                     f"\r\n--{boundary}--\r\n".encode()])
    request_headers = {**headers, "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                       "Content-Length": str(len(body))}
    sent = False
    try:
        conn.request("POST", path, body=body, headers=request_headers)
        sent = True
        response = conn.getresponse()
        payload = response.read()
    except Exception as exc:  # transport: the PACS stopped, refused, timed out, TLS failed
        conn.close()
        word = failure_word(exc, sent)
        return Outcome(False, word, f"STOW-RS to {url}: {type(exc).__name__}: {exc}"[:1000])
    return _outcome(response.status, response.reason, payload, item.sop_instance_uid, url)


def _outcome(status: int, reason: str, payload: bytes, sop_instance_uid: str, url: str) -> Outcome:
    word = f"HTTP {status}"
    try:
        answer = json.loads(payload) if payload.strip() else {}
    except ValueError:
        answer = {}
    if isinstance(answer, list):  # some servers wrap the response dataset in a list
        answer = answer[0] if answer else {}
    failed = _items(answer, _FAILED)
    stored = _items(answer, _REFERENCED)
    mine_failed = [i for i in failed if _value(i, _SOP_INSTANCE) == sop_instance_uid]
    mine_stored = [i for i in stored if _value(i, _SOP_INSTANCE) == sop_instance_uid]
    if status == 200 and not mine_failed:
        return Outcome(True, word)
    if status == 202 and mine_stored and not mine_failed:
        warning = _value(mine_stored[0], _WARNING_REASON)
        return Outcome(True, word, f"stored with warning{f' 0x{int(warning):04X}' if warning is not None else ''}")
    detail = ""
    if mine_failed:
        code = _value(mine_failed[0], _FAILURE_REASON)
        detail = f": failure reason 0x{int(code):04X}" if code is not None else ""
    return Outcome(False, word, f"STOW-RS to {url} answered {status} {reason}{detail}"[:1000])


def _items(answer: dict, tag: str) -> list[dict]:
    element = answer.get(tag) if isinstance(answer, dict) else None
    return list(element.get("Value", [])) if isinstance(element, dict) else []


def _value(item: dict, tag: str):
    values = (item.get(tag) or {}).get("Value") or [None]
    return values[0]
