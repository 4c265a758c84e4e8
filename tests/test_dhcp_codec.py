"""DHCP codec: golden bytes, RFC 3396 and option overload, hypothesis round trips and fuzzing, scapy."""

from __future__ import annotations

import ast
import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootd.proto.dhcp import DhcpDecodeError, DhcpPacket, MessageType, Opt, decode
from bootd.proto.dhcp.options import client_hostname, encode_options, parse_user_class

# A PXE DHCPDISCOVER as Wireshark shows it ("Bootstrap Protocol (Discover)").
DISCOVER_HEX = (
    "01"  # Message type: Boot Request (1)
    "01"  # Hardware type: Ethernet (0x01)
    "06"  # Hardware address length: 6
    "00"  # Hops: 0
    "12345678"  # Transaction ID: 0x12345678
    "0004"  # Seconds elapsed: 4
    "8000"  # Bootp flags: 0x8000, Broadcast flag (Broadcast)
    "00000000"  # Client IP address: 0.0.0.0
    "00000000"  # Your (client) IP address: 0.0.0.0
    "00000000"  # Next server IP address: 0.0.0.0
    "00000000"  # Relay agent IP address: 0.0.0.0
    "525400000001"
    + "00" * 10  # Client MAC address: 52:54:00:00:00:01, padding
    + "00" * 64  # Server host name not given
    + "00" * 128  # Boot file name not given
    + "63825363"  # Magic cookie: DHCP
    "350101"  # Option: (53) DHCP Message Type (Discover)
    "3c20"
    + b"PXEClient:Arch:00007:UNDI:003016".hex()  # Option: (60) Vendor class identifier
    + "5d020007"  # Option: (93) Client System Architecture: EFI x86-64 (7)
    "370401030643"  # Option: (55) Parameter Request List: 1, 3, 6, 67
    "00"  # Padding
    "ff"  # Option: (255) End
)


def test_golden_discover_decodes_like_wireshark() -> None:
    p = decode(bytes.fromhex(DISCOVER_HEX))
    assert (p.op, p.htype, p.hlen, p.hops, p.xid, p.secs) == (1, 1, 6, 0, 0x12345678, 4)
    assert p.broadcast and p.flags == 0x8000
    assert p.mac == "52:54:00:00:00:01"
    assert p.message_type is MessageType.DISCOVER
    assert p.vendor_class == "PXEClient:Arch:00007:UNDI:003016"
    assert p.vendor_class_id == b"PXEClient:Arch:00007:UNDI:003016"  # as it came
    assert p.client_arch == 7
    assert p.options[Opt.PARAM_REQUEST] == bytes([1, 3, 6, 67])
    assert list(p.options) == [53, 60, 93, 55]


def test_golden_offer_encodes_byte_for_byte() -> None:
    offer = DhcpPacket(
        op=2,
        xid=0x12345678,
        flags=0x8000,
        yiaddr="10.0.0.100",
        siaddr="10.0.0.1",
        chaddr=bytes.fromhex("525400000001") + bytes(10),
        file=b"ipxe.efi",
        options={
            Opt.MESSAGE_TYPE: b"\x02",
            Opt.SERVER_ID: bytes([10, 0, 0, 1]),
            Opt.LEASE_TIME: (3600).to_bytes(4, "big"),
        },
    )
    wire = offer.encode()
    expected = (
        "02010600" + "12345678" + "0000" + "8000"  # Boot Reply, Ethernet, xid, broadcast
        "00000000"
        + "0a000064"
        + "0a000001"
        + "00000000"  # ciaddr yiaddr=10.0.0.100 siaddr=10.0.0.1 giaddr
        "525400000001"
        + "00" * 10
        + "00" * 64  # chaddr, sname
        + b"ipxe.efi".hex()
        + "00" * 120  # Boot file name: ipxe.efi
        + "63825363"  # magic cookie
        "350102"  # (53) DHCP Message Type: Offer
        "36040a000001"  # (54) DHCP Server Identifier: 10.0.0.1
        "330400000e10"  # (51) IP Address Lease Time: 1 hour
        "ff"  # (255) End
    )
    body = bytes.fromhex(expected)
    assert wire[: len(body)] == body
    # RFC 1542 §2.1: padded to the 300-octet BOOTP minimum with zeros.
    assert len(wire) == 300 and wire[len(body) :] == bytes(300 - len(body))


