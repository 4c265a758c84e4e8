"""Which node is at an address: the interface services use, whatever stores leases."""

from __future__ import annotations

from typing import Protocol


class LeaseView(Protocol):
    """Read-only view of current DHCP leases."""

    def mac_for_ip(self, ip: str) -> str | None:
        """MAC holding an active lease on this IP, if any."""
        ...

    def ip_for_mac(self, mac: str) -> str | None:
        """IP currently leased to this MAC, if any."""
        ...


class NoLeases:
    """A LeaseView for when the DHCP service is disabled."""

    def mac_for_ip(self, ip: str) -> str | None:
        """Nothing is leased."""
        return None

    def ip_for_mac(self, mac: str) -> str | None:
        """Nothing is leased."""
        return None
