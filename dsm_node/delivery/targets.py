"""Where results go: the configured destinations plus, optionally, the peer that sent the study.

A reply-to-caller destination is recorded under the name ``caller:<AE>`` with the peer's address
and the port configured for it in ``dicom.peers`` (an association carries the caller's
ephemeral source port, never its SCP port). When no port is known the target still exists,
with ``problem`` saying why, so that the outbox can show the operator a dead row instead of
silently sending nothing.

The reply goes over TLS when the study arrived over TLS (``delivery.reply_tls: auto``; the SCP
accepts TLS only when ``dicom.tls`` is enabled, so that is when every study arrives over TLS),
with the node's own certificate as the client certificate and ``dicom.tls.ca_file`` verifying
the peer; ``on``/``off`` force it.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..db.models import Study
from ..settings import TLS, Destination, Settings
from .web import split_url

CALLER_PREFIX = "caller:"
UNKNOWN_AE = "UNKNOWN"
_NO_CALLER = "reply_to_caller: the study has no calling AE title or peer address recorded"


@dataclass(frozen=True)
class Target:
    name: str
    ae_title: str  # "" for a STOW-RS destination
    host: str
    port: int
    tls: TLS | None = None  # None: plain TCP
    problem: str | None = None  # set when the target cannot be used; the row is dead-lettered
    kind: str = "dimse"  # dimse (C-STORE) | stow (DICOMweb STOW-RS)
    web: Destination | None = None  # the STOW-RS destination's configuration (URL, auth, TLS)

    @property
    def address(self) -> str:
        if self.kind == "stow" and self.web is not None:
            return str(self.web.url)
        return f"{self.ae_title}@{self.host}:{self.port}"


def _configured(d: Destination) -> Target:
    if d.kind == "stow":
        _scheme, host, port, _path = split_url(str(d.url))
        return Target(d.name, "", host, port, kind="stow", web=d)
    return Target(d.name, str(d.ae_title), str(d.host), int(d.port or 0), d.tls if d.tls.enabled else None)


def configured_targets(settings: Settings) -> list[Target]:
    return [_configured(d) for d in settings.delivery.destinations]


def resolve_destinations(settings: Settings, study: Study | None) -> list[Target]:
    """The targets for the results of ``study`` (whose sender matters for reply_to_caller)."""
    targets = configured_targets(settings)
    if settings.delivery.reply_to_caller:
        caller = caller_target(settings, study.calling_ae if study else None, study.peer_address if study else None)
        if not any(_same_application(caller, t) for t in targets):
            targets.append(caller)
    return targets


def caller_target(settings: Settings, calling_ae: str | None, peer_address: str | None) -> Target:
    host = host_only(peer_address)
    ae = (calling_ae or "").strip()
    name = f"{CALLER_PREFIX}{ae or '?'}"
    if not ae or not host:
        return Target(name, ae or UNKNOWN_AE, host, 0, problem=_NO_CALLER)
    port = peer_port(settings, ae, host)
    if port is None:
        return Target(
            name, ae, host, 0,
            problem=f"reply_to_caller: no dicom.peers entry with ae_title {ae!r}, a network containing {host} and a port",
        )
    return Target(name, ae, host, port, caller_tls(settings))


def caller_tls(settings: Settings) -> TLS | None:
    """The TLS settings of a reply to the caller, or None for plain TCP (see the module doc)."""
    mode, node = settings.delivery.reply_tls, settings.dicom.tls
    if mode == "off" or (mode == "auto" and not node.enabled):
        return None
    return TLS(enabled=True, cert_file=node.cert_file, key_file=node.key_file, ca_file=node.ca_file,
               require_client_cert=False)


def target_for_row(settings: Settings, name: str, ae_title: str, host: str, port: int) -> Target:
    """The target to use now for an outbox row, taking configuration changes into account.

    Configured destinations are looked up by name so that a PACS that moved (new port, TLS
    switched on) receives pending results at its new address. A destination removed from the
    configuration is not guessed at: the row fails with the reason.
    """
    if name.startswith(CALLER_PREFIX):
        if ae_title == UNKNOWN_AE or not host:
            return Target(name, ae_title, host, port, problem=_NO_CALLER)
        current = peer_port(settings, ae_title, host) or port
        if not current:
            return caller_target(settings, ae_title, host)
        return Target(name, ae_title, host, current, caller_tls(settings))
    for target in configured_targets(settings):
        if target.name == name:
            return target
    return Target(name, ae_title, host, port, problem=f"destination {name!r} is no longer in delivery.destinations")


def peer_port(settings: Settings, ae_title: str, host: str) -> int | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    for peer in settings.dicom.peers:
        if peer.ae_title != ae_title or not peer.port:
            continue
        if any(address in ipaddress.ip_network(net, strict=False) for net in peer.networks):
            return peer.port
    return None


def host_only(peer_address: str | None) -> str:
    """The IP of a recorded peer address, which may carry the source port ('10.0.0.5:51234')."""
    if not peer_address:
        return ""
    text = peer_address.strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if text.startswith("[") and "]" in text:  # [v6]:port
        return text[1 : text.index("]")]
    head, sep, tail = text.rpartition(":")
    if sep and tail.isdigit() and head.count(":") == 0:
        return head
    return text


def _same_application(caller: Target, configured: Target) -> bool:
    # Host names and addresses cannot be compared without DNS, so a configured destination with
    # the caller's AE title and port (or any port, if the caller's is unknown) counts as the
    # caller: sending twice is harmless, a needless dead row would fail the job.
    if caller.ae_title != configured.ae_title:
        return False
    return caller.port == 0 or caller.port == configured.port
