"""SQLite behind a group-commit writer: many writes, one transaction, one fsync."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger("bootd.store")

T = TypeVar("T")

# How many queued writes one transaction takes at most; bounds commit latency.
MAX_BATCH = 4096
# How long the writer holds a batch of background writes (nobody awaits them) open
# for more to join it; an awaited write is committed without waiting.
LINGER = 0.05


@dataclass(frozen=True)
class Migration:
    """One schema step of one component; applied once, in version order."""

    component: str
    version: int
    sql: str


class StoreError(Exception):
    """The store could not be opened or written."""


_Job = tuple[
    Callable[[sqlite3.Connection], Any],
    asyncio.Future[Any] | None,
    asyncio.AbstractEventLoop | None,
]


class Database:
    """A WAL-mode SQLite file: reads on the caller's thread, writes batched on one writer thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._reader: sqlite3.Connection | None = None
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._writer: sqlite3.Connection | None = None
        self.commits = 0
        self.writes = 0

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a COMMIT returns only after the WAL is fsynced, so an answer
        # sent after it survives kill -9 and power loss.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    def open(self, migrations: Iterable[Migration]) -> None:
        """Create the file if needed, apply pending migrations, start the writer."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = self._connect()
            self._migrate(self._writer, list(migrations))
            self._reader = self._connect()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the database {self.path}: {exc}") from None
        self._thread = threading.Thread(target=self._run, name="bootd-store", daemon=True)
        self._thread.start()

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

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn in the next batch; resolve once that batch is committed (durable)."""
        return await self.submit(fn)

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue fn now (not when awaited); the future resolves once its batch is committed."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put((fn, fut, loop))
        return fut

    def write_nowait(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        """Queue fn for the next batch without waiting (timeline rows, counters)."""
        self._queue.put((fn, None, None))

    @staticmethod
    def _transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    def _run(self) -> None:
        conn = self._writer
        assert conn is not None
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            waiting = first[1] is not None  # someone awaits this batch: commit at once
            linger_until: float | None = None
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    if waiting:
                        break
                    # Only background rows so far (timeline events, releases): gather
                    # a little longer, so a storm's events cost a few commits a second
                    # instead of one per loop turn. An awaited write ends the wait.
                    now = time.monotonic()
                    if linger_until is None:
                        linger_until = now + LINGER
                    if now >= linger_until:
                        break
                    try:
                        item = self._queue.get(timeout=linger_until - now)
                    except queue.Empty:
                        break
                if item is None:
                    stop = True
                    break
                batch.append(item)
                waiting = waiting or item[1] is not None
            self._commit_batch(conn, batch)

    def _commit_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        results: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, _, _ in batch:
                # A savepoint per job: one bad write fails alone, the rest commit.
                conn.execute("SAVEPOINT job")
                try:
                    results.append((True, fn(conn)))
                    conn.execute("RELEASE job")
                except Exception as exc:  # reported to that job's caller
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    results.append((False, exc))
            conn.execute("COMMIT")
            self.commits += 1
            self.writes += len(batch)
        except sqlite3.Error as exc:
            log.error("store: commit failed: %s", exc)
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            results = [(False, StoreError(f"commit failed: {exc}"))] * len(batch)
        for (_, fut, loop), (ok, value) in zip(batch, results, strict=True):
            if fut is None or loop is None:
                if not ok:
                    log.warning("store: background write failed: %s", value)
                continue
            loop.call_soon_threadsafe(_settle, fut, ok, value)

    def flush(self) -> None:
        """Block until everything queued so far is committed (shutdown path)."""
        done = threading.Event()
        self._queue.put((lambda _c: done.set(), None, None))
        done.wait(timeout=30)

    def close(self) -> None:
        """Commit what is queued, stop the writer and close both connections."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None
        for c in (self._reader, self._writer):
            if c is not None:
                c.close()
        self._reader = self._writer = None


def _settle(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)
