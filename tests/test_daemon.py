"""The daemon as a process: start, health, port conflicts, SIGTERM."""

from __future__ import annotations

import re
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from tests.helpers import REPO, BootdProcess, bootd_argv, write_config


def test_serve_health_and_sigterm(bootd_proc: BootdProcess) -> None:
    health = bootd_proc.get_json("/healthz")
    assert health["status"] == "ok" and "http" in health["services"]
    assert bootd_proc.stop() == 0
    assert "http listening on http://127.0.0.1:" in bootd_proc.log()


def test_port_in_use_is_one_line(cfg_dict: dict[str, Any], tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", cfg_dict["http"]["port"]))
        s.listen()
        path = write_config(tmp_path, cfg_dict)
        r = subprocess.run(
            bootd_argv("serve", "--config", str(path)),
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=30,
        )
    assert r.returncode == 1
    assert "is in use" in r.stderr and "set http.port" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_config_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("http: {port: 99999}\n")
    r = subprocess.run(
        bootd_argv("serve", "--config", str(path)),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    assert r.returncode == 1 and "http.port:" in r.stderr


def test_nodes_cli_round_trip(bootd_proc: BootdProcess, tmp_path: Path) -> None:
    base = [*bootd_argv("--url", bootd_proc.url, "--token-file", str(tmp_path / "api-token"))]
    r = subprocess.run(
        [*base, "nodes", "import", str(REPO / "config" / "nodes.yaml")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr
    assert "imported 3 nodes" in r.stdout
    r = subprocess.run([*base, "nodes", "list"], capture_output=True, text=True, cwd=REPO)
    assert "x1000c0s0b0n0" in r.stdout and "10.0.0.13" in r.stdout
    # Without the token, writes are refused and nothing changes.
    r = subprocess.run(
        [
            *bootd_argv("--url", bootd_proc.url),
            "nodes",
            "import",
            str(REPO / "config" / "nodes.yaml"),
            "--replace",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode != 0 and "401" in r.stderr
    assert len(bootd_proc.get_json("/api/v1/nodes")) == 3


def test_metrics_describe_the_process_and_its_collector(bootd_proc: BootdProcess) -> None:
    with urllib.request.urlopen(bootd_proc.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        'python_gc_collections_total{generation="0"}',
    ):
        m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        assert m and float(m.group(1)) > 0, name
