"""`python -m bench.storm`: boot N virtual nodes against bootd and the anchor stack, same run."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.lab.netns import VethLab, can_netns
from bench.storm import report
from bench.storm.anchor import AnchorStack
from bench.storm.bootd_stack import BootdStack
from bench.storm.images import Sizes, make_images, make_tftp_root
from bench.storm.machines import link_lab_images
from bench.storm.runner import Stack, StormOptions, run_storm, scratch_dir
from bench.storm.stack import StackUnavailable

RESULTS = Path(__file__).resolve().parents[1] / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.storm", description=__doc__)
    p.add_argument("--nodes", type=int, default=640)
    p.add_argument(
        "--spread", type=float, default=0.0, help="power-on spread in seconds (0 = all at once)"
    )
    p.add_argument(
        "--sizes", default="", help="e.g. kernel=8M,initrd=16M,rootfs=32M,undionly=72K,ipxe_efi=1M"
    )
    p.add_argument("--uefi-fraction", type=float, default=0.5)
    p.add_argument("--loss", type=float, default=0.0, help="tc netem loss percent on the veth")
    p.add_argument("--restart-mid-storm", action="store_true", help="restart bootd once mid-storm")
    p.add_argument(
        "--restart-at", default="tftp:0.5", help="STAGE:FRACTION that triggers the restart"
    )
    p.add_argument(
        "--qemu", type=int, default=2, help="real QEMU machines joining the storm (0: none)"
    )
    p.add_argument(
        "--qemu-timeout", type=float, default=240.0, help="seconds the machines get (TCG is slow)"
    )
    p.add_argument(
        "--qemu-nice", type=int, default=10,
        help="niceness of the QEMU machines (TCG keeps a core busy each; 0: compete as equals)",
    )  # fmt: skip
    p.add_argument("--stacks", default="bootd,anchor")
    # Two by default: one process's event-loop lag over 640 nodes showed up as TFTP
    # round-trip time (measured: bootd's TFTP stage p50 66 s with one, 12 s with two).
    p.add_argument("--client-procs", type=int, default=2)
    p.add_argument("--nginx-workers", type=int, default=1)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds per stack (alternating order); median reported",
    )
    p.add_argument("--prefix", default="bst1", help="namespace/interface prefix")
    p.add_argument(
        "--name", default="", help="results file stem (default: storm[-loss…][-restart])"
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--keep", action="store_true", help="keep the scratch dir (logs, raw client output)"
    )
    return p.parse_args(argv)


def build_stack(
    name: str, lab: VethLab, opts: StormOptions, work: Path, args: argparse.Namespace
) -> Stack:
    d = work / name
    d.mkdir(parents=True)
    shared = work.parent
    if name == "bootd":
        return BootdStack(lab, opts.site, d, shared / "images", shared / "tftp")
    if name == "anchor":
        return AnchorStack(
            lab, opts.site, d, shared / "images", shared / "tftp", args.nginx_workers
        )
    raise SystemExit(f"unknown stack {name!r} (bootd, anchor)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every requested stack, one after the other, on the same machine; the results document."""
    reason = can_netns()
    if reason:
        raise SystemExit(f"storm: {reason}")
    sizes = Sizes.parse(args.sizes)
    stage, _, frac = args.restart_at.partition(":")
    opts = StormOptions(
        nodes=args.nodes, spread=args.spread, uefi_fraction=args.uefi_fraction, loss=args.loss,
        restart_at=(stage, float(frac or 0.5)) if args.restart_mid_storm else None,
        client_procs=args.client_procs, timeout=args.timeout, show_progress=not args.no_progress,
    )  # fmt: skip
    work = scratch_dir()
    make_images(work, sizes)
    _, nbp = make_tftp_root(work, sizes)
    if args.qemu:
        try:
            link_lab_images(work / "images")
            opts.qemu = args.qemu
            opts.qemu_timeout = args.qemu_timeout
            opts.qemu_nice = args.qemu_nice
            opts.images = work / "images"
        except Exception as exc:  # any reason the lab cannot build its images: run without
            print(f"storm: no QEMU machines: {exc}", file=sys.stderr)
            args.qemu = 0
    results: dict[str, Any] = {
        "config": {
            "nodes": args.nodes,
            "spread": args.spread,
            "sizes": sizes.describe(),
            "nbp": nbp,
            "uefi_fraction": args.uefi_fraction,
            "loss": args.loss,
            "restart": args.restart_at if args.restart_mid_storm else None,
            "client_procs": args.client_procs,
            "nginx_workers": args.nginx_workers,
            "qemu": args.qemu,
            "qemu_nice": args.qemu_nice if args.qemu else None,
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stacks": {},
    }
    nodes_by_stack: dict[str, list[dict[str, Any]]] = {}
    runs: dict[str, list[tuple[dict[str, Any], list[dict[str, Any]]]]] = {}
    names = args.stacks.split(",")
    try:
        for rnd in range(args.repeat):
            # Alternate the order (A B, B A, …) so a load change on this shared machine
            # does not always land on the same stack.
            for name in names if rnd % 2 == 0 else names[::-1]:
                if "skipped" in results["stacks"].get(name, {}):
                    continue
                lab = VethLab(prefix=args.prefix, client_ip=None, prefixlen=opts.site.prefixlen)
                stack = build_stack(name, lab, opts, work / f"r{rnd}", args)
                opts_s = opts if name == "bootd" else replace(opts, restart_at=None)
                try:
                    raw = run_storm(lab, stack, opts_s, work)
                except StackUnavailable as exc:
                    print(f"{name}: skipped: {exc}", file=sys.stderr)
                    results["stacks"][name] = {"skipped": str(exc)}
                    continue
                entry = {
                    "summary": report.summarize(raw),
                    "server": raw["server"],
                    "client": raw["client"],
                    "events": raw["events"],
                    "qemu": raw["qemu"],
                }
                runs.setdefault(name, []).append((entry, raw["nodes"]))
                t = entry["summary"]["time_to_last_boot"]
                print(f"{name} round {rnd + 1}: time to last boot {t} s", file=sys.stderr)
        for name, got in runs.items():
            # The median run by time to last boot (a run with failed nodes counts as slowest).
            ordered = sorted(got, key=lambda e: e[0]["summary"]["time_to_last_boot"] or 1e9)
            entry, nodes = ordered[(len(ordered) - 1) // 2]
            entry["rounds"] = [e[0]["summary"]["time_to_last_boot"] for e in got]
            results["stacks"][name] = entry
            nodes_by_stack[name] = nodes
    finally:
        if args.keep:
            print(f"scratch dir kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    b = results["stacks"].get("bootd", {}).get("summary", {}).get("time_to_last_boot")
    a = results["stacks"].get("anchor", {}).get("summary", {}).get("time_to_last_boot")
    results["ratio"] = round(b / a, 3) if a and b else None
    results["_nodes"] = nodes_by_stack
    return results


def write(results: dict[str, Any], args: argparse.Namespace) -> Path:
    """JSON (with per-node records), markdown and PNG into the results dir."""
    stem = args.name or "storm" + (f"-loss{args.loss:g}" if args.loss else "") + (
        "-restart" if args.restart_mid_storm else ""
    )
    args.out.mkdir(parents=True, exist_ok=True)
    nodes = results.pop("_nodes")
    (args.out / f"{stem}.json").write_text(json.dumps({**results, "node_records": nodes}, indent=1))
    (args.out / f"{stem}.md").write_text(report.markdown(results))
    if nodes:
        report.plot(results, nodes, args.out / f"{stem}.png")
    return Path(args.out) / f"{stem}.md"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    md = write(results, args)
    print(md.read_text())
    if results["ratio"] is not None:
        print(f"time-to-last-boot bootd/anchor = {results['ratio']:.2f}")
    ok = all(
        r.get("summary", {}).get("failed_nodes", 1) == 0
        for r in results["stacks"].values()
        if "skipped" not in r
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
