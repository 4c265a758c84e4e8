"""The virtual-node process: boots N nodes on one interface, streams progress, writes results.

Run inside the client namespace: `python -m bench.storm.clients --ifname bst1c --nodes 640 ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import resource
import sys
import time
from collections import Counter
from pathlib import Path

from bench.storm.addresses import AddressBook
from bench.storm.dhcpclient import DhcpPort
from bench.storm.node import Env, NodeBoot, NodeRecord, NodeSpec, Policy


def node_specs(
    nodes: int, first: int, spread: float, uefi_fraction: float, seed: int
) -> list[NodeSpec]:
    """MACs 02:00:00:xx:xx:xx, a deterministic BIOS/UEFI mix, power-on spread evenly."""
    rng = random.Random(seed)
    specs = []
    for i in range(first, first + nodes):
        mac = "02:00:00:" + ":".join(f"{b:02x}" for b in i.to_bytes(3, "big"))
        arch = 7 if rng.random() < uefi_fraction else 0
        specs.append(NodeSpec(mac, arch, rng.uniform(0.0, spread) if spread > 0 else 0.0))
    return specs


async def storm(args: argparse.Namespace) -> dict[str, object]:
    """Boot every node concurrently; return the results document."""
    specs = node_specs(args.nodes, args.first, args.spread, args.uefi_fraction, args.seed)
    done: Counter[str] = Counter()
    failed: Counter[str] = Counter()

    def on_stage(stage: str, event: str) -> None:
        (done if event == "end" else failed)[stage] += 1

    dhcp = DhcpPort(args.ifname)
    dhcp.open()
    env = Env(dhcp, AddressBook(args.ifname), args.t0, Policy(), on_stage=on_stage)

    async def progress() -> None:
        while True:
            line = {"t": round(time.time() - args.t0, 2), "done": done, "failed": failed}
            print(json.dumps(line), flush=True)
            await asyncio.sleep(args.progress_interval)

    ticker = asyncio.create_task(progress())
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    # The storm allocates few long-lived objects; the cyclic GC would only add pauses.
    gc.disable()
    records: list[NodeRecord] = await asyncio.gather(*(NodeBoot(s, env).run() for s in specs))
    gc.enable()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    ticker.cancel()
    dhcp.close()
    print(json.dumps({"t": round(time.time() - args.t0, 2), "done": done, "failed": failed}))
    return {
        "nodes": [r.as_json() for r in records],
        "client": {
            "cpu_user": cpu1.ru_utime - cpu0.ru_utime,
            "cpu_sys": cpu1.ru_stime - cpu0.ru_stime,
            "maxrss_kb": cpu1.ru_maxrss,
            "dhcp_stray": dhcp.stray,
            "dhcp_malformed": dhcp.malformed,
            "dhcp_send_errors": dhcp.send_errors,
            "address_batches": env.addresses.batches,
            "address_errors": env.addresses.errors,
        },
    }


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ifname", required=True)
    p.add_argument("--nodes", type=int, default=640)
    p.add_argument("--first", type=int, default=1, help="index of the first MAC")
    p.add_argument("--spread", type=float, default=0.0, help="power-on spread in seconds")
    p.add_argument("--uefi-fraction", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--t0", type=float, default=0.0, help="storm start (epoch); default now")
    p.add_argument("--progress-interval", type=float, default=0.5)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if not args.t0:
        args.t0 = time.time()
    profile = os.environ.get("BST_STORM_PROFILE")
    if profile:
        # Harness tuning only: where the clients spend their CPU.
        import cProfile

        prof = cProfile.Profile()
        result = prof.runcall(asyncio.run, storm(args))
        prof.dump_stats(profile)
    else:
        result = asyncio.run(storm(args))
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
