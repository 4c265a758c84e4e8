"""DHCP option codes and the option-area codec (RFC 2132, RFC 3396 long options)."""

from __future__ import annotations

from enum import IntEnum
from functools import lru_cache

from bootd.proto.errors import DecodeError


class DhcpDecodeError(DecodeError):
    """Malformed DHCP input; `reason` is a short metric label."""


class MessageType(IntEnum):
    """Option 53 values (RFC 2132 §9.6)."""

    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


# The members as module constants, for the per-packet path: on Python 3.11 looking a
# member up on its class costs ~200 ns (a descriptor), a module global ~15.
(
    DHCPDISCOVER,
    DHCPOFFER,
    DHCPREQUEST,
    DHCPDECLINE,
    DHCPACK,
    DHCPNAK,
    DHCPRELEASE,
    DHCPINFORM,
) = MessageType


class Opt:
    """Option codes bootd reads or writes (RFC 2132, RFC 4578, RFC 3004, RFC 3046).

    Plain int constants, not an IntEnum: they are read dozens of times per packet,
    and on Python 3.11 an enum member costs ~100 ns to look up against ~23 ns for a
    class attribute. `OPTION_NAMES` maps a code back to its name.
    """

    PAD = 0
    SUBNET_MASK = 1
    ROUTER = 3
    DNS = 6
    HOSTNAME = 12
    DOMAIN = 15
    BROADCAST = 28
    VENDOR_SPECIFIC = 43
    REQUESTED_IP = 50
    LEASE_TIME = 51
    OVERLOAD = 52
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    PARAM_REQUEST = 55
    MESSAGE = 56
    MAX_SIZE = 57
    RENEWAL_TIME = 58
    REBINDING_TIME = 59
    VENDOR_CLASS = 60
    CLIENT_ID = 61
    TFTP_SERVER = 66
    BOOTFILE = 67
    USER_CLASS = 77
    CLIENT_FQDN = 81
    RELAY_AGENT = 82
    CLIENT_ARCH = 93
    CLIENT_NDI = 94
    UUID_GUID = 97
    IPXE_ENCAP = 175
    END = 255


OPTION_NAMES: dict[int, str] = {
    v: k for k, v in vars(Opt).items() if k.isupper() and isinstance(v, int)
}


# Options 0 and 255 have no length byte (RFC 2132 §3.1, §3.2).
_PAD = 0
_END = 255
_END_BYTE = bytes((_END,))
# Each octet value as a 1-byte bytes object: option codes and lengths without a bytes() call.
_BYTE = [bytes((i,)) for i in range(256)]


def parse_option_area(data: bytes, out: dict[int, bytes], where: str, start: int = 0) -> None:
    """Add the options in data[start:] to `out`; repeated codes are concatenated (RFC 3396 §7)."""
    i = start
    n = len(data)
    code = j = 0
    try:
        while i < n:
            code = data[i]
            if code == 0:  # PAD (RFC 2132 §3.1): no length byte
                i += 1
                continue
            if code == 255:  # END
                return
            j = i + 2
            i = j + data[i + 1]  # IndexError: no length byte
            # A value that runs past the end is cut short here and ends the loop;
            # the check after it refuses the area.
            if code in out:
                out[code] += data[j:i]
            else:
                out[code] = data[j:i]
    except IndexError:
        raise DhcpDecodeError(
            "bad-option", f"option {code} in {where} has no length byte"
        ) from None
    if i > n:
        raise DhcpDecodeError(
            "bad-option", f"option {code} in {where} runs past the end ({i - j} bytes)"
        )
    # RFC 2131 §4.1 requires an END option, but many clients pad the area to its
    # end instead; a missing END at the very end is harmless, so we accept it.


def _instances(code: int, value: bytes) -> bytes:
    """One option on the wire: an instance per 255 bytes of value (RFC 3396 §5)."""
    if code in (_PAD, _END):  # not options: never written
        return b""
    return b"".join(
        bytes((code, len(value[i : i + 255]))) + value[i : i + 255]
        for i in range(0, len(value) or 1, 255)
    )


