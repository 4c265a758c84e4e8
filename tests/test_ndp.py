"""IPv6 router solicitations (dhcp.answer_router_solicitations): codec, config, real sockets."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet6 import ICMPv6ND_RA, ICMPv6ND_RS, ICMPv6NDOptSrcLLAddr

from bench.lab.lab import checkout_prefix
from bench.lab.netns import VethLab, can_netns, sh
from bootd.config import ConfigError, parse_config
from bootd.context import StartupError
from bootd.dhcp.ra import (
    ANSWER_BURST,
    ANSWER_RATE,
    IPV6_HOPLIMIT,
    MAX_SENDERS,
    RouterSolicitationResponder,
    ipv6_disabled,
)
from bootd.metrics import Metrics
from bootd.proto.ndp import (
    NdpDecodeError,
    RouterSolicitation,
    decode_router_solicitation,
    router_advertisement,
)
from bootd.ratelimit import TokenBucket
from tests.dhcp_lab import LabBootd, dhcp_config

MAC = bytes.fromhex("525400de0001")


def rs(*options: bytes) -> bytes:
    """A Router Solicitation (checksum 0: a raw ICMPv6 socket's kernel fills it in)."""
    return bytes((133, 0, 0, 0, 0, 0, 0, 0)) + b"".join(options)


def test_golden_router_solicitation() -> None:
    # As iPXE sends it: source link-layer address option (type 1, 1 unit, the MAC).
    assert decode_router_solicitation(rs(b"\x01\x01" + MAC)) == RouterSolicitation(MAC)
    assert decode_router_solicitation(rs()) == RouterSolicitation(None)
    # Unknown options are skipped (RFC 4861 §4.1).
    nonce = b"\x0e\x01" + bytes(6)
    assert decode_router_solicitation(rs(nonce, b"\x01\x01" + MAC)).source_lladdr == MAC


def test_golden_router_advertisement() -> None:
    # type 134, code 0, checksum 0, hop limit 0, flags 0 (no M, no O), router lifetime 0,
    # reachable time 0, retrans timer 0; then the source link-layer address option.
    assert router_advertisement() == bytes((134,) + (0,) * 15)
    assert router_advertisement(MAC) == bytes((134,) + (0,) * 15) + b"\x01\x01" + MAC


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "truncated"),
        (bytes((133, 0, 0, 0, 0, 0, 0)), "truncated"),
        (bytes((134,) + (0,) * 15), "not-rs"),
        (bytes((133, 1, 0, 0, 0, 0, 0, 0)), "bad-code"),
        (rs(b"\x01"), "bad-option"),
        (rs(b"\x01\x00" + MAC), "bad-option"),  # length 0 would loop forever
        (rs(b"\x01\x02" + MAC), "bad-option"),  # claims 16 bytes, has 8
    ],
)
def test_bad_solicitations_raise_one_error(raw: bytes, reason: str) -> None:
    with pytest.raises(NdpDecodeError) as err:
        decode_router_solicitation(raw)
    assert err.value.reason == reason


@given(st.binary(max_size=64))
def test_fuzz_only_the_decode_error_escapes(raw: bytes) -> None:
    try:
        got = decode_router_solicitation(raw)
    except NdpDecodeError as exc:
        assert exc.reason in {"truncated", "not-rs", "bad-code", "bad-option"}
    else:
        assert raw[:2] == b"\x85\x00" and len(raw) >= 8
        assert got.source_lladdr is None or got.source_lladdr in raw


@given(st.binary(min_size=6, max_size=6).filter(any))
def test_scapy_reads_our_advertisement(mac: bytes) -> None:
    ra = ICMPv6ND_RA(router_advertisement(mac))
    assert (ra.type, ra.code, ra.chlim, ra.M, ra.O, ra.routerlifetime) == (134, 0, 0, 0, 0, 0)
    assert (ra.reachabletime, ra.retranstimer) == (0, 0)
    opt = ra[ICMPv6NDOptSrcLLAddr]
    assert opt.lladdr == ":".join(f"{b:02x}" for b in mac)
    assert not ra.haslayer("ICMPv6NDOptPrefixInfo")


def test_scapy_solicitation_decodes() -> None:
    raw = bytes(ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr="52:54:00:de:00:01"))
    assert decode_router_solicitation(raw).source_lladdr == MAC


def test_config_needs_an_interface() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"dhcp": {"answer_router_solicitations": True}})
    assert "dhcp.answer_router_solicitations needs `interface`" in str(err.value)
    cfg = parse_config({"interface": "br0", "dhcp": {"answer_router_solicitations": True}})
    assert cfg.dhcp.answer_router_solicitations
    assert not parse_config({}).dhcp.answer_router_solicitations


def test_ipv6_disabled_reads_the_sysctl(tmp_path: Path) -> None:
    (tmp_path / "br0").mkdir()
    (tmp_path / "br0" / "disable_ipv6").write_text("1\n")
    (tmp_path / "eth0").mkdir()
    (tmp_path / "eth0" / "disable_ipv6").write_text("0\n")
    assert ipv6_disabled("br0", tmp_path) and not ipv6_disabled("eth0", tmp_path)
    assert not ipv6_disabled("gone", tmp_path)  # no such interface: the socket setup says so
    assert ipv6_disabled("br0", tmp_path / "no-ipv6-at-all")


