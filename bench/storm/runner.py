"""Runs one storm against one stack in a fresh lab; returns the raw results and events."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.lab.netns import VethLab
from bench.storm.machines import QemuNodes
from bench.storm.node import STAGES
from bench.storm.stack import Sampler, StormSite

REPO = Path(__file__).resolve().parents[2]


class Stack(Protocol):
    """A server stack the storm boots against."""

    name: str

    def start(self, macs: list[str], iface: str, machines: list[str]) -> None: ...
    def stop(self) -> None: ...
    def pids(self) -> dict[str, list[int]]: ...


@dataclass
class StormOptions:
    """What one storm run does."""

    nodes: int = 640
    spread: float = 0.0
    uefi_fraction: float = 0.5
    loss: float = 0.0
    restart_at: tuple[str, float] | None = None  # (stage, fraction of nodes done)
    client_procs: int = 1
    timeout: float = 300.0
    seed: int = 7
    show_progress: bool = True
    qemu: int = 0
    qemu_timeout: float = 180.0
    # Niceness of the QEMU processes. Under TCG each machine keeps a core busy; real
    # nodes would bring their own CPUs, so on this 2-core box they yield to the servers
    # (both stacks alike) instead of taking their cores.
    qemu_nice: int = 10
    images: Path = Path()
    site: StormSite = field(default_factory=StormSite)


def macs_for(nodes: int) -> list[str]:
    """The MACs the client processes will use (see clients.node_specs)."""
    return [
        "02:00:00:" + ":".join(f"{b:02x}" for b in i.to_bytes(3, "big"))
        for i in range(1, nodes + 1)
    ]


def add_loss(lab: VethLab, pct: float) -> str:
    """Random loss on both ends of the veth: tc netem, or nftables where netem is not built.

    Returns how the loss was applied (for the results).
    """
    ends = ((lab.srv, lab.srv_if), (lab.cli, lab.cli_if))
    netem = [
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                ns,
                "tc",
                "qdisc",
                "add",
                "dev",
                dev,
                "root",
                "netem",
                "loss",
                f"{pct}%",
                "limit",
                "100000",
            ],
            capture_output=True,
        ).returncode
        for ns, dev in ends
    ]
    if netem == [0, 0]:
        return f"tc netem loss {pct}% on both veth ends"
    # This kernel lacks sch_netem: drop at each end's ingress hook instead, before the IP
    # stack sees the packet, which is what loss on the wire looks like to both sides.
    for ns, dev in ends:
        subprocess.run(
            ["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"],
            capture_output=True,
        )
        rules = (
            "add table netdev bstloss\n"
            f'add chain netdev bstloss in {{ type filter hook ingress device "{dev}" priority 0 ; }}\n'
            f"add rule netdev bstloss in numgen random mod 100000 lt {round(pct * 1000)} counter drop\n"
        )
        subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "-f", "-"],
            input=rules.encode(), check=True, capture_output=True,
        )  # fmt: skip
    return f"nftables ingress drop {pct}% on both veth ends (no sch_netem in this kernel)"


def loss_counts(lab: VethLab) -> int:
    """Packets the nftables loss rules dropped (0 with netem, which has no such counter here)."""
    total = 0
    for ns in (lab.srv, lab.cli):
        r = subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "list", "table", "netdev", "bstloss"],
            capture_output=True, text=True,
        )  # fmt: skip
        for word, nxt in zip(r.stdout.split(), r.stdout.split()[1:], strict=False):
            if word == "packets":
                total += int(nxt)
    return total


class Progress:
    """Latest progress line of each client process, summed and drawn in place."""

    def __init__(self, nodes: int, name: str, show: bool) -> None:
        self.nodes = nodes
        self.name = name
        self.show = show
        self.latest: dict[int, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def update(self, proc: int, line: dict[str, Any]) -> None:
        with self.lock:
            self.latest[proc] = line
        if self.show:
            self.draw()

    def done(self) -> Counter[str]:
        c: Counter[str] = Counter()
        with self.lock:
            for line in self.latest.values():
                c.update(line.get("done", {}))
        return c

    def draw(self) -> None:
        with self.lock:
            t = max((x.get("t", 0.0) for x in self.latest.values()), default=0.0)
            done: Counter[str] = Counter()
            failed: Counter[str] = Counter()
            for line in self.latest.values():
                done.update(line.get("done", {}))
                failed.update(line.get("failed", {}))
        cells = " ".join(f"{s}:{done.get(s, 0)}" for s in STAGES)
        nf = sum(failed.values())
        sys.stderr.write(f"\r\x1b[K{self.name} {t:6.1f}s {cells} failed:{nf}")
        sys.stderr.flush()


def run_storm(lab: VethLab, stack: Stack, opts: StormOptions, workdir: Path) -> dict[str, Any]:
    """Bring up the lab, start the stack, boot every node, tear down; raw results."""
    events: list[str] = []
    lab.up()
    try:
        if opts.loss:
            events.append(add_loss(lab, opts.loss))
        qemu = (
            QemuNodes(lab, opts.qemu, workdir / f"qemu-{stack.name}", opts.qemu_nice)
            if opts.qemu
            else None
        )
        iface = lab.srv_if
        if qemu is not None:
            iface = qemu.plug(opts.site.server_ip, opts.site.prefixlen)
            qemu.probe(opts.images)
        stack.start(macs_for(opts.nodes), iface, qemu.macs if qemu else [])
        try:
            raw = _storm(lab, stack, opts, workdir, events, qemu)
        finally:
            if qemu is not None:
                qemu.stop()
            stack.stop()
        if opts.loss:
            events.append(f"{loss_counts(lab)} packets dropped by the loss rules")
        return raw
    finally:
        lab.down()


def _storm(
    lab: VethLab,
    stack: Stack,
    opts: StormOptions,
    workdir: Path,
    events: list[str],
    qemu: QemuNodes | None,
) -> dict[str, Any]:
    t0 = time.time() + 0.5
    sampler = Sampler(stack.pids(), t0)
    sampler.start()
    progress = Progress(opts.nodes, stack.name, opts.show_progress)
    per = -(-opts.nodes // opts.client_procs)
    procs: list[tuple[subprocess.Popen[str], Path]] = []
    for k in range(opts.client_procs):
        first = 1 + k * per
        count = min(per, opts.nodes - k * per)
        out = workdir / f"clients-{stack.name}-{k}.json"
        argv = lab.in_cli(
            sys.executable, "-m", "bench.storm.clients", "--ifname", lab.cli_if,
            "--nodes", str(count), "--first", str(first), "--spread", str(opts.spread),
            "--uefi-fraction", str(opts.uefi_fraction), "--seed", str(opts.seed + k),
            "--t0", repr(t0), "--out", str(out),
        )  # fmt: skip
        p = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=open(out.with_suffix(".err"), "w"),  # noqa: SIM115
            text=True,
            cwd=REPO,
        )
        procs.append((p, out))
    readers = [
        threading.Thread(target=_read_progress, args=(p, k, progress), daemon=True)
        for k, (p, _) in enumerate(procs)
    ]
    for r in readers:
        r.start()
    if qemu is not None:
        time.sleep(max(0.0, t0 - time.time()))
        qemu.power_on()
        events.append(f"{qemu.count} QEMU machines powered on ({qemu.accel}: {qemu.accel_reason})")
    restarted = False
    deadline = time.monotonic() + opts.timeout
    while any(p.poll() is None for p, _ in procs):
        if time.monotonic() > deadline:
            for p, _ in procs:
                p.kill()
            events.append(f"storm timed out after {opts.timeout:.0f}s: clients killed")
            break
        if opts.restart_at and not restarted:
            stage, frac = opts.restart_at
            if progress.done().get(stage, 0) >= frac * opts.nodes:
                restarted = True
                at = time.time() - t0
                downtime = stack.restart()  # type: ignore[attr-defined]
                sampler.set_pids(stack.name, stack.pids()[stack.name])
                events.append(
                    f"{stack.name} restarted at {at:.1f}s ({frac:.0%} of nodes past {stage}), "
                    f"down {downtime:.2f}s"
                )
        time.sleep(0.05)
    for r in readers:
        r.join(5)
    if opts.show_progress:
        sys.stderr.write("\n")
    machines = qemu.wait(max(10.0, opts.qemu_timeout - (time.time() - t0))) if qemu else []
    stats = sampler.stop()
    nodes: list[dict[str, Any]] = []
    client: dict[str, float] = {}
    errors: list[str] = []
    for p, out in procs:
        p.wait()
        if not out.exists():
            errors.append(
                f"client process exited {p.returncode}: {out.with_suffix('.err').read_text()[-2000:]}"
            )
            continue
        doc = json.loads(out.read_text())
        nodes += doc["nodes"]
        for k, v in doc["client"].items():
            if isinstance(v, (int, float)):
                client[k] = client.get(k, 0) + v
    if errors:
        raise RuntimeError("; ".join(errors))
    return {
        "nodes": nodes,
        "client": dict(client),
        "server": {
            name: {"cpu_s": round(s.cpu_s, 2), "peak_rss_kb": s.peak_rss_kb}
            for name, s in stats.items()
        },
        "server_samples": {name: s.samples for name, s in stats.items()},
        "events": events,
        "qemu": machines,
    }


def _read_progress(p: subprocess.Popen[str], k: int, progress: Progress) -> None:
    assert p.stdout is not None
    for line in p.stdout:
        try:
            progress.update(k, json.loads(line))
        except ValueError:
            continue


def scratch_dir(prefix: str = "bst-storm-") -> Path:
    """A temp dir for one run's configs, logs and client outputs."""
    return Path(tempfile.mkdtemp(prefix=prefix))
