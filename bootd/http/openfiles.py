"""Image files kept open between requests, as nginx's `open_file_cache` does.

A boot storm asks for the same three files (kernel, initrd, rootfs) 640 times
each. Opening one means resolving it inside `http.images` (a realpath walk) and
an `open`, both in a worker thread so a stalled disk or NFS mount cannot freeze
the event loop. That thread hop alone cost 70-450 µs of CPU per request on the
2-core bench machine (GIL hand-offs and futex wake-ups), twice the rest of an
image request. Here the checked file is kept open and each request reopens it
through `/proc/self/fd`: one `open` of an already-resolved inode, no
path walk, no symlink to follow, so nothing can swap the file for one outside
the jail in between. Each request still gets its own open file description
(its own file position, which asyncio's sendfile and its read() fallback use).

A kept file is trusted for `VALID` seconds, then checked again in the worker
thread (one check per file however many requests wait for it): a replaced or
changed image is served from then on, a deleted one answers 404.

Reopening is a filesystem call: on NFS (close-to-open consistency) or any other
network filesystem it can wait on the server, so files there are reopened in the
worker thread; only files on local filesystems are reopened in the loop.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from bootd.fsinfo import Ident, LocalDevices, OutsideRoot, file_ident, open_regular_inside
from bootd.singleflight import SingleFlight

# Seconds a checked file is served without looking at the path again.
VALID = 1.0
# Open files kept; the least recently used one closes beyond this.
MAX_FILES = 64


def open_in_jail(root: Path, rel: str) -> tuple[int, os.stat_result]:
    """Open a regular file under root (symlinks may not lead out); runs in a worker thread."""
    real_root = root.resolve()
    full = (real_root / rel).resolve(strict=True)
    if not full.is_relative_to(real_root):
        raise OutsideRoot(str(full))
    return open_regular_inside(str(full), str(real_root))


@dataclass(slots=True)
class _Kept:
    fd: int
    ident: Ident
    checked: float
    local: bool  # on a local filesystem: reopened in the loop, else in the worker thread


Key = tuple[str, str]


class OpenFiles:
    """Jailed, checked, open image files by (root, relative path)."""

    def __init__(
        self,
        valid: float = VALID,
        max_files: int = MAX_FILES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.valid = valid
        self.max_files = max_files
        self.clock = clock
        self._kept: OrderedDict[Key, _Kept] = OrderedDict()
        self._checks: SingleFlight[Key, _Kept] = SingleFlight()
        self.checks = 0  # path checks run in the worker thread (misses and expiries)
        self.thread_reopens = 0  # reopens of files on network filesystems
        # st_dev -> local filesystem? (a device's filesystem type does not change)
        self._is_local = LocalDevices()
        # Reopening through /proc/self/fd needs procfs; without it every request opens
        # by path in the worker thread, as if nothing were kept.
        self._reopen_ok = os.path.isdir("/proc/self/fd")

    async def open(self, root: Path, rel: str) -> tuple[BinaryIO, os.stat_result]:
        """A private file object for root/rel and its stat; raises OutsideRoot or OSError."""
        if not self._reopen_ok:
            loop = asyncio.get_running_loop()
            fd, _ = await loop.run_in_executor(None, open_in_jail, root, rel)
            return _wrap(fd)
        key = (str(root), rel)
        for _ in range(3):
            kept = self._kept.get(key)
            if kept is None or self.clock() - kept.checked >= self.valid:
                kept = await self._check(key, root, rel)
            else:
                self._kept.move_to_end(key)
            try:
                if kept.local:
                    fd = _reopen(kept.fd)
                else:
                    self.thread_reopens += 1
                    loop = asyncio.get_running_loop()
                    fd = await loop.run_in_executor(None, _reopen, kept.fd)
            except FileNotFoundError:
                fd = -1  # closed (evicted, replaced) while this request waited
            if fd >= 0:
                f, st = _wrap(fd)
                # The same inode that was checked, not whatever reused a closed fd number.
                if (st.st_dev, st.st_ino) == kept.ident[:2]:
                    return f, st
                f.close()
            if self._kept.get(key) is kept:
                self._forget(key)
        raise OSError(errno.ESTALE, f"{rel} keeps changing while being opened")

    async def _check(self, key: Key, root: Path, rel: str) -> _Kept:
        # One check per file however many requests wait; a client that leaves does not
        # cancel it for the others.
        return await self._checks.run(key, lambda: self._revalidate(key, root, rel))

    async def _revalidate(self, key: Key, root: Path, rel: str) -> _Kept:
        self.checks += 1
        loop = asyncio.get_running_loop()
        try:
            fd, st, local = await loop.run_in_executor(None, self._open_and_classify, root, rel)
        except BaseException:
            self._forget(key)
            raise
        ident = file_ident(st)
        old = self._kept.get(key)
        if old is not None and old.ident == ident:
            os.close(fd)
            old.checked = self.clock()
            self._kept.move_to_end(key)
            return old
        self._forget(key)
        kept = self._kept[key] = _Kept(fd, ident, self.clock(), local)
        while len(self._kept) > self.max_files:
            _, gone = self._kept.popitem(last=False)
            os.close(gone.fd)
        return kept

    def _open_and_classify(self, root: Path, rel: str) -> tuple[int, os.stat_result, bool]:
        # Worker thread: the jailed open, and (once per device) whether it is local.
        fd, st = open_in_jail(root, rel)
        return fd, st, self._is_local(st.st_dev)

    def _forget(self, key: Key) -> None:
        old = self._kept.pop(key, None)
        if old is not None:
            os.close(old.fd)

    def __len__(self) -> int:
        return len(self._kept)

    def close(self) -> None:
        """Close every kept file (service stop)."""
        self._checks.cancel_all()
        while self._kept:
            _, kept = self._kept.popitem()
            os.close(kept.fd)


def _reopen(fd: int) -> int:
    """A new open file description of the inode behind our fd (procfs magic link)."""
    return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)


def _wrap(fd: int) -> tuple[BinaryIO, os.stat_result]:
    try:
        st = os.fstat(fd)
        return os.fdopen(fd, "rb"), st
    except BaseException:
        os.close(fd)
        raise
