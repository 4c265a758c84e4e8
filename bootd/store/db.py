"""SQLite behind a group-commit writer process: many writes, one transaction, one fsync.

Writes are jobs: a module-level function and its arguments, `fn(conn, *args)`.
They are pickled (the function by name) to one writer process
(`bootd.store.writer`), which runs as many as are queued in one transaction, a
savepoint each so one bad job fails alone, commits with one fsync and answers
the jobs somebody awaits. The event loop reads the answers like any other
socket, so an ACK waits for the disk and nothing else.

Why a process and not a thread: the writer needs the GIL between SQLite calls,
and a busy event loop wins it back nearly every time. Measured in a 640-client
DHCP avalanche, a batch waited 35-55 ms from queueing to its ACKs although the
fsync took 0.5-3 ms; a 3-statement commit next to a busy loop took 32 ms,
0.46 ms alone. In its own process the writer has its own interpreter.

Reads stay in the caller's process on their own connection (WAL: readers do
not block the writer, and see every committed batch).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import pickle
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bootd.children import reap
from bootd.store.jobs import LINGER, Job, Reply, connect, frame, unframe, unframe_into
from bootd.store.jobs import StoreError as StoreError  # raised to the store's callers

log = logging.getLogger("bootd.store")

T = TypeVar("T")

# A writer that exits this often in a row without committing is not restarted again.
MAX_RESPAWNS = 5
# The writer process's module (python -m).
WRITER = "bootd.store.writer"
# How long a starting writer may take to open the database and say hello.
HELLO_TIMEOUT = 30.0


@dataclass(frozen=True)
class Migration:
    """One schema step of one component; applied once, in version order."""

    component: str
    version: int
    sql: str


class Database:
    """A WAL-mode SQLite file: reads in this process, writes batched by a writer process."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._reader: sqlite3.Connection | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._out = bytearray()  # frames the socket has not taken yet
        self._held = bytearray()  # background frames waiting up to LINGER for company
        self._held_timer: asyncio.TimerHandle | None = None
        self._in = bytearray()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._deaths = 0
        self._closing = False
        self._hooks: list[Callable[[], None]] = []
        self._in_hooks = False
        self.commits = 0
        self.writes = 0
        self.replies = 0  # replies taken from the writer (poll() compares)

    def open(self, migrations: Iterable[Migration]) -> None:
        """Create the file if needed, apply pending migrations, start the writer."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = connect(self.path)
            try:
                self._migrate(conn, list(migrations))
            finally:
                conn.close()
            self._reader = connect(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the database {self.path}: {exc}") from None
        self._spawn()

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", WRITER, str(theirs.fileno()), str(self.path)],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            ours.close()
            raise StoreError(f"cannot start the store writer: {exc}") from None
        finally:
            theirs.close()
        self._sock = ours
        self._in.clear()
        self._out.clear()
        self._loop = None  # the reader is registered with the first loop that writes
        # Wait for the writer's hello (its connection is open): a first write then
        # never waits on an interpreter starting up, and a writer that cannot open
        # the file stops the daemon here, with its reason, not at the first write.
        ours.settimeout(HELLO_TIMEOUT)
        try:
            while not unframe_into(self._in, ours):
                pass
            ours.setblocking(False)
        except (OSError, EOFError) as exc:
            ours.close()
            self._sock = None
            code = reap(self._proc, 5.0)
            raise StoreError(
                f"the store writer for {self.path} did not start (exit code {code}): {exc}"
            ) from None

    @staticmethod
    def _migrate(conn: sqlite3.Connection, migrations: Sequence[Migration]) -> None:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version "
            "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )
        have = {r[0]: r[1] for r in conn.execute("SELECT component, version FROM schema_version")}
        for m in sorted(migrations, key=lambda m: (m.component, m.version)):
            if m.version <= have.get(m.component, 0):
                continue
            conn.execute("BEGIN IMMEDIATE")
            try:
                for stmt in m.sql.split(";\n"):
                    if stmt.strip():
                        conn.execute(stmt)
                conn.execute(
                    "INSERT INTO schema_version(component, version) VALUES (?, ?) "
                    "ON CONFLICT(component) DO UPDATE SET version=excluded.version",
                    (m.component, m.version),
                )
                conn.execute("COMMIT")
            except sqlite3.Error:
                conn.execute("ROLLBACK")
                raise
            have[m.component] = m.version
            log.info("store: applied migration %s v%d", m.component, m.version)

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run a query on the reader connection (fast, in the caller's thread)."""
        assert self._reader is not None, "database not open"
        return self._reader.execute(sql, params).fetchall()

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(conn, *args) in the next batch; resolve once that batch is committed."""
        return await self.submit(fn, *args)

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue fn(conn, *args) now (not when awaited); resolves once its batch is durable.

        fn must be a module-level function (it is pickled by name); args and the result
        must pickle.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        job = next(self._ids)
        try:
            self._queue([(job, fn, args)], loop)
        except StoreError as exc:  # the caller's await reports it, as for a failed commit
            fut.set_exception(exc)
            return fut
        self._pending[job] = fut  # no reply can come before this loop turn ends
        return fut

    def write_nowait(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue fn(conn, *args) for the next batch without waiting (timeline rows)."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        try:
            self._queue([(0, fn, args)], loop)
        except StoreError as exc:  # nobody waits for it: the loss is logged, not raised
            log.error("store: background write %s lost: %s", getattr(fn, "__name__", fn), exc)

    def on_before_write(self, hook: Callable[[], None]) -> None:
        """Call hook before any job is queued: a component that holds writes back to
        coalesce them (the timeline) hands them over first, so order is kept."""
        self._hooks.append(hook)

    def _queue(self, jobs: list[Job], loop: asyncio.AbstractEventLoop | None) -> None:
        if self._sock is None:
            raise StoreError("the store is closed, or its writer could not be restarted")
        if loop is None and self._loop is not None and self._loop.is_running():
            # Another thread's write while the loop owns the socket: the loop queues
            # it, so frames never interleave.
            self._loop.call_soon_threadsafe(self._queue, jobs, self._loop)
            return
        if self._hooks and not self._in_hooks:
            self._in_hooks = True
            try:
                for hook in self._hooks:
                    hook()
            finally:
                self._in_hooks = False
        try:
            data = frame(jobs)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise StoreError(f"write job does not pickle: {exc}") from exc
        if loop is None:  # no loop at all (setup, shutdown, tools): send now
            self._out += self._take_held(data)
            self._send_blocking()
            return
        if all(job == 0 for job, _, _ in jobs):
            # Nobody waits for these (timeline rows, releases): hold them up to LINGER
            # so a storm's events cost the writer a few wake-ups a second, not one per
            # loop turn. An awaited write takes them along, in order, at once.
            self._held += data
            if self._held_timer is None:
                self._held_timer = loop.call_later(LINGER, self._send_held, loop)
            return
        self._send_frame(self._take_held(data), loop)

    def _take_held(self, then: bytes = b"") -> bytes:
        """The held background frames followed by `then`, in one copy; nothing is held after."""
        if self._held_timer is not None:
            self._held_timer.cancel()
            self._held_timer = None
        if not self._held:
            return then
        self._held += then
        out = bytes(self._held)
        self._held.clear()
        return out

    def _send_held(self, loop: asyncio.AbstractEventLoop) -> None:
        self._held_timer = None
        if self._held:
            self._send_frame(self._take_held(), loop)

    def _send_frame(self, data: bytes, loop: asyncio.AbstractEventLoop) -> None:
        if self._sock is None:
            return
        if self._loop is not loop:
            self._attach(loop)
        if self._out:  # the socket is full: the writer callback sends it in order
            self._out += data
            return
        assert self._loop is not None
        try:
            sent = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return  # the writer is gone: its EOF fails the pending jobs
        if sent < len(data):
            self._out += data[sent:]
            self._loop.add_writer(self._sock.fileno(), self._on_writable)

    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._sock is not None
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._sock.fileno())
            self._loop.remove_writer(self._sock.fileno())
        self._loop = loop
        loop.add_reader(self._sock.fileno(), self._on_readable)
        if self._out:
            loop.add_writer(self._sock.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        assert self._sock is not None and self._loop is not None
        try:
            sent = self._sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            sent = len(self._out)
        del self._out[:sent]
        if not self._out:
            self._loop.remove_writer(self._sock.fileno())

    def _send_blocking(self) -> None:
        # No loop to wait on (setup, shutdown): hand everything over now.
        assert self._sock is not None
        self._sock.setblocking(True)
        try:
            self._sock.sendall(self._out)
        except OSError as exc:
            log.error("store: the writer is gone: %s", exc)
        finally:
            self._sock.setblocking(False)
            self._out.clear()

    def _on_readable(self) -> None:
        assert self._sock is not None
        try:
            data = self._sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._writer_gone()
            return
        self._in += data
        for reply in unframe(self._in):
            self._take(reply)

    def poll(self) -> bool:
        """Take the writer's replies that have arrived, without waiting; True if any did.

        The loop reads them when it gets to them. A component that keeps the loop busy
        (the DHCP reader draining a storm, up to its read budget) calls this between
        its bursts and yields when it is True, so the writes just made durable are
        acted on (their ACKs sent) before more requests are read.
        """
        if self._sock is None:
            return False
        replies = self.replies
        self._on_readable()
        return self.replies != replies

    def _take(self, reply: Reply) -> None:
        self.replies += 1
        self.commits, self.writes, results = reply
        self._deaths = 0
        for job, ok, value in results:
            fut = self._pending.pop(job, None)
            if fut is None or fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def _writer_gone(self) -> None:
        assert self._sock is not None
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._sock.fileno())
            loop.remove_writer(self._sock.fileno())
        self._sock.close()
        self._sock = None
        code = self._proc.wait() if self._proc is not None else None
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(StoreError("the store writer exited before committing"))
        if self._closing:
            return
        self._deaths += 1
        if self._deaths > MAX_RESPAWNS:
            log.error("store: the writer keeps exiting (last code %s); writes now fail", code)
            return
        log.error("store: the writer exited (code %s); starting another", code)
        try:
            self._spawn()
        except StoreError as exc:
            log.error("store: %s; writes now fail", exc)
            return
        if loop is not None and not loop.is_closed():
            self._attach(loop)

    def flush(self) -> None:
        """Block until everything queued so far is committed (shutdown path)."""
        if self._sock is None:
            return
        for hook in self._hooks:
            hook()
        job = next(self._ids)
        self._out += self._take_held(frame([(job, None, ())]))
        self._send_blocking()
        self._wait_for(job, time.monotonic() + 30)

    def _wait_for(self, job: int, deadline: float) -> None:
        # Read replies in this thread until the barrier's comes back (or the writer goes).
        assert self._sock is not None
        sock = self._sock
        sock.setblocking(True)
        try:
            while time.monotonic() < deadline:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    data = sock.recv(1 << 20)
                except TimeoutError:
                    break
                except OSError:
                    data = b""
                if not data:
                    return
                self._in += data
                for reply in unframe(self._in):
                    done = any(r[0] == job for r in reply[2])
                    self._take(reply)
                    if done:
                        return
        finally:
            if sock.fileno() != -1:
                sock.setblocking(False)

    def close(self) -> None:
        """Commit what is queued, stop the writer and close the reader."""
        self._closing = True
        if self._sock is not None:
            self.flush()
            sock = self._sock
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
                self._loop.remove_writer(sock.fileno())
            sock.close()  # EOF: the writer commits anything left and exits
            self._sock = None
        if self._proc is not None:
            reap(self._proc, 30.0)
            self._proc = None
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(StoreError("the database was closed"))
        self._pending.clear()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
