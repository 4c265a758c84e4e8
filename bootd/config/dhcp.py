"""The `dhcp:` section."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from bootd.proto.dhcp.optvalues import encode_options_config

# RFC 4578 §2.1 client architecture (option 93) → boot file. Operators may override.
DEFAULT_BOOT_FILES: dict[int, str] = {
    0: "undionly.kpxe",
    6: "ipxe-i386.efi",
    7: "ipxe.efi",
    9: "ipxe.efi",
    11: "snp-arm64.efi",
    16: "ipxe.efi",
}


def parse_range(v: str) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    """'a.b.c.d-e.f.g.h' → (first, last); raises ValueError."""
    try:
        lo_s, hi_s = (s.strip() for s in v.split("-", 1))
        lo, hi = ipaddress.IPv4Address(lo_s), ipaddress.IPv4Address(hi_s)
    except ValueError:
        raise ValueError(f"{v!r} is not a range like 10.0.0.100-10.0.0.250") from None
    if hi < lo:
        raise ValueError(f"{v!r}: the range ends before it starts")
    return lo, hi


def _check_boot_files(files: dict[int, str]) -> None:
    """Architectures are 16-bit (RFC 4578 §2.1); names are relative to tftp.root."""
    for arch, name in files.items():
        if not 0 <= arch <= 0xFFFF:
            raise ValueError(f"{arch}: an architecture type is 0-65535 (option 93)")
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"{arch}: {name!r} is not a file name under tftp.root")


def _per_group(by_group: dict[str, Any], check: Callable[[Any], object]) -> None:
    """Run `check` on each group's entry; a ValueError names the group."""
    for group, entry in by_group.items():
        if not group:
            raise ValueError("a group name is empty")
        try:
            check(entry)
        except ValueError as exc:
            raise ValueError(f"{group}: {exc}") from None


class SubnetConfig(BaseModel):
    """One IPv4 network that bootd hands out addresses in."""

    model_config = ConfigDict(extra="forbid")
    subnet: str = "10.0.0.0/24"
    pool: str | None = "10.0.0.100-10.0.0.250"
    router: str | None = None
    dns: list[str] = Field(default_factory=list)
    domain: str | None = None
    lease_time: int = Field(default=3600, ge=60, le=10 * 365 * 86400)
    # More options by name or code (bootd.proto.dhcp.optvalues), sent to clients that
    # ask for them in option 55. A relay subnet's entries add to and override the
    # top level's.
    options: dict[int | str, Any] = Field(default_factory=dict)

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, v: str) -> str:
        try:
            return str(ipaddress.IPv4Network(v, strict=True))
        except ValueError as exc:
            raise ValueError(f"{v!r} is not an IPv4 network like 10.0.0.0/24 ({exc})") from None

    @field_validator("pool")
    @classmethod
    def _pool(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        lo, hi = parse_range(v)
        subnet = info.data.get("subnet")
        if subnet is not None:
            net = ipaddress.IPv4Network(subnet)
            for a in (lo, hi):
                if a not in net:
                    raise ValueError(f"{a} is outside dhcp.subnet {net}")
            if lo == net.network_address or hi == net.broadcast_address:
                raise ValueError("the pool must not include the network or broadcast address")
        return v

    @field_validator("router")
    @classmethod
    def _router(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        try:
            addr = ipaddress.IPv4Address(v)
        except ValueError:
            raise ValueError(f"{v!r} is not an IPv4 address") from None
        subnet = info.data.get("subnet")
        if subnet is not None and addr not in ipaddress.IPv4Network(subnet):
            raise ValueError(f"{v} is outside subnet {subnet}")
        return v

    @field_validator("options")
    @classmethod
    def _options(cls, v: dict[int | str, Any]) -> dict[int | str, Any]:
        encode_options_config(v)  # raises ValueError naming the entry
        return v

    @field_validator("dns")
    @classmethod
    def _dns(cls, v: list[str]) -> list[str]:
        for a in v:
            try:
                ipaddress.IPv4Address(a)
            except ValueError:
                raise ValueError(f"{a!r} is not an IPv4 address") from None
        return v


class DhcpConfig(SubnetConfig):
    """DHCP/PXE service settings; the top level describes the local subnet."""

    enabled: bool = True
    mode: Literal["server", "proxy"] = "server"
    port: int = Field(default=67, ge=1, le=65535)
    proxy_port: int = Field(default=4011, ge=1, le=65535)
    # Relayed networks (giaddr inside one of these) get their own pools and options.
    relay_subnets: list[SubnetConfig] = Field(default_factory=list)
    boot_files: dict[int, str] = Field(default_factory=lambda: dict(DEFAULT_BOOT_FILES))
    # Per inventory group, boot files that replace boot_files' for those architectures
    # (a NIC whose UNDI driver is broken boots snponly.efi, say). A node in several of
    # these groups takes the first of its own groups that names its architecture.
    group_boot_files: dict[str, dict[int, str]] = Field(default_factory=dict)
    # Per inventory group, dhcp.options entries that add to and override the subnet's
    # for those nodes (the first of a node's groups to set a code wins).
    group_options: dict[str, dict[int | str, Any]] = Field(default_factory=dict)
    # Receive buffer for the DHCP socket: 640 DISCOVERs (~300-600 bytes each
    # plus skb overhead) must fit in one burst without drops.
    rcvbuf: int = Field(default=8 * 1024 * 1024, ge=65536)
    # Offers not yet REQUESTed expire after this many seconds (RFC 2131 §4.3.1).
    offer_timeout: float = Field(default=30.0, gt=0)
    # An address the client DECLINEd stays out of the pool this long.
    decline_quarantine: int = Field(default=3600, ge=0)
    authoritative: bool = True
    # Answer only MACs in the node inventory (ISC dhcpd's `deny unknown-clients`,
    # dnsmasq's dhcp-ignore=tag:!known): on a shared management network the BMCs,
    # switches and laptops are left to whoever else serves them. Counted and logged.
    ignore_unknown_clients: bool = False

    @field_validator("boot_files")
    @classmethod
    def _boot_files(cls, v: dict[int, str]) -> dict[int, str]:
        _check_boot_files(v)
        return v

    @field_validator("group_boot_files")
    @classmethod
    def _group_boot_files(cls, v: dict[str, dict[int, str]]) -> dict[str, dict[int, str]]:
        _per_group(v, _check_boot_files)
        return v

    @field_validator("group_options")
    @classmethod
    def _group_options(cls, v: dict[str, dict[int | str, Any]]) -> dict[str, dict[int | str, Any]]:
        _per_group(v, encode_options_config)
        return v

    # Answer IPv6 router solicitations on `interface` with a Router Advertisement that
    # offers nothing (router lifetime 0, no prefixes, no DHCPv6 flags): iPXE then ends
    # its IPv6 configuration at once instead of waiting ~14 s for a router.
    answer_router_solicitations: bool = False
