"""Debian's cloud-init reads bootd's seed with its own NoCloud code; the store survives restarts."""

from __future__ import annotations

import http.client
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from bootd.boot.citoken import TokenIssuer
from bootd.cli import cli
from bootd.store.cloudinit import TOKEN_KEY_FILE
from tests.helpers import REPO, BootdProcess, write_config

SYSTEM_PY = "/usr/bin/python3"
NODE_IP = "127.0.13.1"
NODE = {
    "mac": "52:54:00:0d:00:01",
    "ip": NODE_IP,
    "hostname": "nid0001",
    "nid": 1,
    "xname": "x1000c0s0b0n0",
    "groups": ["compute", "gpu", "empty"],
}
TOKEN = "test-token"
COMPUTE = "#cloud-config\nwrite_files:\n  - path: /etc/motd\n    content: compute node\n"
GPU = "## template: jinja\n#cloud-config\nhostname: {{ v1.local_hostname }}-gpu\n"
USER_DATA = "#cloud-config\nruncmd:\n  - [touch, /run/bootd-user-data]\n"
DEFAULTS = {
    "cluster-name": "demo",
    "short-name": "nid",
    "nid-length": 4,
    "public-keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDemoKeyForTests admin@head"],
}
INFO = {"local-hostname": "compute-1", "user-data": USER_DATA}


def have_cloud_init() -> bool:
    if not Path(SYSTEM_PY).exists():
        return False
    r = subprocess.run([SYSTEM_PY, "-c", "import cloudinit"], capture_output=True)
    return r.returncode == 0


