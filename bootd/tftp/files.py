"""Files served by TFTP: pread through the page cache, one shared fd per file."""

from __future__ import annotations

import os
import stat
from collections import OrderedDict

from bootd.proto.tftp.packets import ErrorCode
from bootd.tftp.jail import Refused

# Open files kept for reuse. Firmware asks for a handful of binaries; the cap only
# matters if a client walks many names. Evicted files close once no transfer reads them.
MAX_CACHED_FILES = 256

# DATA packets kept in memory, shared by every transfer of a file at one blksize: a storm
# of 640 fetches of ipxe.efi builds each packet once. Bounded in total, and per file by
# blksize variants (clients choose blksize; a hostile one could walk them all).
MAX_PACKET_CACHE_BYTES = 256 << 20
MAX_BLKSIZES_PER_FILE = 4
# Per-packet memory beyond its bytes (CPython bytes object header, list slot).
_PACKET_OVERHEAD = 48

# Per-client generated iPXE scripts, served when no such file exists in the root.
# Some NIC firmware (Dell E810) fetches autoexec.ipxe and never falls back.
GENERATED = frozenset({"autoexec.ipxe", "config.ipxe"})


class SharedFile:
    """A ByteSource over one open file; every transfer of it shares the fd and page cache."""

    def __init__(self, fd: int, key: tuple[int, int, int, int], cache: FileCache) -> None:
        self.fd = fd
        self.key = key
        self.refs = 0
        self.evicted = False
        self.cached_bytes = 0
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
        """pread: no per-transfer copy of the file, no shared file offset."""
        return os.pread(self.fd, length, offset)


class FileCache:
    """Bounded LRU of open files keyed by real path; replaced files reopen."""

    def __init__(self, max_files: int = MAX_CACHED_FILES) -> None:
        self._max = max_files
        self._files: OrderedDict[str, SharedFile] = OrderedDict()
        self.packet_bytes = 0

    def reserve(self, nbytes: int) -> bool:
        """Take nbytes of the packet-cache budget if it is there."""
        if self.packet_bytes + nbytes > MAX_PACKET_CACHE_BYTES:
            return False
        self.packet_bytes += nbytes
        return True

    def acquire(self, path: str) -> SharedFile:
        """Open (or reuse) a regular file; raises Refused with error 1 or 2."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise Refused(ErrorCode.FILE_NOT_FOUND, "file not found", "not_found") from None
        except OSError as exc:
            raise Refused(ErrorCode.ACCESS_VIOLATION, exc.strerror or "denied", "denied") from None
        if not stat.S_ISREG(st.st_mode):
            raise Refused(ErrorCode.FILE_NOT_FOUND, "not a regular file", "not_found")
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        f = self._files.get(path)
        if f is None or f.key != key:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise Refused(
                    ErrorCode.ACCESS_VIOLATION, exc.strerror or "denied", "denied"
                ) from None
            if f is not None:
                self._evict(path)
            f = SharedFile(fd, key, self)
            self._files[path] = f
            while len(self._files) > self._max:
                self._evict(next(iter(self._files)))
        self._files.move_to_end(path)
        f.refs += 1
        return f

    def _evict(self, path: str) -> None:
        f = self._files.pop(path)
        f.evicted = True
        # In-flight transfers keep their packet list alive; new ones will not use it.
        self.packet_bytes -= f.cached_bytes
        f.cached_bytes = 0
        if f.refs == 0:
            os.close(f.fd)

    def release(self, f: SharedFile) -> None:
        """A transfer is done with the file."""
        f.refs -= 1
        if f.refs == 0 and f.evicted:
            os.close(f.fd)

    def close(self) -> None:
        """Close every cached file not in use."""
        for path in list(self._files):
            self._evict(path)

    def __len__(self) -> int:
        return len(self._files)


def ipxe_chain_script(base_url: str, mac: str | None) -> bytes:
    """An iPXE script chaining to this client's boot script (iPXE fills in an unknown MAC)."""
    who = mac if mac is not None else "${netX/mac}"
    return (
        "#!ipxe\n"
        f"# generated by bootd for {mac or 'a client not in the inventory'}\n"
        f"chain --replace {base_url}/boot/v1/bootscript?mac={who}\n"
    ).encode()