# Each option's wire form, by code and value. A reply's options are nearly all the
# same objects packet after packet (lease times, subnet options, server id, boot
# file), so one lookup on a bytes key (whose hash it caches) replaces building each
# instance; keyed by code first, no tuple is hashed. A reply of 15 options takes
# ~60 % of the time of building them. Values unique to one client (a UUID echo, a
# relay's option 82) are added too, so each code's memo is emptied at its bound.
_WIRE: list[dict[bytes, bytes]] = [{} for _ in range(256)]
_WIRE_MAX = 256


def _wire(code: int, value: bytes) -> bytes:
    """The memo's miss path: encode one option and remember it."""
    n = len(value)
    if n < 256 and code != _PAD and code != _END:
        out = _BYTE[code] + _BYTE[n] + value
    else:
        out = _instances(code, bytes(value))
    if type(value) is bytes:  # a bytearray would be unhashable
        memo = _WIRE[code]
        if len(memo) >= _WIRE_MAX:
            memo.clear()
        memo[value] = out
    return out


def encode_options(options: dict[int, bytes]) -> bytes:
    """Options in insertion order, values over 255 bytes split into instances (RFC 3396 §5), then END."""
    memo = _WIRE
    try:
        return b"".join([memo[c].get(v) or _wire(c, v) for c, v in options.items()]) + _END_BYTE
    except TypeError:  # an unhashable value (bytearray): no memo for this packet
        return b"".join([_wire(c, v) for c, v in options.items()]) + _END_BYTE


# Address conversions are pure and see the same few addresses over and over (the
# server's own, the relay's, a client's in its DISCOVER, REQUEST and lease): a
# bounded memo in C answers one in ~120 ns where building it takes ~600 here.
ADDRESS_MEMO = 4096


@lru_cache(maxsize=ADDRESS_MEMO)
def ip_bytes(ip: str) -> bytes:
    """'10.0.0.1' → 4 bytes; raises ValueError."""
    parts = ip.split(".")
    if len(parts) != 4:
        raise ValueError(f"{ip!r} is not an IPv4 address")
    return bytes(map(int, parts))


ZERO4 = bytes(4)  # an unset address on the wire


def ip_str(b: bytes) -> str:
    """4 bytes → dotted quad."""
    # Most header addresses in requests are unset: skip the memo for them.
    if b == ZERO4:
        return "0.0.0.0"
    return _dotted(bytes(b))


@lru_cache(maxsize=ADDRESS_MEMO)
def _dotted(b: bytes) -> str:
    return f"{b[0]}.{b[1]}.{b[2]}.{b[3]}"


def parse_user_class(value: bytes) -> list[bytes]:
    """Option 77: RFC 3004 length-prefixed list, or the raw string iPXE and older clients send."""
    items: list[bytes] = []
    i = 0
    while i < len(value):
        length = value[i]
        if length == 0 or i + 1 + length > len(value):
            return [value]
        items.append(value[i + 1 : i + 1 + length])
        i += 1 + length
    return items or [value]


# Letters, digits and hyphens (RFC 1123 §2.1): what a host name label may hold.
_LABEL_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


def client_hostname(options: dict[int, bytes]) -> str | None:
    """The client's own name: option 81's first label (RFC 4702 §2, wire or ASCII form),
    else option 12's; None unless it is a valid host name label."""
    fqdn = options.get(Opt.CLIENT_FQDN)
    if fqdn is None and Opt.HOSTNAME not in options:
        return None  # most requests (and every REQUEST perfdhcp sends)
    name = b""
    if fqdn is not None and len(fqdn) > 3:
        body = fqdn[3:]  # after flags, RCODE1, RCODE2
        if fqdn[0] & 0x04:  # flag E: canonical wire format, length-prefixed labels
            n = body[0]
            name = body[1 : 1 + n] if len(body) > n else b""  # a label past the end: none
        else:
            name = body.split(b".", 1)[0]
    if not name:
        name = options.get(Opt.HOSTNAME, b"")
    return host_label(name)


def host_label(name: bytes) -> str | None:
    """The first label of a host name, lower-cased; None unless it is a valid RFC 1123
    label (a name from the wire or a file ends up in an API and a terminal)."""
    label = name.split(b".", 1)[0].rstrip(b"\0")
    if not 1 <= len(label) <= 63 or not _LABEL_CHARS.issuperset(label) or label[:1] == b"-":
        return None
    return label.decode("ascii").lower()