def request(
    base: str, method: str, path: str, body: Any = None, src: str = "127.0.0.1", auth: bool = True
) -> tuple[int, bytes]:
    """One HTTP request leaving from `src` (bound), like a node at that address."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=20, source_address=(src, 0))
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if auth:
        headers["Authorization"] = f"Bearer {TOKEN}"
    conn.request(method, path, None if body is None else json.dumps(body), headers)
    r = conn.getresponse()
    out = r.status, r.read()
    conn.close()
    return out


needs_cloud_init = pytest.mark.skipif(
    not have_cloud_init(), reason="Debian's cloud-init (python3-cloudinit) is not installed"
)


@pytest.fixture
def ci_cfg(cfg_dict: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(yaml.safe_dump([NODE]))
    cfg_dict["nodes"] = str(nodes)
    cfg_dict["cloud-init"] = {"cluster_name": "from-config"}
    return cfg_dict


def start(cfg: dict[str, Any], tmp_path: Path) -> BootdProcess:
    p = BootdProcess(write_config(tmp_path, cfg), cfg)
    p.wait_ready()
    return p


def provision(url: str) -> None:
    for name, content in (("compute", COMPUTE), ("gpu", GPU), ("empty", "")):
        body = {
            "name": name,
            "description": f"{name} nodes",
            "file": {"content": content, "encoding": "plain"},
        }
        assert request(url, "POST", "/cloud-init/admin/groups", body)[0] == 201
    assert request(url, "POST", "/cloud-init/admin/cluster-defaults", DEFAULTS)[0] == 201
    assert request(url, "PUT", f"/cloud-init/admin/instance-info/{NODE['xname']}", INFO)[0] == 201


@needs_cloud_init
def test_cloud_init_nocloud_reads_the_seed(ci_cfg: dict[str, Any], tmp_path: Path) -> None:
    p = start(ci_cfg, tmp_path)
    try:
        provision(p.url)
        stored_md = yaml.safe_load(request(p.url, "GET", "/cloud-init/meta-data", src=NODE_IP)[1])
        work = tmp_path / "ci"
        ssh = work / "ssh"
        ssh.mkdir(parents=True)
        host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyOfTheNode root@compute-1"
        (ssh / "ssh_host_ed25519_key.pub").write_text(host_key + "\n")
        phone_home = f"{p.url}/cloud-init/phone-home/$INSTANCE_ID"
        got = read_with_cloud_init(f"{p.url}/cloud-init/", NODE_IP, work, phone_home)
        assert got["ok"] and f"{p.url}/cloud-init/" in got["seed"]
        md = got["metadata"]
        # What cloud-init parsed is what bootd stored (NoCloud only adds its bookkeeping keys).
        extra = {k: md.pop(k) for k in ("seedfrom", "dsmode") if k in md}
        assert extra["seedfrom"] == f"{p.url}/cloud-init/"
        assert md == stored_md
        assert md["local-hostname"] == "compute-1" and md["cluster-name"] == "demo"
        assert got["instance_id"] == md["instance-id"]
        assert got["public_keys"] == DEFAULTS["public-keys"]
        assert got["v1"]["local_hostname"] == "compute-1"
        assert got["userdata_raw"] == USER_DATA
        # network-config (read by newer cloud-init) passes cloud-init's own network parser.
        assert got["network"]["interfaces"] == {"boot0": {"mac": NODE["mac"], "subnets": ["dhcp4"]}}
        assert got["vendordata_raw"] == (
            f"#include\n{p.url}/cloud-init/compute.yaml\n{p.url}/cloud-init/gpu.yaml\n"
        )
        # cloud-init followed the #include list from the node's address: files as written.
        assert got["vendor_parts"] == [COMPUTE, GPU]
        # Its phone_home module posted the host key; the boot is closed.
        ph = json.loads(request(p.url, "GET", f"/cloud-init/admin/phone-home/{NODE['mac']}")[1])
        assert ph["pub_key_ed25519"].strip() == host_key and ph["instance_id"] == md["instance-id"]
        boots = p.get_json(f"/api/v1/boots?mac={NODE['mac']}")
        stages = {s["stage"]: s for s in boots[0]["stages"]}
        assert boots[0]["booted"] and "cloud-init" in stages
    finally:
        p.stop()


def read_with_cloud_init(seed: str, src: str, work: Path, *extra: str) -> dict[str, Any]:
    """Run tests/nocloud_reader.py under Debian's python3; its parsed result."""
    r = subprocess.run(
        [SYSTEM_PY, str(REPO / "tests" / "nocloud_reader.py"), seed, src, str(work), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=work.parent,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def node_token(cfg: dict[str, Any], now: float) -> str:
    """The token the boot-script renderer would put on this node's command line."""
    key = (Path(cfg["state_dir"]) / TOKEN_KEY_FILE).read_bytes()
    return TokenIssuer(key).issue(str(NODE["mac"]), now)


@needs_cloud_init
def test_cloud_init_reads_the_secure_seed_from_its_command_line(
    ci_cfg: dict[str, Any], tmp_path: Path
) -> None:
    p = start(ci_cfg, tmp_path)
    try:
        provision(p.url)
        secret = (
            "#cloud-config\nwrite_files:\n  - path: /etc/munge/munge.key\n    content: s3cr3t\n"
        )
        body = {
            "file": {"content": COMPUTE, "encoding": "plain"},
            "secret": {"content": secret, "encoding": "plain"},
        }
        assert request(p.url, "PUT", "/cloud-init/admin/groups/compute", body)[0] == 201
        tok = node_token(ci_cfg, time.time())
        cmdline = (
            "BOOT_IMAGE=vmlinuz root=live:http://x/rootfs ip=dhcp "
            f"ds=nocloud-net;s={p.url}/cloud-init-secure/%s?token={tok} bootd_ci_token={tok}"
        )
        got = read_with_cloud_init("cmdline:" + cmdline, NODE_IP, tmp_path / "ci")
        assert got["ok"] and "cmdline" in got["seed"]
        assert got["metadata"]["local-hostname"] == "compute-1"
        assert got["userdata_raw"] == USER_DATA
        # The MIME vendor-data: cloud-init followed the include list and kept the secret part.
        assert got["vendor_parts"] == [COMPUTE, GPU, secret]
        # The public seed never carries the secret.
        public = request(p.url, "GET", "/cloud-init/vendor-data", src=NODE_IP, auth=False)[1]
        assert b"s3cr3t" not in public
    finally:
        p.stop()


def test_admin_data_survives_restart(ci_cfg: dict[str, Any], tmp_path: Path) -> None:
    p = start(ci_cfg, tmp_path)
    try:
        provision(p.url)
        assert (
            request(
                p.url,
                "PUT",
                "/cloud-init/admin/groups/gpu",
                {"file": {"content": "#cloud-config\n", "encoding": "plain"}},
            )[0]
            == 201
        )
        assert request(p.url, "DELETE", "/cloud-init/admin/groups/empty")[0] == 200
        before = {
            path: request(p.url, "GET", path)[1]
            for path in (
                "/cloud-init/admin/groups",
                "/cloud-init/admin/cluster-defaults",
                f"/cloud-init/admin/instance-info/{NODE['xname']}",
            )
        }
        md_before = yaml.safe_load(request(p.url, "GET", "/cloud-init/meta-data", src=NODE_IP)[1])
        tok = node_token(ci_cfg, time.time())
    finally:
        assert p.stop() == 0
    p = start(ci_cfg, tmp_path)
    try:
        for path, body in before.items():
            st, after = request(p.url, "GET", path)
            assert st == 200 and json.loads(after) == json.loads(body), path
        groups = json.loads(before["/cloud-init/admin/groups"])
        assert set(groups) == {"compute", "gpu"}
        md_after = yaml.safe_load(request(p.url, "GET", "/cloud-init/meta-data", src=NODE_IP)[1])
        assert md_after == md_before and md_after["instance-id"].startswith("i-")
        # The token key lives in state_dir: a token from before the restart still works.
        conn = http.client.HTTPConnection(
            "127.0.0.1", int(p.url.rsplit(":", 1)[1]), timeout=20, source_address=(NODE_IP, 0)
        )
        conn.request(
            "GET", "/cloud-init-secure/meta-data", headers={"Authorization": f"Bearer {tok}"}
        )
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        p.stop()


def test_cloud_init_cli(bootd_proc: BootdProcess, tmp_path: Path) -> None:
    """`bootd cloud-init …` against the running daemon (click in-process, HTTP for real)."""
    token = ["--token-file", str(tmp_path / "api-token")]

    def run(*args: str, auth: bool = True) -> Result:
        argv = ["--url", bootd_proc.url, *(token if auth else []), "cloud-init", *args]
        return CliRunner().invoke(cli, argv, env={"BOOTD_TOKEN": None, "BOOTD_URL": None})

    (tmp_path / "gpu.yaml").write_text(GPU)
    (tmp_path / "secret.yaml").write_text("#cloud-config\nmunge: key\n")
    r = run(
        "groups", "set", "gpu", "--file", str(tmp_path / "gpu.yaml"),
        "--secret-file", str(tmp_path / "secret.yaml"), "--meta", "arch=x86_64",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert run("groups", "get", "gpu", "--content").output == GPU
    r = run("groups", "list")
    assert "gpu" in r.output and "yes" in r.output  # the token reveals that a secret exists
    assert "redacted" in run("groups", "list", auth=False).output
    (tmp_path / "defaults.yaml").write_text(yaml.safe_dump(DEFAULTS))
    r = run("defaults", "--set", str(tmp_path / "defaults.yaml"))
    assert r.exit_code == 0 and json.loads(r.output)["cluster-name"] == "demo"
    (tmp_path / "info.yaml").write_text(yaml.safe_dump(INFO))
    r = run("instance-info", "x1", "--set", str(tmp_path / "info.yaml"))
    assert json.loads(r.output)["local-hostname"] == "compute-1"
    r = run("show", "x1", "--doc", "user-data")
    assert r.exit_code != 0 and "404" in r.output  # x1 is not in the inventory
    assert request(bootd_proc.url, "POST", "/api/v1/nodes", [{**NODE, "xname": "x1"}])[0] == 200
    r = run("show", "x1", "--doc", "user-data")
    assert r.exit_code == 0 and r.output == USER_DATA  # from the instance info set above
    r = run("show", str(NODE["mac"]))
    assert yaml.safe_load(r.output)["local-hostname"] == "compute-1"
    r = run("groups", "delete", "gpu", auth=False)
    assert r.exit_code != 0 and "401" in r.output
    assert run("groups", "delete", "gpu").exit_code == 0
    r = run("groups", "get", "gpu")
    assert r.exit_code != 0 and "404" in r.output


def rendered_cmdline(url: str) -> str:
    """The kernel command line bootd's boot script gives the node (BSS params for its MAC)."""
    params = {
        "macs": [NODE["mac"]],
        "kernel": "vmlinuz",
        "initrd": "initrd.img",
        "params": "ip=dhcp root=live:http://127.0.0.1/rootfs",
    }
    assert request(url, "POST", "/boot/v1/bootparameters", params)[0] in (200, 201)
    st, script = request(url, "GET", f"/boot/v1/bootscript?mac={NODE['mac']}", auth=False)
    assert st == 200
    line = next(ln for ln in script.decode().splitlines() if ln.startswith("kernel "))
    return line.split(" ", 2)[2]


@needs_cloud_init
def test_boot_script_token_opens_the_secure_seed(ci_cfg: dict[str, Any], tmp_path: Path) -> None:
    p = start(ci_cfg, tmp_path)
    try:
        provision(p.url)
        secret = "#cloud-config\nbootcmd: [echo s3cr3t]\n"
        body = {
            "file": {"content": COMPUTE, "encoding": "plain"},
            "secret": {"content": secret, "encoding": "plain"},
        }
        assert request(p.url, "PUT", "/cloud-init/admin/groups/compute", body)[0] == 201
        words = rendered_cmdline(p.url).split()
        tok = next(w.split("=", 1)[1] for w in words if w.startswith("bootd_ci_token="))
        # The renderer's token, presented by the node, opens the secure route; nobody else's.
        seed = f"ds=nocloud-net;s={p.url}/cloud-init-secure/%s?token={tok}"
        cmdline = " ".join([*(w for w in words if not w.startswith("ds=")), seed])
        got = read_with_cloud_init("cmdline:" + cmdline, NODE_IP, tmp_path / "ci")
        assert got["vendor_parts"] == [COMPUTE, GPU, secret]
        path = f"/cloud-init-secure/vendor-data?token={tok}"
        st, out = request(p.url, "GET", path, src="127.0.13.7", auth=False)
        assert st == 403 and b"s3cr3t" not in out
        # After the node phones home, the same token is a replay.
        assert request(p.url, "POST", "/cloud-init/phone-home/compute-1", {}, src=NODE_IP)[0] == 200
        st, out = request(p.url, "GET", path, src=NODE_IP, auth=False)
        assert st == 403 and b"s3cr3t" not in out
    finally:
        p.stop()


@needs_cloud_init
@pytest.mark.xfail(
    strict=True,
    reason="bootd/boot/script.py writes ds=nocloud;s=http://…: Debian 12's cloud-init 22.4 then "
    "reads the seed in dsmode 'local' and its network stage exits before consuming user-data "
    "('[net] Exiting. datasource … in local mode'); an http seed needs ds=nocloud-net",
)
def test_rendered_datasource_runs_in_the_network_stage(
    ci_cfg: dict[str, Any], tmp_path: Path
) -> None:
    p = start(ci_cfg, tmp_path)
    try:
        got = read_with_cloud_init("cmdline:" + rendered_cmdline(p.url), NODE_IP, tmp_path / "ci")
        assert got["ok"] and got["metadata"]["local-hostname"] == "nid0001"
        assert got["metadata"]["dsmode"] == "net"
    finally:
        p.stop()
