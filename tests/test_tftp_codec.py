"""TFTP codec and option negotiation: golden bytes, round trips, fuzzing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bootd.proto.tftp.options import Limits, negotiate
from bootd.proto.tftp.packets import (
    Ack,
    Data,
    Error,
    Opcode,
    OptionAck,
    Request,
    TftpDecodeError,
    decode,
    encode,
)
from tests.helpers import REPO


def test_golden_rrq_with_options() -> None:
    # Wireshark: Read Request, File: ipxe.efi, Transfer type: octet, Option: tsize = 0,
    # Option: blksize = 1468
    raw = b"\x00\x01ipxe.efi\x00octet\x00tsize\x000\x00BLKSIZE\x001468\x00"
    pkt = decode(raw)
    assert pkt == Request(Opcode.RRQ, "ipxe.efi", "octet", {"tsize": "0", "blksize": "1468"})


def test_golden_data_ack_error_oack() -> None:
    # Data Packet, Block: 258, 3 bytes
    assert decode(b"\x00\x03\x01\x02abc") == Data(258, b"abc")
    # Acknowledgement, Block: 65535
    assert decode(b"\x00\x04\xff\xff") == Ack(65535)
    # Error Code, Code: Option negotiation failed (8), Message: User aborted the transfer
    assert decode(b"\x00\x05\x00\x08User aborted the transfer\x00") == Error(
        8, "User aborted the transfer"
    )
    assert encode(OptionAck({"blksize": "1468"})) == b"\x00\x06blksize\x001468\x00"
    assert encode(Data(65536 + 3, b"x")) == b"\x00\x03\x00\x03x"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "truncated"),
        (b"\x00", "truncated"),
        (b"\x00\x09xx", "bad_opcode"),
        (b"\x00\x01file\x00octet", "unterminated"),
        (b"\x00\x01file\x00", "truncated"),
        (b"\x00\x01\x00octet\x00", "empty_filename"),
        (b"\x00\x01f\x00octet\x00blksize\x00", "bad_options"),
        (b"\x00\x01\xff\xfe\x00octet\x00", "bad_text"),
        (b"\x00\x01" + b"a" * 600 + b"\x00octet\x00", "oversized"),
        (b"\x00\x04\x00\x01\x00", "bad_length"),
        (b"\x00\x03\x00", "truncated"),
    ],
)
def test_garbage_raises_the_one_error(raw: bytes, reason: str) -> None:
    with pytest.raises(TftpDecodeError) as exc:
        decode(raw)
    assert exc.value.reason == reason


@given(st.binary(max_size=700))
def test_fuzz_only_decode_error_escapes(raw: bytes) -> None:
    try:
        pkt = decode(raw)
    except TftpDecodeError as exc:
        assert exc.reason
    else:
        assert isinstance(pkt, Request | Data | Ack | Error | OptionAck)


_name = st.text(
    alphabet=st.characters(min_codepoint=1, max_codepoint=0x7F), min_size=1, max_size=40
)
_packets = st.one_of(
    st.builds(
        Request,
        st.sampled_from([Opcode.RRQ, Opcode.WRQ]),
        _name,
        st.sampled_from(["octet", "netascii"]),
        st.dictionaries(_name.map(str.lower), _name, max_size=4),
    ),
    st.builds(Data, st.integers(0, 65535), st.binary(max_size=1500)),
    st.builds(Ack, st.integers(0, 65535)),
    st.builds(
        Error,
        st.integers(0, 8),
        st.text(st.characters(min_codepoint=1, blacklist_categories=("Cs",)), max_size=40),
    ),
    st.builds(OptionAck, st.dictionaries(_name.map(str.lower), _name, max_size=4)),
)


@given(_packets)
def test_round_trip(pkt: Request | Data | Ack | Error | OptionAck) -> None:
    assert decode(encode(pkt)) == pkt


def test_negotiation_grants_only_what_it_supports() -> None:
    lim = Limits(max_blksize=1468, max_windowsize=64, timeout=1.0)
    n = negotiate(
        {"blksize": "65464", "windowsize": "500", "tsize": "0", "timeout": "3", "foo": "1"},
        lim,
        tsize=1_000_000,
    )
    assert n.granted == {"blksize": "1468", "windowsize": "64", "tsize": "1000000", "timeout": "3"}
    assert (n.blksize, n.windowsize, n.timeout) == (1468, 64, 3.0)
    # Out of range or unparsable values are left out, not clamped into something else.
    bad = negotiate(
        {"blksize": "7", "windowsize": "0", "timeout": "256", "tsize": "x"}, lim, tsize=5
    )
    assert bad.granted == {} and (bad.blksize, bad.windowsize) == (512, 1)
    # Without a known size (netascii) tsize is not granted.
    assert negotiate({"tsize": "0"}, lim, tsize=None).granted == {}


def test_sans_io_core_imports_no_io() -> None:
    banned = {"asyncio", "socket", "aiohttp", "os", "time", "mmap", "selectors"}
    for path in (REPO / "bootd" / "proto" / "tftp").glob("*.py"):
        tree = ast.parse(Path(path).read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in banned, f"{path.name} imports {name}"