class _FakeSocket:
    def __init__(self, fail: OSError | None = None) -> None:
        self.sent: list[tuple[bytes, tuple[str, int, int, int]]] = []
        self.fail = fail

    def sendto(self, data: bytes, addr: tuple[str, int, int, int]) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append((data, addr))


def _responder(sock: _FakeSocket) -> tuple[RouterSolicitationResponder, Metrics, list[float]]:
    metrics = Metrics()
    r = RouterSolicitationResponder("lab0", metrics)
    clock = [100.0]
    r._clock = lambda: clock[0]
    r._bucket = TokenBucket(ANSWER_RATE, ANSWER_BURST, clock[0])
    r._sock = sock  # type: ignore[assignment]
    r._ifindex = 7
    r._ra = router_advertisement(MAC)
    return r, metrics, clock


def _results(metrics: Metrics) -> dict[str, float]:
    out = {}
    for fam in metrics.registry.collect():
        if fam.name == "bootd_ipv6_router_solicitations":
            for smp in fam.samples:
                if smp.name.endswith("_total"):
                    out[smp.labels["result"]] = smp.value
    return out


HOPS_255 = [(41, IPV6_HOPLIMIT, (255).to_bytes(4, sys.byteorder))]


def test_responder_rules_without_sockets() -> None:
    sock = _FakeSocket()
    r, metrics, clock = _responder(sock)
    r._solicitation(rs(), HOPS_255, "fe80::1%lab0")
    assert sock.sent == [(router_advertisement(MAC), ("fe80::1", 0, 0, 7))]
    r._solicitation(rs(), HOPS_255, "fe80::1%lab0")  # again within a second
    clock[0] += 1.5
    r._solicitation(rs(), HOPS_255, "fe80::1%lab0")  # a second later: answered again
    r._solicitation(rs(), HOPS_255, "::")  # no address yet: only all-nodes could hear it
    r._solicitation(rs(), HOPS_255, "2001:db8::1")
    r._solicitation(rs(), [(41, IPV6_HOPLIMIT, (64).to_bytes(4, sys.byteorder))], "fe80::2")
    r._solicitation(rs(), [], "fe80::2")  # no hop limit told: not trusted
    r._solicitation(rs(b"\x01\x00"), HOPS_255, "fe80::2")
    assert len(sock.sent) == 2
    assert _results(metrics) == {
        "answered": 2, "repeated": 1, "not-link-local": 2, "bad-hop-limit": 2, "malformed": 1,
    }  # fmt: skip


def test_responder_caps_its_answers_and_survives_send_errors() -> None:
    sock = _FakeSocket()
    r, metrics, clock = _responder(sock)
    for i in range(int(ANSWER_BURST) + 10):  # a flood from as many forged senders
        r._solicitation(rs(), HOPS_255, f"fe80::{i + 1:x}")
    assert len(sock.sent) == ANSWER_BURST
    assert _results(metrics)["rate-limited"] == 10
    clock[0] += 0.01  # refills at ANSWER_RATE a second
    for i in range(20):
        r._solicitation(rs(), HOPS_255, f"fe80::1:{i + 1:x}")
    assert len(sock.sent) == ANSWER_BURST + int(0.01 * ANSWER_RATE)
    assert len(r._answered) <= MAX_SENDERS
    r._sock = _FakeSocket(OSError(101, "Network is unreachable"))  # type: ignore[assignment]
    clock[0] += 5
    r._solicitation(rs(), HOPS_255, "fe80::99")
    assert _results(metrics)["send-error"] == 1


@pytest.mark.parametrize(
    ("err", "says"),
    [
        (errno.EPERM, "run as root or with CAP_NET_RAW"),
        (errno.EAFNOSUPPORT, "RestrictAddressFamilies without AF_INET6"),
        (errno.EMFILE, "no ICMPv6 socket for router solicitations"),
    ],
)
def test_no_socket_is_one_clear_startup_error(
    monkeypatch: pytest.MonkeyPatch, err: int, says: str
) -> None:
    def refuse(*args: object) -> None:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(socket, "if_nametoindex", lambda name: 3)
    monkeypatch.setattr(socket, "socket", refuse)
    r = RouterSolicitationResponder("lab0", Metrics())
    with pytest.raises(StartupError, match=says):
        r.start(cast(asyncio.AbstractEventLoop, None))  # fails before it needs a loop


