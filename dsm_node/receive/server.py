"""The SCP's TCP server: pynetdicom's threaded association server with the node's accept path.

Passed to pynetdicom through the documented ``AE.make_server(server_class=...)``; the checks it
runs at accept and while pynetdicom reads are in :mod:`.gate`.
"""
from __future__ import annotations

import socket
import socketserver
import ssl
import time
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

from .gate import ConnectionGate, GuardedSocket, StreamGuard


class NodeServer(ThreadedAssociationServer):
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
