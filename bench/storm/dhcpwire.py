"""Client-side DHCP packets: what firmware PXE, iPXE and a Linux initramfs put on the wire."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

# RFC 2131 §2 fixed header: op htype hlen hops xid secs flags ciaddr yiaddr siaddr giaddr chaddr
# sname file, then the RFC 2132 magic cookie.
_HDR = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
_COOKIE = b"\x63\x82\x53\x63"
BROADCAST_FLAG = 0x8000

DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE = 1, 2, 3, 4, 5, 6, 7

# Parameter request lists (option 55) as each client really sends them.
PRL_PXE = bytes([1, 2, 3, 4, 5, 6, 11, 12, 13, 15, 16, 17, 18, 22, 23, 28, 40, 41, 42, 43])
PRL_PXE += bytes([50, 51, 54, 58, 59, 60, 66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135])
PRL_IPXE = bytes([1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 129, 130, 131])
PRL_IPXE += bytes([132, 133, 134, 135, 175, 203])
PRL_LINUX = bytes([1, 3, 6, 12, 15, 28, 42, 51, 54, 58, 59, 119])


class DhcpDecodeError(ValueError):
    """A reply that is not a well-formed BOOTREPLY."""


@dataclass(frozen=True)
class ClientKind:
    """Which software is asking: 'pxe' (firmware), 'ipxe' or 'linux', and its arch (option 93)."""

    role: str
    arch: int


def _opt(code: int, value: bytes) -> bytes:
    return bytes([code, len(value)]) + value


def client_options(kind: ClientKind, mac: bytes) -> bytes:
    """The options that identify this client (used in DISCOVER and REQUEST alike)."""
    undi = "002001" if kind.arch == 0 else "003016"
    vendor = f"PXEClient:Arch:{kind.arch:05d}:UNDI:{undi}".encode()
    # RFC 4578 §2.3: type 0 then a 16-byte UUID; derive one from the MAC so it is stable.
    uuid = b"\x00" + mac.ljust(16, b"\x5a")
    if kind.role == "pxe":
        return (
            _opt(57, struct.pack("!H", 1464))
            + _opt(93, struct.pack("!H", kind.arch))
            + _opt(94, bytes([1, 2, 1] if kind.arch == 0 else [1, 3, 16]))
            + _opt(97, uuid)
            + _opt(60, vendor)
            + _opt(55, PRL_PXE)
        )
    if kind.role == "ipxe":
        # 175: iPXE's encapsulated feature flags (19 = HTTP, 24 = PXE extensions, 16 = bus id).
        feats = _opt(19, b"\x01") + _opt(24, b"\x01") + _opt(16, b"\x01\x00\x00\x00\x00\x00\x00")
        return (
            _opt(57, struct.pack("!H", 1472))
            + _opt(93, struct.pack("!H", kind.arch))
            + _opt(94, bytes([1, 2, 1] if kind.arch == 0 else [1, 3, 16]))
            + _opt(97, uuid)
            + _opt(60, vendor)
            + _opt(77, b"iPXE")
            + _opt(175, feats)
            + _opt(55, PRL_IPXE)
        )
    return _opt(57, struct.pack("!H", 1500)) + _opt(55, PRL_LINUX)


def build(
    msg_type: int,
    xid: int,
    mac: bytes,
    kind: ClientKind,
    secs: int = 0,
    requested: str | None = None,
    server_id: str | None = None,
) -> bytes:
    """A DISCOVER or REQUEST (SELECTING state, RFC 2131 §4.3.2) with the broadcast flag."""
    hdr = _HDR.pack(
        1, 1, 6, 0, xid, secs, BROADCAST_FLAG,
        b"\0" * 4, b"\0" * 4, b"\0" * 4, b"\0" * 4, mac.ljust(16, b"\0"), b"", b"",
    )  # fmt: skip
    opts = _opt(53, bytes([msg_type])) + _opt(61, b"\x01" + mac)
    if requested is not None:
        opts += _opt(50, ipaddress.IPv4Address(requested).packed)
    if server_id is not None:
        opts += _opt(54, ipaddress.IPv4Address(server_id).packed)
    return hdr + _COOKIE + opts + client_options(kind, mac) + b"\xff"


@dataclass
class Reply:
    """The parts of an OFFER/ACK/NAK the clients act on."""

    msg_type: int
    xid: int
    chaddr: bytes
    yiaddr: str
    siaddr: str
    file: str
    sname: str
    options: dict[int, bytes] = field(default_factory=dict)

    @property
    def server_id(self) -> str | None:
        """Option 54."""
        v = self.options.get(54)
        return str(ipaddress.IPv4Address(v)) if v and len(v) == 4 else None

    @property
    def boot_file(self) -> str:
        """Option 67 when present (RFC 2132 §9.5), else the `file` header field."""
        v = self.options.get(67)
        if v:
            return v.rstrip(b"\0").decode("latin-1")
        return self.file

    @property
    def tftp_server(self) -> str:
        """Option 66 when it is an address, else siaddr (RFC 2131 §2)."""
        v = self.options.get(66)
        if v:
            s = v.rstrip(b"\0").decode("latin-1")
            try:
                return str(ipaddress.IPv4Address(s))
            except ValueError:
                pass
        return self.siaddr


def parse(data: bytes) -> Reply:
    """Decode a BOOTREPLY; raises DhcpDecodeError on anything malformed."""
    if len(data) < _HDR.size + 4:
        raise DhcpDecodeError(f"short packet ({len(data)} bytes)")
    f = _HDR.unpack_from(data)
    if f[0] != 2:
        raise DhcpDecodeError("not a BOOTREPLY")
    if data[_HDR.size : _HDR.size + 4] != _COOKIE:
        raise DhcpDecodeError("no magic cookie")
    opts: dict[int, bytes] = {}
    i, end = _HDR.size + 4, len(data)
    while i < end:
        code = data[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        if i + 1 >= end or i + 2 + data[i + 1] > end:
            raise DhcpDecodeError(f"option {code} runs past the end")
        n = data[i + 1]
        # RFC 3396: repeated options concatenate.
        opts[code] = opts.get(code, b"") + data[i + 2 : i + 2 + n]
        i += 2 + n
    mt = opts.get(53)
    if not mt:
        raise DhcpDecodeError("no message type (option 53)")
    return Reply(
        msg_type=mt[0],
        xid=f[4],
        chaddr=f[11][:6],
        yiaddr=str(ipaddress.IPv4Address(f[8])),
        siaddr=str(ipaddress.IPv4Address(f[9])),
        sname=f[12].split(b"\0", 1)[0].decode("latin-1"),
        file=f[13].split(b"\0", 1)[0].decode("latin-1"),
        options=opts,
    )
