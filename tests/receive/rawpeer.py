"""A raw-socket DICOM peer: PDUs written byte by byte (PS3.8 9.3), from any loopback address.

What a hostile host on the hospital network can send, without an SCU library smoothing it out.
"""
from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def associate_rq(called: str, calling: str, *, max_pdu: int = 16384, abstract: str = VERIFICATION) -> bytes:
    """A complete A-ASSOCIATE-RQ PDU proposing one presentation context."""
    context = bytes((1, 0, 0, 0)) + _item(0x30, abstract.encode()) + _item(0x40, IMPLICIT_LE.encode())
    user_info = _item(0x51, struct.pack(">I", max_pdu))
    body = (struct.pack(">HH", 1, 0) + called.encode().ljust(16) + calling.encode().ljust(16) + bytes(32)
            + _item(0x10, APPLICATION_CONTEXT.encode()) + _item(0x20, context) + _item(0x50, user_info))
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def connect_from(source: str, port: int, timeout: float = 10) -> socket.socket:
    """A TCP connection to 127.0.0.1:port from ``source`` (any 127.x address works on Linux)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def read_pdu(sock: socket.socket) -> tuple[int, bytes] | None:
    """The next PDU (type, body), or None when the node closed the connection."""
    try:
        header = _read_exactly(sock, 6)
        if header is None:
            return None
        pdu_type, _, length = struct.unpack(">BBI", header)
        body = _read_exactly(sock, length)
        return None if body is None else (pdu_type, body)
    except ConnectionResetError:
        return None


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def closed_by_node(sock: socket.socket, timeout: float = 60) -> bool:
    """Whether the node closes the connection (EOF or reset) within ``timeout`` seconds."""
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def stream(sock: socket.socket, header: bytes, total: int, chunk: int = 1 << 20) -> int:
    """Send ``header`` then zeros until ``total`` bytes went out or the node cut us off; return
    how many bytes were sent."""
    sent = 0
    zeros = bytes(chunk)
    try:
        sock.sendall(header)
        sent = len(header)
        while sent < total:
            n = min(chunk, total - sent)
            sock.sendall(zeros[:n])
            sent += n
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass
    return sent


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the process's peak resident set size so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def wait_until(predicate, timeout: float = 30, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
