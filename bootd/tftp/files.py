"""Files served by TFTP: checked off the loop, then pread through the page cache, one fd per file.

Resolving a requested name (a realpath walk inside tftp.root), stat and open run
in a worker thread: on a network filesystem any of them can wait on the server.
A checked file is then trusted for `VALID` seconds, as nginx's open_file_cache
does, so the 640 RRQs of a storm for ipxe.efi cost the loop no system call at all
before their first block. Blocks are read with pread in the loop, which only
touches the page cache for a file on a local filesystem; a file on a network
filesystem is read whole in the worker thread instead and served from memory
(TFTP serves boot loaders: a few MB), within the packet-cache budget.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from bootd.fsinfo import Ident, LocalDevices, OutsideRoot, file_ident, open_regular_inside
from bootd.proto.tftp.packets import ErrorCode
from bootd.singleflight import SingleFlight
from bootd.tftp.jail import Refused, jailed

# Seconds a checked name is served without looking at the filesystem again: a file
# replaced or deleted in tftp.root is seen by requests that come this much later.
VALID = 1.0
# Open files kept for reuse. Firmware asks for a handful of binaries; the cap only
# matters if a client walks many names. Evicted files close once no transfer reads them.
MAX_CACHED_FILES = 256
# Names found missing, remembered for `VALID` seconds like files (PXELINUX walks up to
# ten config names per client, most of them shared: C0A8, C0A, ...). Kept apart from the
# files, so a client walking names cannot push the boot loaders out.
MAX_MISSING_NAMES = 4096

# DATA packets kept in memory, shared by every transfer of a file at one blksize: a storm
# of 640 fetches of ipxe.efi builds each packet once. Bounded in total, and per file by
# blksize variants (clients choose blksize; a hostile one could walk them all). Copies of
# files on network filesystems come out of the same budget.
MAX_PACKET_CACHE_BYTES = 256 << 20
MAX_BLKSIZES_PER_FILE = 4
# Per-packet memory beyond its bytes (CPython bytes object header, list slot).
_PACKET_OVERHEAD = 48

# Per-client generated iPXE scripts, served when no such file exists in the root.
# Some NIC firmware (Dell E810) fetches autoexec.ipxe and never falls back.
GENERATED = frozenset({"autoexec.ipxe", "config.ipxe"})


class Generated:
    """A name in GENERATED with no such file in the root: a per-client script is served."""

    __slots__ = ("checked",)

    def __init__(self, checked: float) -> None:
        self.checked = checked


class SharedFile:
    """A ByteSource over one open file; every transfer of it shares the fd and page cache."""

    def __init__(
        self, fd: int, key: Ident, cache: FileCache, checked: float, data: bytes | None = None
    ) -> None:
        self.fd = fd
        self.key = key
        self.refs = 0
        self.evicted = False
        self.cached_bytes = 0
        # When the name was last checked against the filesystem (cache clock).
        self.checked = checked
        # The whole file, for one on a network filesystem (its reads never touch the loop).
        self.data = data
        self._cache = cache
        self._packets: dict[int, list[bytes | None]] = {}

    def packets(self, blksize: int) -> list[bytes | None] | None:
        """Shared DATA packet slots for this blksize, or None when over the memory budget."""
        slots = self._packets.get(blksize)
        if slots is None and not self.evicted and len(self._packets) < MAX_BLKSIZES_PER_FILE:
            n = self.size // blksize + 1
            cost = self.size + n * (4 + _PACKET_OVERHEAD)
            if self._cache.reserve(cost):
                self.cached_bytes += cost
                slots = self._packets[blksize] = [None] * n
        return slots

    @property
    def size(self) -> int:
        """File size when it was opened."""
        return self.key[2]

    def read(self, offset: int, length: int) -> bytes:
        """pread (no per-transfer copy, no shared offset), or a slice of the in-memory copy."""
        if self.data is not None:
            return self.data[offset : offset + length]
        return os.pread(self.fd, length, offset)


_Opened = tuple[int, Ident, bytes | None] | None  # None: a generated script


class FileCache:
    """Bounded LRU of checked, open files by (root, name); changed files reopen."""

    def __init__(
        self,
        max_files: int = MAX_CACHED_FILES,
        valid: float = VALID,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_files
        self.valid = valid
        self.clock = clock
        self._files: OrderedDict[tuple[str, str], SharedFile | Generated] = OrderedDict()
        self._checks: SingleFlight[tuple[str, str], SharedFile | Generated] = SingleFlight()
        # (root, name) -> when it was found missing.
        self._missing: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._is_local = LocalDevices()
        self.packet_bytes = 0
        self.checks = 0  # names checked in the worker thread (misses and expiries)

    def reserve(self, nbytes: int) -> bool:
        """Take nbytes of the packet-cache budget if it is there."""
        if self.packet_bytes + nbytes > MAX_PACKET_CACHE_BYTES:
            return False
        self.packet_bytes += nbytes
        return True

    def fresh(self, root: Path, name: str) -> SharedFile | Generated | None:
        """The file (or generated script) for name if it was checked under `valid` ago; no I/O.

        Raises Refused(FILE_NOT_FOUND) if name was found missing under `valid` ago.
        """
        key = (str(root), name)
        f = self._files.get(key)
        if f is not None and self.clock() - f.checked < self.valid:
            self._files.move_to_end(key)
            return f
        missing = self._missing.get(key)
        if missing is not None and self.clock() - missing < self.valid:
            raise _not_found()
        return None

    async def check(self, root: Path, name: str) -> SharedFile | Generated:
        """Resolve, stat and open name in a worker thread (one check per name however many
        requests wait); raises Refused with error 1 or 2."""
        key = (str(root), name)
        # Shielded: a request that is dropped must not cancel the check others wait for.
        return await self._checks.run(key, lambda: self._check(key, root, name))

    async def _check(self, key: tuple[str, str], root: Path, name: str) -> SharedFile | Generated:
        self.checks += 1
        old = self._files.get(key)
        known = old.key if isinstance(old, SharedFile) else None
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(None, self._open, root, name, known)
        try:
            opened = await asyncio.shield(work)
        except Refused as r:
            self._forget(key)
            if r.reason == "not_found":
                self._missing[key] = self.clock()
                self._missing.move_to_end(key)
                while len(self._missing) > MAX_MISSING_NAMES:
                    self._missing.popitem(last=False)
            raise
        except asyncio.CancelledError:  # the service is stopping: close what the thread opens
            work.add_done_callback(_close_opened)
            raise
        self._missing.pop(key, None)
        now = self.clock()
        old = self._files.get(key)
        if opened is None:
            if isinstance(old, Generated):
                old.checked = now
                self._files.move_to_end(key)
                return old
            self._forget(key)
            g = self._files[key] = Generated(now)
            self._trim()
            return g
        fd, ident, data = opened
        if isinstance(old, SharedFile) and old.key == ident and not old.evicted:
            os.close(fd)
            old.checked = now
            self._files.move_to_end(key)
            return old
        self._forget(key)
        if data is not None and not self.reserve(len(data)):
            data = None  # over budget: pread, from the loop, like a local file
        f = SharedFile(fd, ident, self, now, data)
        if data is not None:
            f.cached_bytes = len(data)
        self._files[key] = f
        self._trim()
        return f

    def _open(self, root: Path, name: str, known: Ident | None = None) -> _Opened:
        """Worker thread: the jailed open, checked after the fact, and its content if remote
        (unless it is still the `known` file, whose copy the cache already holds)."""
        real_root, path = jailed(root, name)
        if path[len(real_root) :].lstrip("/") in GENERATED and not os.path.lexists(path):
            return None
        try:
            fd, st = open_regular_inside(path, real_root)
        except FileNotFoundError:
            raise _not_found() from None
        except OutsideRoot:
            raise Refused(
                ErrorCode.ACCESS_VIOLATION, "path leads outside the TFTP root", "symlink"
            ) from None
        except IsADirectoryError:
            raise Refused(ErrorCode.FILE_NOT_FOUND, "not a regular file", "not_found") from None
        except OSError as exc:
            raise Refused(ErrorCode.ACCESS_VIOLATION, exc.strerror or "denied", "denied") from None
        try:
            data = None
            ident = file_ident(st)
            if (
                ident != known
                and not self._is_local(st.st_dev)
                and st.st_size <= MAX_PACKET_CACHE_BYTES
            ):
                data = _read_all(fd, st.st_size)
                if len(data) != st.st_size:  # changing under us: read it as it goes, by pread
                    data = None
        except BaseException:
            os.close(fd)
            raise
        return fd, ident, data

    def _trim(self) -> None:
        while len(self._files) > self._max:
            self._forget(next(iter(self._files)))

    def _forget(self, key: tuple[str, str]) -> None:
        f = self._files.pop(key, None)
        if not isinstance(f, SharedFile):
            return
        f.evicted = True
        # In-flight transfers keep their packet list alive; new ones will not use it.
        self.packet_bytes -= f.cached_bytes
        f.cached_bytes = 0
        if f.refs == 0:
            os.close(f.fd)

    def acquire(self, f: SharedFile) -> SharedFile:
        """A transfer starts reading f (right after fresh() or check() returned it)."""
        f.refs += 1
        return f

    def release(self, f: SharedFile) -> None:
        """A transfer is done with the file."""
        f.refs -= 1
        if f.refs == 0 and f.evicted:
            os.close(f.fd)

    def close(self) -> None:
        """Close every cached file not in use; cancel checks in flight."""
        self._checks.cancel_all()
        for key in list(self._files):
            self._forget(key)
        self._missing.clear()

    def __len__(self) -> int:
        return len(self._files)


def _not_found() -> Refused:
    return Refused(ErrorCode.FILE_NOT_FOUND, "file not found", "not_found")


def _close_opened(work: asyncio.Future[_Opened]) -> None:
    if not work.cancelled() and work.exception() is None:
        opened = work.result()
        if opened is not None:
            os.close(opened[0])


def _read_all(fd: int, size: int) -> bytes:
    """The whole file (as it is now: a short read ends it)."""
    parts, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, min(size - offset, 1 << 20), offset)
        if not chunk:
            break
        parts.append(chunk)
        offset += len(chunk)
    return b"".join(parts)


def ipxe_chain_script(base_url: str, mac: str | None) -> bytes:
    """An iPXE script chaining to this client's boot script (iPXE fills in an unknown MAC)."""
    who = mac if mac is not None else "${netX/mac}"
    return (
        "#!ipxe\n"
        f"# generated by bootd for {mac or 'a client not in the inventory'}\n"
        f"chain --replace {base_url}/boot/v1/bootscript?mac={who}\n"
    ).encode()
