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
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.lab.artifacts import Artifacts, build_all
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


Row = dict[str, float]


def run_peers(
    lab: BridgeLab, artifacts: Artifacts, fws: list[str], accel: Accel, work: Path
) -> tuple[dict[str, Row], dict[str, str]]:
    """One boot of every machine through dnsmasq + nginx: milestones and outcomes."""
    peers = PeerStack(lab, artifacts, work)
    work.mkdir(parents=True)
    peers.start()
    try:
        machines, t0 = boot(lab, fws, accel, work, "peer")
    finally:
        peers.stop()
    leases = (work / "dnsmasq.leases").read_text().split()
    ip_of = {
        fw: leases[leases.index(m.spec.mac) + 1]
        for fw, m in machines.items()
        if m.spec.mac in leases
    }
    rows = peer_milestones((work / "access.log").read_text(), ip_of, t0)
    return rows, {fw: m.exit_reason for fw, m in machines.items()}


def run_bootd(
    lab: BridgeLab, artifacts: Artifacts, fws: list[str], accel: Accel, work: Path
) -> tuple[dict[str, Row], dict[str, str]]:
    """One boot of every machine through bootd: milestones from its timelines, outcomes."""
    bootd = LabBootd(lab, artifacts, work)
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
    rows: dict[str, Row] = {}
    for fw, m in machines.items():
        tl = timelines.get(m.spec.mac)
        row: Row = {}
        if tl is not None:
            stages = {s["stage"]: s["start"] for s in tl["stages"]}
            for name, stage in BOOTD_STAGES.items():
                if stage in stages:
                    row[name] = round(tl["power_on"] + stages[stage] - t0[fw], 2)
        rows[fw] = row
    return rows, {fw: m.exit_reason for fw, m in machines.items()}


def main(argv: list[str] | None = None) -> int:
    """Run both stacks; print the table and write bench/results/e2e_boot.json."""
    p = argparse.ArgumentParser(prog="python -m bench.e2e_boot", description=__doc__)
    p.add_argument("--firmware", default="bios,uefi")
    p.add_argument("--prefix", default="bbench")
    p.add_argument(
        "--rounds", type=int, default=2, help="rounds, stack order alternating; medians reported"
    )
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
    runners = {"peers": run_peers, "bootd": run_bootd}
    rounds: list[dict[str, Any]] = []
    outcomes: dict[str, str] = {}
    with BridgeLab(args.prefix, taps=len(fws)) as lab:
        for r in range(args.rounds):
            order = ["peers", "bootd"] if r % 2 == 0 else ["bootd", "peers"]
            this: dict[str, Any] = {"order": order}
            for stack in order:
                rows, ok = runners[stack](lab, artifacts, fws, accel, work / f"{r}-{stack}")
                this[stack] = rows
                outcomes.update({f"{stack}-{fw}-r{r}": v for fw, v in ok.items()})
            rounds.append(this)
            print(f"round {r + 1}/{args.rounds} ({' then '.join(order)}) done", flush=True)
    shutil.rmtree(work, ignore_errors=True)

    def median(stack: str, fw: str, name: str) -> float | None:
        vals = sorted(v for rd in rounds if (v := rd[stack].get(fw, {}).get(name)) is not None)
        return statistics.median(vals) if vals else None

    print(f"\nseconds from power-on, median of {args.rounds} ({accel}); ratio = bootd / peers")
    print(f"{'firmware':<8} {'milestone':<11} {'peers':>7} {'bootd':>7} {'ratio':>6}")
    table = []
    for fw in fws:
        for name in MILESTONES:
            a, b = median("peers", fw, name), median("bootd", fw, name)
            ratio = round(b / a, 2) if a and b else None
            table.append(
                {"firmware": fw, "milestone": name, "peers": a, "bootd": b, "ratio": ratio}
            )
            cells = ["-" if v is None else f"{v:.2f}" for v in (a, b, ratio)]
            print(f"{fw:<8} {name:<11} {cells[0]:>7} {cells[1]:>7} {cells[2]:>6}")
    print(f"outcomes: {outcomes}")
    RESULTS.mkdir(exist_ok=True)
    doc = {"accel": accel, "rounds": rounds, "median": table, "outcomes": outcomes}
    (RESULTS / "e2e_boot.json").write_text(json.dumps(doc, indent=2))
    return 0 if all(v == "ok" for v in outcomes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