def test_long_option_is_split_and_concatenated_rfc3396() -> None:
    value = bytes(range(256)) * 2  # 512 bytes: three instances on the wire
    wire = encode_options({Opt.USER_CLASS: value, 224: b"x"})
    assert wire[0] == Opt.USER_CLASS and wire[1] == 255
    assert wire[257] == Opt.USER_CLASS and wire[258] == 255
    assert wire[514] == Opt.USER_CLASS and wire[515] == 2
    p = DhcpPacket(options={Opt.MESSAGE_TYPE: b"\x01", 77: value, 224: b"x"})
    back = decode(p.encode())
    assert back.options[77] == value and back.options[224] == b"x"


def test_encoded_options_do_not_depend_on_the_wire_memo() -> None:
    # The encoder remembers each (code, value) pair's wire form. The same options give
    # the same bytes whether remembered or not, from bytes or an (unhashable) bytearray;
    # PAD and END are never written as options; the memo stays within its bound.
    from bootd.proto.dhcp import options as codec

    opts = {Opt.MESSAGE_TYPE: b"\x02", Opt.SERVER_ID: b"\x0a\x00\x00\x01", 0: b"", 255: b""}
    for memo in codec._WIRE:
        memo.clear()
    first = encode_options(opts)
    assert first == bytes.fromhex("35010236040a000001ff")
    assert encode_options(opts) == first  # now from the memo
    as_bytearray = {c: bytearray(v) for c, v in opts.items()}
    assert encode_options(as_bytearray) == first
    long = {Opt.USER_CLASS: bytearray(300)}
    assert encode_options(long) == encode_options({Opt.USER_CLASS: bytes(300)})
    for i in range(codec._WIRE_MAX + 10):
        encode_options({Opt.UUID_GUID: i.to_bytes(17, "big")})
        assert len(codec._WIRE[Opt.UUID_GUID]) <= codec._WIRE_MAX
    assert encode_options(opts) == first


def test_overload_option_52_reads_file_then_sname() -> None:
    p = DhcpPacket(options={Opt.MESSAGE_TYPE: b"\x01", Opt.OVERLOAD: b"\x03"})
    # Option 12 starts in the options area and continues in file, then sname (RFC 3396 §7).
    wire = bytearray(p.encode())
    wire[-1:] = b""
    file_off, sname_off = 108, 44
    wire[file_off : file_off + 8] = bytes([12, 3]) + b"def" + bytes([224, 1, 7])
    wire[sname_off : sname_off + 6] = bytes([12, 3]) + b"ghi" + b"\xff"
    opts_end = wire.index(b"\xff", 240)
    wire[opts_end : opts_end + 1] = bytes([12, 3]) + b"abc" + b"\xff"
    back = decode(bytes(wire))
    assert back.options[12] == b"abcdefghi"
    assert back.options[224] == b"\x07"
    assert back.file == b"" and back.sname == b""


