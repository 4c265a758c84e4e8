"""The client side: N nodes, each from its own 127.x address, fetch the three NoCloud files.

Like cloud-init's read_seeded (requests without a session), every fetch is a
new TCP connection; a node's three fetches run one after another, and all
nodes start together. The client is storm.c, a bare epoll loop, so that it is
the cheap side of the measurement: a Python asyncio client was measured here
to cap nginx at ~3,500 requests/s, i.e. it measured itself.
"""

from __future__ import annotations

import errno
import shutil
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DOCS = ("meta-data", "user-data", "vendor-data")
# A fetch that has not finished after this long counts as an error.
TIMEOUT = 30.0


@dataclass
class StormResult:
    """Latencies (seconds) of every fetch and whole-node seeds, and what went wrong."""

    latencies: list[float] = field(default_factory=list)
    per_node: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall: float = 0.0

    def summary(self) -> dict[str, float | int]:
        """p50/p95/p99/max in milliseconds, request count, errors, wall time."""
        lat = sorted(self.latencies)
        nodes = sorted(self.per_node)

        def pct(xs: list[float], p: float) -> float:
            if not xs:
                return float("nan")
            return round(xs[min(len(xs) - 1, int(p * len(xs)))] * 1000, 2)

        return {
            "requests": len(lat),
            "errors": len(self.errors),
            "p50_ms": pct(lat, 0.50),
            "p95_ms": pct(lat, 0.95),
            "p99_ms": pct(lat, 0.99),
            "max_ms": pct(lat, 1.0),
            "mean_ms": round(statistics.fmean(lat) * 1000, 2) if lat else float("nan"),
            "node_p99_ms": pct(nodes, 0.99),
            "wall_s": round(self.wall, 3),
        }


def fnv1a64(data: bytes) -> str:
    """The body digest storm.c prints (FNV-1a, 64 bit), to check bodies without shipping them."""
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def build_client(workdir: Path) -> Path:
    """Compile storm.c with the system C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("bench.cloudinit needs a C compiler (apt-get install gcc) for its client")
    out = workdir / "storm"
    subprocess.run(
        [cc, "-O2", "-o", str(out), str(Path(__file__).with_name("storm.c"))], check=True
    )
    return out


def storm(
    client: Path,
    host: str,
    port: int,
    nodes: list[str],
    prefix: str,
    expected: Callable[[int, str], str],
    spread_ms: float = 0.0,
) -> StormResult:
    """Run the C client once: every node fetches its three documents; bodies checked by digest.

    spread_ms=0 starts every node at the same moment; otherwise starts are spread evenly.
    """
    ipfile = client.with_name("ips.txt")
    ipfile.write_text("\n".join(nodes) + "\n")
    r = subprocess.run(
        [str(client), host, str(port), prefix, str(ipfile), str(spread_ms)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 4,
    )
    res = StormResult()
    node_total: dict[int, float] = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if parts[0] == "wall":
            res.wall = int(parts[1]) / 1e6
            continue
        i, doc, status, usec, _, digest = (
            int(parts[0]),
            parts[1],
            int(parts[2]),
            int(parts[3]),
            parts[4],
            parts[5],
        )
        lat = usec / 1e6
        node_total[i] = node_total.get(i, 0.0) + lat
        if status < 0:
            res.errors.append(f"{nodes[i]} {doc}: {errno.errorcode.get(-status, status)}")
            continue
        res.latencies.append(lat)
        if status != 200:
            res.errors.append(f"{nodes[i]} {doc}: HTTP {status}")
        elif digest != expected(i, doc):
            res.errors.append(f"{nodes[i]} {doc}: body differs from this node's document")
    if r.returncode != 0 or r.stderr.strip():
        res.errors.append(f"client: exit {r.returncode} {r.stderr.strip()[:200]}")
    missing = len(nodes) * len(DOCS) - len(res.latencies) - len(res.errors)
    if missing > 0:
        res.errors.append(f"{missing} fetches never finished")
    res.per_node = list(node_total.values())
    return res
