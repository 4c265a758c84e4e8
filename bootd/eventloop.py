"""The daemon's event loop: asyncio's selector loop with a cheaper sendfile wake-up.

Stock asyncio (3.11) calls `remove_writer` at the start of every sendfile wake-up
and `add_writer` again after each partial send. While aiohttp streams a file it
has paused reading, so the socket has no reader and each of those is an
`epoll_ctl` DEL then ADD plus the selector bookkeeping around them: py-spy put
that at ~11 % of bootd's samples in a 64-connection image storm, next to 56 % in
`os.sendfile` itself. Here the writer stays registered for the whole transfer
(re-adding it with the same events only swaps the callback, no system call) and
is removed once, when the transfer ends. Everything else, including the fallback
to plain send() when sendfile is refused before the first byte, is unchanged.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable


class BootdLoop(asyncio.SelectorEventLoop):
    """SelectorEventLoop whose native sendfile keeps its writer registered between sends."""

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
        fd = sock.fileno()
        if fut.cancelled():
            self._sendfile_finished(registered_fd, fileno, offset, total_sent)
            return
        if count:
            blocksize = count - total_sent
            if blocksize <= 0:
                self._sendfile_finished(registered_fd, fileno, offset, total_sent)
                fut.set_result(total_sent)
                return
        try:
            sent = os.sendfile(fd, fileno, offset, blocksize)
        except (BlockingIOError, InterruptedError):
            sent = -1  # the socket buffer is full: wait to be writable
        except OSError as exc:
            self._sendfile_finished(registered_fd, fileno, offset, total_sent)
            fut.set_exception(self._sendfile_error(exc, registered_fd, total_sent))
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._sendfile_finished(registered_fd, fileno, offset, total_sent)
            fut.set_exception(exc)
            return
        if sent == 0:  # end of file
            self._sendfile_finished(registered_fd, fileno, offset, total_sent)
            fut.set_result(total_sent)
            return
        if sent > 0:
            offset += sent
            total_sent += sent
        if registered_fd is None:
            fut.add_done_callback(self._remove_writer_if_cancelled(sock))
        self.add_writer(
            fd, self._sock_sendfile_native_impl,
            fut, fd, sock, fileno, offset, count, blocksize, total_sent,
        )  # fmt: skip

    def _sendfile_finished(
        self, registered_fd: int | None, fileno: int, offset: int, total_sent: int
    ) -> None:
        if registered_fd is not None:
            self.remove_writer(registered_fd)
        # As asyncio does: leave the file position after the last byte sent.
        if total_sent > 0:
            os.lseek(fileno, offset, os.SEEK_SET)

    @staticmethod
    def _sendfile_error(exc: OSError, registered_fd: int | None, total_sent: int) -> BaseException:
        if total_sent == 0:
            # Refused before the first byte (not a regular file, ...): asyncio falls
            # back to read()+send() on this exception.
            err = asyncio.SendfileNotAvailableError("os.sendfile call failed")
            err.__cause__ = exc
            return err
        if registered_fd is not None and exc.errno == errno.ENOTCONN:
            # The peer went away mid-transfer: the same error as on other platforms.
            new = ConnectionError("socket is not connected", errno.ENOTCONN)
            new.__cause__ = exc
            return new
        return exc

    def _remove_writer_if_cancelled(
        self, sock: socket.socket
    ) -> Callable[[asyncio.Future[int]], None]:
        def done(fut: asyncio.Future[int]) -> None:
            fd = sock.fileno()
            if fut.cancelled() and fd != -1:
                self.remove_writer(fd)

        return done
