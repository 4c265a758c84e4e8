"""BootdLoop's sendfile: same bytes and file position as asyncio's, writer registered once."""

from __future__ import annotations

import asyncio
import hashlib
import os
import selectors
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from bootd.eventloop import BootdLoop

SIZE = 8 << 20


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=BootdLoop) as runner:
        runner.run(main())


def writer_registered(loop: asyncio.AbstractEventLoop, fd: int) -> bool:
    selector: selectors.BaseSelector = loop._selector  # type: ignore[attr-defined]
    try:
        key = selector.get_key(fd)
    except KeyError:
        return False
    return bool(key.events & selectors.EVENT_WRITE)


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    path = tmp_path / "image.bin"
    path.write_bytes(os.urandom(SIZE))
    return path


def connected_pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    # Small buffers: the transfer needs many writable wake-ups.
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    a.setblocking(False)
    b.setblocking(False)
    return a, b


async def drain(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = await loop.sock_recv(sock, 1 << 16)
        if not chunk:
            break
        out += chunk
        await asyncio.sleep(0)  # a slow reader: the sender hits EAGAIN again and again
    return bytes(out)


def test_sendfile_range_is_byte_identical_and_leaves_no_writer(payload: Path) -> None:
    start, length = 12345, SIZE - 2 * 12345
    want = payload.read_bytes()[start : start + length]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        a, b = connected_pair()
        with a, b, open(payload, "rb") as f:
            reader = asyncio.ensure_future(drain(loop, b, length))
            sent = await loop.sock_sendfile(a, f, start, length, fallback=False)
            got = await reader
            assert sent == length
            assert hashlib.sha256(got).digest() == hashlib.sha256(want).digest()
            assert f.tell() == start + length
            assert not writer_registered(loop, a.fileno())

    run(main)


@pytest.mark.parametrize("ending", ["cancelled", "peer-gone"])
def test_interrupted_sendfile_removes_its_writer(payload: Path, ending: str) -> None:
    """Cancelled by the caller, or the peer closed mid-transfer: no writer is left behind."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        a, b = connected_pair()
        with a, b, open(payload, "rb") as f:
            task = asyncio.ensure_future(loop.sock_sendfile(a, f, 0, SIZE, fallback=False))
            await asyncio.sleep(0.05)  # nobody reads: the socket fills and waits for writable
            assert writer_registered(loop, a.fileno())
            if ending == "cancelled":
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                await asyncio.sleep(0)
                # The position marks what went out (images.py counts partial bytes from it).
                assert 0 < f.tell() < SIZE
            else:
                b.close()
                with pytest.raises(OSError):  # EPIPE/ECONNRESET from the next send
                    await task
            assert not writer_registered(loop, a.fileno())

    run(main)


def test_refused_before_the_first_byte_is_sendfile_not_available(tmp_path: Path) -> None:
    """What asyncio's read()+send() fallback keys on (a write-only fd: EBADF at once)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        a, b = connected_pair()
        with a, b, open(tmp_path / "w.bin", "wb") as f:
            f.write(b"x" * 100)
            f.flush()
            with pytest.raises(asyncio.SendfileNotAvailableError):
                await loop.sock_sendfile(a, f, 0, 100, fallback=False)
            assert not writer_registered(loop, a.fileno())

    run(main)


def test_writer_is_registered_once_per_transfer(payload: Path) -> None:
    """The point of BootdLoop: stock asyncio unregisters and registers on every wake-up."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        selector: selectors.BaseSelector = loop._selector  # type: ignore[attr-defined]
        calls: list[str] = []
        register, unregister = selector.register, selector.unregister

        a, b = connected_pair()

        def counting_register(fileobj: Any, events: int, data: Any = None) -> Any:
            if fileobj in (a, a.fileno()):  # the sender only (the reader's sock_recv churns)
                calls.append("register")
            return register(fileobj, events, data)

        def counting_unregister(fileobj: Any) -> Any:
            if fileobj in (a, a.fileno()):
                calls.append("unregister")
            return unregister(fileobj)

        with a, b, open(payload, "rb") as f:
            reader = asyncio.ensure_future(drain(loop, b, SIZE))
            await asyncio.sleep(0)
            selector.register = counting_register  # type: ignore[method-assign]
            selector.unregister = counting_unregister  # type: ignore[method-assign]
            try:
                assert await loop.sock_sendfile(a, f, 0, SIZE, fallback=False) == SIZE
            finally:
                selector.register, selector.unregister = register, unregister  # type: ignore[method-assign]
            assert len(await reader) == SIZE
        # One registration for the whole 8 MiB (64 KiB socket buffers: >100 wake-ups).
        assert calls.count("register") <= 1, calls
        assert calls.count("unregister") <= 1, calls

    run(main)
