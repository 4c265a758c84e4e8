"""The DHCP message: fixed BOOTP header + magic cookie + options (RFC 2131 §2, RFC 951)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from bootd.proto.dhcp.options import (
    ZERO4,
    DhcpDecodeError,
    MessageType,
    Opt,
    encode_options,
    ip_bytes,
    ip_str,
    parse_option_area,
    parse_user_class,
)

# op htype hlen hops xid secs flags ciaddr yiaddr siaddr giaddr chaddr sname file
HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
HEADER_LEN = HEADER.size  # 236
MAGIC = b"\x63\x82\x53\x63"  # RFC 2131 §3: 99.130.83.99
MIN_LEN = HEADER_LEN + len(MAGIC)
# RFC 1542 §2.1: BOOTP relays and old clients expect at least 300 octets.
MIN_REPLY_LEN = 300
# The largest UDP payload a DHCP message can have on Ethernet without fragmentation
# is 1472; we accept more (jumbo frames) but nothing past the IPv4 UDP limit.
MAX_LEN = 65507
BOOTREQUEST = 1
BOOTREPLY = 2
BROADCAST_FLAG = 0x8000
# Option 53 byte → MessageType without the (slow) Enum call on the hot path.
_MESSAGE_TYPES = {int(m): m for m in MessageType}
ZERO_IP = "0.0.0.0"


@dataclass(slots=True)
class DhcpPacket:
    """One DHCP message; `options` maps code → value with repeated instances concatenated."""

    op: int = BOOTREQUEST
    htype: int = 1
    hlen: int = 6
    hops: int = 0
    xid: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: str = ZERO_IP
    yiaddr: str = ZERO_IP
    siaddr: str = ZERO_IP
    giaddr: str = ZERO_IP
    chaddr: bytes = b"\x00" * 16
    sname: bytes = b""
    file: bytes = b""
    options: dict[int, bytes] = field(default_factory=dict)

    @property
    def mac(self) -> str:
        """chaddr as 'aa:bb:cc:dd:ee:ff' (the first hlen octets)."""
        return self.chaddr[: self.hlen].hex(":")

    @property
    def message_type(self) -> MessageType | None:
        """Option 53, or None for plain BOOTP or an unknown value."""
        v = self.options.get(53)
        if not v or len(v) != 1:
            return None
        return _MESSAGE_TYPES.get(v[0])

    @property
    def broadcast(self) -> bool:
        """The client asked for broadcast replies (RFC 2131 §4.1, flags bit 0)."""
        return bool(self.flags & BROADCAST_FLAG)

    def ip_option(self, code: int) -> str | None:
        """An option holding one IPv4 address, or None if absent or not 4 bytes."""
        v = self.options.get(code)
        return ip_str(v) if v is not None and len(v) == 4 else None

    @property
    def vendor_class_id(self) -> bytes:
        """Option 60 as it came (b'' when absent): what the per-packet checks compare."""
        return self.options.get(Opt.VENDOR_CLASS, b"")

    @property
    def vendor_class(self) -> str:
        """Option 60 as text ('' when absent)."""
        return self.vendor_class_id.decode("ascii", "replace")

    @property
    def user_classes(self) -> list[bytes]:
        """Option 77 entries."""
        v = self.options.get(Opt.USER_CLASS)
        return parse_user_class(v) if v else []

    @property
    def client_arch(self) -> int | None:
        """First architecture type of option 93 (RFC 4578 §2.1); malformed counts as absent."""
        v = self.options.get(Opt.CLIENT_ARCH)
        if not v or len(v) % 2:  # a list of 16-bit types: an odd length is malformed
            return None
        return v[0] << 8 | v[1]

    def encode(self) -> bytes:
        """Wire bytes: header, cookie, options (long ones split), END, padded to 300."""
        head = HEADER.pack(
            self.op,
            self.htype,
            self.hlen,
            self.hops,
            self.xid,
            self.secs,
            self.flags,
            # Most of these are unset in any one reply: no call for those.
            ZERO4 if self.ciaddr == ZERO_IP else ip_bytes(self.ciaddr),
            ZERO4 if self.yiaddr == ZERO_IP else ip_bytes(self.yiaddr),
            ZERO4 if self.siaddr == ZERO_IP else ip_bytes(self.siaddr),
            ZERO4 if self.giaddr == ZERO_IP else ip_bytes(self.giaddr),
            self.chaddr,
            self.sname,
            self.file,
        )
        body = encode_options(self.options)
        pad = MIN_REPLY_LEN - HEADER_LEN - 4 - len(body)
        if pad > 0:
            body += bytes(pad)
        return head + MAGIC + body


def _cstr(b: bytes) -> bytes:
    return b.split(b"\x00", 1)[0]


def decode(data: bytes) -> DhcpPacket:
    """Parse one DHCP message; raises DhcpDecodeError and nothing else."""
    if type(data) is not bytes:
        data = bytes(data)  # option values are slices of it: bytes, whatever came in
    n = len(data)
    if n < MIN_LEN:
        raise DhcpDecodeError("truncated", f"{n} bytes, a DHCP message has at least {MIN_LEN}")
    if n > MAX_LEN:
        raise DhcpDecodeError("oversize", f"{n} bytes")
    (op, htype, hlen, hops, xid, secs, flags, ci, yi, si, gi, chaddr, sname, file) = (
        HEADER.unpack_from(data)
    )
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise DhcpDecodeError("bad-op", f"op {op}")
    if hlen > 16:
        raise DhcpDecodeError("bad-hlen", f"hlen {hlen} is longer than chaddr")
    if data[HEADER_LEN:MIN_LEN] != MAGIC:
        raise DhcpDecodeError("bad-cookie", "no DHCP magic cookie (plain BOOTP is not served)")
    options: dict[int, bytes] = {}
    parse_option_area(data, options, "options", MIN_LEN)
    overload = options.get(Opt.OVERLOAD)
    if overload is not None:
        if len(overload) != 1 or overload[0] not in (1, 2, 3):
            raise DhcpDecodeError("bad-overload", f"option 52 = {overload.hex()}")
        # RFC 3396 §7: concatenate in the order options, file, sname.
        if overload[0] & 1:
            parse_option_area(file, options, "file")
            file = b""
        if overload[0] & 2:
            parse_option_area(sname, options, "sname")
            sname = b""
    # Positional, in field order: a keyword call costs ~1.5 us more here. A field that
    # starts with NUL (the usual sname and file) is an empty C string.
    return DhcpPacket(
        op, htype, hlen, hops, xid, secs, flags, ip_str(ci), ip_str(yi), ip_str(si), ip_str(gi),
        chaddr, _cstr(sname) if sname and sname[0] else b"",
        _cstr(file) if file and file[0] else b"", options,
    )  # fmt: skip
