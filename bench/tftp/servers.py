"""The three TFTP servers under test, each started in the lab's server namespace."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.lab.netns import VethLab

HTTP_PORT = 8080
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    """A running TFTP server: its process, and how much CPU it (and its children) used."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    windowed: bool  # grants RFC 7440 windowsize
    lab: VethLab
    notes: list[str] = field(default_factory=list)

    def cpu_seconds(self) -> float:
        """utime + stime, including reaped children (in.tftpd forks per transfer)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return sum(int(x) for x in fields[11:15]) / _TICK

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _spawn(lab: VethLab, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            lab.in_srv(*argv), stdout=out, stderr=subprocess.STDOUT, cwd=Path.cwd()
        )


def start_bootd(lab: VethLab, root: Path, work: Path) -> Server:
    """`bootd serve` with TFTP on port 69 and the defaults an operator gets."""
    (work / "images").mkdir(exist_ok=True)
    (work / "token").write_text("bench\n")
    cfg = {
        "address": lab.server_ip,
        "state_dir": str(work / "state"),
        "log": {"level": "warning"},
        "dhcp": {"enabled": False},
        "tftp": {"enabled": True, "port": 69, "root": str(root)},
        "http": {"listen": "0.0.0.0", "port": HTTP_PORT, "images": str(work / "images")},
        "api": {"token_file": str(work / "token")},
    }
    path = work / "bootd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = work / "bootd.log"
    proc = _spawn(lab, [sys.executable, "-m", "bootd", "serve", "--config", str(path)], log)
    for _ in range(150):
        ok = subprocess.run(
            lab.in_srv("curl", "-sf", f"http://127.0.0.1:{HTTP_PORT}/healthz"),
            capture_output=True,
        )
        if ok.returncode == 0:
            break
        if proc.poll() is not None:
            raise RuntimeError(f"bootd exited:\n{log.read_text()}")
        time.sleep(0.2)
    return Server("bootd", proc, log, True, lab)


def start_dnsmasq(lab: VethLab, root: Path, work: Path) -> Server:
    """dnsmasq's TFTP with the transfer cap raised (its default is 50)."""
    log = work / "dnsmasq.log"
    argv = [
        "dnsmasq", "--keep-in-foreground", "--user=root", "--port=0", "--enable-tftp",
        f"--tftp-root={root}", "--tftp-max=1000", f"--listen-address={lab.server_ip}",
        "--bind-interfaces", f"--pid-file={work / 'dnsmasq.pid'}",
    ]  # fmt: skip
    proc = _spawn(lab, argv, log)
    time.sleep(1.0)
    if proc.poll() is not None:
        raise RuntimeError(f"dnsmasq exited:\n{log.read_text()}")
    return Server("dnsmasq", proc, log, False, lab)


def start_tftpd_hpa(lab: VethLab, root: Path, work: Path) -> Server:
    """in.tftpd (Debian tftpd-hpa) in the foreground, forking per transfer."""
    log = work / "tftpd-hpa.log"
    argv = [
        "in.tftpd", "-L", "-a", f"{lab.server_ip}:69", "-u", "root", "-s", str(root),
        "--blocksize", "1468",
    ]  # fmt: skip
    proc = _spawn(lab, argv, log)
    time.sleep(1.0)
    if proc.poll() is not None:
        raise RuntimeError(f"in.tftpd exited:\n{log.read_text()}")
    return Server("tftpd-hpa", proc, log, False, lab)


def start_pyfloor(lab: VethLab, root: Path, work: Path) -> Server:
    """bench.tftp.floor: the bare Python lockstep loop, a yardstick rather than a peer."""
    log = work / "pyfloor.log"
    proc = _spawn(lab, [sys.executable, "-m", "bench.tftp.floor", str(root), lab.server_ip], log)
    time.sleep(1.0)
    if proc.poll() is not None:
        raise RuntimeError(f"bench.tftp.floor exited:\n{log.read_text()}")
    return Server("pyfloor", proc, log, False, lab)


STARTERS = {
    "bootd": start_bootd,
    "dnsmasq": start_dnsmasq,
    "tftpd-hpa": start_tftpd_hpa,
    "pyfloor": start_pyfloor,
}
