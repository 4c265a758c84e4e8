"""The reference stack a boot is checked against: dnsmasq (DHCP + TFTP) and nginx.

The same artifacts boot through it as through bootd, so a failure of the artifacts
is told apart from a failure of bootd. nginx serves a static iPXE script, the images
and static NoCloud files, and answers the phone-home POST (logged to its access log).
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.lab.artifacts import Artifacts
from bench.lab.lab import BridgeLab

HTTP_PORT = 8080


def boot_params(base: str, extra: str = "") -> str:
    """Kernel command line of a lab node: serial console, live root, cloud-init URL."""
    return (
        f"console=ttyS0,115200 panic=-1 ip=dhcp root=live:{base}/images/rootfs "
        f"ochami_ci_url={base}/cloud-init/ {extra}"
    ).strip()


def static_script(base: str) -> str:
    """The iPXE script the peer stack hands every node."""
    return (
        "#!ipxe\n"
        f"kernel {base}/images/vmlinuz initrd=initrd.img {boot_params(base)} BOOTIF=01-${{net0/mac:hexhyp}}\n"
        f"initrd {base}/images/initrd.img\n"
        "boot\n"
    )


def _nginx_conf(d: Path, address: str, images: Path) -> str:
    return f"""user root; worker_processes 1; pid {d}/nginx.pid; error_log {d}/nginx.err; daemon off;
events {{ worker_connections 1024; }}
http {{
  sendfile on; tcp_nopush on; default_type application/octet-stream;
  log_format t '$msec $remote_addr "$request" $status $body_bytes_sent';
  access_log {d}/access.log t;
  server {{
    listen {address}:{HTTP_PORT};
    location /images/ {{ alias {images}/; }}
    location = /boot.ipxe {{ root {d}/www; }}
    location /cloud-init/phone-home/ {{ return 200 "ok\\n"; }}
    location /cloud-init/ {{ alias {d}/www/cloud-init/; }}
  }}
}}
"""


@dataclass
class PeerStack:
    """dnsmasq + nginx inside the lab namespace."""

    lab: BridgeLab
    artifacts: Artifacts
    workdir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://{self.lab.address}:{HTTP_PORT}"

    def start(self) -> PeerStack:
        """Write configs and static files, start both daemons, wait for HTTP."""
        d = self.workdir
        www = d / "www"
        (www / "cloud-init").mkdir(parents=True, exist_ok=True)
        (www / "boot.ipxe").write_text(static_script(self.base))
        ci = www / "cloud-init"
        (ci / "meta-data").write_text(
            "instance-id: i-peer-0001\nlocal-hostname: peernode\nhostname: peernode\n"
        )
        (ci / "user-data").write_text("#cloud-config\n")
        (ci / "vendor-data").write_text("#cloud-config\n")
        (d / "nginx.conf").write_text(_nginx_conf(d, self.lab.address, self.artifacts.images))
        lo, hi = self.lab.host(100), self.lab.host(200)
        dnsmasq = [
            "dnsmasq", "--keep-in-foreground", "--user=root", "--port=0", "--no-resolv",
            f"--interface={self.lab.bridge}", "--bind-interfaces", "--no-ping",
            f"--dhcp-range={lo},{hi},255.255.255.0,1h", f"--dhcp-leasefile={d}/dnsmasq.leases",
            "--enable-tftp", f"--tftp-root={self.artifacts.tftp_root}",
            "--dhcp-match=set:ipxe,175", "--dhcp-match=set:efi64,option:client-arch,7",
            "--dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi",
            "--dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe",
            f"--dhcp-boot=tag:ipxe,{self.base}/boot.ipxe",
            "--log-dhcp", f"--log-facility={d}/dnsmasq.log", "--pid-file",
        ]  # fmt: skip
        for argv, name in ((dnsmasq, "dnsmasq"), (["nginx", "-c", f"{d}/nginx.conf"], "nginx")):
            with open(d / f"{name}.out", "wb") as out:
                self.procs.append(
                    subprocess.Popen(self.lab.argv(*argv), stdout=out, stderr=subprocess.STDOUT)
                )
        deadline = time.monotonic() + 15
        while True:
            try:
                self.lab.http_get(f"{self.base}/boot.ipxe", timeout=2)
                return self
            except OSError:
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                    self.stop()
                    raise RuntimeError(f"peer stack did not start:\n{self.logs()}") from None
                time.sleep(0.2)

    def logs(self) -> str:
        """dnsmasq's and nginx's logs, for a failure report."""
        out = []
        for name in ("dnsmasq.out", "dnsmasq.log", "nginx.out", "nginx.err", "access.log"):
            p = self.workdir / name
            if p.exists():
                out.append(f"--- {name}\n{p.read_text(errors='replace')[-4000:]}")
        return "\n".join(out)

    def phoned_home(self) -> list[str]:
        """Access-log lines of phone-home POSTs."""
        p = self.workdir / "access.log"
        text = p.read_text(errors="replace") if p.exists() else ""
        return [line for line in text.splitlines() if "POST /cloud-init/phone-home/" in line]

    def stop(self) -> None:
        """Terminate both daemons."""
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()


def tftp_only(lab: BridgeLab, root: Path, workdir: Path) -> subprocess.Popen[bytes]:
    """dnsmasq as a TFTP server alone (no DNS, no DHCP) on the lab address."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        "dnsmasq", "--keep-in-foreground", "--user=root", "--port=0", "--no-resolv",
        "--enable-tftp", f"--tftp-root={root}", f"--listen-address={lab.address}",
        "--bind-interfaces", "--pid-file", f"--log-facility={workdir}/dnsmasq-tftp.log",
    ]  # fmt: skip
    with open(workdir / "dnsmasq-tftp.out", "wb") as out:
        return subprocess.Popen(lab.argv(*argv), stdout=out, stderr=subprocess.STDOUT)
