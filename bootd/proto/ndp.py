"""IPv6 Neighbor Discovery (RFC 4861), the two messages bootd needs; one decode error type.

A Router Solicitation is read (§4.1, validated as §6.1.1 asks of a router), and
the answer is a Router Advertisement that offers nothing (§4.2): router lifetime
0 (not a default router, §6.2.5), no prefixes (no address to configure), neither
the M nor the O flag (no DHCPv6), every timer unspecified. A host that gets it
learns only that IPv6 has nothing for it on this link. That ends iPXE's IPv6
configurator at once, where it would otherwise wait ~14 s for a router before its
`Configuring (net0 ...)` step finishes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from bootd.proto.errors import DecodeError

ROUTER_SOLICITATION = 133
ROUTER_ADVERTISEMENT = 134
# §4.6.1 source link-layer address option.
OPT_SOURCE_LLADDR = 1
# §6.1.1: ND messages from anywhere but the link itself arrive with less.
HOP_LIMIT = 255
# Options come in units of 8 octets (§4.6).
_UNIT = 8
# type, code, checksum, current hop limit, flags (M, O), router lifetime,
# reachable time, retransmission timer (§4.2).
_RA = struct.Struct("!BBHBBHII")


class NdpDecodeError(DecodeError):
    """A message is not a well-formed Router Solicitation; `reason` is a short metric label."""


@dataclass(frozen=True, slots=True)
class RouterSolicitation:
    """What a Router Solicitation told us: the sender's link-layer address, if it gave one."""

    source_lladdr: bytes | None = None


def decode_router_solicitation(msg: bytes) -> RouterSolicitation:
    """The ICMPv6 message (no IPv6 header); raises NdpDecodeError."""
    if len(msg) < 8:
        raise NdpDecodeError("truncated", f"{len(msg)} bytes")
    if msg[0] != ROUTER_SOLICITATION:
        raise NdpDecodeError("not-rs", f"ICMPv6 type {msg[0]}")
    if msg[1] != 0:
        raise NdpDecodeError("bad-code", f"code {msg[1]}")
    lladdr = None
    i = 8
    while i < len(msg):
        if len(msg) - i < 2:
            raise NdpDecodeError("bad-option", "option header cut short")
        kind, units = msg[i], msg[i + 1]
        if units == 0:  # §4.6: length 0 is invalid, and would loop forever
            raise NdpDecodeError("bad-option", f"option {kind} has length 0")
        end = i + units * _UNIT
        if end > len(msg):
            raise NdpDecodeError("bad-option", f"option {kind} runs past the message")
        if kind == OPT_SOURCE_LLADDR:
            lladdr = bytes(msg[i + 2 : end])
        i = end
    return RouterSolicitation(lladdr)


def router_advertisement(source_lladdr: bytes | None = None) -> bytes:
    """An RA that offers nothing; the kernel fills in the checksum (RFC 3542 §3.1)."""
    ra = _RA.pack(ROUTER_ADVERTISEMENT, 0, 0, 0, 0, 0, 0, 0)
    if source_lladdr:
        units = -(-(2 + len(source_lladdr)) // _UNIT)
        option = bytes((OPT_SOURCE_LLADDR, units)) + source_lladdr
        ra += option.ljust(units * _UNIT, b"\0")
    return ra