# Sends an ICMPv6 message `count` times from `source` in the client namespace, then prints every
# Router Advertisement that arrives within `wait` seconds (source, hop limit, bytes).
SOLICIT = r"""
import json, select, socket, struct, sys, time
ifname, source, hops, payload, wait, count = sys.argv[1:7]
idx = socket.if_nametoindex(ifname)
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
s.bind((source, 0, 0, idx))
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, int(hops))
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, idx)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
words = [0xFFFFFFFF] * 8
words[134 >> 5] &= ~(1 << (134 & 31))
s.setsockopt(socket.IPPROTO_ICMPV6, 1, struct.pack("=8I", *words))
for _ in range(int(count)):
    s.sendto(bytes.fromhex(payload), ("ff02::2", 0, 0, idx))
out, end = [], time.monotonic() + float(wait)
while (left := end - time.monotonic()) > 0 and select.select([s], [], [], left)[0]:
    data, anc, _, addr = s.recvmsg(1500, socket.CMSG_SPACE(4))
    hl = [struct.unpack("@i", v[:4])[0] for lv, t, v in anc if t == 52]
    out.append({"src": addr[0].split("%")[0], "hops": hl[0] if hl else None, "hex": data.hex()})
print(json.dumps(out))
"""


def _wait_link_local(ns: str, ifname: str, timeout: float = 10.0) -> str:
    """The interface's link-local address once duplicate address detection is done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = sh("ip", "-n", ns, "-6", "-o", "addr", "show", "dev", ifname, "scope", "link")
        for line in out.stdout.splitlines():
            if "tentative" not in line:
                return line.split()[3].split("/")[0]
        time.sleep(0.1)
    raise TimeoutError(f"{ifname} in {ns} has no usable link-local address")


@pytest.fixture(scope="module")
def ra_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VethLab, LabBootd, str]]:
    why = can_netns()
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("ralab")
    lab = VethLab(checkout_prefix("bra")).up()
    try:
        server_ll = _wait_link_local(lab.srv, lab.srv_if)
        # The client's kernel solicits too (at link-up, then every 4 s, 3 times): keep it
        # quiet so that bootd's counters move only for the test's own solicitations.
        sh("ip", "netns", "exec", lab.cli, "sysctl", "-qw",
           f"net.ipv6.conf.{lab.cli_if}.router_solicitations=0")  # fmt: skip
        _wait_link_local(lab.cli, lab.cli_if)
        bootd = LabBootd(tmp, lab, dhcp_config(tmp, lab, answer_router_solicitations=True))
        try:
            bootd.wait_ready()
            yield lab, bootd, server_ll
        finally:
            bootd.stop()
    finally:
        lab.down()


def _solicit(
    lab: VethLab, source: str, payload: bytes, hops: int = 255, count: int = 1
) -> list[dict[str, Any]]:
    # A source of our own (not the kernel's link-local, whose RS at link-up bootd
    # answers too): the repeat rule is per source.
    sh("ip", "-n", lab.cli, "addr", "replace", f"{source}/64", "dev", lab.cli_if, "nodad")
    argv = [lab.cli_if, source, str(hops), payload.hex(), "2.0", str(count)]
    out = sh(*lab.in_cli("python3", "-c", SOLICIT, *argv)).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def _count(bootd: LabBootd, result: str) -> float:
    return bootd.metric("bootd_ipv6_router_solicitations_total", result=result)


@pytest.mark.root
def test_solicitation_gets_an_advertisement_that_configures_nothing(
    ra_lab: tuple[VethLab, LabBootd, str],
) -> None:
    lab, bootd, server_ll = ra_lab
    answered, repeated = _count(bootd, "answered"), _count(bootd, "repeated")
    # Three in a row, as a client that retransmits fast: one answer.
    got = _solicit(lab, "fe80::b007:1", rs(b"\x01\x01" + MAC), count=3)
    assert len(got) == 1, got
    assert got[0]["src"] == server_ll and got[0]["hops"] == 255  # RFC 4861 §6.1.2
    ra = ICMPv6ND_RA(bytes.fromhex(got[0]["hex"]))
    assert (ra.M, ra.O, ra.routerlifetime, ra.chlim) == (0, 0, 0, 0)
    assert not ra.haslayer("ICMPv6NDOptPrefixInfo")
    mac = sh("ip", "netns", "exec", lab.srv, "cat", f"/sys/class/net/{lab.srv_if}/address")
    assert ra[ICMPv6NDOptSrcLLAddr].lladdr == mac.stdout.strip()
    assert _count(bootd, "answered") == answered + 1
    assert _count(bootd, "repeated") == repeated + 2


@pytest.mark.root
def test_bad_solicitations_are_counted_not_answered(ra_lab: tuple[VethLab, LabBootd, str]) -> None:
    lab, bootd, _ = ra_lab
    # Hop limit below 255: not from this link (RFC 4861 §6.1.1).
    assert _solicit(lab, "fe80::b007:2", rs(), hops=64) == []
    assert _count(bootd, "bad-hop-limit") >= 1
    # An option of length 0.
    assert _solicit(lab, "fe80::b007:3", rs(b"\x01\x00" + MAC)) == []
    assert _count(bootd, "malformed") >= 1
    # Still answering afterwards.
    assert len(_solicit(lab, "fe80::b007:4", rs())) == 1
    assert "malformed router solicitation" in bootd.log()
