"""bootd running inside a lab namespace, configured for QEMU nodes, driven by its CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.lab.artifacts import Artifacts
from bench.lab.lab import BridgeLab
from bench.lab.peers import boot_params

REPO = Path(__file__).resolve().parents[2]
HTTP_PORT = 8080
TOKEN = "lab-token"


@dataclass(frozen=True)
class LabNode:
    """A node of the lab inventory."""

    mac: str
    ip: str
    hostname: str
    nid: int
    # Which initramfs it boots: "busybox" (ours) or "dracut" (Debian's, dmsquash-live).
    flavour: str = "busybox"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mac": self.mac, "hostname": self.hostname, "nid": self.nid}
        if self.ip:  # no ip: an address from the dynamic pool
            d["ip"] = self.ip
        return {**d, "groups": ["compute", "lab"]}


def lab_config(lab: BridgeLab, artifacts: Artifacts, state: Path) -> dict[str, Any]:
    """bootd's config: DHCP on the lab bridge, TFTP of iPXE, HTTP images, API token."""
    token = state / "api-token"
    token.parent.mkdir(parents=True, exist_ok=True)
    token.write_text(TOKEN + "\n")
    return {
        "interface": lab.bridge,
        "address": lab.address,
        "state_dir": str(state / "db"),
        "shutdown_grace": 2,
        "dhcp": {
            "enabled": True,
            "subnet": lab.subnet,
            "pool": f"{lab.host(100)}-{lab.host(200)}",
            "router": lab.address,
            "lease_time": 3600,
            # The lab has no IPv6 router: without an answer iPXE waits ~14 s for one.
            "answer_router_solicitations": True,
        },
        "tftp": {"enabled": True, "root": str(artifacts.tftp_root)},
        "http": {"listen": lab.address, "port": HTTP_PORT, "images": str(artifacts.images)},
        "api": {"token_file": str(token)},
    }


def lab_bootparams(lab: BridgeLab, macs: list[str], flavour: str = "busybox") -> dict[str, Any]:
    """BSS BootParams for the lab nodes: relative kernel/initrd served from /images/."""
    base = f"http://{lab.address}:{HTTP_PORT}"
    dracut = flavour == "dracut"
    return {
        "macs": macs,
        "kernel": "vmlinuz",
        "initrd": "initrd-dracut.img" if dracut else "initrd.img",
        "params": boot_params(base, f"ochami_ci_url_secure={base}/cloud-init-secure/", dracut),
    }


@dataclass
class LabBootd:
    """`bootd serve` inside the lab namespace; `cli(...)` runs bootd commands against it."""

    lab: BridgeLab
    artifacts: Artifacts
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    cfg: dict[str, Any] = field(default_factory=dict)
    # Merged over the lab's `dhcp:` section (e.g. {"mode": "proxy"}).
    dhcp: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.lab.address}:{HTTP_PORT}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "bootd.log"

    def _env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(REPO), "BOOTD_URL": self.url, "BOOTD_TOKEN": TOKEN}

    def start(self, timeout: float = 30.0) -> LabBootd:
        """Write the config, start bootd in the namespace, wait for /healthz."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cfg = lab_config(self.lab, self.artifacts, self.workdir)
        self.cfg["dhcp"].update(self.dhcp)
        config = self.workdir / "bootd.yaml"
        config.write_text(yaml.safe_dump(self.cfg))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.lab.argv(sys.executable, "-m", "bootd", "serve", "--config", str(config)),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                env=self._env(),
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bootd exited {self.proc.returncode}:\n{self.log()}")
            # Any answer will do: /healthz says 503 while a service is missing, and
            # missing() reports which.
            if self.lab.http_status(self.url + "/healthz", timeout=2):
                return self
            if time.monotonic() > deadline:
                raise TimeoutError(f"bootd not ready in {timeout}s:\n{self.log()}")
            time.sleep(0.2)

    def log(self) -> str:
        """bootd's log so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def listening(self) -> set[str]:
        """Names of the services that logged `<name> listening on …`."""
        return set(re.findall(r"\b(\w+) listening on ", self.log()))

    def route_ok(self, path: str) -> bool:
        """GET path answers 2xx."""
        try:
            self.lab.http_get(self.url + path, timeout=5)
            return True
        except OSError:
            return False

    def missing(self) -> list[str]:
        """What an end-to-end boot needs from bootd that this build lacks, one line each."""
        out = [
            f"bootd's {svc.upper()} service (no '{svc} listening on' in its log)"
            for svc in ("dhcp", "tftp", "http")
            if svc not in self.listening()
        ]
        for path, what in (
            ("/boot/v1/bootparameters", "the BSS API /boot/v1/bootparameters"),
            ("/cloud-init/admin/groups", "the cloud-init service /cloud-init/"),
        ):
            if not self.route_ok(path):
                out.append(what)
        return out

    def cli(self, *args: str, timeout: float = 30.0) -> str:
        """Run `bootd ARGS` in the namespace against this server; raises with its output."""
        proc = subprocess.run(
            self.lab.argv(sys.executable, "-m", "bootd", *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            env=self._env(),
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"bootd {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
        return proc.stdout

    def load_nodes(self, nodes: list[LabNode]) -> None:
        """Import the inventory and the boot parameters through the CLI."""
        inv = self.workdir / "nodes.yaml"
        inv.write_text(yaml.safe_dump([n.to_dict() for n in nodes]))
        self.cli("nodes", "import", str(inv))
        for flavour in sorted({n.flavour for n in nodes}):
            macs = [n.mac for n in nodes if n.flavour == flavour]
            payload = self.workdir / f"bss-{flavour}.yaml"
            payload.write_text(yaml.safe_dump(lab_bootparams(self.lab, macs, flavour)))
            self.cli("bss", "set", "--payload", str(payload))

    def boots(self) -> list[dict[str, Any]]:
        """GET /api/v1/boots."""
        data = json.loads(self.lab.http_get(self.url + "/api/v1/boots"))
        return data if isinstance(data, list) else []

    def stop(self) -> int | None:
        """SIGTERM, then kill after a grace period."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
