"""Test helpers: configs in tmp dirs, free ports, bootd as a real process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port the kernel says is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_config(tmp: Path, **overrides: Any) -> dict[str, Any]:
    """A config with every service on free loopback ports and state under tmp."""
    token = tmp / "api-token"
    token.write_text("test-token\n")
    images = tmp / "images"
    images.mkdir(exist_ok=True)
    tftp_root = tmp / "tftp"
    tftp_root.mkdir(exist_ok=True)
    cfg: dict[str, Any] = {
        "address": "127.0.0.1",
        "state_dir": str(tmp / "state"),
        "shutdown_grace": 5,
        "dhcp": {"enabled": False},
        "tftp": {"enabled": False, "port": free_port(socket.SOCK_DGRAM), "root": str(tftp_root)},
        "http": {"listen": "127.0.0.1", "port": free_port(), "images": str(images)},
        "api": {"token_file": str(token)},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


def write_config(tmp: Path, cfg: dict[str, Any], name: str = "bootd.yaml") -> Path:
    """Write cfg as YAML and return its path."""
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def bootd_argv(*args: str) -> list[str]:
    """argv that runs this checkout's bootd."""
    return [sys.executable, "-m", "bootd", *args]


class BootdProcess:
    """`bootd serve` as a child process (optionally inside a netns)."""

    def __init__(
        self,
        config_path: Path,
        cfg: dict[str, Any],
        prefix: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.config_path = config_path
        self.cfg = cfg
        self.log_path = config_path.with_suffix(".log")
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*prefix, *bootd_argv("serve", "--config", str(config_path))],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        )

    @property
    def url(self) -> str:
        http = self.cfg["http"]
        return f"http://{http['listen']}:{http['port']}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 20.0, path: str = "/healthz") -> None:
        """Wait until the HTTP service answers (or the process dies)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bootd exited {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"bootd not ready after {timeout}s:\n{self.log()}")

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        """kill -9."""
        self.proc.kill()
        self.proc.wait()
        self._log.close()


def qemu_boot_artifacts(dracut: bool = False) -> Any:
    """The lab's boot artifacts for a QEMU test, or a skip saying what this machine lacks."""
    import shutil

    import pytest

    from bench.lab.artifacts import ArtifactError, build_all
    from bench.lab.qemu import OVMF_CODE, QEMU

    for need in (QEMU, "dnsmasq", "curl"):
        if shutil.which(need) is None:
            pytest.skip(f"{need} not installed (make apt-deps)")
    if not OVMF_CODE.exists():
        pytest.skip(f"{OVMF_CODE} missing (apt-get install ovmf)")
    try:
        return build_all(dracut=dracut)
    except ArtifactError as exc:
        pytest.skip(f"boot artifacts: {exc}")
