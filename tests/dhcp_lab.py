"""A bootd DHCP server in a network namespace, for tests and benches with real clients."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.lab.netns import VethLab, sh
from tests.helpers import BootdProcess, base_config, write_config

POOL = "10.77.1.0-10.77.250.250"
RELAY_NET = "10.1.0.0/24"
RELAY_IP = "10.1.0.1"


def dhcp_config(tmp: Path, lab: VethLab, **dhcp: Any) -> dict[str, Any]:
    """bootd serving DHCP on the lab's server interface; HTTP on the namespace's loopback."""
    cfg = base_config(
        tmp,
        interface=lab.srv_if,
        address=lab.server_ip,
        dhcp={
            "enabled": True,
            "subnet": "10.77.0.0/16",
            "pool": POOL,
            "router": lab.server_ip,
            "dns": [lab.server_ip],
            "domain": "cluster.test",
            "lease_time": 3600,
            "relay_subnets": [
                {"subnet": RELAY_NET, "pool": "10.1.0.50-10.1.0.250", "router": RELAY_IP}
            ],
            **dhcp,
        },
        http={"listen": "127.0.0.1"},
    )
    root = Path(cfg["tftp"]["root"])
    for name in ("undionly.kpxe", "ipxe.efi"):
        (root / name).write_bytes(b"\0" * 64)
    return cfg


class LabBootd(BootdProcess):
    """bootd inside the server namespace; API calls go through `ip netns exec`."""

    def __init__(self, tmp: Path, lab: VethLab, cfg: dict[str, Any]) -> None:
        self.lab = lab
        super().__init__(write_config(tmp, cfg), cfg, prefix=lab.in_srv())

    def wait_ready(self, timeout: float = 30.0, path: str = "/healthz") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bootd exited {self.proc.returncode}:\n{self.log()}")
            if "bootd ready" in self.log():
                return
            time.sleep(0.05)
        raise TimeoutError(f"bootd not ready:\n{self.log()}")

    def api(self, path: str) -> Any:
        out = sh(*self.lab.in_srv("curl", "-sf", self.url + path)).stdout
        return json.loads(out) if path.startswith("/api") else out

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0 when absent)."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.api("/metrics").splitlines():
            m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
            if not m or m.group(1) != name:
                continue
            got = ",".join(sorted((m.group(2) or "").split(","))) if m.group(2) else ""
            if got == want:
                return float(m.group(3))
        return 0.0


def leases_in_db(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """(mac, ip) rows straight from bootd's SQLite file."""
    out = sh(
        "sqlite3", str(Path(cfg["state_dir"]) / "bootd.sqlite3"), "SELECT mac, ip FROM dhcp_leases"
    )
    return [tuple(line.split("|")) for line in out.stdout.split()]  # type: ignore[misc]


def perfdhcp(lab: VethLab, *args: str, timeout: float = 120) -> dict[str, Any]:
    """Run perfdhcp in the client namespace and pick the numbers out of its report."""
    r = subprocess.run(
        lab.in_cli("perfdhcp", "-4", *args), capture_output=True, text=True, timeout=timeout
    )
    text = r.stdout + r.stderr
    out: dict[str, Any] = {"rc": r.returncode, "text": text}
    m = re.search(r"It took (\d+):(\d+):([\d.]+) to provision (\d+) clients", text)
    if m:
        out["seconds"] = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
        out["provisioned"] = int(m.group(4))
    for key, pat in (
        ("resent", r"Requests resent: (\d+)"),
        ("non_unique", r"non unique addresses: (\d+)"),
        ("rate", r"Rate: ([\d.]+) 4-way exchanges/second"),
    ):
        vals = re.findall(pat, text)
        if vals:
            out[key] = sum(float(v) for v in vals) if key == "non_unique" else float(vals[-1])
    drops = re.findall(r"drops: (\d+)", text)
    sent = re.findall(r"sent packets: (\d+)", text)
    if drops and sent:
        out["drops"] = [int(x) for x in drops]
        out["sent"] = [int(x) for x in sent]
    return out


def udp_send(lab: VethLab, payloads: list[bytes], dst: str, port: int = 67) -> None:
    """Send datagrams from the client namespace."""
    code = (
        "import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        f"for h in sys.argv[1:]: s.sendto(bytes.fromhex(h),({dst!r},{port}))"
    )
    sh(*lab.in_cli("python3", "-c", code, *(p.hex() for p in payloads)))
