"""python -m bench.dhcp [--rates 2000,4000,…] [--period 5]: writes bench/results/dhcp.json."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.lab.netns import VethLab, can_netns
from tests.dhcp_lab import POOL, LabBootd, dhcp_config, leases_in_db, perfdhcp

RESULTS = Path(__file__).resolve().parent.parent / "results" / "dhcp.json"
PREFIX = "bdh9"


class Peer:
    """A server process in the lab's server namespace."""

    def __init__(self, name: str, start: Callable[[Path], subprocess.Popen[bytes] | LabBootd]):
        self.name = name
        self._start = start
        self._proc: subprocess.Popen[bytes] | LabBootd | None = None

    def up(self, tmp: Path) -> None:
        self._proc = self._start(tmp)
        time.sleep(1.0)

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
    return sum(drops) / max(1, sent[0])


def run(rates: list[int], period: int, clients: int) -> dict[str, Any]:
    """Every peer through both scenarios in one lab."""
    out: dict[str, Any] = {"rates_tried": rates, "period_s": period, "clients": clients}
    with VethLab(PREFIX) as lab:
        for peer in peers(lab):
            res: dict[str, Any] = {}
            tmp = Path(tempfile.mkdtemp(prefix=f"bench-dhcp-{peer.name}-"))
            try:
                peer.up(tmp)
                r = perfdhcp(lab, "-l", lab.cli_if, "--scenario", "avalanche", "-R", "640")
                res["avalanche"] = {
                    k: r.get(k) for k in ("seconds", "provisioned", "resent", "non_unique")
                }
                if peer.name == "bootd":
                    ips = [ip for _, ip in leases_in_db(dhcp_config(tmp, lab))]
                    res["avalanche"]["db_leases"] = len(ips)
                    res["avalanche"]["db_unique"] = len(set(ips))
                peer.down()
                best: dict[str, Any] = {}
                for rate in rates:
                    shutil.rmtree(tmp, ignore_errors=True)
                    tmp.mkdir()
                    peer.up(tmp)
                    r = perfdhcp(
                        lab, "-l", lab.cli_if, "-r", str(rate), "-R", str(clients), "-p", str(period),
                        timeout=period + 60,
                    )  # fmt: skip
                    peer.down()
                    step = {"offered": rate, "rate": r.get("rate", 0.0), "loss": round(loss(r), 4)}
                    res.setdefault("sustained_steps", []).append(step)
                    if step["loss"] >= 0.01:
                        break
                    best = step
                res["sustained"] = best
            finally:
                peer.down()
                shutil.rmtree(tmp, ignore_errors=True)
            out[peer.name] = res
            print(f"{peer.name}: {json.dumps(res)}", flush=True)
    return out


def table(out: dict[str, Any]) -> str:
    """The numbers side by side, with bootd's ratios."""
    names = [n for n in ("bootd", "dnsmasq", "kea") if n in out]
    lines = [f"{'':28}" + "".join(f"{n:>12}" for n in names)]

    def row(label: str, get: Callable[[dict[str, Any]], Any]) -> None:
        vals = [get(out[n]) for n in names]
        lines.append(f"{label:28}" + "".join(f"{'-' if v is None else v:>12}" for v in vals))

    row("avalanche 640: seconds", lambda r: r["avalanche"].get("seconds"))
    row("avalanche 640: resends", lambda r: r["avalanche"].get("resent"))
    row("avalanche 640: provisioned", lambda r: r["avalanche"].get("provisioned"))
    row("sustained: leases/s (<1%)", lambda r: round(r["sustained"].get("rate", 0)))
    b = out["bootd"]
    for peer in names[1:]:
        p = out[peer]
        t = (b["avalanche"].get("seconds") or 0) / max(1e-9, p["avalanche"].get("seconds") or 1e-9)
        s = (b["sustained"].get("rate") or 0) / max(1e-9, p["sustained"].get("rate") or 1e-9)
        lines.append(f"bootd/{peer}: avalanche time x{t:.2f}, sustained rate x{s:.2f}")
    return "\n".join(lines)


def main() -> None:
    """Run, print the table, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rates", default="1000,2000,4000,6000,8000,10000,12000")
    ap.add_argument("--period", type=int, default=5)
    ap.add_argument("--clients", type=int, default=30000)
    args = ap.parse_args()
    reason = can_netns()
    if reason:
        raise SystemExit(f"bench.dhcp: {reason}")
    out = run([int(x) for x in args.rates.split(",")], args.period, args.clients)
    out["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    print(table(out))


if __name__ == "__main__":
    main()
