"""A cpio "newc" archive writer: what the kernel unpacks as an initramfs."""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass, field
from pathlib import Path

# cpio newc (SVR4 without CRC): magic, then 13 eight-digit hex fields, then the
# NUL-terminated name padded to 4 bytes, then the data padded to 4 bytes.
MAGIC = b"070701"
TRAILER = "TRAILER!!!"


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


@dataclass
class CpioWriter:
    """Collects entries in order; `gzip_bytes()` gives the compressed archive."""

    _parts: list[bytes] = field(default_factory=list)
    _ino: int = 1

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        name_b = name.lstrip("/").encode() + b"\0"
        fields = (
            self._ino,
            mode,
            0,  # uid: root
            0,  # gid: root
            1,  # nlink
            0,  # mtime: fixed so the archive is reproducible
            len(data),
            0,
            0,  # dev major, minor
            rdev[0],
            rdev[1],
            len(name_b),
            0,  # check (unused by newc)
        )
        self._ino += 1
        header = MAGIC + b"".join(b"%08X" % v for v in fields)
        self._parts += [header, name_b, _pad4(len(header) + len(name_b)), data, _pad4(len(data))]

    def directory(self, name: str, perm: int = 0o755) -> None:
        """Add a directory."""
        self._entry(name, stat.S_IFDIR | perm)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        """Add a regular file with the given contents."""
        self._entry(name, stat.S_IFREG | perm, data)

    def copy(self, name: str, src: Path, perm: int | None = None) -> None:
        """Add a regular file from the host, keeping its permission bits unless given."""
        mode = perm if perm is not None else stat.S_IMODE(src.stat().st_mode)
        self.file(name, src.read_bytes(), mode)

    def symlink(self, name: str, target: str) -> None:
        """Add a symbolic link."""
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        """Add a character device node (no root needed: it is only bytes here)."""
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def raw(self) -> bytes:
        """The uncompressed archive, trailer included."""
        trailer = CpioWriter(_ino=0)
        trailer._entry(TRAILER, 0)
        return b"".join(self._parts + trailer._parts)

    def gzip_bytes(self) -> bytes:
        """The archive gzip-compressed with a fixed mtime (reproducible)."""
        return gzip.compress(self.raw(), compresslevel=6, mtime=0)
