"""Unicast to a client that has no address yet: an IPv4/UDP datagram sent straight to its MAC.

RFC 2131 §4.1 wants the reply unicast to yiaddr and chaddr when the broadcast
bit is clear. Going through the kernel would need an ARP entry per client
(dnsmasq pins one with SIOCSARP), and a storm of thousands of clients overflows
the neighbour table. Like Kea, we hand the frame to an AF_PACKET socket instead,
addressed by MAC; the kernel adds only the Ethernet header.
"""

from __future__ import annotations

import socket
import struct

ETH_P_IP = 0x0800
_IP = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum.

    The one's complement sum of 16-bit words is congruent to the data read as one
    big-endian integer modulo 0xFFFF (2**16 is 1 modulo 0xFFFF), so the sum is one
    int.from_bytes and one remainder, both in C: about a fifth of summing an array.
    """
    if len(data) % 2:
        data += b"\0"
    value = int.from_bytes(data, "big")
    total = value % 0xFFFF
    if total == 0 and value:  # one's complement has two zeros; a non-zero sum folds to 0xFFFF
        total = 0xFFFF
    return ~total & 0xFFFF


_PSEUDO = struct.Struct("!4s4sBBHHHHH")


def ipv4_udp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    """IPv4 header (DF, TTL 64) + UDP header with checksum + payload."""
    ulen = 8 + len(payload)
    # Pseudo-header and UDP header with a zero checksum, then the payload (RFC 768).
    usum = checksum(
        _PSEUDO.pack(src, dst, 0, socket.IPPROTO_UDP, ulen, sport, dport, ulen, 0) + payload
    )
    head = _IP.pack(0x45, 0, 20 + ulen, 0, 0x4000, 64, socket.IPPROTO_UDP, 0, src, dst)
    head = _IP.pack(0x45, 0, 20 + ulen, 0, 0x4000, 64, socket.IPPROTO_UDP, checksum(head), src, dst)
    # A computed zero goes out as 0xFFFF: zero on the wire means "no checksum".
    return head + _UDP.pack(sport, dport, ulen, usum or 0xFFFF) + payload


class RawSender:
    """An AF_PACKET socket on one interface (needs CAP_NET_RAW)."""

    def __init__(self, interface: str, source_ip: str) -> None:
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
        self._sock.bind((interface, ETH_P_IP))
        self._sock.setblocking(False)
        self._iface = interface
        self._src = socket.inet_aton(source_ip)

    def send(self, payload: bytes, ip: str, port: int, mac: bytes, sport: int) -> None:
        """One UDP datagram to ip:port at Ethernet address mac; raises OSError."""
        frame = ipv4_udp(self._src, socket.inet_aton(ip), sport, port, payload)
        self._sock.sendto(frame, (self._iface, ETH_P_IP, 0, 0, mac))

    def close(self) -> None:
        """Release the socket."""
        self._sock.close()
