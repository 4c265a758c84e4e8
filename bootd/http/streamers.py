"""The daemon's side of the sendfile workers (`bootd.http.pump`): spawn, hand over, collect.

`BootdLoop` asks `SendfileWorkers.start` for every native sendfile once asyncio
has flushed the transport and paused its reading; the worker with the fewest
transfers gets the socket and the file (their fds are duplicated into it by
SCM_RIGHTS) and sends the range. Its reply settles the future exactly as an
in-process transfer would: the bytes sent, the file position after them, and
the same exceptions (SendfileNotAvailableError before the first byte, so
asyncio falls back to send()).

A worker that dies fails only its own transfers (their clients see a short
response and retry, as after any dropped connection) and is started again; after
`MAX_RESPAWNS` deaths in a row without a completed transfer the daemon stops
offloading and streams in-process again, so a broken worker cannot take image
serving down with it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field

from bootd.children import reap
from bootd.http.pump import CANCEL, DONE, JOB

log = logging.getLogger("bootd.http")

MAX_RESPAWNS = 5


def auto_workers() -> int:
    """Workers for `http.sendfile_workers: auto`: none on one CPU, else one per spare CPU, ≤ 4."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(4, n - 1))


@dataclass(slots=True)
class _Job:
    fut: asyncio.Future[int]
    fileno: int
    offset: int
    total_sent: int
    worker: _Worker


@dataclass(eq=False)
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]
    control: socket.socket
    jobs: dict[int, _Job] = field(default_factory=dict)
    # Messages the control socket could not take yet: (payload, fds to pass).
    outbox: deque[tuple[bytes, tuple[int, ...]]] = field(default_factory=deque)


class SendfileWorkers:
    """A small pool of `bootd.http.pump` processes that stream files for the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self.loop = loop
        self.count = count
        self._workers: list[_Worker] = []
        self._next_job = 1
        self._deaths = 0
        self.respawns = 0
        self.enabled = False

    def start(self) -> None:
        """Spawn the workers; afterwards `enabled` says whether transfers go to them."""
        for i in range(self.count):
            self._workers.append(self._spawn(i))
        self.enabled = bool(self._workers)
        if self.enabled:
            log.info("http: %d sendfile worker process(es)", len(self._workers))

    def _spawn(self, index: int) -> _Worker:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bootd.http.pump", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        ours.setblocking(False)
        w = _Worker(index, proc, ours)
        self.loop.add_reader(ours.fileno(), self._on_readable, w)
        return w

    def transfer(
        self,
        fut: asyncio.Future[int],
        sock: socket.socket,
        fileno: int,
        offset: int,
        count: int,
        total_sent: int,
    ) -> None:
        """Hand one sendfile to the least busy worker; `fut` gets the total sent."""
        w = min(self._workers, key=lambda w: len(w.jobs))
        job = self._next_job
        self._next_job += 1
        j = _Job(fut, fileno, offset, total_sent, w)
        w.jobs[job] = j
        fut.add_done_callback(lambda f: self._on_done(job, j, f))
        self._send(w, JOB.pack(job, offset, count), (sock.fileno(), fileno))

    @staticmethod
    def _emit(w: _Worker, payload: bytes, fds: tuple[int, ...]) -> None:
        if fds:
            socket.send_fds(w.control, [payload], list(fds))
        else:
            w.control.send(payload)

    def _send(self, w: _Worker, payload: bytes, fds: tuple[int, ...]) -> None:
        if not w.outbox:
            try:
                self._emit(w, payload, fds)
                return
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                return  # the worker is gone: its reader sees EOF and fails the job
        # The worker's queue is full: keep our own duplicates of the fds (the caller may
        # close its file before we get to send) until the message goes out.
        w.outbox.append((payload, tuple(os.dup(fd) for fd in fds)))
        if len(w.outbox) == 1:
            self.loop.add_writer(w.control.fileno(), self._flush, w)

    def _flush(self, w: _Worker) -> None:
        while w.outbox:
            payload, fds = w.outbox[0]
            try:
                self._emit(w, payload, fds)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                break
            w.outbox.popleft()
            for fd in fds:
                os.close(fd)
        self.loop.remove_writer(w.control.fileno())

    def _on_done(self, job: int, j: _Job, fut: asyncio.Future[int]) -> None:
        # Cancelled by the caller (a closing connection, shutdown): tell the worker to
        # stop. Our file may be closed by now, so the position is left alone.
        if fut.cancelled() and job in j.worker.jobs:
            self._send(j.worker, CANCEL.pack(job), ())

    def _on_readable(self, w: _Worker) -> None:
        while True:
            try:
                data = w.control.recv(DONE.size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._died(w)
                return
            if len(data) != DONE.size:
                continue
            job, sent, err = DONE.unpack(data)
            j = w.jobs.pop(job, None)
            if j is None:
                continue
            self._deaths = 0
            self._settle(j, sent, err)

    def _settle(self, j: _Job, sent: int, err: int) -> None:
        if j.fut.done():
            return
        total = j.total_sent + sent
        if sent:
            # As asyncio does: the file position after the last byte sent.
            os.lseek(j.fileno, j.offset + sent, os.SEEK_SET)
        if err == 0:
            j.fut.set_result(total)
        elif total == 0:
            exc: BaseException = asyncio.SendfileNotAvailableError("os.sendfile call failed")
            exc.__cause__ = OSError(err, os.strerror(err))
            j.fut.set_exception(exc)
        elif err in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
            j.fut.set_exception(ConnectionError(err, os.strerror(err)))
        else:
            j.fut.set_exception(OSError(err, os.strerror(err)))

    def _died(self, w: _Worker) -> None:
        self.loop.remove_reader(w.control.fileno())
        if w.outbox:
            self.loop.remove_writer(w.control.fileno())
            for _payload, fds in w.outbox:
                for fd in fds:
                    os.close(fd)
            w.outbox.clear()
        w.control.close()
        code = reap(w.proc, 2.0)  # it closed its end: it is exiting
        jobs, w.jobs = w.jobs, {}
        for j in jobs.values():
            if not j.fut.done():
                j.fut.set_exception(ConnectionResetError("sendfile worker exited"))
        if not self.enabled:
            return
        self._deaths += 1
        self.respawns += 1
        if self._deaths > MAX_RESPAWNS:
            log.error(
                "http: sendfile workers keep exiting (last code %s); streaming in-process", code
            )
            self.enabled = False
            return
        log.warning("http: sendfile worker %d exited (code %s); starting another", w.index, code)
        try:
            self._workers[self._workers.index(w)] = self._spawn(w.index)
        except OSError as exc:
            log.error("http: cannot start a sendfile worker (%s); streaming in-process", exc)
            self.enabled = False

    def close(self) -> None:
        """Stop the workers: their transfers end, the processes exit on EOF."""
        self.enabled = False
        for w in self._workers:
            if w.control.fileno() != -1:
                self.loop.remove_reader(w.control.fileno())
                if w.outbox:
                    self.loop.remove_writer(w.control.fileno())
                w.control.close()
            for j in w.jobs.values():
                if not j.fut.done():
                    j.fut.set_exception(ConnectionResetError("sendfile workers stopped"))
            w.jobs.clear()
        for w in self._workers:
            reap(w.proc, 5.0)
        self._workers.clear()