def test_unknown_options_pass_through() -> None:
    p = DhcpPacket(options={Opt.MESSAGE_TYPE: b"\x01", 250: b"\x01\x02", 82: b"\x01\x03abc"})
    back = decode(p.encode())
    assert back.options[250] == b"\x01\x02" and back.options[82] == b"\x01\x03abc"


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"", "truncated"),
        (b"\x01" * 239, "truncated"),
        (bytes.fromhex(DISCOVER_HEX)[:236] + b"\x00\x00\x00\x00", "bad-cookie"),
        (bytes([3]) + bytes.fromhex(DISCOVER_HEX)[1:], "bad-op"),
        (bytes.fromhex(DISCOVER_HEX)[:-1] + b"\x0c\x09abc", "bad-option"),
        (bytes.fromhex(DISCOVER_HEX)[:-1] + b"\x0c", "bad-option"),
        (bytes.fromhex(DISCOVER_HEX)[:-1] + b"\x34\x01\x07\xff", "bad-overload"),
    ],
)
def test_malformed_input_raises_the_one_decode_error(wire: bytes, reason: str) -> None:
    with pytest.raises(DhcpDecodeError) as info:
        decode(wire)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({12: b"node17"}, "node17"),
        ({12: b"Node17.cluster.example"}, "node17"),  # first label, lower case
        ({12: b"name\0"}, "name"),  # NUL-terminated, as some firmware sends it
        ({81: b"\x05\x00\x00\x06nid007\x07cluster\x00", 12: b"other"}, "nid007"),  # E: wire
        ({81: b"\x01\x00\x00Web.example.com"}, "web"),  # ASCII form
        ({81: b"\x04\x00\x00\x00", 12: b"h"}, "h"),  # empty FQDN: option 12 instead
        ({81: b"\x04\x00\x00\x3f" + b"a" * 10}, None),  # length past the end: no name
        ({12: b"bad_name"}, None),
        ({12: b"-x"}, None),
        ({12: b"a" * 64}, None),
        ({12: b"caf\xc3\xa9"}, None),
        ({12: b"x;rm -rf"}, None),
        ({}, None),
    ],
)
def test_client_hostname_is_one_valid_label_or_none(
    options: dict[int, bytes], name: str | None
) -> None:
    assert client_hostname(options) == name


@given(st.dictionaries(st.sampled_from([12, 81]), st.binary(max_size=80)))
def test_client_hostname_never_raises(options: dict[int, bytes]) -> None:
    got = client_hostname(options)
    assert got is None or (0 < len(got) <= 63 and got.replace("-", "").isalnum())


def test_user_class_raw_and_rfc3004() -> None:
    assert parse_user_class(b"iPXE") == [b"iPXE"]
    assert parse_user_class(b"\x04iPXE\x03foo") == [b"iPXE", b"foo"]


ips = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
option_values = st.dictionaries(
    st.integers(1, 254).filter(lambda c: c not in (Opt.OVERLOAD,)),
    st.binary(min_size=0, max_size=600),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(
    xid=st.integers(0, 2**32 - 1),
    flags=st.integers(0, 0xFFFF),
    addrs=st.tuples(ips, ips, ips, ips),
    chaddr=st.binary(min_size=16, max_size=16),
    sname=st.binary(max_size=63).map(lambda b: b.replace(b"\0", b"a")),
    file=st.binary(max_size=127).map(lambda b: b.replace(b"\0", b"a")),
    options=option_values,
)
def test_round_trip(
    xid: int,
    flags: int,
    addrs: tuple[str, str, str, str],
    chaddr: bytes,
    sname: bytes,
    file: bytes,
    options: dict[int, bytes],
) -> None:
    p = DhcpPacket(
        xid=xid,
        flags=flags,
        ciaddr=addrs[0],
        yiaddr=addrs[1],
        siaddr=addrs[2],
        giaddr=addrs[3],
        chaddr=chaddr,
        sname=sname,
        file=file,
        options=options,
    )
    assert decode(p.encode()) == p


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=700))
def test_fuzz_only_decode_error_escapes(data: bytes) -> None:
    with contextlib.suppress(DhcpDecodeError):
        decode(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=1, max_size=400), st.integers(0, 3))
def test_fuzz_valid_header_garbage_options(tail: bytes, overload: int) -> None:
    head = bytes.fromhex(DISCOVER_HEX)[:240]
    data = head + (bytes([52, 1, overload]) if overload else b"") + tail
    try:
        p = decode(data)
    except DhcpDecodeError:
        return
    # Whatever decodes must survive a re-encode and decode to the same options.
    assert decode(p.encode()).options == p.options


