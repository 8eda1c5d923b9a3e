"""Small network helpers shared by the demo, the viewer's Orthanc runner, the tests and bench/."""
from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it; bound, then released).

    Another process may take it before the caller binds it: callers that start a server on it
    should wait for that server to answer rather than assume the port stayed free.
    """
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
