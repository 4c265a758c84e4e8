"""File side of the TFTP service: jail, shared fds, shared packet cache and its bounds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bootd.proto.tftp.blocks import OctetBlocks
from bootd.proto.tftp.packets import ErrorCode, decode
from bootd.tftp import files
from bootd.tftp.files import FileCache, ipxe_chain_script
from bootd.tftp.jail import Refused, jailed


def jailed_path(root: Path, name: str) -> str:
    return jailed(root, name)[1]


def test_jail_accepts_inside_and_refuses_outside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "f").write_bytes(b"x")
    assert jailed_path(root, "/a/f") == str((root / "a" / "f").resolve())
    assert jailed_path(root, "a\\f") == str((root / "a" / "f").resolve())
    for name, reason in [("a/../../x", "traversal"), ("//etc", "absolute"), ("a\0b", "nul")]:
        with pytest.raises(Refused) as exc:
            jailed_path(root, name)
        assert exc.value.code == ErrorCode.ACCESS_VIOLATION and exc.value.reason == reason
    (root / "out").symlink_to("/etc")
    with pytest.raises(Refused) as exc:
        jailed_path(root, "out/passwd")
    assert exc.value.reason == "symlink"


def test_same_file_shares_fd_and_packets_replaced_file_reopens(tmp_path: Path) -> None:
    path = tmp_path / "ipxe.efi"
    old = os.urandom(5000)
    path.write_bytes(old)
    cache = FileCache()
    a, b = cache.acquire(str(path)), cache.acquire(str(path))
    assert a is b and a.refs == 2
    slots = a.packets(512)
    assert slots is not None and a.packets(512) is slots and len(slots) == 10
    t1 = OctetBlocks(a, 512, slots)
    t2 = OctetBlocks(b, 512, a.packets(512))
    p = t1.packet(3)
    assert t2.packet(3) is p  # built once, shared by both transfers
    assert decode(p).block == 3  # type: ignore[union-attr]
    # Replaced on disk (new inode): new requests see the new file, old ones keep theirs.
    tmp = tmp_path / "new"
    tmp.write_bytes(b"new content")
    tmp.rename(path)
    c = cache.acquire(str(path))
    assert c is not a and c.read(0, 100) == b"new content"
    assert a.read(0, 100) == old[:100]  # transfers in flight keep reading the old file
    for f in (a, b):
        cache.release(f)
    with pytest.raises(OSError):
        os.fstat(a.fd)  # evicted and released: closed
    cache.release(c)
    cache.close()
    assert cache.packet_bytes == 0


def test_packet_cache_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "MAX_PACKET_CACHE_BYTES", 30_000)
    cache = FileCache()
    paths = []
    for i in range(3):
        p = tmp_path / f"f{i}"
        p.write_bytes(os.urandom(10_000))
        paths.append(p)
    f0 = cache.acquire(str(paths[0]))
    # At most MAX_BLKSIZES_PER_FILE variants per file: a client walking blksizes gets pread.
    got = [f0.packets(bs) for bs in (512, 1024, 1428, 1468, 1000)]
    assert [g is not None for g in got].count(True) <= files.MAX_BLKSIZES_PER_FILE
    assert cache.packet_bytes <= 30_000
    f1 = cache.acquire(str(paths[1]))
    assert f1.packets(512) is None  # over budget: served by pread, still correct
    blocks = OctetBlocks(f1, 512, None)
    assert decode(blocks.packet(1)).payload == paths[1].read_bytes()[:512]  # type: ignore[union-attr]


def test_chain_script() -> None:
    s = ipxe_chain_script("http://10.0.0.1:8080", "52:54:00:00:00:01").decode()
    assert s.startswith("#!ipxe\n")
    assert "chain --replace http://10.0.0.1:8080/boot/v1/bootscript?mac=52:54:00:00:00:01\n" in s
    assert "mac=${netX/mac}" in ipxe_chain_script("http://h:1", None).decode()
