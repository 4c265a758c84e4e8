"""A server namespace and a client namespace joined by a veth pair."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing output."""
    return subprocess.run(args, check=check, capture_output=True, text=True)


def can_netns() -> str | None:
    """None if namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    if sh("ip", "netns", "list", check=False).returncode != 0:
        return "ip netns does not work here"
    return None


@dataclass
class VethLab:
    """netns `<p>-srv` (server_ip on `<p>s`) ⇄ netns `<p>-cli` (client_ip on `<p>c`).

    `prefix` must be unique per concurrent user (≤ 9 chars, interface names are ≤ 15).
    """

    prefix: str
    server_ip: str = "10.77.0.1"
    client_ip: str | None = "10.77.0.2"
    prefixlen: int = 16

    @property
    def srv(self) -> str:
        return f"{self.prefix}-srv"

    @property
    def cli(self) -> str:
        return f"{self.prefix}-cli"

    @property
    def srv_if(self) -> str:
        return f"{self.prefix}s"

    @property
    def cli_if(self) -> str:
        return f"{self.prefix}c"

    def up(self) -> VethLab:
        """Create (after removing leftovers of an earlier crashed run)."""
        self.down()
        sh("ip", "netns", "add", self.srv)
        sh("ip", "netns", "add", self.cli)
        sh(
            "ip",
            "link",
            "add",
            self.srv_if,
            "netns",
            self.srv,
            "type",
            "veth",
            "peer",
            "name",
            self.cli_if,
            "netns",
            self.cli,
        )
        for ns, ifname in ((self.srv, self.srv_if), (self.cli, self.cli_if)):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", ifname, "up")
        sh(
            "ip",
            "-n",
            self.srv,
            "addr",
            "add",
            f"{self.server_ip}/{self.prefixlen}",
            "dev",
            self.srv_if,
        )
        if self.client_ip:
            sh(
                "ip",
                "-n",
                self.cli,
                "addr",
                "add",
                f"{self.client_ip}/{self.prefixlen}",
                "dev",
                self.cli_if,
            )
        return self

    def down(self) -> None:
        """Remove both namespaces (the veth pair goes with them)."""
        for ns in (self.srv, self.cli):
            sh("ip", "netns", "pids", ns, check=False)
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                sh("kill", "-9", pid, check=False)
            sh("ip", "netns", "del", ns, check=False)

    def in_srv(self, *cmd: str) -> list[str]:
        """argv that runs cmd inside the server namespace."""
        return ["ip", "netns", "exec", self.srv, *cmd]

    def in_cli(self, *cmd: str) -> list[str]:
        """argv that runs cmd inside the client namespace."""
        return ["ip", "netns", "exec", self.cli, *cmd]

    def __enter__(self) -> VethLab:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()
