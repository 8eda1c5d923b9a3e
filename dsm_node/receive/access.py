"""Who may associate: calling AE title + source address per configured peer, called AE check.

Secure default: with no peers configured only loopback addresses (127.0.0.0/8, ::1) may
associate, whatever their AE title. With peers configured, the calling AE title must be one
of them AND the source address must lie in one of that peer's networks; loopback gets no
exception. Decisions carry the reason that goes into the ``association_rejected`` audit row
and the A-ASSOCIATE-RJ diagnostic.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..settings import Dicom

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # rejected-permanent, service-user, calling AE title not recognized
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # rejected-permanent, service-user, called AE title not recognized


@dataclass(frozen=True)
class AccessDecision:
    allowed: bool
    reason: str = ""
    code: str = ""  # short machine-readable reason (metrics label)
    reject: tuple[int, int, int] = REJECT_CALLING_AE
    peer: str | None = None  # AE title of the matched peer


def parse_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_loopback(address: str) -> bool:
    ip = parse_address(address)
    return ip is not None and any(ip in net for net in LOOPBACK if net.version == ip.version)


class AccessPolicy:
    """Decides association requests from the ``dicom`` settings."""

    def __init__(self, dicom: Dicom) -> None:
        self.ae_title = dicom.ae_title.strip()
        self.require_called_ae = dicom.require_called_ae
        self.peers = [
            (p.ae_title.strip(), [ipaddress.ip_network(n, strict=False) for n in p.networks]) for p in dicom.peers
        ]

    def address_allowed(self, address: str) -> bool:
        """Whether ``address`` lies in any peer's networks (loopback when no peers are
        configured): checked at accept time, before anything is read from the connection."""
        ip = parse_address(address)
        if ip is None:
            return False
        if not self.peers:
            return is_loopback(str(ip))
        return any(ip.version == net.version and ip in net for _, nets in self.peers for net in nets)

    def check(self, calling_ae: str, called_ae: str, address: str) -> AccessDecision:
        calling = (calling_ae or "").strip()
        called = (called_ae or "").strip()
        if self.require_called_ae and called != self.ae_title:
            return AccessDecision(
                False,
                f"called AE title {called!r} is not this node's ({self.ae_title!r})",
                "called_ae",
                REJECT_CALLED_AE,
            )
        ip = parse_address(address)
        if not self.peers:
            if ip is not None and is_loopback(str(ip)):
                return AccessDecision(True, "loopback (no peers configured)", "loopback")
            return AccessDecision(
                False,
                f"no peers configured: only loopback may associate, not {address}",
                "address",
            )
        matching = [nets for ae, nets in self.peers if ae == calling]
        if not matching:
            return AccessDecision(False, f"calling AE title {calling!r} is not a configured peer", "calling_ae")
        if ip is not None:
            for nets in matching:
                if any(ip.version == net.version and ip in net for net in nets):
                    return AccessDecision(True, "configured peer", "peer", peer=calling)
        return AccessDecision(
            False, f"address {address} is not in the networks configured for peer {calling!r}", "address"
        )
