"""A lean HTTP/1.1 client from a given source address; big bodies are discarded in the kernel."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

# TCP recv with MSG_TRUNC drops the bytes without copying them to user space (tcp(7)), so
# draining a 32 MB rootfs costs the client a few syscalls, not a 32 MB memcpy.
MSG_TRUNC = getattr(socket, "MSG_TRUNC", 0x20)
CHUNK = 1 << 20
# Wake the drain only when this much is queued (SO_RCVLOWAT): fewer wakeups per megabyte
# (1 MiB rather than 256 KiB: client CPU in the storm 15.1 -> 12.6 s for bootd, 19.4 -> 16.5 s
# for the anchor).
LOWAT = 1 << 20
# Bodies we keep (scripts, cloud-init) are small; anything past this is a client error.
MAX_KEPT_BODY = 4 << 20
MAX_HEADER = 64 << 10


class HttpFailed(Exception):
    """A request failed; the message is the reason counted in the results."""


@dataclass
class Response:
    """Status, lower-cased headers, the body when kept, and how many body bytes arrived."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    nbytes: int = 0


class _BodyReader:
    """Reads a body of known length off a non-blocking socket in the reader callback."""

    def __init__(self, sock: socket.socket, remaining: int, keep: bool, buf: bytearray) -> None:
        self.loop = asyncio.get_running_loop()
        self.sock = sock
        self.remaining = remaining
        self.keep = keep
        self.buf = buf
        self.parts: list[bytes] = []
        self.nbytes = 0
        self.lowat = 1
        self.last_rx = time.monotonic()
        self.done: asyncio.Future[None] = self.loop.create_future()

    def set_lowat(self) -> None:
        """Wake at LOWAT bytes, or at the last bytes of the body."""
        want = max(1, min(LOWAT, self.remaining))
        if want != self.lowat:
            self.lowat = want
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)

    def on_readable(self) -> None:
        flags = 0 if self.keep else MSG_TRUNC
        if not self.keep:
            self.set_lowat()
        while self.remaining and not self.done.done():
            try:
                n = self.sock.recv_into(self.buf, min(len(self.buf), self.remaining), flags)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.done.set_exception(HttpFailed(f"recv: {exc.strerror}"))
                return
            if n == 0:
                self.done.set_exception(HttpFailed(f"connection closed, {self.remaining} short"))
                return
            if self.keep:
                self.parts.append(bytes(self.buf[:n]))
            self.remaining -= n
            self.nbytes += n
            self.last_rx = time.monotonic()
            if not self.keep and self.remaining < self.lowat:
                self.set_lowat()
        if not self.done.done():
            self.done.set_result(None)


class HttpClient:
    """Issues one request per connection from `local_ip`, as iPXE, curl and cloud-init do."""

    def __init__(self, user_agent: str, idle_timeout: float = 30.0) -> None:
        self.user_agent = user_agent
        self.idle_timeout = idle_timeout
        self.buf = bytearray(CHUNK)

    async def request(
        self,
        local_ip: str,
        url: str,
        method: str = "GET",
        body: bytes = b"",
        content_type: str = "",
        keep: bool = True,
    ) -> Response:
        """Send one request; keep=False discards the body (only its length is counted)."""
        u = urlsplit(url)
        if u.scheme != "http" or not u.hostname:
            raise HttpFailed(f"unsupported URL {url!r}")
        port = u.port or 80
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.bind((local_ip, 0))
            head = f"{method} {path} HTTP/1.1\r\nHost: {u.hostname}:{port}\r\n"
            head += f"User-Agent: {self.user_agent}\r\nConnection: close\r\n"
            if body or method in ("POST", "PUT"):
                head += f"Content-Length: {len(body)}\r\n"
                if content_type:
                    head += f"Content-Type: {content_type}\r\n"
            try:
                await asyncio.wait_for(loop.sock_connect(sock, (u.hostname, port)), 10.0)
                await loop.sock_sendall(sock, head.encode() + b"\r\n" + body)
                return await self._read_response(sock, method, keep)
            except TimeoutError:
                raise HttpFailed("connect timeout") from None
            except OSError as exc:
                raise HttpFailed(f"{type(exc).__name__}: {exc.strerror or exc}") from None
        finally:
            sock.close()

    async def _wait(self, sock: socket.socket, reader: _BodyReader) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), reader.on_readable)
        try:
            reader.on_readable()
            while not reader.done.done():
                await asyncio.wait([reader.done], timeout=self.idle_timeout)
                if not reader.done.done() and time.monotonic() - reader.last_rx > self.idle_timeout:
                    raise HttpFailed(f"stalled {self.idle_timeout:.0f}s, {reader.remaining} short")
            reader.done.result()
        finally:
            loop.remove_reader(sock.fileno())

    async def _read_response(self, sock: socket.socket, method: str, keep: bool) -> Response:
        loop = asyncio.get_running_loop()
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), self.idle_timeout)
            if not chunk:
                raise HttpFailed("connection closed before the response header")
            data += chunk
            if len(data) > MAX_HEADER:
                raise HttpFailed("response header too large")
        head, rest = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            raise HttpFailed(f"bad status line {lines[0][:60]!r}") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        resp = Response(status=status, headers=headers)
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return resp
        if "chunked" in headers.get("transfer-encoding", "").lower():
            resp.body = await self._read_chunked(sock, rest)
            resp.nbytes = len(resp.body)
            return resp
        clen = headers.get("content-length")
        if clen is None:
            reader = _BodyReader(sock, MAX_KEPT_BODY - len(rest), True, self.buf)
            try:
                await self._wait(sock, reader)
            except HttpFailed as exc:
                if "connection closed" not in str(exc):
                    raise
            resp.body = rest + b"".join(reader.parts)
            resp.nbytes = len(resp.body)
            return resp
        total = int(clen)
        keep = keep or total <= 65536
        if keep and total > MAX_KEPT_BODY:
            raise HttpFailed(f"body of {total} bytes is larger than expected")
        reader = _BodyReader(sock, total - len(rest), keep, self.buf)
        await self._wait(sock, reader)
        resp.nbytes = len(rest) + reader.nbytes
        if keep:
            resp.body = rest + b"".join(reader.parts)
        return resp

    async def _read_chunked(self, sock: socket.socket, data: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        out = bytearray()
        while True:
            while b"\r\n" not in data:
                more = await asyncio.wait_for(loop.sock_recv(sock, 65536), self.idle_timeout)
                if not more:
                    raise HttpFailed("connection closed inside a chunked body")
                data += more
            size_line, data = data.split(b"\r\n", 1)
            size = int(size_line.split(b";", 1)[0], 16)
            while len(data) < size + 2:
                more = await asyncio.wait_for(loop.sock_recv(sock, 65536), self.idle_timeout)
                if not more:
                    raise HttpFailed("connection closed inside a chunked body")
                data += more
            if size == 0:
                return bytes(out)
            out += data[:size]
            data = data[size + 2 :]
            if len(out) > MAX_KEPT_BODY:
                raise HttpFailed("chunked body too large")
