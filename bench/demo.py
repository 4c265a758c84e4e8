"""`make demo`: real BIOS and UEFI firmware network-boot through bootd, shown live.

Builds the boot artifacts, starts a lab namespace with bootd inside, loads boot
parameters and the node inventory through bootd's CLI, powers on QEMU machines,
draws a table of nodes and stages from /api/v1/boots until every node phoned home,
prints a summary and cleans everything up (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bench.lab.artifacts import ArtifactError, build_all
from bench.lab.bootd_lab import REPO, LabBootd, LabNode
from bench.lab.lab import BridgeLab, can_netns
from bench.lab.qemu import Accel, Firmware, Machine, MachineSpec, probe_accel
from bench.storm.runner import macs_for
from bootd.timeline.model import STAGES

SHORT = {
    "dhcp": "DHCP",
    "tftp": "TFTP",
    "dhcp-ipxe": "iPXE",
    "bootscript": "SCRIPT",
    "kernel": "KERNEL",
    "initrd": "INITRD",
    "dhcp-linux": "LINUX",
    "rootfs": "ROOTFS",
    "cloud-init": "CI",
    "booted": "BOOTED",
}
FIRMWARE = {
    "bios": "SeaBIOS + iPXE ROM",
    "uefi": "OVMF native PXE",
    "dracut": "SeaBIOS + iPXE ROM, dracut live",
}


@dataclass
class VirtualBatch:
    """Virtual clients from bench/storm (PXE, TFTP, iPXE, Linux, cloud-init in Python)."""

    macs: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0

    def start(self, lab: BridgeLab, work: Path) -> None:
        """Run `bench.storm.clients` in the lab's client namespace."""
        self.started = time.monotonic()
        with open(work / "virtual.log", "wb") as log:
            self.proc = subprocess.Popen(
                lab.client_argv(
                    sys.executable, "-m", "bench.storm.clients", "--ifname", lab.client_if,
                    "--nodes", str(len(self.macs)), "--progress-interval", "2",
                    "--out", str(work / "virtual.json"),
                ),
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            )  # fmt: skip

    def finished(self) -> bool:
        """The client process has exited (every virtual node done or failed)."""
        return self.proc is None or self.proc.poll() is not None

    def stop(self) -> None:
        """Kill the client process if it still runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.demo", description=__doc__)
    p.add_argument(
        "--firmware",
        default="bios,uefi",
        help="machines: bios,uefi,dracut (dracut: SeaBIOS "
        "with Debian's dracut live initramfs; slow under TCG)",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds for every node to boot")
    p.add_argument("--prefix", default="bdemo", help="namespace/interface name prefix")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    p.add_argument(
        "--virtual", type=int, default=16, help="virtual clients from bench/storm (0: none)"
    )
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, serial consoles)")
    return p.parse_args(argv)


def _cell(tl: dict[str, Any] | None, stage: str) -> str:
    if tl is None:
        return ""
    for s in tl["stages"]:
        if s["stage"] == stage:
            return "…" if s["end"] is None else f"{s['end']:.1f}s"
    return ""


def virtual_row(
    virtual: list[str], boots: dict[str, dict[str, Any]], started: float, now: float
) -> list[str]:
    """One row for all virtual clients: how many finished each stage."""
    done = {s: 0 for s in STAGES}
    for mac in virtual:
        tl = boots.get(mac)
        for s in tl["stages"] if tl else []:
            if s["end"] is not None and s["stage"] in done:
                done[s["stage"]] += 1
    n = len(virtual)
    cells = [f"{done[s]}/{n}" if done[s] else "" for s in STAGES]
    return [f"virtual ×{n}", "storm", f"{done['booted']} booted", *cells, f"{now - started:.0f}s"]


def render(
    nodes: list[tuple[LabNode, str, Machine]],
    boots: dict[str, dict[str, Any]],
    now: float,
    virtual: list[str] | None = None,
    started: float = 0.0,
) -> str:
    """The live table: one row per node, one column per stage (seconds since power-on)."""
    cols = ["NODE", "FIRMWARE", "STAGE", *(SHORT[s] for s in STAGES), "WALL"]
    rows = []
    for node, fw, m in nodes:
        tl = boots.get(node.mac)
        state = m.exit_reason or (tl["current_stage"] if tl else "power-on")
        rows.append(
            [
                node.hostname,
                fw,
                state,
                *(_cell(tl, s) for s in STAGES),
                f"{(m.ended or now) - m.started:.0f}s",
            ]
        )
    if virtual:
        rows.append(virtual_row(virtual, boots, started, now))
    widths = [max(len(str(r[i])) for r in [cols, *rows]) for i in range(len(cols))]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
    body = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([line, *body])


def summary(
    nodes: list[tuple[LabNode, str, Machine]],
    boots: dict[str, dict[str, Any]],
    virtual: list[str] | None = None,
) -> str:
    """Per node: each stage's start, duration and bytes; totals served by bootd."""
    out = []
    total = 0
    for node, fw, m in nodes:
        tl = boots.get(node.mac)
        out.append(f"\n{node.hostname} ({FIRMWARE[fw]}, {node.mac}): {m.exit_reason or '?'}")
        if tl is None:
            out.append("  no timeline recorded")
            continue
        out.append(f"  {'STAGE':<11} {'START':>8} {'TOOK':>7} {'BYTES':>10}  DETAIL")
        for s in tl["stages"]:
            took = "-" if s["duration"] is None else f"{s['duration']:.2f}s"
            out.append(
                f"  {s['stage']:<11} {s['start']:>7.2f}s {took:>7} {s['bytes'] or '':>10}  "
                f"{s['detail']}"
            )
            total += s["bytes"] or 0
        booted = next((s for s in tl["stages"] if s["stage"] == "booted"), None)
        if booted is not None:
            out.append(f"  power-on → phone-home as seen by bootd: {booted['start']:.1f}s")
    if virtual:
        times = sorted(
            s["start"]
            for mac in virtual
            for s in (boots.get(mac) or {"stages": []})["stages"]
            if s["stage"] == "booted"
        )
        out.append(f"\nvirtual clients (bench/storm): {len(times)} of {len(virtual)} phoned home")
        if times:
            out.append(
                f"  power-on → phone-home: median {times[len(times) // 2]:.1f}s, "
                f"slowest {times[-1]:.1f}s"
            )
        total += sum(
            s["bytes"] or 0 for mac in virtual for s in (boots.get(mac) or {"stages": []})["stages"]
        )
    out.append(f"\nbytes served by bootd to these nodes: {total:,}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit code (0 when every node booted)."""
    args = parse_args(argv)
    reason = can_netns()
    if reason:
        print(f"demo: {reason} (run `sudo make demo`)", file=sys.stderr)
        return 1
    fws = [f.strip() for f in args.firmware.split(",") if f.strip()]
    if not fws or any(f not in FIRMWARE for f in fws):
        print("demo: --firmware takes bios, uefi and/or dracut", file=sys.stderr)
        return 2

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # Even when started with SIGINT ignored (a background job), Ctrl-C must clean up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print("building boot artifacts (cached in .artifacts/) …", flush=True)
    try:
        artifacts = build_all(log=True, dracut="dracut" in fws)
    except ArtifactError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    accel: Accel
    if args.accel == "auto":
        accel, why = probe_accel(artifacts.kernel, artifacts.initrd)
        print(f"accelerator: {accel} ({why})")
    else:
        accel = "kvm" if args.accel == "kvm" else "tcg"
    work = Path(tempfile.mkdtemp(prefix="bootd-demo-"))
    lab = BridgeLab(args.prefix, taps=len(fws), clients=args.virtual > 0)
    virtual = VirtualBatch(macs_for(args.virtual))
    bootd = LabBootd(lab, artifacts, work)
    machines: list[tuple[LabNode, str, Machine]] = []
    boots: dict[str, dict[str, Any]] = {}
    code = 1
    try:
        lab.up()
        print(f"lab: namespace {lab.netns}, bridge {lab.bridge} {lab.address}/{lab.prefixlen}")
        bootd.start()
        missing = bootd.missing()
        if missing:
            print("demo: this bootd lacks " + "; ".join(missing), file=sys.stderr)
            return 1
        print(f"bootd: {bootd.url} (inside {lab.netns}), state and logs in {work}")
        nodes = [
            LabNode(
                f"52:54:00:de:00:{i + 1:02x}",
                lab.host(11 + i),
                f"demo-{fw}",
                i + 1,
                "dracut" if fw == "dracut" else "busybox",
            )
            for i, fw in enumerate(fws)
        ]
        extra = [
            LabNode(mac, "", f"virt{i + 1:04d}", 1000 + i) for i, mac in enumerate(virtual.macs)
        ]
        bootd.load_nodes(nodes + extra)
        print(bootd.cli("nodes", "list") if len(extra) <= 16 else f"{len(nodes + extra)} nodes")
        for i, (node, fw) in enumerate(zip(nodes, fws, strict=True)):
            firmware: Firmware = "uefi" if fw == "uefi" else "bios"
            memory = 768 if fw == "dracut" else 512
            spec = MachineSpec(node.hostname, firmware, node.mac, lab.tap(i), memory)
            machines.append((node, fw, Machine(spec, accel, work, lab.prefix_argv).start()))
            print(f"power on {node.hostname}: {FIRMWARE[fw]} ({accel})")
        if virtual.macs:
            virtual.start(lab, work)
            print(
                f"power on {len(virtual.macs)} virtual clients (bench/storm) in {lab.client_netns}"
            )
        code = watch(bootd, machines, boots, args.timeout, virtual)
        print(summary(machines, boots, virtual.macs))
        for _, _, m in machines:
            if m.exit_reason != "ok":
                print(f"\n--- {m.spec.name} serial console (last lines)\n{m.serial()[-3000:]}")
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up")
        code = 130
    finally:
        for _, _, m in machines:
            m.stop()
        virtual.stop()
        bootd.stop()
        lab.down()
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return code


def watch(
    bootd: LabBootd,
    machines: list[tuple[LabNode, str, Machine]],
    boots: dict[str, dict[str, Any]],
    timeout: float,
    virtual: VirtualBatch,
) -> int:
    """Redraw the table until every node finished or the timeout; 0 if all booted."""
    tty = sys.stdout.isatty()
    deadline = time.monotonic() + timeout
    last = ""
    drawn = 0
    while True:
        done = all(m.poll() is not None for _, _, m in machines) and virtual.finished()
        with contextlib.suppress(OSError, ValueError):
            boots.update({b["mac"]: b for b in bootd.boots()})
        text = render(machines, boots, time.monotonic(), virtual.macs, virtual.started)
        if tty:
            # Move up over the previous table and draw over it.
            sys.stdout.write(("\x1b[F\x1b[K" * drawn) + text + "\n")
            drawn = text.count("\n") + 1
        elif text != last:
            print(text + "\n")
        sys.stdout.flush()
        last = text
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for _, _, m in machines:
        if m.poll() is None:
            m.exit_reason = "timeout"
            m.ended = time.monotonic()
            m.stop()
    virtual.stop()
    booted = sum(1 for mac in virtual.macs if (boots.get(mac) or {}).get("booted"))
    ok = all(m.exit_reason == "ok" for _, _, m in machines) and booted == len(virtual.macs)
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
