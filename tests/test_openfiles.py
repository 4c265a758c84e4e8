"""OpenFiles: image files kept open between requests, checked again after `valid` seconds."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from bootd import fsinfo
from bootd.fsinfo import OutsideRoot, filesystem_type
from bootd.http.openfiles import OpenFiles


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "images"
    r.mkdir()
    (r / "vmlinuz").write_bytes(b"kernel-1")
    return r


async def read(files: OpenFiles, root: Path, rel: str) -> bytes:
    f, st = await files.open(root, rel)
    with f:
        data = f.read()
    assert len(data) == st.st_size
    return data


async def test_one_check_serves_many_requests_each_with_its_own_position(root: Path) -> None:
    files = OpenFiles(clock=Clock())
    a, _ = await files.open(root, "vmlinuz")
    b, _ = await files.open(root, "vmlinuz")
    with a, b:
        assert a.fileno() != b.fileno()
        a.seek(3)
        assert b.read() == b"kernel-1"  # its own file description: a's seek is not b's
        assert a.read() == b"nel-1"
    assert files.checks == 1 and len(files) == 1
    files.close()


async def test_a_replaced_file_is_served_once_the_entry_expires(root: Path) -> None:
    clock = Clock()
    files = OpenFiles(valid=1.0, clock=clock)
    assert await read(files, root, "vmlinuz") == b"kernel-1"
    tmp = root / ".new"
    tmp.write_bytes(b"kernel-2, longer")
    tmp.rename(root / "vmlinuz")  # how images are deployed: a new inode under the old name
    clock.t += 0.5
    assert await read(files, root, "vmlinuz") == b"kernel-1"  # still within `valid`
    clock.t += 0.6
    assert await read(files, root, "vmlinuz") == b"kernel-2, longer"
    assert files.checks == 2
    files.close()


async def test_an_unchanged_file_keeps_its_descriptor(root: Path) -> None:
    clock = Clock()
    files = OpenFiles(valid=1.0, clock=clock)
    await read(files, root, "vmlinuz")
    before = fds()
    for _ in range(5):
        clock.t += 2
        assert await read(files, root, "vmlinuz") == b"kernel-1"
    assert files.checks == 6 and fds() == before  # checked each time, nothing leaked
    files.close()


async def test_deleted_missing_and_directories_raise_and_are_forgotten(root: Path) -> None:
    clock = Clock()
    files = OpenFiles(clock=clock)
    await read(files, root, "vmlinuz")
    (root / "vmlinuz").unlink()
    clock.t += 5
    with pytest.raises(FileNotFoundError):
        await files.open(root, "vmlinuz")
    assert len(files) == 0
    with pytest.raises(FileNotFoundError):
        await files.open(root, "nothing")
    (root / "dir").mkdir()
    with pytest.raises(IsADirectoryError):
        await files.open(root, "dir")
    assert len(files) == 0
    files.close()


async def test_a_symlink_leading_out_is_refused_even_after_being_kept(
    root: Path, tmp_path: Path
) -> None:
    clock = Clock()
    files = OpenFiles(clock=clock)
    (tmp_path / "secret").write_bytes(b"secret")
    os.symlink(tmp_path / "secret", root / "escape")
    with pytest.raises(OutsideRoot):
        await files.open(root, "escape")
    # A link swapped in after the check: served as checked until it expires, then refused.
    (root / "swap").write_bytes(b"fine")
    assert await read(files, root, "swap") == b"fine"
    (root / "swap").unlink()
    os.symlink(tmp_path / "secret", root / "swap")
    assert await read(files, root, "swap") == b"fine"  # the kept inode, never the new target
    clock.t += 5
    with pytest.raises(OutsideRoot):
        await files.open(root, "swap")
    files.close()


def test_a_link_swapped_in_between_resolving_and_opening_is_refused(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bootd.http.openfiles import open_in_jail

    (tmp_path / "secret").write_bytes(b"secret")
    os.symlink(tmp_path / "secret", root / "raced")
    real_resolve = Path.resolve

    def before_the_swap(self: Path, strict: bool = False) -> Path:
        # What resolve() saw a moment before the link was put in place: a plain file.
        if self.name == "raced":
            return real_resolve(self.parent) / self.name
        return real_resolve(self, strict=strict)

    monkeypatch.setattr(Path, "resolve", before_the_swap)
    with pytest.raises(OutsideRoot):
        open_in_jail(root, "raced")


async def test_concurrent_requests_share_one_check(root: Path) -> None:
    files = OpenFiles(clock=Clock())
    results = await asyncio.gather(*(read(files, root, "vmlinuz") for _ in range(50)))
    assert results == [b"kernel-1"] * 50
    assert files.checks == 1
    files.close()


async def test_a_waiter_that_leaves_does_not_cancel_the_check(root: Path) -> None:
    files = OpenFiles(clock=Clock())
    first = asyncio.ensure_future(files.open(root, "vmlinuz"))
    second = asyncio.ensure_future(read(files, root, "vmlinuz"))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == b"kernel-1"
    assert files.checks == 1
    files.close()


async def test_least_recently_used_files_close_beyond_the_cap(root: Path) -> None:
    files = OpenFiles(max_files=3, clock=Clock())
    for i in range(10):
        (root / f"f{i}").write_bytes(b"%d" % i)
    before = fds()
    for i in range(10):
        assert await read(files, root, f"f{i}") == b"%d" % i
    assert len(files) == 3 and fds() == before + 3
    files.close()
    assert fds() == before


async def test_a_reused_descriptor_number_is_never_served(root: Path, tmp_path: Path) -> None:
    # A request that waited while its entry was evicted resumes with a closed fd whose
    # number may already belong to something else: /proc/self/fd/N is then another file.
    files = OpenFiles(clock=Clock())
    assert await read(files, root, "vmlinuz") == b"kernel-1"
    ((key, stale),) = files._kept.items()
    del files._kept[key]  # what eviction does: out of the table, fd closed
    os.close(stale.fd)
    (tmp_path / "other").write_bytes(b"not the kernel")
    other = os.open(tmp_path / "other", os.O_RDONLY)
    real_check = files._check
    resumed: list[bool] = []

    async def waited(k: tuple[str, str], r: Path, rel: str) -> Any:
        if not resumed:
            resumed.append(True)
            return stale  # the entry this request was given before the eviction
        return await real_check(k, r, rel)

    files._check = waited  # type: ignore[method-assign,assignment]
    try:
        assert other == stale.fd  # the lowest free number: the one just closed
        assert await read(files, root, "vmlinuz") == b"kernel-1"
        assert files.checks == 2  # noticed, checked again
        assert os.read(other, 100) == b"not the kernel"  # and left the other file alone
    finally:
        os.close(other)
    files.close()


async def test_without_procfs_every_request_opens_by_path(root: Path) -> None:
    files = OpenFiles(clock=Clock())
    files._reopen_ok = False
    assert await read(files, root, "vmlinuz") == b"kernel-1"
    (root / "vmlinuz").write_bytes(b"kernel-2")
    assert await read(files, root, "vmlinuz") == b"kernel-2"  # nothing kept
    assert len(files) == 0
    files.close()


def test_filesystem_type_reads_mountinfo(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "98 22 0:52 / /srv/images rw,relatime shared:40 master:3 - nfs4 head:/images rw,vers=4.2\n"
        "99 22 0:53 / /scratch rw - fuse.sshfs user@host:/ rw\n"
    )
    assert filesystem_type(os.makedev(8, 1), str(info)) == "ext4"
    assert filesystem_type(os.makedev(0, 52), str(info)) == "nfs4"
    assert filesystem_type(os.makedev(0, 53), str(info)) == "fuse.sshfs"
    assert filesystem_type(os.makedev(9, 9), str(info)) is None
    assert filesystem_type(os.makedev(8, 1), str(tmp_path / "missing")) is None
    # This test's own directory is on something real that mountinfo names.
    assert filesystem_type(os.stat(tmp_path).st_dev) is not None


async def test_files_on_network_filesystems_are_reopened_off_the_loop(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # NFS revalidates on open (close-to-open): a hung server must not stall the loop.
    monkeypatch.setattr(fsinfo, "LOCAL_FILESYSTEMS", frozenset())
    files = OpenFiles(clock=Clock())
    assert await read(files, root, "vmlinuz") == b"kernel-1"
    assert await read(files, root, "vmlinuz") == b"kernel-1"
    assert files.checks == 1 and files.thread_reopens == 2
    files.close()
    monkeypatch.undo()
    local = OpenFiles(clock=Clock())
    assert await read(local, root, "vmlinuz") == b"kernel-1"
    assert local.thread_reopens == 0  # pytest's tmp_path is on a local filesystem here
    local.close()
