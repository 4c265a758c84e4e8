"""Config validation: every error names its key path; check-config exits 1."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bootd.config import ConfigError, load_config, parse_config
from tests.helpers import REPO, bootd_argv


def errors_of(data: object) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        parse_config(data)
    return ei.value.errors


def test_example_config_is_valid() -> None:
    cfg = load_config(REPO / "config" / "bootd.example.yaml")
    assert cfg.address == "10.0.0.1"
    assert cfg.dhcp.boot_files[0] == "undionly.kpxe"
    assert cfg.cloud_init.cluster_name == "cluster"


def test_pool_outside_subnet_names_key_path() -> None:
    errs = errors_of({"dhcp": {"subnet": "10.0.0.0/24", "pool": "10.0.1.5-10.0.1.9"}})
    assert errs == ["dhcp.pool: 10.0.1.5 is outside dhcp.subnet 10.0.0.0/24"]


def test_unknown_key_and_bad_types() -> None:
    errs = errors_of({"dhcp": {"prot": 67}, "tftp": {"port": "x"}, "address": "nope"})
    assert "dhcp.prot: unknown key (check the spelling against config/bootd.example.yaml)" in errs
    assert any(e.startswith("tftp.port:") for e in errs)
    assert "address: 'nope' is not an IPv4 address" in errs


def test_nested_list_paths() -> None:
    errs = errors_of({"dhcp": {"relay_subnets": [{"subnet": "10.1.0.0/24", "pool": "1-2"}]}})
    assert errs[0].startswith("dhcp.relay_subnets[0].pool: ")


def test_not_a_mapping() -> None:
    assert errors_of(["a"]) == ["(top level): the config file must be a YAML mapping"]


def test_check_config_cli(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("dhcp:\n  subnet: 10.0.0.0/24\n  pool: 10.0.1.5-10.0.1.9\n")
    r = subprocess.run(
        bootd_argv("check-config", "--config", str(bad)), capture_output=True, text=True, cwd=REPO
    )
    assert r.returncode == 1
    assert "dhcp.pool: 10.0.1.5 is outside dhcp.subnet 10.0.0.0/24" in r.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("dhcp: [unclosed\n")
    r = subprocess.run(
        bootd_argv("check-config", "--config", str(broken)),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 1 and "YAML syntax error" in r.stderr and "line" in r.stderr
    r = subprocess.run(
        bootd_argv("check-config", "--config", str(REPO / "config" / "bootd.example.yaml")),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    # The example names /etc/bootd/nodes.yaml, which need not exist here.
    assert r.returncode in (0, 1)
    assert "Traceback" not in r.stderr


def test_macs_are_not_base60_numbers() -> None:
    from bootd.yamlio import safe_load

    data = safe_load("- {mac: 52:54:00:00:00:01, n: 12, f: 1.5, o: 0x10}\n")
    assert data == [{"mac": "52:54:00:00:00:01", "n": 12, "f": 1.5, "o": 16}]


def test_sendfile_workers_auto_or_a_count() -> None:
    assert parse_config({}).http.sendfile_workers == "auto"
    assert parse_config({"http": {"sendfile_workers": 3}}).http.sendfile_workers == 3
    for bad in (-1, "many", 65):
        errs = errors_of({"http": {"sendfile_workers": bad}})
        assert errs and all(e.startswith("http.sendfile_workers") for e in errs), errs


def test_boot_file_names_and_architectures_are_checked() -> None:
    assert errors_of({"dhcp": {"group_boot_files": {"mlx": {70000: "x.efi"}}}}) == [
        "dhcp.group_boot_files: mlx: 70000: an architecture type is 0-65535 (option 93)"
    ]
    assert errors_of({"dhcp": {"group_boot_files": {"mlx": {7: "../x.efi"}}}}) == [
        "dhcp.group_boot_files: mlx: 7: '../x.efi' is not a file name under tftp.root"
    ]
    # An absolute name was never found under tftp.root; now the config says so.
    assert errors_of({"dhcp": {"boot_files": {7: "/srv/ipxe.efi"}}}) == [
        "dhcp.boot_files: 7: '/srv/ipxe.efi' is not a file name under tftp.root"
    ]
