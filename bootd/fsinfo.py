"""Which filesystem a file lives on, so callers know whether a syscall on it can wait on a network.

An open() or read() on NFS (close-to-open consistency, no data in the page cache)
or any other network filesystem can wait on its server; a hung server would then
freeze the event loop. Services serve files from local filesystems in the loop and
keep everything else off it.
"""

from __future__ import annotations

import os
import stat

# Filesystems whose calls never wait on a network peer (mountinfo's type field).
# Anything else (nfs, cifs, lustre, gpfs, ceph, fuse.*, 9p, ...) or unknown: not local.
LOCAL_FILESYSTEMS = frozenset(
    {
        "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "bcachefs", "jfs", "reiserfs",
        "tmpfs", "ramfs", "overlay", "squashfs", "erofs", "iso9660", "udf", "vfat", "exfat",
    }
)  # fmt: skip
MOUNTINFO = "/proc/self/mountinfo"

# What makes an open file "the same file" to a cache: a rename or rewrite changes it.
Ident = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


def file_ident(st: os.stat_result) -> Ident:
    """The identity a cache compares to tell whether a name still names the same content."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def filesystem_type(dev: int, mountinfo: str = MOUNTINFO) -> str | None:
    """The filesystem type mounted from device `dev` (an st_dev), per mountinfo; None if unknown."""
    want = f"{os.major(dev)}:{os.minor(dev)}"
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                # id parent major:minor root mountpoint options [optional...] - type source
                if len(fields) > 2 and fields[2] == want and "-" in fields:
                    i = fields.index("-")
                    return fields[i + 1] if i + 1 < len(fields) else None
    except OSError:
        return None
    return None


class LocalDevices:
    """st_dev → on a local filesystem? Read from mountinfo once per device (call it off the loop)."""

    def __init__(self) -> None:
        self._known: dict[int, bool] = {}

    def __call__(self, dev: int) -> bool:
        local = self._known.get(dev)
        if local is None:
            local = self._known[dev] = filesystem_type(dev) in LOCAL_FILESYSTEMS
        return local


PROC_FD = "/proc/self/fd"


def opened_inside(fd: int, real_root: str) -> bool:
    """Whether the file open as fd lies under real_root (a resolved path), per the kernel.

    Checking the resolved name before opening leaves a window: a path component
    swapped for a symlink in between is followed by open(). What was opened is what
    counts. Without procfs there is nothing to ask; the name check stands alone.
    """
    try:
        opened = os.readlink(f"{PROC_FD}/{fd}")
    except OSError:
        return not os.path.isdir(PROC_FD)
    return opened.startswith(real_root.rstrip("/") + "/")


class OutsideRoot(Exception):
    """What was opened lies outside the root it was asked under (a symlink led out)."""


def open_regular_inside(path: str, real_root: str) -> tuple[int, os.stat_result]:
    """Open path (already resolved under real_root) read-only, as the jails of HTTP and TFTP
    do; OutsideRoot if what was opened lies elsewhere, IsADirectoryError if it is not a
    regular file, OSError from open()."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if not opened_inside(fd, real_root):  # a symlink swapped in since it was resolved
            raise OutsideRoot(path)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(path)
    except BaseException:
        os.close(fd)
        raise
    return fd, st
