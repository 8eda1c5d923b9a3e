"""What ``dsm-node view`` must do on the host's network after the process has moved into a
private network namespace: open the user's browser and run the ``--smoke`` HTTP checks.

The viewer socket listens on the host's loopback; a browser or client started from inside the
private namespace could not reach it. So a child is forked before the move and does these
things on request (one JSON line in, one line out).
"""
from __future__ import annotations

import json
import os
import sys


class HostHelper:
    """A child forked before the process leaves the host network namespace (see the module)."""

    def __init__(self) -> None:
        r1, w1 = os.pipe()  # parent -> child
        r2, w2 = os.pipe()  # child -> parent
        self.pid = os.fork()
        if self.pid == 0:  # child
            os.close(w1)
            os.close(r2)
            with os.fdopen(r1) as inp, os.fdopen(w2, "w") as out:
                for line in inp:
                    cmd = json.loads(line)
                    if "open" in cmd:
                        import webbrowser

                        webbrowser.open(cmd["open"])
                        out.write("ok\n")
                    elif "smoke" in cmd:
                        out.write(("ok" if smoke_check(*cmd["smoke"]) else "fail") + "\n")
                    out.flush()
            os._exit(0)
        os.close(r1)
        os.close(w2)
        self._out = os.fdopen(w1, "w")
        self._in = os.fdopen(r2)

    def ask(self, **cmd: object) -> str:
        self._out.write(json.dumps(cmd) + "\n")
        self._out.flush()
        return self._in.readline().strip()

    def close(self) -> None:
        self._out.close()
        self._in.close()
        os.waitpid(self.pid, 0)


def smoke_check(base: str, study: str) -> bool:
    """The viewer page (with the cross-origin isolation OHIF needs), its generated config and a
    DICOMweb query for ``study`` all answer through the viewer at ``base``."""
    import urllib.request

    def get(path: str) -> tuple[int, bytes, dict[str, str]]:
        with urllib.request.urlopen(base + path, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)

    try:
        st, body, headers = get("/viewer")
        if st != 200 or b"<html" not in body.lower():
            return False
        if headers.get("Cross-Origin-Embedder-Policy") != "require-corp":
            return False
        st, body, _ = get("/app-config.js")
        if b"/dicom-web" not in body:
            return False
        st, body, _ = get(f"/dicom-web/studies?StudyInstanceUID={study}")
        found = json.loads(body)
        return st == 200 and len(found) == 1
    except OSError as e:
        print(f"smoke check: {e}", file=sys.stderr)
        return False
