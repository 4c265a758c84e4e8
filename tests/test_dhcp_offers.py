"""Kept offers: a REQUEST taking an OFFER as made is ACKed from the OFFER's bytes.

The ACK must be the one the stages would have built, byte for byte, and anything
that could change the answer (another server, another address, changed options, a
reload, an inventory change, an expired offer) must go through the stages instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bootd.boot.node import Node
from bootd.config import parse_config
from bootd.dhcp import offers as offers_mod
from bootd.dhcp.handler import Destination
from bootd.dhcp.offers import OfferMemo
from bootd.proto.dhcp import DhcpPacket, MessageType, Opt, decode
from bootd.proto.dhcp.options import ip_bytes
from tests.test_dhcp_logic import SERVER, Bench

GROUP = {"gpu": {"interface-mtu": 9000, "ntp-servers": ["10.0.0.9"]}}
EXTRA = {"ntp-servers": ["10.0.0.1"], "domain-search": ["cluster.local"]}
UEFI = {
    Opt.PARAM_REQUEST: bytes([1, 3, 6, 12, 15, 28, 42, 43, 51, 54, 58, 59, 60, 66, 67, 97]),
    Opt.MAX_SIZE: b"\x05\xc0",
    Opt.VENDOR_CLASS: b"PXEClient:Arch:00007:UNDI:003016",
    Opt.CLIENT_ARCH: b"\x00\x07",
    Opt.CLIENT_NDI: b"\x01\x03\x10",
    Opt.UUID_GUID: b"\x00" + bytes(range(16)),
}
# (name, MAC, DISCOVER and REQUEST options, header fields, REQUEST-only header fields)
SHAPES: list[tuple[str, str, dict[int, bytes], dict[str, Any], dict[str, Any]]] = [
    ("uefi-pxe", "52:54:00:0f:00:01", UEFI, {}, {}),
    (
        "bios-pxe",
        "52:54:00:0f:00:02",
        {**UEFI, Opt.VENDOR_CLASS: b"PXEClient:Arch:00000:UNDI:002001", Opt.CLIENT_ARCH: b"\0\0"},
        {},
        {},
    ),
    (
        "http-boot",
        "52:54:00:0f:00:03",
        {**UEFI, Opt.VENDOR_CLASS: b"HTTPClient:Arch:00016", Opt.CLIENT_ARCH: b"\x00\x10"},
        {},
        {},
    ),
    ("ipxe", "52:54:00:0f:00:04", {**UEFI, Opt.USER_CLASS: b"\x04iPXE"}, {}, {}),
    (
        "linux-hostname",
        "52:54:00:0f:00:05",
        {Opt.PARAM_REQUEST: bytes([1, 3, 6, 15, 42, 119]), Opt.HOSTNAME: b"scratch"},
        {},
        {},
    ),
    (
        "linux-fqdn",
        "52:54:00:0f:00:06",
        {Opt.PARAM_REQUEST: bytes([1, 3, 6]), Opt.CLIENT_FQDN: b"\x00\x00\x00web1.example"},
        {},
        {},
    ),
    (
        "relayed-82",
        "52:54:00:0f:00:07",
        {Opt.PARAM_REQUEST: bytes([1, 28, 2, 3, 15, 6, 12]), Opt.RELAY_AGENT: b"\x01\x04port"},
        {"giaddr": "10.1.0.1"},
        {},
    ),
    ("broadcast-request", "52:54:00:0f:00:08", UEFI, {}, {"flags": 0x8000}),
    ("reserved-grouped", "52:54:00:0f:00:09", UEFI, {}, {}),
    ("no-option-55", "52:54:00:0f:00:0a", {}, {}, {}),
]
RESERVED = Node(mac="52:54:00:0f:00:09", ip="10.0.0.50", hostname="cn09", groups=("gpu",))


class Wires(Bench):
    """A Bench that also keeps each reply's bytes and sends packets built here."""

    def __init__(self, tmp: Path, offers: bool) -> None:
        tmp.mkdir()
        super().__init__(
            tmp, offers, pool="10.0.0.100-10.0.0.200", options=EXTRA, group_options=GROUP
        )
        self.wires: list[tuple[bytes, Destination]] = []
        self.handler.send = self._sent

    def _sent(self, wire: bytes, dest: Destination) -> None:
        self.wires.append((wire, dest))
        self.sent.append((decode(wire), dest))

    async def send(self, packet: DhcpPacket, source: tuple[str, int] = ("0.0.0.0", 68)) -> bytes:
        before = len(self.wires)
        self.handler.handle(packet.encode(), source, 67)
        await self.handler.drain(10)
        assert len(self.wires) == before + 1, "one reply"
        return self.wires[-1][0]

    @property
    def memo(self) -> OfferMemo:
        assert self.handler.offers is not None
        return self.handler.offers


