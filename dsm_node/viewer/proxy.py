"""Same-origin HTTP server for OHIF: static ``dist/`` + SPA fallback + DICOMweb proxy.

OHIF's prebuilt app must be served at ``/`` with every unknown route (``/viewer``...)
answered by ``index.html``, and must reach DICOMweb on the same origin (no CORS). This server
(standard library only) does both, forwarding ``/dicom-web/...`` and ``/wado...`` to Orthanc,
answers ``/app-config.js`` with the harness configuration, and sends the cross-origin
isolation headers (COOP/COEP) that OHIF's decoders use for SharedArrayBuffer.

It binds to 127.0.0.1 only and keeps a log of every request it served (``requests``).
"""
from __future__ import annotations

import http.client
import mimetypes
import posixpath
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .ohif import app_config_js

PROXY_PREFIXES = ("/dicom-web", "/wado")
_IMMUTABLE_MARKERS = ("/frames/", "/bulk/", "/bulkdata", "/rendered", "/thumbnail")
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
               "trailers", "transfer-encoding", "upgrade", "content-length", "host"}
_EXTRA_TYPES = {".wasm": "application/wasm", ".js": "text/javascript",
                ".mjs": "text/javascript", ".json": "application/json",
                ".woff2": "font/woff2", ".svg": "image/svg+xml"}
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ViewerHTTPServer

    def log_message(self, fmt, *args):  # quiet; requests are recorded instead
        pass

    # -- dispatch -----------------------------------------------------------------------
    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def _dispatch(self):
        path = urllib.parse.urlsplit(self.path).path
        try:
            if any(path == p or path.startswith(p + "/") or path.startswith(p + "?")
                   for p in PROXY_PREFIXES):
                status = self._proxy()
            elif self.command in ("GET", "HEAD"):
                status = self._static(path)
            else:
                status = self._send(405, b"method not allowed", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            status = -1
        self.server.record(self.command, self.path, status)

    # -- responses ----------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> int:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in ISOLATION_HEADERS.items():
            self.send_header(k, v)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        return status

    def _static(self, path: str) -> int:
        if path == "/app-config.js":
            return self._send(200, self.server.app_config.encode(), "text/javascript",
                              {"Cache-Control": "no-store"})
        root = self.server.dist
        rel = posixpath.normpath(urllib.parse.unquote(path)).lstrip("/")
        target = (root / rel).resolve() if rel not in ("", ".") else root / "index.html"
        if root not in target.parents and target != root / "index.html":
            return self._send(403, b"forbidden", "text/plain")
        if not target.is_file():
            if Path(rel).suffix.lower() in (".js", ".css", ".wasm", ".map", ".png", ".ico",
                                            ".json", ".woff2", ".svg", ".mjs", ".html"):
                return self._send(404, b"not found", "text/plain")
            target = root / "index.html"  # single-page-app routes (/viewer, /segmentation)
        ctype = (_EXTRA_TYPES.get(target.suffix.lower())
                 or mimetypes.guess_type(target.name)[0] or "application/octet-stream")
        cache = "no-cache" if target.name == "index.html" else "max-age=3600"
        return self._send(200, target.read_bytes(), ctype, {"Cache-Control": cache})

    def _proxy(self) -> int:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in _HOP_BY_HOP and k.lower() != "accept-encoding"}
        conn = http.client.HTTPConnection("127.0.0.1", self.server.orthanc_port, timeout=120)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = {k: v for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP
                   and k.lower() not in {h.lower() for h in ISOLATION_HEADERS}
                   and k.lower() != "content-type"}
            if (self.command == "GET" and resp.status == 200
                    and any(m in self.path for m in _IMMUTABLE_MARKERS)):
                # Pixel data and bulk data are immutable (addressed by SOP Instance UID):
                # let the browser keep them when the same study is opened again.
                out = {k: v for k, v in out.items() if k.lower() not in ("cache-control",
                                                                         "expires", "pragma")}
                out["Cache-Control"] = "private, max-age=86400, immutable"
            return self._send(resp.status, data,
                              resp.getheader("Content-Type", "application/octet-stream"), out)
        finally:
            conn.close()


class ViewerHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, dist: str | Path, orthanc_port: int, port: int = 0,
                 host: str = "127.0.0.1", app_config: str | None = None,
                 sock: socket.socket | None = None):
        """sock: an already bound and listening socket to serve on (see dsm-node view: it is
        created before the process moves into a private network namespace)."""
        self.dist = Path(dist).resolve()
        self.orthanc_port = orthanc_port
        self.app_config = app_config or app_config_js()
        self.requests: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if sock is None:
            super().__init__((host, port), _Handler)
        else:
            super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
            self.socket.close()
            self.socket = sock
            self.server_address = sock.getsockname()[:2]

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))

    def start(self) -> ViewerHTTPServer:
        self._thread = threading.Thread(target=self.serve_forever, name="ohif-http",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def __enter__(self) -> ViewerHTTPServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
