"""HTTP bench: bootd vs nginx (sendfile on) on loopback, same files, same run.

1. Image storm: wrk with N connections, each fetching kernel, initrd and rootfs in turn;
   aggregate throughput and server CPU per GB of bootd, nginx and (as the reference for
   what asyncio sendfile can do) stock aiohttp FileResponse; bootd's peak RSS (VmRSS,
   its sendfile workers included).
2. Boot scripts: 10,000 nodes stored, N concurrent connections asking for random nodes;
   wrk's latency percentiles (plus one connection alone, the pure service time).

python -m bench.http [--clients 640] [--seconds 10] [--kernel-mb 8 --initrd-mb 32 --rootfs-mb 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from bench.lab.procs import cpu_seconds, process_tree
from bootd.boot.bootparams import BootParams
from bootd.daemon import all_migrations
from bootd.store.bss import BssStore
from bootd.store.db import Database
from tests.helpers import REPO, BootdProcess, free_port

FILES = ("vmlinuz", "initrd.img", "rootfs.squashfs")

STORM_LUA = """
local paths = {"/images/vmlinuz", "/images/initrd.img", "/images/rootfs.squashfs"}
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", paths[(n % 3) + 1])
end
"""

SCRIPT_LUA = """
math.randomseed(os.time())
request = function()
  local i = math.random(0, %d)
  local mac = string.format("02:00:00:%%02x:%%02x:%%02x", math.floor(i / 65536) %% 256,
                            math.floor(i / 256) %% 256, i %% 256)
  return wrk.format("GET", "/boot/v1/bootscript?mac=" .. mac)
end
"""


def node_mac(i: int) -> str:
    """The bench's MAC for node i (matches SCRIPT_LUA)."""
    return f"02:00:00:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}"


def make_images(root: Path, sizes_mb: dict[str, int]) -> None:
    """Files of the given sizes with non-zero content (so nothing is special-cased)."""
    root.mkdir(parents=True, exist_ok=True)
    block = os.urandom(1 << 20)
    for name, mb in sizes_mb.items():
        with open(root / name, "wb") as f:
            for _ in range(mb):
                f.write(block)


async def seed_nodes(state_dir: Path, count: int) -> None:
    """Store `count` nodes' boot parameters through BssStore (group-committed)."""
    db = Database(state_dir / "bootd.sqlite3")
    db.open(all_migrations())
    store = BssStore(db)
    await asyncio.gather(
        *(
            store.put(
                BootParams(
                    macs=[node_mac(i)],
                    kernel="vmlinuz",
                    initrd="initrd.img",
                    params=f"console=ttyS0 root=live:http://10.0.0.1:8080/images/rootfs.squashfs nid={i}",
                )
            )
            for i in range(count)
        )
    )
    db.close()


