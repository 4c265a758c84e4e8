"""BootdLoop's sendfile, in-process and through worker processes.

Same bytes and file position as asyncio's, writer registered once, and a worker
that dies fails only its own transfers.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import selectors
import signal
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from bootd.eventloop import BootdLoop
from bootd.http.streamers import MAX_RESPAWNS, SendfileWorkers

SIZE = 8 << 20


def run(main: Callable[[], Coroutine[Any, Any, None]], workers: int = 0) -> None:
    """Run main on a BootdLoop, with `workers` sendfile worker processes attached."""

    async def wrapped() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, BootdLoop)
        pool = None
        if workers:
            pool = SendfileWorkers(loop, workers)
            pool.start()
            loop.sendfile_workers = pool
        try:
            await main()
        finally:
            if pool is not None:
                loop.sendfile_workers = None
                pool.close()

    with asyncio.Runner(loop_factory=BootdLoop) as runner:
        runner.run(wrapped())


def pool_of(loop: asyncio.AbstractEventLoop) -> SendfileWorkers:
    assert isinstance(loop, BootdLoop) and loop.sendfile_workers is not None
    return loop.sendfile_workers


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


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_sendfile_range_is_byte_identical_and_leaves_no_writer(payload: Path, workers: int) -> None:
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

    run(main, workers)


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


def test_peer_gone_mid_transfer_in_a_worker(payload: Path) -> None:
    """The worker's EPIPE/ECONNRESET reaches the caller as ConnectionError, position kept."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        a, b = connected_pair()
        with a, b, open(payload, "rb") as f:
            task = asyncio.ensure_future(loop.sock_sendfile(a, f, 0, SIZE, fallback=False))
            got = await loop.sock_recv(b, 1 << 16)  # the worker is streaming
            assert got == payload.read_bytes()[: len(got)]
            b.close()
            with pytest.raises(ConnectionError):
                await task
            assert 0 < f.tell() < SIZE  # images.py counts partial bytes from it
            assert not pool_of(loop)._workers[0].jobs

    run(main, workers=1)


def test_cancelled_transfer_lets_the_connection_close(payload: Path) -> None:
    """A cancelled job is stopped in the worker, so closing our socket really ends it."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        a, b = connected_pair()
        with b, open(payload, "rb") as f:
            task = asyncio.ensure_future(loop.sock_sendfile(a, f, 0, SIZE, fallback=False))
            await asyncio.sleep(0.2)  # nobody reads: the worker waits for writable
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            a.close()
            # The peer reads what was queued, then EOF: no copy of the socket is left open.
            b.setblocking(True)
            b.settimeout(5)
            total = 0
            while chunk := b.recv(1 << 16):
                total += len(chunk)
            assert 0 < total < SIZE
            for _ in range(100):  # the worker's reply to the cancel
                if not pool_of(loop)._workers[0].jobs:
                    break
                await asyncio.sleep(0.01)
            assert not pool_of(loop)._workers[0].jobs

    run(main, workers=1)


def test_transfers_spread_over_workers(payload: Path) -> None:
    """Concurrent transfers go to the least busy worker; every byte still arrives."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        pool = pool_of(loop)
        busy: set[int] = set()
        transfer = pool.transfer

        def spy(*args: Any) -> None:
            transfer(*args)
            busy.update(w.index for w in pool._workers if w.jobs)

        pool.transfer = spy  # type: ignore[method-assign]
        pairs = [connected_pair() for _ in range(4)]
        files = [open(payload, "rb") for _ in pairs]  # noqa: SIM115
        try:
            readers = [asyncio.ensure_future(drain(loop, b, SIZE)) for _, b in pairs]
            sent = await asyncio.gather(
                *(
                    loop.sock_sendfile(a, f, 0, SIZE, fallback=False)
                    for (a, _), f in zip(pairs, files, strict=True)
                )
            )
            got = await asyncio.gather(*readers)
        finally:
            for (a, b), f in zip(pairs, files, strict=True):
                a.close()
                b.close()
                f.close()
        assert sent == [SIZE] * 4
        want = hashlib.sha256(payload.read_bytes()).digest()
        assert all(hashlib.sha256(g).digest() == want for g in got)
        assert busy == {0, 1}

    run(main, workers=2)


def test_a_dead_worker_fails_its_transfers_and_is_replaced(payload: Path) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        pool = pool_of(loop)
        first = pool._workers[0].proc
        a, b = connected_pair()
        with a, b, open(payload, "rb") as f:
            task = asyncio.ensure_future(loop.sock_sendfile(a, f, 0, SIZE, fallback=False))
            await loop.sock_recv(b, 1 << 16)
            first.send_signal(signal.SIGKILL)
            with pytest.raises(ConnectionResetError):
                await task
        assert pool.respawns == 1 and pool.enabled
        assert pool._workers[0].proc.pid != first.pid
        # The replacement streams the next transfer.
        a, b = connected_pair()
        with a, b, open(payload, "rb") as f:
            reader = asyncio.ensure_future(drain(loop, b, SIZE))
            assert await loop.sock_sendfile(a, f, 0, SIZE, fallback=False) == SIZE
            assert len(await reader) == SIZE

    run(main, workers=1)


def test_workers_that_keep_dying_hand_streaming_back_to_the_loop(payload: Path) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        pool = pool_of(loop)
        for _ in range(MAX_RESPAWNS + 1):
            proc = pool._workers[0].proc
            proc.send_signal(signal.SIGKILL)
            for _ in range(500):
                if pool._workers[0].proc is not proc or not pool.enabled:
                    break
                await asyncio.sleep(0.01)
        assert not pool.enabled
        a, b = connected_pair()
        with a, b, open(payload, "rb") as f:  # in-process again
            reader = asyncio.ensure_future(drain(loop, b, SIZE))
            assert await loop.sock_sendfile(a, f, 0, SIZE, fallback=False) == SIZE
            assert len(await reader) == SIZE

    run(main, workers=1)


@pytest.mark.parametrize("workers", [0, 1])
def test_refused_before_the_first_byte_is_sendfile_not_available(
    tmp_path: Path, workers: int
) -> None:
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

    run(main, workers)


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


def test_handover_queue_full_keeps_every_transfer(tmp_path: Path) -> None:
    """A stalled worker fills the control socket: jobs wait in our outbox, none is lost."""
    small = tmp_path / "small.bin"
    small.write_bytes(os.urandom(10_000))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        w = pool_of(loop)._workers[0]
        w.control.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)  # the kernel's minimum
        w.proc.send_signal(signal.SIGSTOP)
        pairs = [connected_pair() for _ in range(60)]
        files = [open(small, "rb") for _ in pairs]  # noqa: SIM115
        try:
            tasks = [
                asyncio.ensure_future(loop.sock_sendfile(a, f, 0, 10_000, fallback=False))
                for (a, _), f in zip(pairs, files, strict=True)
            ]
            await asyncio.sleep(0.1)
            assert w.outbox  # the handover queue filled up
            w.proc.send_signal(signal.SIGCONT)
            assert await asyncio.gather(*tasks) == [10_000] * len(pairs)
            got = await asyncio.gather(*(drain(loop, b, 10_000) for _, b in pairs))
        finally:
            w.proc.send_signal(signal.SIGCONT)
            for (a, b), f in zip(pairs, files, strict=True):
                a.close()
                b.close()
                f.close()
        assert all(g == small.read_bytes() for g in got)
        assert not w.outbox

    run(main, workers=1)
