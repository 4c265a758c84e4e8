"""What the daemon hands each service: config slice, store views, timeline, metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from bootd.boot.identity import LeaseView, NoLeases
from bootd.config import Config
from bootd.metrics import Metrics
from bootd.store.db import Database
from bootd.store.nodes import NodeInventory
from bootd.timeline.recorder import TimelineRecorder


class Service(Protocol):
    """A long-running part of the daemon (DHCP, TFTP, HTTP)."""

    name: str

    async def start(self) -> None:
        """Bind sockets and begin serving; raise StartupError with a one-line reason."""
        ...

    async def stop(self, grace: float) -> None:
        """Stop accepting; let work in flight finish within `grace` seconds."""
        ...

    def reload(self, config: Config) -> None:
        """Apply a new, already validated config to new requests."""
        ...

    def listening(self) -> list[str]:
        """Human-readable addresses this service listens on."""
        ...


class BootTokenIssuer(Protocol):
    """Mints the per-boot token a node presents to /cloud-init-secure/."""

    def issue(self, mac: str, now: float) -> str:
        """A fresh token for this node's current boot."""
        ...


class StartupError(Exception):
    """A service could not start; the message is one line an operator can act on."""


@dataclass
class Context:
    """Shared, explicitly passed state of one daemon instance."""

    config: Config
    db: Database
    nodes: NodeInventory
    timeline: TimelineRecorder
    metrics: Metrics
    leases: LeaseView = field(default_factory=NoLeases)
    clock: Callable[[], float] = time.time
    # Filled by the daemon: name → service, for /healthz.
    services: dict[str, Service] = field(default_factory=dict)
    # Set by the cloud-init feature; the boot-script renderer puts its token on the cmdline.
    ci_tokens: BootTokenIssuer | None = None
    # Extension point for per-feature state (bss store, cloud-init store, …).
    extras: dict[str, object] = field(default_factory=dict)

    def mac_for_ip(self, ip: str) -> str | None:
        """The node at this source address: active lease first, then inventory reservation."""
        mac = self.leases.mac_for_ip(ip)
        if mac is not None:
            return mac
        node = self.nodes.by_ip(ip)
        return node.mac if node is not None else None
