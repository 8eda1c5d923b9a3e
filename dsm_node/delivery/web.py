"""HTTP(S) pieces shared by STOW-RS delivery and webhooks: a connection with the configured
TLS verification, the authentication header, and one word for what went wrong, in the same
vocabulary as the C-STORE sender (refused, timeout, unreachable, tls_error, aborted, ...)."""
from __future__ import annotations

import base64
import errno
import http.client
import socket
import ssl
from urllib.parse import urlsplit


def split_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path without a trailing slash) of an http(s) URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, parts.hostname or "", port, parts.path.rstrip("/")


def ssl_context(web_tls) -> ssl.SSLContext:
    """Client TLS context: certificate and host name verified unless ``verify`` is off;
    TLS 1.2 or newer (as BCP 195 asks of the DICOM side too)."""
    ctx = ssl.create_default_context(cafile=str(web_tls.ca_file) if web_tls.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not web_tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if web_tls.cert_file:
        ctx.load_cert_chain(str(web_tls.cert_file), str(web_tls.key_file) if web_tls.key_file else None)
    return ctx


def connect(url: str, web_tls, timeout_s: float) -> tuple[http.client.HTTPConnection, str]:
    """An (unopened) connection to the URL's server and the URL's path."""
    scheme, host, port, path = split_url(url)
    if scheme == "https":
        return http.client.HTTPSConnection(host, port, timeout=timeout_s, context=ssl_context(web_tls)), path
    return http.client.HTTPConnection(host, port, timeout=timeout_s), path


def auth_headers(auth) -> dict[str, str]:
    if auth.type == "basic":
        raw = f"{auth.username}:{auth.password.get_secret_value()}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}
    if auth.type == "bearer":
        return {"Authorization": "Bearer " + auth.token.get_secret_value()}
    return {}


def failure_word(exc: BaseException, sent: bool) -> str:
    """What an exception of an HTTP exchange means; ``sent``: the request went out before it."""
    if isinstance(exc, ssl.SSLError):
        return "tls_error"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    if isinstance(exc, socket.gaierror):
        return "unreachable"
    if isinstance(exc, (http.client.HTTPException, ConnectionError, OSError)):
        return "aborted" if sent else "connect_failed"
    return "error"