def test_codec_is_sans_io() -> None:
    """proto/ never imports I/O, clocks or asyncio (ARCHITECTURE.md)."""
    banned = {"asyncio", "socket", "aiohttp", "time", "os", "select", "selectors"}
    for path in Path("bootd/proto/dhcp").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            assert not banned & set(names), f"{path} imports {names}"


def test_scapy_decodes_our_reply_to_the_same_fields() -> None:
    """Differential: an independent implementation reads what we write."""
    from scapy.layers.dhcp import BOOTP, DHCP

    reply = DhcpPacket(
        op=2,
        xid=0xCAFE0001,
        yiaddr="10.77.1.5",
        siaddr="10.77.0.1",
        giaddr="10.1.0.1",
        chaddr=bytes.fromhex("525400abcdef") + bytes(10),
        file=b"undionly.kpxe",
        options={
            Opt.MESSAGE_TYPE: bytes([MessageType.ACK]),
            Opt.SERVER_ID: bytes([10, 77, 0, 1]),
            Opt.LEASE_TIME: (3600).to_bytes(4, "big"),
            Opt.RENEWAL_TIME: (1800).to_bytes(4, "big"),
            Opt.SUBNET_MASK: bytes([255, 255, 0, 0]),
            Opt.ROUTER: bytes([10, 77, 0, 1]),
            Opt.DNS: bytes([10, 77, 0, 1, 10, 77, 0, 2]),
            Opt.DOMAIN: b"cluster.local",
            Opt.HOSTNAME: b"nid0001",
            Opt.VENDOR_CLASS: b"PXEClient",
            Opt.BOOTFILE: b"x" * 300,  # split over two instances (RFC 3396)
        },
    )
    pkt = BOOTP(reply.encode())
    assert pkt.op == 2 and pkt.xid == 0xCAFE0001
    assert (pkt.yiaddr, pkt.siaddr, pkt.giaddr) == ("10.77.1.5", "10.77.0.1", "10.1.0.1")
    assert pkt.chaddr[:6] == bytes.fromhex("525400abcdef")
    assert pkt.file.rstrip(b"\0") == b"undionly.kpxe"
    opts = [o for o in pkt[DHCP].options if isinstance(o, tuple)]
    got = {o[0]: (o[1:] if len(o) > 2 else o[1]) for o in opts}
    assert got["message-type"] == 5
    assert got["server_id"] == "10.77.0.1"
    assert got["lease_time"] == 3600 and got["renewal_time"] == 1800
    assert got["subnet_mask"] == "255.255.0.0" and got["router"] == "10.77.0.1"
    assert got["name_server"] == ("10.77.0.1", "10.77.0.2")
    assert got["domain"] == b"cluster.local" and got["hostname"] == b"nid0001"
    assert got["vendor_class_id"] == b"PXEClient"
    boot = b"".join(o[1] for o in opts if o[0] == "boot-file-name")
    assert boot == b"x" * 300


def test_we_decode_what_scapy_builds() -> None:
    from scapy.layers.dhcp import BOOTP, DHCP

    wire = bytes(
        BOOTP(op=1, xid=77, chaddr=bytes.fromhex("525400000002"), flags=0x8000, giaddr="10.1.0.1")
        / DHCP(
            options=[
                ("message-type", "request"),
                ("requested_addr", "10.1.0.50"),
                ("server_id", "10.77.0.1"),
                ("client_id", b"\x01RT\x00\x00\x00\x02"),
                (93, b"\x00\x00"),
                "end",
            ]
        )
    )
    p = decode(wire)
    assert p.message_type is MessageType.REQUEST and p.xid == 77 and p.broadcast
    assert p.mac == "52:54:00:00:00:02" and p.giaddr == "10.1.0.1"
    assert p.ip_option(Opt.REQUESTED_IP) == "10.1.0.50"
    assert p.ip_option(Opt.SERVER_ID) == "10.77.0.1"
    assert p.client_arch == 0
