"""The store's writer process: batches of pickled jobs, one transaction and one fsync each.

Run by `Database.open` as `python -m bootd.store.writer FD PATH`. It reads
frames of jobs from the daemon, runs everything queued in one transaction (a
batch of background jobs only lingers up to LINGER for company; a job somebody
awaits commits at once), and answers with the commit count and the results of
the awaited jobs. When the daemon closes its end (a clean stop, or its death)
the jobs already received are committed and the process exits.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import select
import signal
import socket
import sqlite3
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from bootd.store.jobs import LINGER, Job, Reply, StoreError, connect, frame, unframe

log = logging.getLogger("bootd.store")

# How many queued writes one transaction takes at most; bounds commit latency.
MAX_BATCH = 4096
# Group commit under load, as PostgreSQL's commit_delay: when the last commit ended
# less than BUSY seconds ago, writes are streaming in, and a batch somebody awaits
# waits up to GROUP_WAIT for company before it commits. A commit costs this process
# ~290 us of CPU besides ~23 us a lease (WAL frames, checksums, the fsync call), and
# with the daemon pinned to one core that is the daemon's CPU too. Sustained DHCP at
# 4,000 leases a second, pinned: 2,175-2,216 commits for 20,000 leases without the
# wait, 760-773 with it; the writer's CPU 1.35-1.45 s -> 0.99-1.11 s, the daemon's
# 4.80-4.87 -> 4.48-4.52 s (fewer replies to wake it). The 640-client avalanche kept
# its 0.22 s and 0 resends. A write after a quiet spell still commits at once.
BUSY = 0.020
GROUP_WAIT = 0.004


class Writer:
    """Reads jobs, commits batches, replies."""

    def __init__(self, sock: socket.socket, path: Path) -> None:
        self.sock = sock
        self.conn = connect(path)
        self.inbuf = bytearray()
        self.jobs: deque[Job] = deque()
        self.eof = False
        self.commits = 0
        self.writes = 0
        self.last_commit = float("-inf")  # monotonic end of the last commit

    def _read(self, timeout: float | None) -> None:
        """Wait up to timeout (None: forever) for data; take every complete frame."""
        if self.eof:
            return
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return
        while True:
            try:
                data = self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            if not data:
                self.eof = True
                break
            self.inbuf += data
        for jobs in unframe(self.inbuf):
            self.jobs.extend(jobs)

    def run(self) -> None:
        """Until the daemon has closed its end and every job it sent is committed."""
        while True:
            if not self.jobs:
                if self.eof:
                    return
                self._read(None)
                continue
            batch = self._take()
            ok, results = commit_batch(self.conn, batch)
            self.last_commit = time.monotonic()
            if ok:
                self.commits += 1
                self.writes += len(batch)
            self._reply(batch, results)

    def _take(self) -> list[Job]:
        batch: list[Job] = []
        awaited = False
        linger_until: float | None = None
        group_until: float | None = None
        while len(batch) < MAX_BATCH:
            if not self.jobs:
                self._read(0)  # whatever else has arrived joins this batch
            if not self.jobs:
                if awaited and not self.eof:
                    now = time.monotonic()
                    if group_until is None and now - self.last_commit < BUSY:
                        group_until = now + GROUP_WAIT  # writes are streaming in
                    if group_until is not None and now < group_until:
                        self._read(group_until - now)
                        continue
                if self.eof or awaited:
                    break  # someone awaits this batch: commit at once
                # Only background rows so far (timeline events, releases): gather a
                # little longer, so a storm's events cost a few commits a second.
                now = time.monotonic()
                if linger_until is None:
                    linger_until = now + LINGER
                if now >= linger_until:
                    break
                self._read(linger_until - now)
                continue
            job = self.jobs.popleft()
            awaited = awaited or job[0] != 0
            batch.append(job)
        return batch

    def _reply(self, batch: list[Job], results: list[tuple[bool, Any]]) -> None:
        out: list[tuple[int, bool, Any]] = []
        for (job, fn, _), (ok, value) in zip(batch, results, strict=True):
            if job:
                out.append((job, ok, value))
            elif not ok:
                log.warning("store: background write %s failed: %s", _name(fn), value)
        reply: Reply = (self.commits, self.writes, out)
        try:
            data = frame(reply)
        except Exception:  # a result or exception that does not pickle
            reply = (self.commits, self.writes, [_picklable(r) for r in out])
            data = frame(reply)
        # If the daemon is gone, what was committed stays committed.
        with contextlib.suppress(OSError):
            self.sock.sendall(data)


def commit_batch(conn: sqlite3.Connection, batch: list[Job]) -> tuple[bool, list[tuple[bool, Any]]]:
    """Run a batch in one transaction, a savepoint per job; (committed, per-job results)."""
    results: list[tuple[bool, Any]] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        for _job, fn, args in batch:
            if fn is None:  # a barrier
                results.append((True, True))
                continue
            # A savepoint per job: one bad write fails alone, the rest commit.
            conn.execute("SAVEPOINT job")
            try:
                results.append((True, fn(conn, *args)))
                conn.execute("RELEASE job")
            except Exception as exc:  # reported to that job's caller
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                results.append((False, exc))
        conn.execute("COMMIT")
        return True, results
    except sqlite3.Error as exc:
        log.error("store: commit failed: %s", exc)
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        return False, [(False, StoreError(f"commit failed: {exc}"))] * len(batch)


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", repr(fn))


def _picklable(result: tuple[int, bool, Any]) -> tuple[int, bool, Any]:
    # Results and exceptions go back pickled; one that does not survive the trip
    # fails its job with its text rather than taking the whole reply down.
    job, ok, value = result
    try:
        pickle.dumps(value)
    except Exception:
        what = "result" if ok else "error"
        return job, False, StoreError(f"the job's {what} does not pickle: {value!r}")
    return result


def main(argv: list[str]) -> int:
    """Entry point: argv[1] is the inherited socket's fd, argv[2] the database path."""
    # The daemon decides when writing stops (Ctrl-C reaches the process group and
    # systemctl stop the whole cgroup): its closing our socket is the signal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sock = socket.socket(fileno=int(argv[1]))
    sock.setblocking(True)
    try:
        writer = Writer(sock, Path(argv[2]))
    except (OSError, sqlite3.Error) as exc:
        log.error("store: the writer cannot open %s: %s", argv[2], exc)
        return 1
    hello: Reply = (0, 0, [])
    sock.sendall(frame(hello))
    writer.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
