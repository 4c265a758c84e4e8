"""A small asyncio TFTP read client (RFC 1350/2347/2348/7440) for tests and benches at scale."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import resource
import socket
import struct
import time
from dataclasses import dataclass, field


@dataclass
class FetchResult:
    """What one fetch got."""

    filename: str
    ok: bool
    size: int = 0
    sha256: str = ""
    seconds: float = 0.0
    error: str = ""
    options: dict[str, str] = field(default_factory=dict)
    resent: int = 0
    data: bytes = b""


def raise_fd_limit(n: int) -> None:
    """Allow n open sockets in this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


def rrq(filename: str, mode: str, options: dict[str, str]) -> bytes:
    """RRQ packet."""
    opts = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in options.items())
    return b"\0\1" + filename.encode() + b"\0" + mode.encode() + b"\0" + opts


class _Fetch:
    def __init__(self, server: tuple[str, int], filename: str, options: dict[str, str]) -> None:
        self.server = server
        self.filename = filename
        self.options = options
        self.peer: tuple[str, int] | None = None
        self.blksize = 512
        self.windowsize = 1
        self.expected = 1
        self.in_window = 0
        self.nak_at = 0
        self.hasher = hashlib.sha256()
        self.size = 0
        self.keep: bytearray | None = None
        self.last_sent = b""
        self.last_rx = time.monotonic()
        self.silent = 0  # timeouts since the last progress: what `retries` bounds
        self.resent = 0
        self.granted: dict[str, str] = {}
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)

    def send(self, pkt: bytes) -> None:
        self.last_sent = pkt
        with contextlib.suppress(OSError):
            self.sock.sendto(pkt, self.peer or self.server)

    def ack(self, block: int) -> None:
        self.send(struct.pack("!HH", 4, block & 0xFFFF))

    def on_readable(self) -> None:
        for _ in range(128):
            try:
                pkt, addr = self.sock.recvfrom(70000)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.finish(f"socket error: {exc}")
                return
            if self.peer is None:
                self.peer = addr
            elif addr != self.peer:
                self.sock.sendto(b"\0\5\0\5unknown transfer ID\0", addr)
                continue
            self.handle(pkt)
            if self.done.done():
                return

    def progress(self) -> None:
        self.last_rx = time.monotonic()
        self.silent = 0

    def handle(self, pkt: bytes) -> None:
        op = pkt[1] if len(pkt) >= 2 else 0
        if op == 6 and self.expected == 1:
            fields = pkt[2:].split(b"\0")[:-1]
            self.granted = {
                fields[i].decode().lower(): fields[i + 1].decode()
                for i in range(0, len(fields) - 1, 2)
            }
            self.progress()
            self.blksize = int(self.granted.get("blksize", 512))
            self.windowsize = int(self.granted.get("windowsize", 1))
            self.ack(0)
        elif op == 3 and len(pkt) >= 4:
            block = pkt[2] << 8 | pkt[3]
            payload = pkt[4:]
            if block != self.expected & 0xFFFF:
                # RFC 7440 §4: out of order; ACK the last in-order block, once per gap.
                if self.nak_at != self.expected:
                    self.nak_at = self.expected
                    self.in_window = 0
                    self.ack(self.expected - 1)
                return
            # The idle timer measures progress: old duplicates must not keep it quiet.
            self.progress()
            self.hasher.update(payload)
            if self.keep is not None:
                self.keep += payload
            self.size += len(payload)
            self.expected += 1
            self.in_window += 1
            if len(payload) < self.blksize:
                self.ack(block)
                self.finish("")
            elif self.in_window >= self.windowsize:
                self.in_window = 0
                self.ack(block)
        elif op == 5:
            self.progress()
            code = pkt[2] << 8 | pkt[3] if len(pkt) >= 4 else -1
            message = pkt[4:].split(b"\0")[0].decode(errors="replace")
            self.finish(f"error {code}: {message}")

    def finish(self, error: str) -> None:
        if not self.done.done():
            self.done.set_result(error)


async def fetch(
    server: tuple[str, int],
    filename: str,
    *,
    blksize: int | None = None,
    windowsize: int | None = None,
    tsize: bool = False,
    mode: str = "octet",
    timeout: float = 1.0,
    retries: int = 10,
    keep: bool = False,
    extra: dict[str, str] | None = None,
) -> FetchResult:
    """Download one file; never raises for protocol trouble (see FetchResult.error)."""
    options: dict[str, str] = {}
    if tsize:
        options["tsize"] = "0"
    if blksize:
        options["blksize"] = str(blksize)
    if windowsize:
        options["windowsize"] = str(windowsize)
    options.update(extra or {})
    loop = asyncio.get_running_loop()
    f = _Fetch(server, filename, options)
    if keep:
        f.keep = bytearray()
    t0 = time.monotonic()
    loop.add_reader(f.sock.fileno(), f.on_readable)
    try:
        f.send(rrq(filename, mode, options))
        while not f.done.done():
            with_timeout = asyncio.wait_for(asyncio.shield(f.done), timeout / 4)
            try:
                await with_timeout
            except TimeoutError:
                if time.monotonic() - f.last_rx >= timeout:
                    # Like tftp-hpa and firmware: give up after `retries` timeouts in a
                    # row. Counting them over the whole transfer failed a 640-client storm
                    # once (31 s, 639/640), where a server backing off after several
                    # losses is silent for up to 8 s at a time.
                    f.silent += 1
                    if f.silent > retries:
                        f.finish("timeout")
                        break
                    f.resent += 1
                    f.last_rx = time.monotonic()
                    f.in_window = 0
                    f.send(f.last_sent)
        error = f.done.result()
    finally:
        loop.remove_reader(f.sock.fileno())
        f.sock.close()
    return FetchResult(
        filename,
        ok=not error,
        size=f.size,
        sha256=f.hasher.hexdigest(),
        seconds=time.monotonic() - t0,
        error=error,
        options=f.granted,
        resent=f.resent,
        data=bytes(f.keep or b""),
    )


async def storm(
    server: tuple[str, int], filename: str, n: int, **kw: object
) -> tuple[float, list[FetchResult]]:
    """n concurrent fetches of one file; returns (wall seconds, results)."""
    raise_fd_limit(n + 256)
    t0 = time.monotonic()
    results = await asyncio.gather(*(fetch(server, filename, **kw) for _ in range(n)))  # type: ignore[arg-type]
    return time.monotonic() - t0, list(results)
