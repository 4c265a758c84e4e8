"""Running bootd as a service: systemd unit, sd_notify, reload, metrics, logs."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import REPO, BootdProcess, write_config

UNIT = REPO / "systemd" / "bootd.service"


def _unit_for_verify(tmp_path: Path) -> Path:
    """The shipped unit with ExecStart pointing at this checkout's bootd."""
    exe = shutil.which("bootd") or str(Path(REPO / ".venv" / "bin" / "bootd"))
    unit = tmp_path / "bootd.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/bootd", exe))
    return unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    unit = _unit_for_verify(tmp_path)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # Unknown keys only warn; a clean unit produces no line about itself.
    assert "bootd.service" not in r.stderr, r.stderr
    text = UNIT.read_text()
    for needed in (
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=",
        "StateDirectory=bootd",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=",
        "AmbientCapabilities=",
    ):
        assert needed in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_exposure_is_low(tmp_path: Path) -> None:
    unit = _unit_for_verify(tmp_path)
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True, text=True
    )
    line = next(x for x in r.stdout.splitlines() if "Overall exposure level" in x)
    score = float(line.split(":")[1].split()[0])
    assert score <= 3.0, line


def test_sysusers_and_tmpfiles_parse() -> None:
    users = (REPO / "systemd" / "bootd.sysusers").read_text().splitlines()
    assert any(x.startswith("u bootd ") for x in users)
    tmp = (REPO / "systemd" / "bootd.tmpfiles").read_text()
    assert "/srv/bootd/images" in tmp


def test_sd_notify_ready_watchdog_stopping(cfg_dict: dict[str, Any], tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(sock_path))
    listener.settimeout(20)
    path = write_config(tmp_path, cfg_dict)
    proc = BootdProcess(
        path, cfg_dict, env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "200000"}
    )
    got: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not ("READY=1" in got and "WATCHDOG=1" in got):
            got += listener.recv(4096).decode().splitlines()
        proc.wait_ready()
        assert proc.stop() == 0
        while "STOPPING=1" not in got:
            got += listener.recv(4096).decode().splitlines()
    finally:
        proc.stop()
        listener.close()
    assert got.index("READY=1") < got.index("STOPPING=1")
    assert "WATCHDOG=1" in got


def _reload_and_wait(proc: BootdProcess, marker: str, timeout: float = 15) -> None:
    before = proc.log().count(marker)
    proc.signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.log().count(marker) > before:
            return
        time.sleep(0.1)
    raise AssertionError(f"no {marker!r} after SIGHUP:\n{proc.log()}")


def test_reload_applies_and_broken_reload_keeps_old(
    cfg_dict: dict[str, Any], tmp_path: Path
) -> None:
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text("- {mac: 52:54:00:00:00:01, ip: 10.0.0.11, hostname: a1}\n")
    cfg_dict["nodes"] = str(nodes)
    cfg_dict["cloud-init"] = {"cluster_name": "before"}
    path = write_config(tmp_path, cfg_dict)
    proc = BootdProcess(path, cfg_dict)
    try:
        proc.wait_ready()
        assert proc.get_json("/api/v1/config")["cloud-init"]["cluster_name"] == "before"
        # A good reload: new inventory and new config values are in effect.
        nodes.write_text(
            "- {mac: 52:54:00:00:00:01, ip: 10.0.0.11, hostname: a1}\n"
            "- {mac: 52:54:00:00:00:02, ip: 10.0.0.12, hostname: a2}\n"
        )
        cfg_dict["cloud-init"] = {"cluster_name": "after"}
        path.write_text(yaml.safe_dump(cfg_dict))
        _reload_and_wait(proc, "reloaded ")
        assert proc.get_json("/api/v1/config")["cloud-init"]["cluster_name"] == "after"
        assert len(proc.get_json("/api/v1/nodes")) == 2
        # A broken reload: every error is logged with its key path, the old config stays.
        bad = dict(cfg_dict, **{"cloud-init": {"cluster_name": "broken"}})
        bad["dhcp"] = {"enabled": False, "subnet": "10.0.0.0/24", "pool": "10.0.9.1-10.0.9.5"}
        path.write_text(yaml.safe_dump(bad))
        _reload_and_wait(proc, "reload rejected")
        assert "dhcp.pool: 10.0.9.1 is outside dhcp.subnet 10.0.0.0/24" in proc.log()
        assert proc.get_json("/api/v1/config")["cloud-init"]["cluster_name"] == "after"
        # Broken YAML too.
        path.write_text("http: [oops\n")
        _reload_and_wait(proc, "YAML syntax error")
        assert proc.get_json("/healthz")["status"] == "ok"
    finally:
        assert proc.stop() == 0


