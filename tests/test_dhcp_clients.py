"""Real DHCP clients against bootd in network namespaces: perfdhcp, dhclient, udhcpc, a relay."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.lab.lab import checkout_prefix
from bench.lab.netns import VethLab, sh
from tests.dhcp_lab import RELAY_IP, LabBootd, dhcp_config, leases_in_db, perfdhcp, udp_send
from tests.helpers import REPO, bootd_argv

pytestmark = pytest.mark.root

DHCLIENT_MAC = "52:54:00:aa:00:01"
# dhcp.options, sent to the clients that ask for them.
LAB_OPTIONS = {
    "ntp-servers": ["10.77.0.1", "10.77.0.2"],
    "interface-mtu": 9000,
    "domain-search": ["cluster.test", "example.org"],
    "classless-static-routes": ["10.20.0.0/16 via 10.77.0.254", "0.0.0.0/0 via 10.77.0.1"],
    "time-offset": -3600,
}
# What dhclient asks for (Debian's default dhclient.conf, spelled out here so the test
# does not depend on the machine's copy).
DHCLIENT_CONF = """option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;
request subnet-mask, broadcast-address, time-offset, routers, domain-name,
    domain-name-servers, domain-search, host-name, interface-mtu,
    rfc3442-classless-static-routes, ntp-servers;
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VethLab, LabBootd, Path]]:
    tmp = tmp_path_factory.mktemp("dhcplab")
    lab = VethLab(checkout_prefix("bdh2")).up()
    # A relay address on the client side, and the server's route back to it.
    sh("ip", "-n", lab.cli, "addr", "add", f"{RELAY_IP}/24", "dev", lab.cli_if)
    sh("ip", "-n", lab.srv, "route", "add", "10.1.0.0/24", "via", lab.client_ip or "")
    nodes = tmp / "nodes.yaml"
    nodes.write_text(f"- {{mac: '{DHCLIENT_MAC}', ip: 10.77.0.50, hostname: nid0050}}\n")
    cfg = dhcp_config(tmp, lab, options=LAB_OPTIONS)
    cfg["nodes"] = str(nodes)
    bootd = LabBootd(tmp, lab, cfg)
    try:
        bootd.wait_ready()
        yield lab, bootd, tmp
    finally:
        bootd.stop()
        lab.down()


def set_mac(lab: VethLab, mac: str) -> None:
    """Pose as another machine; the server forgets the old MAC of the client address."""
    sh("ip", "-n", lab.cli, "link", "set", "dev", lab.cli_if, "address", mac)
    sh("ip", "-n", lab.srv, "neigh", "flush", "dev", lab.srv_if)


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        k, _, v = line.partition("=")
        out[k] = v
    return out