class RssSampler(threading.Thread):
    """Peak VmRSS of a process and its children, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kb, self.stop = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and Path(f"/proc/{self.pid}").exists():
            self.peak_kb = max(self.peak_kb, rss_kb(self.pid))
            time.sleep(0.05)


def rss_kb(pid: int) -> int:
    """Resident memory of a server process and its children."""
    total = 0
    for p in process_tree(pid):
        try:
            m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text(), re.M)
        except OSError:
            continue
        total += int(m.group(1)) if m else 0
    return total


_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
_TIME = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def wrk(url: str, lua: str, conns: int, seconds: int, tmp: Path) -> dict[str, Any]:
    """Run wrk; parse throughput, request rate, errors and latency percentiles (ms)."""
    script = tmp / f"wrk-{time.monotonic_ns()}.lua"
    script.write_text(lua)
    threads = min(2, conns)
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{seconds}s", "--latency",
         "--timeout", "30s", "-s", str(script), url],
        capture_output=True, text=True, timeout=seconds + 120,
    ).stdout  # fmt: skip
    res: dict[str, Any] = {"raw": out}
    m = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    res["bytes_per_s"] = float(m.group(1)) * _UNITS[m.group(2).upper()] if m else 0.0
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["requests_per_s"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", out)
    res["socket_errors"] = m.group(1).strip() if m else ""
    for pct in ("50", "90", "99"):
        m = re.search(rf"^\s*{pct}(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        res[f"p{pct}_ms"] = float(m.group(1)) * _TIME[m.group(2)] if m else None
    return res


def histogram_quantile(metrics_text: str, name: str, q: float) -> float | None:
    """Upper bound (ms) of the bucket holding quantile q of a Prometheus histogram."""
    buckets = [
        (float(le), float(v))
        for le, v in re.findall(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', metrics_text, re.M)
    ]
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    for le, count in buckets:
        if count >= q * total:
            return le * 1e3
    return None


def scrape(url: str) -> str:
    return subprocess.run(
        ["curl", "-sf", url + "/metrics"], capture_output=True, text=True, timeout=30
    ).stdout


class Nginx:
    """nginx with sendfile on, serving the same images on 127.0.0.1 (PEERS.md config)."""

    def __init__(self, tmp: Path, images: Path, port: int, scripts: Path) -> None:
        conf = tmp / "nginx.conf"
        user = "user root; " if os.geteuid() == 0 else ""
        conf.write_text(
            f"{user}worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err; "
            "daemon off;\nevents { worker_connections 4096; }\n"
            "http { access_log off; sendfile on; tcp_nopush on; "
            f"client_body_temp_path {tmp}/nginx-body; proxy_temp_path {tmp}/nginx-proxy; "
            f"fastcgi_temp_path {tmp}/nginx-fcgi; uwsgi_temp_path {tmp}/nginx-uwsgi; "
            f"scgi_temp_path {tmp}/nginx-scgi;\n"
            f"  server {{ listen 127.0.0.1:{port}; location /images/ {{ alias {images}/; }}\n"
            # The reference for boot-script latency: each node's script pre-rendered
            # as a static file, picked by the same ?mac= query (as the storm's anchor).
            f"    location = /boot/v1/bootscript {{ root {scripts}; default_type text/plain; "
            "try_files /$arg_mac.ipxe =404; } } }\n"
        )
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp)])
        for _ in range(100):
            try:
                subprocess.run(["curl", "-sf", "-o", "/dev/null", self.url + "/images/vmlinuz"],
                               check=True, timeout=5)  # fmt: skip
                return
            except subprocess.CalledProcessError:
                time.sleep(0.1)
        raise RuntimeError("nginx did not come up: " + (tmp / "nginx.err").read_text())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class FileResponseServer:
    """Stock aiohttp FileResponse on the same files: what bootd's sendfile path should match."""

    def __init__(self, images: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.http.fileresponse", str(images), str(port)], cwd=REPO
        )
        for _ in range(100):
            if subprocess.run(["curl", "-sf", "-o", "/dev/null", self.url + "/images/vmlinuz"],
                              timeout=5).returncode == 0:  # fmt: skip
                return
            time.sleep(0.1)
        raise RuntimeError("the FileResponse reference server did not come up")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def prerender_scripts(bootd_url: str, scripts: Path, count: int) -> None:
    """Node 0's script from bootd, written once per node with that node's MAC (same size)."""
    scripts.mkdir(parents=True, exist_ok=True)
    first = subprocess.run(
        ["curl", "-sf", f"{bootd_url}/boot/v1/bootscript?mac={node_mac(0)}"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    for i in range(count):
        mac = node_mac(i)
        (scripts / f"{mac}.ipxe").write_text(first.replace(node_mac(0), mac))


def start_bootd(tmp: Path, images: Path, state: Path) -> BootdProcess:
    cfg: dict[str, Any] = {
        "address": "127.0.0.1",
        "state_dir": str(state),
        "dhcp": {"enabled": False},
        "tftp": {"enabled": False},
        "http": {"listen": "127.0.0.1", "port": free_port(), "images": str(images)},
        "log": {"level": "warning"},
    }
    path = tmp / "bootd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = BootdProcess(path, cfg)
    proc.wait_ready(timeout=60)
    return proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=640)
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2, help="alternating runs per server")
    ap.add_argument("--kernel-mb", type=int, default=8)
    ap.add_argument("--initrd-mb", type=int, default=32)
    ap.add_argument("--rootfs-mb", type=int, default=64)
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "http.json")
    a = ap.parse_args()
    results: dict[str, Any] = {"clients": a.clients, "seconds": a.seconds, "nodes": a.nodes}
    results["sizes_mb"] = dict(zip(FILES, (a.kernel_mb, a.initrd_mb, a.rootfs_mb), strict=True))
    with tempfile.TemporaryDirectory(prefix="bht-bench-") as d:
        tmp = Path(d)
        images, state = tmp / "images", tmp / "state"
        make_images(images, results["sizes_mb"])
        asyncio.run(seed_nodes(state, a.nodes))
        bootd = start_bootd(tmp, images, state)
        prerender_scripts(bootd.url, tmp / "scripts", a.nodes)
        nginx = Nginx(tmp, images, free_port(), tmp / "scripts")
        ref = FileResponseServer(images, free_port())
        try:
            results["bootd_rss_idle_mb"] = rss_kb(bootd.proc.pid) / 1024
            storms: dict[str, list[dict[str, Any]]] = {"bootd": [], "nginx": [], "aiohttp": []}
            sampler = RssSampler(bootd.proc.pid)
            sampler.start()
            for _ in range(a.rounds):
                for name, url, pid in (
                    ("bootd", bootd.url, bootd.proc.pid),
                    ("nginx", nginx.url, nginx.proc.pid),
                    ("aiohttp", ref.url, ref.proc.pid),
                ):
                    cpu0 = cpu_seconds(pid)
                    run = wrk(url, STORM_LUA, a.clients, a.seconds, tmp)
                    run["cpu_s"] = cpu_seconds(pid) - cpu0
                    storms[name].append(run)
            sampler.stop.set()
            sampler.join()
            results["bootd_rss_peak_mb"] = sampler.peak_kb / 1024
            for name, runs in storms.items():
                results[f"{name}_storm"] = {
                    "gb_per_s": sum(r["bytes_per_s"] for r in runs) / len(runs) / 1e9,
                    "runs_gb_per_s": [round(r["bytes_per_s"] / 1e9, 3) for r in runs],
                    "non_2xx": sum(r["non_2xx"] for r in runs),
                    # Server CPU per GB moved: less sensitive to other load than GB/s.
                    "cpu_s_per_gb": sum(r["cpu_s"] for r in runs)
                    / max(1e-9, sum(r["bytes_per_s"] * a.seconds for r in runs) / 1e9),
                    "socket_errors": [r["socket_errors"] for r in runs],
                }
            # Each bootd run is paired with the nginx run right after it (same machine load).
            results["round_ratios"] = [
                round(b["bytes_per_s"] / n["bytes_per_s"], 3) if n["bytes_per_s"] else 0.0
                for b, n in zip(storms["bootd"], storms["nginx"], strict=True)
            ]
            lua = SCRIPT_LUA % (a.nodes - 1)
            for label, conns in (("script_640", a.clients), ("script_1", 1)):
                results[label] = wrk(bootd.url, lua, conns, a.seconds, tmp)
                results[f"nginx_{label}"] = wrk(nginx.url, lua, conns, a.seconds, tmp)
            text = scrape(bootd.url)
            results["script_inside_p99_ms_le"] = histogram_quantile(
                text, "bootd_bootscript_seconds", 0.99
            )
            results["script_inside_p50_ms_le"] = histogram_quantile(
                text, "bootd_bootscript_seconds", 0.50
            )
            results["bootd_rss_after_mb"] = rss_kb(bootd.proc.pid) / 1024
        finally:
            ref.stop()
            nginx.stop()
            bootd.stop()
    b, n = results["bootd_storm"]["gb_per_s"], results["nginx_storm"]["gb_per_s"]
    results["throughput_ratio"] = b / n if n else 0.0
    f = results["aiohttp_storm"]["gb_per_s"]
    results["vs_fileresponse_ratio"] = b / f if f else 0.0
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=2))
    print_table(results)
    return 0


