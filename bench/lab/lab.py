"""One network namespace with a bridge, the server's address on it, and taps for QEMU.

Everything lives inside the namespace `<prefix>-lab`: the bridge, its address and
the taps. The host's own interfaces are never touched, and deleting the namespace
removes all of it. `up()` first removes leftovers of an earlier crashed run.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.lab.netns import can_netns, sh

__all__ = ["BridgeLab", "can_netns"]


@dataclass
class BridgeLab:
    """netns `<prefix>-lab`: bridge `<prefix>br0` with `address`, taps `<prefix>t<i>`.

    `prefix` must be unique per concurrent user and ≤ 10 characters (interface
    names are at most 15).
    """

    prefix: str
    address: str = "10.99.0.1"
    prefixlen: int = 24
    taps: int = 2

    def __post_init__(self) -> None:
        if not self.prefix.isalnum() or len(self.prefix) > 10:
            raise ValueError(f"lab prefix {self.prefix!r}: up to 10 letters or digits")

    @property
    def netns(self) -> str:
        return f"{self.prefix}-lab"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br0"

    def tap(self, i: int) -> str:
        """Name of tap number i."""
        if not 0 <= i < self.taps:
            raise IndexError(f"tap {i}: this lab has {self.taps}")
        return f"{self.prefix}t{i}"

    @property
    def subnet(self) -> str:
        """The lab network in CIDR form (the server address's network)."""
        octets = self.address.split(".")
        if self.prefixlen != 24:
            raise ValueError("only /24 labs are supported")
        return ".".join([*octets[:3], "0"]) + f"/{self.prefixlen}"

    def host(self, n: int) -> str:
        """Address number n in the lab subnet (n in 2..254)."""
        return ".".join([*self.address.split(".")[:3], str(n)])

    def exists(self) -> bool:
        """The namespace is there (maybe from a crashed run)."""
        out = sh("ip", "netns", "list", check=False).stdout
        return any(line.split()[0] == self.netns for line in out.splitlines() if line.strip())

    def up(self) -> BridgeLab:
        """Create the namespace, bridge and taps, after removing leftovers."""
        self.down()
        ns = self.netns
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "link", "add", self.bridge, "type", "bridge", "stp_state", "0")
        # No forwarding delay: a PXE client's first DISCOVER must not be dropped.
        sh("ip", "-n", ns, "link", "set", self.bridge, "type", "bridge", "forward_delay", "0")
        sh("ip", "-n", ns, "addr", "add", f"{self.address}/{self.prefixlen}", "dev", self.bridge)
        sh("ip", "-n", ns, "link", "set", self.bridge, "up")
        for i in range(self.taps):
            tap = self.tap(i)
            sh("ip", "-n", ns, "tuntap", "add", "dev", tap, "mode", "tap")
            sh("ip", "-n", ns, "link", "set", tap, "master", self.bridge)
            sh("ip", "-n", ns, "link", "set", tap, "up")
        return self

    def down(self) -> None:
        """Kill whatever runs in the namespace and delete it (bridge and taps go with it)."""
        if not self.exists():
            return
        for _ in range(50):
            pids = sh("ip", "netns", "pids", self.netns, check=False).stdout.split()
            if not pids:
                break
            for pid in pids:
                sh("kill", "-9", pid, check=False)
            time.sleep(0.1)
        sh("ip", "netns", "del", self.netns, check=False)

    def argv(self, *cmd: str) -> list[str]:
        """argv that runs cmd inside the lab namespace."""
        return ["ip", "netns", "exec", self.netns, *cmd]

    @property
    def prefix_argv(self) -> Sequence[str]:
        """The `ip netns exec <ns>` prefix alone."""
        return ("ip", "netns", "exec", self.netns)

    def run(self, *cmd: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run cmd inside the namespace and capture its output."""
        return subprocess.run(
            self.argv(*cmd), capture_output=True, text=True, timeout=timeout, check=False
        )

    def http_get(self, url: str, timeout: float = 10.0) -> str:
        """GET url from inside the namespace (curl); raises on any failure."""
        proc = self.run("curl", "-sSf", "--max-time", str(timeout), url, timeout=timeout + 5)
        if proc.returncode != 0:
            raise OSError(f"GET {url}: {proc.stderr.strip()}")
        return proc.stdout

    def http_status(self, url: str, timeout: float = 5.0) -> int:
        """HTTP status of GET url from inside the namespace; 0 when nothing answered."""
        proc = self.run(
            "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", str(timeout), url,
            timeout=timeout + 5,
        )  # fmt: skip
        return int(proc.stdout.strip() or 0) if proc.stdout.strip().isdigit() else 0

    def __enter__(self) -> BridgeLab:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()
