"""Proxy mode with real firmware: the site's DHCP server leases, bootd only says what to boot.

dnsmasq stands in for the site's server on another host of the lab network (the
lab's client namespace, on the bridge): addresses only, no boot options. bootd runs
with `dhcp.mode: proxy`. SeaBIOS's iPXE ROM must take bootd's offer as a ProxyDHCP
offer (it does only with option 60 PXEClient), and OVMF's own PXE client must load
`ipxe.efi` from it; both then boot as usual and phone home.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from bench.lab.artifacts import Artifacts
from bench.lab.bootd_lab import LabBootd, LabNode
from bench.lab.lab import BridgeLab, checkout_prefix, sh
from bench.lab.qemu import Machine, MachineSpec, chosen_accel, wait_all
from tests.helpers import qemu_boot_artifacts

pytestmark = [pytest.mark.root, pytest.mark.qemu, pytest.mark.slow]

BOOT_TIMEOUT = 240.0
SITE_DHCP = "10.99.0.2"  # the site's DHCP server, another host on the lab network
NODES = {
    "bios": LabNode("52:54:00:b2:00:01", "10.99.0.21", "px-bios", 21),
    "uefi": LabNode("52:54:00:b2:00:02", "10.99.0.22", "px-uefi", 22),
}
# No dhcp-linux: Linux's DHCP is the site server's business, bootd ignores it.
EXPECTED = {
    "bios": ["dhcp-ipxe", "bootscript", "kernel", "initrd", "rootfs", "cloud-init", "booted"],
    "uefi": ["dhcp", "tftp", "dhcp-ipxe", "bootscript", "kernel", "initrd", "rootfs",
             "cloud-init", "booted"],
}  # fmt: skip


@dataclass
class ProxyRun:
    bootd: LabBootd
    machines: dict[str, Machine]
    results: dict[str, str]
    site_leases: str
    bootd_leases: list[Any]

    def report(self, fw: str) -> str:
        m = self.machines[fw]
        return "\n".join(
            [f"--- {fw} serial", m.serial()[-8000:], "--- bootd log", self.bootd.log()[-5000:]]
        )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyRun]:
    artifacts: Artifacts = qemu_boot_artifacts()
    work = tmp_path_factory.mktemp("proxy")
    lab = BridgeLab(checkout_prefix("bpx"), taps=len(NODES), clients=True).up()
    site: subprocess.Popen[bytes] | None = None
    machines: dict[str, Machine] = {}
    bootd = LabBootd(lab, artifacts, work / "bootd", dhcp={"mode": "proxy"})
    try:
        sh("ip", "-n", lab.client_netns, "addr", "add", f"{SITE_DHCP}/24", "dev", lab.client_if)
        leases = work / "site.leases"
        site = subprocess.Popen(
            lab.client_argv(
                "dnsmasq", "--keep-in-foreground", "--user=root", "--port=0", "--no-resolv",
                "--bind-interfaces", f"--interface={lab.client_if}",
                "--dhcp-range=10.99.0.100,10.99.0.200,255.255.255.0,1h",
                *(f"--dhcp-host={n.mac},{n.ip}" for n in NODES.values()),
                f"--dhcp-leasefile={leases}", f"--pid-file={work}/site.pid",
            ),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        bootd.start()
        bootd.load_nodes(list(NODES.values()))
        accel, why = chosen_accel(artifacts.kernel, artifacts.initrd)
        print(f"accelerator: {accel} ({why})")
        for i, (fw, n) in enumerate(NODES.items()):
            spec = MachineSpec(f"proxy-{fw}", fw, n.mac, lab.tap(i), 512)  # type: ignore[arg-type]
            machines[fw] = Machine(spec, accel, work, lab.prefix_argv).start()
        outcome = wait_all(list(machines.values()), BOOT_TIMEOUT)
        results = dict(zip(machines, outcome, strict=True))
        bootd_leases = json.loads(bootd.cli("leases", "--json"))
        yield ProxyRun(bootd, machines, results, leases.read_text(), bootd_leases)
    finally:
        for m in machines.values():
            m.stop()
        bootd.stop()
        if site is not None:
            site.kill()
            site.wait()
        lab.down()


@pytest.mark.parametrize("fw", ["bios", "uefi"])
def test_firmware_boots_with_bootd_as_proxy(run: ProxyRun, fw: str) -> None:
    node = NODES[fw]
    assert run.results[fw] == "ok", run.report(fw)
    serial = run.machines[fw].serial()
    assert f"/boot/v1/bootscript?mac={node.mac}" in serial, run.report(fw)
    assert f"lease {node.ip}/24" in serial, run.report(fw)
    assert f"hostname={node.hostname}" in serial, run.report(fw)
    # The address came from the site's server; bootd leased nothing.
    assert node.mac in run.site_leases
    assert run.bootd_leases == []
    data = json.loads(run.bootd.cli("boots", "--json", "--mac", node.mac))
    stages = [s["stage"] for s in data[0]["stages"]]
    assert stages == EXPECTED[fw], f"{stages}\n{run.report(fw)}"
    first = data[0]["stages"][0]
    assert first["end"] is not None and first["detail"] == "proxy", first
