"""DHCP reply logic with a fake clock and no sockets: every client state, PXE, relays, proxy."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bootd.boot.node import Node
from bootd.config import parse_config
from bootd.context import Context
from bootd.daemon import Daemon
from bootd.dhcp.chain import build_stages, explain, offer_memo
from bootd.dhcp.exchange import Exchange
from bootd.dhcp.handler import BROADCAST, Destination, DhcpHandler
from bootd.dhcp.service import DhcpService
from bootd.metrics import Metrics
from bootd.proto.dhcp import DhcpPacket, MessageType, Opt, decode
from bootd.proto.dhcp.options import ip_bytes
from bootd.store import leases as leases_store
from bootd.store import nodes as nodes_store
from bootd.store.db import Database
from bootd.store.leases import LeaseTable
from bootd.timeline import recorder as timeline_store
from tests.helpers import base_config, free_port

SERVER = "10.0.0.1"


class Bench:
    """A handler wired to a capture list and a settable clock."""

    def __init__(self, tmp: Path, offers: bool = True, **dhcp: Any) -> None:
        tftp = tmp / "tftp"
        tftp.mkdir(exist_ok=True)
        for name in ("undionly.kpxe", "ipxe.efi"):
            (tftp / name).write_bytes(b"x")
        cfg = {
            "address": SERVER,
            "state_dir": str(tmp),
            "dhcp": {
                "subnet": "10.0.0.0/24",
                "pool": "10.0.0.100-10.0.0.103",
                "router": SERVER,
                "dns": [SERVER],
                "domain": "cluster.local",
                "relay_subnets": [{"subnet": "10.1.0.0/24", "pool": "10.1.0.50-10.1.0.60"}],
                **dhcp,
            },
            "tftp": {"root": str(tftp)},
            "http": {"port": 8080},
        }
        self.raw = cfg
        self.now = 1_000_000.0
        self.db = Database(tmp / "bootd.sqlite3")
        self.db.open([*leases_store.SCHEMA, *nodes_store.SCHEMA, *timeline_store.SCHEMA])
        self.nodes = nodes_store.NodeInventory(self.db)
        self.ctx = Context(
            config=parse_config(cfg),
            db=self.db,
            nodes=self.nodes,
            timeline=timeline_store.TimelineRecorder(self.db),
            metrics=Metrics(),
            clock=lambda: self.now,
        )
        self.leases = LeaseTable(self.db, self.ctx.clock, lambda ip: None)
        self.stages = build_stages(self.ctx, self.leases)
        self.sent: list[tuple[DhcpPacket, Destination]] = []
        self.handler = DhcpHandler(
            self.ctx,
            self.leases,
            self.stages,
            lambda w, d: self.sent.append((decode(w), d)),
            offer_memo(self.ctx, self.leases) if offers else None,
        )

    async def ask(
        self,
        mac: str,
        mt: MessageType,
        port: int = 67,
        source: tuple[str, int] = ("0.0.0.0", 68),
        **fields: Any,
    ) -> tuple[DhcpPacket, Destination] | None:
        opts: dict[int, bytes] = {Opt.MESSAGE_TYPE: bytes([mt])}
        opts.update(fields.pop("options", {}))
        for key, code in (("requested", Opt.REQUESTED_IP), ("server_id", Opt.SERVER_ID)):
            if key in fields:
                opts[code] = ip_bytes(fields.pop(key))
        req = DhcpPacket(
            xid=len(self.sent) + 1,
            chaddr=bytes.fromhex(mac.replace(":", "")) + bytes(10),
            options=opts,
            **fields,
        )
        before = len(self.sent)
        self.handler.handle(req.encode(), source, port)
        await self.handler.drain(10)
        return self.sent[-1] if len(self.sent) > before else None

    async def offers(self, macs: list[str]) -> dict[str, str]:
        """DISCOVER from each MAC: the address each was offered."""
        offered = {}
        for mac in macs:
            got = await self.ask(mac, MessageType.DISCOVER)
            assert got is not None
            offered[mac] = got[0].yiaddr
        return offered

    async def lease(self, mac: str, **opts: Any) -> DhcpPacket:
        """DISCOVER → OFFER → REQUEST → ACK."""
        got = await self.ask(mac, MessageType.DISCOVER, **opts)
        assert got is not None
        offer = got[0]
        got = await self.ask(
            mac, MessageType.REQUEST, requested=offer.yiaddr, server_id=SERVER, **opts
        )
        assert got is not None and got[0].message_type is MessageType.ACK
        return got[0]


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    b = Bench(tmp_path)
    yield b
    b.db.close()


def selecting_request(mac: str, ip: str) -> bytes:
    """A SELECTING-state REQUEST for the address SERVER offered."""
    return DhcpPacket(
        xid=int(mac.replace(":", "")[-4:], 16),
        chaddr=bytes.fromhex(mac.replace(":", "")) + bytes(10),
        options={
            Opt.MESSAGE_TYPE: bytes([MessageType.REQUEST]),
            Opt.REQUESTED_IP: ip_bytes(ip),
            Opt.SERVER_ID: ip_bytes(SERVER),
        },
    ).encode()


def mtype(p: DhcpPacket) -> MessageType | None:
    return p.message_type


async def test_dora_gives_address_and_options(bench: Bench) -> None:
    ack = await bench.lease("52:54:00:00:00:01")
    assert ack.yiaddr == "10.0.0.100"
    o = ack.options
    assert o[Opt.SERVER_ID] == ip_bytes(SERVER)
    assert o[Opt.SUBNET_MASK] == bytes([255, 255, 255, 0])
    assert o[Opt.ROUTER] == ip_bytes(SERVER) and o[Opt.DNS] == ip_bytes(SERVER)
    assert o[Opt.DOMAIN] == b"cluster.local"
    assert int.from_bytes(o[Opt.LEASE_TIME], "big") == 3600
    assert int.from_bytes(o[Opt.RENEWAL_TIME], "big") == 1800
    assert int.from_bytes(o[Opt.REBINDING_TIME], "big") == 3150
    assert Opt.VENDOR_CLASS not in o and ack.file == b""  # not a PXE client
    rows = bench.db.read("SELECT mac, ip FROM dhcp_leases")
    assert [tuple(r) for r in rows] == [("52:54:00:00:00:01", "10.0.0.100")]
    tl = bench.ctx.timeline.get("52:54:00:00:00:01")
    assert tl is not None and tl.stages["dhcp-linux"].end is not None
    assert tl.stages["dhcp-linux"].detail == "10.0.0.100"


async def test_no_address_twice_and_exhaustion_counted(bench: Bench) -> None:
    ips = {(await bench.lease(f"52:54:00:00:01:{i:02x}")).yiaddr for i in range(4)}
    assert ips == {"10.0.0.100", "10.0.0.101", "10.0.0.102", "10.0.0.103"}
    assert bench.leases.free_count([(0x0A000064, 0x0A000067)]) == 0
    # Several pools at once, each counted against the same busy set, bounds included:
    # .100-.101 (both busy), .102-.106 (two busy), .1 (free).
    pools = [(0x0A000064, 0x0A000065), (0x0A000066, 0x0A00006A), (0x0A000001, 0x0A000001)]
    assert bench.leases.free_count(pools) == 0 + 3 + 1
    assert await bench.ask("52:54:00:00:01:99", MessageType.DISCOVER) is None
    assert bench.ctx.metrics.dhcp_messages.labels("discover", "exhausted")._value.get() == 1
    # The leases are untouched by the failure.
    assert len(bench.db.read("SELECT * FROM dhcp_leases")) == 4


async def test_an_expired_leases_address_moves_to_another_mac_on_disk_too(
    bench: Bench,
) -> None:
    first = {f"52:54:00:00:01:{i:02x}": (await bench.lease(f"52:54:00:00:01:{i:02x}")).yiaddr
             for i in range(4)}  # fmt: skip
    bench.now += 3601  # every lease has expired; the pool has no never-used address left
    late = "52:54:00:00:01:99"
    ack = await bench.lease(late)
    taken_from = next(mac for mac, ip in first.items() if ip == ack.yiaddr)
    # One row per address (ip is UNIQUE): the displaced MAC's row went first, in the
    # same commit, and the ACK left only after it.
    rows = {r["mac"]: r["ip"] for r in bench.db.read("SELECT mac, ip FROM dhcp_leases")}
    assert rows[late] == ack.yiaddr and taken_from not in rows
    assert len(rows) == 4 and len(set(rows.values())) == 4
    # The other expired MACs keep their addresses (affinity), on disk and after a reload.
    kept = next(mac for mac in first if mac != taken_from)
    assert (await bench.lease(kept)).yiaddr == first[kept]
    fresh = LeaseTable(bench.db, bench.ctx.clock, lambda ip: None)
    fresh.load()
    assert {x.mac: x.ip for x in fresh.all()} == rows


async def test_offer_holds_address_until_timeout(bench: Bench) -> None:
    assert bench.leases.free_count([(0x0A000064, 0x0A000067)]) == 4
    a = await bench.ask("52:54:00:00:02:01", MessageType.DISCOVER)
    b = await bench.ask("52:54:00:00:02:02", MessageType.DISCOVER)
    assert a and b and a[0].yiaddr != b[0].yiaddr
    assert bench.leases.free_count([(0x0A000064, 0x0A000067)]) == 2
    bench.now += 31  # offer_timeout 30 s
    for i in range(3, 7):
        await bench.lease(f"52:54:00:00:02:{i:02x}")
    # The expired offers' addresses were reused; the late REQUEST is NAKed, not duplicated.
    late = await bench.ask(
        "52:54:00:00:02:01", MessageType.REQUEST, requested=a[0].yiaddr, server_id=SERVER
    )
    assert late is not None and mtype(late[0]) is MessageType.NAK
    assert late[1].ip == BROADCAST


async def test_selecting_other_server_frees_offer(bench: Bench) -> None:
    got = await bench.ask("52:54:00:00:03:01", MessageType.DISCOVER)
    assert got is not None
    none = await bench.ask(
        "52:54:00:00:03:01", MessageType.REQUEST, requested=got[0].yiaddr, server_id="10.0.0.9"
    )
    assert none is None
    assert bench.leases.offered("52:54:00:00:03:01", bench.now) is None


async def test_init_reboot_nak_for_wrong_address_and_ack_for_own(bench: Bench) -> None:
    mac = "52:54:00:00:04:01"
    ack = await bench.lease(mac)
    wrong = await bench.ask(mac, MessageType.REQUEST, requested="10.0.0.102")
    assert wrong is not None and mtype(wrong[0]) is MessageType.NAK
    other_net = await bench.ask(mac, MessageType.REQUEST, requested="192.168.5.5")
    assert other_net is not None and mtype(other_net[0]) is MessageType.NAK
    again = await bench.ask(mac, MessageType.REQUEST, requested=ack.yiaddr)
    assert again is not None and mtype(again[0]) is MessageType.ACK


async def test_renewing_and_rebinding_extend_the_lease(bench: Bench) -> None:
    mac = "52:54:00:00:05:01"
    ack = await bench.lease(mac)
    first = bench.leases.lease(mac)
    assert first is not None
    bench.now += 1800
    renew = await bench.ask(mac, MessageType.REQUEST, ciaddr=ack.yiaddr, source=(ack.yiaddr, 68))
    assert renew is not None and mtype(renew[0]) is MessageType.ACK
    assert renew[1] == Destination(ack.yiaddr, 68)  # RFC 2131 §4.1: unicast to ciaddr
    bench.now += 3000
    rebind = await bench.ask(mac, MessageType.REQUEST, ciaddr=ack.yiaddr, flags=0x8000)
    assert rebind is not None and mtype(rebind[0]) is MessageType.ACK
    lease = bench.leases.lease(mac)
    assert lease is not None and lease.expires == bench.now + 3600
    row = bench.db.read("SELECT expires FROM dhcp_leases WHERE mac = ?", (mac,))
    assert row[0][0] == bench.now + 3600
    stolen = await bench.ask("52:54:00:00:05:02", MessageType.REQUEST, ciaddr=ack.yiaddr)
    assert stolen is not None and mtype(stolen[0]) is MessageType.NAK


async def test_decline_quarantines_and_release_frees(bench: Bench) -> None:
    mac = "52:54:00:00:06:01"
    ack = await bench.lease(mac)
    await bench.ask(mac, MessageType.DECLINE, requested=ack.yiaddr, server_id=SERVER)
    assert bench.leases.quarantined(ack.yiaddr, bench.now)
    again = await bench.lease(mac)
    assert again.yiaddr != ack.yiaddr
    await bench.ask(mac, MessageType.RELEASE, ciaddr=again.yiaddr, server_id=SERVER)
    assert bench.leases.ip_for_mac(mac) is None
    others = [(await bench.lease(f"52:54:00:00:06:1{i}")).yiaddr for i in range(3)]
    # The released address is free for others; the quarantined one is not.
    assert again.yiaddr in others and ack.yiaddr not in others
    assert await bench.ask("52:54:00:00:06:20", MessageType.DISCOVER) is None
    # A DECLINE for an address that is not the client's changes nothing.
    await bench.ask("52:54:00:00:06:03", MessageType.DECLINE, requested=others[0])
    assert not bench.leases.quarantined(others[0], bench.now)


async def test_inform_answers_without_lease(bench: Bench) -> None:
    got = await bench.ask("52:54:00:00:07:01", MessageType.INFORM, ciaddr="10.0.0.50")
    assert got is not None
    reply, dest = got
    assert mtype(reply) is MessageType.ACK and reply.yiaddr == "0.0.0.0"
    assert Opt.LEASE_TIME not in reply.options and Opt.ROUTER in reply.options
    assert dest == Destination("10.0.0.50", 68)
    assert bench.db.read("SELECT * FROM dhcp_leases") == []


async def test_reservation_and_hostname_from_inventory(bench: Bench) -> None:
    mac = "52:54:00:00:08:01"
    await bench.nodes.upsert([Node(mac=mac, ip="10.0.0.11", hostname="nid0011")])
    ack = await bench.lease(mac)
    assert ack.yiaddr == "10.0.0.11" and ack.options[Opt.HOSTNAME] == b"nid0011"
    # The same MAC as iPXE and then Linux keeps the address (keyed on chaddr).
    ipxe = await bench.lease(mac, options={Opt.USER_CLASS: b"iPXE"})
    assert ipxe.yiaddr == "10.0.0.11"


async def test_lease_records_the_clients_own_name_unless_the_inventory_has_one(
    bench: Bench,
) -> None:
    await bench.nodes.upsert([Node(mac="52:54:00:00:08:21", hostname="nid0121")])
    await bench.lease("52:54:00:00:08:21", options={Opt.HOSTNAME: b"whatever"})
    await bench.lease("52:54:00:00:08:22", options={Opt.HOSTNAME: b"Login1.site"})
    await bench.lease("52:54:00:00:08:23", options={Opt.HOSTNAME: b"not valid!"})
    names = {x.mac: x.hostname for x in bench.leases.all()}
    assert names == {
        "52:54:00:00:08:21": "nid0121",
        "52:54:00:00:08:22": "login1",
        "52:54:00:00:08:23": None,
    }
    rows = bench.db.read("SELECT mac, hostname FROM dhcp_leases ORDER BY mac")
    assert [tuple(r) for r in rows] == list(names.items())


async def test_a_reservation_held_by_another_mac_gets_a_pool_address_acked(
    bench: Bench,
) -> None:
    holder, owner = "52:54:00:00:08:41", "52:54:00:00:08:42"
    await bench.nodes.upsert([Node(mac=holder, ip="10.0.0.41")])
    assert (await bench.lease(holder)).yiaddr == "10.0.0.41"
    await bench.nodes.upsert([Node(mac=owner, ip="10.0.0.41")], True)
    # OFFERed from the pool, then ACKed (it was NAKed: the client looped for an hour).
    ack = await bench.lease(owner)
    assert ack.yiaddr == "10.0.0.100"


async def test_a_deleted_lease_lets_a_swapped_nic_have_the_reserved_address(
    bench: Bench,
) -> None:
    old, new = "52:54:00:00:08:31", "52:54:00:00:08:32"
    await bench.nodes.upsert([Node(mac=old, ip="10.0.0.31", hostname="nid0031")])
    assert (await bench.lease(old)).yiaddr == "10.0.0.31"
    # The node's NIC is replaced: the inventory moves the reservation to the new MAC...
    await bench.nodes.upsert([Node(mac=new, ip="10.0.0.31", hostname="nid0031")], True)
    # ...but the old MAC's lease still holds the address for an hour.
    assert (await bench.lease(new)).yiaddr != "10.0.0.31"
    lease, written = bench.leases.delete(old)
    await written
    assert lease is not None and lease.ip == "10.0.0.31"
    assert bench.db.read("SELECT * FROM dhcp_leases WHERE mac = ?", (old,)) == []
    assert (await bench.lease(new)).yiaddr == "10.0.0.31"
    assert {x.ip for x in bench.leases.all() if x.mac == new} == {"10.0.0.31"}
    lease, written = bench.leases.delete(old)  # nothing left to delete
    await written
    assert lease is None


async def test_ignore_unknown_clients_answers_only_the_inventory(tmp_path: Path) -> None:
    b = Bench(tmp_path, ignore_unknown_clients=True)
    known, stranger = "52:54:00:00:08:11", "52:54:00:00:08:12"
    await b.nodes.upsert([Node(mac=known, hostname="nid0111")])
    ack = await b.lease(known)  # no reserved address: the pool serves it
    assert ack.yiaddr == "10.0.0.100" and ack.options[Opt.HOSTNAME] == b"nid0111"
    assert await b.ask(stranger, MessageType.DISCOVER) is None
    assert await b.ask(stranger, MessageType.REQUEST, requested="10.0.0.101") is None
    counted = b.ctx.metrics.dhcp_messages.labels
    assert counted("discover", "unknown-client")._value.get() == 1
    assert counted("request", "unknown-client")._value.get() == 1
    assert b.leases.offered(stranger, b.now) is None and b.leases.lease(stranger) is None
    req = DhcpPacket(chaddr=bytes.fromhex("525400000812") + bytes(10),
                     options={Opt.MESSAGE_TYPE: b"\x01"})  # fmt: skip
    ex = explain(b.stages, Exchange(request=req, now=b.now, mac=stranger))
    assert ex.reply is None and ex.why[-1].startswith("not in the node inventory")
    # Proxy mode keeps to the inventory too.
    b.db.close()
    (tmp_path / "proxy").mkdir()
    p = Bench(tmp_path / "proxy", mode="proxy", ignore_unknown_clients=True)
    await p.nodes.upsert([Node(mac=known)])
    pxe = {Opt.VENDOR_CLASS: b"PXEClient:Arch:00007", Opt.CLIENT_ARCH: b"\0\7"}
    assert await p.ask(stranger, MessageType.DISCOVER, options=pxe) is None
    offer = await p.ask(known, MessageType.DISCOVER, options=pxe)
    assert offer is not None and offer[0].file == b"ipxe.efi"
    p.db.close()


async def test_pxe_boot_files_by_arch(bench: Bench) -> None:
    bios = await bench.lease(
        "52:54:00:00:09:01",
        options={Opt.VENDOR_CLASS: b"PXEClient:Arch:00000:UNDI:002001", Opt.CLIENT_ARCH: b"\0\0"},
    )
    assert bios.file == b"undionly.kpxe" and bios.siaddr == SERVER
    assert bios.options[Opt.VENDOR_CLASS] == b"PXEClient"
    uefi = await bench.lease(
        "52:54:00:00:09:02",
        options={Opt.VENDOR_CLASS: b"PXEClient:Arch:00007:UNDI:003016", Opt.CLIENT_ARCH: b"\0\7"},
    )
    assert uefi.file == b"ipxe.efi"
    # Architecture 6 maps to ipxe-i386.efi, which is not under tftp.root: no file.
    ia32 = await bench.lease(
        "52:54:00:00:09:03",
        options={Opt.VENDOR_CLASS: b"PXEClient:Arch:00006", Opt.CLIENT_ARCH: b"\0\6"},
    )
    assert ia32.file == b""
    http = await bench.lease(
        "52:54:00:00:09:04",
        options={Opt.VENDOR_CLASS: b"HTTPClient:Arch:00016", Opt.CLIENT_ARCH: b"\0\x10"},
    )
    assert http.file == b"http://10.0.0.1:8080/tftp/ipxe.efi"
    assert http.options[Opt.VENDOR_CLASS] == b"HTTPClient"


async def test_group_boot_files_replace_the_arch_default_for_their_nodes(
    tmp_path: Path,
) -> None:
    b = Bench(tmp_path, group_boot_files={"mlx": {7: "snponly.efi"}, "old": {7: "gone.efi"}})
    (tmp_path / "tftp" / "snponly.efi").write_bytes(b"x")
    mlx, plain, stale = "52:54:00:00:09:11", "52:54:00:00:09:12", "52:54:00:00:09:13"
    await b.nodes.upsert([
        Node(mac=mlx, groups=("compute", "mlx")),
        Node(mac=plain, groups=("compute",)),
        Node(mac=stale, groups=("old",)),
    ])  # fmt: skip
    uefi = {Opt.VENDOR_CLASS: b"PXEClient:Arch:00007:UNDI:003016", Opt.CLIENT_ARCH: b"\0\7"}
    bios = {Opt.VENDOR_CLASS: b"PXEClient:Arch:00000:UNDI:002001", Opt.CLIENT_ARCH: b"\0\0"}
    assert (await b.lease(mlx, options=uefi)).file == b"snponly.efi"
    assert (await b.lease(mlx, options=bios)).file == b"undionly.kpxe"  # arch 0: the default
    assert (await b.lease(plain, options=uefi)).file == b"ipxe.efi"
    # A group file missing under tftp.root gives no boot file (and says so), as for
    # dhcp.boot_files: the node is not sent a name that would fail over TFTP.
    assert (await b.lease(stale, options=uefi)).file == b""
    req = DhcpPacket(chaddr=bytes.fromhex("525400000911") + bytes(10),
                     options={Opt.MESSAGE_TYPE: b"\x01", **uefi})  # fmt: skip
    ex = explain(b.stages, Exchange(request=req, now=b.now, mac=mlx))
    assert "group mlx: boot file snponly.efi for architecture 7" in ex.why
    b.db.close()


async def test_ipxe_gets_script_url_not_a_binary(bench: Bench) -> None:
    mac = "52:54:00:00:0a:01"
    for opts in ({Opt.USER_CLASS: b"iPXE"}, {Opt.IPXE_ENCAP: b"\x13\x01\x01"}):
        ack = await bench.lease(mac, options={Opt.VENDOR_CLASS: b"PXEClient:Arch:00007", **opts})
        assert ack.file == f"http://10.0.0.1:8080/boot/v1/bootscript?mac={mac}".encode()
    tl = bench.ctx.timeline.get(mac)
    assert tl is not None and "dhcp-ipxe" in tl.stages


async def test_ipxe_offer_tells_it_not_to_wait_for_proxydhcp(bench: Bench) -> None:
    # iPXE waits 2 s for ProxyDHCP offers after a plain OFFER; 175.176 = 1 skips that.
    ipxe = {Opt.VENDOR_CLASS: b"PXEClient:Arch:00000:UNDI:002001", Opt.USER_CLASS: b"iPXE"}
    got = await bench.ask("52:54:00:00:0a:02", MessageType.DISCOVER, options=ipxe)
    assert got is not None
    offer = got[0]
    assert offer.options[Opt.IPXE_ENCAP] == bytes((176, 1, 1))
    ack = await bench.lease("52:54:00:00:0a:02", options=ipxe)
    assert ack.options[Opt.IPXE_ENCAP] == bytes((176, 1, 1))
    # Firmware PXE and Linux get no iPXE options.
    pxe = await bench.lease(
        "52:54:00:00:0a:03",
        options={Opt.VENDOR_CLASS: b"PXEClient:Arch:00000", Opt.CLIENT_ARCH: b"\0\0"},
    )
    assert Opt.IPXE_ENCAP not in pxe.options
    assert Opt.IPXE_ENCAP not in (await bench.lease("52:54:00:00:0a:04")).options


async def test_proxy_mode_offer_to_ipxe_is_a_proxydhcp_offer(tmp_path: Path) -> None:
    # iPXE counts an address-less offer as ProxyDHCP only with option 60 PXEClient.
    b = Bench(tmp_path, mode="proxy")
    mac = "52:54:00:00:0a:05"
    ipxe = {Opt.VENDOR_CLASS: b"PXEClient:Arch:00000:UNDI:002001", Opt.USER_CLASS: b"iPXE"}
    got = await b.ask(mac, MessageType.DISCOVER, options=ipxe)
    assert got is not None
    offer = got[0]
    assert offer.yiaddr == "0.0.0.0"
    assert offer.file == f"http://10.0.0.1:8080/boot/v1/bootscript?mac={mac}".encode()
    assert offer.options[Opt.VENDOR_CLASS] == b"PXEClient"
    assert offer.options[Opt.SERVER_ID] == bytes((10, 0, 0, 1))
    assert Opt.IPXE_ENCAP not in offer.options  # it would only apply to an address offer
    # The site's server sends the ACK; bootd's part of the stage ends with its offer.
    tl = b.ctx.timeline.get(mac)
    assert tl is not None and tl.stages["dhcp-ipxe"].end is not None
    assert tl.stages["dhcp-ipxe"].detail == "proxy"
    b.db.close()


async def test_relay_gets_pool_of_giaddr_and_reply_to_relay(bench: Bench) -> None:
    agent = b"\x01\x04port"
    got = await bench.ask(
        "52:54:00:00:0b:01", MessageType.DISCOVER, giaddr="10.1.0.1", options={82: agent}
    )
    assert got is not None
    offer, dest = got
    assert offer.yiaddr == "10.1.0.50" and offer.giaddr == "10.1.0.1"
    assert offer.options[Opt.SUBNET_MASK] == bytes([255, 255, 255, 0])
    assert dest == Destination("10.1.0.1", 67)
    assert list(offer.options)[-1] == 82 and offer.options[82] == agent  # RFC 3046 echo
    unknown = await bench.ask("52:54:00:00:0b:02", MessageType.DISCOVER, giaddr="172.16.0.1")
    assert unknown is None
    # Each relay's subnet is looked up once per config: the second asks get the same answers.
    again = await bench.ask("52:54:00:00:0b:03", MessageType.DISCOVER, giaddr="10.1.0.1")
    assert again is not None and again[0].yiaddr == "10.1.0.51"
    assert await bench.ask("52:54:00:00:0b:02", MessageType.DISCOVER, giaddr="172.16.0.1") is None
    # A reload that adds the relay's subnet answers it.
    raw = copy.deepcopy(bench.raw)
    raw["dhcp"]["relay_subnets"].append(
        {"subnet": "172.16.0.0/24", "pool": "172.16.0.10-172.16.0.20"}
    )
    bench.ctx.config = parse_config(raw)
    got = await bench.ask("52:54:00:00:0b:02", MessageType.DISCOVER, giaddr="172.16.0.1")
    assert got is not None and got[0].yiaddr == "172.16.0.10"


def test_the_subnet_index_follows_the_config_and_bounds_its_relays(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bootd.dhcp import address as address_mod

    index = address_mod.SubnetIndex(lambda: bench.ctx.config)
    nets = index.all()
    assert index.all() is nets  # parsed once per config
    assert index.local().cfg.subnet == "10.0.0.0/24"
    assert index.for_relay("10.1.0.1") is nets[1]
    assert index.for_relay("10.0.0.9") is nets[0]  # a relay on the local subnet
    assert index.for_relay("172.16.0.1") is None
    monkeypatch.setattr(address_mod, "RELAYS_REMEMBERED", 2)
    index.for_relay("172.16.0.2")
    assert len(index._relays) <= 2
    raw = copy.deepcopy(bench.raw)
    raw["dhcp"]["relay_subnets"].append({"subnet": "172.16.0.0/24"})
    bench.ctx.config = parse_config(raw)  # a reload: a new config object
    assert index.all() is not nets and len(index.all()) == 3
    assert index.for_relay("172.16.0.1") is index.all()[2]


async def test_unicast_reply_to_yiaddr_pins_arp(bench: Bench) -> None:
    got = await bench.ask("52:54:00:00:0c:01", MessageType.DISCOVER)
    assert got is not None
    assert got[1].ip == got[0].yiaddr and got[1].arp_mac == bytes.fromhex("52540000 0c01")
    got = await bench.ask("52:54:00:00:0c:02", MessageType.DISCOVER, flags=0x8000)
    assert got is not None and got[1].ip == BROADCAST


async def test_bad_input_counted_not_fatal(bench: Bench) -> None:
    m = bench.ctx.metrics.malformed
    bench.handler.handle(b"\x01\x02", ("10.0.0.9", 68), 67)
    bench.handler.handle(b"\x01" * 300, ("10.0.0.9", 68), 67)
    good = DhcpPacket(options={Opt.MESSAGE_TYPE: b"\x01"}).encode()
    bench.handler.handle(good[:243] + b"\x0c\x20ab", ("10.0.0.9", 68), 67)
    assert m.labels("dhcp", "truncated")._value.get() == 1
    assert m.labels("dhcp", "bad-cookie")._value.get() == 1
    assert m.labels("dhcp", "bad-option")._value.get() == 1
    assert await bench.lease("52:54:00:00:0d:01")


async def test_explain_changes_nothing(bench: Bench) -> None:
    req = DhcpPacket(
        chaddr=bytes.fromhex("525400000e01") + bytes(10),
        options={Opt.MESSAGE_TYPE: b"\x01", Opt.USER_CLASS: b"iPXE"},
    )
    ex = explain(bench.stages, Exchange(request=req, now=bench.now, mac="52:54:00:00:0e:01"))
    assert ex.reply is not None and ex.reply.yiaddr == "10.0.0.100"
    assert any("boot script" in w for w in ex.why)
    assert bench.leases.offered("52:54:00:00:0e:01", bench.now) is None


async def test_proxy_mode_boot_info_only(tmp_path: Path) -> None:
    b = Bench(tmp_path, mode="proxy")
    pxe = {Opt.VENDOR_CLASS: b"PXEClient:Arch:00007", Opt.CLIENT_ARCH: b"\0\7"}
    got = await b.ask("52:54:00:00:0f:01", MessageType.DISCOVER, options=pxe)
    assert got is not None
    offer, dest = got
    assert offer.yiaddr == "0.0.0.0" and offer.file == b"ipxe.efi" and dest.ip == BROADCAST
    assert await b.ask("52:54:00:00:0f:02", MessageType.DISCOVER) is None  # not PXE
    got = await b.ask(
        "52:54:00:00:0f:01",
        MessageType.REQUEST,
        port=4011,
        ciaddr="10.0.0.77",
        source=("10.0.0.77", 68),
        options=pxe,
    )
    assert got is not None and mtype(got[0]) is MessageType.ACK
    assert got[1].ip == "10.0.0.77" and got[0].file == b"ipxe.efi"
    assert b.db.read("SELECT * FROM dhcp_leases") == []
    b.db.close()


async def test_leases_survive_reload_from_db(bench: Bench) -> None:
    acked = {(await bench.lease(f"52:54:00:00:10:{i:02x}")).yiaddr for i in range(3)}
    fresh = LeaseTable(bench.db, bench.ctx.clock, lambda ip: None)
    fresh.load()
    assert {x.ip for x in fresh.all()} == acked


def test_raw_unicast_frame_checksums_match_scapy() -> None:
    from scapy.layers.inet import IP, UDP

    from bootd.dhcp.rawsend import ipv4_udp

    payload = DhcpPacket(op=2, options={Opt.MESSAGE_TYPE: b"\x02"}).encode() + b"x"  # odd length
    frame = ipv4_udp(ip_bytes("10.0.0.1"), ip_bytes("10.0.0.100"), 67, 68, payload)
    pkt = IP(frame)
    assert (pkt.src, pkt.dst, pkt[UDP].sport, pkt[UDP].dport) == ("10.0.0.1", "10.0.0.100", 67, 68)
    ours_ip, ours_udp = pkt.chksum, pkt[UDP].chksum
    del pkt.chksum, pkt[UDP].chksum
    again = IP(bytes(pkt))
    assert (again.chksum, again[UDP].chksum) == (ours_ip, ours_udp)
    assert bytes(again[UDP].payload) == payload


def _rfc1071(data: bytes) -> int:
    """The checksum as RFC 1071 spells it: 16-bit words, end-around carry, complement."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@pytest.mark.parametrize(
    "data", [b"", b"\0", b"\0\0\0", b"\xff\xff", b"\xff" * 7, b"\x00\x01\xff\xfe", bytes(300)]
)
def test_checksum_edges_match_rfc1071(data: bytes) -> None:
    from bootd.dhcp.rawsend import checksum

    assert checksum(data) == _rfc1071(data)


