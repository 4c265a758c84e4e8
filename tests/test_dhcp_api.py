"""/api/v1/leases, /api/v1/explain and /tftp/{name} on an in-process daemon (loopback only)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

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
