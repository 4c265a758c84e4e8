"""Options the operator sets (`dhcp.options`): names, value types and wire encodings.

A named option has a fixed type (`ntp-servers: [10.0.0.1]`). Any other code takes
a one-key mapping that names the type (`224: {hex: "01ff"}`). Codes bootd sets
itself, from other keys or from the protocol, are refused with the key to use.
Every error is a ValueError whose message names the option.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

# name → (code, type), RFC 2132 unless noted.
NAMED: dict[str, tuple[int, str]] = {
    "time-offset": (2, "i32"),
    "time-servers": (4, "ips"),
    "log-servers": (7, "ips"),
    "root-path": (17, "string"),
    "ip-forwarding": (19, "bool"),
    "default-ip-ttl": (23, "u8"),
    "interface-mtu": (26, "u16"),
    "nis-domain": (40, "string"),
    "nis-servers": (41, "ips"),
    "ntp-servers": (42, "ips"),
    "netbios-name-servers": (44, "ips"),
    "tz-posix": (100, "string"),  # RFC 4833
    "tz-database": (101, "string"),  # RFC 4833
    "domain-search": (119, "domains"),  # RFC 3397
    "classless-static-routes": (121, "routes"),  # RFC 3442
}
CODE_NAMES: dict[int, str] = {code: name for name, (code, _) in NAMED.items()}
CODE_TYPES: dict[int, str] = {code: kind for code, kind in NAMED.values()}

# Codes bootd fills in itself, and where their value comes from instead.
MANAGED: dict[int, str] = {
    1: "the mask comes from dhcp.subnet",
    3: "set dhcp.router",
    6: "set dhcp.dns",
    12: "hostnames come from the node inventory",
    15: "set dhcp.domain",
    28: "the broadcast address comes from dhcp.subnet",
    43: "bootd sets the PXE vendor options for PXE clients",
    50: "a client's option",
    51: "set dhcp.lease_time",
    52: "overload is decided when a reply is encoded",
    53: "the message type is the protocol's",
    54: "the server identifier is `address`",
    55: "a client's option",
    56: "bootd writes its own messages",
    57: "a client's option",
    58: "T1 follows dhcp.lease_time",
    59: "T2 follows dhcp.lease_time",
    60: "bootd echoes the client's class to PXE and HTTP-boot clients",
    61: "a client's option",
    66: "boot files come from dhcp.boot_files",
    67: "boot files come from dhcp.boot_files",
    82: "relay agent information is echoed, never set",
    93: "a client's option",
    94: "a client's option",
    97: "bootd echoes the client's machine identifier",
    175: "bootd sets iPXE's options",
}

TYPES = ("ip", "ips", "u8", "u16", "u32", "i32", "bool", "string", "domains", "routes", "hex")


def _ipv4(v: Any) -> bytes:
    if not isinstance(v, str):
        raise ValueError(f"{v!r} is not an IPv4 address")
    try:
        return ipaddress.IPv4Address(v).packed
    except ValueError:
        raise ValueError(f"{v!r} is not an IPv4 address") from None


def _int(lo: int, hi: int, size: int, signed: bool = False) -> Callable[[Any], bytes]:
    def enc(v: Any) -> bytes:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"{v!r} is not an integer from {lo} to {hi}")
        return v.to_bytes(size, "big", signed=signed)

    return enc


def _bool(v: Any) -> bytes:
    if not isinstance(v, bool):
        raise ValueError(f"{v!r} is not true or false")
    return b"\x01" if v else b"\x00"


def _string(v: Any) -> bytes:
    if not isinstance(v, str) or not v:
        raise ValueError(f"{v!r} is not a non-empty string")
    try:
        return v.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"{v!r} is not ASCII (RFC 2132 option text is NVT ASCII)") from None


def _domain(name: Any) -> bytes:
    """One name in DNS wire format (RFC 1035 §3.1), uncompressed."""
    if not isinstance(name, str) or not name.strip("."):
        raise ValueError(f"{name!r} is not a domain name")
    out = bytearray()
    for label in name.strip(".").split("."):
        if not 1 <= len(label) <= 63 or not label.isascii():
            raise ValueError(f"{name!r}: label {label!r} must be 1-63 ASCII characters")
        out += bytes((len(label),)) + label.encode("ascii")
    out += b"\x00"
    if len(out) > 255:
        raise ValueError(f"{name!r} is longer than 255 octets")
    return bytes(out)


def _route(v: Any) -> bytes:
    """'10.2.0.0/16 via 10.0.0.254' → RFC 3442 §1: width, significant octets, router."""
    dest, sep, gw = v.partition(" via ") if isinstance(v, str) else ("", "", "")
    if not sep:
        raise ValueError(f"{v!r} is not a route like '10.2.0.0/16 via 10.0.0.254'")
    try:
        net = ipaddress.IPv4Network(dest.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"{v!r}: {exc}") from None
    width = net.prefixlen
    return bytes((width,)) + net.network_address.packed[: (width + 7) // 8] + _ipv4(gw.strip())


def _one_or_more(one: Callable[[Any], bytes], what: str) -> Callable[[Any], bytes]:
    """An encoder for one item or a non-empty list of them, one after another on the wire."""

    def enc(v: Any) -> bytes:
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list) or not items:
            raise ValueError(f"needs {what} or a list of them")
        return b"".join(one(x) for x in items)

    return enc


def _hex(v: Any) -> bytes:
    try:
        out = bytes.fromhex(v.replace(":", "")) if isinstance(v, str) else b""
    except ValueError:
        out = b""
    if not out:
        raise ValueError(f"{v!r} is not hex bytes like '01:ff' or '01ff'")
    return out


ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "ip": _ipv4,
    "ips": _one_or_more(_ipv4, "one IPv4 address"),
    "u8": _int(0, 0xFF, 1),
    "u16": _int(0, 0xFFFF, 2),
    "u32": _int(0, 0xFFFFFFFF, 4),
    "i32": _int(-(1 << 31), (1 << 31) - 1, 4, signed=True),
    "bool": _bool,
    "string": _string,
    # RFC 3397: the names one after another (compression is allowed, not needed).
    "domains": _one_or_more(_domain, "a domain name"),
    "routes": _one_or_more(_route, "a route"),
    "hex": _hex,
}


def _code_of(key: Any) -> tuple[int, str | None]:
    """Option key → (code, type when the name fixes it)."""
    if isinstance(key, str) and key in NAMED:
        return NAMED[key]
    if isinstance(key, str) and key.isdigit():
        key = int(key)
    if isinstance(key, bool) or not isinstance(key, int):
        raise ValueError(f"{key!r} is not an option name ({', '.join(NAMED)}) or code 1-254")
    if not 1 <= key <= 254:
        raise ValueError(f"{key}: option codes run from 1 to 254")
    return key, None


def encode_option(key: Any, value: Any) -> tuple[int, bytes]:
    """One `dhcp.options` entry → (code, value bytes); ValueError names the entry."""
    code, kind = _code_of(key)
    if code in MANAGED:
        raise ValueError(f"{key}: option {code} is not set here: {MANAGED[code]}")
    if kind is None:
        if not isinstance(value, Mapping) or len(value) != 1:
            raise ValueError(
                f"{key}: give the type and value, like {{hex: '01ff'}} or {{ips: [10.0.0.1]}} "
                f"(types: {', '.join(TYPES)})"
            )
        ((kind, value),) = value.items()
        if kind not in ENCODERS:
            raise ValueError(f"{key}: unknown type {kind!r} (types: {', '.join(TYPES)})")
    try:
        data = ENCODERS[kind](value)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None
    if code == 26 and int.from_bytes(data, "big") < 68:
        raise ValueError(f"{key}: an MTU is at least 68 (RFC 2132 §5.1)")
    return code, data


def encode_options_config(options: Mapping[Any, Any]) -> dict[int, bytes]:
    """A whole `dhcp.options` mapping → code → bytes; an option set twice is an error."""
    out: dict[int, bytes] = {}
    for key, value in options.items():
        code, data = encode_option(key, value)
        if code in out:
            raise ValueError(f"{key}: option {code} is set twice")
        out[code] = data
    return out


def decode_for_display(code: int, value: bytes) -> object | None:
    """The value of a named option as an operator wrote it; None when it does not parse."""
    kind = CODE_TYPES.get(code)
    if kind == "ips" and value and len(value) % 4 == 0:
        return [str(ipaddress.IPv4Address(value[i : i + 4])) for i in range(0, len(value), 4)]
    if kind in ("u8", "u16", "u32") and value:
        return int.from_bytes(value, "big")
    if kind == "i32" and len(value) == 4:
        return int.from_bytes(value, "big", signed=True)
    if kind == "bool" and len(value) == 1:
        return bool(value[0])
    if kind == "string":
        return value.decode("ascii", "replace")
    return None