def print_table(r: dict[str, Any]) -> None:
    s640, s1 = r["script_640"], r["script_1"]
    rows = [
        ("image storm, bootd GB/s", f"{r['bootd_storm']['gb_per_s']:.2f}", "", ""),
        ("image storm, nginx GB/s", f"{r['nginx_storm']['gb_per_s']:.2f}", "", ""),
        ("image storm, aiohttp FileResponse GB/s", f"{r['aiohttp_storm']['gb_per_s']:.2f}", "", ""),
        ("throughput bootd/nginx (mean)", f"{r['throughput_ratio']:.2f}x", ">= 0.95x",
         "ok" if r["throughput_ratio"] >= 0.95 else "MISS"),
        ("server CPU s per GB, bootd", f"{r['bootd_storm']['cpu_s_per_gb']:.3f}", "", ""),
        ("server CPU s per GB, nginx", f"{r['nginx_storm']['cpu_s_per_gb']:.3f}", "", ""),
        ("throughput bootd/FileResponse", f"{r['vs_fileresponse_ratio']:.2f}x", "", ""),
        ("bootd peak RSS MB", f"{r['bootd_rss_peak_mb']:.0f}", "< 150",
         "ok" if r["bootd_rss_peak_mb"] < 150 else "MISS"),
        (f"bootscript p99 ms, {r['clients']} conns", f"{s640['p99_ms'] or -1:.2f}", "< 5",
         "ok" if (s640["p99_ms"] or 1e9) < 5 else "MISS"),
        (f"bootscript req/s, {r['clients']} conns", f"{s640['requests_per_s']:.0f}", "", ""),
        (f"nginx static script p99 ms, {r['clients']} conns",
         f"{r['nginx_script_640']['p99_ms'] or -1:.2f}", "", "(reference)"),
        (f"nginx static script req/s, {r['clients']} conns",
         f"{r['nginx_script_640']['requests_per_s']:.0f}", "", "(reference)"),
        ("bootscript p99 ms inside bootd (<=)", f"{r['script_inside_p99_ms_le'] or -1:.2f}",
         "< 5", "ok" if (r["script_inside_p99_ms_le"] or 1e9) <= 5 else "MISS"),
        ("bootscript p50 ms, 1 conn", f"{s1['p50_ms'] or -1:.2f}", "", ""),
        ("bootscript p99 ms, 1 conn", f"{s1['p99_ms'] or -1:.2f}", "", ""),
        ("nginx static script p99 ms, 1 conn", f"{r['nginx_script_1']['p99_ms'] or -1:.2f}", "",
         "(reference)"),
    ]  # fmt: skip
    print(f"HTTP bench: {r['clients']} clients, {r['seconds']} s per run, sizes {r['sizes_mb']} MB")
    for row in rows:
        print(f"  {row[0]:<40} {row[1]:>10}  {row[2]:>9}  {row[3]}")
    print(f"  per-round bootd/nginx ratios: {r['round_ratios']}")
    errs = r["bootd_storm"]["non_2xx"] + r["nginx_storm"]["non_2xx"] + s640["non_2xx"]
    if errs:
        print(f"  WARNING: {errs} non-2xx responses were measured", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
