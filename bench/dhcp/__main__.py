"""python -m bench.dhcp [--start-rate 500] [--period 5] [--only bootd,kea]: writes bench/results/dhcp.json.

Every server runs through both scenarios once per `--rmem-default` value (the
system's, then 4 MiB): perfdhcp's one socket takes its receive buffer from that
global default, and at the default it drops replies a server sends in bursts.
Socket drops are counted in both namespaces, so each loss is put on its side.
Each of those runs in two CPU placements (`--placement`): shared (servers and
perfdhcp on every CPU) and pinned (the server on the last CPU, perfdhcp on the
others, as if the clients were other machines). Shared, perfdhcp's threads and the server take turns on the same cores;
pinned, bootd's writer process shares the server's one core with its event loop.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.lab.netns import VethLab, can_netns
from bench.lab.procs import cpu_seconds
from tests.dhcp_lab import POOL, LabBootd, dhcp_config, leases_in_db, perfdhcp

RESULTS = Path(__file__).resolve().parent.parent / "results" / "dhcp.json"
PREFIX = "bdh9"


class PinnedLab(VethLab):
    """The lab with the server under test on one CPU and perfdhcp on the others.

    Clients are other machines in a real network; on this bench's two cores perfdhcp's
    two threads and the server would otherwise take turns on both, and what gets measured
    is partly the scheduler (perfdhcp's receiver thread descheduled while replies pile
    up, the server descheduled while requests do). Every server gets the same CPU;
    bootd's writer process and sendfile workers inherit it, so bootd has one core too.
    """

    def __init__(self, prefix: str, server_cpus: str, client_cpus: str) -> None:
        super().__init__(prefix)
        self.server_cpus = server_cpus
        self.client_cpus = client_cpus

    def in_srv(self, *cmd: str) -> list[str]:
        return super().in_srv("taskset", "-c", self.server_cpus, *cmd)

    def in_cli(self, *cmd: str) -> list[str]:
        return super().in_cli("taskset", "-c", self.client_cpus, *cmd)


def make_lab(pin: bool) -> VethLab:
    """PinnedLab when asked and there are CPUs to split (server on the last one)."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2 or shutil.which("taskset") is None:
        return VethLab(PREFIX)
    return PinnedLab(PREFIX, str(cpus[-1]), ",".join(str(c) for c in cpus[:-1]))


class Peer:
    """A server process in the lab's server namespace."""

    def __init__(self, name: str, start: Callable[[Path], subprocess.Popen[bytes] | LabBootd]):
        self.name = name
        self._start = start
        self._proc: subprocess.Popen[bytes] | LabBootd | None = None

    def up(self, tmp: Path) -> None:
        self._proc = self._start(tmp)
        time.sleep(1.0)

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and its live child processes (bootd's store
        writer): comparable across servers where a rate depends on the machine's load."""
        p = self._proc
        if p is None:
            return 0.0
        pid = p.proc.pid if isinstance(p, LabBootd) else p.pid
        return cpu_seconds(pid)

    def down(self) -> None:
        p = self._proc
        if isinstance(p, LabBootd):
            p.stop()
        elif p is not None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._proc = None


