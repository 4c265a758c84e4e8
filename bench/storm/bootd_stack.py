"""bootd in the lab's server namespace: DHCP + TFTP + HTTP on the veth, boot params via BSS."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench.lab.netns import VethLab
from bench.storm.images import INITRD, KERNEL, ROOTFS
from bench.storm.machines import LAB_IMAGES, machine_params
from bench.storm.stack import StackUnavailable, StormSite, http_get, http_status, wait_http

REPO = Path(__file__).resolve().parents[2]
TOKEN = "storm-token"


def bootd_config(
    iface: str, site: StormSite, workdir: Path, images: Path, tftp: Path
) -> dict[str, Any]:
    """The serve config: every service on the lab's server address."""
    (workdir / "api-token").write_text(TOKEN + "\n")
    return {
        "interface": iface,
        "address": site.server_ip,
        "state_dir": str(workdir / "state"),
        "shutdown_grace": 2,
        "log": {"level": "warning"},
        "dhcp": {
            "enabled": True,
            "subnet": site.subnet,
            "pool": site.pool,
            "router": site.server_ip,
            "lease_time": 3600,
        },
        "tftp": {"enabled": True, "root": str(tftp)},
        "http": {"listen": site.server_ip, "port": site.http_port, "images": str(images)},
        "api": {"token_file": str(workdir / "api-token")},
    }


def boot_parameters(site: StormSite) -> dict[str, Any]:
    """One `Default` entry: relative kernel/initrd (served from /images/), a live root."""
    return {
        "hosts": ["Default"],
        "kernel": KERNEL,
        "initrd": INITRD,
        "params": f"console=ttyS0,115200 ip=dhcp root=live:{site.base_url}/images/{ROOTFS}",
    }


class BootdStack:
    """Starts `bootd serve`, loads boot parameters through its API, restarts on request."""

    name = "bootd"

    def __init__(
        self, lab: VethLab, site: StormSite, workdir: Path, images: Path, tftp: Path
    ) -> None:
        self.images = images
        self.tftp = tftp
        self.lab = lab
        self.site = site
        self.dir = workdir
        self.config_path = workdir / "bootd.yaml"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.machines: list[str] = []

    def start(self, macs: list[str], iface: str, machines: list[str]) -> None:
        """Start bootd and check every part the storm needs; raises StackUnavailable."""
        self.machines = machines
        self.config_path.write_text(
            yaml.safe_dump(bootd_config(iface, self.site, self.dir, self.images, self.tftp))
        )
        self._spawn()
        try:
            self._check()
        except StackUnavailable:
            self.stop()
            raise

    def _spawn(self) -> None:
        self.starts += 1
        log = open(self.dir / f"bootd.{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.lab.in_srv(
                sys.executable, "-m", "bootd", "serve", "--config", str(self.config_path)
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        assert self.proc is not None
        # 503 is bootd saying an enabled service is not up: _check names which.
        wait_http(f"{self.site.base_url}/healthz", self.lab, self.proc, accept=(200, 503))

    def log(self) -> str:
        """The current process's log."""
        return (self.dir / f"bootd.{self.starts}.log").read_text(errors="replace")

    def _check(self) -> None:
        missing: list[str] = []
        base = self.site.base_url
        status, body = http_get(self.lab, f"{base}/healthz")
        if status != 200:
            try:
                down = json.loads(body).get("missing", [])
            except ValueError:
                down = [body[:200]]
            missing.append(f"services {', '.join(down)} (/healthz {status})")
        status = self._post_with_bearer(boot_parameters(self.site))
        if self.machines and status in (200, 201, 204):
            base = self.site.base_url
            status = self._post_with_bearer(
                {
                    "macs": self.machines,
                    "kernel": f"{LAB_IMAGES}/vmlinuz",
                    "initrd": f"{LAB_IMAGES}/initrd.img",
                    "params": machine_params(base, f"{base}/cloud-init/"),
                }
            )
        if status not in (200, 201, 204):
            missing.append(f"BSS API (POST /boot/v1/bootparameters → {status})")
        if http_status(self.lab, f"{base}/images/{KERNEL}", "HEAD") != 200:
            missing.append(f"image serving (HEAD /images/{KERNEL})")
        script = subprocess.run(
            self.lab.in_srv("curl", "-s", "-m", "5", f"{base}/boot/v1/bootscript?mac=02:00:00:00:00:01"),
            capture_output=True, text=True,
        ).stdout  # fmt: skip
        if not script.startswith("#!ipxe"):
            missing.append("boot scripts (GET /boot/v1/bootscript)")
        # An unknown source gets a problem document from the cloud-init handler; a missing
        # route gets aiohttp's bare 404 without a detail.
        ci = subprocess.run(
            self.lab.in_srv("curl", "-s", "-m", "5", f"{base}/cloud-init/meta-data"),
            capture_output=True, text=True,
        ).stdout  # fmt: skip
        if '"detail"' not in ci and "instance-id" not in ci:
            missing.append("cloud-init (GET /cloud-init/meta-data)")
        if missing:
            raise StackUnavailable("bootd on this branch lacks: " + "; ".join(missing))

    def _post_with_bearer(self, payload: dict[str, Any]) -> int:
        r = subprocess.run(
            self.lab.in_srv(
                "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5",
                "-X", "POST", "-H", f"Authorization: Bearer {TOKEN}",
                "-H", "Content-Type: application/json",
                "--data-binary", json.dumps(payload),
                f"{self.site.base_url}/boot/v1/bootparameters",
            ),
            capture_output=True, text=True,
        )  # fmt: skip
        return int(r.stdout or 0)

    def pids(self) -> dict[str, list[int]]:
        """The bootd process (the sampler adds its sendfile workers)."""
        return {"bootd": [self.proc.pid] if self.proc else []}

    def restart(self) -> float:
        """SIGTERM (as systemctl restart does), start again on the same state; returns downtime."""
        assert self.proc is not None
        t = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._spawn()
        return time.monotonic() - t

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
