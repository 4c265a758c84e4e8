"""dhcp.options: typed encodings (golden bytes, scapy), config errors, who gets them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.dhcp import BOOTP, DHCP

from bootd.boot.node import Node
from bootd.config import ConfigError, parse_config
from bootd.dhcp.chain import explain
from bootd.dhcp.describe import describe
from bootd.dhcp.exchange import Exchange
from bootd.proto.dhcp import DhcpPacket, MessageType, Opt, decode
from bootd.proto.dhcp.options import ip_bytes
from bootd.proto.dhcp.optvalues import (
    ENCODERS,
    MANAGED,
    NAMED,
    encode_option,
    encode_options_config,
)
from bootd.proto.dhcp.packet import BOOTREPLY
from tests.test_dhcp_logic import SERVER, Bench

OPTIONS: dict[Any, Any] = {
    "ntp-servers": ["10.0.0.1", "10.0.0.2"],
    "interface-mtu": 9000,
    "domain-search": ["cluster.local", "example.org"],
    "classless-static-routes": [
        "10.17.0.0/16 via 10.0.0.254",
        "0.0.0.0/0 via 10.0.0.1",
        "10.27.129.0/24 via 10.0.0.9",
    ],
    "time-offset": -3600,
    "root-path": "10.0.0.1:/srv/root",
    "ip-forwarding": False,
    "log-servers": "10.0.0.3",
    224: {"hex": "01:ff"},
    "225": {"u16": 513},
}


@pytest.mark.parametrize(
    ("key", "value", "code", "wire"),
    [
        ("ntp-servers", ["10.0.0.1", "10.0.0.2"], 42, "0a0000010a000002"),
        ("ntp-servers", "10.0.0.1", 42, "0a000001"),
        ("interface-mtu", 9000, 26, "2328"),
        ("time-offset", -3600, 2, "fffff1f0"),
        ("ip-forwarding", True, 19, "01"),
        ("default-ip-ttl", 64, 23, "40"),
        ("root-path", "10.0.0.1:/srv/root", 17, b"10.0.0.1:/srv/root".hex()),
        # RFC 3397 §3: each name as DNS labels, ending in the root label.
        ("domain-search", ["eng.apple.com", "marketing.apple.com"], 119,
         "03656e67056170706c6503636f6d00096d61726b6574696e67056170706c6503636f6d00"),
        # RFC 3442 §1: width, only the significant octets of the destination, router.
        ("classless-static-routes", ["10.17.0.0/16 via 10.0.0.254"], 121, "100a110a0000fe"),
        ("classless-static-routes", ["0.0.0.0/0 via 10.0.0.1"], 121, "000a000001"),
        ("classless-static-routes", ["10.27.129.0/24 via 10.0.0.9"], 121, "180a1b810a000009"),
        ("classless-static-routes", ["10.229.0.128/25 via 10.0.0.9"], 121, "190ae500800a000009"),
        (224, {"hex": "01:ff"}, 224, "01ff"),
        ("224", {"string": "hi"}, 224, "6869"),
        (250, {"u32": 1}, 250, "00000001"),
        (251, {"i32": -1}, 251, "ffffffff"),
        (252, {"ip": "10.0.0.7"}, 252, "0a000007"),
        (253, {"bool": False}, 253, "00"),
        (254, {"routes": "10.0.0.0/8 via 10.0.0.1"}, 254, "080a0a000001"),
    ],
)  # fmt: skip
def test_golden_encodings(key: Any, value: Any, code: int, wire: str) -> None:
    assert encode_option(key, value) == (code, bytes.fromhex(wire))


def test_scapy_decodes_them_as_we_meant() -> None:
    opts = encode_options_config(OPTIONS)
    wire = DhcpPacket(op=BOOTREPLY, options={Opt.MESSAGE_TYPE: b"\x05", **opts}).encode()
    got = {o[0]: o[1:] for o in BOOTP(wire)[DHCP].options if isinstance(o, tuple)}
    assert got["NTP_server"] == ("10.0.0.1", "10.0.0.2")
    assert got["interface-mtu"] == (9000,)
    assert got["classless_static_routes"] == (
        ["10.17.0.0/16:10.0.0.254", "0.0.0.0/0:10.0.0.1", "10.27.129.0/24:10.0.0.9"],
    )
    assert got["log_server"] == ("10.0.0.3",)
    assert got["ip-forwarding"] == (0,)
    assert got["root_disk_path"] == (b"10.0.0.1:/srv/root",)
    assert got[224] == (b"\x01\xff",)


def test_a_long_search_list_is_split_per_rfc_3396() -> None:
    names = [f"rack{i:02d}.row{i:02d}.hall.cluster.example.org" for i in range(12)]
    code, value = encode_option("domain-search", names)
    assert len(value) > 255
    wire = DhcpPacket(op=BOOTREPLY, options={code: value}).encode()
    assert decode(wire).options[code] == value  # the instances concatenate back


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"ntp-servers": "x"}, "dhcp.options: ntp-servers: 'x' is not an IPv4 address"),
        ({"ntp-servers": []}, "dhcp.options: ntp-servers: needs one IPv4 address or a list"),
        ({3: {"ip": "10.0.0.9"}}, "dhcp.options: 3: option 3 is not set here: set dhcp.router"),
        ({"67": {"string": "x"}}, "dhcp.options: 67: option 67 is not set here: boot files"),
        ({"nope": 1}, "dhcp.options: 'nope' is not an option name"),
        ({0: {"hex": "00"}}, "dhcp.options: 0: option codes run from 1 to 254"),
        ({300: {"hex": "00"}}, "dhcp.options: 300: option codes run from 1 to 254"),
        ({224: "01ff"}, "dhcp.options: 224: give the type and value"),
        ({224: {"blob": 1}}, "dhcp.options: 224: unknown type 'blob'"),
        ({224: {"hex": "zz"}}, "dhcp.options: 224: 'zz' is not hex bytes"),
        ({"interface-mtu": 20}, "dhcp.options: interface-mtu: an MTU is at least 68"),
        ({"interface-mtu": 70000}, "dhcp.options: interface-mtu: 70000 is not an integer"),
        ({"time-offset": True}, "dhcp.options: time-offset: True is not an integer"),
        ({"ip-forwarding": 1}, "dhcp.options: ip-forwarding: 1 is not true or false"),
        ({"root-path": "ü"}, "dhcp.options: root-path: 'ü' is not ASCII"),
        ({"domain-search": ["a..b"]}, "dhcp.options: domain-search: 'a..b': label ''"),
        ({"classless-static-routes": ["10.2.0.1/16 via 10.0.0.1"]}, "has host bits set"),
        ({"classless-static-routes": ["10.2.0.0/16"]}, "is not a route like"),
        ({"ntp-servers": ["10.0.0.1"], 42: {"ips": ["10.0.0.2"]}}, "42: option 42 is set twice"),
    ],
)  # fmt: skip
def test_bad_options_name_the_entry(options: dict[Any, Any], error: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config({"dhcp": {"options": options}})
    assert len(ei.value.errors) == 1 and error in ei.value.errors[0], ei.value.errors


def test_relay_subnet_errors_name_their_path() -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config({"dhcp": {"relay_subnets": [{"subnet": "10.1.0.0/24", "options": {6: {}}}]}})
    assert ei.value.errors[0].startswith("dhcp.relay_subnets[0].options: 6: option 6 is not set")


def test_every_named_option_has_an_encoder_and_is_not_managed() -> None:
    for name, (code, kind) in NAMED.items():
        assert kind in ENCODERS and code not in MANAGED, name


@pytest.fixture
async def opts_bench(tmp_path: Path) -> AsyncIterator[Bench]:
    b = Bench(
        tmp_path,
        options={"ntp-servers": ["10.0.0.1"], "interface-mtu": 9000, 224: {"hex": "aa"}},
        relay_subnets=[
            {"subnet": "10.1.0.0/24", "pool": "10.1.0.50-10.1.0.60",
             "options": {"interface-mtu": 1500, "domain-search": ["relay.example"]}},
        ],
    )  # fmt: skip
    yield b
    b.db.close()


def prl(*codes: int) -> dict[int, bytes]:
    return {Opt.PARAM_REQUEST: bytes([1, 3, 6, *codes])}


async def test_options_go_only_to_clients_that_ask(opts_bench: Bench) -> None:
    asks = await opts_bench.lease("52:54:00:0a:00:01", options=prl(42, 26))
    assert asks.options[42] == bytes([10, 0, 0, 1])
    assert asks.options[26] == (9000).to_bytes(2, "big")
    assert 224 not in asks.options  # not asked for
    silent = await opts_bench.lease("52:54:00:0a:00:02", options=prl())
    assert not {42, 26, 224} & set(silent.options)
    # No option 55 at all: the client gets every configured option.
    bare = await opts_bench.lease("52:54:00:0a:00:03")
    assert {42, 26, 224} <= set(bare.options)
    # Mask, router, DNS and domain are sent whether asked for or not, as before.
    assert {Opt.SUBNET_MASK, Opt.ROUTER, Opt.DNS, Opt.DOMAIN} <= set(silent.options)


async def test_a_relay_subnet_overrides_and_adds_to_the_top_level(opts_bench: Bench) -> None:
    got = await opts_bench.ask(
        "52:54:00:0a:00:04", MessageType.DISCOVER, giaddr="10.1.0.1",
        options=prl(42, 26, 119),
    )  # fmt: skip
    assert got is not None
    o = got[0].options
    assert got[0].yiaddr.startswith("10.1.0.")
    assert o[26] == (1500).to_bytes(2, "big")  # the relay subnet's own
    assert o[42] == bytes([10, 0, 0, 1])  # inherited
    assert o[119] == b"\x05relay\x07example\x00"


async def test_explain_and_describe_show_them(opts_bench: Bench) -> None:
    ack = await opts_bench.lease("52:54:00:0a:00:05", options=prl(42, 26))
    shown = describe(ack)["options"]
    assert isinstance(shown, dict)
    assert shown["42 ntp-servers"] == ["10.0.0.1"]
    assert shown["26 interface-mtu"] == 9000
    req = DhcpPacket(
        xid=9, chaddr=bytes.fromhex("5254000a0006") + bytes(10),
        options={Opt.MESSAGE_TYPE: bytes([MessageType.DISCOVER]), **prl(42)},
    )  # fmt: skip
    mac = "52:54:00:0a:00:06"
    ex = explain(opts_bench.stages, Exchange(decode(req.encode()), opts_bench.now, mac))
    assert "dhcp.options sent: 42" in ex.why
    assert "dhcp.options not asked for: 26, 224" in ex.why
    assert ex.reply is not None and ex.reply.options[42] == bytes([10, 0, 0, 1])
    assert ex.reply.options[Opt.SERVER_ID] == ip_bytes(SERVER)


async def test_group_options_add_to_and_override_the_subnets(tmp_path: Path) -> None:
    b = Bench(
        tmp_path,
        options={"interface-mtu": 1500, "ntp-servers": ["10.0.0.1"]},
        group_options={
            "storage": {"interface-mtu": 9000, "root-path": "10.0.0.5:/export/root"},
            "site-b": {"ntp-servers": ["10.0.0.2"], "interface-mtu": 1400},
        },
    )
    storage, both, plain = "52:54:00:0a:01:01", "52:54:00:0a:01:02", "52:54:00:0a:01:03"
    await b.nodes.upsert([
        Node(mac=storage, groups=("storage",)),
        Node(mac=both, groups=("site-b", "storage")),
        Node(mac=plain, groups=("compute",)),
    ])  # fmt: skip
    ask = prl(26, 42, 17)
    got = (await b.lease(storage, options=ask)).options
    assert int.from_bytes(got[26], "big") == 9000 and got[17] == b"10.0.0.5:/export/root"
    assert got[42] == bytes([10, 0, 0, 1])  # the subnet's, not overridden for this group
    got = (await b.lease(both, options=ask)).options
    # The node's first group wins a code both set; the others still add theirs.
    assert int.from_bytes(got[26], "big") == 1400 and got[42] == bytes([10, 0, 0, 2])
    assert got[17] == b"10.0.0.5:/export/root"
    got = (await b.lease(plain, options=ask)).options
    assert int.from_bytes(got[26], "big") == 1500 and 17 not in got
    # Still only what the client asks for.
    got = (await b.lease("52:54:00:0a:01:01", options=prl(42))).options
    assert 26 not in got and 17 not in got
    req = DhcpPacket(chaddr=bytes.fromhex("5254000a0102") + bytes(10),
                     options={Opt.MESSAGE_TYPE: bytes([MessageType.DISCOVER]), **ask})  # fmt: skip
    ex = explain(b.stages, Exchange(decode(req.encode()), b.now, both))
    assert "dhcp.group_options of site-b, storage" in ex.why
    b.db.close()


def test_group_options_errors_name_the_group() -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config({"dhcp": {"group_options": {"gpu": {"ntp-servers": "x"}}}})
    assert ei.value.errors == ["dhcp.group_options: gpu: ntp-servers: 'x' is not an IPv4 address"]


async def test_a_reload_changes_options_group_options_and_known_clients(tmp_path: Path) -> None:
    b = Bench(tmp_path, options={"ntp-servers": ["10.0.0.1"]},
              group_options={"storage": {"interface-mtu": 9000}})  # fmt: skip
    node, stranger = "52:54:00:0a:02:01", "52:54:00:0a:02:02"
    await b.nodes.upsert([Node(mac=node, groups=("storage",))])
    got = (await b.lease(node, options=prl(42, 26))).options
    assert got[42] == bytes([10, 0, 0, 1]) and int.from_bytes(got[26], "big") == 9000
    # The stages read ctx.config per packet; a reload swaps it (as Daemon.reload does).
    new = b.ctx.config.model_dump(by_alias=True)
    new["dhcp"].update(
        options={"ntp-servers": ["10.0.0.3"]},
        group_options={"storage": {"interface-mtu": 4000}},
        ignore_unknown_clients=True,
    )
    b.ctx.config = parse_config(new)
    got = (await b.lease(node, options=prl(42, 26))).options
    assert got[42] == bytes([10, 0, 0, 3]) and int.from_bytes(got[26], "big") == 4000
    assert await b.ask(stranger, MessageType.DISCOVER) is None
    b.db.close()
