"""The daemon's event loop: asyncio's selector loop with a cheaper sendfile wake-up.

Stock asyncio (3.11) calls `remove_writer` at the start of every sendfile wake-up
and `add_writer` again after each partial send. While aiohttp streams a file it
has paused reading, so the socket has no reader and each of those is an
`epoll_ctl` DEL then ADD plus the selector bookkeeping around them: py-spy put
that at ~11 % of bootd's samples in a 64-connection image storm, next to 56 % in
`os.sendfile` itself. Even without the system calls, `add_writer` costs a
transport check, a selector-key rebuild and a new Handle each time, which was a
quarter of the loop's GIL time in a 640-connection storm. Here one transfer
object is registered as the writer once and each wake-up only advances its
offset; it is removed once, when the transfer ends. A transfer that has sent its
last byte ends at once instead of waiting for one more writable wake-up.
Everything else, including the fallback to plain send() when sendfile is refused
before the first byte, is unchanged.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bootd.http.streamers import SendfileWorkers


class BootdLoop(asyncio.SelectorEventLoop):
    """SelectorEventLoop whose native sendfile keeps one writer registered per transfer."""

    # Set by the HTTP service: worker processes that stream files for this loop.
    sendfile_workers: SendfileWorkers | None = None

    def _sock_sendfile_native_impl(
        self,
        fut: asyncio.Future[int],
        registered_fd: int | None,
        sock: socket.socket,
        fileno: int,
        offset: int,
        count: int,
        blocksize: int,
        total_sent: int,
    ) -> None:
        # asyncio's _sock_sendfile_native calls this once per transfer; a worker
        # process or the transfer object carries on from there.
        workers = self.sendfile_workers
        if workers is not None and workers.enabled:
            workers.transfer(fut, sock, fileno, offset, count, total_sent)
            return
        _NativeSendfile(self, fut, sock, fileno, offset, count, blocksize, total_sent).step()


@dataclass(slots=True)
class _NativeSendfile:
    """One os.sendfile transfer: the socket's writer callback from the first EAGAIN to the end."""

    loop: asyncio.AbstractEventLoop
    fut: asyncio.Future[int]
    sock: socket.socket
    fileno: int
    offset: int
    count: int
    blocksize: int
    total_sent: int
    registered: bool = False
    fd: int = field(init=False)

    def __post_init__(self) -> None:
        self.fd = self.sock.fileno()

    def step(self) -> None:
        """Send what the socket takes now; end the transfer at EOF, on error or at count."""
        fut = self.fut
        if fut.done():  # cancelled while the wake-up was queued
            return
        blocksize = self.count - self.total_sent if self.count else self.blocksize
        try:
            sent = os.sendfile(self.fd, self.fileno, self.offset, blocksize)
        except (BlockingIOError, InterruptedError):
            sent = -1  # the socket buffer is full: wait to be writable
        except OSError as exc:
            err = self._error(exc)
            self._finish()
            fut.set_exception(err)
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._finish()
            fut.set_exception(exc)
            return
        if sent == 0:  # end of file
            self._finish()
            fut.set_result(self.total_sent)
            return
        if sent > 0:
            self.offset += sent
            self.total_sent += sent
            if self.count and self.total_sent >= self.count:
                self._finish()
                fut.set_result(self.total_sent)
                return
        if not self.registered:
            self.registered = True
            fut.add_done_callback(self._on_done)
            self.loop.add_writer(self.fd, self.step)

    def _finish(self) -> None:
        if self.registered:
            self.registered = False
            fd = self.sock.fileno()
            if fd != -1:
                self.loop.remove_writer(fd)
        # As asyncio does: leave the file position after the last byte sent.
        if self.total_sent > 0:
            os.lseek(self.fileno, self.offset, os.SEEK_SET)

    def _on_done(self, fut: asyncio.Future[int]) -> None:
        # Cancelled by the caller (a closing connection): stop being the writer, and
        # leave the file position after the bytes that did go out.
        if fut.cancelled():
            self._finish()

    def _error(self, exc: OSError) -> BaseException:
        if self.total_sent == 0:
            # Refused before the first byte (not a regular file, ...): asyncio falls
            # back to read()+send() on this exception.
            err = asyncio.SendfileNotAvailableError("os.sendfile call failed")
            err.__cause__ = exc
            return err
        if self.registered and exc.errno == errno.ENOTCONN:
            # The peer went away mid-transfer: the same error as on other platforms.
            new = ConnectionError("socket is not connected", errno.ENOTCONN)
            new.__cause__ = exc
            return new
        return exc
