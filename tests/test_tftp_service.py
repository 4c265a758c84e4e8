"""The TFTP service on loopback sockets: transfers, refusals, counters, timeline, reload."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bench.tftp.client import fetch, rrq
from bootd.boot.node import Node
from bootd.config import Config, parse_config
from bootd.daemon import Daemon
from bootd.proto.tftp.blocks import MemorySource, OctetBlocks
from bootd.proto.tftp.options import Negotiated
from bootd.proto.tftp.packets import Data, Error, OptionAck, decode, encode_ack
from bootd.proto.tftp.transfer import Outcome, ReadTransfer
from bootd.tftp.session import Session
from bootd.udpgso import GsoSender
from tests.helpers import write_config

MAC = "52:54:00:00:00:01"


@pytest.fixture
def root(cfg_dict: dict[str, Any]) -> Path:
    r = Path(cfg_dict["tftp"]["root"])
    (r / "ipxe.efi").write_bytes(os.urandom(300_000))
    (r / "sub").mkdir()
    (r / "sub" / "exact.bin").write_bytes(os.urandom(512 * 8))
    (r / "readme.txt").write_bytes(b"hello\nworld\r\n" * 100)
    return r


@pytest.fixture
async def tftpd(cfg_dict: dict[str, Any], root: Path, tmp_path: Path) -> AsyncIterator[Daemon]:
    cfg_dict["tftp"].update(enabled=True, max_transfers=4, timeout=1, retries=3)
    cfg_dict["shutdown_grace"] = 0.5  # tests leave stalled transfers behind on purpose
    d = Daemon(parse_config(cfg_dict), write_config(tmp_path, cfg_dict))
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


def addr(d: Daemon) -> tuple[str, int]:
    return ("127.0.0.1", d.config.tftp.port)


def with_tftp(d: Daemon, **changes: Any) -> Config:
    return d.config.model_copy(update={"tftp": d.config.tftp.model_copy(update=changes)})


def sample(d: Daemon, name: str, **labels: str) -> float:
    return d.metrics.registry.get_sample_value(name, labels) or 0.0


async def recv(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recvfrom(sock, 70000), timeout)


def udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    s.bind(("127.0.0.1", 0))
    return s


async def ask(d: Daemon, pkt: bytes) -> Error:
    with udp() as s:
        s.sendto(pkt, addr(d))
        reply, _ = await recv(s)
    err = decode(reply)
    assert isinstance(err, Error), err
    return err


async def ack_to_the_end(s: socket.socket, tid: tuple[str, int]) -> None:
    """Lockstep from block 1 already received: ACK each block, check the next, ACK the last."""
    block = 1
    while True:
        s.sendto(encode_ack(block), tid)
        data = decode((await recv(s))[0])
        assert isinstance(data, Data) and data.block == block + 1
        block += 1
        if len(data.payload) < 512:
            s.sendto(encode_ack(block), tid)
            return


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "opts",
    [{}, {"blksize": 1468, "tsize": True}, {"blksize": 1024, "windowsize": 16}],
)
async def test_fetch_is_byte_identical(tftpd: Daemon, root: Path, opts: dict[str, Any]) -> None:
    r = await fetch(addr(tftpd), "ipxe.efi", **opts)
    assert r.ok, r.error
    assert r.sha256 == sha(root / "ipxe.efi") and r.size == 300_000
    if opts.get("tsize"):
        assert r.options == {"tsize": "300000", "blksize": "1468"}
    assert sample(tftpd, "bootd_tftp_transfers_total", result="ok") == 1
    assert sample(tftpd, "bootd_tftp_bytes_total") == 300_000
    assert sample(tftpd, "bootd_tftp_active_transfers") == 0


async def test_options_capped_and_exact_multiple(tftpd: Daemon, root: Path) -> None:
    tftpd.services[0].reload(with_tftp(tftpd, max_blksize=1468))
    r = await fetch(addr(tftpd), "/sub/exact.bin", blksize=65464, windowsize=1000)
    assert r.ok and r.options == {"blksize": "1468", "windowsize": "64"}
    assert r.sha256 == sha(root / "sub" / "exact.bin")


@pytest.mark.parametrize("single_port", [False, True])
async def test_auto_blksize_is_the_path_mtu_less_headers(
    cfg_dict: dict[str, Any], root: Path, tmp_path: Path, single_port: bool
) -> None:
    # Loopback's MTU is 65536: every block size up to RFC 2348's largest fits unfragmented.
    cfg_dict["tftp"].update(enabled=True, single_port=single_port)
    d = Daemon(parse_config(cfg_dict), write_config(tmp_path, cfg_dict))
    await d.start()
    try:
        assert d.config.tftp.max_blksize == "auto"
        r = await fetch(addr(d), "ipxe.efi", blksize=65464)
        assert r.ok and r.options == {"blksize": "65464"}
        assert r.sha256 == sha(root / "ipxe.efi")
    finally:
        await d.stop()


async def test_tftpy_client(tftpd: Daemon, root: Path, tmp_path: Path) -> None:
    import tftpy

    out = tmp_path / "tftpy.out"
    client = tftpy.TftpClient("127.0.0.1", tftpd.config.tftp.port, {"blksize": 1400})
    await asyncio.to_thread(client.download, "ipxe.efi", str(out), timeout=2)
    assert sha(out) == sha(root / "ipxe.efi")


async def test_netascii(tftpd: Daemon, root: Path) -> None:
    r = await fetch(addr(tftpd), "readme.txt", mode="netascii", tsize=True, keep=True)
    assert r.ok
    assert r.data == b"hello\r\nworld\r\0\r\n" * 100
    assert "tsize" not in r.options  # not granted: the netascii size is not known up front


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../etc/passwd", "traversal"),
        ("sub/../../x", "traversal"),
        ("..\\..\\etc\\passwd", "traversal"),
        ("//etc/passwd", "absolute"),
        ("escape/passwd", "symlink"),
    ],
)
async def test_jail_refuses_with_error_2(
    tftpd: Daemon, root: Path, tmp_path: Path, name: str, reason: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "passwd").write_text("secret")
    (root / "escape").symlink_to(outside)
    err = await ask(tftpd, rrq(name, "octet", {}))
    assert err.code == 2
    assert sample(tftpd, "bootd_tftp_errors_total", code="2") == 1
    assert sample(tftpd, "bootd_tftp_transfers_total", result=reason) == 1


async def test_missing_wrq_mode_and_inside_symlink(tftpd: Daemon, root: Path) -> None:
    assert (await ask(tftpd, rrq("nope.efi", "octet", {}))).code == 1
    assert (await ask(tftpd, rrq("sub", "octet", {}))).code == 1
    assert (await ask(tftpd, b"\0\2upload.bin\0octet\0")).code == 2
    assert (await ask(tftpd, rrq("ipxe.efi", "mail", {}))).code == 4
    assert sample(tftpd, "bootd_tftp_transfers_total", result="write") == 1
    assert sample(tftpd, "bootd_tftp_transfers_total", result="not_found") == 2
    # A symlink that stays inside the root is fine.
    (root / "snp.efi").symlink_to(root / "ipxe.efi")
    r = await fetch(addr(tftpd), "snp.efi")
    assert r.ok and r.sha256 == sha(root / "ipxe.efi")


async def test_garbage_and_oversized_are_counted(tftpd: Daemon) -> None:
    assert (await ask(tftpd, b"\x00\x09junk")).code == 4
    assert (await ask(tftpd, b"\x00\x01no-terminator")).code == 4
    assert sample(tftpd, "bootd_malformed_input_total", protocol="tftp", reason="bad_opcode") == 1
    assert sample(tftpd, "bootd_malformed_input_total", protocol="tftp", reason="unterminated") == 1
    with udp() as s:
        s.sendto(b"\x00\x01" + b"A" * 4000 + b"\0octet\0", addr(tftpd))
        with pytest.raises(TimeoutError):
            await recv(s, timeout=0.5)
    assert sample(tftpd, "bootd_malformed_input_total", protocol="tftp", reason="oversized") == 1
    # Still serving.
    assert (await fetch(addr(tftpd), "ipxe.efi")).ok


async def test_bad_datagrams_on_the_tid_are_counted_and_the_transfer_goes_on(
    tftpd: Daemon, root: Path
) -> None:
    # The TID socket reads every datagram into one scratch buffer and takes ACKs
    # straight from it; anything else must still be copied out, checked and counted.
    with udp() as s:
        s.sendto(rrq("sub/exact.bin", "octet", {}), addr(tftpd))
        pkt, tid = await recv(s)
        assert decode(pkt) == Data(1, (root / "sub" / "exact.bin").read_bytes()[:512])
        s.sendto(b"\x00\x04\x00" + b"A" * 2000, tid)  # oversized (and longer than the buffer)
        s.sendto(b"\x00\x04\x00", tid)  # an ACK cut short
        with pytest.raises(TimeoutError):
            await recv(s, timeout=0.3)
        await ack_to_the_end(s, tid)
    assert sample(tftpd, "bootd_malformed_input_total", protocol="tftp", reason="oversized") == 1
    assert sample(tftpd, "bootd_malformed_input_total", protocol="tftp", reason="truncated") == 1
    await asyncio.sleep(0.1)
    assert sample(tftpd, "bootd_tftp_transfers_total", result="ok") == 1


def test_a_read_error_on_the_ack_path_fails_that_transfer_cleanly() -> None:
    """A file that stops reading (EIO on a vanished NFS mount) mid-transfer: the ACK that
    asks for the next block ends the transfer with error 0, nothing escapes the handler."""

    class Failing(MemorySource):
        def read(self, offset: int, length: int) -> bytes:
            if offset >= 512:
                raise OSError(errno.EIO, "Input/output error")
            return super().read(offset, length)

    class Owner:
        sender = GsoSender()
        failed: list[int] = []

        def read_failed(self, s: Session, exc: OSError, now: float) -> None:
            self.failed.append(exc.errno or 0)
            s.fail(now)  # what the service does, besides its warning

        def data_started(self, s: Session, now: float) -> None: ...
        def finished(self, s: Session, now: float) -> None: ...
        def malformed(self, reason: str) -> None: ...
        def unknown_tid(self, sock: socket.socket, addr: tuple[str, int], data: bytes) -> None: ...
        def error_sent(self, code: int) -> None: ...

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours, theirs:
        t = ReadTransfer(OctetBlocks(Failing(bytes(2000)), 512), Negotiated(512, 1, 1.0), 5)
        owner = Owner()
        s = Session(ours, ours, ("10.0.0.9", 2000), t, "f", None, None, owner)
        s.start(0.0)
        assert decode(theirs.recv(1024)) == Data(1, bytes(512))
        theirs.send(encode_ack(1))
        s.on_readable(0.1)  # block 2 cannot be read
        err = decode(theirs.recv(1024))
    assert isinstance(err, Error) and err.code == 0
    assert owner.failed == [errno.EIO] and t.outcome is Outcome.ERROR


async def test_unknown_tid_gets_error_5_and_transfer_goes_on(tftpd: Daemon, root: Path) -> None:
    with udp() as s, udp() as stranger:
        s.sendto(rrq("sub/exact.bin", "octet", {}), addr(tftpd))
        pkt, tid = await recv(s)
        assert decode(pkt) == Data(1, (root / "sub" / "exact.bin").read_bytes()[:512])
        assert tid[1] != tftpd.config.tftp.port  # RFC 1350: a fresh TID per transfer
        stranger.sendto(encode_ack(1), tid)
        err = decode((await recv(stranger))[0])
        assert isinstance(err, Error) and err.code == 5
        # An ACK to the listening port from someone without a transfer is a stranger too.
        stranger.sendto(encode_ack(1), addr(tftpd))
        assert decode((await recv(stranger))[0]) == Error(5, "unknown transfer ID")
        await ack_to_the_end(s, tid)
    assert sample(tftpd, "bootd_malformed_input_total", protocol="tftp", reason="unknown_tid") == 2
    assert sample(tftpd, "bootd_tftp_errors_total", code="5") == 2
    await asyncio.sleep(0.1)
    assert sample(tftpd, "bootd_tftp_transfers_total", result="ok") == 1


async def test_tid_port_cannot_be_shared(tftpd: Daemon) -> None:
    with udp() as s:
        s.sendto(rrq("ipxe.efi", "octet", {"blksize": "1468"}), addr(tftpd))
        _, tid = await recv(s)
        # The TID sockets had SO_REUSEADDR only while binding: nobody can join them now.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as intruder:
            intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError):
                intruder.bind(tid)


async def test_uefi_tsize_probe_is_not_a_failure(
    tftpd: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    with udp() as s:
        s.sendto(rrq("ipxe.efi", "octet", {"blksize": "1468", "tsize": "0"}), addr(tftpd))
        pkt, tid = await recv(s)
        assert decode(pkt) == OptionAck({"blksize": "1468", "tsize": "300000"})
        s.sendto(b"\0\5\0\10User aborted the transfer\0", tid)
        await asyncio.sleep(0.2)
    assert sample(tftpd, "bootd_tftp_transfers_total", result="probe") == 1
    assert sample(tftpd, "bootd_tftp_active_transfers") == 0
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]


async def test_cap_refuses_and_counts(tftpd: Daemon) -> None:
    socks = [udp() for _ in range(5)]
    try:
        for s in socks[:4]:
            s.sendto(rrq("ipxe.efi", "octet", {}), addr(tftpd))
            assert isinstance(decode((await recv(s))[0]), Data)
        assert sample(tftpd, "bootd_tftp_active_transfers") == 4
        socks[4].sendto(rrq("ipxe.efi", "octet", {}), addr(tftpd))
        err = decode((await recv(socks[4]))[0])
        assert isinstance(err, Error) and err.code == 0 and "busy" in err.message
        assert sample(tftpd, "bootd_tftp_transfers_total", result="busy") == 1
    finally:
        for s in socks:
            s.close()


async def test_stalled_client_times_out_after_bounded_retries(tftpd: Daemon) -> None:
    tftpd.services[0].reload(with_tftp(tftpd, timeout=0.15, retries=3))
    copies = 0
    with udp() as s:
        s.sendto(rrq("ipxe.efi", "octet", {}), addr(tftpd))
        with pytest.raises(TimeoutError):
            while True:
                pkt, _ = await recv(s, timeout=1.5)
                assert isinstance(decode(pkt), Data) and decode(pkt).block == 1  # type: ignore[union-attr]
                copies += 1
    assert copies == 4  # the first send and exactly `retries` retransmissions, backing off
    assert sample(tftpd, "bootd_tftp_transfers_total", result="timeout") == 1
    assert sample(tftpd, "bootd_tftp_retransmits_total") == 3
    assert sample(tftpd, "bootd_tftp_active_transfers") == 0


async def test_generated_autoexec_chains_to_boot_script(tftpd: Daemon, root: Path) -> None:
    assert tftpd.ctx is not None
    await tftpd.ctx.nodes.upsert([Node(MAC, ip="127.0.0.1")])
    r = await fetch(addr(tftpd), "autoexec.ipxe", keep=True)
    url = f"http://127.0.0.1:{tftpd.config.http.port}/boot/v1/bootscript?mac={MAC}"
    assert r.ok and r.data.startswith(b"#!ipxe\n") and f"chain --replace {url}\n".encode() in r.data
    tl = tftpd.ctx.timeline.get(MAC)
    assert tl is not None and tl.stages["tftp"].end is not None
    assert tl.stages["tftp"].bytes == len(r.data) and tl.stages["tftp"].detail == "autoexec.ipxe"
    # A file on disk wins over the generated one.
    (root / "config.ipxe").write_bytes(b"#!ipxe\nshell\n")
    assert (await fetch(addr(tftpd), "config.ipxe", keep=True)).data == b"#!ipxe\nshell\n"


async def test_generated_script_for_unknown_client(tftpd: Daemon) -> None:
    r = await fetch(addr(tftpd), "/config.ipxe", keep=True)
    assert r.ok and b"bootscript?mac=${netX/mac}\n" in r.data


async def test_reload_applies_to_new_requests_only(tftpd: Daemon, root: Path) -> None:
    with udp() as s:
        s.sendto(rrq("ipxe.efi", "octet", {"blksize": "1468"}), addr(tftpd))
        pkt, tid = await recv(s)
        assert decode(pkt) == OptionAck({"blksize": "1468"})
        tftpd.services[0].reload(with_tftp(tftpd, max_blksize=512))
        got = bytearray()
        s.sendto(encode_ack(0), tid)
        block = 0
        while True:
            data = decode((await recv(s))[0])
            assert isinstance(data, Data) and data.block == block + 1
            block += 1
            got += data.payload
            s.sendto(encode_ack(block), tid)
            if len(data.payload) < 1468:
                break
    assert bytes(got) == (root / "ipxe.efi").read_bytes()
    r = await fetch(addr(tftpd), "ipxe.efi", blksize=1468)
    assert r.ok and r.options == {"blksize": "512"}


async def test_single_port_mode(cfg_dict: dict[str, Any], root: Path, tmp_path: Path) -> None:
    cfg_dict["tftp"].update(enabled=True, single_port=True)
    cfg_dict["shutdown_grace"] = 0.5
    d = Daemon(parse_config(cfg_dict), write_config(tmp_path, cfg_dict))
    await d.start()
    try:
        results = await asyncio.gather(
            *(fetch(addr(d), "ipxe.efi", blksize=1400, windowsize=8) for _ in range(8))
        )
        assert all(r.ok and r.sha256 == sha(root / "ipxe.efi") for r in results)
        with udp() as s:
            s.sendto(rrq("ipxe.efi", "octet", {}), addr(d))
            _, tid = await recv(s)
            assert tid == addr(d)
            # A stranger's ACK on the shared port gets error 5; the transfer is untouched.
            with udp() as stranger:
                stranger.sendto(encode_ack(1), addr(d))
                assert decode((await recv(stranger))[0]) == Error(5, "unknown transfer ID")
            s.sendto(encode_ack(1), tid)
            assert decode((await recv(s))[0]).block == 2  # type: ignore[union-attr]
    finally:
        await d.stop()
    assert sample(d, "bootd_tftp_transfers_total", result="ok") == 8


async def test_busy_server_coalesces_ack_polling(
    tftpd: Daemon, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bootd.tftp.service as service

    resumed = 0
    original = service.TftpService._resume_tids

    def counting(self: service.TftpService) -> None:
        nonlocal resumed
        resumed += 1
        original(self)

    # The cap here is 4 transfers: pause from the second one on, as a storm would.
    monkeypatch.setattr(service, "COALESCE_TRANSFERS", 2)
    monkeypatch.setattr(service.TftpService, "_resume_tids", counting)
    results = await asyncio.gather(
        *(fetch(addr(tftpd), "ipxe.efi", blksize=1468, windowsize=ws) for ws in (1, 1, 4, 16))
    )
    digest = sha(root / "ipxe.efi")
    assert [r.ok and r.sha256 == digest for r in results] == [True] * 4
    assert resumed > 0 and all(r.resent == 0 for r in results)


async def test_unreadable_file_ends_that_transfer_only(
    tftpd: Daemon, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bootd.tftp.files import SharedFile

    def eio(self: SharedFile, offset: int, length: int) -> bytes:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(SharedFile, "read", eio)
    r = await fetch(addr(tftpd), "sub/exact.bin")
    assert not r.ok and r.error.startswith("error 0")
    assert sample(tftpd, "bootd_tftp_transfers_total", result="error") == 1
    assert sample(tftpd, "bootd_tftp_active_transfers") == 0
    monkeypatch.undo()
    assert (await fetch(addr(tftpd), "sub/exact.bin")).ok


async def test_a_hung_filesystem_stalls_only_its_own_requests(
    tftpd: Daemon, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    from bootd.tftp.files import FileCache

    real_open = FileCache._open
    release = threading.Event()

    def hung(self: FileCache, r: Path, name: str, known: Any = None) -> object:
        if name == "ipxe.efi":
            release.wait(10)  # an NFS server that stopped answering, until it comes back
        return real_open(self, r, name, known)

    monkeypatch.setattr(FileCache, "_open", hung)
    slow = asyncio.ensure_future(fetch(addr(tftpd), "ipxe.efi", blksize=1468))
    await asyncio.sleep(0.2)
    start = time.monotonic()
    fast = await fetch(addr(tftpd), "sub/exact.bin")  # the loop keeps serving the rest
    assert fast.ok and fast.sha256 == sha(root / "sub" / "exact.bin")
    assert time.monotonic() - start < 2 and not slow.done()
    assert sample(tftpd, "bootd_tftp_active_transfers") == 0  # the waiting one is no transfer yet
    release.set()
    r = await slow
    assert r.ok and r.sha256 == sha(root / "ipxe.efi")
