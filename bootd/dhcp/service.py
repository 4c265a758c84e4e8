"""The DHCP service: sockets bound to `interface`, read in bursts, replies sent per RFC 2131 §4.1.

The adapter reads with recvmsg from a loop reader instead of a DatagramProtocol:
it needs IP_PKTINFO (to see which interface a packet came in on) and drains up
to a burst of datagrams per wake-up, which a 640-node storm rewards.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import socket
import struct
import time

from bootd.config import Config
from bootd.context import Context, StartupError
from bootd.dhcp.address import SubnetIndex
from bootd.dhcp.chain import build_stages, offer_memo
from bootd.dhcp.handler import Destination, DhcpHandler
from bootd.dhcp.ra import RouterSolicitationResponder
from bootd.dhcp.rawsend import RawSender
from bootd.logs import RateLimitedLog
from bootd.store.leases import LeaseTable
from bootd.udpgso import GsoSender

log = logging.getLogger("bootd.dhcp")

# Linux values the socket module does not export.
SO_RCVBUFFORCE = 33
IP_PKTINFO = 8
SIOCSARP = 0x8955
ATF_COM = 0x02
ARPHRD_ETHER = 1
# Datagrams handled before their ACKs go to the store. Small bursts start each group
# commit sooner: in the 640-client avalanche, 256 gave ~2 s and ~130 resends, 16 gave
# 0.4-1.0 s and ~15-30 (same run).
BURST = 16
# Bursts keep being read in one wake-up until the socket is empty or this much time
# has gone. With one burst per wake-up, a loop busy with 640 TFTP transfers (~25 ms an
# iteration) answered only ~600 DHCP packets a second, and iPXE clients, which
# retransmit after 1 s, fell into retry storms.
READ_BUDGET = 0.010
SO_TIMESTAMP = 29
# A request that waited this long in the receive queue is answered to no one: its
# client has retransmitted (PXE ROMs after 4 s, perfdhcp after 1 s). Skipping it
# after a stall lets the fresh requests through instead of a cascade of late replies.
STALE_AFTER = 2.0
_CMSG_SPACE = socket.CMSG_SPACE(12) + socket.CMSG_SPACE(16)


_IPPROTO_IP = socket.IPPROTO_IP
_SOL_SOCKET = socket.SOL_SOCKET
_INT = struct.Struct("i")
_TIMEVAL = struct.Struct("qq")


def _ancillary(anc: list[tuple[int, int, bytes]]) -> tuple[int | None, float | None]:
    """(arrival interface index, kernel receive time) from IP_PKTINFO and SO_TIMESTAMP."""
    ifindex: int | None = None
    arrived: float | None = None
    for level, kind, value in anc:
        if kind == IP_PKTINFO and level == _IPPROTO_IP and len(value) >= 4:
            ifindex = _INT.unpack_from(value)[0]
        elif kind == SO_TIMESTAMP and level == _SOL_SOCKET and len(value) >= 16:
            sec, usec = _TIMEVAL.unpack_from(value)
            arrived = sec + usec / 1e6
    return ifindex, arrived


class DhcpService:
    """Server or proxy DHCP on dhcp.port (and dhcp.proxy_port in proxy mode)."""

    name = "dhcp"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._started_config = ctx.config

        def reserved(ip: str) -> str | None:
            node = ctx.nodes.by_ip(ip)
            return node.mac if node is not None else None

        self.leases = LeaseTable(ctx.db, ctx.clock, reserved)
        self.leases.load()
        ctx.leases = self.leases
        ctx.extras["dhcp"] = self
        # One index of the config's subnets for the address stage, the kept offers'
        # checks and the free-address gauge.
        self.subnets = SubnetIndex(lambda: self.ctx.config)
        self.stages = build_stages(ctx, self.leases, self.subnets)
        offers = offer_memo(ctx, self.leases, self.subnets)
        self.handler = DhcpHandler(ctx, self.leases, self.stages, self._send, offers)
        self.handler.auto_flush = False
        self._socks: list[tuple[socket.socket, int]] = []
        self._ifindex: int | None = None
        self._raw: RawSender | None = None
        self._ra: RouterSolicitationResponder | None = None
        # Replies wait here until the end of the burst (or loop turn) that made them, then
        # leave grouped by destination: a storm's OFFERs to the broadcast address or to
        # one relay go out as a few UDP GSO sends instead of one sendto each.
        self._outq: list[tuple[bytes, Destination]] = []
        self._in_burst = False
        self._transmit_scheduled = False
        self._gso = GsoSender()
        self._log = RateLimitedLog(log)
        self._set_gauges()

    def _set_gauges(self) -> None:
        m = self.ctx.metrics
        m.dhcp_active_leases.set_function(lambda: float(self.leases.active_count()))

        def free() -> float:
            nets = self.subnets.all()
            return float(self.leases.free_count(n.pool for n in nets if n.pool))

        m.dhcp_free_addresses.set_function(free)

    def _open(self, port: int) -> socket.socket:
        cfg = self.ctx.config
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, cfg.dhcp.rcvbuf)
            except PermissionError:
                # Unprivileged: capped by net.core.rmem_max.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, cfg.dhcp.rcvbuf)
            if cfg.interface:
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_BINDTODEVICE, cfg.interface.encode() + b"\0"
                )
            sock.bind(("0.0.0.0", port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"dhcp: port {port} is in use — is dnsmasq or kea running? "
                    "stop it or set dhcp.port"
                ) from None
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise StartupError(
                    f"dhcp: no permission for port {port} or interface {cfg.interface}: "
                    "run as root or with CAP_NET_BIND_SERVICE and CAP_NET_RAW"
                ) from None
            if exc.errno == errno.ENODEV:
                raise StartupError(f"dhcp: interface {cfg.interface!r} does not exist") from None
            raise StartupError(f"dhcp: cannot listen on port {port}: {exc}") from None
        sock.setblocking(False)
        return sock

    async def start(self) -> None:
        """Bind the socket(s) and start reading."""
        cfg = self.ctx.config
        self._ifindex = socket.if_nametoindex(cfg.interface) if cfg.interface else None
        ports = [cfg.dhcp.port]
        if cfg.dhcp.mode == "proxy":
            ports.append(cfg.dhcp.proxy_port)
        loop = asyncio.get_running_loop()
        if cfg.interface and os.geteuid() == 0:
            try:
                self._raw = RawSender(cfg.interface, cfg.address)
            except OSError as exc:
                log.warning("dhcp: no raw socket (%s); unicast replies go through ARP", exc)
        try:
            for port in ports:
                sock = self._open(port)
                self._socks.append((sock, port))
                loop.add_reader(sock.fileno(), self._readable, sock, port)
            if cfg.dhcp.answer_router_solicitations:
                assert cfg.interface is not None  # checked by the config
                self._ra = RouterSolicitationResponder(cfg.interface, self.ctx.metrics)
                self._ra.start(loop)
        except BaseException:
            await self.stop(0)
            raise

    def _readable(self, sock: socket.socket, port: int) -> None:
        deadline = time.monotonic() + READ_BUDGET
        poll_store = self.ctx.db.poll
        self._in_burst = True
        try:
            while True:  # at least one burst per wake-up
                try:
                    more = self._read_burst(sock, port)
                finally:
                    self.handler.flush()  # the store starts on the ACKs' leases first
                    self.handler.send_acks()
                    self._transmit()
                if not more or time.monotonic() >= deadline:
                    return
                if poll_store():
                    # Leases just became durable: their ACKs go out (next loop turn,
                    # ahead of this socket) before more requests are read. Without
                    # this the store's reply waited out the budget, and the task it
                    # wakes another one. Avalanche, pinned, 9 rounds in rotation
                    # (medians): first ACK 89 -> 73 ms, last ACK 115 -> 105 ms.
                    return
        finally:
            self._in_burst = False

    def _read_burst(self, sock: socket.socket, port: int) -> bool:
        """Handle up to BURST datagrams; False once the socket is drained."""
        handle, want_ifindex = self.handler.handle, self._ifindex
        # A burst is read in well under a millisecond: one clock read serves it.
        stale_before = time.time() - STALE_AFTER
        for _ in range(BURST):
            try:
                data, anc, _flags, addr = sock.recvmsg(4096, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as exc:
                self._log.warning("dhcp:recv", "dhcp: receive failed: %s", exc)
                return False
            ifindex, arrived = _ancillary(anc)
            if want_ifindex is not None and ifindex is not None and ifindex != want_ifindex:
                self.handler.malformed("wrong-interface", "arrived on another interface", addr)
                continue
            if arrived is not None and arrived < stale_before:
                self.ctx.metrics.dhcp_messages.labels("any", "stale").inc()
                self._log.warning(
                    "dhcp:stale", "dhcp: skipped requests older than %.0fs (overload)", STALE_AFTER
                )
                continue
            try:
                handle(data, addr, port)
            except Exception:  # a bug must cost one packet, not the service
                self.ctx.metrics.malformed.labels("dhcp", "internal-error").inc()
                log.exception("dhcp: internal error handling a packet from %s", addr[0])
        return True

    def _send(self, wire: bytes, dest: Destination) -> None:
        self._outq.append((wire, dest))
        if not self._in_burst and not self._transmit_scheduled:
            # Paced or just-committed ACKs: whatever this loop turn sends leaves together.
            self._transmit_scheduled = True
            asyncio.get_running_loop().call_soon(self._transmit)

    def _transmit(self) -> None:
        """Send the queued replies: one destination and length at a time, as GSO batches."""
        self._transmit_scheduled = False
        queue, self._outq = self._outq, []
        if not queue or not self._socks:
            return
        groups: dict[tuple[int, str, int, int], list[bytes]] = {}
        for wire, dest in queue:
            if dest.arp_mac is not None:
                self._send_to_unconfigured(wire, dest)
                continue
            # Replies to different clients need no particular order between them.
            key = (dest.via, dest.ip, dest.port, len(wire))
            group = groups.get(key)
            if group is None:
                groups[key] = [wire]
            else:
                group.append(wire)
        for (via, ip, port, _), wires in groups.items():
            # via=-1: the proxy (last) socket; everything else leaves from the DHCP port.
            sock = self._socks[-1][0] if via == -1 else self._socks[0][0]
            sent = self._gso.send(sock, wires, (ip, port), equal=True)  # one length a group
            if sent < len(wires):
                self._send_failed(ip, len(wires) - sent, self._gso.last_error)

    def _send_to_unconfigured(self, wire: bytes, dest: Destination) -> None:
        """Unicast to a client that has no address yet: raw frame, else ARP entry, else broadcast."""
        sock = self._socks[0][0]
        ip = dest.ip
        assert dest.arp_mac is not None
        if self._raw is not None:
            try:
                self._raw.send(wire, ip, dest.port, dest.arp_mac, self._socks[0][1])
                return
            except OSError as exc:
                self._log.warning("dhcp:raw", "dhcp: raw unicast to %s failed: %s", ip, exc)
        if not self._set_arp(sock, ip, dest.arp_mac):
            ip = "255.255.255.255"
        try:
            sock.sendto(wire, (ip, dest.port))
        except OSError as exc:
            self._send_failed(ip, 1, exc)

    def _send_failed(self, ip: str, count: int, exc: OSError | None) -> None:
        self.ctx.metrics.dhcp_messages.labels("reply", "send-error").inc(count)
        self._log.warning("dhcp:send", "dhcp: send to %s failed: %s", ip, exc)

    def _set_arp(self, sock: socket.socket, ip: str, mac: bytes) -> bool:
        """Pin yiaddr → chaddr so a unicast reply reaches a client without an address (as dnsmasq does)."""
        iface = self.ctx.config.interface
        if not iface or os.geteuid() != 0 or len(mac) != 6:
            return False
        pa = struct.pack("=H2s4s8s", socket.AF_INET, b"", socket.inet_aton(ip), b"")
        ha = struct.pack("=H6s8s", ARPHRD_ETHER, mac, b"")
        req = (
            pa + ha + struct.pack("=i", ATF_COM) + bytes(16) + iface.encode()[:15].ljust(16, b"\0")
        )
        try:
            fcntl.ioctl(sock.fileno(), SIOCSARP, req)
        except OSError:
            return False
        return True

    def listening(self) -> list[str]:
        """Bound ports and interface."""
        where = self.ctx.config.interface or "all interfaces"
        out = [f"udp/{port} on {where} ({self.ctx.config.dhcp.mode})" for _, port in self._socks]
        if self._ra is not None:
            out.append(f"icmpv6 router solicitations on {self._ra.interface}")
        return out

    def reload(self, config: Config) -> None:
        """Stages read ctx.config per packet; sockets and the stage list stay as started."""
        old = self._started_config
        for key in ("mode", "port", "proxy_port", "rcvbuf", "answer_router_solicitations"):
            if getattr(config.dhcp, key) != getattr(old.dhcp, key):
                log.warning("reload: dhcp.%s changed; it takes effect only after a restart", key)
        if config.interface != old.interface:
            log.warning("reload: interface changed; it takes effect only after a restart")

    async def stop(self, grace: float) -> None:
        """Stop reading; let ACKs waiting on the disk go out within `grace`."""
        loop = asyncio.get_running_loop()
        for sock, _ in self._socks:
            loop.remove_reader(sock.fileno())
        await self.handler.drain(grace)
        self._transmit()  # what drain() released leaves before the sockets close
        for sock, _ in self._socks:
            sock.close()
        self._socks = []
        if self._raw is not None:
            self._raw.close()
            self._raw = None
        if self._ra is not None:
            self._ra.close()
            self._ra = None
