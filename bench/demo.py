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
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from bench.lab.artifacts import ArtifactError, build_all
from bench.lab.bootd_lab import LabBootd, LabNode
from bench.lab.lab import BridgeLab, can_netns
from bench.lab.qemu import Accel, Machine, MachineSpec, probe_accel
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
FIRMWARE = {"bios": "SeaBIOS + iPXE ROM", "uefi": "OVMF native PXE"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.demo", description=__doc__)
    p.add_argument("--firmware", default="bios,uefi", help="machines to boot: bios,uefi")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds for every node to boot")
    p.add_argument("--prefix", default="bdemo", help="namespace/interface name prefix")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, serial consoles)")
    return p.parse_args(argv)


def _cell(tl: dict[str, Any] | None, stage: str) -> str:
    if tl is None:
        return ""
    for s in tl["stages"]:
        if s["stage"] == stage:
            return "…" if s["end"] is None else f"{s['end']:.1f}s"
    return ""


def render(
    nodes: list[tuple[LabNode, str, Machine]], boots: dict[str, dict[str, Any]], now: float
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
    widths = [max(len(str(r[i])) for r in [cols, *rows]) for i in range(len(cols))]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
    body = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([line, *body])


def summary(nodes: list[tuple[LabNode, str, Machine]], boots: dict[str, dict[str, Any]]) -> str:
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
        print("demo: --firmware takes bios and/or uefi", file=sys.stderr)
        return 2

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    print("building boot artifacts (cached in .artifacts/) …", flush=True)
    try:
        artifacts = build_all(log=True)
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
    lab = BridgeLab(args.prefix, taps=len(fws))
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
            LabNode(f"52:54:00:de:00:{i + 1:02x}", lab.host(11 + i), f"demo-{fw}", i + 1)
            for i, fw in enumerate(fws)
        ]
        bootd.load_nodes(nodes)
        print(bootd.cli("nodes", "list"))
        for i, (node, fw) in enumerate(zip(nodes, fws, strict=True)):
            spec = MachineSpec(
                node.hostname, "bios" if fw == "bios" else "uefi", node.mac, lab.tap(i)
            )
            machines.append((node, fw, Machine(spec, accel, work, lab.prefix_argv).start()))
            print(f"power on {node.hostname}: {FIRMWARE[fw]} ({accel})")
        code = watch(bootd, machines, boots, args.timeout)
        print(summary(machines, boots))
        for _, _, m in machines:
            if m.exit_reason != "ok":
                print(f"\n--- {m.spec.name} serial console (last lines)\n{m.serial()[-3000:]}")
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up")
        code = 130
    finally:
        for _, _, m in machines:
            m.stop()
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
) -> int:
    """Redraw the table until every machine finished or the timeout; 0 if all booted."""
    tty = sys.stdout.isatty()
    deadline = time.monotonic() + timeout
    last = ""
    drawn = 0
    while True:
        done = all(m.poll() is not None for _, _, m in machines)
        with contextlib.suppress(OSError, ValueError):
            boots.update({b["mac"]: b for b in bootd.boots()})
        text = render(machines, boots, time.monotonic())
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
    return 0 if all(m.exit_reason == "ok" for _, _, m in machines) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
