"""Real QEMU machines joining the storm: taps bridged with the server end of the veth."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.lab.netns import VethLab

LAB_IMAGES = "lab"  # subdirectory of the served images holding the real kernel/initrd/root


def machine_macs(count: int) -> list[str]:
    """QEMU's own OUI, so they never collide with the virtual nodes' 02:00:00:…."""
    return [f"52:54:00:5b:00:{i + 1:02x}" for i in range(count)]


def machine_params(base: str, ci_url: str) -> str:
    """Kernel command line of a real machine: the lab's busybox live root and cloud-init."""
    return (
        f"console=ttyS0,115200 panic=-1 ip=dhcp root=live:{base}/images/{LAB_IMAGES}/rootfs "
        f"ochami_ci_url={ci_url}"
    )


def link_lab_images(images: Path) -> str:
    """Build (or reuse) the lab's artifacts and place them under images/lab; returns kernel version."""
    from bench.lab.artifacts import build_all

    art = build_all()
    dest = images / LAB_IMAGES
    dest.mkdir(parents=True, exist_ok=True)
    for src in (art.kernel, art.initrd, art.rootfs):
        target = dest / src.name
        if target.exists():
            target.unlink()
        try:
            os.link(src, target)  # same filesystem: no copy
        except OSError:
            shutil.copy(src, target)
    return art.kernel_version


def yield_autogroup(pid: int, nice: int) -> None:
    """Give the session that pid leads the niceness too, where the kernel groups by session.

    Each machine runs in its own session, and with sched_autogroup_enabled the
    scheduler shares the CPU between sessions first: a per-process niceness then
    only ranks processes inside the machine's own session, and two TCG machines
    took two thirds of a 2-core box from the servers and clients in the bench's
    session. The autogroup's own niceness (sched(7)) is what makes them yield.
    """
    if nice <= 0:
        return
    with contextlib.suppress(OSError):  # no CONFIG_SCHED_AUTOGROUP: plain nice already works
        Path(f"/proc/{pid}/autogroup").write_text(f"{nice}\n")


class QemuNodes:
    """Alternating SeaBIOS (+ iPXE ROM) and OVMF (native PXE) machines on the server's bridge."""

    def __init__(self, lab: VethLab, count: int, workdir: Path, nice: int = 0) -> None:
        self.lab = lab
        self.nice = nice
        self.count = count
        self.dir = workdir
        self.macs = machine_macs(count)
        self.machines: list[Any] = []
        self.accel = "tcg"
        self.accel_reason = ""

    @property
    def bridge(self) -> str:
        return f"{self.lab.prefix}br"

    def plug(self, server_ip: str, prefixlen: int) -> str:
        """Bridge the server's veth end with one tap per machine; returns the server interface."""
        ns, br = self.lab.srv, self.bridge

        def ip(*args: str) -> None:
            subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)

        ip("link", "add", br, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        ip("addr", "del", f"{server_ip}/{prefixlen}", "dev", self.lab.srv_if)
        ip("link", "set", self.lab.srv_if, "master", br)
        ip("addr", "add", f"{server_ip}/{prefixlen}", "dev", br)
        ip("link", "set", br, "up")
        for i in range(self.count):
            tap = f"{self.lab.prefix}t{i}"
            ip("tuntap", "add", "dev", tap, "mode", "tap")
            ip("link", "set", tap, "master", br)
            ip("link", "set", tap, "up")
        return br

    def probe(self, images: Path) -> None:
        """KVM if a probe boot works here (nested KVM can fail at the first MSR), else TCG."""
        from bench.lab.qemu import probe_accel

        lab = images / LAB_IMAGES
        self.accel, self.accel_reason = probe_accel(lab / "vmlinuz", lab / "initrd.img", 20.0)

    def power_on(self) -> None:
        """Start every machine now."""
        from bench.lab.qemu import Machine, MachineSpec

        for i, mac in enumerate(self.macs):
            fw = "bios" if i % 2 == 0 else "uefi"
            spec = MachineSpec(f"storm-{fw}-{i}", fw, mac, f"{self.lab.prefix}t{i}")  # type: ignore[arg-type]
            prefix = ("ip", "netns", "exec", self.lab.srv, "nice", "-n", str(self.nice))
            m = Machine(spec, self.accel, self.dir, prefix)  # type: ignore[arg-type]
            self.machines.append(m.start())
            if m.proc is not None:
                yield_autogroup(m.proc.pid, self.nice)

    def wait(self, timeout: float) -> list[dict[str, Any]]:
        """Each machine's outcome ('ok' = phoned home), seconds from power-on, and console tail."""
        from bench.lab.qemu import wait_all

        results = wait_all(self.machines, timeout)
        out = []
        for m, r in zip(self.machines, results, strict=True):
            tail = [ln for ln in m.serial().splitlines() if ln.strip()][-3:]
            out.append(
                {
                    "name": m.spec.name, "firmware": m.spec.firmware, "mac": m.spec.mac,
                    "result": r, "seconds": round(m.elapsed, 2), "accel": self.accel,
                    "console_tail": tail if r != "ok" else [],
                }
            )  # fmt: skip
        return out

    def stop(self) -> None:
        """Kill any machine still running."""
        for m in self.machines:
            if m.running():
                m.stop(0.0)
        time.sleep(0)