@given(st.binary(max_size=1500))
def test_checksum_matches_rfc1071(data: bytes) -> None:
    from bootd.dhcp.rawsend import checksum

    assert checksum(data) == _rfc1071(data)


async def test_pending_offers_are_bounded(bench: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leases_store, "MAX_PENDING_OFFERS", 2)
    assert await bench.ask("52:54:00:00:11:01", MessageType.DISCOVER)
    assert await bench.ask("52:54:00:00:11:02", MessageType.DISCOVER)
    assert await bench.ask("52:54:00:00:11:03", MessageType.DISCOVER) is None
    assert bench.ctx.metrics.dhcp_messages.labels("discover", "overload")._value.get() == 1
    bench.now += 31  # the first two expire and make room
    assert await bench.ask("52:54:00:00:11:03", MessageType.DISCOVER)


async def test_service_counts_packets_from_another_interface(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket adapter checks IP_PKTINFO; here the 'right' interface is one that does not exist."""
    async with dhcp_on_loopback(tmp_path) as (d, svc, port):
        # INFORM from ciaddr 127.0.0.1: the answer is unicast back to loopback, never broadcast.
        inform = DhcpPacket(ciaddr="127.0.0.1", options={Opt.MESSAGE_TYPE: b"\x08"}).encode()
        answered = d.metrics.dhcp_messages.labels("inform", "ack")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(inform, ("127.0.0.1", port))
            for _ in range(100):
                await asyncio.sleep(0.02)
                if answered._value.get():
                    break
            assert answered._value.get() == 1
            svc._ifindex = 10_000
            s.sendto(inform, ("127.0.0.1", port))
            wrong = d.metrics.malformed.labels("dhcp", "wrong-interface")
            for _ in range(100):
                await asyncio.sleep(0.02)
                if wrong._value.get():
                    break
            assert wrong._value.get() == 1
            assert answered._value.get() == 1
            # Requests that waited in the queue past STALE_AFTER are skipped and counted.
            svc._ifindex = None
            monkeypatch.setattr("bootd.dhcp.service.STALE_AFTER", -1.0)
            s.sendto(inform, ("127.0.0.1", port))
            stale = d.metrics.dhcp_messages.labels("any", "stale")
            for _ in range(100):
                await asyncio.sleep(0.02)
                if stale._value.get():
                    break
            assert stale._value.get() == 1 and answered._value.get() == 1


async def test_acks_leave_through_a_token_bucket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group commit's ACKs go out ACK_BURST at a time at ACK_RATE; drain() sends the rest."""
    import asyncio

    from bootd.dhcp import handler as handler_mod

    monkeypatch.setattr(handler_mod, "ACK_BURST", 4)
    monkeypatch.setattr(handler_mod, "ACK_RATE", 20.0)
    b = Bench(tmp_path, pool="10.0.0.100-10.0.0.150")
    macs = [f"52:54:00:00:21:{i:02x}" for i in range(20)]
    offered = await b.offers(macs)

    def request(mac: str) -> bytes:
        return selecting_request(mac, offered[mac])

    loop = asyncio.get_running_loop()
    try:
        b.sent.clear()
        for mac in macs[:12]:
            b.handler.handle(request(mac), ("0.0.0.0", 68), 67)
        while not b.sent:  # the leases commit (one batch), then the first burst leaves
            await asyncio.sleep(0.001)
        start = loop.time()
        await asyncio.sleep(0.005)
        assert len(b.sent) == 4
        while len(b.sent) < 12:
            await asyncio.sleep(0.002)
            assert loop.time() - start < 5
        # 8 more at 20 a second, two at a time: ~400 ms, never all at once.
        assert loop.time() - start >= 0.25
        acks = [p for p, _ in b.sent]
        assert all(p.message_type is MessageType.ACK for p in acks)
        assert sorted(p.yiaddr for p in acks) == sorted(offered[m] for m in macs[:12])
        # Shutting down: whatever is durable leaves at once.
        b.sent.clear()
        for mac in macs[12:]:
            b.handler.handle(request(mac), ("0.0.0.0", 68), 67)
        await b.handler.drain(10)
        assert len(b.sent) == 8
    finally:
        b.db.close()


def store_writes(b: Bench, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The MACs of each lease write the handler hands to the store, from now on."""
    writes: list[list[str]] = []
    persist = b.leases.persist

    def spy(leases: list[Any]) -> Any:
        writes.append([lease.mac for lease in leases])
        return persist(leases)

    monkeypatch.setattr(b.leases, "persist", spy)
    return writes


async def test_leases_arriving_under_load_share_one_store_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a quiet spell a lease is written at once; while requests stream in (a
    write went out less than BUSY ago) the next ones wait up to HOLD and go as one."""
    from bootd.dhcp import handler as handler_mod

    # Long enough for a slow machine: a stall between two loop turns must not end
    # the busy spell, nor the hold before the test looks.
    monkeypatch.setattr(handler_mod, "BUSY", 5.0)
    monkeypatch.setattr(handler_mod, "HOLD", 0.2)
    b = Bench(tmp_path)
    macs = [f"52:54:00:00:22:{i:02x}" for i in range(4)]
    offered = await b.offers(macs)
    writes = store_writes(b, monkeypatch)
    try:
        b.sent.clear()
        for mac in macs[:3]:  # three loop turns, one REQUEST each
            b.handler.handle(selecting_request(mac, offered[mac]), ("0.0.0.0", 68), 67)
            await asyncio.sleep(0)
        assert writes == [[macs[0]]]  # the first at once; the others are held
        loop = asyncio.get_running_loop()
        start = loop.time()
        while len(b.sent) < 3:
            await asyncio.sleep(0.005)
            assert loop.time() - start < 5
        assert writes == [[macs[0]], macs[1:3]]
        assert all(p.message_type is MessageType.ACK for p, _ in b.sent)
        assert {p.yiaddr for p, _ in b.sent} == {offered[m] for m in macs[:3]}
        # Held leases are written at shutdown too, and their ACKs leave.
        b.handler.handle(selecting_request(macs[3], offered[macs[3]]), ("0.0.0.0", 68), 67)
        await asyncio.sleep(0)
        assert len(writes) == 2
        await b.handler.drain(10)
        assert writes[2] == [macs[3]] and len(b.sent) == 4
        # One wait observed per write.
        (hist,) = b.ctx.metrics.dhcp_ack_wait_seconds.collect()
        samples = {x.name: x.value for x in hist.samples}
        assert samples["bootd_dhcp_ack_wait_seconds_count"] == 3
        # The held write waited out HOLD (0.2 s here).
        assert 0.2 <= samples["bootd_dhcp_ack_wait_seconds_sum"] < loop.time() - start + 1
        # Every one of them is on disk.
        fresh = LeaseTable(b.db, b.ctx.clock, lambda ip: None)
        fresh.load()
        assert {x.mac for x in fresh.all()} == set(macs)
    finally:
        b.db.close()


async def test_a_busy_loop_hands_held_leases_over_without_the_late_timer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the loop is too busy reading to run the hold timer, the first burst to find
    HOLD_MAX_LEASES held hands them to the store itself."""
    from bootd.dhcp import handler as handler_mod

    monkeypatch.setattr(handler_mod, "BUSY", 5.0)
    monkeypatch.setattr(handler_mod, "HOLD", 30.0)  # the timer never fires in this test
    monkeypatch.setattr(handler_mod, "HOLD_MAX_LEASES", 2)
    b = Bench(tmp_path)
    b.handler.auto_flush = False  # as the service: flush() after each burst
    macs = [f"52:54:00:00:23:{i:02x}" for i in range(4)]
    offered = await b.offers(macs)
    writes = store_writes(b, monkeypatch)
    try:

        def burst(mac: str) -> None:
            b.handler.handle(selecting_request(mac, offered[mac]), ("0.0.0.0", 68), 67)
            b.handler.flush()

        burst(macs[0])
        assert writes == [[macs[0]]]  # after a quiet spell: at once
        burst(macs[1])
        assert writes == [[macs[0]]]  # held, and the timer is far off
        burst(macs[2])
        assert writes == [[macs[0]], macs[1:3]]  # two held: handed over
        burst(macs[3])
        assert writes == [[macs[0]], macs[1:3]]  # held again
        await b.handler.drain(10)
        assert writes[-1] == [macs[3]]
        assert {p.yiaddr for p, _ in b.sent[-4:]} == {offered[m] for m in macs}
    finally:
        b.db.close()


async def test_a_bursts_replies_to_one_destination_leave_as_one_gso_send(tmp_path: Path) -> None:
    """16 INFORMs read in one wake-up: 16 ACKs to 127.0.0.1:68, handed to the kernel at once."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 68))
    except OSError as exc:
        rx.close()
        pytest.skip(f"cannot bind the client port: {exc}")
    with rx:
        async with dhcp_on_loopback(tmp_path) as (_, svc, port):
            batches: list[int] = []
            gso = svc._gso
            real_send = gso.send

            def counting(
                sock: socket.socket,
                grams: list[bytes],
                peer: tuple[str, int] | None,
                equal: bool = False,
            ) -> int:
                batches.append(len(grams))
                return real_send(sock, grams, peer, equal)

            gso.send = counting  # type: ignore[method-assign,assignment]
            rx.setblocking(False)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for xid in range(1, 17):  # all queued before the loop runs: one burst
                    inform = DhcpPacket(
                        xid=xid, ciaddr="127.0.0.1", options={Opt.MESSAGE_TYPE: b"\x08"}
                    ).encode()
                    s.sendto(inform, ("127.0.0.1", port))
                got: list[int] = []
                for _ in range(100):
                    await asyncio.sleep(0.02)
                    try:
                        while True:
                            got.append(decode(rx.recv(2048)).xid)
                    except BlockingIOError:
                        pass
                    if len(got) == 16:
                        break
            assert sorted(got) == list(range(1, 17))
            assert batches == [16] and gso.gso


async def test_the_free_address_gauge_counts_every_pool(tmp_path: Path) -> None:
    """bootd_dhcp_free_addresses: the local pool and each relay subnet's, in one scrape."""
    dhcp = {
        "enabled": True,
        "port": free_port(socket.SOCK_DGRAM),
        "subnet": "127.0.0.0/8",
        "pool": "127.0.0.100-127.0.0.109",
        "relay_subnets": [
            {"subnet": "10.1.0.0/24", "pool": "10.1.0.50-10.1.0.60"},
            {"subnet": "10.2.0.0/24", "pool": "10.2.0.1-10.2.0.1"},
        ],
    }
    d = Daemon(parse_config(base_config(tmp_path, dhcp=dhcp, http={"enabled": False})))
    await d.start()
    try:
        svc = d.services[0]
        assert isinstance(svc, DhcpService)

        def gauge() -> float:
            (family,) = d.ctx.metrics.dhcp_free_addresses.collect()
            return family.samples[0].value

        assert gauge() == 10 + 11 + 1
        svc.leases.hold_offer("52:54:00:00:0f:01", "10.1.0.50", d.ctx.clock(), 3600)
        svc.leases.hold_offer("52:54:00:00:0f:02", "10.2.0.1", d.ctx.clock(), 3600)
        assert gauge() == 10 + 10 + 0
    finally:
        await d.stop()


@contextlib.asynccontextmanager
async def dhcp_on_loopback(tmp_path: Path) -> AsyncIterator[tuple[Daemon, DhcpService, int]]:
    """A daemon with only DHCP, on a free loopback port: (daemon, its DHCP service, port)."""
    port = free_port(socket.SOCK_DGRAM)
    cfg = base_config(tmp_path, dhcp={"enabled": True, "port": port}, http={"enabled": False})
    d = Daemon(parse_config(cfg))
    await d.start()
    try:
        svc = d.services[0]
        assert isinstance(svc, DhcpService)
        yield d, svc, port
    finally:
        await d.stop()


async def test_the_reader_yields_once_the_store_has_made_leases_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between bursts the reader polls the store; a reply ends its turn, so the ACKs it
    releases leave before the next requests are read."""
    from bootd.dhcp.service import BURST

    async with dhcp_on_loopback(tmp_path) as (_, svc, port):
        sock = svc._socks[0][0]
        asyncio.get_running_loop().remove_reader(sock.fileno())  # this test reads
        handled: list[bytes] = []
        monkeypatch.setattr(svc.handler, "handle", lambda data, src, p: handled.append(data))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for i in range(3 * BURST):
                tx.sendto(bytes([i]) * 300, ("127.0.0.1", port))
        replies = iter([False, True])
        monkeypatch.setattr(svc.ctx.db, "poll", lambda: next(replies, False))
        svc._readable(sock, port)
        assert len(handled) == 2 * BURST  # no reply after the first burst, one after the second
        svc._readable(sock, port)
        assert len(handled) == 3 * BURST
        assert [d[0] for d in handled] == list(range(3 * BURST))


@pytest.mark.root
async def test_a_full_disk_costs_acks_not_leases(tmp_path: Path) -> None:
    """state_dir on a full filesystem: the REQUEST gets no ACK (counted), the lease
    ACKed before stays, and once there is room the same client is ACKed and written."""
    state = tmp_path / "small"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(state)], check=True)
    try:
        b = Bench(state)
        try:
            first = await b.lease("52:54:00:00:0d:01")
            with open(state / "filler", "wb") as f, contextlib.suppress(OSError):
                while True:
                    f.write(bytes(1 << 16))
                    f.flush()
            got = await b.ask("52:54:00:00:0d:02", MessageType.DISCOVER)
            assert got is not None  # an OFFER writes nothing
            want = {"requested": got[0].yiaddr, "server_id": SERVER}
            assert await b.ask("52:54:00:00:0d:02", MessageType.REQUEST, **want) is None
            failed = b.ctx.metrics.dhcp_messages.labels("request", "store-error")
            assert failed._value.get() == 1
            (state / "filler").unlink()
            again = await b.ask("52:54:00:00:0d:02", MessageType.REQUEST, **want)
            assert again is not None and again[0].message_type is MessageType.ACK
            rows = {r["mac"]: r["ip"] for r in b.db.read("SELECT mac, ip FROM dhcp_leases")}
            assert rows == {"52:54:00:00:0d:01": first.yiaddr, "52:54:00:00:0d:02": got[0].yiaddr}
        finally:
            b.db.close()
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)