def udhcpc(lab: VethLab, tmp: Path, tag: str, *extra: str) -> dict[str, str]:
    """busybox udhcpc once; its script dumps the environment of the 'bound' event."""
    script = tmp / f"udhcpc-{tag}.sh"
    script.write_text(f"#!/bin/sh\nenv > {tmp}/udhcpc-{tag}.$1\n")
    script.chmod(0o755)
    r = subprocess.run(
        lab.in_cli(
            "busybox",
            "udhcpc",
            "-f",
            "-q",
            "-n",
            "-t",
            "4",
            "-T",
            "2",
            "-i",
            lab.cli_if,
            "-s",
            str(script),
            *extra,
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    bound = tmp / f"udhcpc-{tag}.bound"
    assert bound.exists(), r.stdout + r.stderr
    return env_file(bound)


def test_perfdhcp_avalanche_640(lab: tuple[VethLab, LabBootd, Path]) -> None:
    veth, bootd, _ = lab
    r = perfdhcp(veth, "-l", veth.cli_if, "--scenario", "avalanche", "-R", "640")
    assert r.get("provisioned") == 640, r["text"]
    assert r["non_unique"] == 0
    rows = [ip for mac, ip in leases_in_db(bootd.cfg) if ip.startswith("10.77.")]
    assert len(rows) >= 640 and len(set(rows)) == len(rows)
    assert bootd.metric("bootd_dhcp_active_leases") >= 640


def test_dhclient_gets_reservation_and_options(lab: tuple[VethLab, LabBootd, Path]) -> None:
    veth, bootd, tmp = lab
    set_mac(veth, DHCLIENT_MAC)
    script = tmp / "dhclient.sh"
    script.write_text(f"#!/bin/sh\nenv > {tmp}/dhclient.$reason\n")
    script.chmod(0o755)
    pf = tmp / "dhclient.pid"
    conf = tmp / "dhclient.conf"
    conf.write_text(DHCLIENT_CONF)
    r = subprocess.run(
        veth.in_cli(
            "dhclient",
            "-4",
            "-1",
            "-cf",
            str(conf),
            "-sf",
            str(script),
            "-lf",
            str(tmp / "dhclient.leases"),
            "-pf",
            str(pf),
            veth.cli_if,
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        assert r.returncode == 0, r.stderr
        env = env_file(tmp / "dhclient.BOUND")
    finally:
        if pf.exists():
            os.kill(int(pf.read_text().strip()), signal.SIGTERM)
    assert env["new_ip_address"] == "10.77.0.50"
    assert env["new_host_name"] == "nid0050"
    assert env["new_subnet_mask"] == "255.255.0.0"
    assert env["new_routers"] == "10.77.0.1"
    assert env["new_domain_name_servers"] == "10.77.0.1"
    assert env["new_domain_name"] == "cluster.test"
    assert env["new_dhcp_lease_time"] == "3600"
    assert env["new_dhcp_server_identifier"] == "10.77.0.1"
    assert "new_filename" not in env  # Linux is not a PXE client: no boot file
    # dhcp.options, each asked for in dhclient's option 55, decoded by dhclient itself.
    assert env["new_ntp_servers"] == "10.77.0.1 10.77.0.2"
    assert env["new_interface_mtu"] == "9000"
    assert env["new_domain_search"] == "cluster.test. example.org."
    assert env["new_time_offset"] == "-3600"
    assert env["new_rfc3442_classless_static_routes"] == "16 10 20 10 77 0 254 0 10 77 0 1"
    assert (DHCLIENT_MAC, "10.77.0.50") in leases_in_db(bootd.cfg)
    boots = bootd.api(f"/api/v1/boots?mac={DHCLIENT_MAC}")
    stage = next(s for s in boots[0]["stages"] if s["stage"] == "dhcp-linux")
    assert stage["end"] is not None and stage["detail"] == "10.77.0.50"


@pytest.mark.parametrize(
    ("mac", "arch", "boot_file"),
    [("52:54:00:aa:00:10", "0000", "undionly.kpxe"), ("52:54:00:aa:00:11", "0007", "ipxe.efi")],
)
def test_udhcpc_as_pxe_client(
    lab: tuple[VethLab, LabBootd, Path], mac: str, arch: str, boot_file: str
) -> None:
    veth, bootd, tmp = lab
    set_mac(veth, mac)
    env = udhcpc(
        veth, tmp, arch, "-V", f"PXEClient:Arch:{int(arch):05d}:UNDI:002001", "-x", f"0x5d:{arch}"
    )
    assert env["boot_file"] == boot_file
    assert env["siaddr"] == "10.77.0.1" and env["serverid"] == "10.77.0.1"
    assert env["ip"].startswith("10.77.") and env["subnet"] == "255.255.0.0"
    assert env["router"] == "10.77.0.1" and env["domain"] == "cluster.test"
    assert (mac, env["ip"]) in leases_in_db(bootd.cfg)
    boots = bootd.api(f"/api/v1/boots?mac={mac}")
    assert any(s["stage"] == "dhcp" and s["end"] is not None for s in boots[0]["stages"])


def test_udhcpc_gets_dhcp_options_only_when_it_asks(lab: tuple[VethLab, LabBootd, Path]) -> None:
    veth, bootd, tmp = lab
    set_mac(veth, "52:54:00:aa:00:20")
    # -o: option 55 holds only the -O options.
    plain = udhcpc(veth, tmp, "plain", "-o", "-O", "subnet")
    assert "ntpsrv" not in plain and "mtu" not in plain and "search" not in plain
    assert plain["router"] == "10.77.0.1"  # the subnet's own options always go
    asks = udhcpc(
        veth, tmp, "asks", "-o", "-O", "ntpsrv", "-O", "mtu", "-O", "search",
        "-x", "hostname:login7",
    )  # fmt: skip
    assert asks["ntpsrv"] == "10.77.0.1 10.77.0.2"
    assert asks["mtu"] == "9000"
    assert asks["search"] == "cluster.test example.org"
    # Not in the inventory: the lease carries the name the client sent (option 12).
    leases = {x["mac"]: x for x in bootd.api("/api/v1/leases")}
    assert leases["52:54:00:aa:00:20"]["hostname"] == "login7"


def test_ipxe_user_class_gets_script_url_and_same_address(
    lab: tuple[VethLab, LabBootd, Path],
) -> None:
    veth, bootd, tmp = lab
    mac = "52:54:00:aa:00:10"  # the BIOS client above, now running iPXE
    set_mac(veth, mac)
    before = dict(leases_in_db(bootd.cfg))[mac]
    env = udhcpc(veth, tmp, "ipxe", "-V", "PXEClient:Arch:00000", "-x", "0x4d:69505845")
    assert (
        env["boot_file"]
        == f"http://10.77.0.1:{bootd.cfg['http']['port']}/boot/v1/bootscript?mac={mac}"
    )
    assert env["ip"] == before  # keyed on chaddr: same address through PXE ROM and iPXE


def test_relayed_request_is_answered_to_the_relay(lab: tuple[VethLab, LabBootd, Path]) -> None:
    veth, bootd, _ = lab
    # perfdhcp with a local address acts as a relay: giaddr = that address, replies to port 67.
    r = perfdhcp(
        veth, "-l", RELAY_IP, "-r", "10", "-R", "10", "-n", "10", "-p", "5", veth.server_ip
    )
    assert "drops ratio" in r["text"], r["text"]
    assert r.get("non_unique", 0) == 0
    relayed = [ip for _, ip in leases_in_db(bootd.cfg) if ip.startswith("10.1.0.")]
    assert len(relayed) >= 8, r["text"]
    assert bootd.metric("bootd_dhcp_messages_total", type="request", result="ack") > 0
    # Each ACK ended its client's DHCP stage in the timeline, and the stage histogram saw it.
    assert bootd.metric("bootd_boot_stage_seconds_count", stage="dhcp-linux") >= len(relayed)


def test_bad_input_counted_and_logged_once(lab: tuple[VethLab, LabBootd, Path]) -> None:
    veth, bootd, _ = lab
    before = len(leases_in_db(bootd.cfg))
    head = bytes([1, 1, 6, 0]) + bytes(232) + bytes.fromhex("63825363")
    bad = [
        b"\x01\x01\x06",  # truncated
        b"\x01\x01\x06\x00" + b"\xee" * 300,  # no magic cookie
        head + b"\x35\x01\x01\x0c\x40ab",  # option 12 runs past the end
    ]
    udp_send(veth, bad * 3, veth.server_ip)
    deadline = time.monotonic() + 10
    while bootd.metric("bootd_malformed_input_total", protocol="dhcp", reason="bad-option") < 3:
        assert time.monotonic() < deadline, bootd.log()
        time.sleep(0.1)
    assert bootd.metric("bootd_malformed_input_total", protocol="dhcp", reason="truncated") == 3
    assert bootd.metric("bootd_malformed_input_total", protocol="dhcp", reason="bad-cookie") == 3
    log = bootd.log()
    assert log.count("truncated:") == 1 and log.count("bad-option:") == 1  # rate-limited
    assert bootd.proc.poll() is None and len(leases_in_db(bootd.cfg)) == before


def test_other_interface_gets_no_answer(lab: tuple[VethLab, LabBootd, Path]) -> None:
    veth, bootd, tmp = lab
    # A second link into the server namespace: bootd is bound to its own interface only.
    sh(
        "ip",
        "link",
        "add",
        f"{veth.prefix}x",
        "netns",
        veth.srv,
        "type",
        "veth",
        "peer",
        "name",
        f"{veth.prefix}y",
        "netns",
        veth.cli,
    )
    sh("ip", "-n", veth.srv, "link", "set", f"{veth.prefix}x", "up")
    sh("ip", "-n", veth.cli, "link", "set", f"{veth.prefix}y", "up")
    script = tmp / "none.sh"
    script.write_text(f"#!/bin/sh\nenv > {tmp}/other.$1\n")
    script.chmod(0o755)
    r = subprocess.run(
        veth.in_cli(
            "busybox",
            "udhcpc",
            "-f",
            "-q",
            "-n",
            "-t",
            "2",
            "-T",
            "1",
            "-i",
            f"{veth.prefix}y",
            "-s",
            str(script),
        ),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0 and not (tmp / "other.bound").exists()
    assert bootd.proc.poll() is None


def test_leases_api_and_cli(lab: tuple[VethLab, LabBootd, Path]) -> None:
    veth, bootd, _ = lab
    leases = bootd.api("/api/v1/leases")
    assert any(x["mac"] == DHCLIENT_MAC and x["ip"] == "10.77.0.50" for x in leases)
    r = subprocess.run(
        veth.in_srv(*bootd_argv("--url", bootd.url, "leases")),
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0 and "10.77.0.50" in r.stdout and "nid0050" in r.stdout
    r = subprocess.run(
        veth.in_srv(
            *bootd_argv("--url", bootd.url, "explain", "--mac", DHCLIENT_MAC, "--arch", "7")
        ),
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stderr
    assert "yiaddr 10.77.0.50" in r.stdout and "boot file: ipxe.efi" in r.stdout
    assert "reserved for this MAC" in r.stdout


def test_a_lease_deleted_through_the_api_frees_its_address(
    lab: tuple[VethLab, LabBootd, Path],
) -> None:
    veth, bootd, tmp = lab
    mac = "52:54:00:aa:00:30"
    set_mac(veth, mac)
    ip = udhcpc(veth, tmp, "deleted")["ip"]
    url = f"{bootd.url}/api/v1/leases/{mac}"

    def curl(*args: str) -> str:
        return sh(*veth.in_srv("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *args)).stdout

    assert curl("-X", "DELETE", url) == "401"  # writes need the bearer token
    assert curl("-X", "DELETE", "-H", "Authorization: Bearer wrong", url) == "403"
    assert (mac, ip) in leases_in_db(bootd.cfg)
    token = Path(bootd.cfg["api"]["token_file"])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = bootd_argv("--url", bootd.url, "--token-file", str(token), "leases")
    r = subprocess.run(
        veth.in_srv(*argv, "delete", mac), capture_output=True, text=True, cwd=REPO, env=env
    )
    assert r.returncode == 0 and f"deleted the lease of {mac} on {ip}" in r.stdout, r.stderr
    assert mac not in {m for m, _ in leases_in_db(bootd.cfg)}  # gone from disk when answered
    assert mac not in {x["mac"] for x in bootd.api("/api/v1/leases")}
    r = subprocess.run(
        veth.in_srv(*argv, "delete", mac), capture_output=True, text=True, cwd=REPO, env=env
    )
    assert r.returncode == 1 and "HTTP 404" in r.stderr
    r = subprocess.run(
        veth.in_srv(*argv, "delete", "nonsense"), capture_output=True, text=True, cwd=REPO, env=env
    )
    assert r.returncode == 1 and "HTTP 400" in r.stderr


def test_kill_9_during_storm_keeps_acked_leases(tmp_path: Path) -> None:
    lab = VethLab(checkout_prefix("bdh3")).up()
    cfg = dhcp_config(tmp_path, lab)
    acks = tmp_path / "acks.txt"
    bootd = LabBootd(tmp_path, lab, cfg)
    try:
        bootd.wait_ready()
        storm = subprocess.Popen(
            lab.in_cli(
                sys.executable, "-m", "tests.dhcp_storm_client", lab.cli_if, "2000", "40", str(acks)
            ),
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        load = subprocess.Popen(
            lab.in_cli("perfdhcp", "-4", "-l", lab.cli_if, "-r", "500", "-R", "5000", "-p", "6"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not acks.exists() or len(acks.read_text().splitlines()) < 200:
            assert time.monotonic() < deadline, bootd.log()
            time.sleep(0.05)
        bootd.kill()
        seen_before_kill = len(acks.read_text().splitlines())
        bootd = LabBootd(tmp_path, lab, cfg)
        bootd.wait_ready()
        storm.wait(timeout=60)
        load.wait(timeout=60)
        bootd.stop()
    finally:
        bootd.stop()
        lab.down()
    acked: dict[str, str] = {}
    for line in acks.read_text().splitlines():
        mac, ip = line.split()
        acked[mac] = ip
    db = dict(leases_in_db(cfg))
    assert seen_before_kill >= 200 and len(acked) > seen_before_kill
    missing = {m: ip for m, ip in acked.items() if db.get(m) != ip}
    assert not missing, f"{len(missing)} ACKed leases not in the DB: {list(missing.items())[:5]}"
    ips = list(db.values())
    assert len(ips) == len(set(ips))


def test_proxy_mode_answers_67_and_4011_without_addresses(tmp_path: Path) -> None:
    lab = VethLab(checkout_prefix("bdh4")).up()
    cfg = dhcp_config(tmp_path, lab, mode="proxy")
    bootd = LabBootd(tmp_path, lab, cfg)
    try:
        bootd.wait_ready()
        r = subprocess.run(
            lab.in_cli(sys.executable, "-m", "tests.dhcp_pxe_probe", lab.cli_if, lab.server_ip),
            capture_output=True, text=True, timeout=60, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        assert r.returncode == 0, r.stderr + bootd.log()
        out = json.loads(r.stdout)
    finally:
        bootd.stop()
        lab.down()
    assert out["offer"] == {"yiaddr": "0.0.0.0", "file": "ipxe.efi", "vc": "PXEClient"}
    assert out["ack"] == {"yiaddr": "0.0.0.0", "file": "ipxe.efi", "type": 5}
    assert leases_in_db(cfg) == []


def test_leases_of_dnsmasq_and_kea_move_to_bootd(tmp_path: Path) -> None:
    """Migration: clients leased by dnsmasq and by Kea keep their addresses under bootd
    once `bootd leases import` has read those servers' own lease files."""
    from bench.dhcp.__main__ import peers

    lab = VethLab(checkout_prefix("bdh4")).up()
    try:
        by_name = {p.name: p for p in peers(lab)}
        before: dict[str, str] = {}
        files = {}
        for server, macs in (("dnsmasq", ["52:54:00:ee:00:01", "52:54:00:ee:00:02"]),
                             ("kea", ["52:54:00:ee:00:03"])):  # fmt: skip
            work = tmp_path / server
            work.mkdir()
            by_name[server].up(work)
            try:
                for mac in macs:
                    set_mac(lab, mac)
                    before[mac] = udhcpc(lab, work, mac.replace(":", ""))["ip"]
            finally:
                by_name[server].down()
            files[server] = work / ("dnsmasq.leases" if server == "dnsmasq" else "leases.csv")
        state = tmp_path / "bootd"
        state.mkdir()
        bootd = LabBootd(state, lab, dhcp_config(state, lab))
        try:
            bootd.wait_ready()
            token = bootd.cfg["api"]["token_file"]
            for server, path in files.items():
                r = subprocess.run(
                    lab.in_srv(*bootd_argv("--url", bootd.url, "--token-file", token,
                                           "leases", "import", str(path))),
                    capture_output=True, text=True, cwd=REPO,
                    env={**os.environ, "PYTHONPATH": str(REPO)},
                )  # fmt: skip
                want = 2 if server == "dnsmasq" else 1
                assert r.returncode == 0 and f"imported {want} leases" in r.stdout, (
                    r.stdout + r.stderr
                )
            after = {}
            for mac in before:
                set_mac(lab, mac)
                after[mac] = udhcpc(lab, state, "bootd-" + mac.replace(":", ""))["ip"]
            assert after == before, (before, after)
            assert len(set(after.values())) == 3
            # Not what bootd would have handed out by itself: its pool starts at the
            # first address and goes up (dnsmasq picks by a hash of the MAC).
            fresh = "52:54:00:ee:00:09"
            set_mac(lab, fresh)
            own = udhcpc(lab, state, "bootd-fresh")["ip"]
            assert own not in after.values()
        finally:
            bootd.stop()
    finally:
        lab.down()
