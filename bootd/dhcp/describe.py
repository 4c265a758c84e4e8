"""Human-readable DHCP replies for `bootd explain` and the API."""

from __future__ import annotations

from bootd.proto.dhcp import DhcpPacket, MessageType, Opt
from bootd.proto.dhcp.options import OPTION_NAMES, ip_str
from bootd.proto.dhcp.optvalues import CODE_NAMES, decode_for_display

_IP_LISTS = {Opt.SUBNET_MASK, Opt.ROUTER, Opt.DNS, Opt.BROADCAST, Opt.SERVER_ID, Opt.REQUESTED_IP}
_SECONDS = {Opt.LEASE_TIME, Opt.RENEWAL_TIME, Opt.REBINDING_TIME}
_TEXT = {Opt.HOSTNAME, Opt.DOMAIN, Opt.VENDOR_CLASS, Opt.BOOTFILE, Opt.TFTP_SERVER, Opt.MESSAGE}


def option_value(code: int, value: bytes) -> object:
    """Decode the options bootd sends; anything else as hex."""
    if code == Opt.MESSAGE_TYPE and len(value) == 1:
        try:
            return MessageType(value[0]).name
        except ValueError:
            return value[0]
    if code in _IP_LISTS and value and len(value) % 4 == 0:
        ips = [ip_str(value[i : i + 4]) for i in range(0, len(value), 4)]
        return ips if code in (Opt.ROUTER, Opt.DNS) else ips[0]
    if code in _SECONDS and len(value) == 4:
        return int.from_bytes(value, "big")
    if code in _TEXT:
        return value.decode("ascii", "replace")
    shown = decode_for_display(code, value)  # the named ones of dhcp.options
    return value.hex() if shown is None else shown


def option_name(code: int) -> str:
    """'3 router' style label."""
    name = OPTION_NAMES.get(code)
    if name is not None:
        return f"{code} {name.lower().replace('_', '-')}"
    named = CODE_NAMES.get(code)
    return str(code) if named is None else f"{code} {named}"


def describe(reply: DhcpPacket) -> dict[str, object]:
    """The fields an operator cares about, decoded."""
    return {
        "yiaddr": reply.yiaddr,
        "siaddr": reply.siaddr,
        "giaddr": reply.giaddr,
        "file": reply.file.decode("ascii", "replace"),
        "options": {option_name(c): option_value(c, v) for c, v in reply.options.items()},
    }
