"""Lease files of the servers bootd replaces, read for `bootd leases import`.

dnsmasq's lease file has one line per lease: `expiry mac ip hostname client-id`
(expiry 0: never; hostname `*`: none; `duid` and IPv6 lines are DHCPv6's). Kea's
memfile is a CSV that is only ever appended to: the last row for an address is
its state, and a row with valid_lifetime 0 or a state other than 0 (declined,
reclaimed) means the address is not leased. Both become the JSON that
POST /api/v1/leases takes: [{mac, ip, expires, hostname}].
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
from typing import Any

# dnsmasq writes "0" for an infinite lease; bootd keeps such a lease ten years.
INFINITE = 10 * 365 * 86400


class LeaseFileError(ValueError):
    """The file is not a lease file of the format asked for; the message says where."""


def _ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def parse_dnsmasq(text: str, now: float) -> list[dict[str, Any]]:
    """dnsmasq's --dhcp-leasefile: the IPv4 leases."""
    out: list[dict[str, Any]] = []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] == "duid":
            continue
        if len(fields) < 4 or not fields[0].isdigit():
            raise LeaseFileError(f"line {n}: not a dnsmasq lease ({line[:60]!r})")
        expiry, mac, ip, name = fields[:4]
        if not _ipv4(ip):
            continue  # a DHCPv6 lease
        out.append(
            {
                "mac": mac,
                "ip": ip,
                "expires": float(expiry) if int(expiry) else now + INFINITE,
                "hostname": None if name == "*" else name,
            }
        )
    return out


def parse_kea(text: str) -> list[dict[str, Any]]:
    """Kea's memfile lease4 CSV: the current lease of each address."""
    reader = csv.DictReader(io.StringIO(text))
    need = {"address", "hwaddr", "valid_lifetime", "expire", "hostname", "state"}
    if reader.fieldnames is None or not need <= set(reader.fieldnames):
        raise LeaseFileError(f"not a Kea lease4 CSV (the header lacks {sorted(need)})")
    latest: dict[str, dict[str, str]] = {}
    for row in reader:
        latest[row["address"]] = row  # appended in time order: the last row wins
    out: list[dict[str, Any]] = []
    for ip, row in latest.items():
        try:
            live = int(row["valid_lifetime"]) > 0 and int(row["state"] or 0) == 0
            expires = float(row["expire"])
        except ValueError:
            raise LeaseFileError(
                f"{ip}: valid_lifetime, state and expire must be numbers"
            ) from None
        if not live or not row["hwaddr"] or not _ipv4(ip):
            continue
        out.append(
            {
                "mac": row["hwaddr"],
                "ip": ip,
                "expires": expires,
                "hostname": row["hostname"] or None,
            }
        )
    return out


def detect(text: str) -> str:
    """'kea', 'json' or 'dnsmasq', from the first line."""
    head = text.lstrip()[:1]
    if head in ("[", "{"):
        return "json"
    if text.startswith("address,"):
        return "kea"
    return "dnsmasq"


def parse(text: str, fmt: str, now: float) -> list[dict[str, Any]]:
    """The leases in `text`; fmt is auto, dnsmasq, kea or json (bootd's own list)."""
    if fmt == "auto":
        fmt = detect(text)
    if fmt == "dnsmasq":
        return parse_dnsmasq(text, now)
    if fmt == "kea":
        return parse_kea(text)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise LeaseFileError(f"not JSON: {exc}") from None
    if not isinstance(data, list):
        raise LeaseFileError("a JSON lease file is a list of {mac, ip, expires, hostname}")
    return data
