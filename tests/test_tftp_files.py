"""File side of the TFTP service: jail, checks off the loop, shared fds and packets, bounds."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bootd import fsinfo
from bootd.proto.tftp.blocks import OctetBlocks
from bootd.proto.tftp.packets import ErrorCode, decode
from bootd.tftp import files
from bootd.tftp.files import FileCache, Generated, SharedFile, ipxe_chain_script
from bootd.tftp.jail import Refused, clean, jailed


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def jailed_path(root: Path, name: str) -> str:
    return jailed(root, name)[1]


async def shared(cache: FileCache, root: Path, name: str) -> SharedFile:
    f = await cache.check(root, name)
    assert isinstance(f, SharedFile)
    return cache.acquire(f)


def test_jail_accepts_inside_and_refuses_outside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "f").write_bytes(b"x")
    assert jailed_path(root, "/a/f") == str((root / "a" / "f").resolve())
    assert jailed_path(root, "a\\f") == str((root / "a" / "f").resolve())
    assert clean("\\a\\f") == "a/f"
    for name, reason in [("a/../../x", "traversal"), ("//etc", "absolute"), ("a\0b", "nul")]:
        with pytest.raises(Refused) as exc:
            jailed_path(root, name)
        assert exc.value.code == ErrorCode.ACCESS_VIOLATION and exc.value.reason == reason
    (root / "out").symlink_to("/etc")
    with pytest.raises(Refused) as exc:
        jailed_path(root, "out/passwd")
    assert exc.value.reason == "symlink"


async def test_same_file_shares_fd_and_packets_replaced_file_reopens(tmp_path: Path) -> None:
    path = tmp_path / "ipxe.efi"
    old = os.urandom(5000)
    path.write_bytes(old)
    clock = Clock()
    cache = FileCache(clock=clock)
    a, b = await shared(cache, tmp_path, "ipxe.efi"), await shared(cache, tmp_path, "ipxe.efi")
    assert a is b and a.refs == 2 and a.data is None  # local: read by pread
    slots = a.packets(512)
    assert slots is not None and a.packets(512) is slots and len(slots) == 10
    t1 = OctetBlocks(a, 512, slots)
    t2 = OctetBlocks(b, 512, a.packets(512))
    p = t1.packet(3)
    assert t2.packet(3) is p  # built once, shared by both transfers
    assert decode(p).block == 3  # type: ignore[union-attr]
    # Replaced on disk (new inode): requests after the entry expires see the new file,
    # transfers in flight keep theirs.
    tmp = tmp_path / "new"
    tmp.write_bytes(b"new content")
    tmp.rename(path)
    assert cache.fresh(tmp_path, "ipxe.efi") is a  # still trusted for `valid` seconds
    clock.t += files.VALID
    assert cache.fresh(tmp_path, "ipxe.efi") is None
    c = await shared(cache, tmp_path, "ipxe.efi")
    assert c is not a and c.read(0, 100) == b"new content"
    assert a.read(0, 100) == old[:100]
    for f in (a, b):
        cache.release(f)
    with pytest.raises(OSError):
        os.fstat(a.fd)  # evicted and released: closed
    cache.release(c)
    cache.close()
    assert cache.packet_bytes == 0


async def test_unchanged_file_is_checked_again_but_kept(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"same")
    clock = Clock()
    cache = FileCache(clock=clock)
    a = await cache.check(tmp_path, "f")
    clock.t += 5
    assert cache.fresh(tmp_path, "f") is None
    assert await cache.check(tmp_path, "f") is a and cache.checks == 2
    assert cache.fresh(tmp_path, "f") is a
    cache.close()


async def test_one_check_for_many_concurrent_requests(tmp_path: Path) -> None:
    (tmp_path / "ipxe.efi").write_bytes(b"x" * 100)
    cache = FileCache(clock=Clock())
    got = await asyncio.gather(*(cache.check(tmp_path, "ipxe.efi") for _ in range(50)))
    assert cache.checks == 1 and all(g is got[0] for g in got)
    cache.close()


async def test_a_slow_filesystem_does_not_stall_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "f").write_bytes(b"x")
    cache = FileCache()
    real_open = FileCache._open
    seen: list[str] = []

    def hung(self: FileCache, root: Path, name: str, known: Any = None) -> object:
        seen.append(threading.current_thread().name)
        time.sleep(0.5)  # a stat or open on an NFS mount whose server stopped answering
        return real_open(self, root, name, known)

    monkeypatch.setattr(FileCache, "_open", hung)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.get_running_loop().create_task(ticker())
    f = await cache.check(tmp_path, "f")
    t.cancel()
    assert isinstance(f, SharedFile) and seen and seen[0] != threading.current_thread().name
    assert ticks >= 20  # the loop went on while the check waited
    cache.close()


async def test_file_on_a_network_filesystem_is_served_from_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fsinfo, "LOCAL_FILESYSTEMS", frozenset())  # every mount is "remote"
    content = os.urandom(3000)
    (tmp_path / "ipxe.efi").write_bytes(content)
    cache = FileCache()
    f = await shared(cache, tmp_path, "ipxe.efi")
    assert f.data == content and cache.packet_bytes == len(content)
    # Reads never reach the file again: changing it in place does not show.
    with open(tmp_path / "ipxe.efi", "r+b") as out:
        out.write(b"\0" * 3000)
    assert f.read(1000, 512) == content[1000:1512]
    cache.release(f)
    cache.close()
    assert cache.packet_bytes == 0


async def test_remote_copy_respects_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fsinfo, "LOCAL_FILESYSTEMS", frozenset())
    monkeypatch.setattr(files, "MAX_PACKET_CACHE_BYTES", 4000)
    (tmp_path / "a").write_bytes(os.urandom(3000))
    (tmp_path / "b").write_bytes(os.urandom(3000))
    cache = FileCache()
    a, b = await shared(cache, tmp_path, "a"), await shared(cache, tmp_path, "b")
    assert a.data is not None and b.data is None  # over budget: pread, still correct
    assert b.read(0, 10) == (tmp_path / "b").read_bytes()[:10]
    cache.close()


async def test_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "loop").symlink_to("loop")
    cache = FileCache()
    for name, code, reason in [
        ("missing", ErrorCode.FILE_NOT_FOUND, "not_found"),
        ("dir", ErrorCode.FILE_NOT_FOUND, "not_found"),
        ("loop", ErrorCode.ACCESS_VIOLATION, "denied"),
    ]:
        with pytest.raises(Refused) as exc:
            await cache.check(tmp_path, name)
        assert (exc.value.code, exc.value.reason) == (code, reason)
    # A symlink swapped in between resolving the name and opening it: what was opened
    # is checked, so the swap is refused.
    (tmp_path / "ok").write_bytes(b"x")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.write_bytes(b"secret")
    monkeypatch.setattr(files, "jailed", lambda root, name: (str(tmp_path), str(outside)))
    with pytest.raises(Refused) as exc:
        await cache.check(tmp_path, "ok")
    assert exc.value.reason == "symlink"
    assert len(cache) == 0
    cache.close()


async def test_generated_names_until_a_real_file_appears(tmp_path: Path) -> None:
    clock = Clock()
    cache = FileCache(clock=clock)
    g = await cache.check(tmp_path, "autoexec.ipxe")
    assert isinstance(g, Generated) and cache.fresh(tmp_path, "autoexec.ipxe") is g
    (tmp_path / "autoexec.ipxe").write_bytes(b"#!ipxe\n")
    clock.t += files.VALID
    f = await cache.check(tmp_path, "autoexec.ipxe")
    assert isinstance(f, SharedFile) and f.read(0, 100) == b"#!ipxe\n"
    cache.close()


async def test_open_files_are_bounded(tmp_path: Path) -> None:
    cache = FileCache(max_files=2)
    opened = []
    for i in range(4):
        (tmp_path / f"f{i}").write_bytes(b"x")
        f = await shared(cache, tmp_path, f"f{i}")
        cache.release(f)
        opened.append(f)
    assert len(cache) == 2
    for f in opened[:2]:  # least recently used, evicted, no transfer reading: closed
        assert f.evicted
    assert [f.evicted for f in opened[2:]] == [False, False]
    os.fstat(opened[3].fd)
    cache.close()
    assert all(f.evicted for f in opened)


async def test_packet_cache_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "MAX_PACKET_CACHE_BYTES", 30_000)
    cache = FileCache()
    for i in range(3):
        (tmp_path / f"f{i}").write_bytes(os.urandom(10_000))
    f0 = await shared(cache, tmp_path, "f0")
    # At most MAX_BLKSIZES_PER_FILE variants per file: a client walking blksizes gets pread.
    got = [f0.packets(bs) for bs in (512, 1024, 1428, 1468, 1000)]
    assert [g is not None for g in got].count(True) <= files.MAX_BLKSIZES_PER_FILE
    assert cache.packet_bytes <= 30_000
    f1 = await shared(cache, tmp_path, "f1")
    assert f1.packets(512) is None  # over budget: served by pread, still correct
    blocks = OctetBlocks(f1, 512, None)
    assert decode(blocks.packet(1)).payload == (tmp_path / "f1").read_bytes()[:512]  # type: ignore[union-attr]
    cache.close()


def test_chain_script() -> None:
    s = ipxe_chain_script("http://10.0.0.1:8080", "52:54:00:00:00:01").decode()
    assert s.startswith("#!ipxe\n")
    assert "chain --replace http://10.0.0.1:8080/boot/v1/bootscript?mac=52:54:00:00:00:01\n" in s
    assert "mac=${netX/mac}" in ipxe_chain_script("http://h:1", None).decode()


async def test_a_check_cancelled_at_stop_closes_what_it_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "f").write_bytes(b"x")
    real_open = FileCache._open
    go = threading.Event()

    def slow(self: FileCache, root: Path, name: str, known: object = None) -> object:
        go.wait(5)
        return real_open(self, root, name)

    monkeypatch.setattr(FileCache, "_open", slow)
    before = len(os.listdir("/proc/self/fd"))
    cache = FileCache()
    waiter = asyncio.ensure_future(cache.check(tmp_path, "f"))
    await asyncio.sleep(0.05)
    cache.close()  # the service stops while the thread is still in open()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    go.set()
    for _ in range(100):
        await asyncio.sleep(0.01)
        if len(os.listdir("/proc/self/fd")) == before:
            break
    assert len(os.listdir("/proc/self/fd")) == before


async def test_unchanged_remote_file_is_not_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fsinfo, "LOCAL_FILESYSTEMS", frozenset())
    (tmp_path / "f").write_bytes(b"y" * 1000)
    reads = 0
    real = files._read_all

    def counting(fd: int, size: int) -> bytes:
        nonlocal reads
        reads += 1
        return real(fd, size)

    monkeypatch.setattr(files, "_read_all", counting)
    clock = Clock()
    cache = FileCache(clock=clock)
    a = await cache.check(tmp_path, "f")
    clock.t += 5
    assert await cache.check(tmp_path, "f") is a and reads == 1
    cache.close()


async def test_missing_names_are_remembered_apart_from_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "MAX_MISSING_NAMES", 3)
    (tmp_path / "ipxe.efi").write_bytes(b"x")
    clock = Clock()
    cache = FileCache(max_files=1, clock=clock)
    f = await cache.check(tmp_path, "ipxe.efi")
    for i in range(5):  # a PXELINUX client walking config names
        with pytest.raises(Refused):
            await cache.check(tmp_path, f"pxelinux.cfg/C0A8{i}")
    assert cache.fresh(tmp_path, "ipxe.efi") is f  # misses did not push the file out
    with pytest.raises(Refused) as exc:
        cache.fresh(tmp_path, "pxelinux.cfg/C0A84")  # remembered: no thread hop
    assert exc.value.code == ErrorCode.FILE_NOT_FOUND
    assert cache.fresh(tmp_path, "pxelinux.cfg/C0A80") is None  # oldest miss forgotten
    # Created meanwhile: seen once the miss expires.
    (tmp_path / "pxelinux.cfg").mkdir()
    (tmp_path / "pxelinux.cfg" / "C0A84").write_bytes(b"default local\n")
    clock.t += files.VALID
    assert cache.fresh(tmp_path, "pxelinux.cfg/C0A84") is None
    assert isinstance(await cache.check(tmp_path, "pxelinux.cfg/C0A84"), SharedFile)
    cache.close()
