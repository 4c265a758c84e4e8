"""What both stacks share: the lab's addressing, readiness checks, /proc sampling."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field

from bench.lab.netns import VethLab
from bench.lab.procs import children


class StackUnavailable(Exception):
    """The stack cannot run here; the message says what is missing."""


@dataclass(frozen=True)
class StormSite:
    """Addresses and ports the server side uses (the same for both stacks)."""

    server_ip: str = "10.77.0.1"
    prefixlen: int = 16
    pool: str = "10.77.1.0-10.77.250.250"
    http_port: int = 8080

    @property
    def netmask(self) -> str:
        bits = (0xFFFFFFFF << (32 - self.prefixlen)) & 0xFFFFFFFF
        return ".".join(str((bits >> s) & 0xFF) for s in (24, 16, 8, 0))

    @property
    def subnet(self) -> str:
        return f"{self.server_ip.rsplit('.', 2)[0]}.0.0/{self.prefixlen}"

    @property
    def base_url(self) -> str:
        return f"http://{self.server_ip}:{self.http_port}"


def http_status(lab: VethLab, url: str, method: str = "GET", data: str | None = None) -> int:
    """Status of one request made from inside the server namespace (0 when unreachable)."""
    argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5"]
    argv += ["-I"] if method == "HEAD" else ["-X", method]
    if data is not None:
        argv += ["-H", "Content-Type: application/json", "--data-binary", data]
    r = subprocess.run(lab.in_srv(*argv, url), capture_output=True, text=True)
    return int(r.stdout or 0)


def http_get(lab: VethLab, url: str) -> tuple[int, str]:
    """(status, body) of a GET made from inside the server namespace (0 when unreachable)."""
    argv = ["curl", "-s", "-m", "5", "-w", "\n%{http_code}", url]
    r = subprocess.run(lab.in_srv(*argv), capture_output=True, text=True)
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), body


def wait_http(
    url: str,
    lab: VethLab,
    proc: subprocess.Popen[bytes],
    timeout: float = 20.0,
    accept: tuple[int, ...] = (200,),
) -> None:
    """Wait until url answers with a status in `accept` (or the process dies)."""
    deadline = time.monotonic() + timeout
    status = 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackUnavailable(f"server exited {proc.returncode} before {url} answered")
        status = http_status(lab, url)
        if status in accept:
            return
        time.sleep(0.1)
    raise StackUnavailable(f"{url} did not answer {accept} within {timeout:.0f}s (last {status})")


@dataclass
class ProcStats:
    """Peak RSS and CPU seconds of a set of processes, sampled from /proc."""

    peak_rss_kb: int = 0
    cpu_s: float = 0.0
    samples: list[tuple[float, float, int]] = field(default_factory=list)  # (t, cpu_s, rss_kb)


def read_proc(pid: int) -> tuple[float, int, int] | None:
    """(cpu seconds, current RSS kB, VmHWM kB) of one process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read().rsplit(")", 1)[1].split()
        status = open(f"/proc/{pid}/status").read()  # noqa: SIM115
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    cpu = (int(stat[11]) + int(stat[12])) / tick  # utime, stime (fields 14, 15)
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss = int(fields.get("VmRSS", "0 kB").split()[0])
    hwm = int(fields.get("VmHWM", "0 kB").split()[0])
    return cpu, rss, hwm


class Sampler:
    """Samples named process groups every `interval` s in a thread; cumulative across restarts.

    A group is its processes and their children at each sample (nginx's workers,
    bootd's sendfile workers, any started later), so no server's helpers go uncounted.
    """

    def __init__(self, pids: dict[str, list[int]], t0: float, interval: float = 0.25) -> None:
        self.t0 = t0
        self.interval = interval
        self.stats: dict[str, ProcStats] = {name: ProcStats() for name in pids}
        self._pids = {name: list(p) for name, p in pids.items()}
        # Every pid a group ever had, so a restarted bootd's CPU time still counts.
        self._seen = {name: set(p) for name, p in pids.items()}
        self._last_cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def set_pids(self, name: str, pids: list[int]) -> None:
        """Follow new processes (after a restart), keeping the old ones' CPU time."""
        with self._lock:
            self._pids[name] = list(pids)
            self._seen[name].update(pids)

    def start(self) -> None:
        """Begin sampling."""
        self._thread.start()

    def stop(self) -> dict[str, ProcStats]:
        """Take a last sample and return the totals."""
        self._sample()
        self._stop.set()
        self._thread.join()
        return self.stats

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        with self._lock:
            now = time.time() - self.t0
            for name, pids in self._pids.items():
                st = self.stats[name]
                rss = 0
                kids = [k for pid in pids for k in children(pid)]
                self._seen[name].update(kids)
                for pid in dict.fromkeys([*pids, *kids]):
                    got = read_proc(pid)
                    if got is not None:
                        self._last_cpu[pid] = got[0]
                        rss += got[1]
                        st.peak_rss_kb = max(st.peak_rss_kb, got[2])
                st.peak_rss_kb = max(st.peak_rss_kb, rss)
                cpu = sum(self._last_cpu.get(pid, 0.0) for pid in self._seen[name])
                st.cpu_s = max(st.cpu_s, cpu)
                st.samples.append((round(now, 2), round(cpu, 2), rss))
