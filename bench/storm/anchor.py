"""The anchor stack a site would otherwise run: dnsmasq (DHCP + TFTP) and nginx (sendfile)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from bench.lab.netns import VethLab
from bench.storm.images import INITRD, KERNEL, NBP_BIOS, NBP_UEFI, ROOTFS
from bench.storm.machines import LAB_IMAGES, machine_params
from bench.storm.stack import StackUnavailable, StormSite, wait_http

NGINX_CONF = """user root; worker_processes {workers}; pid {d}/nginx.pid; error_log {d}/nginx.err;
daemon off;
events {{ worker_connections 8192; }}
http {{
  access_log off; sendfile on; tcp_nopush on; default_type application/octet-stream;
  keepalive_timeout 65;
  server {{
    listen {ip}:{port} backlog=4096;
    location /images/ {{ alias {images}/; }}
    location /boot/ {{ alias {d}/boot/; }}
    location /cloud-init/ {{ alias {d}/cloud-init/; }}
    location /phone-home/ {{ return 200 "ok\\n"; }}
    location ~ ^/cloud-init/.+/phone-home/ {{ return 200 "ok\\n"; }}
  }}
}}
"""


def script_for(site: StormSite, mac: str) -> str:
    """The pre-rendered per-MAC script (what BSS would have rendered for this node)."""
    base = site.base_url
    params = (
        f"initrd={INITRD} root=live:{base}/images/{ROOTFS} "
        f"ds=nocloud;s={base}/cloud-init/{mac}/ console=ttyS0,115200 ip=dhcp"
    )
    return (
        "#!ipxe\n"
        f"kernel --name kernel {base}/images/{KERNEL} {params} || goto retry\n"
        f"initrd --name {INITRD} {base}/images/{INITRD} || goto retry\n"
        "boot || goto retry\n"
        ":retry\nsleep 2\n"
        f"chain {base}/boot/{mac}.ipxe\n"
    )


def machine_script(site: StormSite, mac: str) -> str:
    """A real QEMU machine's script: the lab's kernel, initrd and live root."""
    base = site.base_url
    params = machine_params(base, f"{base}/cloud-init/{mac}/")
    return (
        "#!ipxe\n"
        f"kernel {base}/images/{LAB_IMAGES}/vmlinuz initrd=initrd.img {params}\n"
        f"initrd {base}/images/{LAB_IMAGES}/initrd.img\n"
        "boot\n"
    )


def render_static(
    site: StormSite, root: Path, macs: Sequence[str], machines: Sequence[str] = ()
) -> None:
    """boot/boot.ipxe (chains to ${mac}), boot/<mac>.ipxe, cloud-init/<mac>/{meta,user,vendor}."""
    boot = root / "boot"
    boot.mkdir(parents=True, exist_ok=True)
    # dnsmasq cannot put the MAC in the URL; the usual trick is a static script that
    # chains with iPXE's own ${net0/mac} expansion.
    (boot / "boot.ipxe").write_text(f"#!ipxe\nchain {site.base_url}/boot/${{net0/mac}}.ipxe\n")
    for i, mac in enumerate([*macs, *machines], 1):
        script = machine_script(site, mac) if mac in machines else script_for(site, mac)
        (boot / f"{mac}.ipxe").write_text(script)
        ci = root / "cloud-init" / mac
        ci.mkdir(parents=True, exist_ok=True)
        iid = "i-" + mac.replace(":", "")
        (ci / "meta-data").write_text(f"instance-id: {iid}\nlocal-hostname: nid{i:04d}\n")
        (ci / "user-data").write_text(
            "#cloud-config\n"
            "phone_home:\n"
            f"  url: {site.base_url}/phone-home/$INSTANCE_ID\n"
            "  post: [instance_id, hostname, fqdn]\n"
            "  tries: 10\n"
        )
        (ci / "vendor-data").write_text("#cloud-config\nruncmd:\n  - [sh, -c, 'echo booted']\n")


class AnchorStack:
    """dnsmasq + nginx in the lab's server namespace, serving the same images as bootd."""

    name = "anchor"

    def __init__(
        self,
        lab: VethLab,
        site: StormSite,
        workdir: Path,
        images: Path,
        tftp: Path,
        nginx_workers: int = 1,
    ) -> None:
        self.images = images
        self.tftp = tftp
        self.lab = lab
        self.site = site
        self.dir = workdir
        self.nginx_workers = nginx_workers
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, macs: list[str], iface: str, machines: list[str]) -> None:
        """Render the static files and start both daemons."""
        render_static(self.site, self.dir, macs, machines)
        (self.dir / "nginx.conf").write_text(
            NGINX_CONF.format(
                d=self.dir,
                ip=self.site.server_ip,
                port=self.site.http_port,
                workers=self.nginx_workers,
                images=self.images,
            )
        )
        self._spawn("nginx", "nginx", "-c", str(self.dir / "nginx.conf"))
        pool = self.site.pool.split("-")
        self._spawn(
            "dnsmasq",
            "dnsmasq", "--keep-in-foreground", "--user=root", "--port=0",
            f"--interface={iface}", "--bind-interfaces", "--no-ping",
            f"--dhcp-range={pool[0]},{pool[1]},{self.site.netmask},1h",
            "--dhcp-lease-max=100000", f"--dhcp-leasefile={self.dir}/dnsmasq.leases",
            "--dhcp-authoritative", "--quiet-dhcp", "--quiet-tftp",
            f"--log-facility={self.dir}/dnsmasq.log",
            "--enable-tftp", f"--tftp-root={self.tftp}", "--tftp-max=4000",
            "--dhcp-match=set:ipxe,175", "--dhcp-userclass=set:ipxe,iPXE",
            "--dhcp-match=set:efi,option:client-arch,7",
            "--dhcp-match=set:efi,option:client-arch,9",
            f"--dhcp-boot=tag:!ipxe,tag:efi,{NBP_UEFI},,{self.site.server_ip}",
            f"--dhcp-boot=tag:!ipxe,tag:!efi,{NBP_BIOS},,{self.site.server_ip}",
            f"--dhcp-boot=tag:ipxe,{self.site.base_url}/boot/boot.ipxe",
        )  # fmt: skip
        try:
            wait_http(f"{self.site.base_url}/boot/boot.ipxe", self.lab, self.procs["nginx"])
        except StackUnavailable:
            self.stop()
            raise
        time.sleep(0.2)
        for name, p in self.procs.items():
            if p.poll() is not None:
                self.stop()
                log = (self.dir / f"{name}.out").read_text(errors="replace")[-2000:]
                raise StackUnavailable(f"{name} exited {p.returncode}: {log}")

    def _spawn(self, name: str, *argv: str) -> None:
        out = open(self.dir / f"{name}.out", "wb")  # noqa: SIM115
        self.procs[name] = subprocess.Popen(self.lab.in_srv(*argv), stdout=out, stderr=out)

    def pids(self) -> dict[str, list[int]]:
        """Processes to sample: dnsmasq and nginx's master (the sampler adds its workers)."""
        return {name: [p.pid] for name, p in self.procs.items()}

    def restart(self) -> None:
        """The anchor is not restarted mid-storm (only bootd is)."""
        raise NotImplementedError

    def stop(self) -> None:
        """SIGTERM both daemons."""
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