def packet(
    mac: str, mt: MessageType, xid: int, options: dict[int, bytes], **fields: Any
) -> DhcpPacket:
    return DhcpPacket(
        xid=xid,
        chaddr=bytes.fromhex(mac.replace(":", "")) + bytes(10),
        options={Opt.MESSAGE_TYPE: bytes([mt]), **options},
        **fields,
    )


def request(
    mac: str, offered: str, xid: int, options: dict[int, bytes], **fields: Any
) -> DhcpPacket:
    extra = {Opt.REQUESTED_IP: ip_bytes(offered), Opt.SERVER_ID: ip_bytes(SERVER)}
    return packet(mac, MessageType.REQUEST, xid, {**extra, **options}, **fields)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Wires, Wires]]:
    kept, stages = Wires(tmp_path / "kept", True), Wires(tmp_path / "stages", False)
    for b in (kept, stages):
        await b.nodes.upsert([RESERVED])
    yield kept, stages
    for b in (kept, stages):
        b.db.close()


async def test_ack_from_the_offer_is_the_stages_ack(pair: tuple[Wires, Wires]) -> None:
    """Every client shape: the same ACK bytes, destination and lease either way."""
    kept, stages = pair
    for i, (name, mac, options, fields, request_fields) in enumerate(SHAPES):
        acks = []
        for b in (kept, stages):
            source = (fields["giaddr"], 67) if "giaddr" in fields else ("0.0.0.0", 68)
            offer = decode(
                await b.send(packet(mac, MessageType.DISCOVER, 100 + i, options, **fields), source)
            )
            assert offer.message_type is MessageType.OFFER, name
            # A new xid for the REQUEST, as some clients do: the ACK must echo it.
            req = request(mac, offer.yiaddr, 200 + i, options, **{**fields, **request_fields})
            wire = await b.send(req, source)
            assert decode(wire).message_type is MessageType.ACK, name
            assert decode(wire).xid == 200 + i, name
            lease = b.leases.lease(mac)
            assert lease is not None, name
            acks.append((wire, b.wires[-1][1], lease.ip, lease.expires, lease.hostname))
        assert acks[0] == acks[1], name
    assert kept.memo.hits == len(SHAPES)
    assert kept.leases.lease(RESERVED.mac).ip == "10.0.0.50"  # type: ignore[union-attr]
    assert kept.leases.lease(RESERVED.mac).hostname == "cn09"  # type: ignore[union-attr]
    fqdn = kept.leases.lease("52:54:00:0f:00:06")
    assert fqdn is not None and fqdn.hostname == "web1"


async def offered(b: Wires, mac: str, options: dict[int, bytes] = UEFI) -> str:
    return decode(await b.send(packet(mac, MessageType.DISCOVER, 7, options))).yiaddr


async def test_another_server_chosen_drops_the_offer(pair: tuple[Wires, Wires]) -> None:
    kept, _ = pair
    mac = "52:54:00:0f:01:01"
    ip = await offered(kept, mac)
    req = packet(
        mac,
        MessageType.REQUEST,
        7,
        {**UEFI, Opt.REQUESTED_IP: ip_bytes(ip), Opt.SERVER_ID: ip_bytes("10.0.0.2")},
    )
    kept.handler.handle(req.encode(), ("0.0.0.0", 68), 67)
    await kept.handler.drain(10)
    assert kept.memo.hits == 0
    assert kept.leases.offered(mac, kept.now) is None  # the stages dropped it
    assert kept.leases.lease(mac) is None


async def test_another_address_is_nakd_by_the_stages(pair: tuple[Wires, Wires]) -> None:
    kept, _ = pair
    mac = "52:54:00:0f:01:02"
    await offered(kept, mac)
    reply = decode(await kept.send(request(mac, "10.0.0.1", 7, UEFI)))  # not in the pool
    assert reply.message_type is MessageType.NAK
    assert kept.memo.hits == 0
    assert kept.leases.lease(mac) is None


