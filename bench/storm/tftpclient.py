"""A TFTP read client as PXE firmware does it: tsize probe, blksize, windowsize (RFC 1350/2347-2349/7440)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

RRQ, DATA, ACK, ERROR, OACK = 1, 3, 4, 5, 6
_OP = struct.Struct("!HH")


class TftpFailed(Exception):
    """The transfer gave up; the message is the reason counted in the results."""


@dataclass(frozen=True)
class TftpProfile:
    """How one kind of firmware asks for its NBP."""

    blksize: int
    windowsize: int
    tsize_probe: bool
    timeout: float = 1.0
    retries: int = 6


# SeaBIOS/iPXE-ROM style BIOS PXE: one RRQ, lock-step.
BIOS = TftpProfile(blksize=1432, windowsize=1, tsize_probe=False)
# EDK2 UEFI PXE: a tsize-only probe it aborts with error 8, then blksize 1468 and windowsize 4
# (PcdPxeTftpWindowSize).
UEFI = TftpProfile(blksize=1468, windowsize=4, tsize_probe=True)


def rrq(filename: str, options: dict[str, int]) -> bytes:
    """A read request in octet mode with RFC 2347 options."""
    body = filename.encode() + b"\0octet\0"
    for k, v in options.items():
        body += k.encode() + b"\0" + str(v).encode() + b"\0"
    return struct.pack("!H", RRQ) + body


def parse_oack(data: bytes | memoryview) -> dict[str, str]:
    """RFC 2347 OACK options (names lowercased)."""
    parts = bytes(data[2:]).split(b"\0")
    out: dict[str, str] = {}
    for i in range(0, len(parts) - 1, 2):
        out[parts[i].decode("latin-1").lower()] = parts[i + 1].decode("latin-1")
    return out


def error_packet(code: int, msg: str) -> bytes:
    """An ERROR packet."""
    return _OP.pack(ERROR, code) + msg.encode() + b"\0"


class _Transfer:
    """One RRQ on its own socket; the reader callback drains every queued datagram."""

    def __init__(
        self, local_ip: str, server: tuple[str, int], timeout: float, retries: int
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.server = server
        self.timeout = timeout
        self.retries = retries
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((local_ip, 0))
        self.sock.setblocking(False)
        self.buf = bytearray(65536)
        self.view = memoryview(self.buf)
        self.connected = False
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.last_rx = time.monotonic()
        self.last_sent = b""
        self.timeouts = 0  # all of this transfer's timeouts, for the results
        self.silent = 0  # timeouts since the last packet arrived: firmware gives up on these
        self.handler: Callable[[memoryview, int], None] = lambda v, n: None
        self.loop.add_reader(self.sock.fileno(), self._on_readable)
        self._timer = self.loop.call_later(timeout, self._on_timer)

    def close(self) -> None:
        self._timer.cancel()
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def send(self, pkt: bytes) -> None:
        self.last_sent = pkt
        # A send error is a lost packet to the client as to the wire: the timer resends.
        with contextlib.suppress(OSError):
            if self.connected:
                self.sock.send(pkt)
            else:
                self.sock.sendto(pkt, self.server)

    def fail(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_exception(TftpFailed(reason))

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def _on_timer(self) -> None:
        if self.done.done():
            return
        # Datagrams may be queued while this process was busy with other nodes: they are
        # not a timeout (a real machine would have read them), so read before judging.
        self._on_readable()
        if self.done.done():
            return
        idle = time.monotonic() - self.last_rx
        if idle < self.timeout:
            self._timer = self.loop.call_later(self.timeout - idle, self._on_timer)
            return
        self.timeouts += 1
        self.silent += 1
        if self.silent > self.retries:
            self.fail(f"timeout after {self.retries} retransmissions")
            return
        self.last_rx = time.monotonic()
        self.send(self.last_sent)
        self._timer = self.loop.call_later(self.timeout, self._on_timer)

    def _on_readable(self) -> None:
        sock, buf, view, done = self.sock, self.buf, self.view, self.done
        got = False
        while not done.done():
            try:
                if self.connected:
                    n = sock.recv_into(buf)
                else:
                    n, addr = sock.recvfrom_into(buf)
                    if addr[0] != self.server[0]:
                        continue
                    # Lock onto the server's TID (RFC 1350 §4); the kernel then drops
                    # datagrams from any other port, so the hot path needs no address check.
                    sock.connect(addr)
                    self.connected = True
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionRefusedError:
                # ICMP port unreachable: the server's transfer socket is gone (e.g. restarted).
                self.fail("server transfer port closed")
                return
            except OSError as exc:
                self.fail(f"socket error: {exc.strerror}")
                return
            got = True
            if n < 4:
                continue
            if buf[1] == ERROR:
                msg = bytes(buf[4:n]).split(b"\0", 1)[0].decode("latin-1")
                self.fail(f"server error {(buf[2] << 8) | buf[3]}: {msg}")
                return
            self.handler(view, n)
        if got:
            self.last_rx = time.monotonic()
            self.silent = 0


async def probe_tsize(
    local_ip: str, server: tuple[str, int], filename: str, profile: TftpProfile
) -> int | None:
    """EDK2's size probe: RRQ with tsize, read the OACK, abort with error 8 (RFC 2347)."""
    t = _Transfer(local_ip, server, profile.timeout, profile.retries)
    size: list[int | None] = [None]

    def on_packet(v: memoryview, n: int) -> None:
        op = v[1]
        if op == OACK:
            opts = parse_oack(v[:n])
            if "tsize" in opts and opts["tsize"].isdigit():
                size[0] = int(opts["tsize"])
            t.send(error_packet(8, "tsize query"))
        elif op == DATA:
            # The server ignored options: abort the same way firmware does.
            t.send(error_packet(8, "tsize query"))
        t.finish()

    t.handler = on_packet
    t.send(rrq(filename, {"tsize": 0, "blksize": profile.blksize}))
    try:
        await t.done
    finally:
        t.close()
    return size[0]


