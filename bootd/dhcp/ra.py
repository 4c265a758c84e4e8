"""Answer IPv6 Router Solicitations on `interface` with an RA that offers nothing (opt-in).

iPXE's `autoboot` configures a NIC with every configurator it has and waits
for all of them: DHCPv4 answers in milliseconds, but the IPv6 one sends Router
Solicitations until ~14 s have passed when no router answers, as on an
IPv4-only management network. Every node then spends those seconds in
`Configuring (net0 ...)` before it asks for its boot script. A Router
Advertisement with router lifetime 0, no prefixes and no M/O flags ends that
wait and configures nothing (see `bootd.proto.ndp`).

Only solicitations from a link-local address are answered, by unicast to that
address, so hosts that did not ask never see our RA; one sender gets at most one
answer a second, and all of them together 1,000 a second. Off by default (`dhcp.answer_router_solicitations`): a network
with a real IPv6 router does not need it, and RA guard on a switch may drop it.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import struct
import time
from pathlib import Path

from bootd.context import StartupError
from bootd.logs import RateLimitedLog
from bootd.metrics import Metrics
from bootd.proto.ndp import (
    HOP_LIMIT,
    ROUTER_SOLICITATION,
    NdpDecodeError,
    decode_router_solicitation,
    router_advertisement,
)
from bootd.ratelimit import TokenBucket

log = logging.getLogger("bootd.dhcp")

# Linux values the socket module does not export (RFC 3542).
ICMP6_FILTER = 1
IPV6_HOPLIMIT = 52
# One answer per sender per this many seconds; iPXE's solicitations come faster
# than that only while our answer is on its way.
REPEAT_AFTER = 1.0
# Senders remembered for REPEAT_AFTER; beyond this the oldest are forgotten.
MAX_SENDERS = 4096
# Answers a second in all, with a burst for a whole rack powered on at once: many
# senders (or forged source addresses) cannot make us send more than this.
ANSWER_RATE = 1000.0
ANSWER_BURST = 1024.0
_READ_BATCH = 64
_CMSG_SPACE = socket.CMSG_SPACE(4)


def _only_router_solicitations() -> bytes:
    # struct icmp6_filter: 256 bits, a set bit blocks that ICMPv6 type.
    words = [0xFFFFFFFF] * 8
    words[ROUTER_SOLICITATION >> 5] &= ~(1 << (ROUTER_SOLICITATION & 31))
    return struct.pack("=8I", *words)


def _interface_mac(interface: str) -> bytes | None:
    try:
        text = Path(f"/sys/class/net/{interface}/address").read_text().strip()
        mac = bytes.fromhex(text.replace(":", ""))
    except (OSError, ValueError):
        return None
    return mac if len(mac) == 6 and any(mac) else None


def ipv6_disabled(interface: str, proc: Path = Path("/proc/sys/net/ipv6/conf")) -> bool:
    """The interface has IPv6 turned off (its sysctl says so, or IPv6 is not there at all)."""
    try:
        return (proc / interface / "disable_ipv6").read_text().strip() == "1"
    except OSError:
        return not proc.exists()


class RouterSolicitationResponder:
    """A raw ICMPv6 socket on one interface that answers each solicitation with `router_advertisement`."""

    def __init__(self, interface: str, metrics: Metrics) -> None:
        self.interface = interface
        self._metrics = metrics
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ifindex = 0
        self._answered: dict[str, float] = {}
        self._clock = time.monotonic
        self._bucket = TokenBucket(ANSWER_RATE, ANSWER_BURST, self._clock())
        self._ra = b""
        self._log = RateLimitedLog(log)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Open the socket, join all-routers (ff02::2) on the interface, start reading."""
        iface = self.interface
        try:
            self._ifindex = socket.if_nametoindex(iface)
        except OSError:
            raise StartupError(f"dhcp: interface {iface!r} does not exist") from None
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise StartupError(
                    "dhcp.answer_router_solicitations needs a raw ICMPv6 socket: "
                    "run as root or with CAP_NET_RAW"
                ) from None
            if exc.errno == errno.EAFNOSUPPORT:
                raise StartupError(
                    "dhcp.answer_router_solicitations needs IPv6 sockets, and this process "
                    "may not open them (no IPv6 in the kernel, or a sandbox such as "
                    "systemd's RestrictAddressFamilies without AF_INET6)"
                ) from None
            raise StartupError(f"dhcp: no ICMPv6 socket for router solicitations: {exc}") from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode() + b"\0")
            sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, _only_router_solicitations())
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
            # §6.1.2: an RA with any other hop limit is dropped by its receiver.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, HOP_LIMIT)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, HOP_LIMIT)
            group = socket.inet_pton(socket.AF_INET6, "ff02::2") + struct.pack("@I", self._ifindex)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group)
        except OSError as exc:
            sock.close()
            raise StartupError(
                f"dhcp: cannot listen for IPv6 router solicitations on {iface} "
                f"(is IPv6 disabled there?): {exc}"
            ) from None
        sock.setblocking(False)
        self._sock = sock
        self._loop = loop
        self._ra = router_advertisement(_interface_mac(iface))
        loop.add_reader(sock.fileno(), self._readable)
        log.info(
            "dhcp: answering IPv6 router solicitations on %s (router lifetime 0, no prefixes)",
            iface,
        )
        if ipv6_disabled(iface):
            log.warning(
                "dhcp: IPv6 is disabled on %s (net.ipv6.conf.%s.disable_ipv6): no router "
                "solicitation will reach bootd, and iPXE will wait for a router",
                iface,
                iface,
            )

    def _count(self, result: str) -> None:
        self._metrics.ipv6_router_solicitations.labels(result=result).inc()

    def _readable(self) -> None:
        sock = self._sock
        assert sock is not None
        for _ in range(_READ_BATCH):
            try:
                data, ancdata, _flags, addr = sock.recvmsg(1500, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._log.warning("recv", "dhcp: reading router solicitations failed: %s", exc)
                return
            self._solicitation(data, ancdata, addr[0])

    def _solicitation(self, data: bytes, ancdata: list[tuple[int, int, bytes]], src: str) -> None:
        hops = None
        for level, kind, value in ancdata:
            if level == socket.IPPROTO_IPV6 and kind == IPV6_HOPLIMIT and len(value) >= 4:
                hops = struct.unpack("@i", value[:4])[0]
        if hops != HOP_LIMIT:
            self._count("bad-hop-limit")  # RFC 4861 §6.1.1: not from this link
            return
        try:
            decode_router_solicitation(data)
        except NdpDecodeError as exc:
            self._count("malformed")
            self._log.warning(
                f"bad-{exc.reason}", "dhcp: malformed router solicitation from %s: %s", src, exc
            )
            return
        host = src.split("%", 1)[0]
        try:
            link_local = ipaddress.IPv6Address(host).is_link_local
        except ValueError:
            link_local = False
        if not link_local:
            # The unspecified address (no address yet) could only be answered to
            # all nodes; we answer only whoever asked.
            self._count("not-link-local")
            return
        now = self._clock()
        last = self._answered.get(host)
        if last is not None and now - last < REPEAT_AFTER:
            self._count("repeated")
            return
        if not self._bucket.take(now):
            self._count("rate-limited")
            return
        if len(self._answered) >= MAX_SENDERS and host not in self._answered:
            self._answered.pop(next(iter(self._answered)))
        self._answered.pop(host, None)
        self._answered[host] = now
        assert self._sock is not None
        try:
            self._sock.sendto(self._ra, (host, 0, 0, self._ifindex))
        except OSError as exc:
            self._count("send-error")
            self._log.warning(
                "send", "dhcp: cannot answer the router solicitation from %s: %s", host, exc
            )
            return
        self._count("answered")

    def close(self) -> None:
        """Stop reading and close the socket."""
        if self._sock is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