@pytest.mark.parametrize(
    "change",
    ["option-55", "option-added", "chaddr-padding", "relay", "ciaddr", "port"],
)
async def test_a_changed_request_goes_through_the_stages(
    pair: tuple[Wires, Wires], change: str
) -> None:
    """The ACK is still right (the stages build it), but not from the kept bytes."""
    kept, stages = pair
    mac = "52:54:00:0f:02:01"
    options, fields, port = dict(UEFI), {}, 67
    if change == "option-55":
        options[Opt.PARAM_REQUEST] = bytes([1, 3, 6])
    elif change == "option-added":
        options[Opt.USER_CLASS] = b"\x04iPXE"
    elif change == "relay":
        fields["giaddr"] = "10.1.0.1"
    elif change == "ciaddr":
        fields["ciaddr"] = "10.0.0.100"
    elif change == "port":
        port = 4011
    acks = []
    for b in (kept, stages):
        ip = await offered(b, mac)
        req = request(mac, ip, 7, options, **fields)
        if change == "chaddr-padding":
            req.chaddr = req.chaddr[:6] + b"\x01" * 10
        b.handler.handle(req.encode(), ("0.0.0.0", 68), port)
        await b.handler.drain(10)
        acks.append(b.wires[-1] if len(b.wires) == 2 else None)
    assert kept.memo.hits == 0
    assert acks[0] == acks[1]


async def test_a_reload_or_an_inventory_change_goes_through_the_stages(
    pair: tuple[Wires, Wires],
) -> None:
    kept, _ = pair
    mac = "52:54:00:0f:03:01"
    ip = await offered(kept, mac)
    kept.ctx.config = parse_config({**kept.raw, "dhcp": {**kept.raw["dhcp"], "lease_time": 600}})
    ack = decode(await kept.send(request(mac, ip, 7, UEFI)))
    assert ack.message_type is MessageType.ACK and kept.memo.hits == 0
    assert ack.options[Opt.LEASE_TIME] == (600).to_bytes(4, "big")  # the new config's

    mac = "52:54:00:0f:03:02"
    ip = await offered(kept, mac)
    await kept.nodes.upsert([Node(mac=mac, hostname="renamed")])
    ack = decode(await kept.send(request(mac, ip, 7, UEFI)))
    assert ack.message_type is MessageType.ACK and kept.memo.hits == 0
    assert ack.options[Opt.HOSTNAME] == b"renamed"


async def test_an_expired_offer_goes_through_the_stages(pair: tuple[Wires, Wires]) -> None:
    kept, _ = pair
    mac = "52:54:00:0f:04:01"
    ip = await offered(kept, mac)
    kept.now += kept.ctx.config.dhcp.offer_timeout + 1
    ack = decode(await kept.send(request(mac, ip, 7, UEFI)))
    assert kept.memo.hits == 0
    assert ack.message_type is MessageType.ACK  # the address is still free: the stages ACK


async def test_an_offer_is_used_once(pair: tuple[Wires, Wires]) -> None:
    """A retransmitted REQUEST after the ACK goes through the stages (INIT state checks)."""
    kept, stages = pair
    mac = "52:54:00:0f:05:01"
    acks = []
    for b in (kept, stages):
        ip = await offered(b, mac)
        first = await b.send(request(mac, ip, 7, UEFI))
        again = await b.send(request(mac, ip, 7, UEFI))
        acks.append((first, again))
    assert kept.memo.hits == 1
    assert acks[0] == acks[1]


async def test_kept_offers_are_bounded(
    pair: tuple[Wires, Wires], monkeypatch: pytest.MonkeyPatch
) -> None:
    kept, _ = pair
    monkeypatch.setattr(offers_mod, "MAX_PENDING_OFFERS", 3)
    macs = [f"52:54:00:0f:06:{i:02x}" for i in range(4)]
    ips = {mac: await offered(kept, mac, {}) for mac in macs}
    assert len(kept.memo._offers) <= 3
    # The one kept past the bound is still ACKed from its offer; the pool had room for all 4.
    last = macs[-1]
    assert decode(await kept.send(request(last, ips[last], 7, {}))).message_type is MessageType.ACK
    assert kept.memo.hits == 1