def peers(lab: VethLab) -> list[Peer]:
    """bootd, dnsmasq (--no-ping) and kea-dhcp4 (memfile, persist) as in shared/PEERS.md."""
    lo, hi = POOL.split("-")

    def bootd(tmp: Path) -> LabBootd:
        b = LabBootd(tmp, lab, dhcp_config(tmp, lab))
        b.wait_ready()
        return b

    def dnsmasq(tmp: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            lab.in_srv(
                "dnsmasq", "--keep-in-foreground", "--user=root", "--port=0",
                f"--interface={lab.srv_if}", "--bind-interfaces",
                f"--dhcp-range={lo},{hi},255.255.0.0,1h", "--dhcp-lease-max=100000",
                "--no-ping", f"--dhcp-leasefile={tmp}/dnsmasq.leases", "--conf-file=/dev/null",
                f"--pid-file={tmp}/dnsmasq.pid",
            ),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def kea(tmp: Path) -> subprocess.Popen[bytes]:
        conf = {
            "Dhcp4": {
                "interfaces-config": {"interfaces": [lab.srv_if]},
                "lease-database": {
                    "type": "memfile", "persist": True, "name": f"{tmp}/leases.csv",
                    "lfc-interval": 0,
                },
                "valid-lifetime": 3600,
                "subnet4": [{"id": 1, "subnet": "10.77.0.0/16", "pools": [{"pool": f"{lo} - {hi}"}]}],
                "loggers": [
                    {"name": "kea-dhcp4", "output_options": [{"output": f"{tmp}/kea.log"}],
                     "severity": "WARN"}
                ],
            }
        }  # fmt: skip
        (tmp / "kea.json").write_text(json.dumps(conf))
        Path("/run/kea").mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(
            lab.in_srv("kea-dhcp4", "-c", str(tmp / "kea.json")),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={"KEA_PIDFILE_DIR": str(tmp), "KEA_LOCKFILE_DIR": str(tmp), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )  # fmt: skip

    return [Peer("bootd", bootd), Peer("dnsmasq", dnsmasq), Peer("kea", kea)]


def loss(r: dict[str, Any]) -> float:
    """Fraction of exchanges lost, from perfdhcp's per-exchange drop counters."""
    sent = r.get("sent") or [0]
    drops = r.get("drops") or [0]
    return float(sum(drops)) / max(1, int(sent[0]))


@contextlib.contextmanager
def fresh_server(peer: Peer, lab: VethLab, tmp: Path) -> Iterator[dict[str, int]]:
    """The peer on an empty state dir; the dict gets the socket drops counted meanwhile.

    perfdhcp resends what was lost: replies its own socket could not hold are counted
    in the client namespace, requests the server could not hold in the server's, so
    each loss can be put on one side or the other (kea-dhcp4 reads through a raw
    socket: its own drops are not in these counters).
    """
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    peer.up(tmp)
    drops: dict[str, int] = {}
    try:
        cli0, srv0 = udp_rcvbuf_errors(lab.cli), udp_rcvbuf_errors(lab.srv)
        yield drops
        drops["dropped_at_client"] = udp_rcvbuf_errors(lab.cli) - cli0
        drops["dropped_at_server"] = udp_rcvbuf_errors(lab.srv) - srv0
    finally:
        peer.down()


def sustained(
    peer: Peer, lab: VethLab, tmp: Path, rate: int, period: int, clients: int
) -> dict[str, Any]:
    """One perfdhcp -r run against a fresh server (empty lease store)."""
    with fresh_server(peer, lab, tmp) as drops:
        cpu0 = peer.cpu_seconds()
        r = perfdhcp(
            lab, "-l", lab.cli_if, "-r", str(rate), "-R", str(clients), "-p", str(period),
            "-W", "2000000", timeout=period + 60,
        )  # fmt: skip
        cpu = peer.cpu_seconds() - cpu0
    sent, drops_per_exchange = r.get("sent") or [0, 0], r.get("drops") or [0, 0]
    acked = sent[-1] - drops_per_exchange[-1] if len(sent) > 1 else 0
    # perfdhcp's own "Rate" divides by the run plus the -W wait; ACKs per second of run is fairer.
    return {
        "offered": rate,
        "rate": round(acked / period, 1),
        "perfdhcp_rate": r.get("rate", 0.0),
        "loss": round(loss(r), 4),
        # Server CPU per lease ACKed (with the store writer, for bootd): what a rate
        # costs, less at the mercy of the machine's other tenants than the rate itself.
        "cpu_us_per_lease": round(1e6 * cpu / acked) if acked else None,
        **drops,
    }


def search(peer: Peer, lab: VethLab, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Double the offered rate until loss reaches 1 %, then bisect between the last clean
    rate and the first lossy one `args.bisect` times; the best clean step wins.

    Servers that pass and fail the same doubling steps would otherwise tie at the last
    clean step whatever their real ceilings; each bisection halves the uncertainty.
    """
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] = {}
    rate, bad = args.start_rate, None
    while rate <= args.max_rate:
        step = sustained(peer, lab, tmp, rate, args.period, args.clients)
        steps.append(step)
        if step["loss"] >= 0.01:
            bad = rate
            break
        best = max(best, step, key=lambda s: s.get("rate", 0)) if best else step
        rate *= 2
    if bad is not None and best:
        lo, hi = best["offered"], bad
        for _ in range(args.bisect):
            mid = (lo + hi) // 2
            if mid - lo < 50:
                break
            step = sustained(peer, lab, tmp, mid, args.period, args.clients)
            steps.append(step)
            if step["loss"] < 0.01:
                lo = mid
                if step["rate"] > best["rate"]:
                    best = step
            else:
                hi = mid
    return {"steps": steps, "best": best}


def udp_rcvbuf_errors(ns: str) -> int:
    """UDP datagrams the kernel dropped in a namespace because a socket's buffer was full."""
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "nstat", "-az", "UdpRcvbufErrors"],
        capture_output=True, text=True,
    ).stdout  # fmt: skip
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "UdpRcvbufErrors":
            return int(parts[1])
    return 0


def avalanche(peer: Peer, lab: VethLab, tmp: Path) -> dict[str, Any]:
    """One 640-client avalanche against a fresh server, with whose socket dropped what."""
    with fresh_server(peer, lab, tmp) as drops:
        r = perfdhcp(lab, "-l", lab.cli_if, "--scenario", "avalanche", "-R", "640")
        res = {k: r.get(k) for k in ("seconds", "provisioned", "resent", "non_unique")}
        if peer.name == "bootd":
            ips = [ip for _, ip in leases_in_db(dhcp_config(tmp, lab))]
            res["db_leases"] = len(ips)
            res["db_unique"] = len(set(ips))
    return {**res, **drops}


RMEM_DEFAULT = Path("/proc/sys/net/core/rmem_default")


@contextlib.contextmanager
def socket_buffers(size: int) -> Iterator[int]:
    """Raise net.core.rmem_default for the run, and put it back afterwards.

    perfdhcp takes its receive buffer from this default (208 KiB here) and has no
    option for it, yet one socket stands in for thousands of clients: replies that
    a network would deliver to 640 NICs queue on it, and what does not fit is lost
    and counted as the server's loss. The sysctl is global (a namespace cannot set
    it), so it is raised for every server alike and always restored.
    """
    old = int(RMEM_DEFAULT.read_text())
    size = min(size, int(RMEM_DEFAULT.with_name("rmem_max").read_text()))
    if size <= old:
        yield old
        return
    try:
        RMEM_DEFAULT.write_text(f"{size}\n")
    except OSError as exc:  # not root: run with what the system has, and say so
        print(f"bench.dhcp: cannot raise rmem_default ({exc}); using {old}", file=sys.stderr)
        yield old
        return
    try:
        yield size
    finally:
        RMEM_DEFAULT.write_text(f"{old}\n")


def run(args: argparse.Namespace, pin: bool) -> dict[str, Any]:
    """Every peer through both scenarios in one lab."""
    out: dict[str, Any] = {"period_s": args.period, "clients": args.clients}
    with make_lab(pin) as lab:
        out["cpus"] = (
            {"server": lab.server_cpus, "perfdhcp": lab.client_cpus}
            if isinstance(lab, PinnedLab)
            else "shared"
        )
        for peer in peers(lab):
            if args.only and peer.name not in args.only.split(","):
                continue
            res: dict[str, Any] = {}
            tmp = Path(tempfile.mkdtemp(prefix=f"bench-dhcp-{peer.name}-"))
            try:
                runs = [avalanche(peer, lab, tmp) for _ in range(args.avalanche_runs)]
                # The median run by time; every run is kept, the distribution is bimodal.
                res["avalanche"] = dict(
                    sorted(runs, key=lambda r: r["seconds"] or 0)[len(runs) // 2]
                )
                res["avalanche_runs"] = runs
                found = search(peer, lab, tmp, args)
                res["sustained_steps"] = found["steps"]
                res["sustained"] = found["best"]
            finally:
                peer.down()
                shutil.rmtree(tmp, ignore_errors=True)
            out[peer.name] = res
            print(f"{peer.name}: {json.dumps(res)}", flush=True)
    return out


def table(out: dict[str, Any]) -> str:
    """The numbers side by side, with bootd's ratios."""
    names = [n for n in ("bootd", "dnsmasq", "kea") if n in out]
    if "bootd" not in names:
        return json.dumps(out, indent=2)
    lines = [f"{'':28}" + "".join(f"{n:>12}" for n in names)]

    def row(label: str, get: Callable[[dict[str, Any]], Any]) -> None:
        vals = [get(out[n]) for n in names]
        lines.append(f"{label:28}" + "".join(f"{'-' if v is None else v:>12}" for v in vals))

    row("avalanche 640: seconds", lambda r: r["avalanche"].get("seconds"))
    row("avalanche 640: resends", lambda r: r["avalanche"].get("resent"))
    row("avalanche 640: provisioned", lambda r: r["avalanche"].get("provisioned"))
    row("  drops at client socket", lambda r: r["avalanche"].get("dropped_at_client"))
    row("  drops at server (UDP) socket", lambda r: r["avalanche"].get("dropped_at_server"))
    row("sustained: leases/s (<1%)", lambda r: round(r["sustained"].get("rate", 0)))
    row("  server CPU, us per lease", lambda r: r["sustained"].get("cpu_us_per_lease"))
    b = out["bootd"]
    for n in names:
        runs = " ".join(f"{x['seconds']:.2f} s/{x['resent']:.0f}" for x in out[n]["avalanche_runs"])
        lines.append(f"avalanche runs, {n}: {runs} (seconds/resends)")

    def ratio(mine: float | None, theirs: float | None) -> str:
        return f"x{mine / theirs:.2f}" if mine and theirs else "n/a"

    for peer in names[1:]:
        p = out[peer]
        t = ratio(b["avalanche"].get("seconds"), p["avalanche"].get("seconds"))
        r = ratio(b["sustained"].get("rate"), p["sustained"].get("rate"))
        lines.append(f"bootd/{peer}: avalanche time {t}, sustained rate {r}")
    return "\n".join(lines)


def main() -> None:
    """Run, print the table, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--start-rate", type=int, default=500, help="first sustained rate tried")
    ap.add_argument("--max-rate", type=int, default=32000)
    ap.add_argument("--period", type=int, default=5, help="seconds per sustained run")
    ap.add_argument("--only", default="", help="comma-separated subset: bootd,dnsmasq,kea")
    ap.add_argument("--clients", type=int, default=30000)
    ap.add_argument(
        "--rmem-default",
        default=f"0,{4 << 20}",
        help="net.core.rmem_default values to run with, comma-separated; 0 = as the system "
        "has it. Each value runs every server through both scenarios.",
    )
    ap.add_argument(
        "--placement",
        default="shared,pinned",
        help="CPU placements to run, comma-separated: shared (servers and perfdhcp on "
        "every CPU) and pinned (the server on the last CPU, perfdhcp on the others)",
    )
    ap.add_argument(
        "--bisect",
        type=int,
        default=3,
        help="bisections between the last clean and the first lossy sustained rate",
    )
    ap.add_argument(
        "--avalanche-runs", type=int, default=3, help="avalanches per server (median shown)"
    )
    args = ap.parse_args()
    reason = can_netns()
    if reason:
        raise SystemExit(f"bench.dhcp: {reason}")
    load_before = os.getloadavg()[0]
    configs = []
    for placement in args.placement.split(","):
        if placement not in ("shared", "pinned"):
            raise SystemExit(f"bench.dhcp: unknown placement {placement!r}")
        for size in (int(v) for v in args.rmem_default.split(",")):
            with socket_buffers(size) as rmem:
                out = run(args, placement == "pinned")
            out["rmem_default"] = rmem
            configs.append(out)
    result = {
        "configs": configs,
        # Shared 2-core machine: the load says how much the numbers can be trusted.
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    for out in configs:
        print(
            f"\nnet.core.rmem_default = {out['rmem_default']} (restored afterwards); CPUs: {out['cpus']}"
        )
        print(table(out))
    print(f"\nload average (1 min) before/after: {result['loadavg_1m']}; results in {RESULTS}")


if __name__ == "__main__":
    main()
