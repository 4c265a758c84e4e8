"""QEMU machines that network-boot on a lab tap: SeaBIOS + iPXE ROM, or OVMF's own PXE."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Firmware = Literal["bios", "uefi"]
Accel = Literal["kvm", "tcg"]

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
QEMU = "qemu-system-x86_64"
OK_MARKER = "BOOTD-E2E-OK"
FAIL_MARKER = "BOOTD-E2E-FAIL"
# Seconds a guest gets between printing its marker and QEMU exiting after `poweroff -f`:
# KVM has hung at guest power-off on this machine, so it is then killed.
POWEROFF_GRACE = 5.0


@dataclass
class MachineSpec:
    """One virtual node: its firmware, NIC MAC and the tap it plugs into."""

    name: str
    firmware: Firmware
    mac: str
    tap: str
    memory_mb: int = 512


def qemu_argv(spec: MachineSpec, accel: Accel, workdir: Path) -> list[str]:
    """The QEMU command line that PXE-boots `spec` with its serial console in workdir."""
    serial = workdir / f"{spec.name}.serial.log"
    nic = f"virtio-net-pci,netdev=n0,mac={spec.mac}"
    argv = [
        QEMU, "-name", spec.name, "-nodefaults", "-no-user-config", "-display", "none",
        "-machine", f"pc,accel={accel}", "-cpu", "host" if accel == "kvm" else "qemu64",
        "-m", str(spec.memory_mb), "-smp", "1", "-no-reboot",
        "-chardev", f"file,id=ser0,path={serial}", "-serial", "chardev:ser0",
        "-netdev", f"tap,id=n0,ifname={spec.tap},script=no,downscript=no",
    ]  # fmt: skip
    if spec.firmware == "bios":
        # SeaBIOS: QEMU puts its iPXE ROM for virtio-net into the option ROM by itself.
        # sercon-port sends the BIOS text console (and so iPXE's messages) to ttyS0.
        port = workdir / "sercon-port"
        port.write_bytes((0x3F8).to_bytes(2, "little"))
        argv += ["-device", nic, "-fw_cfg", f"name=etc/sercon-port,file={port}", "-boot", "n"]
    else:
        # OVMF with its own VirtioNetDxe and PXE client: an empty romfile keeps iPXE out.
        vars_copy = workdir / f"{spec.name}.OVMF_VARS.fd"
        shutil.copy(OVMF_VARS, vars_copy)
        argv += [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
            "-device", f"{nic},romfile=",
        ]  # fmt: skip
    return argv


@dataclass
class Machine:
    """A running QEMU process; its serial console is a file read while it runs."""

    spec: MachineSpec
    accel: Accel
    workdir: Path
    netns_prefix: Sequence[str] = ()
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ended: float | None = None
    exit_reason: str = ""
    _stderr: Path | None = field(default=None, repr=False)

    @property
    def serial_path(self) -> Path:
        return self.workdir / f"{self.spec.name}.serial.log"

    def start(self) -> Machine:
        """Power on."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.serial_path.write_bytes(b"")
        self._stderr = self.workdir / f"{self.spec.name}.qemu.err"
        with open(self._stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [*self.netns_prefix, *qemu_argv(self.spec, self.accel, self.workdir)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started = time.monotonic()
        return self

    def serial(self) -> str:
        """The serial console so far."""
        try:
            return self.serial_path.read_text(errors="replace")
        except OSError:
            return ""

    def qemu_stderr(self) -> str:
        """What QEMU itself printed (errors about taps, firmware)."""
        return self._stderr.read_text(errors="replace") if self._stderr else ""

    def running(self) -> bool:
        """QEMU has not exited."""
        return self.proc is not None and self.proc.poll() is None

    def outcome(self) -> str | None:
        """'ok' or 'fail' once the guest printed its marker, else None."""
        text = self.serial()
        if OK_MARKER in text:
            return "ok"
        if FAIL_MARKER in text:
            return "fail"
        return None

    def poll(self) -> str | None:
        """None while booting; then 'ok', 'fail' or 'exited' (QEMU is stopped by then)."""
        if self.exit_reason:
            return self.exit_reason
        result = self.outcome()
        if result is None and not self.running():
            result = self.outcome() or "exited"
        if result is None:
            return None
        self.ended = time.monotonic()
        self.exit_reason = result
        self.stop(POWEROFF_GRACE if result in ("ok", "fail") else 0.0)
        return result

    def wait(self, timeout: float) -> str:
        """Wait for a marker or for QEMU to exit; 'ok', 'fail', 'exited' or 'timeout'."""
        return wait_all([self], timeout)[0]

    @property
    def elapsed(self) -> float:
        """Seconds from power-on to the marker (or to now)."""
        return (self.ended or time.monotonic()) - self.started

    def stop(self, grace: float = 0.0) -> None:
        """Let QEMU exit by itself within `grace` seconds, then kill it."""
        if self.proc is None:
            return
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            with _suppress_gone():
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def wait_all(
    machines: Sequence[Machine], timeout: float, on_tick: Callable[[], None] | None = None
) -> list[str]:
    """Wait for every machine to finish (each result as in Machine.poll), or time out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(m.poll() is not None for m in machines):
            break
        if on_tick is not None:
            on_tick()
        time.sleep(0.25)
    results = []
    for m in machines:
        r = m.poll()
        if r is None:
            m.ended = time.monotonic()
            m.exit_reason = r = "timeout"
            m.stop(0.0)
        results.append(r)
    return results


class _suppress_gone:
    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: object, exc: object, tb: object) -> bool:
        return isinstance(exc, ProcessLookupError)


def kvm_usable() -> str | None:
    """None if /dev/kvm can be opened, else why not."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError as exc:
        return f"/dev/kvm: {exc.strerror}"
    os.close(fd)
    return None


def chosen_accel(kernel: Path, initrd: Path) -> tuple[Accel, str]:
    """BOOTD_E2E_ACCEL (kvm or tcg) when set, else what `probe_accel` finds."""
    forced = os.environ.get("BOOTD_E2E_ACCEL")
    if forced in ("kvm", "tcg"):
        return ("kvm" if forced == "kvm" else "tcg"), "BOOTD_E2E_ACCEL"
    return probe_accel(kernel, initrd)


def probe_accel(kernel: Path, initrd: Path, timeout: float = 20.0) -> tuple[Accel, str]:
    """'kvm' if a short KVM boot of kernel+initrd powers off in time, else 'tcg', and why."""
    reason = kvm_usable()
    if reason is not None:
        return "tcg", reason
    with tempfile.TemporaryDirectory(prefix="bootd-kvm-probe-") as tmp:
        log = Path(tmp) / "serial.log"
        argv = [
            QEMU, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-machine", "pc,accel=kvm", "-cpu", "host", "-m", "256",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1 bootd.probe=1",
            "-chardev", f"file,id=ser0,path={log}", "-serial", "chardev:ser0",
        ]  # fmt: skip
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return "tcg", f"KVM probe boot did not power off within {timeout:.0f}s"
        text = log.read_text(errors="replace") if log.exists() else ""
        if proc.returncode != 0 or "probe boot" not in text:
            msg = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            return "tcg", f"KVM probe boot failed (exit {proc.returncode}): {msg[0]}"
        return "kvm", f"KVM probe boot powered off in {time.monotonic() - start:.1f}s"
