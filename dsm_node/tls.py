"""TLS for DICOM associations (PS3.15 Annex B, BCP 195 secure transport profile), for both
directions: the SCP (receive) and the delivery SCU use the same profile.

TLS 1.2 or newer only, forward-secret AEAD cipher suites for TLS 1.2 (TLS 1.3 suites are all
acceptable), no compression, no renegotiation. With ``require_client_cert`` (the default) the
peer must present a certificate signed by ``ca_file``, otherwise the handshake fails and the
connection is audited as a rejected association.
"""
from __future__ import annotations

import ssl

from .settings import TLS

# BCP 195 (RFC 9325) recommended TLS 1.2 suites: ECDHE/DHE with AES-GCM or ChaCha20-Poly1305.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!SHA1:!MD5"


def _harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION
    if hasattr(ssl, "OP_NO_RENEGOTIATION"):
        ctx.options |= ssl.OP_NO_RENEGOTIATION
    return ctx


def server_context(tls: TLS) -> ssl.SSLContext | None:
    """The SSLContext the SCP wraps accepted sockets with, or None when TLS is disabled."""
    if not tls.enabled:
        return None
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    ctx.load_cert_chain(certfile=str(tls.cert_file), keyfile=str(tls.key_file))
    if tls.ca_file is not None:
        ctx.load_verify_locations(cafile=str(tls.ca_file))
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else (
        ssl.CERT_OPTIONAL if tls.ca_file is not None else ssl.CERT_NONE
    )
    return ctx


def client_context(tls: TLS, server_hostname_check: bool = True) -> ssl.SSLContext | None:
    """An SSLContext for an SCU (delivery) with the same profile, or None when disabled.

    ``ca_file`` verifies the server; ``cert_file``/``key_file`` are presented as the client
    certificate when set.
    """
    if not tls.enabled:
        return None
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    ctx.check_hostname = server_hostname_check
    if tls.ca_file is not None:
        ctx.load_verify_locations(cafile=str(tls.ca_file))
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls.cert_file is not None and tls.key_file is not None:
        ctx.load_cert_chain(certfile=str(tls.cert_file), keyfile=str(tls.key_file))
    return ctx


def peer_subject(sock: ssl.SSLSocket) -> str | None:
    """The client certificate's subject CN (for the audit trail), if any."""
    try:
        cert = sock.getpeercert()
    except (ValueError, ssl.SSLError):
        return None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