class _ReadState:
    """Where one download stands."""

    __slots__ = ("acked", "blksize", "bytes", "expect", "window")

    def __init__(self) -> None:
        self.blksize = 512
        self.window = 1
        self.expect = 1
        self.acked = 0
        self.bytes = 0


async def fetch(
    local_ip: str,
    server: tuple[str, int],
    filename: str,
    profile: TftpProfile,
    on_retry: Callable[[str], None],
) -> int:
    """Download filename, discarding the data; returns the bytes received. Raises TftpFailed."""
    opts = {"blksize": profile.blksize}
    if profile.windowsize > 1:
        opts["windowsize"] = profile.windowsize
    if not profile.tsize_probe:
        opts["tsize"] = 0
    t = _Transfer(local_ip, server, profile.timeout, profile.retries)
    st = _ReadState()
    ack_pack = _OP.pack

    def ack(block: int) -> None:
        st.acked = block
        t.send(ack_pack(ACK, block & 0xFFFF))

    def on_packet(v: memoryview, n: int) -> None:
        op = v[1]
        block = (v[2] << 8) | v[3]
        if op == DATA:
            expect = st.expect
            if block == expect & 0xFFFF:
                st.bytes += n - 4
                st.expect = expect + 1
                if n - 4 < st.blksize:
                    ack(expect)
                    t.finish()
                elif expect - st.acked >= st.window:
                    ack(expect)
            elif (block - expect) & 0xFFFF < 0x8000:
                # RFC 7440 §4: a gap in the window; acknowledge what arrived in order so
                # the sender restarts from there (once per window, not per packet).
                if st.acked != expect - 1:
                    on_retry("tftp gap")
                    ack(expect - 1)
            elif st.window == 1 or (block - 1) % st.window == 0:
                # The sender restarted a window we already have: our ACK was lost, repeat it.
                t.send(ack_pack(ACK, (expect - 1) & 0xFFFF))
        elif op == OACK and st.expect == 1:
            o = parse_oack(v[:n])
            st.blksize = int(o.get("blksize", "512"))
            st.window = int(o.get("windowsize", "1"))
            ack(0)

    t.handler = on_packet
    t.send(rrq(filename, opts))
    try:
        await t.done
    finally:
        for _ in range(t.timeouts):
            on_retry("tftp timeout")
        t.close()
    return st.bytes
