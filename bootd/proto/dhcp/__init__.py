"""Sans-I/O DHCPv4 codec: bytes in, DhcpPacket out, and back."""

from bootd.proto.dhcp.options import (
    DHCPACK,
    DHCPDECLINE,
    DHCPDISCOVER,
    DHCPINFORM,
    DHCPNAK,
    DHCPOFFER,
    DHCPRELEASE,
    DHCPREQUEST,
    DhcpDecodeError,
    MessageType,
    Opt,
)
from bootd.proto.dhcp.packet import BOOTREPLY, BOOTREQUEST, DhcpPacket, decode

__all__ = [
    "BOOTREPLY",
    "BOOTREQUEST",
    "DHCPACK",
    "DHCPDECLINE",
    "DHCPDISCOVER",
    "DHCPINFORM",
    "DHCPNAK",
    "DHCPOFFER",
    "DHCPRELEASE",
    "DHCPREQUEST",
    "DhcpDecodeError",
    "DhcpPacket",
    "MessageType",
    "Opt",
    "decode",
]
