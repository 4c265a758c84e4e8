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
        self.peer: tuple[str, int] | None = None
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.last_rx = time.monotonic()
        self.last_sent = b""
        self.timeouts = 0
        self.handler: Callable[[memoryview, int], None] = lambda v, n: None
        self.loop.add_reader(self.sock.fileno(), self._on_readable)
        self._timer = self.loop.call_later(timeout, self._on_timer)

    def close(self) -> None:
        self._timer.cancel()
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def send(self, pkt: bytes, to: tuple[str, int] | None = None) -> None:
        self.last_sent = pkt
        # A send error is a lost packet to the client as to the wire: the timer resends.
        with contextlib.suppress(OSError):
            self.sock.sendto(pkt, to or self.peer or self.server)

    def fail(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_exception(TftpFailed(reason))

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def _on_timer(self) -> None:
        if self.done.done():
            return
        idle = time.monotonic() - self.last_rx
        if idle < self.timeout:
            self._timer = self.loop.call_later(self.timeout - idle, self._on_timer)
            return
        self.timeouts += 1
        if self.timeouts > self.retries:
            self.fail(f"timeout after {self.retries} retransmissions")
            return
        self.last_rx = time.monotonic()
        self.send(self.last_sent)
        self._timer = self.loop.call_later(self.timeout, self._on_timer)

    def _on_readable(self) -> None:
        while not self.done.done():
            try:
                n, addr = self.sock.recvfrom_into(self.buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.fail(f"socket error: {exc.strerror}")
                return
            if n < 4:
                continue
            if self.peer is None:
                if addr[0] != self.server[0]:
                    continue
                self.peer = addr
            elif addr != self.peer:
                # RFC 1350 §4: a packet from another TID gets an error and changes nothing.
                self.send_raw(error_packet(5, "unknown transfer ID"), addr)
                continue
            self.last_rx = time.monotonic()
            op, arg = _OP.unpack_from(self.buf)
            if op == ERROR:
                msg = bytes(self.buf[4:n]).split(b"\0", 1)[0].decode("latin-1")
                self.fail(f"server error {arg}: {msg}")
                return
            self.handler(self.view, n)

    def send_raw(self, pkt: bytes, to: tuple[str, int]) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendto(pkt, to)


async def probe_tsize(
    local_ip: str, server: tuple[str, int], filename: str, profile: TftpProfile
) -> int | None:
    """EDK2's size probe: RRQ with tsize, read the OACK, abort with error 8 (RFC 2347)."""
    t = _Transfer(local_ip, server, profile.timeout, profile.retries)
    size: list[int | None] = [None]

    def on_packet(v: memoryview, n: int) -> None:
        op = _OP.unpack_from(v)[0]
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
    st = {"blksize": 512, "window": 1, "expect": 1, "acked": 0, "bytes": 0}

    def ack(block: int) -> None:
        st["acked"] = block
        t.send(_OP.pack(ACK, block & 0xFFFF))

    def on_packet(v: memoryview, n: int) -> None:
        op, block = _OP.unpack_from(v)
        if op == OACK:
            if st["expect"] != 1:
                return
            o = parse_oack(v[:n])
            st["blksize"] = int(o.get("blksize", "512"))
            st["window"] = int(o.get("windowsize", "1"))
            ack(0)
            return
        if op != DATA:
            return
        expect = st["expect"]
        if block == expect & 0xFFFF:
            st["bytes"] += n - 4
            st["expect"] = expect + 1
            if n - 4 < st["blksize"]:
                ack(expect)
                t.finish()
            elif expect - st["acked"] >= st["window"]:
                ack(expect)
        elif (block - expect) & 0xFFFF < 0x8000:
            # RFC 7440 §4: a gap in the window; acknowledge what arrived in order so the
            # sender restarts from there (once per window, not per packet).
            if st["acked"] != expect - 1:
                on_retry("tftp gap")
                ack(expect - 1)
        elif ((block - 1) % st["window"]) == 0 or st["window"] == 1:
            # The sender restarted a window we already have: our ACK was lost, repeat it.
            t.send(_OP.pack(ACK, (expect - 1) & 0xFFFF))

    t.handler = on_packet
    t.send(rrq(filename, opts))
    try:
        await t.done
    finally:
        if t.timeouts:
            on_retry(f"tftp timeout x{t.timeouts}")
        t.close()
    return st["bytes"]
