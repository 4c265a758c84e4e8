"""Reload and shutdown while TFTP and HTTP transfers are in flight."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import BootdProcess, write_config

BIG = 24 * 1024 * 1024


def _setup(cfg: dict[str, Any], tmp_path: Path) -> tuple[Path, str]:
    data = os.urandom(BIG)
    (Path(cfg["http"]["images"]) / "vmlinuz").write_bytes(data)
    (Path(cfg["tftp"]["root"]) / "ipxe.efi").write_bytes(data[: 8 * 1024 * 1024])
    cfg["tftp"]["enabled"] = True
    # A node at 127.0.0.1 so the transfers land in a boot timeline.
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text("- {mac: 52:54:00:aa:00:01, ip: 127.0.0.1, hostname: lo1}\n")
    cfg["nodes"] = str(nodes)
    return write_config(tmp_path, cfg), hashlib.sha256(data).hexdigest()


def _start_downloads(cfg: dict[str, Any], tmp_path: Path) -> list[subprocess.Popen[bytes]]:
    http = f"http://127.0.0.1:{cfg['http']['port']}/images/vmlinuz"
    tftp = f"tftp://127.0.0.1:{cfg['tftp']['port']}/ipxe.efi"
    return [
        subprocess.Popen(
            ["curl", "-sSf", "--limit-rate", "6M", "-o", str(tmp_path / "h.out"), http]
        ),
        subprocess.Popen(
            [
                "curl",
                "-sSf",
                "--limit-rate",
                "2M",
                "--tftp-blksize",
                "1468",
                "-o",
                str(tmp_path / "t.out"),
                tftp,
            ]
        ),
    ]


def _wait_started(tmp_path: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        sizes = [
            (tmp_path / n).stat().st_size if (tmp_path / n).exists() else 0
            for n in ("h.out", "t.out")
        ]
        if all(s > 0 for s in sizes):
            return
        time.sleep(0.05)
    raise AssertionError("downloads did not start")


def _check(tmp_path: Path, full_sha: str, procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        assert p.wait(60) == 0
    assert hashlib.sha256((tmp_path / "h.out").read_bytes()).hexdigest() == full_sha
    tftp_data = (tmp_path / "t.out").read_bytes()
    assert len(tftp_data) == 8 * 1024 * 1024
    assert tftp_data == (Path(str(tmp_path / "tftp")) / "ipxe.efi").read_bytes()


def _wait_log(proc: BootdProcess, marker: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while marker not in proc.log():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {marker!r}:\n{proc.log()}")
        time.sleep(0.05)


@pytest.mark.slow
def test_reload_keeps_transfers_and_applies(cfg_dict: dict[str, Any], tmp_path: Path) -> None:
    path, sha = _setup(cfg_dict, tmp_path)
    proc = BootdProcess(path, cfg_dict)
    try:
        proc.wait_ready()
        procs = _start_downloads(cfg_dict, tmp_path)
        _wait_started(tmp_path)
        cfg_dict["cloud-init"] = {"cluster_name": "reloaded-mid-transfer"}
        path.write_text(yaml.safe_dump(cfg_dict))
        proc.signal(signal.SIGHUP)
        _wait_log(proc, "reloaded ")
        assert all(p.poll() is None for p in procs), "transfers ended before the reload finished"
        _check(tmp_path, sha, procs)
        assert proc.get_json("/api/v1/config")["cloud-init"]["cluster_name"] == (
            "reloaded-mid-transfer"
        )
    finally:
        assert proc.stop() == 0


@pytest.mark.slow
def test_sigterm_lets_transfers_finish_and_keeps_the_store(
    cfg_dict: dict[str, Any], tmp_path: Path
) -> None:
    cfg_dict["shutdown_grace"] = 30
    path, sha = _setup(cfg_dict, tmp_path)
    proc = BootdProcess(path, cfg_dict)
    proc.wait_ready()
    token = (tmp_path / "api-token").read_text().strip()
    req = urllib.request.Request(
        proc.url + "/boot/v1/bootparameters",
        method="POST",
        data=b'{"macs": ["52:54:00:aa:00:01"], "kernel": "vmlinuz", "initrd": "initrd.img"}',
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status in (200, 201)
    procs = _start_downloads(cfg_dict, tmp_path)
    _wait_started(tmp_path)
    proc.signal(signal.SIGTERM)
    _check(tmp_path, sha, procs)
    assert proc.proc.wait(60) == 0
    proc.stop()
    # Restart: boot parameters and the timeline rows written up to the end are there.
    again = BootdProcess(path, cfg_dict)
    try:
        again.wait_ready()
        params = again.get_json("/boot/v1/bootparameters?mac=52:54:00:aa:00:01")
        assert params and params[0]["kernel"] == "vmlinuz"
        boots = again.get_json("/api/v1/boots?mac=52:54:00:aa:00:01")
        stages = {s["stage"]: s for s in boots[0]["stages"]}
        assert stages["kernel"]["bytes"] == BIG and stages["kernel"]["end"] is not None
        assert stages["tftp"]["end"] is not None
    finally:
        assert again.stop() == 0
