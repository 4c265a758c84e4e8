"""Nodes as the inventory knows them, and MAC address normalisation."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

_HEX12 = re.compile(r"^[0-9a-f]{12}$")


def normalize_mac(text: str) -> str:
    """Any common MAC spelling (AA-BB-…, aabb.ccdd.eeff, AABBCC…) → 'aa:bb:cc:dd:ee:ff'."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a MAC address")
    raw = re.sub(r"[:\-.\s]", "", text.strip().lower())
    if not _HEX12.match(raw):
        raise ValueError(f"{text!r} is not a MAC address (expected six hex octets)")
    return ":".join(raw[i : i + 2] for i in range(0, 12, 2))


@dataclass(frozen=True)
class Node:
    """One machine of the inventory; `mac` is the key."""

    mac: str
    ip: str | None = None
    hostname: str | None = None
    nid: int | None = None
    xname: str | None = None
    groups: tuple[str, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        """The node's name for BSS `name=` lookups: xname, else hostname, else MAC."""
        return self.xname or self.hostname or self.mac

    def to_dict(self) -> dict[str, object]:
        """JSON/YAML form, as in the inventory file."""
        return {
            "mac": self.mac,
            "ip": self.ip,
            "hostname": self.hostname,
            "nid": self.nid,
            "xname": self.xname,
            "groups": list(self.groups),
        }


def node_from_dict(d: object, where: str = "") -> Node:
    """Validate one inventory entry; ValueError names the offending key."""
    p = f"{where}." if where else ""
    if not isinstance(d, dict):
        raise ValueError(f"{where or 'entry'}: expected a mapping with at least 'mac'")
    unknown = set(d) - {"mac", "ip", "hostname", "nid", "xname", "groups"}
    if unknown:
        raise ValueError(f"{p}{sorted(unknown)[0]}: unknown key")
    if "mac" not in d:
        raise ValueError(f"{p}mac: required")
    try:
        mac = normalize_mac(d["mac"])
    except ValueError as exc:
        raise ValueError(f"{p}mac: {exc}") from None
    ip = d.get("ip")
    if ip is not None:
        try:
            ip = str(ipaddress.IPv4Address(str(ip)))
        except ValueError:
            raise ValueError(f"{p}ip: {ip!r} is not an IPv4 address") from None
    nid = d.get("nid")
    if nid is not None and (not isinstance(nid, int) or isinstance(nid, bool) or nid < 0):
        raise ValueError(f"{p}nid: {nid!r} is not a non-negative integer")
    groups = d.get("groups") or []
    if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
        raise ValueError(f"{p}groups: expected a list of names")
    hostname = d.get("hostname")
    if hostname is not None and not re.match(
        r"^[A-Za-z0-9]([A-Za-z0-9\-.]{0,252})$", str(hostname)
    ):
        raise ValueError(f"{p}hostname: {hostname!r} is not a valid host name")
    xname = d.get("xname")
    return Node(
        mac=mac,
        ip=ip,
        hostname=str(hostname) if hostname is not None else None,
        nid=nid,
        xname=str(xname) if xname is not None else None,
        groups=tuple(groups),
    )
