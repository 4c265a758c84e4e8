"""Many DHCP clients on one UDP socket (port 68, bound to the client veth), demultiplexed by xid."""

from __future__ import annotations

import asyncio
import errno
import random
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.storm import dhcpwire
from bench.storm.dhcpwire import ClientKind, DhcpDecodeError, Reply

SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)

# Retransmission timeouts per client role, as the real software does it:
# EDK2 PXE waits 4, 8, 16, 32 s (mPxeDhcpTimeout); iPXE backs off from 1 s towards 10 s;
# udhcpc in an initramfs sends every 3 s (its -T default).
TIMEOUTS: dict[str, tuple[float, ...]] = {
    "pxe": (4.0, 8.0, 16.0, 32.0),
    "ipxe": (1.0, 2.0, 4.0, 8.0, 10.0, 10.0),
    "linux": (3.0, 3.0, 3.0, 3.0, 3.0, 3.0),
}
# Each REQUEST is sent this many times before the client falls back to DISCOVER.
REQUEST_TRIES = 3


@dataclass
class Lease:
    """What one DORA got: the address and where to boot from."""

    ip: str
    prefixlen: int
    server_id: str | None
    boot_file: str
    tftp_server: str
    reply: Reply


class DhcpFailed(Exception):
    """DORA gave up; the message is the reason counted in the results."""


def _prefixlen(reply: Reply) -> int:
    mask = reply.options.get(1)
    if not mask or len(mask) != 4:
        return 24
    return bin(int.from_bytes(mask, "big")).count("1")


class DhcpPort:
    """The client side of DHCP for every virtual node: one socket, replies routed by xid."""

    def __init__(self, ifname: str, server_port: int = 67, client_port: int = 68) -> None:
        self.ifname = ifname
        self.server_port = server_port
        self.client_port = client_port
        # Exchanges in flight: at most one per virtual node, so bounded by the node count.
        self._waiting: dict[int, tuple[bytes, frozenset[int], asyncio.Future[Reply]]] = {}
        self._buf = bytearray(2048)
        self._sock: socket.socket | None = None
        self.stray = 0
        self.malformed = 0
        self.send_errors = 0

    def open(self) -> None:
        """Bind 0.0.0.0:68 on the interface and start reading."""
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, self.ifname.encode())
        # A storm's worth of OFFERs/ACKs arrives in one burst.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        s.bind(("0.0.0.0", self.client_port))
        s.setblocking(False)
        self._sock = s
        asyncio.get_running_loop().add_reader(s.fileno(), self._on_readable)

    def close(self) -> None:
        """Stop reading and close the socket."""
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _on_readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                n = self._sock.recv_into(self._buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            try:
                reply = dhcpwire.parse(bytes(self._buf[:n]))
            except DhcpDecodeError:
                self.malformed += 1
                continue
            w = self._waiting.get(reply.xid)
            if w is None or w[0] != reply.chaddr or reply.msg_type not in w[1] or w[2].done():
                self.stray += 1
                continue
            w[2].set_result(reply)

    def _expire(self, fut: asyncio.Future[Reply]) -> None:
        # A reply queued while this process was busy is not a lost one: read it first.
        self._on_readable()
        if not fut.done():
            fut.cancel()

    def _send(self, pkt: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.sendto(pkt, ("255.255.255.255", self.server_port))
        except OSError as exc:
            # A full send queue is a lost packet to the client: the retransmission covers it.
            if exc.errno not in (errno.EAGAIN, errno.ENOBUFS):
                raise
            self.send_errors += 1

    async def _await(
        self, xid: int, mac: bytes, types: frozenset[int], timeout: float
    ) -> Reply | None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Reply] = loop.create_future()
        self._waiting[xid] = (mac, types, fut)
        timer = loop.call_later(timeout, self._expire, fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.cancelled():
                return None
            raise
        finally:
            timer.cancel()
            self._waiting.pop(xid, None)

    async def dora(
        self,
        mac: bytes,
        kind: ClientKind,
        on_retry: Callable[[str], None],
        timeouts: Sequence[float] | None = None,
    ) -> Lease:
        """DISCOVER → OFFER → REQUEST → ACK with the role's backoff; raises DhcpFailed."""
        timeouts = timeouts or TIMEOUTS[kind.role]
        xid = random.getrandbits(32)
        start = time.monotonic()
        step = 0
        while step < len(timeouts):
            secs = int(time.monotonic() - start)
            self._send(dhcpwire.build(dhcpwire.DISCOVER, xid, mac, kind, secs))
            # RFC 2131 §4.1: randomise the retransmission delay by ±1 s.
            wait = max(0.5, timeouts[step] + random.uniform(-0.5, 0.5))
            offer = await self._await(xid, mac, frozenset({dhcpwire.OFFER}), wait)
            step += 1
            if offer is None:
                if step < len(timeouts):
                    on_retry("no offer")
                continue
            for attempt in range(REQUEST_TRIES):
                req = dhcpwire.build(
                    dhcpwire.REQUEST, xid, mac, kind, int(time.monotonic() - start),
                    requested=offer.yiaddr, server_id=offer.server_id,
                )  # fmt: skip
                self._send(req)
                ack = await self._await(
                    xid, mac, frozenset({dhcpwire.ACK, dhcpwire.NAK}), timeouts[0]
                )
                if ack is None:
                    if attempt + 1 < REQUEST_TRIES:
                        on_retry("no ack")
                    continue
                if ack.msg_type == dhcpwire.NAK:
                    on_retry("nak")
                    break
                return Lease(
                    ip=ack.yiaddr,
                    prefixlen=_prefixlen(ack),
                    server_id=ack.server_id,
                    boot_file=ack.boot_file,
                    tftp_server=ack.tftp_server,
                    reply=ack,
                )
            else:
                on_retry("no ack, back to discover")
        raise DhcpFailed(f"no lease after {len(timeouts)} discovers")
