"""Real TFTP clients (tftp-hpa, atftp, curl, tftpy) against `bootd serve` in a netns lab."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.lab.lab import checkout_prefix
from bench.lab.netns import VethLab, sh
from tests.helpers import REPO, BootdProcess

pytestmark = pytest.mark.root

SERVER = "10.77.0.1"
HTTP_PORT = 8080
SIZES = {
    "ipxe.efi": 1 << 20,
    "big.bin": 6 << 20,
    "small.bin": 300_000,
    "tiny.bin": 64_000,
    # 65,536 blocks of 16 bytes and then some: block numbers wrap past 65535.
    "roll16.bin": 65536 * 16 + 1000,
}


@dataclass
class Lab:
    """bootd in `<prefix>-srv`, clients in `<prefix>-cli` (prefix unique per checkout)."""

    veth: VethLab
    root: Path
    out: Path
    proc: BootdProcess

    def cli(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.veth.in_cli(*argv), capture_output=True, text=True, timeout=timeout, cwd=REPO
        )

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        for _ in range(5):
            r = subprocess.run(
                self.veth.in_srv(
                    "curl", "-sS", "-m", "10", f"http://127.0.0.1:{HTTP_PORT}/metrics"
                ),
                capture_output=True,
                text=True,
            )
            if r.returncode == 0:
                break
            time.sleep(0.5)
        assert r.returncode == 0, f"/metrics: {r.stderr}\n{self.proc.log()[-3000:]}"
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(r.stdout)
            for s in fam.samples
        }

    def sha(self, name: str) -> str:
        return hashlib.sha256((self.root / name).read_bytes()).hexdigest()

    def got(self, name: str) -> str:
        p = self.out / name
        return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else "missing"


def metric(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **kw: str) -> float:
    return m.get((name, tuple(sorted(kw.items()))), 0.0)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("tftp-lab")
    root, out = tmp / "root", tmp / "out"
    root.mkdir()
    out.mkdir()
    for name, size in SIZES.items():
        (root / name).write_bytes(os.urandom(size))
    (tmp / "images").mkdir()
    (tmp / "token").write_text("t\n")
    cfg = {
        "address": SERVER,
        "state_dir": str(tmp / "state"),
        "shutdown_grace": 1,
        "dhcp": {"enabled": False},
        # A short retransmit timeout keeps the lossy-link test quick; clients that ask
        # for a timeout (curl asks for 1 s) get theirs.
        "tftp": {"enabled": True, "port": 69, "root": str(root), "timeout": 0.4, "retries": 20},
        "http": {"listen": "0.0.0.0", "port": HTTP_PORT, "images": str(tmp / "images")},
        "api": {"token_file": str(tmp / "token")},
    }
    path = tmp / "bootd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    veth = VethLab(checkout_prefix("btf1")).up()
    proc = BootdProcess(path, cfg, prefix=veth.in_srv())
    try:
        for _ in range(100):
            ok = subprocess.run(
                veth.in_srv("curl", "-sf", f"http://127.0.0.1:{HTTP_PORT}/healthz"),
                capture_output=True,
            )
            if ok.returncode == 0:
                break
            assert proc.proc.poll() is None, proc.log()
            subprocess.run(["sleep", "0.2"])
        yield Lab(veth, root, out, proc)
    finally:
        proc.stop()
        veth.down()


def test_tftp_hpa(lab: Lab) -> None:
    for name in ("ipxe.efi", "big.bin"):
        # tftp-hpa exits 0 even on error: the checksum is the verdict.
        r = lab.cli("tftp", "-m", "binary", SERVER, "-c", "get", name, str(lab.out / f"hpa-{name}"))
        assert lab.got(f"hpa-{name}") == lab.sha(name), r.stdout + r.stderr


@pytest.mark.parametrize("blksize", [512, 1468])
def test_curl_blksize(lab: Lab, blksize: int) -> None:
    for name in ("ipxe.efi", "big.bin"):
        dst = lab.out / f"curl{blksize}-{name}"
        r = lab.cli(
            "curl", "-sS", "--tftp-blksize", str(blksize), "-o", str(dst), f"tftp://{SERVER}/{name}"
        )
        assert r.returncode == 0, r.stderr
        assert lab.got(dst.name) == lab.sha(name)


@pytest.mark.parametrize("window", [1, 16])
def test_atftp_windowsize(lab: Lab, window: int) -> None:
    dst = lab.out / f"atftp{window}-big.bin"
    r = lab.cli(
        "atftp", "--option", "blksize 1468", "--option", f"windowsize {window}",
        "--option", "tsize 0", "-g", "-r", "big.bin", "-l", str(dst), SERVER,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"windowsize = {window}" in r.stdout + r.stderr
    assert lab.got(dst.name) == lab.sha("big.bin")


def test_blksize_follows_the_path_mtu(lab: Lab) -> None:
    """tftp.max_blksize auto: the path MTU toward the client less 32, from the route's MTU
    when it has one, else the link's; what atftp asked for beyond that is not granted."""
    veth = lab.veth
    links = ((veth.srv, veth.srv_if), (veth.cli, veth.cli_if))
    client = f"{veth.client_ip}/32"

    def granted(tag: str) -> int:
        dst = lab.out / f"atftp-mtu-{tag}.bin"
        r = lab.cli(
            "atftp", "--trace", "--option", "blksize 65464", "-g", "-r", "small.bin", "-l", str(dst),
            SERVER,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert lab.got(dst.name) == lab.sha("small.bin")
        # --trace prints the server's answer as "received OACK <blksize: 1468, >".
        oack = (r.stdout + r.stderr).split("received OACK <blksize: ", 1)[1]
        return int(oack.split(",", 1)[0])

    try:
        assert granted("1500") == 1468
        sh("ip", "-n", veth.srv, "route", "add", client, "dev", veth.srv_if, "mtu", "1400")
        assert granted("route1400") == 1368
        sh("ip", "-n", veth.srv, "route", "del", client)
        for ns, ifname in links:
            sh("ip", "-n", ns, "link", "set", ifname, "mtu", "9000")
        assert granted("9000") == 8968
    finally:
        sh("ip", "-n", veth.srv, "route", "del", client, check=False)
        for ns, ifname in links:
            sh("ip", "-n", ns, "link", "set", ifname, "mtu", "1500")


def test_block_number_rollover_small_blksize(lab: Lab) -> None:
    dst = lab.out / "atftp-roll16.bin"
    r = lab.cli(
        "atftp", "--option", "blksize 16", "--option", "windowsize 16",
        "-g", "-r", "roll16.bin", "-l", str(dst), SERVER,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert lab.got(dst.name) == lab.sha("roll16.bin")


def test_tftpy(lab: Lab) -> None:
    dst = lab.out / "tftpy-ipxe.efi"
    code = (
        "import tftpy,sys; tftpy.TftpClient(sys.argv[1], 69, {'blksize': 1468})"
        ".download('ipxe.efi', sys.argv[2], timeout=3)"
    )
    r = lab.cli(sys.executable, "-c", code, SERVER, str(dst))
    assert r.returncode == 0, r.stderr
    assert lab.got(dst.name) == lab.sha("ipxe.efi")


def test_refusals_seen_by_real_clients_are_counted(lab: Lab) -> None:
    before = lab.metrics()
    r = lab.cli("atftp", "-g", "-r", "../../../etc/passwd", "-l", str(lab.out / "x"), SERVER)
    assert r.returncode != 0 and "'..' in path refused" in r.stderr
    r = lab.cli("atftp", "-g", "-r", "missing.efi", "-l", str(lab.out / "y"), SERVER)
    assert r.returncode != 0 and "file not found" in r.stderr
    (lab.out / "up.bin").write_bytes(b"upload")
    r = lab.cli("atftp", "-p", "-r", "up.bin", "-l", str(lab.out / "up.bin"), SERVER)
    assert r.returncode != 0 and "read-only server" in r.stderr
    assert not (lab.root / "up.bin").exists()
    r = lab.cli("curl", "-sS", "-o", "/dev/null", f"tftp://{SERVER}/missing.efi")
    assert r.returncode != 0
    after = lab.metrics()

    def delta(name: str, **kw: str) -> float:
        return metric(after, name, **kw) - metric(before, name, **kw)

    assert delta("bootd_tftp_errors_total", code="2") == 2
    assert delta("bootd_tftp_errors_total", code="1") == 2
    assert delta("bootd_tftp_transfers_total", result="traversal") == 1
    assert delta("bootd_tftp_transfers_total", result="write") == 1


@contextlib.contextmanager
def lossy(veth: VethLab, permille: int) -> Iterator[str]:
    """Drop UDP at random both ways: tc netem if the kernel has it, else nftables numgen.

    The nft rule sits on each side's input hook: a drop on output would fail the sender's
    sendto() with EPERM, which is not what a lossy link does.
    """
    ifaces = ((veth.srv, veth.srv_if), (veth.cli, veth.cli_if))
    netem = all(
        sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", i, "root", "netem",
           "loss", f"{permille / 10}%", check=False).returncode == 0
        for ns, i in ifaces
    )  # fmt: skip
    rules = (
        "table inet btfloss {\n chain in {\n type filter hook input priority 0; policy accept;\n"
        f" meta l4proto udp numgen random mod 1000 < {permille} counter drop\n }}\n}}\n"
    )
    try:
        if not netem:
            for ns, i in ifaces:
                sh("ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", i, "root", check=False)
                subprocess.run(
                    ["ip", "netns", "exec", ns, "nft", "-f", "-"],
                    input=rules,
                    text=True,
                    check=True,
                )
        yield "netem" if netem else "nft"
    finally:
        for ns, i in ifaces:
            sh("ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", i, "root", check=False)
            sh("ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "btfloss", check=False)


def test_lossy_link_transfers_complete_and_are_correct(lab: Lab) -> None:
    before = lab.metrics()
    with lossy(lab.veth, 50) as how:
        o = lab.out
        # curl is left out here: it asks for a 6 s timeout (RFC 2349 makes the server honour
        # it) and re-ACKs only every 72 s, so each loss costs it seconds.
        jobs = {
            "tiny.bin": ["tftp", "-m", "binary", SERVER, "-c", "get", "tiny.bin",
                         str(o / "loss-hpa")],
            "small.bin": ["atftp", "--option", "blksize 1468", "--option", "windowsize 16",
                          "-g", "-r", "small.bin", "-l", str(o / "loss-atftp"), SERVER],
        }  # fmt: skip
        procs = [
            subprocess.Popen(
                lab.veth.in_cli(*argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            for argv in jobs.values()
        ]
        storm = lab.cli(
            sys.executable, "-m", "bench.tftp.storm", "--server", SERVER, "--file", "small.bin",
            "-n", "20", "--blksize", "1468", "--windowsize", "8", "--timeout", "0.5",
            "--retries", "40",
        )  # fmt: skip
        outputs = [p.communicate(timeout=180)[0] for p in procs]
        if b"tftp: aborting" in outputs[1]:
            # atftp's windowsize client sometimes acknowledges a block it has not got
            # ("sending extra ACK for <block: 64...: 63>") and, once the server has
            # finished on that word, aborts on the port-unreachable that follows (seen
            # once in many runs at 5 % loss). A node would fetch again: so does the test,
            # once, still on the lossy link. The bytes are checked either way.
            again = subprocess.run(
                lab.veth.in_cli(*jobs["small.bin"]), capture_output=True, timeout=180
            )
            outputs[1] += b"--- atftp aborted; fetched again ---\n" + again.stdout + again.stderr
        drops = sh("ip", "netns", "exec", lab.veth.cli, "nft", "list", "ruleset", check=False)
    assert storm.returncode == 0, storm.stderr
    summary = json.loads(storm.stdout)
    assert summary["ok"] == 20 and summary["sha256"] == [lab.sha("small.bin")], summary
    for (name, _), dst, output in zip(
        jobs.items(), ("loss-hpa", "loss-atftp"), outputs, strict=True
    ):
        assert lab.got(dst) == lab.sha(name), (how, output)
    if how == "nft":
        assert "packets 0 " not in drops.stdout  # the link really dropped something
    after = lab.metrics()
    assert metric(after, "bootd_tftp_retransmits_total") > metric(
        before, "bootd_tftp_retransmits_total"
    )


def test_640_concurrent_ipxe_efi(lab: Lab) -> None:
    before = lab.metrics()
    r = lab.cli(
        sys.executable, "-m", "bench.tftp.storm", "--server", SERVER, "--file", "ipxe.efi",
        "-n", "640", "--blksize", "1468", "--windowsize", "16", "--retries", "30",
        timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    if s["ok"] != 640 or s["errors"]:
        # Seen once in a full CI run (639/640 after 31 s, passing alone): say what each
        # side thought happened, for the next time.
        outcomes = {
            k: metric(lab.metrics(), "bootd_tftp_transfers_total", result=k)
            - metric(before, "bootd_tftp_transfers_total", result=k)
            for k in ("ok", "timeout", "aborted", "error", "illegal", "busy")
        }
        log_tail = [ln for ln in lab.proc.log().splitlines() if "tftp" in ln][-20:]
        pytest.fail(
            f"{s['ok']}/640 fetched; client errors {s['errors']}, resends "
            f"{s['client_resends']}, slowest {s['slowest']:.1f} s; server outcomes {outcomes}; "
            f"bootd log: {log_tail}"
        )
    assert s["sha256"] == [lab.sha("ipxe.efi")] and s["bytes"] == 640 * SIZES["ipxe.efi"]
    # The client is done once it has sent its last ACK; give the server a moment to read it.
    for _ in range(100):
        ok = metric(lab.metrics(), "bootd_tftp_transfers_total", result="ok")
        if ok - metric(before, "bootd_tftp_transfers_total", result="ok") >= 640:
            break
        time.sleep(0.1)
    assert ok - metric(before, "bootd_tftp_transfers_total", result="ok") == 640


@pytest.mark.parametrize("window", [1, 8])
def test_bench_c_client_checks_every_byte(lab: Lab, window: int) -> None:
    """bench/tftp's C load client: real fetches from bootd, and it notices wrong bytes."""
    from bench.tftp.__main__ import build_c_client

    client = build_c_client(lab.out)
    assert client is not None, "no C compiler (make test installs gcc)"
    base = [str(client), "-s", SERVER, "-f", "small.bin", "-n", "20", "-b", "1468", "-r", "30"]
    if window > 1:
        base += ["-w", str(window)]
    r = lab.cli(*base, "-e", str(lab.root / "small.bin"))
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["ok"] == 20 and s["correct"] is True and s["errors"] == {}, s
    assert s["bytes"] == 20 * SIZES["small.bin"]
    assert s["options"].get("windowsize", "1") == str(window)
    # Checked against another file of the same kind, the same transfers are not "correct".
    wrong = lab.out / "not-small.bin"
    wrong.write_bytes(os.urandom(SIZES["small.bin"]))
    s = json.loads(lab.cli(*base, "-e", str(wrong)).stdout)
    assert s["ok"] == 20 and s["correct"] is False, s
