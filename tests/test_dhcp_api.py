"""/api/v1/leases, /api/v1/explain and /tftp/{name} on an in-process daemon (loopback only)."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bootd.cli.leasefiles import INFINITE, LeaseFileError, detect, parse
from bootd.daemon import Daemon
from tests.helpers import free_port


@pytest.fixture
def cfg_dict(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """DHCP on a free high port of every interface: nothing is sent unless asked."""
    cfg_dict["dhcp"] = {"enabled": True, "port": free_port(socket.SOCK_DGRAM)}
    (Path(cfg_dict["tftp"]["root"]) / "ipxe.efi").write_bytes(b"EFI-BINARY")
    return cfg_dict


def base(d: Daemon) -> str:
    return f"http://127.0.0.1:{d.config.http.port}"


async def test_explain_and_http_boot_binary(daemon: Daemon) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(base(daemon) + "/api/v1/explain?mac=52-54-00-00-00-99&arch=16") as r:
            assert r.status == 200
            out = await r.json()
        assert out["reply"] == "OFFER" and out["yiaddr"] == "10.0.0.100"
        assert out["file"] == f"{base(daemon)}/tftp/ipxe.efi"
        assert out["options"]["60 vendor-class"] == "HTTPClient"
        assert any("dynamic pool" in w for w in out["why"])
        async with s.get(out["file"]) as r:
            assert r.status == 200 and await r.read() == b"EFI-BINARY"
        async with s.get(base(daemon) + "/tftp/..%2fapi-token") as r:
            assert r.status == 404
        async with s.get(base(daemon) + "/api/v1/explain?mac=52:54:00:00:00:99&ipxe=1") as r:
            out = await r.json()
        assert out["phase"] == "dhcp-ipxe"
        assert out["file"].endswith("/boot/v1/bootscript?mac=52:54:00:00:00:99")
        async with s.get(base(daemon) + "/api/v1/explain?mac=nope") as r:
            assert r.status == 400 and (await r.json())["title"] == "Bad MAC"
        # explain is side-effect free: nothing was offered or leased.
        async with s.get(base(daemon) + "/api/v1/leases") as r:
            assert await r.json() == []


DNSMASQ_LEASES = """\
2000000000 52:54:00:00:0a:01 10.0.0.150 nid0150 01:52:54:00:00:0a:01
0 52:54:00:00:0a:02 10.0.0.151 * *
duid 00:01:00:01:2c:5f:a1:b2:52:54:00:00:0a:01
2000000000 1234 2001:db8::5 * 00:01:00:01
"""
KEA_CSV = """\
address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state,user_context,pool_id
10.0.0.160,52:54:00:00:0b:01,,3600,2000000000,1,0,0,,0,,0
10.0.0.161,52:54:00:00:0b:02,,3600,2000000000,1,0,0,login2,0,,0
10.0.0.161,52:54:00:00:0b:02,,3600,2000003600,1,0,0,login2,0,,0
10.0.0.162,52:54:00:00:0b:03,,3600,2000000000,1,0,0,,0,,0
10.0.0.162,52:54:00:00:0b:03,,0,2000000000,1,0,0,,0,,0
10.0.0.163,52:54:00:00:0b:04,,3600,2000000000,1,0,0,,1,,0
"""


def test_lease_files_of_dnsmasq_and_kea_parse() -> None:
    now = 1_000_000.0
    assert detect(DNSMASQ_LEASES) == "dnsmasq" and detect(KEA_CSV) == "kea"
    assert parse(DNSMASQ_LEASES, "auto", now) == [
        {"mac": "52:54:00:00:0a:01", "ip": "10.0.0.150", "expires": 2000000000.0,
         "hostname": "nid0150"},
        {"mac": "52:54:00:00:0a:02", "ip": "10.0.0.151", "expires": now + INFINITE,
         "hostname": None},
    ]  # fmt: skip
    # Kea: the last row of an address wins; lifetime 0 (released) and state 1
    # (declined) are no leases.
    assert parse(KEA_CSV, "auto", now) == [
        {"mac": "52:54:00:00:0b:01", "ip": "10.0.0.160", "expires": 2000000000.0,
         "hostname": None},
        {"mac": "52:54:00:00:0b:02", "ip": "10.0.0.161", "expires": 2000003600.0,
         "hostname": "login2"},
    ]  # fmt: skip
    with pytest.raises(LeaseFileError, match="line 1: not a dnsmasq lease"):
        parse("garbage here\n", "dnsmasq", now)
    with pytest.raises(LeaseFileError, match="not a Kea lease4 CSV"):
        parse("address,hwaddr\n10.0.0.1,aa\n", "kea", now)
    with pytest.raises(LeaseFileError, match="not JSON"):
        parse("[nope", "json", now)


async def test_import_leases_all_or_none(daemon: Daemon) -> None:
    url = base(daemon) + "/api/v1/leases"
    auth = {"Authorization": "Bearer test-token"}
    good = parse(DNSMASQ_LEASES, "dnsmasq", time.time()) + parse(KEA_CSV, "kea", 0)
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json=good) as r:
            assert r.status == 401  # a write: the token is required
        bad = [*good, {"mac": "nope", "ip": "10.0.0.9", "expires": 1},
               {"mac": "52:54:00:00:0c:01", "ip": "192.168.9.9", "expires": 1},
               {"mac": "52:54:00:00:0c:02", "ip": "10.0.0.9", "expires": True}]  # fmt: skip
        async with s.post(url, json=bad, headers=auth) as r:
            assert r.status == 400
            detail = (await r.json())["detail"]
        assert "[4]: 'nope' is not a MAC address" in detail
        assert "[5]: 192.168.9.9 is in none of this server's subnets" in detail
        assert "[6]: expires: True is not a time" in detail
        # Python's json reads NaN and Infinity; neither is a time.
        for weird in (float("nan"), float("inf")):
            one = [{"mac": "52:54:00:00:0c:04", "ip": "10.0.0.9", "expires": weird}]
            async with s.post(url, json=one, headers=auth) as r:
                assert r.status == 400 and "is not a time" in (await r.json())["detail"]
        twice = [*good, {"mac": "52:54:00:00:0c:03", "ip": "10.0.0.150", "expires": 2e9}]
        async with s.post(url, json=twice, headers=auth) as r:
            assert r.status == 409 and "comes twice" in (await r.json())["detail"]
        async with s.get(url) as r:
            assert await r.json() == []  # all or none: nothing was taken
        async with s.post(url, json=good, headers=auth) as r:
            assert r.status == 200 and await r.json() == {"imported": 4}
        async with s.get(url) as r:
            got = {x["mac"]: (x["ip"], x["hostname"]) for x in await r.json()}
        assert got == {
            "52:54:00:00:0a:01": ("10.0.0.150", "nid0150"),
            "52:54:00:00:0a:02": ("10.0.0.151", None),
            "52:54:00:00:0b:01": ("10.0.0.160", None),
            "52:54:00:00:0b:02": ("10.0.0.161", "login2"),
        }
        # The same addresses for other MACs now conflict with the leases just taken.
        other = [{"mac": "52:54:00:00:0d:01", "ip": "10.0.0.151", "expires": 2e9}]
        async with s.post(url, json=other, headers=auth) as r:
            assert (
                r.status == 409 and "10.0.0.151 is another client's" in (await r.json())["detail"]
            )
    rows = daemon.db.read("SELECT mac, ip FROM dhcp_leases ORDER BY ip")
    assert [r["ip"] for r in rows] == ["10.0.0.150", "10.0.0.151", "10.0.0.160", "10.0.0.161"]