def test_metrics_parse_and_move(bootd_proc: BootdProcess) -> None:
    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(bootd_proc.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    key = ("bootd_http_requests_total", (("route", "/healthz"), ("status", "200")))
    before = scrape().get(key, 0.0)
    for _ in range(3):
        bootd_proc.get_json("/healthz")
    after = scrape()
    assert after[key] == before + 3
    names = {k[0] for k in after}
    assert "bootd_store_commits" in names


def test_stage_histogram_exports_as_prometheus_client_does() -> None:
    # bootd_boot_stage_seconds is kept by hand (observed on every stage end); its
    # exposition must be what prometheus-client's own Histogram writes for the same data.
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from bootd.metrics import STAGE_BUCKETS, StageHistogram

    ours_reg, theirs_reg = CollectorRegistry(), CollectorRegistry()
    ours = StageHistogram("bootd_boot_stage_seconds", "doc", STAGE_BUCKETS, ours_reg)
    theirs = Histogram(
        "bootd_boot_stage_seconds", "doc", ["stage"], buckets=STAGE_BUCKETS, registry=theirs_reg
    )
    for stage, seconds in [
        ("dhcp", 0.2), ("dhcp", 0.5), ("dhcp", 0.51), ("tftp", 3.0), ("tftp", 20.0),
        ("booted", 1800.0), ("booted", 4000.0), ("dhcp", 0.0),
    ]:  # fmt: skip
        ours.observe(stage, seconds)
        theirs.labels(stage).observe(seconds)

    def samples(reg: CollectorRegistry) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
        text = generate_latest(reg).decode()
        return sorted(
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if not s.name.endswith("_created")
        )

    assert samples(ours_reg) == samples(theirs_reg)
    assert ("bootd_boot_stage_seconds_count", (("stage", "dhcp"),), 4.0) in samples(ours_reg)


def test_json_logs_carry_fields(cfg_dict: dict[str, Any], tmp_path: Path) -> None:
    cfg_dict["log"] = {"format": "json", "level": "info"}
    path = write_config(tmp_path, cfg_dict)
    proc = BootdProcess(path, cfg_dict)
    try:
        proc.wait_ready()
    finally:
        assert proc.stop() == 0
    lines = [json.loads(x) for x in proc.log().splitlines() if x.strip()]
    assert any(x["msg"].startswith("http listening on http://127.0.0.1:") for x in lines)
    assert all({"ts", "level", "logger", "msg"} <= set(x) for x in lines)


def test_rate_limited_log_suppresses_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from bootd.logs import RateLimitedLog

    logger = logging.getLogger("bootd.test.rl")
    logger.propagate = True
    rl = RateLimitedLog(logger, interval=3600)
    with caplog.at_level(logging.WARNING, logger="bootd.test.rl"):
        for _ in range(5):
            rl.warning("k", "bad packet from %s", "x")
        rl.warning("other", "different")
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["bad packet from x", "different"]


def test_metrics_move_with_tftp_and_http_traffic(cfg_dict: dict[str, Any], tmp_path: Path) -> None:
    cfg_dict["tftp"]["enabled"] = True
    (Path(cfg_dict["tftp"]["root"]) / "ipxe.efi").write_bytes(b"x" * 100_000)
    (Path(cfg_dict["http"]["images"]) / "vmlinuz").write_bytes(b"k" * 200_000)
    path = write_config(tmp_path, cfg_dict)
    proc = BootdProcess(path, cfg_dict)

    def scrape() -> dict[str, float]:
        with urllib.request.urlopen(proc.url + "/metrics", timeout=10) as r:
            fams = text_string_to_metric_families(r.read().decode())
            out: dict[str, float] = {}
            for fam in fams:
                for smp in fam.samples:
                    key = smp.name + "".join(f",{k}={v}" for k, v in sorted(smp.labels.items()))
                    out[key] = smp.value
            return out

    try:
        proc.wait_ready()
        port = cfg_dict["tftp"]["port"]
        out = tmp_path / "o"
        subprocess.run(
            ["curl", "-sSf", "-o", str(out), f"tftp://127.0.0.1:{port}/ipxe.efi"],
            check=True,
            timeout=30,
        )
        subprocess.run(
            ["curl", "-sSf", "-o", str(out), f"tftp://127.0.0.1:{port}/missing"], timeout=30
        )
        subprocess.run(
            ["curl", "-sSf", "-o", str(out), proc.url + "/images/vmlinuz"], check=True, timeout=30
        )
        # A truncated TFTP request is malformed input: counted, never fatal.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"\x00\x01ab", ("127.0.0.1", port))
        time.sleep(0.5)
        m = scrape()
    finally:
        assert proc.stop() == 0
    assert m["bootd_tftp_bytes_total"] >= 100_000
    assert sum(v for k, v in m.items() if k.startswith("bootd_tftp_transfers_total")) >= 2
    assert m.get("bootd_tftp_errors_total,code=1", 0) >= 1
    assert sum(v for k, v in m.items() if k.startswith("bootd_http_bytes_total")) >= 200_000
    assert (
        sum(
            v
            for k, v in m.items()
            if k.startswith("bootd_malformed_input_total") and "protocol=tftp" in k
        )
        >= 1
    )
