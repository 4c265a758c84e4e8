"""A sendfile worker process: streams image bytes for the daemon, off its event loop.

The daemon writes the response headers, then hands the connected socket and the
open file over a SOCK_SEQPACKET control socket (SCM_RIGHTS) with the range to
send. This process owns nothing else: one epoll set, `os.sendfile` on every
writable socket, and one reply per transfer with the bytes that went out and the
errno that ended it (0: all sent). The kernel work of streaming (most of a boot
storm's server CPU) then runs on another core than the daemon's loop, with no
GIL between them, as nginx's worker processes do.

Run as `python -m bootd.http.pump FD`; it exits when the daemon closes its end.
Kept to the standard library and free of bootd imports so it starts in tens of ms.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import struct
import sys

# daemon → pump: a job (with two fds: socket, file) or a cancel (no fds).
JOB = struct.Struct("=QQQ")  # job id, file offset, byte count (0: to end of file)
CANCEL = struct.Struct("=Q")  # job id
# pump → daemon: the job's end.
DONE = struct.Struct("=QQi")  # job id, bytes sent, errno (0: complete)
# Largest single sendfile call: bounds how long one connection holds this loop.
CHUNK = 4 << 20


class _Transfer:
    __slots__ = ("count", "file", "job", "offset", "sent", "sock")

    def __init__(self, job: int, sock: int, file: int, offset: int, count: int) -> None:
        self.job = job
        self.sock = sock
        self.file = file
        self.offset = offset
        self.count = count
        self.sent = 0


class Pump:
    """The worker's state: transfers by socket fd, one epoll set."""

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.ep = select.epoll()
        self.by_sock: dict[int, _Transfer] = {}
        self.by_job: dict[int, _Transfer] = {}
        self.outbox: list[bytes] = []
        self.ep.register(control.fileno(), select.EPOLLIN)

    def run(self) -> None:
        """Serve until the daemon goes away."""
        control_fd = self.control.fileno()
        while True:
            for fd, ev in self.ep.poll():
                if fd == control_fd:
                    if ev & select.EPOLLIN and not self._read_control():
                        return
                    if ev & select.EPOLLOUT:
                        self._flush()
                    if ev & (select.EPOLLHUP | select.EPOLLERR) and not ev & select.EPOLLIN:
                        return
                    continue
                t = self.by_sock.get(fd)
                if t is not None:
                    self._step(t)

    def _read_control(self) -> bool:
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.control, JOB.size, 2)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            if not data:
                return False  # the daemon closed its end
            if len(data) == JOB.size and len(fds) == 2:
                job, offset, count = JOB.unpack(data)
                t = _Transfer(job, fds[0], fds[1], offset, count)
                self.by_job[job] = t
                self.by_sock[t.sock] = t
                self.ep.register(t.sock, select.EPOLLOUT)
                self._step(t)
            elif len(data) == CANCEL.size and not fds:
                gone = self.by_job.get(CANCEL.unpack(data)[0])
                if gone is not None:
                    self._end(gone, errno.ECANCELED)
            else:  # not ours: drop whatever fds came with it
                for fd in fds:
                    os.close(fd)

    def _step(self, t: _Transfer) -> None:
        while True:
            want = t.count - t.sent if t.count else CHUNK
            try:
                n = os.sendfile(t.sock, t.file, t.offset + t.sent, min(want, CHUNK))
            except (BlockingIOError, InterruptedError):
                return  # wait for EPOLLOUT
            except OSError as exc:
                self._end(t, exc.errno or errno.EIO)
                return
            if n == 0:  # end of file
                self._end(t, 0)
                return
            t.sent += n
            if t.count and t.sent >= t.count:
                self._end(t, 0)
                return
            if n < min(want, CHUNK):
                return  # the socket took less than offered: it is full

    def _end(self, t: _Transfer, err: int) -> None:
        del self.by_job[t.job]
        del self.by_sock[t.sock]
        self.ep.unregister(t.sock)
        os.close(t.sock)
        os.close(t.file)
        self.outbox.append(DONE.pack(t.job, t.sent, err))
        self._flush()

    def _flush(self) -> None:
        sent = 0
        for msg in self.outbox:
            try:
                self.control.send(msg)
            except (BlockingIOError, InterruptedError):
                break
            sent += 1
        del self.outbox[:sent]
        self.ep.modify(
            self.control.fileno(), select.EPOLLIN | (select.EPOLLOUT if self.outbox else 0)
        )


def main(argv: list[str]) -> int:
    """Entry point: argv[1] is the inherited control socket's fd."""
    # The daemon decides when streaming stops. Ctrl-C reaches the whole process
    # group and `systemctl stop` signals the whole cgroup, but in-flight images are
    # to finish within the daemon's shutdown grace: it closes this end when done.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    control = socket.socket(fileno=int(argv[1]))
    control.setblocking(False)
    Pump(control).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
