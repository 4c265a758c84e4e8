"""The storm's client pieces that need no network: DHCP packets and the iPXE script runner."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from scapy.layers.dhcp import BOOTP, DHCP

from bench.storm import dhcpwire, ipxescript
from bench.storm.dhcpwire import ClientKind

MAC = bytes.fromhex("020000000102")


@pytest.mark.parametrize(
    ("role", "arch", "expect"),
    [
        ("pxe", 0, {60: b"PXEClient:Arch:00000:UNDI:002001", 93: b"\x00\x00"}),
        ("pxe", 7, {60: b"PXEClient:Arch:00007:UNDI:003016", 93: b"\x00\x07"}),
        ("ipxe", 7, {77: b"iPXE", 93: b"\x00\x07"}),
        ("linux", 0, {}),
    ],
)
def test_discover_reads_back_in_scapy(role: str, arch: int, expect: dict[int, bytes]) -> None:
    """An independent decoder sees the options each kind of client must send."""
    raw = dhcpwire.build(dhcpwire.DISCOVER, 0x1234, MAC, ClientKind(role, arch))
    p = BOOTP(raw)
    assert p.xid == 0x1234 and p.flags == 0x8000 and p.chaddr[:6] == MAC
    opts = {o[0]: o[1:] for o in p[DHCP].options if isinstance(o, tuple)}
    assert opts["message-type"] == (1,)
    wire = _raw_options(raw)
    for code, value in expect.items():
        assert wire[code] == value
    if role == "linux":
        assert 60 not in wire and 93 not in wire and 77 not in wire
    if role == "ipxe":
        assert 175 in wire


def _raw_options(raw: bytes) -> dict[int, bytes]:
    out, i = {}, 240
    while raw[i] != 255:
        out[raw[i]] = raw[i + 2 : i + 2 + raw[i + 1]]
        i += 2 + raw[i + 1]
    return out


def test_reply_parse_prefers_option_67_and_66() -> None:
    """Boot file and TFTP server come from options when present, else the header fields."""
    p = BOOTP(op=2, xid=7, chaddr=MAC, yiaddr="10.77.1.5", siaddr="10.77.0.1", file=b"hdr.efi")
    r = dhcpwire.parse(bytes(p / DHCP(options=[("message-type", 5), "end"])))
    assert (r.msg_type, r.yiaddr, r.boot_file, r.tftp_server) == (
        5,
        "10.77.1.5",
        "hdr.efi",
        "10.77.0.1",
    )
    p2 = p / DHCP(options=[("message-type", 2), (67, b"opt.efi"), (66, b"10.77.0.9"), "end"])
    r2 = dhcpwire.parse(bytes(p2))
    assert (r2.boot_file, r2.tftp_server) == ("opt.efi", "10.77.0.9")
    with pytest.raises(dhcpwire.DhcpDecodeError):
        dhcpwire.parse(bytes(p)[:250])


def _host(scripts: dict[str, str], fail: set[str]) -> tuple[ipxescript.ScriptHost, list[str]]:
    fetched: list[str] = []

    async def fetch_script(url: str) -> str:
        fetched.append(url)
        return scripts[url]

    async def fetch_image(role: str, url: str) -> bool:
        fetched.append(url)
        if url in fail:
            fail.discard(url)
            return False
        return True

    async def sleep(_: float) -> None:
        return None

    return ipxescript.ScriptHost(fetch_script, fetch_image, sleep), fetched


def test_script_chain_with_mac_expansion_and_retry() -> None:
    """A static chain via ${net0/mac}, a failed kernel fetch that `goto`s a retry chain."""
    base = "http://10.77.0.1:8080"
    per_mac = (
        "#!ipxe\n"
        "kernel --name kernel /images/vmlinuz initrd=initrd root=live:http://x/r ds=nocloud;s=http://x/ci/ || goto retry\n"
        "initrd --name initrd ../images/initrd.img || goto retry\n"
        "boot || goto retry\n"
        ":retry\n"
        "echo boot failed; it's retry 1\n"
        "sleep 2\n"
        f"chain --autofree {base}/boot/02:00:00:00:01:02.ipxe || exit 1\n"
    )
    scripts = {
        f"{base}/boot/boot.ipxe": f"#!ipxe\nchain {base}/boot/${{net0/mac}}.ipxe\n",
        f"{base}/boot/02:00:00:00:01:02.ipxe": per_mac,
    }
    host, fetched = _host(scripts, {f"{base}/images/vmlinuz"})
    spec = asyncio.run(
        ipxescript.run(
            f"{base}/boot/boot.ipxe",
            scripts[f"{base}/boot/boot.ipxe"],
            {"mac": "02:00:00:00:01:02"},
            host,
        )
    )
    assert spec.kernel_url == f"{base}/images/vmlinuz"
    assert spec.kernel_args == [
        "initrd=initrd",
        "root=live:http://x/r",
        "ds=nocloud;s=http://x/ci/",
    ]
    assert spec.initrds == [("initrd", f"{base}/images/initrd.img")]
    assert fetched.count(f"{base}/images/vmlinuz") == 2  # the retry fetched it again


def test_script_that_gives_up_fails() -> None:
    """`exit` and a script with no boot are failures, not a silent success."""
    host, _ = _host({}, set())
    with pytest.raises(ipxescript.ScriptFailed, match="exited"):
        asyncio.run(ipxescript.run("http://h/s", "#!ipxe\necho no params\nexit 1\n", {}, host))
    with pytest.raises(ipxescript.ScriptFailed, match="not an iPXE script"):
        asyncio.run(ipxescript.run("http://h/s", "<html>", {}, host))


@pytest.mark.skipif(
    not Path("/proc/self/autogroup").exists(), reason="kernel without CONFIG_SCHED_AUTOGROUP"
)
def test_qemu_machines_yield_through_their_autogroup() -> None:
    """A machine's session gets the niceness too (plain nice only ranks inside a session)."""
    from bench.storm.machines import yield_autogroup

    ours = Path("/proc/self/autogroup").read_text()
    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        yield_autogroup(proc.pid, 10)
        assert Path(f"/proc/{proc.pid}/autogroup").read_text().split()[-1] == "10"
        assert (
            Path("/proc/self/autogroup").read_text() == ours
        )  # the bench's session keeps its share
    finally:
        proc.kill()
        proc.wait()
