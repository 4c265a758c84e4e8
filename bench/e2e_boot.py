"""`python -m bench.e2e_boot`: real firmware boots through the peers and through bootd, same run.

The same QEMU machines (SeaBIOS + iPXE ROM, OVMF native PXE) boot the same artifacts
first through dnsmasq + nginx, then through bootd, in one lab namespace. For each it
prints seconds from power-on to the boot script, kernel, root image and phone-home
(peers: nginx's access log; bootd: its own timeline) and the bootd/peer ratio.
Timings are noisy on a shared machine: compare within one run only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.lab.artifacts import build_all
from bench.lab.bootd_lab import LabBootd, LabNode
from bench.lab.lab import BridgeLab, can_netns
from bench.lab.peers import PeerStack
from bench.lab.qemu import Accel, Machine, MachineSpec, probe_accel, wait_all

RESULTS = Path(__file__).resolve().parent / "results"
MILESTONES = ("script", "kernel", "rootfs", "phone-home")
# nginx request path (peers) and timeline stage (bootd) of each milestone.
PEER_PATHS = {
    "script": "/boot.ipxe",
    "kernel": "/images/vmlinuz",
    "rootfs": "/images/rootfs",
    "phone-home": "/cloud-init/phone-home/",
}
BOOTD_STAGES = {
    "script": "bootscript",
    "kernel": "kernel",
    "rootfs": "rootfs",
    "phone-home": "booted",
}


def boot(
    lab: BridgeLab, fws: list[str], accel: Accel, work: Path, prefix: str
) -> tuple[dict[str, Machine], dict[str, float]]:
    """Power on one machine per firmware at once; their wall-clock power-on times."""
    machines: dict[str, Machine] = {}
    power_on: dict[str, float] = {}
    for i, fw in enumerate(fws):
        mac = f"52:54:00:be:{0 if prefix == 'peer' else 1:02x}:{i + 1:02x}"
        spec = MachineSpec(f"{prefix}-{fw}", "bios" if fw == "bios" else "uefi", mac, lab.tap(i))
        power_on[fw] = time.time()
        machines[fw] = Machine(spec, accel, work, lab.prefix_argv).start()
    wait_all(list(machines.values()), 300)
    return machines, power_on


def peer_milestones(log: str, ip_of: dict[str, str], t0: dict[str, float]) -> dict[str, Any]:
    """First time each node's request for a milestone path shows in nginx's log."""
    out: dict[str, dict[str, float]] = {fw: {} for fw in ip_of}
    for line in log.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        t, ip, path = float(parts[0]), parts[1], parts[3]
        for fw, node_ip in ip_of.items():
            if ip != node_ip:
                continue
            for name, prefix in PEER_PATHS.items():
                if path.startswith(prefix) and name not in out[fw]:
                    out[fw][name] = round(t - t0[fw], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run both stacks; print the table and write bench/results/e2e_boot.json."""
    p = argparse.ArgumentParser(prog="python -m bench.e2e_boot", description=__doc__)
    p.add_argument("--firmware", default="bios,uefi")
    p.add_argument("--prefix", default="bbench")
    args = p.parse_args(argv)
    reason = can_netns()
    if reason:
        print(f"e2e_boot: {reason}", file=sys.stderr)
        return 1
    fws = args.firmware.split(",")
    artifacts = build_all()
    accel, why = probe_accel(artifacts.kernel, artifacts.initrd)
    print(f"accelerator: {accel} ({why})")
    work = Path(tempfile.mkdtemp(prefix="bootd-e2e-bench-"))
    results: dict[str, Any] = {"accel": accel, "peers": {}, "bootd": {}, "wall": {}}
    with BridgeLab(args.prefix, taps=len(fws)) as lab:
        peers = PeerStack(lab, artifacts, work / "peers")
        (work / "peers").mkdir()
        peers.start()
        try:
            machines, t0 = boot(lab, fws, accel, work, "peer")
        finally:
            peers.stop()
        leases = (work / "peers" / "dnsmasq.leases").read_text().split()
        ip_of = {
            fw: leases[leases.index(m.spec.mac) + 1]
            for fw, m in machines.items()
            if m.spec.mac in leases
        }
        log = (work / "peers" / "access.log").read_text()
        results["peers"] = peer_milestones(log, ip_of, t0)
        results["wall"]["peers"] = {fw: round(m.elapsed, 2) for fw, m in machines.items()}
        results["ok"] = {f"peers-{fw}": m.exit_reason for fw, m in machines.items()}

        bootd = LabBootd(lab, artifacts, work / "bootd")
        bootd.start()
        try:
            nodes = [
                LabNode(f"52:54:00:be:01:{i + 1:02x}", lab.host(11 + i), f"bench-{fw}", i + 1)
                for i, fw in enumerate(fws)
            ]
            bootd.load_nodes(nodes)
            machines, t0 = boot(lab, fws, accel, work, "bootd")
            timelines = {b["mac"]: b for b in bootd.boots()}
        finally:
            bootd.stop()
        for fw, m in machines.items():
            tl = timelines.get(m.spec.mac)
            row: dict[str, float] = {}
            if tl is not None:
                stages = {s["stage"]: s["start"] for s in tl["stages"]}
                for name, stage in BOOTD_STAGES.items():
                    if stage in stages:
                        row[name] = round(tl["power_on"] + stages[stage] - t0[fw], 2)
            results["bootd"][fw] = row
            results["ok"][f"bootd-{fw}"] = m.exit_reason
        results["wall"]["bootd"] = {fw: round(m.elapsed, 2) for fw, m in machines.items()}

    print(f"\nseconds from power-on ({accel}); ratio = bootd / peers")
    print(f"{'firmware':<8} {'milestone':<11} {'peers':>7} {'bootd':>7} {'ratio':>6}")
    for fw in fws:
        for name in MILESTONES:
            a = results["peers"].get(fw, {}).get(name)
            b = results["bootd"].get(fw, {}).get(name)
            ratio = f"{b / a:.2f}" if a and b else "-"
            print(f"{fw:<8} {name:<11} {a if a is not None else '-':>7} {b if b is not None else '-':>7} {ratio:>6}")  # fmt: skip
    print(f"outcomes: {results['ok']}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "e2e_boot.json").write_text(json.dumps(results, indent=2))
    return 0 if all(v == "ok" for v in results["ok"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
